"""Kill tests: `medssl pretrain METHOD` (every method) and `medssl finetune` run as child processes
(``python -m core.cli``, tiny models, phantom images), SIGKILLed at a point found by polling the run folder
(never the child's output): after the k-th epoch line of the log, at the k-th appearance of a ``.tmp``
checkpoint folder (a kill in the middle of a checkpoint write), after the step checkpoint k; k drawn from
the seed. Then: no file of the run is corrupt, at most one checkpoint interval is lost, and the run resumed
by the same command (``--resume``) ends with the uninterrupted run's per-epoch log rows and weights, exactly
(fp32: deterministic on a CPU). One fast case is unmarked; the rest are slow."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from safetensors.torch import load_file

from core.models.weights import read_safetensors, read_torch_file
from core.train.checkpoint import REQUIRED, find_checkpoint_dir, read_json

REPO = Path(__file__).resolve().parents[1]
RESUMABLE = REQUIRED + ("optimizer.pt",)
CHILD_TIMEOUT_S = 600
COMMON = ["--tiny", "--backbone", "convnext_atto", "--precision", "fp32"]

# pretraining: 96 phantoms / batch 16 = 6 steps per epoch, a checkpoint every 2 steps and at each epoch end
PRETRAIN_EPOCHS, STEPS_PER_EPOCH, CHECKPOINT_STEPS = 3, 6, 2
PRETRAIN_ARGS = {
    "mae": ["--image-size", "64", "--decoder-width", "16"],
    "simclr": ["--image-size", "32", "--proj-hidden", "32", "--proj-dim", "16"],
    "micle": ["--image-size", "32", "--proj-hidden", "32", "--proj-dim", "16"],
    "fgssl": ["--image-size", "32", "--proj-hidden", "32", "--proj-dim", "16"],
    "multimodal": ["--image-size", "32", "--proj-hidden", "32", "--proj-dim", "16"],
}
FINETUNE_EPOCHS = 4


def pretrain_args(method: str, data: Path, out: Path) -> list[str]:
    return ["pretrain", method, str(data), "--out", str(out), *COMMON, "--workers", "0", *PRETRAIN_ARGS[method],
            "--epochs", str(PRETRAIN_EPOCHS), "--batch-size", "16", "--lr", "2e-3", "--warmup-epochs", "0.5",
            "--checkpoint-steps", str(CHECKPOINT_STEPS)]


def finetune_args(data: Path, out: Path) -> list[str]:
    """One (persistent) loader worker: its seed once came from the global RNG, so a resumed run's drop path
    differed from an uninterrupted run's (core.train.rng.loader_generator)."""
    return ["finetune", str(data), "--out", str(out), *COMMON, "--workers", "1", "--init", "random",
            "--image-size", "32",
            "--epochs", str(FINETUNE_EPOCHS), "--batch-size", "16", "--lr", "3e-3", "--warmup-epochs", "0.5",
            "--patience", "100", "--quiet"]


# -- the child ----------------------------------------------------------------------------------------------
def _env(tmp: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MEDSSL_DATA_DIR": str(tmp / "user")}


def run_child(args: list[str], tmp: Path) -> None:
    """Run ``medssl ARGS`` to the end; fails the test with its stderr when it fails."""
    proc = subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=REPO, env=_env(tmp),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=CHILD_TIMEOUT_S)
    assert proc.returncode == 0, f"medssl {' '.join(args[:2])} failed:\n{proc.stderr[-3000:]}"


def kill_when(args: list[str], tmp: Path, ready: Callable[[], bool], what: str) -> None:
    """Start ``medssl ARGS`` and SIGKILL it (its whole process group) as soon as ``ready()`` holds."""
    kill_command_when([sys.executable, "-m", "core.cli", *args], _env(tmp), tmp / "killed.err", ready, what)


def kill_command_when(cmd: list[str], env: dict, err_path: Path, ready: Callable[[], bool], what: str) -> None:
    """Start ``cmd`` in its own process group and SIGKILL the whole group as soon as ``ready()`` holds
    (polled from files on disk, never from the child's output); fails with its stderr if it ended first."""
    err = open(err_path, "w+")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        err.seek(0)
        stderr = err.read()
        err.close()
    assert proc.returncode == -signal.SIGKILL, f"the child ended before {what} (rc {proc.returncode}):\n" \
                                               f"{stderr[-3000:]}"


