"""RNG state for exact resume (core.train.rng): one state per rank, and on CUDA only the generator of the
device the process uses, so a resume with fewer visible GPUs works and every DDP rank gets its own state.
CUDA is faked (the torch.cuda calls are recorded) so the CPU runs the same code path."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from core.train.rng import (capture_rng_state, cuda_rng_state_for, gather_rng_states, loader_generator,
                            rank_rng_state, restore_rng_state, seed_everything)


@pytest.fixture
def one_fake_gpu(monkeypatch):
    """torch.cuda with one visible device; records set_rng_state calls, refuses a device that is not there."""
    calls = []

    def set_rng_state(state, device="cuda"):
        index = torch.device(device).index or 0 if not isinstance(device, int) else device
        if index >= 1:
            raise IndexError(f"CUDA device {index} is not visible")
        calls.append((int(state[0]), index))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)   # what set_rng_state_all calls
    monkeypatch.setattr(torch.cuda, "get_rng_state",
                        lambda device="cuda": torch.tensor([10 + (torch.device(device).index or 0)], dtype=torch.uint8))
    return calls


def test_resume_saved_on_two_gpus_restores_on_the_one_visible(one_fake_gpu):
    """A checkpoint holding every device's CUDA state (the former format) resumes on a machine with one GPU:
    only the state of the device in use is put back (before: set_rng_state_all -> IndexError)."""
    seed_everything(3)
    state = capture_rng_state()
    state["cuda"] = [torch.tensor([20], dtype=torch.uint8), torch.tensor([21], dtype=torch.uint8)]
    assert restore_rng_state(state, 0, "cuda:0")
    assert one_fake_gpu == [(20, 0)]


def test_capture_keeps_the_generator_of_the_device_in_use(one_fake_gpu):
    state = capture_rng_state("cuda:0")
    assert int(state["cuda"][0]) == 10
    assert "cuda" not in capture_rng_state("cpu")
    assert restore_rng_state(state, 0, "cuda:0") and one_fake_gpu == [(10, 0)]
    assert restore_rng_state(state, 0, "cpu") and one_fake_gpu == [(10, 0)]     # a CPU resume leaves CUDA alone


def test_the_state_of_a_rank_and_a_device_are_pure_choices():
    a, b = {"torch": "a"}, {"torch": "b"}
    assert rank_rng_state([a, b], 1) is b
    assert rank_rng_state(a, 0) is a                    # one dict = a checkpoint from before per-rank states
    assert rank_rng_state(a, 1) is None                 # saved with fewer ranks: this rank keeps its seed
    s0, s1 = torch.tensor([0]), torch.tensor([1])
    assert cuda_rng_state_for(s1, "cuda:0") is s1       # the saving rank's device -> this rank's device
    assert cuda_rng_state_for([s0, s1], "cuda:1") is s1
    assert cuda_rng_state_for([s0], "cuda:1") is None
    assert cuda_rng_state_for(s0, "cpu") is None
    assert cuda_rng_state_for(None, "cuda:0") is None


def test_a_rank_without_saved_state_keeps_its_seed():
    seed_everything(1)
    saved = gather_rng_states()
    seed_everything(5)
    expect = torch.rand(2)
    seed_everything(5)
    assert not restore_rng_state(saved, rank=1)
    assert torch.equal(torch.rand(2), expect)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rng_worker(rank: int, port: int, path: str, out) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        seed_everything(100 + rank)                 # fine-tuning seeds seed + rank
        states = gather_rng_states()
        if rank == 0:
            torch.save({"rng": states}, path)
        torch.distributed.barrier()
        expect = torch.rand(4).tolist()
        seed_everything(999)                        # the resumed process starts from another state
        saved = torch.load(path, weights_only=True)
        restored = restore_rng_state(saved["rng"], rank)
        out[rank] = (expect, torch.rand(4).tolist(), restored)
    finally:
        torch.distributed.destroy_process_group()


def test_each_ddp_rank_resumes_with_its_own_state(tmp_path):
    """2 gloo processes: the checkpoint (written by rank 0) holds both ranks' states, and each rank gets its
    own back (before: every rank restored rank 0's)."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rng_worker, args=(_free_port(), str(tmp_path / "optimizer.pt"), out), nprocs=2, join=True)
        result = dict(out)
    assert result[0][0] != result[1][0]             # the ranks' streams differ, so the check means something
    for rank in (0, 1):
        expect, got, restored = result[rank]
        assert restored and got == expect


def test_a_loader_with_its_own_generator_leaves_the_global_rng_alone():
    from torch.utils.data import DataLoader

    before = torch.get_rng_state()
    list(DataLoader(range(4), batch_size=2))                    # the default: one draw per iterator
    assert not torch.equal(torch.get_rng_state(), before)
    before = torch.get_rng_state()
    list(DataLoader(range(4), batch_size=2, generator=loader_generator(7)))
    assert torch.equal(torch.get_rng_state(), before)
