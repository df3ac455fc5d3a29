"""The contrastive losses and the heads' BatchNorm under DDP (2 CPU processes, gloo) equal one process with
the global batch."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from core.pretrain.losses import barlow_twins_loss, multi_positive_nt_xent

N, D, WORLD = 8, 5, 2


def _data():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(N, D, generator=g)
    z2 = torch.randn(N, D, generator=g)
    groups = torch.tensor([0, 1, 2, 0, 3, 1, 4, 4])    # positives across the two ranks' halves
    return z, z2, groups


def _bn_grads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from core.pretrain.simclr import GlobalBatchNorm1d

    torch.manual_seed(1)
    bn = GlobalBatchNorm1d(D)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
    x = x.clone().requires_grad_(True)
    y = bn(x)
    (y * torch.arange(D, dtype=torch.float32)).pow(2).mean().backward()
    return x.grad, bn.weight.grad, bn.running_var.clone()


def _reference():
    z, z2, groups = _data()
    z.requires_grad_(True)
    multi_positive_nt_xent(z, groups, 0.2).backward()
    a = z.grad.clone()
    z = z.detach().requires_grad_(True)
    z2 = z2.requires_grad_(True)
    loss, _ = barlow_twins_loss(z, z2, 0.1)
    loss.backward()
    xg, wg, rv = _bn_grads(_data()[1])
    return a, z.grad.clone(), z2.grad.clone(), xg, wg, rv


def _worker(rank: int, port: int, out: dict) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=WORLD)
    try:
        z, z2, groups = _data()
        sl = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        zl = z[sl].clone().requires_grad_(True)
        multi_positive_nt_xent(zl, groups[sl], 0.2).backward()
        # DDP averages parameter gradients over ranks: the effective gradient is grad / WORLD
        nt = zl.grad / WORLD
        zl = z[sl].clone().requires_grad_(True)
        z2l = z2[sl].clone().requires_grad_(True)
        loss, _ = barlow_twins_loss(zl, z2l, 0.1)
        loss.backward()
        xg, wg, rv = _bn_grads(z2[sl])
        torch.distributed.all_reduce(wg)            # what DDP does with parameter gradients (then / WORLD)
        out[rank] = (nt, zl.grad / WORLD, z2l.grad / WORLD, xg / WORLD, wg / WORLD, rv)
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_losses_ddp_equal_single_process():
    ctx = mp.get_context("fork")
    manager = ctx.Manager()
    out = manager.dict()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, out)) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ref = _reference()
    for k in range(4):     # NT-Xent, Barlow (both inputs), GlobalBatchNorm1d input gradients
        got = torch.cat([out[r][k] for r in range(WORLD)])
        assert torch.allclose(got, ref[k], atol=1e-5), (k, got, ref[k])
    for r in range(WORLD):  # BatchNorm weight gradient and running variance
        assert torch.allclose(out[r][4], ref[4], atol=1e-5) and torch.allclose(out[r][5], ref[5], atol=1e-5)
