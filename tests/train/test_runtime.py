"""The shared training runtime (core.train): device per process, precision table, schedule, parameter
groups, NaN guard (also across 2 gloo processes), atomic checkpoint folders and their resolvers."""

from __future__ import annotations

import math
import shutil
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from core.train.checkpoint import (find_checkpoint_dir, repair_checkpoint_dir, resolve_classifier_checkpoint,
                                   resolve_pretrain_checkpoint, write_checkpoint_dir)
from core.train.config import FinetuneConfig
from core.train.distributed import choose_device
from core.train.nan_guard import NanGuard
from core.train.precision import CudaMath, Precision, configure_cuda_math, decide_cuda_math, decide_precision
from core.train.schedule import lr_at, no_weight_decay_names, param_groups, set_lr


# ------------------------------------------------------------------------------------------------- device
def test_device_follows_local_rank_under_torchrun():
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    assert choose_device(env, 2, None) == "cuda:1"
    assert choose_device(env, 2, "cuda") == "cuda:1"            # plain "cuda" = this process's GPU
    assert choose_device({**env, "LOCAL_RANK": "0", "RANK": "0"}, 2, None) == "cuda:0"
    assert choose_device({}, 2, None) == "cuda:0"                # one process
    assert choose_device(env, 0, None) == "cpu"                  # no GPU: gloo on the CPU
    assert choose_device(env, 2, "cpu") == "cpu"
    assert choose_device({}, 2, "cuda:1") == "cuda:1"            # an explicit GPU is kept


@pytest.mark.parametrize("requested, backend, set_device", [("cpu", "gloo", []), (None, "nccl", ["cuda:1"])])
def test_backend_follows_the_process_device_not_the_machine(monkeypatch, requested, backend, set_device):
    """torchrun on a machine with 2 GPUs: ``--device cpu`` joins with gloo (nccl would refuse its CPU
    tensors); the default takes cuda:LOCAL_RANK with nccl. The process group itself is faked."""
    import core.train.distributed as distributed

    calls = {"backend": [], "set_device": []}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed, "visible_cuda_devices", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls["set_device"].append(str(d)))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, **kw: calls["backend"].append(backend))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    info = distributed.setup_distributed(requested)
    assert calls == {"backend": [backend], "set_device": set_device}
    assert info.device == torch.device(set_device[0] if set_device else "cpu") and info.owns_group
    assert distributed.process_group_backend("cuda:0") == "nccl"
    assert distributed.process_group_backend("cpu") == "gloo"


def test_device_errors_name_the_reason():
    with pytest.raises(ValueError, match="LOCAL_RANK 2 but only 2 CUDA"):
        choose_device({"WORLD_SIZE": "3", "LOCAL_RANK": "2"}, 2, None)
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        choose_device({}, 0, "cuda")
    with pytest.raises(ValueError, match="only 1 CUDA device"):
        choose_device({}, 1, "cuda:1")


# ---------------------------------------------------------------------------------------------- precision
@pytest.mark.parametrize("setting, device, cc, native, expect", [
    ("auto", "cuda", (8, 0), False, Precision(torch.bfloat16)),
    ("auto", "cuda", (9, 0), False, Precision(torch.bfloat16)),
    ("auto", "cuda", (7, 5), False, Precision(torch.float16, grad_scaler=True)),   # T4: no emulated bf16
    ("auto", "cuda", (7, 0), False, Precision(torch.float16, grad_scaler=True)),   # V100
    ("fp16", "cuda", (8, 6), False, Precision(torch.float16, grad_scaler=True)),
    ("bf16", "cuda", (8, 6), False, Precision(torch.bfloat16)),
    ("fp32", "cuda", (8, 6), False, Precision(None)),
    ("auto", "cpu", None, True, Precision(torch.bfloat16)),                         # AMX / AVX512-BF16
    ("auto", "cpu", None, False, Precision(None)),                                  # AVX2: bf16 ~100x slower
    ("bf16", "cpu", None, True, Precision(torch.bfloat16)),
    ("fp32", "cpu", None, True, Precision(None)),
    ("auto", "mps", None, False, Precision(None)),
])
def test_precision_decision_table(setting, device, cc, native, expect):
    assert decide_precision(setting, device, cc, native) == expect


@pytest.mark.parametrize("setting, device, cc, native, match", [
    ("bf16", "cuda", (7, 5), False, "compute capability 8.0"),
    ("fp16", "cpu", None, True, "fp16 autocast needs CUDA"),
    ("bf16", "cpu", None, False, "no native bf16"),
    ("half", "cpu", None, False, "precision must be one of"),
])
def test_precision_refuses_what_the_hardware_cannot_do(setting, device, cc, native, match):
    with pytest.raises(ValueError, match=match):
        decide_precision(setting, device, cc, native)


