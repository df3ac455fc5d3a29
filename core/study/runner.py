"""A study: the paper's protocol end to end, resumable, as one core Job.

``OUT/`` holds everything::

    OUT/study.json              the study's settings (a rerun must match them) and the seconds spent so far
    OUT/duplicates.json         near-duplicate groups found (core.data.duplicates)
    OUT/folds.json              the fold of every labelled image (grouped by case AND near-duplicate group)
    OUT/pretrain/<mode>-fold<i> (or <mode>-all with --transductive): MAE runs, mode entropy | random
    OUT/A, OUT/B, OUT/random-MAE   k-fold fine-tuning runs (core.train.kfold layout: fold<i>/ each)
    OUT/panels/                 MAE reconstructions and Grad-CAM overlays of a few test images
    OUT/report/report.html, report.json

Member A starts from ImageNet weights, member B from an entropy-guided MAE (itself started from ImageNet
weights at the cpu budget, from random init at the gpu budget) pretrained on the fold's training images only (strict; ``transductive``: once on all images, labels unused), the control from a
random-mask MAE at equal compute (same images, epochs, batch, backbone). All three are fine-tuned with the
same recipe on the same folds. The ensemble A+B averages the members' calibrated probabilities (equal
weights, or weights fitted on the validation part) and a temperature is fitted on the averaged
probabilities. Every finished step (a pretraining, a fold's fine-tuning) is skipped on a rerun.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from core.atomic import write_json_atomic
from core.data.splits import read_folds_file, write_folds_file
from core.train.config import FinetuneConfig
from core.train.data import LabeledData

MEMBER_A, MEMBER_B, CONTROL, ENSEMBLE = "A", "B", "random-MAE", "A+B"

#: what each compute budget picks (``tiny``: the tests' settings; ``cpu``: BUSI in about 3 hours on 2 cores,
#: both members EfficientNet-Lite0 from ImageNet weights, B's MAE a short domain-adaptive pretraining;
#: ``gpu``: the paper's scale, ConvNeXt-Tiny for both members at 224 px, B's MAE from random init)
BUDGETS: dict[str, dict] = {
    "tiny": dict(backbone_a="convnext_atto", backbone_b="convnext_atto", tiny=True, image_size=32, pretrain_image_size=64, epochs=2,
                 pretrain_epochs=2, pretrain_init="random", pretrain_lr=2e-3, batch_size=16, pretrain_batch_size=16, lr=3e-3,
                 tta="hflip"),
    "cpu": dict(backbone_a="efficientnet_lite0", backbone_b="efficientnet_lite0", tiny=False, image_size=192,
                pretrain_image_size=192, epochs=10, pretrain_epochs=8, pretrain_init="imagenet", pretrain_lr=2e-4,
                batch_size=32, pretrain_batch_size=32, lr=1e-3, tta="hflip"),
    "gpu": dict(backbone_a="convnext_tiny", backbone_b="convnext_tiny", tiny=False, image_size=224, pretrain_image_size=224, epochs=30,
                pretrain_epochs=200, pretrain_init="random", pretrain_lr=1.5e-3, batch_size=32, pretrain_batch_size=64, lr=5e-4,
                tta="hflip"),
}
ENSEMBLE_WEIGHTS = ("equal", "fitted")
#: settings that may change between a study and its continuation (they do not change its results' meaning)
RUN_SETTINGS = ("out", "device", "num_workers", "panels", "n_boot")


@dataclass
class StudyConfig:
    out: str
    data: str | None = None               # a labelled image folder ...
    project: str | None = None            # ... or a project store
    budget: str = "cpu"
    k: int = 5
    seed: int = 0
    transductive: bool = False            # pretrain once on all images (labels unused) instead of per fold
    control: bool = True                  # the random-mask MAE control
    ensemble_weights: str = "equal"       # equal | fitted (on each fold's validation part)
    member_a_init: str = "imagenet"       # imagenet | random (tests, offline)
    weights_file: str | None = None       # ImageNet weights of member A
    max_hamming: int | None = None        # near-duplicate thresholds (None: core.data.duplicates defaults)
    min_ssim: float | None = None
    overrides: dict = field(default_factory=dict)   # budget keys set by hand (image_size, epochs, ...)
    device: str | None = None
    precision: str = "auto"
    num_workers: int | None = None
    panels: int = 2                       # test images shown as MAE reconstructions / Grad-CAM overlays
    n_boot: int = 2000                    # bootstrap resamples of each paired difference

    def settings(self) -> dict:
        if self.budget not in BUDGETS:
            raise ValueError(f"unknown budget {self.budget!r} (known: {', '.join(BUDGETS)})")
        unknown = set(self.overrides) - set(BUDGETS[self.budget])
        if unknown:
            raise ValueError(f"unknown budget settings {sorted(unknown)} (known: {sorted(BUDGETS[self.budget])})")
        return {**BUDGETS[self.budget], **self.overrides}

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------- configs
def finetune_config(cfg: StudyConfig, member: str, init_weights: str | None = None) -> FinetuneConfig:
    """The one fine-tuning recipe every member gets; only the backbone and the initial weights differ."""
    s = cfg.settings()
    common = dict(image_size=s["image_size"], epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"],
                  seed=cfg.seed, test_fraction=0.0, device=cfg.device, precision=cfg.precision,
                  num_workers=cfg.num_workers, tiny=s["tiny"], patience=max(8, s["epochs"] // 3), tta=s["tta"])
    if s["tiny"]:
        common.update(warmup_epochs=0.5, patience=100)
    if member == MEMBER_A:
        return FinetuneConfig(backbone=s["backbone_a"], init=cfg.member_a_init,
                              init_weights=cfg.weights_file if cfg.member_a_init == "imagenet" else None, **common)
    return FinetuneConfig(backbone=s["backbone_b"], init="pretrained", init_weights=init_weights, **common)


def finetune_command(cfg: StudyConfig, member: str, fold: int, out: str, init_weights: str | None = None
                     ) -> list[str]:
    """``medssl finetune`` arguments that rerun one fold of a member by hand and give the same numbers: the
    folds come from the store under the study's split name (a project study) or from ``OUT/folds.json``."""
    c = finetune_config(cfg, member, init_weights)
    source = (["--project", cfg.project, "--split-name", study_split_name(cfg)] if cfg.project
              else [str(Path(cfg.data).absolute()), "--folds-file", str(Path(cfg.out).absolute() / "folds.json")])
    args = ["finetune", *source, "--out", out, "--kfold", str(cfg.k), "--folds", str(fold),
            "--backbone", c.backbone, "--init", c.init,
            "--image-size", str(c.image_size), "--epochs", str(c.epochs), "--batch-size", str(c.batch_size),
            "--lr", str(c.lr), "--warmup-epochs", str(c.warmup_epochs), "--patience", str(c.patience),
            "--seed", str(c.seed), "--precision", c.precision, "--tta", c.tta]
    args += ["--tiny"] if c.tiny else []
    if c.init_weights:
        args += ["--init-weights" if c.init == "pretrained" else "--weights-file", c.init_weights]
    args += ["--workers", str(c.num_workers)] if c.num_workers is not None else []
    args += ["--device", c.device] if c.device else []
    return args


