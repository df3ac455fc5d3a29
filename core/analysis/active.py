"""Active learning: which unlabeled image should a person label next, and which predictions are worth a
second look (:func:`review_queue`); no Qt, no torch.

The ensemble's members disagreeing about an image (generalised Jensen-Shannon divergence of the member
probabilities) says the *models* are unsure for reasons more data can fix (epistemic); the predictive
entropy of the averaged probabilities adds plain ambiguity. Both are normalised to [0, 1] by their
maxima (``ln C`` for the entropy, ``min(ln M, ln C)`` for the divergence of M members over C classes)
and combined as ``score = w_disagreement * js_norm + w_entropy * entropy_norm`` (default 1.0 and 0.5:
disagreement leads, entropy breaks near-ties). Ties go to the higher disagreement, then to the id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from core.analysis.metrics import js_divergence, predictive_entropy

__all__ = ["Suggestion", "js_divergence", "predictive_entropy", "uncertainty", "rank_for_labeling", "ReviewCase",
           "review_queue"]

DEFAULT_W_DISAGREEMENT = 1.0
DEFAULT_W_ENTROPY = 0.5


@dataclass(frozen=True)
class Suggestion:
    image_id: int
    score: float
    disagreement: float       # JS divergence, nats
    entropy: float            # predictive entropy, nats


def uncertainty(ens_probs: np.ndarray, member_probs: np.ndarray | None = None,
                weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """{'entropy': [N], 'disagreement': [N]} for ensemble probabilities [N, C] and members [M, N, C]."""
    ens = np.asarray(ens_probs, dtype=np.float64)
    js = (js_divergence(member_probs, weights) if member_probs is not None and len(member_probs) > 1
          else np.zeros(ens.shape[0]))
    return {"entropy": predictive_entropy(ens), "disagreement": js}


def rank_for_labeling(rows: Iterable[Mapping], *, n_classes: int, n_members: int,
                      labelled: Iterable[int] = (), limit: int | None = None,
                      w_disagreement: float = DEFAULT_W_DISAGREEMENT,
                      w_entropy: float = DEFAULT_W_ENTROPY) -> list[Suggestion]:
    """Rank images (``rows``: mappings with ``image_id``, ``entropy``, ``disagreement`` in nats) for
    labelling, most useful first; images in ``labelled`` are left out. ``limit`` keeps the top N."""
    if w_disagreement < 0 or w_entropy < 0:
        raise ValueError("weights must be >= 0")
    skip = {int(i) for i in labelled}
    h_max = math.log(n_classes) if n_classes > 1 else 1.0
    js_max = math.log(min(n_members, n_classes)) if min(n_members, n_classes) > 1 else 1.0
    out = []
    for r in rows:
        image_id = int(r["image_id"])
        if image_id in skip:
            continue
        h = float(r.get("entropy") or 0.0)
        js = float(r.get("disagreement") or 0.0)
        if not (math.isfinite(h) and math.isfinite(js)):
            continue
        score = w_disagreement * min(1.0, js / js_max) + w_entropy * min(1.0, h / h_max)
        out.append(Suggestion(image_id, score, js, h))
    out.sort(key=lambda s: (-s.score, -s.disagreement, s.image_id))
    return out[:limit] if limit is not None else out


# -- review: labelled or predicted images worth a second look ---------------------------------------------
DISAGREES_WITH_LABEL = "the ensemble disagrees with the label"
MEMBERS_DISAGREE = "the members disagree"
UNCERTAIN = "the ensemble is uncertain"
#: normalised predictive entropy (H / ln C) from which a prediction counts as uncertain
UNCERTAIN_AT = 0.5


@dataclass(frozen=True)
class ReviewCase:
    image_id: int
    predicted: str | None
    label: str | None
    reasons: tuple[str, ...]      # why it is worth a look, most important first
    entropy_norm: float           # H / ln C in [0, 1]


def review_queue(records: Iterable, labels: Mapping[int, str | None], *,
                 uncertain_at: float = UNCERTAIN_AT) -> list[ReviewCase]:
    """The images of a prediction run (``core.project.store.PredictionRecord``) where the ensemble disagrees
    with the label or with itself (members voting for different classes, or a normalised entropy of at
    least ``uncertain_at``): label disagreements first, then member disagreements, then the most uncertain."""
    out = []
    for r in records:
        label = labels.get(r.image_id)
        n_classes = max(len(r.probs), 2)
        h = min(1.0, (r.entropy or 0.0) / math.log(n_classes))
        votes = {max(p, key=p.get) for p in r.members.values() if p}
        reasons = tuple(why for why, hit in ((DISAGREES_WITH_LABEL, bool(label and r.predicted and label != r.predicted)),
                                             (MEMBERS_DISAGREE, len(votes) > 1), (UNCERTAIN, h >= uncertain_at)) if hit)
        if reasons:
            out.append(ReviewCase(r.image_id, r.predicted, label, reasons, h))
    out.sort(key=lambda c: (DISAGREES_WITH_LABEL not in c.reasons, MEMBERS_DISAGREE not in c.reasons,
                            -c.entropy_norm, c.image_id))
    return out
