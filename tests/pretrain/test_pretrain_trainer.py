"""Shared pretraining trainer: schedule, checkpoints, exact resume, --init-weights, NaN guard, DDP (2 CPU procs).

Tiny ConvNeXt (core.models.backbones.TINY_CONVNEXT), 64 px, phantom data (96 images): each run takes ~1-2 s.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from core.jobs import Job, JobCancelled
from core.models.backbones import TINY_CONVNEXT
from core.pretrain import PretrainMethod, get_method, list_methods, register_method
from core.pretrain.trainer import export_encoder, load_encoder_weights, read_checkpoint_config, train
from core.train.schedule import lr_at
from core.pretrain.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
TINY = {k: list(v) for k, v in TINY_CONVNEXT.items()}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(data, out, **kw) -> TrainConfig:
    base = dict(method="mae", data=str(data), out=str(out), backbone="convnext_atto", timm_kwargs=TINY,
                image_size=64, epochs=2, batch_size=16, lr=2e-3, warmup_epochs=0.5, probe_size=16,
                options={"decoder_width": 32})
    base.update(kw)
    return TrainConfig(**base)


def losses(result) -> list[float]:
    return [loss for _, loss in result["step_losses"]]


def test_registry_lists_mae_and_rejects_unknown():
    assert "mae" in list_methods()
    assert get_method("mae").dataset == "images"
    with pytest.raises(ValueError, match="unknown pretraining method"):
        get_method("no-such-method")


def test_lr_schedule_warmup_then_cosine():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=14)
    values = [lr_at(s, **kw) for s in range(14)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(values[3:], values[4:]))         # non-increasing after warm-up
    assert lr_at(9, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(14, **kw) == pytest.approx(0.1)


def test_run_writes_checkpoint_encoder_and_log(demo_dir, tmp_path):
    result = train(tiny_config(demo_dir, tmp_path / "run"))
    run = tmp_path / "run"
    ckpt = run / "checkpoint-last"
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "config.json", "optimizer.pt"}
    meta = read_checkpoint_config(run)
    assert meta["config"]["method"] == "mae" and meta["config"]["backbone"] == "convnext_atto"
    assert meta["config"]["options"]["mask_ratio"] == 0.6 and meta["config"]["options"]["entropy_mode"] == "high"
    assert meta["data"]["n_images"] == 96 and len(meta["data"]["fingerprint"]) == 64
    assert meta["progress"]["epoch"] == 2 and meta["progress"]["finished"]
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)         # plain tensors/containers only
    assert {"optimizer", "rng", "progress"} <= set(state)
    lines = [json.loads(s) for s in (run / "log.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == [1, 2]
    assert {"loss", "lr", "images_per_s", "feat_std", "feat_eff_rank"} <= set(lines[0])
    assert result["global_step"] == 12 == len(result["step_losses"])      # 96 // 16 = 6 steps x 2 epochs


def test_epoch_end_events_carry_the_log_lines(demo_dir, tmp_path):
    from core.jobs import EventKind

    run = tmp_path / "run"
    job = Job("mae", lambda ctx: train(tiny_config(demo_dir, run, probe_size=0), ctx))
    events = []
    job.subscribe(events.append)
    job.run()
    ends = [e for e in events if e.kind == EventKind.EPOCH_END]
    lines = [json.loads(s) for s in (run / "log.jsonl").read_text().splitlines()]
    assert [e.epoch for e in ends] == [1, 2] and all(e.total == 2 for e in ends)
    for e, line in zip(ends, lines):
        assert e.metrics == pytest.approx({k: v for k, v in line.items() if isinstance(v, (int, float))})
    progress = [e for e in events if e.kind == EventKind.PROGRESS and e.epoch]
    assert progress and all(e.phase == "training" for e in progress)


def test_resume_after_cancel_gives_identical_losses(demo_dir, tmp_path):
    """Uninterrupted run vs. a run cancelled mid-epoch and resumed: the same losses (to 1e-6)."""
    cfg = dict(epochs=2, accum_steps=2, batch_size=8)                     # 6 optimizer steps per epoch
    full = losses(train(tiny_config(demo_dir, tmp_path / "full", **cfg)))

    out = tmp_path / "cut"
    job = Job("cut", lambda ctx: train(tiny_config(demo_dir, out, **cfg), ctx))
    job.subscribe(lambda e: job.cancel() if e.message.startswith("epoch") and e.step >= 1 else None)
    with pytest.raises(JobCancelled):
        job.run()
    cut_step = read_checkpoint_config(out)["progress"]["global_step"]
    assert 0 < cut_step < 6                                                # stopped inside epoch 1
    resumed = train(tiny_config(demo_dir, out, **cfg), resume=out)
    assert resumed["step_losses"][0][0] == cut_step
    assert losses(resumed) == pytest.approx(full[cut_step:], abs=1e-6)
    a = load_file(str(tmp_path / "full" / "encoder.safetensors"))
    b = load_file(str(out / "encoder.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert (out / "log.jsonl").read_text().count("\n") == 2               # epoch 1 logged once


def test_stop_at_max_steps_then_rerun_continues(demo_dir, tmp_path):
    """A run that stops after a checkpoint (--max-steps) and is continued by rerunning (auto-resume)."""
    full = losses(train(tiny_config(demo_dir, tmp_path / "full")))
    out = tmp_path / "killed"
    first = train(tiny_config(demo_dir, out, max_steps=8))               # stops in epoch 2 with a checkpoint
    assert first["global_step"] == 8
    rest = train(tiny_config(demo_dir, out), resume="auto")
    assert losses(first) + losses(rest) == pytest.approx(full, abs=1e-6)
    again = train(tiny_config(demo_dir, out), resume="auto")              # finished: nothing to do
    assert again["step_losses"] == [] and again["finished"]


def test_resume_after_kill_between_checkpoint_renames(demo_dir, tmp_path):
    """Only checkpoint-last.old and a complete checkpoint-last.tmp left: the run continues from the newer one."""
    full = losses(train(tiny_config(demo_dir, tmp_path / "full")))
    out = tmp_path / "killed"
    first = train(tiny_config(demo_dir, out, max_steps=8))
    last = out / "checkpoint-last"
    shutil.copytree(last, out / "checkpoint-last.tmp")
    last.rename(out / "checkpoint-last.old")
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        train(tiny_config(demo_dir, out))
    rest = train(tiny_config(demo_dir, out), resume="auto")
    assert rest["step_losses"][0][0] == 8
    assert losses(first) + losses(rest) == pytest.approx(full, abs=1e-6)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-last"]


def test_resume_refuses_changed_settings_or_data(demo_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(demo_dir, out, max_steps=2))
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        train(tiny_config(demo_dir, out))
    with pytest.raises(ValueError, match="lr: checkpoint"):
        train(tiny_config(demo_dir, out, lr=1e-3), resume=out)
    with pytest.raises(ValueError, match="mask_ratio"):
        train(tiny_config(demo_dir, out, options={"decoder_width": 32, "mask_ratio": 0.5}), resume=out)
    data2 = tmp_path / "data2"
    shutil.copytree(demo_dir, data2)
    next(data2.rglob("*_mask.png")).unlink()       # masks are not images: same fingerprint
    train(tiny_config(data2, out, max_steps=3), resume=out)
    victim = sorted(p for p in data2.rglob("*.png") if not p.name.endswith("_mask.png"))[0]
    victim.unlink()
    with pytest.raises(ValueError, match="data: the images differ"):
        train(tiny_config(data2, out), resume=out)


def test_init_weights_loads_encoder_into_classifier(demo_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(demo_dir, run, epochs=1))
    enc_path = export_encoder(run / "checkpoint-last", tmp_path / "exported.safetensors")
    enc = load_file(str(enc_path))
    assert enc.keys() == load_file(str(run / "encoder.safetensors")).keys()
    assert not any(k.startswith(("head.", "encoder.")) for k in enc)

    clf = timm.create_model("convnext_atto", num_classes=3, **TINY_CONVNEXT)
    head_before = {k: v.clone() for k, v in clf.state_dict().items() if k.startswith("head.")}
    report = load_encoder_weights(clf, run)            # a run folder works, as do the .safetensors files
    assert report["loaded"] == len(enc) and all(k.startswith("head.") for k in report["kept"])
    sd = clf.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in enc.items())
    assert all(torch.equal(sd[k], v) for k, v in head_before.items())
    assert report["metadata"]["backbone"] == "convnext_atto"

    wrong = timm.create_model("convnext_atto", num_classes=3)     # full-size atto: shapes differ
    with pytest.raises(ValueError, match="do not fit"):
        load_encoder_weights(wrong, enc_path)

    # --init-weights starts a new MAE run from these weights (weights only, fresh optimizer)
    second = train(tiny_config(demo_dir, tmp_path / "second", epochs=1, init_weights=str(enc_path)))
    first_loss = losses(second)[0]
    fresh = losses(train(tiny_config(demo_dir, tmp_path / "fresh", epochs=1)))[0]
    assert first_loss < fresh                           # starts from the trained encoder
    assert read_checkpoint_config(tmp_path / "second")["init_weights"] == str(enc_path)


class _NanMethod(PretrainMethod):
    """A tiny linear 'method' whose loss is NaN at chosen steps (exercises the trainer only)."""

    def build(self, config):
        model = torch.nn.Module()
        model.encoder = timm.create_model(config.backbone, num_classes=0, **config.timm_kwargs)
        model.encoder.head = torch.nn.Identity()
        return model

    def loss(self, model, batch, step):
        enc = model.module.encoder if hasattr(model, "module") else model.encoder
        feats = enc.forward_features(batch["image"].to(step.device))
        loss = feats.pow(2).mean()
        if step.global_step in step.options.get("nan_at", ()):
            loss = loss * float("nan")
        return loss, {}


@pytest.fixture
def nan_method():
    """Registered only for the test: other tests (and the desktop dialog) list the registry."""
    from core.pretrain import _METHODS

    register_method("_test_nan")(_NanMethod)
    yield "_test_nan"
    _METHODS.pop("_test_nan", None)


def test_nan_guard_skips_bad_steps_and_stops_after_too_many(demo_dir, tmp_path, nan_method):
    cfg = tiny_config(demo_dir, tmp_path / "a", method=nan_method, epochs=1, options={"nan_at": [1, 2]})
    result = train(cfg)
    assert result["global_step"] == 6
    assert math.isnan(result["step_losses"][1][1]) and math.isfinite(result["step_losses"][3][1])
    log = json.loads((tmp_path / "a" / "log.jsonl").read_text().splitlines()[-1])
    assert log["skipped_steps"] == 2 and math.isfinite(log["loss"])
    cfg = tiny_config(demo_dir, tmp_path / "b", method=nan_method, epochs=1, max_nan_skips=2,
                      options={"nan_at": [0, 1, 2, 3]})
    with pytest.raises(FloatingPointError, match="non-finite steps in a row"):
        train(cfg)


class _WorkerNoise(torch.utils.data.Dataset):
    """The images with noise from the loader worker's torch RNG, which the DataLoader seeds when an epoch's
    iterator starts: the loss then shows where that seed came from."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def set_epoch(self, epoch):
        self.images.set_epoch(epoch)

    def collate(self, items):
        return self.images.collate(items)

    def __getitem__(self, index):
        item = self.images[index]
        return {**item, "image": item["image"] + 0.1 * torch.rand_like(item["image"])}


