"""Fine-tuning on the shared runtime: exact resume after a kill between a checkpoint's two renames,
typed epoch-end events, and ``torchrun --nproc-per-node 2`` (gloo, CPU) == one process, same global batch."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from core.jobs import EventKind, Job, JobCancelled
from core.train.config import FinetuneConfig
from core.train.data import load_labeled_data
from core.train.finetune import finetune

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cfg(**kw) -> FinetuneConfig:
    base = dict(backbone="convnext_atto", tiny=True, init="random", image_size=32, epochs=2, batch_size=16,
                lr=3e-3, warmup_epochs=0.5, patience=100, val_fraction=0.2, test_fraction=0.2, seed=0,
                num_workers=0, precision="fp32")
    base.update(kw)
    return FinetuneConfig(**base)


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def demo_data(demo_dir):
    return load_labeled_data(demo_dir)


def test_epoch_end_events_carry_the_history_rows(demo_data, tmp_path):
    run = tmp_path / "run"
    job = Job("ft", lambda ctx: finetune(tiny_cfg(), demo_data, run, ctx=ctx))
    events = []
    job.subscribe(events.append)
    job.run()
    ends = [e for e in events if e.kind == EventKind.EPOCH_END]
    rows = history(run)
    assert [e.epoch for e in ends] == [1, 2] and all(e.total == 2 for e in ends)
    for e, row in zip(ends, rows):
        assert e.metrics == pytest.approx({k: v for k, v in row.items() if isinstance(v, (int, float))})
    phases = {e.phase for e in events if e.kind == EventKind.PROGRESS and e.epoch}
    assert phases == {"training", "validating"}
    assert all(e.epoch in (1, 2) for e in events if e.kind == EventKind.PROGRESS and e.phase == "training")


def test_resume_after_kill_between_checkpoint_renames_continues(demo_data, tmp_path):
    """Killed after checkpoint-last -> .old and before .tmp -> checkpoint-last: --resume continues after
    epoch 1 (it used to start again at epoch 1) and gives the uninterrupted run's numbers."""
    full = tmp_path / "full"
    finetune(tiny_cfg(), demo_data, full)

    run = tmp_path / "cut"
    job = Job("cut", lambda ctx: finetune(tiny_cfg(), demo_data, run, ctx=ctx))
    job.subscribe(lambda e: job.cancel() if e.kind == EventKind.EPOCH_END else None)
    with pytest.raises(JobCancelled):
        job.run()
    assert [h["epoch"] for h in history(run)] == [1]
    last = run / "checkpoint-last"
    shutil.copytree(last, run / "checkpoint-last.tmp")              # the new copy was complete ...
    last.rename(run / "checkpoint-last.old")                        # ... and the old one moved aside
    with pytest.raises(FileExistsError, match="already has a checkpoint"):
        finetune(tiny_cfg(), demo_data, run)                        # not mistaken for an empty folder
    res = finetune(tiny_cfg(), demo_data, run, resume=True)
    assert [h["epoch"] for h in history(run)] == [1, 2] and res["epochs_run"] == 2
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint")) == \
        ["checkpoint-best", "checkpoint-last"]
    assert history(run)[1]["train_loss"] == pytest.approx(history(full)[1]["train_loss"], rel=1e-5)
    assert res["test"]["nll"] == pytest.approx(json.loads((full / "metrics.json").read_text())["test"]["nll"],
                                               rel=1e-5)