@pytest.mark.parametrize("setting, cc, expect", [
    ("auto", (8, 0), CudaMath(cudnn_benchmark=True, tf32=True)),
    ("bf16", (9, 0), CudaMath(cudnn_benchmark=True, tf32=True)),
    ("fp32", (8, 6), CudaMath(cudnn_benchmark=True, tf32=False)),      # fp32 asked for: full fp32
    ("auto", (7, 0), CudaMath(cudnn_benchmark=True, tf32=False)),      # V100: no TF32
])
def test_cuda_math_decision_table(setting, cc, expect):
    assert decide_cuda_math(setting, cc) == expect


def test_cuda_math_is_set_for_a_cuda_run_only(monkeypatch):
    """The CUDA path up to the flags, with the device's capability faked; a CPU run changes nothing."""
    flags = ((torch.backends.cudnn, "benchmark"), (torch.backends.cuda.matmul, "allow_tf32"),
             (torch.backends.cudnn, "allow_tf32"))
    before = [getattr(module, name) for module, name in flags]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    try:
        torch.backends.cudnn.benchmark = False
        assert configure_cuda_math("auto", "cpu") is None and torch.backends.cudnn.benchmark is False
        assert configure_cuda_math("auto", "cuda:0") == CudaMath(True, True)
        assert all(getattr(module, name) for module, name in flags)
        configure_cuda_math("fp32", "cuda:0")
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        for (module, name), value in zip(flags, before):
            setattr(module, name, value)


def test_torch_floor_has_the_device_grad_scaler():
    """make_grad_scaler calls torch.amp.GradScaler(device.type), new in torch 2.3 (2.2 has only
    torch.cuda.amp.GradScaler): the declared floor must not allow a torch without it."""
    import re
    import tomllib
    from pathlib import Path

    deps = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    floor = next(re.fullmatch(r"torch>=(\d+)\.(\d+)", d.split(";")[0].strip()) for d in deps["dependencies"]
                 if re.match(r"torch\b(?!vision)", d))
    assert floor and (int(floor[1]), int(floor[2])) >= (2, 3)


def test_old_finetune_config_amp_maps_to_precision():
    assert FinetuneConfig.from_dict({"amp": False}).precision == "fp32"
    assert FinetuneConfig.from_dict({"amp": True}).precision == "auto"
    assert FinetuneConfig.from_dict({"amp": False, "precision": "bf16"}).precision == "bf16"
    assert "amp" not in FinetuneConfig().to_dict()


# ----------------------------------------------------------------------------------------------- schedule
def test_lr_schedule_matches_both_former_schedules():
    """Pretraining's ``lr_at`` and fine-tuning's former ``lr_factor`` (x base lr) give the same numbers."""
    lr, min_lr, warmup, total = 3e-3, 1e-6, 5, 40

    def former_finetune(it):     # core/train/finetune.py lr_factor before the runtime existed
        min_ratio = min_lr / lr
        if warmup > 0 and it < warmup:
            return lr * (it + 1) / warmup
        t = (it - warmup) / max(1, total - warmup)
        return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    for it in range(total + 3):
        assert lr_at(it, lr=lr, min_lr=min_lr, warmup_steps=warmup, total_steps=total) == \
            pytest.approx(former_finetune(it), rel=1e-12)
    assert lr_at(total, lr=lr, min_lr=min_lr, warmup_steps=warmup, total_steps=total) == pytest.approx(min_lr)
    assert lr_at(0, lr=lr, min_lr=min_lr, warmup_steps=0, total_steps=total) == pytest.approx(lr)


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 4, 1, 1))
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.LayerNorm(4)
        self.gamma_block = nn.Module()
        self.gamma_block.gamma = nn.Parameter(torch.ones(4))
        self.fc = nn.Linear(4, 2)


def test_param_groups_skip_decay_on_norms_biases_layer_scales_mask_tokens():
    model = _Toy()
    assert no_weight_decay_names(model) == {"mask_token", "conv.bias", "norm.weight", "norm.bias",
                                            "gamma_block.gamma", "fc.bias"}
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {"conv.weight", "fc.weight"} and decay["weight_decay"] == 0.05
    assert len(no_decay["params"]) == 6 and no_decay["weight_decay"] == 0.0


