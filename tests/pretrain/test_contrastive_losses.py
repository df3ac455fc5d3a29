"""Contrastive / Barlow losses against hand-computed values on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.pretrain.losses import barlow_twins_loss, cross_correlation, multi_positive_nt_xent, nt_xent_metrics


def test_nt_xent_two_views_hand_computed():
    # unit vectors: views 0,1 = e1 (group 0); views 2,3 = e2 (group 1); temperature 1.
    # anchor 0: sims to 1,2,3 = 1,0,0 -> loss = -(1 - log(e + 2)) = log(e + 2) - 1, same for every anchor.
    z = torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
    loss = multi_positive_nt_xent(z, torch.tensor([0, 0, 1, 1]), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(math.e + 2) - 1, abs=1e-6)   # 0.55144


def test_nt_xent_multi_positive_hand_computed():
    # views 0,1,2 are one case (group 0), view 3 alone (group 1); t = 0.5 so sims/t are 2 or 0.
    # anchor 0: others (1,2,3) -> logits 2,0,0, LSE = log(e^2 + 2); positives 1,2:
    #   loss0 = -1/2 [(2 - LSE) + (0 - LSE)] = LSE - 1; anchor 1 likewise.
    # anchor 2 (e2): others (0,1,3) -> 0,0,2, same LSE; positives 0,1: loss2 = LSE.
    # anchor 3 has no positive: only a negative. mean = (3 LSE - 2) / 3.
    z = torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
    loss = multi_positive_nt_xent(z, torch.tensor([0, 0, 0, 1]), temperature=0.5)
    lse = math.log(math.e ** 2 + 2)
    assert loss.item() == pytest.approx((3 * lse - 2) / 3, abs=1e-6)        # 1.57284


def test_nt_xent_equals_simclr_cross_entropy_form():
    # single positive per anchor: NT-Xent == cross entropy over the 2N - 1 others with the partner as target
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 5, generator=g)
    groups = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    zn = F.normalize(z, dim=1)
    logits = zn @ zn.T / 0.1
    logits.fill_diagonal_(float("-inf"))
    target = torch.tensor([4, 5, 6, 7, 0, 1, 2, 3])
    ref = F.cross_entropy(logits, target)
    assert multi_positive_nt_xent(z, groups, 0.1).item() == pytest.approx(ref.item(), rel=1e-5)


def test_nt_xent_gradient_and_errors():
    z = torch.randn(6, 4, requires_grad=True)
    loss = multi_positive_nt_xent(z, torch.tensor([0, 0, 1, 1, 2, 2]))
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        multi_positive_nt_xent(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    m = nt_xent_metrics(torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]]), torch.tensor([0, 0, 1, 1]))
    assert m["pos_acc"] == 1.0 and m["pos_sim"] == pytest.approx(1.0) and m["neg_sim"] == pytest.approx(0.0)


def test_barlow_cross_correlation_hand_computed():
    # every column is a permutation of (-1, 0, 1): mean 0, biased var 2/3, so C_ij = sum_n a_ni b_nj / 2.
    # C = [[1, -1/2], [-1/2, -1/2]] -> on-diag (1-1)^2 + (1+1/2)^2 = 2.25, off-diag 1/4 + 1/4 = 0.5.
    z1 = torch.tensor([[-1., 0.], [0., 1.], [1., -1.]])
    z2 = torch.tensor([[-1., 1.], [0., -1.], [1., 0.]])
    c = cross_correlation(z1, z2, eps=0.0)
    assert torch.allclose(c, torch.tensor([[1.0, -0.5], [-0.5, -0.5]]), atol=1e-6)
    loss, parts = barlow_twins_loss(z1, z2, lambd=0.1, eps=0.0)
    assert loss.item() == pytest.approx(2.25 + 0.1 * 0.5, abs=1e-6)
    assert parts["on_diag"] == pytest.approx(2.25) and parts["off_diag"] == pytest.approx(0.5)


def test_barlow_identity_for_identical_decorrelated_inputs():
    z = torch.tensor([[1., 1.], [1., -1.], [-1., 1.], [-1., -1.]])   # standardised, uncorrelated columns
    loss, _ = barlow_twins_loss(z, z * 3 + 2, eps=0.0)               # affine per dim: C = I
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