class _GlobalRngBeforeTraining(_NanMethod):
    """Draws ``draws_before_training`` numbers from the global RNG after building the model (as any set-up
    code may), then trains on :class:`_WorkerNoise` images."""

    dataset = "_test_worker_noise"

    def build(self, config):
        model = super().build(config)
        torch.rand(int(config.options.get("draws_before_training", 0)))
        return model


@pytest.fixture
def global_rng_method():
    from core.pretrain import _METHODS
    from core.pretrain.data import DATASETS, register_dataset

    register_dataset("_test_worker_noise", lambda records, config, ctx=None:
                     _WorkerNoise(DATASETS["images"](records, config, ctx)))
    register_method("_test_global_rng")(_GlobalRngBeforeTraining)
    yield "_test_global_rng"
    _METHODS.pop("_test_global_rng", None)
    DATASETS.pop("_test_worker_noise", None)


def test_global_rng_use_before_training_changes_no_loss(demo_dir, tmp_path, global_rng_method):
    """A loader seeds its worker from its own generator (core.train.rng.loader_generator): with the global
    one, the first epoch's data (and so a resumed run's) depended on what drew from the global RNG before."""
    def first_epoch(name: str, draws: int) -> list[float]:
        return losses(train(tiny_config(demo_dir, tmp_path / name, method=global_rng_method, epochs=1,
                                        num_workers=1, probe_size=0,
                                        options={"draws_before_training": draws})))

    quiet, busy = first_epoch("quiet", 0), first_epoch("busy", 1000)
    assert len(quiet) == 6 and quiet == busy