def _run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """A child in its own process group, killed as a group when it runs too long."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:6])} ... did not finish in {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_ddp_two_cpu_processes_match_one_process(demo_dir, tmp_path):
    """torchrun --nproc-per-node 2 (gloo) with global batch 16 == one process with batch 16: the same
    images and augmentations per step, so the per-epoch losses and the validation metrics agree."""
    args = ["finetune", str(demo_dir), "--backbone", "convnext_atto", "--tiny", "--init", "random",
            "--image-size", "32", "--epochs", "2", "--batch-size", "16", "--lr", "3e-3", "--warmup-epochs", "0.5",
            "--drop-path", "0", "--device", "cpu", "--precision", "fp32", "--workers", "0", "--quiet"]
    ddp = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "core.cli", *args, "--out", str(tmp_path / "ddp")])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = _run([sys.executable, "-m", "core.cli", *args, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    h_ddp, h_one = history(tmp_path / "ddp"), history(tmp_path / "one")
    assert len(h_ddp) == len(h_one) == 2
    for a, b in zip(h_ddp, h_one):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)      # float summation order only
        assert a["train_acc"] == pytest.approx(b["train_acc"], abs=1e-9)
        assert a["val_nll"] == pytest.approx(b["val_nll"], rel=1e-5)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12)
    wa = load_file(str(tmp_path / "ddp" / "checkpoint-last" / "model.safetensors"))
    wb = load_file(str(tmp_path / "one" / "checkpoint-last" / "model.safetensors"))
    diff = sum(float((wa[k] - wb[k]).pow(2).sum()) for k in wa) ** 0.5
    assert diff / sum(float(wa[k].pow(2).sum()) for k in wa) ** 0.5 < 1e-4
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("ddp", "one")]
    assert [m["world_size"] for m in metrics] == [2, 1]


def test_global_batch_must_split_evenly_over_the_processes(demo_data):
    from core.train.distributed import DistInfo
    from core.train.finetune import _Loaders

    parts = {"train": demo_data.samples[:32]}
    cidx = {c: i for i, c in enumerate(demo_data.classes)}
    with pytest.raises(ValueError, match="--batch-size 16 must be divisible by the 3 processes"):
        _Loaders(tiny_cfg(), parts, cidx, None, (0.5,) * 3, (0.5,) * 3, DistInfo(rank=0, world_size=3))
    loaders = _Loaders(tiny_cfg(), parts, cidx, None, (0.5,) * 3, (0.5,) * 3, DistInfo(rank=1, world_size=2))
    assert loaders.train.batch_size == 8 and len(loaders.sampler) == 16


def test_fp16_step_unscales_before_clipping(demo_data, monkeypatch):
    """fp16 (a GradScaler): the gradient is unscaled before clipping, and training moves the weights."""
    import time

    import torch

    from core.models.classifier import build_classifier
    from core.train.distributed import DistInfo
    from core.train.finetune import _criterion, _Loaders, _Pace, train_one_epoch
    from core.train.nan_guard import NanGuard
    from core.train.precision import Precision
    from core.train.schedule import param_groups

    cfg = tiny_cfg(grad_clip=1.0)
    cidx = {c: i for i, c in enumerate(demo_data.classes)}
    model, ccfg = build_classifier(cfg, demo_data.classes, lambda m: None)
    loaders = _Loaders(cfg, {"train": demo_data.samples[:32]}, cidx, None, ccfg["mean"], ccfg["std"], DistInfo())
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)     # no overflow in these two steps
    norms = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm: norms.append(
        float(clip(params, max_norm))))
    before = [p.detach().clone() for p in model.parameters()]
    row = train_one_epoch(model, loaders.train, _criterion(cfg, loaders.train_y, 3, torch.device("cpu")), optimizer,
                          scaler, Precision(torch.float16, grad_scaler=True), torch.device("cpu"), epoch=0, cfg=cfg,
                          schedule={"iters": 2, "total": 4, "warmup": 1}, guard=NanGuard(),
                          pace=_Pace(time.perf_counter()), world=1)
    assert len(norms) == 2 and all(0 < n < 100 for n in norms)      # still scaled by 2**8 they would be > 1000
    assert math.isfinite(row["train_loss"]) and scaler.state_dict()["scale"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fp16_scaler_state_is_checkpointed_and_resumed(demo_data, tmp_path, monkeypatch):
    """fp16 fine-tuning (forced here on the CPU: the same loop CUDA runs) keeps the GradScaler's state in
    checkpoint-last and a resume loads it back."""
    import torch

    import core.train.finetune as ft
    from core.train.precision import Precision

    monkeypatch.setattr(ft, "resolve_precision", lambda setting, device: Precision(torch.float16, grad_scaler=True))
    run = tmp_path / "run"
    job = Job("cut", lambda ctx: finetune(tiny_cfg(), demo_data, run, ctx=ctx))
    job.subscribe(lambda e: job.cancel() if e.kind == EventKind.EPOCH_END else None)
    with pytest.raises(JobCancelled):
        job.run()                                                   # stopped after epoch 1 of 2
    saved = torch.load(run / "checkpoint-last" / "optimizer.pt", weights_only=True)["scaler"]
    assert saved and saved["scale"] > 0
    loaded = []
    real_load = torch.amp.GradScaler.load_state_dict
    monkeypatch.setattr(torch.amp.GradScaler, "load_state_dict",
                        lambda self, state: (loaded.append(dict(state)), real_load(self, state)))
    finetune(tiny_cfg(), demo_data, run, resume=True)
    assert loaded and loaded[0]["scale"] == saved["scale"]


def test_resume_after_a_kill_between_history_row_and_checkpoint_has_no_duplicate_row(demo_data, tmp_path):
    """The history row of epoch 2 was written, the kill came before checkpoint-last of epoch 2: the
    resumed run writes epoch 2 again, once."""
    run = tmp_path / "run"
    job = Job("cut", lambda ctx: finetune(tiny_cfg(), demo_data, run, ctx=ctx))
    job.subscribe(lambda e: job.cancel() if e.kind == EventKind.EPOCH_END else None)
    with pytest.raises(JobCancelled):
        job.run()
    with open(run / "history.jsonl", "a") as fh:
        fh.write(json.dumps({**history(run)[0], "epoch": 2}) + "\n")
    finetune(tiny_cfg(), demo_data, run, resume=True)
    assert [h["epoch"] for h in history(run)] == [1, 2]


def test_disk_full_during_a_checkpoint_write_is_a_clear_error_and_keeps_the_previous(demo_data, tmp_path,
                                                                                      monkeypatch):
    """The second checkpoint-last write hits a full disk inside PyTorch's zip writer (patched at the file
    boundary): a clear error, the epoch-1 checkpoint intact, no .tmp folder, job.json not left 'running'."""
    import torch

    from core.jobs import previous_state
    from core.train.checkpoint import CheckpointWriteError

    real_save, calls = torch.save, []

    def save_on_a_full_disk(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 1:
            return real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    run = tmp_path / "run"
    job = Job("ft", lambda ctx: finetune(tiny_cfg(), demo_data, run, ctx=ctx), state_dir=run)
    with pytest.raises(CheckpointWriteError, match="checkpoint not saved.*disk is probably full") as err:
        job.run()
    assert str(run / "checkpoint-last") in str(err.value) and "previous checkpoint is kept" in str(err.value)
    assert json.loads((run / "checkpoint-last" / "config.json").read_text())["epoch"] == 1
    assert not (run / "checkpoint-last.tmp").exists()
    assert previous_state(run)["state"] == "failed"
    monkeypatch.setattr(torch, "save", real_save)
    res = finetune(tiny_cfg(), demo_data, run, resume=True)          # space back: it continues
    assert res["epochs_run"] == 2 and [h["epoch"] for h in history(run)] == [1, 2]