def test_layer_decay_scales_the_lr_of_early_layers():
    from core.models.backbones import create_backbone

    model = create_backbone("convnext_atto", num_classes=3, tiny=True)
    groups = param_groups(model, 0.05, layer_decay=0.5)
    scales = sorted({g["lr_scale"] for g in groups})
    assert scales[-1] == 1.0 and scales[0] < 0.1                   # head at full lr, stem decayed
    assert all(g["weight_decay"] == 0.0 for g in groups if any(p.ndim <= 1 for p in g["params"]))
    opt = torch.optim.AdamW(groups, lr=1.0)
    set_lr(opt, 2e-3)
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([2e-3 * s for s in scales])


# ---------------------------------------------------------------------------------------------- NaN guard
def test_nan_guard_skips_and_gives_up_after_n_in_a_row():
    guard = NanGuard(3, hint="lower --lr")
    assert guard.step_ok(1.0, torch.tensor(2.0))
    assert not guard.step_ok(float("nan"))
    assert not guard.step_ok(1.0, float("inf"))                     # any value
    assert guard.step_ok(0.5)                                      # a good step resets the count
    assert [guard.step_ok(float("nan")) for _ in range(3)] == [False] * 3
    with pytest.raises(FloatingPointError, match=r"4 non-finite steps in a row at step 9; lower --lr"):
        guard.step_ok(float("nan"), where="step 9")
    assert guard.skipped == 5


