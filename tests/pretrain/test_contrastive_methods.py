"""SimCLR, MICLe, FG-SSL and multimodal on phantom data (several images per case, two modalities):
registration, pair samplers on real records, loss falls, checkpoints load for fine-tuning, resume."""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter

import pytest
import torch

from core.models.backbones import TINY_CONVNEXT, create_backbone
from core.pretrain import StepContext, get_method, list_methods

METHODS = ("simclr", "micle", "fgssl", "multimodal")
SMALL = {"proj_hidden": 64, "proj_dim": 32}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch, tmp_path):
    """Tiny tensors: intra-op threads only add contention. DAD cache goes to a temporary user folder."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("MEDSSL_DATA_DIR", str(tmp_path / "userdata"))
    yield
    torch.set_num_threads(n)


def _config(method, demo_dir, out, **kw):
    from core.pretrain.config import TrainConfig

    options = {**SMALL, **kw.pop("options", {})}
    settings = {"image_size": 32, "batch_size": 16, "lr": 2e-3, "warmup_epochs": 0, "probe_size": 8, **kw}
    return TrainConfig(method=method, data=str(demo_dir), out=str(out), backbone="convnext_atto",
                       timm_kwargs={k: list(v) for k, v in TINY_CONVNEXT.items()}, options=options, **settings)


def _dataset(method, demo_dir, **options):
    from core.pretrain.data import build_dataset, scan_images

    m = get_method(method)
    cfg = _config(method, demo_dir, "", options=options)
    cfg.options = {**m.default_options(), **cfg.options}
    m.check_options(cfg.options, cfg)
    records = scan_images(demo_dir).images
    return records, build_dataset(m.dataset, records, cfg), cfg


def test_get_method_finds_micle_in_a_fresh_process():
    import subprocess
    import sys

    code = "from core.pretrain import get_method; print(type(get_method('micle')).__name__)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "MICLe", run.stderr[-500:]


def test_methods_registered_and_cli_parses(tmp_path):
    assert set(METHODS) <= set(list_methods())
    from core.cli.pretrain import config_from_args, register_cli

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["pretrain", "fgssl", str(tmp_path), "--out", str(tmp_path / "r"), "--tiny",
                              "--backbone", "convnext_atto", "--granularities", "4", "2", "--bt-lambda", "0.01"])
    cfg = config_from_args(args)
    assert cfg.method == "fgssl" and cfg.options["granularities"] == [4, 2] and cfg.options["bt_lambda"] == 0.01
    for name, pairs in (("simclr", "same_image"), ("micle", "same_case"), ("multimodal", "same_case_other_modality")):
        args = parser.parse_args(["pretrain", name, str(tmp_path), "--out", str(tmp_path / "r")])
        assert config_from_args(args).options["pairs"] == pairs
        assert config_from_args(args).options["temperature"] == 0.1


def test_micle_pairs_on_phantoms_never_cross_cases(demo_dir):
    records, ds, _ = _dataset("micle", demo_dir)
    assert len({r.case_id for r in records}) < len(records)           # several images per case
    rules = Counter()
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            j = item["partner"]
            assert j != i and records[j].case_id == records[i].case_id
            rules[item["rule"]] += 1
            assert item["view1"].shape == (1, 32, 32) and item["image"].shape == (3, 32, 32)
    # views of one case share the positive group; other cases never do
    groups = {records[i].case_id: ds.sampler.group(i) for i in range(len(ds))}
    assert len(set(groups.values())) == len(groups)


def test_multimodal_pairs_other_modality_and_fallbacks(demo_dir, tmp_path):
    records, ds, _ = _dataset("multimodal", demo_dir)
    for i in range(len(ds)):
        j = ds[i]["partner"]
        assert records[j].case_id == records[i].case_id and records[j].modality != records[i].modality
    # without modalities -> same_case; without case ids -> same_image
    from core.pretrain.pairs import make_pair_sampler

    no_mod = [type("R", (), {"case_id": r.case_id, "modality": None})() for r in records]
    assert make_pair_sampler("same_case_other_modality", no_mod).rule_counts()["same_case"] == len(records)
    no_case = [type("R", (), {"case_id": None, "modality": r.modality})() for r in records]
    assert make_pair_sampler("same_case_other_modality", no_case).rule_counts()["same_image"] == len(records)
    assert make_pair_sampler("same_case", no_case).rule_counts()["same_image"] == len(records)


def test_dad_stats_of_phantom_modalities_cached(demo_dir):
    from core.pretrain.multimodal import dad_cache_file, _stats_key, dad_stats_for

    _, ds, _ = _dataset("multimodal", demo_dir)
    stats = dad_stats_for(ds)
    assert set(stats) == {"US-A", "US-B"}
    a = torch.cat([ds.load(i).flatten() for i in range(len(ds)) if ds.modalities[i] == "US-A"]).double()
    assert stats["US-A"].mean == pytest.approx(float(a.mean()), abs=1e-6)
    assert stats["US-A"].std == pytest.approx(float(a.std(unbiased=False)), abs=1e-6)
    assert dad_cache_file(_stats_key(ds)).is_file()
    ds.images = None                               # a second call must not read any image
    ds._loader = lambda *a: (_ for _ in ()).throw(AssertionError("stats were recomputed"))
    assert dad_stats_for(ds) == stats


def _fixed_batch_loss(method, model, batch, cfg) -> float:
    """Loss of ``model`` on one fixed batch (all FG-SSL phases), BatchNorm in batch-statistics mode."""
    m = get_method(method)
    options = dict(cfg.options)
    if method == "fgssl":
        options["schedule"] = "joint"
    step = StepContext(epoch=0, global_step=0, total_steps=1, seed=0, device=torch.device("cpu"), options=options)
    model.train()
    with torch.no_grad():
        return float(m.loss(model, batch, step)[0])


@pytest.mark.parametrize("method", METHODS)
def test_loss_falls_and_checkpoint_loads_for_finetuning(method, demo_dir, tmp_path):
    from core.pretrain.trainer import load_checkpoint_model, train

    # FG-SSL's progressive schedule trains each phase on 1 step in K + 1: more steps and a higher lr
    epochs = 12 if method == "fgssl" else 6
    cfg = _config(method, demo_dir, tmp_path / "run", epochs=epochs, lr=5e-3 if method == "fgssl" else 2e-3)
    _, ds, full_cfg = _dataset(method, demo_dir)
    batches = [ds.collate([ds[i] for i in range(k, len(ds), 3)]) for k in range(3)]   # all 96 images

    def mean_loss(model):
        return sum(_fixed_batch_loss(method, model, b, full_cfg) for b in batches) / len(batches)

    torch.manual_seed(cfg.seed)
    before = mean_loss(get_method(method).build(full_cfg))     # the trainer's initial model (same seed)
    result = train(cfg)
    model, saved_cfg, _ = load_checkpoint_model(result["run_dir"])
    after = mean_loss(model)
    assert after < 0.9 * before, (before, after)   # seeds 0-2 measured: ratios 0.59-0.82
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(logs) == epochs
    if method != "fgssl":      # a progressive FG-SSL epoch mixes phases of different scales: not comparable
        assert logs[-1]["loss"] < logs[0]["loss"]

    # what `medssl finetune --init pretrained --init-weights RUN` does
    from core.models.classifier import build_classifier
    from core.train.config import FinetuneConfig

    fcfg = FinetuneConfig(backbone="convnext_atto", tiny=True, init="pretrained", init_weights=result["run_dir"],
                          image_size=32)
    clf, ckpt_cfg = build_classifier(fcfg, ["a", "b", "c"], log_fn=lambda s: None)
    enc = model.encoder.state_dict()
    assert torch.equal(clf.state_dict()["stages.3.blocks.0.conv_dw.weight"], enc["stages.3.blocks.0.conv_dw.weight"])
    assert ckpt_cfg["init"]["pretrain"]["method"] == method
    from core.pretrain.trainer import load_encoder_weights

    assert load_encoder_weights(create_backbone("convnext_atto", tiny=True, num_classes=2),
                                tmp_path / "run" / "encoder.safetensors")["loaded"] == len(enc)


def test_resume_matches_uninterrupted_run(demo_dir, tmp_path):
    from core.pretrain.trainer import train

    full = train(_config("fgssl", demo_dir, tmp_path / "a", epochs=2))
    part = train(_config("fgssl", demo_dir, tmp_path / "b", epochs=2, max_steps=7))
    rest = train(_config("fgssl", demo_dir, tmp_path / "b", epochs=2), resume="auto")
    losses = [l for _, l in part["step_losses"]] + [l for _, l in rest["step_losses"]]
    assert losses == pytest.approx([l for _, l in full["step_losses"]], rel=1e-5)


def test_fgssl_stage_mapping_and_progressive_phases(demo_dir):
    from core.pretrain.fgssl import FGSSLModel
    from core.pretrain.simclr import build_encoder

    _, ds, cfg = _dataset("fgssl", demo_dir, granularities=[2, 8, 4])
    assert cfg.options["granularities"] == [8, 4, 2]
    model = get_method("fgssl").build(cfg)
    assert isinstance(model, FGSSLModel) and model.stages == [1, 2, 3]
    m = get_method("fgssl")
    phases = [m.phases(StepContext(0, t, 8, 0, torch.device("cpu"), options=cfg.options), 4) for t in range(5)]
    assert phases == [[0], [1], [2], [3], [0]]
    batch = ds.collate([ds[i] for i in range(8)])
    for t in range(4):     # every phase: finite loss, gradients reach the encoder stages it uses only
        model.zero_grad()
        loss, metrics = m.loss(model, batch, StepContext(0, t, 8, 0, torch.device("cpu"), options=cfg.options))
        loss.backward()
        assert torch.isfinite(loss) and metrics["phase"] == t
        used = 3 if t == 3 else model.stages[t]
        for s in range(4):
            got = model.encoder.stages[s].blocks[0].conv_dw.weight.grad
            assert (got is not None and got.abs().sum() > 0) == (s <= used)
    with pytest.raises(ValueError):
        FGSSLModel(build_encoder(cfg), [16, 8, 4, 2, 1], proj_hidden=8, proj_dim=8)


def test_lars_step_and_training_with_lars(demo_dir, tmp_path):
    from core.pretrain.simclr import LARS
    from core.pretrain.trainer import train

    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))              # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w], "weight_decay": 0.0 + 1e-9}, {"params": [b], "weight_decay": 0.0}],
               lr=1.0, momentum=0.9, eta=0.1)
    w.grad, b.grad = torch.tensor([0.0, 10.0]), torch.tensor([2.0])
    opt.step()
    # trust ratio 0.1 * 5 / 10 = 0.05 -> update 0.05 * g = [0, 0.5]; no-decay group: plain SGD step
    assert torch.allclose(w.detach(), torch.tensor([3.0, 3.5]), atol=1e-5)
    assert torch.allclose(b.detach(), torch.tensor([-1.0]))
    # the trainer asks the method for its optimiser: --optimizer lars trains with LARS
    cfg = _config("simclr", demo_dir, tmp_path / "lars", epochs=3, lr=0.5, options={"optimizer": "lars"})
    train(cfg)
    logs = [json.loads(line) for line in (tmp_path / "lars" / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(entry["loss"]) for entry in logs) and len(logs) == 3
    state = torch.load(tmp_path / "lars" / "checkpoint-last" / "optimizer.pt", weights_only=True)
    assert "eta" in state["optimizer"]["param_groups"][0], "LARS keeps its trust coefficient per group"


def test_cli_pretrain_then_finetune_init_weights(demo_dir, tmp_path, capsys):
    """`medssl pretrain fgssl ...` then `medssl finetune --init-weights RUN` (backbone taken from the run)."""
    from core.cli import main

    run = tmp_path / "pt"
    assert main(["pretrain", "fgssl", str(demo_dir), "--out", str(run), "--tiny", "--backbone", "convnext_atto",
                 "--image-size", "32", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "16",
                 "--proj-hidden", "32", "--proj-dim", "32", "--granularities", "4", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["finished"] and out["encoder"].endswith("encoder.safetensors")
    assert main(["finetune", str(demo_dir), "--out", str(tmp_path / "ft"), "--init-weights", str(run), "--tiny",
                 "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--quiet"]) == 0
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert "test" in json.dumps(metrics)
    cfg = json.loads((tmp_path / "ft" / "checkpoint-best" / "config.json").read_text())
    assert cfg["init"]["pretrain"]["method"] == "fgssl"