class Watch:
    """What the poller saw of a run folder: epoch lines, step checkpoints, ``.tmp`` checkpoint folders."""

    def __init__(self, run: Path, log_name: str):
        self.run, self.log = run, run / log_name
        self.tmp_seen, self._tmp_now = 0, False

    def lines(self) -> int:
        try:
            return self.log.read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    def tmp_appeared(self) -> int:
        """How many times a ``checkpoint-*.tmp`` folder has appeared so far (call it in the polling loop)."""
        try:
            now = any(e.name.startswith("checkpoint") and e.name.endswith(".tmp") for e in os.scandir(self.run))
        except FileNotFoundError:
            now = False
        self.tmp_seen += now and not self._tmp_now
        self._tmp_now = now
        return self.tmp_seen

    def checkpoint_step(self) -> int:
        ckpt = find_checkpoint_dir(self.run / "checkpoint-last", RESUMABLE)
        try:
            return read_json(ckpt / "config.json")["progress"]["global_step"] if ckpt else 0
        except (FileNotFoundError, ValueError):       # being replaced right now
            return 0


def progress_on_disk(run: Path, log_name: str, of_row: str, of_config: Callable[[dict], int]) -> int:
    """The furthest progress a killed run wrote anywhere: its log rows, and the config.json of every copy of
    its checkpoints (a ``.tmp`` being written included)."""
    done = [r[of_row] for r in log_rows(run / log_name)]
    for cfg in run.glob("checkpoint-*/config.json"):
        try:
            done.append(of_config(read_json(cfg)))
        except ValueError:                            # cut by the kill
            pass
    return max(done, default=0)


def kill_point(seed: int, kinds: tuple[str, ...], limits: dict[str, int]) -> tuple[str, int]:
    """(kind, k) drawn from ``seed``: the kind cycles with the seed, k in 1..limits[kind]."""
    kind = kinds[seed % len(kinds)]
    return kind, random.Random(seed).randint(1, limits[kind])


def condition(watch: Watch, kind: str, k: int) -> Callable[[], bool]:
    return {"line": lambda: watch.lines() >= k,
            "tmp": lambda: watch.tmp_appeared() >= k,
            "step": lambda: watch.checkpoint_step() >= k}[kind]


