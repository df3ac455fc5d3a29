"""Random-number state of python, numpy and torch as plain tensors and numbers, so that a resumable
checkpoint's ``optimizer.pt`` loads with ``torch.load(weights_only=True)`` (no pickled numpy objects).

The state is per process: under ``torchrun`` each rank has its own (fine-tuning seeds ``seed + rank``), so a
checkpoint holds one state per rank (:func:`gather_rng_states`, rank order) and each rank restores its own.
CUDA: only the state of the device the process computes on is saved and restored, so a resume on a machine
with fewer visible GPUs (or on another ``cuda:N``) never indexes a device that is not there.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist


def capture_rng_state(device: torch.device | str = "cpu") -> dict:
    """This process's state; on a CUDA ``device`` also that device's generator."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
             "python": [int(v) for v in random.getstate()[1]]}
    device = torch.device(device)
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def gather_rng_states(device: torch.device | str = "cpu") -> list[dict]:
    """Every rank's :func:`capture_rng_state`, in rank order (a collective under torchrun: all ranks call it)."""
    own = capture_rng_state(device)
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [own]
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, own)
    return states


def rank_rng_state(saved: dict | list[dict], rank: int) -> dict | None:
    """The state ``rank`` saved: one per rank (a list), or one dict (checkpoints before per-rank states:
    rank 0's). None when the run was saved with fewer ranks than it resumes with."""
    states = [saved] if isinstance(saved, dict) else list(saved)
    return states[rank] if rank < len(states) else None


def cuda_rng_state_for(saved_cuda, device: torch.device | str) -> torch.Tensor | None:
    """The saved CUDA generator state to put on ``device``: the one state of the saving rank's device, or,
    from an older checkpoint holding every device's state (a list by index), the entry of this device's
    index when it was saved. None on a non-CUDA device or when there is nothing for it."""
    device = torch.device(device)
    if saved_cuda is None or device.type != "cuda":
        return None
    if isinstance(saved_cuda, torch.Tensor):
        return saved_cuda
    index = device.index or 0
    return saved_cuda[index] if index < len(saved_cuda) else None


def restore_rng_state(saved: dict | list[dict], rank: int = 0, device: torch.device | str = "cpu") -> bool:
    """Put back the state ``rank`` saved (see :func:`rank_rng_state`); False (nothing changed: the fresh
    seed stays) when there is none for this rank."""
    state = rank_rng_state(saved, rank)
    if state is None:
        return False
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate((3, tuple(state["python"]), None))
    cuda = cuda_rng_state_for(state.get("cuda"), device)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, torch.device(device))
    return True


def loader_generator(seed: int) -> torch.Generator:
    """A DataLoader's own generator, for the worker seed it draws when an iterator starts. With the global
    one (the default), every new iterator takes a draw from the global RNG: a resumed run then continues
    one draw off an uninterrupted run's (drop path, dropout), and worker RNGs depend on what ran before.
    Data randomness itself is seeded per sample, so which seed workers get changes no result."""
    return torch.Generator().manual_seed(int(seed))


def seed_everything(seed: int) -> None:
    """python, numpy and torch (all devices) from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
