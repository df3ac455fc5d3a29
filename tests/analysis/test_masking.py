"""core.analysis.masking.sample_mask: exact counts, seeding, distributions (statistical tests with fixed seeds)."""

from __future__ import annotations

import math

import pytest
import torch

from core.analysis.masking import mask_weights, num_masked, sample_mask


def grid(B: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Per-cell entropies in [0, 6] bits with a clear spread."""
    g = torch.Generator().manual_seed(seed)
    return 6.0 * torch.rand(B, h, w, generator=g)


@pytest.mark.parametrize("shape", [(7, 7), (5, 9), (1, 1), (16, 16)])
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.6, 0.75, 1.0])
@pytest.mark.parametrize("mode", ["high", "low", "random"])
def test_exact_number_of_hidden_cells(shape, ratio, mode):
    h, w = shape
    mask = sample_mask(grid(6, h, w), ratio=ratio, mode=mode, generator=0)
    assert mask.dtype == torch.bool and mask.shape == (6, h, w)
    assert mask.flatten(1).sum(1).tolist() == [int(round(ratio * h * w))] * 6 == [num_masked(h * w, ratio)] * 6


def test_exact_count_even_when_most_weights_underflow():
    e = torch.zeros(2, 7, 7)
    e[:, 0, 0] = 1e4                                    # softmax puts all mass on one cell; eps = 0
    mask = sample_mask(e, ratio=0.6, tau=1.0, eps=0.0, generator=1)
    assert mask.flatten(1).sum(1).tolist() == [29, 29] and mask[:, 0, 0].all()


def test_seeded_and_deterministic():
    e = grid(8, 7, 7)
    a = sample_mask(e, generator=123)
    assert torch.equal(a, sample_mask(e, generator=123))
    assert torch.equal(a, sample_mask(e, generator=torch.Generator().manual_seed(123)))
    assert not torch.equal(a, sample_mask(e, generator=124))
    g = torch.Generator().manual_seed(5)
    first, second = sample_mask(e, generator=g), sample_mask(e, generator=g)
    assert not torch.equal(first, second)               # the generator advances
    torch.manual_seed(9)
    global_a = sample_mask(e)
    torch.manual_seed(9)
    assert torch.equal(global_a, sample_mask(e))
    # Images of a batch get independent masks.
    same = sample_mask(torch.zeros(4, 7, 7), generator=0)
    assert not all(torch.equal(same[0], same[i]) for i in range(1, 4))


def test_eps_one_is_uniform_random_masking():
    e = grid(4000, 7, 7, seed=1)
    uniform = sample_mask(e, ratio=0.6, eps=1.0, mode="high", generator=2)
    # Same numbers drawn, same weights 1/L: exactly the masks of mode "random".
    assert torch.equal(uniform, sample_mask(e, ratio=0.6, mode="random", generator=2))
    # In distribution: every cell hidden with probability 0.6 regardless of its entropy.
    freq = uniform.double().mean(0)
    sd = math.sqrt(0.6 * 0.4 / 4000)
    assert (freq - 0.6).abs().max().item() < 5 * sd
    hidden_mean = (e * uniform).flatten(1).sum(1) / 29
    assert abs(hidden_mean.mean().item() - e.mean().item()) < 0.02


def test_high_mode_hides_higher_entropy_than_random_and_low_lower():
    e = grid(2000, 7, 7, seed=3)
    n = num_masked(49, 0.6)

    def mean_hidden(mode: str) -> torch.Tensor:
        m = sample_mask(e, ratio=0.6, tau=1.0, eps=0.1, mode=mode, generator=4)
        return (e * m).flatten(1).sum(1) / n

    high, rand, low = mean_hidden("high"), mean_hidden("random"), mean_hidden("low")
    # Welch t statistic over 2000 draws each; a real effect gives t in the tens.
    for a, b in ((high, rand), (rand, low)):
        t = (a.mean() - b.mean()) / math.sqrt(a.var() / len(a) + b.var() / len(b))
        assert t.item() > 10, t


def test_first_pick_is_proportional_to_weights():
    """Efraimidis–Spirakis: with one cell to hide, P(cell) = w exactly."""
    e = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]]).expand(40000, 2, 2)
    w = mask_weights(e[:1], tau=1.0, eps=0.2)[0].flatten()
    mask = sample_mask(e, ratio=0.25, tau=1.0, eps=0.2, generator=6)   # round(0.25 * 4) = 1
    freq = mask.double().mean(0).flatten()
    sd = (w * (1 - w) / 40000).sqrt()
    assert ((freq - w).abs() < 5 * sd).all(), (freq, w)


def test_weights():
    e = grid(3, 4, 5)
    for mode in ("high", "low", "random"):
        w = mask_weights(e, tau=0.7, eps=0.3, mode=mode)
        assert w.shape == e.shape and torch.allclose(w.flatten(1).sum(1), torch.ones(3, dtype=torch.float64))
        assert (w >= 0.3 / 20 - 1e-12).all()
    hi, lo = mask_weights(e, mode="high"), mask_weights(e, mode="low")
    top = e.flatten(1).argmax(1)
    assert (hi.flatten(1).argmax(1) == top).all() and (lo.flatten(1).argmin(1) == top).all()
    assert torch.allclose(mask_weights(e, eps=1.0), torch.full_like(hi, 1 / 20))


def test_two_dimensional_input_and_bad_arguments():
    assert sample_mask(grid(1, 7, 9)[0], generator=0).shape == (7, 9)
    e = grid(1, 7, 7)
    for kwargs in ({"ratio": 1.5}, {"tau": 0.0}, {"eps": -0.1}, {"mode": "middle"}):
        with pytest.raises(ValueError):
            sample_mask(e, **kwargs)
    with pytest.raises(ValueError):
        sample_mask(torch.full((1, 7, 7), float("nan")))
    with pytest.raises(TypeError):
        sample_mask(e, generator="seed")
    with pytest.raises(ValueError):
        sample_mask(torch.zeros(2, 3, 7, 7))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_same_masks_on_gpu_and_cpu():
    e = grid(16, 7, 7)
    assert torch.equal(sample_mask(e.cuda(), generator=11).cpu(), sample_mask(e, generator=11))