def study_split_name(cfg: StudyConfig) -> str:
    """The name of a project study's folds in the store (``NAME-Kfold``, as ``medssl finetune`` reads them)."""
    from core.project.runs import slug

    return f"study-{slug(Path(cfg.out).name)}"


def mae_imagenet_file(cfg: StudyConfig) -> str | None:
    """The ImageNet weights file B's MAE starts from: ``--weights-file`` is member A's, so only when both members
    share the backbone (else None: found as fine-tuning finds it)."""
    s = cfg.settings()
    return cfg.weights_file if s["backbone_b"] == s["backbone_a"] else None


def pretrain_config(cfg: StudyConfig, root: Path, files: Sequence[str], out: Path, mask: str):
    """MAE pretraining; ``mask`` = "high" (entropy-guided) or "random": equal compute otherwise (a batch is
    never larger than the images, so a small project still gets a step per epoch)."""
    from core.models.backbones import TINY_CONVNEXT
    from core.pretrain.config import TrainConfig

    s = cfg.settings()
    kw = {k: list(v) for k, v in TINY_CONVNEXT.items()} if s["tiny"] else {}
    options = {"entropy_mode": mask}
    if s["tiny"]:
        options["decoder_width"] = 32
    return TrainConfig(method="mae", data=str(root), files=list(files), out=str(out), backbone=s["backbone_b"],
                       timm_kwargs=kw, image_size=s["pretrain_image_size"], epochs=s["pretrain_epochs"],
                       batch_size=min(s["pretrain_batch_size"], len(files)), warmup_epochs=min(5.0, s["pretrain_epochs"] / 4),
                       init=s["pretrain_init"],
                       init_weights=mae_imagenet_file(cfg) if s["pretrain_init"] == "imagenet" else None,
                       lr=s["pretrain_lr"], seed=cfg.seed, options=options, device=cfg.device,
                       precision=cfg.precision, num_workers=cfg.num_workers or 0, probe_size=0 if s["tiny"] else 64)