def test_ddp_two_cpu_processes_match_one_process(demo_dir, tmp_path):
    """torchrun --nproc-per-node 2 (gloo) with global batch 16 == one process with batch 16."""
    args = ["pretrain", "mae", str(demo_dir), "--tiny", "--backbone", "convnext_atto", "--image-size", "64",
            "--epochs", "2", "--batch-size", "16", "--lr", "2e-3", "--warmup-epochs", "0.5",
            "--decoder-width", "32", "--device", "cpu", "--precision", "fp32", "--json"]   # bf16 on AMX CPUs
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "-m", "core.cli", *args, "--out", str(tmp_path / "ddp")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "core.cli", *args, "--out", str(tmp_path / "one")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    meta = read_checkpoint_config(tmp_path / "ddp")
    assert meta["world_size"] == 2 and read_checkpoint_config(tmp_path / "one")["world_size"] == 1
    log_d = [json.loads(s) for s in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    log_s = [json.loads(s) for s in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    assert [d["loss"] for d in log_d] == pytest.approx([s["loss"] for s in log_s], rel=5e-4)
    res_d, res_s = json.loads(ddp.stdout.strip().splitlines()[-1]), json.loads(single.stdout.strip().splitlines()[-1])
    assert res_d["first_step_loss"] == pytest.approx(res_s["first_step_loss"], rel=1e-6)
    assert res_d["last_step_loss"] == pytest.approx(res_s["last_step_loss"], rel=5e-4)
    # Weights: gradients agree to ~1e-7, but Adam's first steps move near-zero-gradient weights by ~lr
    # whatever their sign, so tiny summation differences show up as ~1e-3 relative weight differences.
    a = load_file(str(tmp_path / "ddp" / "encoder.safetensors"))
    b = load_file(str(tmp_path / "one" / "encoder.safetensors"))
    diff = sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5
    assert diff / sum(float(a[k].pow(2).sum()) for k in a) ** 0.5 < 1e-2


def test_resume_after_a_kill_between_log_line_and_checkpoint_has_no_duplicate_line(demo_dir, tmp_path):
    from core.jobs import EventKind

    cfg = dict(epochs=2, batch_size=16)
    out = tmp_path / "cut"
    job = Job("cut", lambda ctx: train(tiny_config(demo_dir, out, **cfg), ctx))
    job.subscribe(lambda e: job.cancel() if e.kind == EventKind.EPOCH_END else None)
    with pytest.raises(JobCancelled):
        job.run()
    assert read_checkpoint_config(out)["progress"]["epoch"] == 1
    lines = (out / "log.jsonl").read_text().splitlines()
    assert len(lines) == 1
    with open(out / "log.jsonl", "a") as fh:          # epoch 2's line written, the kill before its checkpoint
        fh.write(json.dumps({**json.loads(lines[0]), "epoch": 2}) + "\n")
    train(tiny_config(demo_dir, out, **cfg), resume=out)
    assert [json.loads(s)["epoch"] for s in (out / "log.jsonl").read_text().splitlines()] == [1, 2]
