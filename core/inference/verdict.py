"""Does an ensemble beat its best member? One typed answer for every place that says so.

The ensemble job's report (:meth:`core.inference.ensemble.EnsembleReport.verdict`), the study's report and
result (:mod:`core.study`) and the runs table all use :class:`EnsembleVerdict`, so the window shows the
same sentence the report prints, with where it was measured. An ensemble that only ties its best member
does not beat it: the user is better served by the member alone (one model to run, same accuracy).
Light on purpose (no torch, no scikit-learn): the window reads verdicts on its UI thread.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

VERDICT_METRIC = "accuracy"


@dataclass(frozen=True)
class EnsembleVerdict:
    source: str                 # where it was measured: "the test split (42 images)", ...
    ensemble: str               # the ensemble's name
    ensemble_value: float
    best_member: str
    best_member_value: float
    metric: str = VERDICT_METRIC

    @property
    def beats(self) -> bool:
        return self.ensemble_value > self.best_member_value

    def sentence(self) -> str:
        verb = "beats" if self.beats else "does NOT beat"
        name = "ensemble" if self.ensemble == "ensemble" else f"ensemble {self.ensemble}"
        return (f"On {self.source}: {name} {100 * self.ensemble_value:.1f} % vs best member "
                f"{self.best_member} {100 * self.best_member_value:.1f} % {self.metric} — the ensemble {verb} its "
                f"best member {self.best_member}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "EnsembleVerdict":
        return cls(str(d["source"]), str(d["ensemble"]), float(d["ensemble_value"]), str(d["best_member"]),
                   float(d["best_member_value"]), str(d.get("metric", VERDICT_METRIC)))

    def to_metrics(self) -> dict:
        """Flat scalar keys for the runs table (the same keys for an ensemble run and a study run)."""
        return {f"ensemble_{self.metric}": self.ensemble_value, "best_member": self.best_member,
                f"best_member_{self.metric}": self.best_member_value,
                "ensemble_beats_best_member": "yes" if self.beats else "no", "verdict_source": self.source,
                "verdict_ensemble": self.ensemble}

    @classmethod
    def from_metrics(cls, metrics: Mapping) -> "EnsembleVerdict | None":
        """The verdict a run recorded with :meth:`to_metrics`; None for a run that recorded none (an older
        run, or one that has not finished)."""
        try:
            return cls(str(metrics["verdict_source"]), str(metrics.get("verdict_ensemble", "ensemble")),
                       float(metrics[f"ensemble_{VERDICT_METRIC}"]), str(metrics["best_member"]),
                       float(metrics[f"best_member_{VERDICT_METRIC}"]))
        except (KeyError, TypeError, ValueError):
            return None


def judge(members: Mapping[str, float | None], ensemble_value: float | None, source: str,
          ensemble: str = "ensemble", metric: str = VERDICT_METRIC) -> EnsembleVerdict | None:
    """Compare the ensemble with its best member (by ``metric``, higher is better); None when a number is
    missing (nothing to say)."""
    known = [(v, name) for name, v in members.items() if v is not None]
    if ensemble_value is None or not known:
        return None
    best_value, best = max(known, key=lambda vn: vn[0])
    return EnsembleVerdict(source, ensemble, float(ensemble_value), best, float(best_value), metric)


def run_verdict(run) -> EnsembleVerdict | None:
    """The verdict an ensemble or study run (:class:`core.project.runs.Run`) recorded, if any."""
    return EnsembleVerdict.from_metrics(run.metrics or {})


def split_source(split: str, n: int) -> str:
    """How a report names the images it was measured on."""
    return f"the {'validation' if split == 'val' else split} split ({n} images)"
