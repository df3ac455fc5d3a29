"""core.analysis.active: uncertainty measures and the 'suggest next to label' ranking."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.analysis.active import js_divergence, rank_for_labeling, uncertainty


def test_js_is_zero_when_members_agree_and_maximal_when_they_disagree():
    agree = np.array([[[0.7, 0.2, 0.1]], [[0.7, 0.2, 0.1]]])
    split = np.array([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]])
    assert js_divergence(agree)[0] == pytest.approx(0.0, abs=1e-9)
    assert js_divergence(split)[0] == pytest.approx(math.log(2), rel=1e-6)


def test_uncertainty_matches_core_ensemble():
    from core.inference import ensemble

    rng = np.random.default_rng(0)
    m = rng.dirichlet(np.ones(3), size=(3, 5))
    ens = m.mean(0)
    u = uncertainty(ens, m)
    assert np.allclose(u["entropy"], ensemble.predictive_entropy(ens))
    assert np.allclose(u["disagreement"], ensemble.js_divergence(m))


def test_ranking_orders_by_disagreement_and_skips_labelled():
    rows = [{"image_id": 1, "entropy": 0.5, "disagreement": 0.01},
            {"image_id": 2, "entropy": 0.5, "disagreement": 0.40},
            {"image_id": 3, "entropy": 0.5, "disagreement": 0.20},
            {"image_id": 4, "entropy": 0.5, "disagreement": 0.60}]
    ranked = rank_for_labeling(rows, n_classes=3, n_members=2, labelled=[4])
    assert [s.image_id for s in ranked] == [2, 3, 1]
    assert ranked[0].score > ranked[1].score > ranked[2].score
    assert [s.image_id for s in rank_for_labeling(rows, n_classes=3, n_members=2, limit=2)] == [4, 2]


def test_entropy_breaks_ties_and_weights_apply():
    rows = [{"image_id": 1, "entropy": 0.1, "disagreement": 0.2},
            {"image_id": 2, "entropy": 1.0, "disagreement": 0.2}]
    assert [s.image_id for s in rank_for_labeling(rows, n_classes=3, n_members=3)] == [2, 1]
    only_js = rank_for_labeling(rows, n_classes=3, n_members=3, w_entropy=0.0)
    assert only_js[0].score == only_js[1].score
    with pytest.raises(ValueError):
        rank_for_labeling(rows, n_classes=3, n_members=3, w_entropy=-1)


def test_review_queue_finds_label_disagreements_member_disagreements_and_uncertainty():
    from core.analysis.active import DISAGREES_WITH_LABEL, MEMBERS_DISAGREE, UNCERTAIN, review_queue
    from core.project.store import PredictionRecord

    def rec(i, probs, members=None):
        p = np.asarray(list(probs.values()))
        return PredictionRecord(i, max(probs, key=probs.get), probs, members or {},
                                float(-(p * np.log(p)).sum()), None)

    sure_a = {"a": 0.98, "b": 0.01, "c": 0.01}
    records = [rec(1, sure_a, {"m1": sure_a, "m2": sure_a}),                          # agrees with its label a
               rec(2, sure_a),                                                        # labelled b: disagrees
               rec(3, {"a": 0.34, "b": 0.33, "c": 0.33}),                             # unlabelled, uncertain
               rec(4, {"a": 0.6, "b": 0.39, "c": 0.01}, {"m1": {"a": 0.9, "b": 0.1, "c": 0.0},
                                                         "m2": {"a": 0.3, "b": 0.69, "c": 0.01}})]
    queue = review_queue(records, {1: "a", 2: "b"})
    assert [c.image_id for c in queue] == [2, 4, 3]
    assert queue[0].reasons == (DISAGREES_WITH_LABEL,) and (queue[0].label, queue[0].predicted) == ("b", "a")
    assert MEMBERS_DISAGREE in queue[1].reasons and queue[2].reasons == (UNCERTAIN,)
    assert queue[2].entropy_norm == pytest.approx(1.0, abs=1e-3)
    strict = review_queue(records, {}, uncertain_at=1.01)        # nothing is uncertain enough: members only
    assert [(c.image_id, c.reasons) for c in strict] == [(4, (MEMBERS_DISAGREE,))]
