"""Augmentation registry: SimCLR ops, hierarchical jigsaw, domain-adaptive denormalization (DAD)."""

from __future__ import annotations

import json

import pytest
import torch

from core.pretrain.augment import (IntensityStats, ViewInfo, compute_modality_stats, dad, get_augment,
                                   jigsaw, list_augments, modality_stats_cached, simclr_ops)


def test_registry_lists_ops():
    assert {"random_resized_crop", "hflip", "brightness_contrast", "color_jitter", "random_grayscale",
            "gaussian_blur", "simclr", "jigsaw", "hierarchical_jigsaw", "dad"} <= set(list_augments())
    with pytest.raises(ValueError):
        get_augment("nope")


def test_simclr_ops_shapes_and_grey_stays_grey():
    g = torch.Generator().manual_seed(0)
    ops = simclr_ops(32)
    grey = torch.rand(1, 48, 40)
    for _ in range(10):
        out = ops(grey, g, ViewInfo(is_color=False))
        assert out.shape == (1, 32, 32) and torch.isfinite(out).all()
    grey3 = torch.rand(1, 48, 48).expand(3, -1, -1)                 # grey stored as 3 equal channels
    for _ in range(10):
        out = ops(grey3, g, ViewInfo(is_color=False))
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    colour = torch.rand(3, 48, 48)
    outs = [ops(colour, g, ViewInfo(is_color=True)) for _ in range(10)]
    assert any(not torch.allclose(o[0], o[1]) for o in outs)


def test_simclr_ops_deterministic_per_generator():
    x = torch.rand(1, 40, 40)
    a = simclr_ops(32)(x, torch.Generator().manual_seed(5), ViewInfo())
    b = simclr_ops(32)(x, torch.Generator().manual_seed(5), ViewInfo())
    assert torch.equal(a, b)


def test_jigsaw_permutes_blocks():
    n, b = 4, 3
    # each 3x3 block has a distinct constant value: the output must hold the same multiset of blocks
    blocks = torch.arange(n * n, dtype=torch.float32).reshape(n, n)
    x = blocks.repeat_interleave(b, 0).repeat_interleave(b, 1)[None]  # [1, 12, 12]
    out = jigsaw(x, n, torch.Generator().manual_seed(1))
    out_blocks = out[0, ::b, ::b]
    assert sorted(out_blocks.flatten().tolist()) == list(range(n * n))
    assert not torch.equal(out, x)
    # blocks stay constant (moved whole), and n = 1 is the identity
    assert torch.equal(out, out_blocks.repeat_interleave(b, 0).repeat_interleave(b, 1)[None])
    assert torch.equal(jigsaw(x, 1), x)
    # an explicit permutation: identity gives the image back
    assert torch.equal(jigsaw(x, n, perm=torch.arange(n * n)), x)


def test_jigsaw_leftover_rows_stay_and_batch_dims():
    x = torch.rand(2, 3, 13, 14)
    out = jigsaw(x, 4, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(out[..., 12:, :], x[..., 12:, :]) and torch.equal(out[..., :, 12:], x[..., :, 12:])
    views = get_augment("hierarchical_jigsaw", ns=(8, 4, 2))(torch.rand(1, 32, 32), torch.Generator(), ViewInfo())
    assert len(views) == 3 and all(v.shape == (1, 32, 32) for v in views)
    with pytest.raises(ValueError):
        jigsaw(torch.rand(1, 4, 4), 8)


def test_dad_matches_target_mean_and_std():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 16, 16, generator=g) * 0.3 + 0.2
    out = dad(x, float(x.mean()), float(x.std(unbiased=False)), 0.6, 0.05)
    assert out.mean().item() == pytest.approx(0.6, abs=1e-5)
    assert out.std(unbiased=False).item() == pytest.approx(0.05, abs=1e-5)
    # hand-computed: x = [0, 1] (mean 0.5, std 0.5) -> target (2, 3): [-1, 5]
    assert dad(torch.tensor([0., 1.]), 0.5, 0.5, 2.0, 3.0).tolist() == [-1.0, 5.0]


def test_dad_op_uses_other_modality_stats():
    stats = {"CT": IntensityStats(0.3, 0.1), "MR": IntensityStats(0.7, 0.2)}
    op = get_augment("dad", stats=stats, p=1.0, mix_p=0.0)
    x = torch.rand(1, 20, 20)
    out = op(x, torch.Generator().manual_seed(0), ViewInfo(modality="CT"))
    assert out.mean().item() == pytest.approx(0.7, abs=1e-5)
    assert out.std(unbiased=False).item() == pytest.approx(0.2, abs=1e-5)
    # a single modality maps onto itself; mixing lands between source and target
    solo = get_augment("dad", stats={"US": IntensityStats(0.4, 0.1)}, p=1.0, mix_p=0.0)
    assert solo(x, torch.Generator(), ViewInfo(modality="US")).mean().item() == pytest.approx(0.4, abs=1e-5)
    mixer = get_augment("dad", stats=stats, p=1.0, mix_p=1.0)
    mixed = mixer(x, torch.Generator().manual_seed(3), ViewInfo(modality="CT"))
    assert min(float(x.mean()), 0.7) - 1e-5 <= mixed.mean().item() <= max(float(x.mean()), 0.7) + 1e-5


def test_modality_stats_pooled_and_cached(tmp_path):
    a, b, c = torch.full((1, 2, 2), 0.2), torch.full((1, 2, 2), 0.6), torch.tensor([[[0., 1.], [0., 1.]]])
    stats = compute_modality_stats([(a, "X"), (b, "X"), (c, None)])
    assert stats["X"].mean == pytest.approx(0.4) and stats["X"].std == pytest.approx(0.2)   # pooled 4 x .2, 4 x .6
    assert stats["_unknown"].mean == pytest.approx(0.5) and stats["_unknown"].std == pytest.approx(0.5)
    calls = []

    def compute():
        calls.append(1)
        return stats

    cache = tmp_path / "dad.json"
    s1 = modality_stats_cached(cache, "k1", compute)
    s2 = modality_stats_cached(cache, "k1", compute)
    assert len(calls) == 1 and s1 == s2 and json.loads(cache.read_text())["key"] == "k1"
    modality_stats_cached(cache, "k2", compute)                      # another data set: recomputed
    assert len(calls) == 2