# ------------------------------------------------------------------------------------------- folds
def duplicate_aware_folds(data: LabeledData, report, k: int, seed: int) -> list[int]:
    """The fold of every sample: stratified k-fold grouped by case and by near-duplicate group at once."""
    from core.data.duplicates import merge_groups
    from core.data.splits import kfold_indices

    keys = [s.rel_path for s in data.samples]
    groups = merge_groups(keys, data.groups(), report)
    fold = [-1] * len(keys)
    for f, (_, test_idx) in enumerate(kfold_indices(data.labels(), groups, k=k, seed=seed)):
        for i in test_idx:
            fold[i] = f
    return fold


class Study:
    """One study folder: its steps, each skipped when already done."""

    def __init__(self, cfg: StudyConfig, ctx=None, command: str = ""):
        self.cfg, self.ctx, self.command = cfg, ctx, command
        self.out = Path(cfg.out)
        self.settings = cfg.settings()
        if self.settings["tiny"] and cfg.member_a_init == "imagenet":
            raise ValueError("the tiny budget's models have no ImageNet weights: use --member-a-init random")
        if cfg.ensemble_weights not in ENSEMBLE_WEIGHTS:
            raise ValueError(f"--ensemble-weights must be one of {ENSEMBLE_WEIGHTS}")
        self.models = [MEMBER_A, MEMBER_B] + ([CONTROL] if cfg.control else [])

    def say(self, msg: str) -> None:
        if self.ctx is not None:
            self.ctx.log(msg)

    # -- the study's own record
    def _check_settings(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "study.json"
        mine = {k: v for k, v in self.cfg.to_dict().items() if k not in RUN_SETTINGS}
        if path.is_file():
            prev = json.loads(path.read_text())
            diff = sorted(k for k in mine if prev["config"].get(k) != mine[k])
            if diff:
                raise ValueError(f"{self.out} holds a study with other settings ({', '.join(diff)} differ); "
                                 f"use another --out")
            return prev
        state = {"config": mine, "seconds": 0.0}
        write_json_atomic(path, state, indent=1, default=float)
        return state

    def _add_seconds(self, seconds: float) -> float:
        path = self.out / "study.json"
        state = json.loads(path.read_text())
        state["seconds"] = state.get("seconds", 0.0) + seconds
        write_json_atomic(path, state, indent=1, default=float)
        return state["seconds"]

    # -- data, duplicates, folds
    def load(self) -> LabeledData:
        from core.train.data import load_labeled_data

        data = load_labeled_data(self.cfg.data, project=self.cfg.project, ctx=self.ctx)
        if data.root is None:
            raise ValueError("the project holds no images")
        self.say(f"{len(data.samples)} labelled images, classes {data.classes}")
        return data

    def duplicates(self, data: LabeledData):
        from core.data.duplicates import (DEFAULT_MAX_HAMMING, DEFAULT_MIN_SSIM, DuplicateGroup, DuplicateReport,
                                          scan_near_duplicates)

        path = self.out / "duplicates.json"
        if path.is_file():
            d = json.loads(path.read_text())
            return DuplicateReport([DuplicateGroup(g["members"], g["labels"]) for g in d["groups"]], d["n_images"],
                                   d["candidates"], d["max_hamming"], d["min_ssim"], [tuple(e) for e in d["errors"]])
        self.say("looking for near-duplicate images")
        rels = [s.rel_path for s in data.samples]
        report = scan_near_duplicates(
            data.root, rels, {s.rel_path: s.label for s in data.samples}, ctx=self.ctx,
            max_hamming=self.cfg.max_hamming if self.cfg.max_hamming is not None else DEFAULT_MAX_HAMMING,
            min_ssim=self.cfg.min_ssim if self.cfg.min_ssim is not None else DEFAULT_MIN_SSIM)
        write_json_atomic(path, {"n_images": report.n_images, "candidates": report.candidates,
                                 "max_hamming": report.max_hamming, "min_ssim": report.min_ssim,
                                 "errors": report.errors,
                                 "groups": [{"members": g.members, "labels": g.labels, "conflicting": g.conflicting}
                                            for g in report.groups]}, indent=1, default=float)
        self.say(f"{len(report.groups)} near-duplicate groups ({sum(len(g.members) for g in report.groups)} "
                 f"images), {len(report.conflicting)} with conflicting labels")
        return report

    def folds(self, data: LabeledData, report) -> list[int]:
        path = self.out / "folds.json"
        rels = [s.rel_path for s in data.samples]
        if path.is_file():
            saved = read_folds_file(path, self.cfg.k)
            if sorted(saved) != sorted(rels):
                raise ValueError(f"{path}: the study's images changed since its folds were made; use another --out")
            return [saved[r] for r in rels]
        fold = duplicate_aware_folds(data, report, self.cfg.k, self.cfg.seed)
        write_folds_file(path, dict(zip(rels, fold)), self.cfg.k, self.cfg.seed)
        if self.cfg.project:      # so `medssl finetune --project P --kfold K --split-name NAME` reruns a fold
            from core.train.data import stored_split

            stored_split(self.cfg.project, data, f"{study_split_name(self.cfg)}-{self.cfg.k}fold", lambda: fold,
                         {"kind": "kfold", "k": self.cfg.k, "seed": self.cfg.seed, "study": str(self.out)}, self.ctx)
        return fold


    # -- steps
    def _pretrain(self, data: LabeledData, files: list[str], name: str, mask: str) -> Path:
        from core.pretrain.trainer import train

        run = self.out / "pretrain" / name
        if (run / "encoder.safetensors").is_file() and (run / "done").is_file():
            return run
        self.say(f"--- pretraining {name} ({len(files)} images, {mask} masks) ---")
        result = train(pretrain_config(self.cfg, data.root, files, run, mask), self.ctx, resume="auto")
        if not result.get("finished"):
            raise RuntimeError(f"{run}: pretraining stopped before its last step ({result.get('stop_reason')})")
        (run / "done").write_text("finished\n")
        return run

    def _finetune_fold(self, member: str, data: LabeledData, fold_of: list[int], f: int,
                       init_weights: str | None) -> dict:
        from core.train.kfold import run_kfold

        cfg = finetune_config(self.cfg, member, init_weights)
        return run_kfold(cfg, data, self.out / member, self.cfg.k, resume=True, ctx=self.ctx, folds=[f],
                         fold_of=fold_of)

    def _fold_finished(self, member: str, f: int) -> bool:
        return (self.out / member / f"fold{f}" / "metrics.json").is_file()

    def run(self) -> Path:
        t0 = time.time()
        self._check_settings()
        cfg = self.cfg
        try:
            self._check_imagenet_weights()
            data = self.load()
            report = self.duplicates(data)
            fold_of = self.folds(data, report)
            steps = cfg.k * len(self.models)
            done = 0
            rels = np.asarray([s.rel_path for s in data.samples])
            fold_arr = np.asarray(fold_of)
            shared: dict[str, Path] = {}
            for f in range(cfg.k):
                train_files = list(rels[fold_arr != f])
                for member in self.models:
                    if self.ctx is not None:
                        self.ctx.check_cancelled()
                        self.ctx.progress(done, steps, f"fold {f + 1}/{cfg.k}: {member}", phase="study")
                    if not self._fold_finished(member, f):
                        init = None
                        if member != MEMBER_A:
                            mask = "high" if member == MEMBER_B else "random"
                            mode = "entropy" if member == MEMBER_B else "random"
                            if cfg.transductive:
                                init = shared.get(mode) or self._pretrain(
                                    data, [s.rel_path for s in data.samples], f"{mode}-all", mask)
                                shared[mode] = init
                            else:
                                init = self._pretrain(data, train_files, f"{mode}-fold{f}", mask)
                        self.say(f"--- fold {f + 1}/{cfg.k}: fine-tuning member {member} ---")
                        self._finetune_fold(member, data, fold_of, f, str(init) if init else None)
                    done += 1
            if self.ctx is not None:
                self.ctx.progress(steps, steps, "report", phase="report")
            seconds = self._add_seconds(time.time() - t0)
            t0 = time.time()
            outcome = self.outcome(data, report, seconds)
            from core.study.report import write_report

            page = write_report(outcome, self.out / "report", n_boot=self.cfg.n_boot)
            self.say(f"report: {page}")
            return page
        finally:
            self._add_seconds(time.time() - t0)

    def _check_imagenet_weights(self) -> None:
        """Before any work: the ImageNet weights member A and B's MAE start from are on this machine."""
        from core.models.weights import find_imagenet_weights, missing_message

        s = self.settings
        needed = ([(s["backbone_a"], self.cfg.weights_file, "member A of the study; or --member-a-init random")]
                  if self.cfg.member_a_init == "imagenet" else [])
        if s["pretrain_init"] == "imagenet":
            needed.append((s["backbone_b"], mae_imagenet_file(self.cfg),
                           "the start of member B's MAE; or --set pretrain_init=random"))
        for name, file, role in needed:
            if find_imagenet_weights(name, file) is None:
                raise FileNotFoundError(f"{missing_message(name)} ({role})")

    # -- results
    def outcome(self, data: LabeledData, report, seconds: float):
        from core.study.report import ModelInfo, StudyOutcome

        s, cfg = self.settings, self.cfg
        folds = [fold_outcome(self.out, f, self.models, data.classes, cfg.ensemble_weights)
                 for f in range(cfg.k)]
        pre = ("transductive: once on all images of the data set, labels unused" if cfg.transductive
               else "strict: on each fold's training images only")
        a_init = "ImageNet" if cfg.member_a_init == "imagenet" else "random init"
        b_init = " from ImageNet weights" if s["pretrain_init"] == "imagenet" else ""
        models = [ModelInfo(MEMBER_A, "member", f"{a_init} {s['backbone_a']}"),
                  ModelInfo(MEMBER_B, "member",
                            f"entropy-guided MAE {s['backbone_b']}{b_init} ({s['pretrain_epochs']} ep.)")]
        if cfg.control:
            models.append(ModelInfo(CONTROL, "member",
                                    f"random-mask MAE {s['backbone_b']}{b_init}, equal compute"))
        how = ("equal weights" if cfg.ensemble_weights == "equal"
               else "weights fitted on each fold's validation part")
        models.append(ModelInfo(ENSEMBLE, "ensemble", f"A and B, {how}, temperature on the average",
                                [MEMBER_A, MEMBER_B]))
        comparisons = [(ENSEMBLE, MEMBER_A), (ENSEMBLE, MEMBER_B)] + ([(MEMBER_B, CONTROL)] if cfg.control else [])
        n_dup = sum(len(g.members) for g in report.groups)
        facts = {"n_images": len(data.samples), "grouping": "case and near-duplicate group",
                 "duplicate_groups": len(report.groups), "duplicate_images": n_dup,
                 "conflicting_groups": len(report.conflicting), "pretraining": pre,
                 "ensemble_weights": cfg.ensemble_weights,
                 "fold_guarantee": fold_guarantee(data, report, [f.paths for f in folds])}
        notes = ["Ensemble weights (A, B) per fold: "
                 + "; ".join(f"fold {f.fold}: {f.extra['weights'][0]:.2f}, {f.extra['weights'][1]:.2f} "
                             f"(T = {f.extra['temperature']:.2f})" for f in folds)]
        import shlex

        notes.append("Rerun fold 0 of member A by hand (same numbers): medssl " + " ".join(
            shlex.quote(a) for a in finetune_command(cfg, MEMBER_A, 0, str(self.out / "rerun-A-fold0"))))
        config = {**cfg.to_dict(), "settings": s,
                  "finetune": {m: finetune_config(cfg, m).to_dict() for m in (MEMBER_A, MEMBER_B)}}
        return StudyOutcome(f"Study: {Path(cfg.data or cfg.project).name}", data.classes, models, folds, comparisons,
                            facts, config, self.command, seconds, panels=self.panels(data, folds), notes=notes)

    def panels(self, data: LabeledData, folds) -> list:
        """A few test images of fold 0: the MAE's reconstruction and the members' Grad-CAM."""
        from core.study.report import Panel

        if self.cfg.panels <= 0:
            return []
        out = []
        paths = [data.root / p for p in folds[0].paths[:self.cfg.panels]]
        mae = self.out / "pretrain" / ("entropy-all" if self.cfg.transductive else "entropy-fold0")
        target = self.out / "panels"
        target.mkdir(parents=True, exist_ok=True)
        from core.analysis.reconstruct import load_mae, reconstruct, save_panel

        model, config = load_mae(mae)
        for rec in reconstruct(model, config, paths):
            out.append(Panel(f"MAE reconstruction (entropy-guided, fold 0): {rec.name}",
                             save_panel(rec, target / f"mae-{rec.name}.png")))
        from core.inference.ensemble import create_spec, load_ensemble, save_cam_png

        spec = create_spec(target / "ensemble.json", [self.out / MEMBER_A / "fold0" / "checkpoint-best",
                                                      self.out / MEMBER_B / "fold0" / "checkpoint-best"],
                           names=[MEMBER_A, MEMBER_B])
        ens = load_ensemble(spec, device="cpu")
        for p in paths:
            x = ens.load_image(p)
            png = target / f"cam-{p.stem}.png"
            save_cam_png(png, x, ens.cam(x))
            out.append(Panel(f"Grad-CAM (input, A, B, ensemble), fold 0: {p.name}", png))
        return out


def fold_guarantee(data: LabeledData, report, test_paths: Sequence[Sequence[str]]) -> str:
    """A sentence checked on the actual folds: no case and no near-duplicate group in two folds."""
    fold_of = {p: f for f, paths in enumerate(test_paths) for p in paths}
    split_groups = sum(len({fold_of[m] for m in g.members if m in fold_of}) > 1 for g in report.groups)
    cases: dict[str, set] = {}
    for s in data.samples:
        if s.rel_path in fold_of:
            cases.setdefault(s.group, set()).add(fold_of[s.rel_path])
    split_cases = sum(len(v) > 1 for v in cases.values())
    return (f"Checked on the folds used: {split_groups} of {len(report.groups)} near-duplicate groups and "
            f"{split_cases} of {len(cases)} cases have images in more than one fold (each fold is tested on images "
            f"whose near-duplicates and case mates are all in the same fold).")


def _member_probs(run: Path, part: str, classes: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    from core.inference.logits import read_logits

    rel, labels, logits = read_logits(run / f"logits_{part}.csv")
    return rel, np.asarray([list(classes).index(x) for x in labels]), logits


def fit_ensemble_weights(val_probs: Sequence[np.ndarray], y: np.ndarray, steps: int = 20) -> list[float]:
    """Weights of two members' probabilities minimising the validation NLL (grid over w, 1 - w)."""
    from core.analysis.metrics import nll

    a, b = val_probs
    grid = np.linspace(0.0, 1.0, steps + 1)
    best = min(grid, key=lambda w: (nll(w * a + (1 - w) * b, y), abs(w - 0.5)))
    return [float(best), float(1 - best)]


def fold_outcome(out: Path, f: int, models: Sequence[str], classes: Sequence[str], weights_mode: str):
    """Test probabilities of every model of fold ``f``: each member calibrated by a temperature fitted on its
    validation logits; the ensemble = weighted mean of the calibrated members, then a temperature fitted on
    the averaged validation probabilities."""
    from core.inference.ensemble import combine, fit_temperature
    from core.inference.logits import softmax
    from core.study.report import FoldOutcome

    probs, raw, val_cal = {}, {}, {}
    y_test = y_val = paths = None
    for m in models:
        run = out / m / f"fold{f}"
        rel_v, yv, lv = _member_probs(run, "val", classes)
        rel_t, yt, lt = _member_probs(run, "test", classes)
        if paths is None:
            paths, y_test, y_val, val_paths = rel_t, yt, yv, rel_v
        elif rel_t != paths or rel_v != val_paths:
            raise ValueError(f"{run}: its test/validation images differ from member {models[0]}'s in fold {f}")
        t = fit_temperature(lv, yv)
        probs[m], raw[m], val_cal[m] = softmax(lt, t), softmax(lt), softmax(lv, t)
    pair = [MEMBER_A, MEMBER_B]
    weights = ([0.5, 0.5] if weights_mode == "equal"
               else fit_ensemble_weights([val_cal[m] for m in pair], y_val))
    avg_val = combine(np.stack([val_cal[m] for m in pair]), weights)
    avg_test = combine(np.stack([probs[m] for m in pair]), weights)
    t_ens = fit_temperature(np.log(np.clip(avg_val, 1e-12, 1)), y_val)
    probs[ENSEMBLE] = softmax(np.log(np.clip(avg_test, 1e-12, 1)), t_ens)
    raw[ENSEMBLE] = avg_test
    return FoldOutcome(f, y_test, probs, raw, list(paths), {"weights": weights, "temperature": t_ens})


def study_result(page: str | Path) -> dict:
    """What a finished study leaves in the project's runs table: the report, the ensemble's and its best
    member's mean accuracy and AUC, and whether the ensemble beats that member (said, not hidden; the keys
    of :meth:`core.inference.verdict.EnsembleVerdict.to_metrics`)."""
    from core.analysis.metrics import fold_mean
    from core.study.report import study_verdict

    page = Path(page)
    summary = json.loads((page.parent / "report.json").read_text())
    ms = summary["mean_std"]
    ens = next(m for m in summary["models"] if m["kind"] == "ensemble")
    verdict = study_verdict(ms, ens["name"], ens["members"])
    return {"report": str(page), "k": summary["k"], **(verdict.to_metrics() if verdict else {}),
            "ensemble_roc_auc_ovr": fold_mean(ms[ens["name"]], "roc_auc_ovr"),
            "best_member_roc_auc_ovr": fold_mean(ms[verdict.best_member], "roc_auc_ovr") if verdict else None,
            "verdict": " ".join(summary["verdicts"])[:299]}


def study_job(cfg: StudyConfig, command: str = ""):
    """The study as a ``core.jobs.Job`` (state dir = the study folder); the result is :func:`study_result`."""
    from core.jobs import Job

    return Job("study", lambda ctx: study_result(Study(cfg, ctx, command).run()), state_dir=cfg.out)
