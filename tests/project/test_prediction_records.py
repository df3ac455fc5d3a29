"""Typed prediction records: written to the store straight from the predictor's arrays, read back typed."""

from __future__ import annotations

import numpy as np
import pytest

from core.project.store import PredictionRecord, ProjectStore

CLASSES = ["benign", "malignant", "normal"]


@pytest.fixture
def store(tmp_path):
    s = ProjectStore(tmp_path / "p.db")
    ids = [s.add_image(content_hash=f"h{i}", rel_path=f"img{i}.png", abs_path=tmp_path / f"img{i}.png")
           for i in range(3)]
    yield s, ids
    s.close()


def test_arrays_round_trip_as_typed_records(store):
    s, ids = store
    run = s.add_run("predict", "p", {})
    ens = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    members = np.stack([ens, ens[:, ::-1]])                                # [M=2, N=2, C=3]
    assert not s.has_predictions(run)
    n = s.add_prediction_arrays(run, ids[:2], CLASSES, ["a_prob_b", "B"], ens, members, [0.8, 0.9], [0.01, 0.2])
    assert n == 2 and s.has_predictions(run)
    recs = s.prediction_records(run)
    assert recs[0] == PredictionRecord(ids[0], "benign", dict(zip(CLASSES, ens[0])),
                                       {"a_prob_b": dict(zip(CLASSES, ens[0])), "B": dict(zip(CLASSES, ens[0, ::-1]))},
                                       0.8, 0.01)
    assert recs[1].predicted == "normal" and recs[1].disagreement == pytest.approx(0.2)
    assert s.predictions(run)[1].uncertainty == {"entropy": 0.9, "disagreement": 0.2}


def test_wrong_shapes_are_refused_and_nothing_is_written(store):
    s, ids = store
    run = s.add_run("predict", "p", {})
    ens = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="member_probs_mnc has shape"):
        s.add_prediction_arrays(run, ids[:2], CLASSES, ["A", "B"], ens, np.full((1, 2, 3), 1 / 3), [0, 0], [0, 0])
    with pytest.raises(ValueError, match="entropy_n has shape"):
        s.add_prediction_arrays(run, ids[:2], CLASSES, ["A"], ens, ens[None], [0], [0, 0])
    assert not s.has_predictions(run)


def test_single_model_probabilities_read_as_the_ensemble(store):
    s, ids = store
    run = s.add_run("predict", "one model", {})
    s.add_predictions(run, [{"image_id": ids[0], "label": "normal", "probs": {"normal": 0.9, "benign": 0.1},
                             "uncertainty": {"entropy": 0.3}}])
    (rec,) = s.prediction_records(run)
    assert rec.probs == {"normal": 0.9, "benign": 0.1} and rec.members == {}
    assert rec.entropy == 0.3 and rec.disagreement is None