# -- what a killed run folder must hold ---------------------------------------------------------------------
def log_rows(path: Path) -> list[dict]:
    """The complete lines of a JSON-lines log; only the last line may be cut by a kill."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines = lines[:-1]
    return [json.loads(line) for line in lines]


def assert_intact(run: Path, checkpoints: dict[str, tuple[str, ...]], log_name: str) -> dict[str, Path | None]:
    """Every file of ``run`` a later step reads loads: the checkpoints (where a kill left them: the folder,
    or its complete ``.tmp``/``.old``), the exported encoder, the log, the JSON files. Returns the checkpoints."""
    found = {}
    for name, required in checkpoints.items():
        ckpt = found[name] = find_checkpoint_dir(run / name, required)
        if ckpt is None:
            continue
        read_json(ckpt / "config.json")
        read_safetensors(ckpt / "model.safetensors")
        if "optimizer.pt" in required:
            read_torch_file(ckpt / "optimizer.pt")
    if (run / "encoder.safetensors").is_file():
        read_safetensors(run / "encoder.safetensors")
    for name in ("split.json", "metrics.json", "job.json"):
        if (run / name).is_file():
            read_json(run / name)
    log_rows(run / log_name)
    return found


def assert_same_run(resumed: Path, full: Path, log_name: str, keys: tuple[str, ...]) -> None:
    """The resumed run's log rows (one per epoch, none twice) and last weights are the uninterrupted run's."""
    a, b = log_rows(resumed / log_name), log_rows(full / log_name)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b):
        assert {k: ra[k] for k in keys} == {k: rb[k] for k in keys}, f"epoch {ra['epoch']}"
    wa = load_file(str(resumed / "checkpoint-last" / "model.safetensors"))
    wb = load_file(str(full / "checkpoint-last" / "model.safetensors"))
    assert all(wa[k].equal(wb[k]) for k in wb)
    assert sorted(p.name for p in resumed.iterdir() if p.name.startswith("checkpoint")) == \
        sorted(p.name for p in full.iterdir() if p.name.startswith("checkpoint"))


# -- pretraining ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, demo_dir) -> Callable[[str], Path]:
    """The uninterrupted run of a command, made once per module."""
    done: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in done:
            tmp = tmp_path_factory.mktemp(f"full-{kind}")
            out = tmp / "run"
            run_child(finetune_args(demo_dir, out) if kind == "finetune" else pretrain_args(kind, demo_dir, out),
                      tmp)
            done[kind] = out
        return done[kind]

    return get


def _pretrain_kill_resume(method: str, seed: int, demo_dir: Path, tmp: Path, full: Path) -> None:
    total = PRETRAIN_EPOCHS * STEPS_PER_EPOCH
    kind, k = kill_point(seed, ("tmp", "line", "step"),
                         {"tmp": 4, "line": PRETRAIN_EPOCHS - 1, "step": total - CHECKPOINT_STEPS})
    out = tmp / "run"
    args = pretrain_args(method, demo_dir, out)
    kill_when(args, tmp, condition(Watch(out, "log.jsonl"), kind, k), f"the kill point {kind} {k}")
    kept = assert_intact(out, {"checkpoint-last": RESUMABLE}, "log.jsonl")["checkpoint-last"]
    kept_step = read_json(kept / "config.json")["progress"]["global_step"] if kept else 0
    done = progress_on_disk(out, "log.jsonl", "global_step", lambda c: c["progress"]["global_step"])
    print(f"{method} seed {seed}: killed at {kind} {k} after step {done}, resumed from step {kept_step}; "
          f"a partial .tmp left: {(out / 'checkpoint-last.tmp').exists()}")
    assert done - kept_step <= CHECKPOINT_STEPS                  # at most one checkpoint interval lost
    run_child(args, tmp)                                         # the same command again continues the run
    assert_same_run(out, full, "log.jsonl", ("epoch", "global_step", "loss", "grad_norm", "skipped_steps"))
    assert load_file(str(out / "encoder.safetensors")).keys() == load_file(str(full / "encoder.safetensors")).keys()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("method", list(PRETRAIN_ARGS))
def test_pretraining_killed_and_resumed(method, seed, demo_dir, tmp_path, uninterrupted):
    _pretrain_kill_resume(method, seed, demo_dir, tmp_path, uninterrupted(method))


def test_mae_killed_while_writing_a_checkpoint_resumes_exactly(demo_dir, tmp_path, uninterrupted):
    """The fast representative (the slow ones take seeds 1-3): MAE killed in the middle of a checkpoint
    write (seed 0: a kill at a .tmp checkpoint folder)."""
    _pretrain_kill_resume("mae", 0, demo_dir, tmp_path, uninterrupted("mae"))


# -- fine-tuning ------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_finetuning_killed_and_resumed(seed, demo_dir, tmp_path, uninterrupted):
    """Kills after an epoch's history row (before or after its checkpoint) and during checkpoint writes
    (checkpoint-best or -last); ``--resume`` gives the uninterrupted run's rows, weights and test metrics."""
    full = uninterrupted("finetune")
    kind, k = kill_point(seed, ("tmp", "line"), {"tmp": 5, "line": FINETUNE_EPOCHS - 1})
    out = tmp_path / "run"
    args = finetune_args(demo_dir, out)
    kill_when(args, tmp_path, condition(Watch(out, "history.jsonl"), kind, k), f"the kill point {kind} {k}")
    kept = assert_intact(out, {"checkpoint-last": RESUMABLE, "checkpoint-best": REQUIRED}, "history.jsonl")
    kept_epoch = read_json(kept["checkpoint-last"] / "config.json")["epoch"] if kept["checkpoint-last"] else 0
    done = progress_on_disk(out, "history.jsonl", "epoch", lambda c: c["epoch"])
    print(f"finetune seed {seed}: killed at {kind} {k} after epoch {done}, resumed after epoch {kept_epoch}")
    assert done - kept_epoch <= 1                                # at most one epoch (the interval) lost
    run_child([*args, "--resume"], tmp_path)
    assert_same_run(out, full, "history.jsonl", ("epoch", "train_loss", "train_acc", "lr", "val_nll", "best_epoch"))
    assert read_json(out / "metrics.json")["test"] == read_json(full / "metrics.json")["test"]