def test_nan_guard_resumed_from_its_state_gives_up_where_an_uninterrupted_one_would():
    """Its counts travel in a checkpoint's resume state: two bad steps before a kill and two after give up
    like four in a row (a fresh guard would have allowed three more)."""
    guard = NanGuard(3)
    assert [guard.step_ok(float("nan")) for _ in range(2)] == [False, False]
    resumed = NanGuard(3)
    resumed.load_state_dict(guard.state_dict())
    assert not resumed.step_ok(float("nan"))
    with pytest.raises(FloatingPointError, match="4 non-finite steps in a row"):
        resumed.step_ok(float("nan"))
    assert resumed.skipped == 3
    older = NanGuard(3)
    older.load_state_dict({})                                        # a checkpoint from before the counts
    assert (older.in_a_row, older.skipped) == (0, 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nan_worker(rank: int, port: int, out) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        guard = NanGuard(1)
        # step 0: NaN on rank 1 only; step 1: fine everywhere; steps 2, 3: NaN on rank 1 -> both give up
        decisions = [guard.step_ok(float("nan") if rank == 1 else 1.0), guard.step_ok(1.0),
                     guard.step_ok(float("nan") if rank == 1 else 1.0)]
        try:
            guard.step_ok(float("nan") if rank == 1 else 1.0)
            decisions.append("went on")
        except FloatingPointError:
            decisions.append("stopped")
        torch.distributed.barrier()                                # no rank is left waiting in a collective
        out[rank] = decisions
    finally:
        torch.distributed.destroy_process_group()


def test_nan_guard_ranks_agree_under_ddp():
    """A NaN on rank 1 only: both ranks skip the step (and give up together), so none hangs."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_nan_worker, args=(_free_port(), out), nprocs=2, join=True)
        result = dict(out)
    assert result[0] == result[1] == [False, True, False, "stopped"]


# ----------------------------------------------------------------------------------------------- checkpoints
def _write(files: dict[str, str]):
    def write(folder):
        for name, text in files.items():
            (folder / name).write_text(text)
    return write


CKPT = {"config.json": "{}", "model.safetensors": "weights"}


def test_atomic_write_replaces_and_leaves_no_temporaries(tmp_path):
    final = tmp_path / "checkpoint-last"
    write_checkpoint_dir(final, _write({**CKPT, "config.json": '{"epoch": 1}'}))
    write_checkpoint_dir(final, _write({**CKPT, "config.json": '{"epoch": 2}'}))
    assert (final / "config.json").read_text() == '{"epoch": 2}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-last"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    final = tmp_path / "checkpoint-last"
    write_checkpoint_dir(final, _write({**CKPT, "config.json": '{"epoch": 1}'}))

    def broken(folder):
        (folder / "model.safetensors").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_checkpoint_dir(final, broken)
    assert find_checkpoint_dir(final) == final and (final / "config.json").read_text() == '{"epoch": 1}'


def _killed_between_renames(final, old_epoch: int, new_epoch: int) -> None:
    """What a kill after ``final -> final.old`` and before ``final.tmp -> final`` leaves."""
    old, tmp = final.with_name(final.name + ".old"), final.with_name(final.name + ".tmp")
    for folder, epoch in ((old, old_epoch), (tmp, new_epoch)):
        folder.mkdir(parents=True)
        _write({**CKPT, "config.json": f'{{"epoch": {epoch}}}'})(folder)
    assert not final.exists()


def test_kill_between_renames_is_recovered_by_both_resolvers(tmp_path):
    run = tmp_path / "pre"
    _killed_between_renames(run / "checkpoint-last", 1, 2)
    found = resolve_pretrain_checkpoint(run)
    assert found.name == "checkpoint-last.tmp" and '"epoch": 2' in (found / "config.json").read_text()

    clf = tmp_path / "clf"
    _killed_between_renames(clf / "checkpoint-best", 3, 4)
    assert resolve_classifier_checkpoint(clf).name == "checkpoint-best.tmp"
    assert repair_checkpoint_dir(clf / "checkpoint-best") == clf / "checkpoint-best"
    assert sorted(p.name for p in clf.iterdir()) == ["checkpoint-best"]
    assert '"epoch": 4' in (clf / "checkpoint-best" / "config.json").read_text()
    assert resolve_classifier_checkpoint(clf) == clf / "checkpoint-best"


def test_incomplete_tmp_falls_back_to_old_and_a_new_write_keeps_it_until_done(tmp_path):
    final = tmp_path / "checkpoint-last"
    _killed_between_renames(final, 1, 2)
    (final.with_name("checkpoint-last.tmp") / "model.safetensors").unlink()    # not complete: never renamed
    assert find_checkpoint_dir(final).name == "checkpoint-last.old"
    write_checkpoint_dir(final, _write({**CKPT, "config.json": '{"epoch": 3}'}))
    assert (final / "config.json").read_text() == '{"epoch": 3}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-last"]


def test_resolvers_name_their_kind_and_say_what_is_missing(tmp_path):
    run = tmp_path / "run"
    for sub in ("checkpoint-best", "checkpoint-last"):
        (run / sub).mkdir(parents=True)
        _write(CKPT)(run / sub)
    assert resolve_classifier_checkpoint(run) == run / "checkpoint-best"
    assert resolve_pretrain_checkpoint(run) == run / "checkpoint-last"
    shutil.rmtree(run / "checkpoint-best")
    assert resolve_classifier_checkpoint(run) == run / "checkpoint-last"
    assert resolve_classifier_checkpoint(run / "checkpoint-last") == run / "checkpoint-last"
    with pytest.raises(FileNotFoundError, match="no classifier checkpoint"):
        resolve_classifier_checkpoint(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no checkpoint here"):
        resolve_pretrain_checkpoint(tmp_path / "empty")


def test_json_written_atomically_and_a_damaged_one_is_named(tmp_path):
    from core.atomic import write_json_atomic
    from core.train.checkpoint import read_json

    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})          # fails half-way through the dump
    assert read_json(path) == {"a": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    path.write_text('{"a": 1, "b": [1, 2')                 # what a plain write_text cut by a kill leaves
    with pytest.raises(ValueError, match="damaged or truncated JSON") as err:
        read_json(path)
    assert str(path) in str(err.value)


def test_a_truncated_run_file_names_itself_on_resume(tmp_path, demo_dir):
    """split.json cut by a kill: resuming says which file is damaged (a JSONDecodeError named none)."""
    from core.train.data import load_labeled_data
    from core.train.finetune import finetune

    cfg = FinetuneConfig(backbone="convnext_atto", tiny=True, init="random", image_size=32, epochs=1,
                         batch_size=16, warmup_epochs=0, val_fraction=0.2, test_fraction=0.2, num_workers=0,
                         precision="fp32")
    data = load_labeled_data(demo_dir)
    run = tmp_path / "run"
    finetune(cfg, data, run)
    split = run / "split.json"
    split.write_text(split.read_text()[:40])
    (run / "metrics.json").unlink()
    with pytest.raises(ValueError, match="damaged or truncated") as err:
        finetune(cfg, data, run, resume=True)
    assert str(split) in str(err.value)


def test_trim_epoch_log_drops_rows_after_the_checkpoint_and_a_cut_line(tmp_path):
    from core.train.checkpoint import trim_epoch_log

    log = tmp_path / "history.jsonl"
    log.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n{"epo')
    assert trim_epoch_log(log, 2) == 2
    assert log.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    assert trim_epoch_log(log, 2) == 0 and trim_epoch_log(tmp_path / "none.jsonl", 1) == 0
