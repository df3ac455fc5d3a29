"""Ensembles of fine-tuned classifiers: temperature scaling, weighted probability averaging, uncertainty,
Grad-CAM.

Ensemble file (JSON; member paths relative to the file)::

    {"format": "medssl-ensemble", "version": 1,
     "members": [{"name": "A-imagenet", "checkpoint": "runs/a", "weight": 1.0, "temperature": 1.31},
                 {"name": "B-mae",      "checkpoint": "runs/b", "weight": 1.0, "temperature": 0.92}]}

``checkpoint`` is a checkpoint folder, a fine-tuning run folder (its ``checkpoint-best``) or, for
cross-validated evaluation only, a k-fold run folder. ``temperature`` is written by calibration (absent or
null = 1, uncalibrated). ``absolute``: where the member was when the file was written.

Members outside the file's folder are allowed, with checks. The window keeps each ensemble in its own run
folder beside the members' (``runs/ensemble-7/ensemble.json`` -> ``../finetune-3``), so a member path may
climb out of the folder (``../x``) or be absolute. A member is resolved relative to the file, else at its
``absolute`` place (the ensemble's folder moved without its members); one found at neither is an error
naming the file and the member. Whatever a path points at is only read as a classifier checkpoint:
``config.json`` of the MedSSL classifier format and safetensors weights (never unpickled), anything else is
refused naming the file and the member; nothing is ever written at a member's path (temperatures go into
the ensemble file, reports beside it).

Calibration: each member's logits on *its own* validation split (``split.json`` of its run) are scaled by
one temperature T fitted by minimising the negative log-likelihood (torch LBFGS on log T). Then the
ensemble probability is the weighted mean of the members' softmax(logits / T). Uncertainty per image:
predictive entropy H(p_ens) (nats) and member disagreement, the weighted Jensen–Shannon divergence
H(sum_m w_m p_m) - sum_m w_m H(p_m) (nats; 0 when the members agree).

Grad-CAM per member uses the last stage: the features of timm's ``forward_features`` (the last stage's
output for ConvNeXt, the head conv for EfficientNet) and the gradient of the class logit through
``forward_head``: no hooks, works for any timm CNN.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

import torch
import torch.nn as nn
import torch.nn.functional as F

from core import csvcells
from core.analysis.metrics import (classification_metrics, fold_mean, js_divergence, predictive_entropy,
                                   summarize_folds)
from core.data.imageio import ImageReadError
from core.inference.logits import Inference, softmax
from core.inference.verdict import EnsembleVerdict, judge, split_source
from core.atomic import write_json_atomic

log = logging.getLogger(__name__)

ENSEMBLE_FORMAT = "medssl-ensemble"

__all__ = ["EnsembleMember", "EnsembleSpec", "EnsembleModel", "LoadedEnsemble", "load_spec", "create_spec",
           "load_ensemble", "fit_temperature", "combine", "predictive_entropy", "js_divergence", "grad_cam",
           "cam_overlay", "cam_for_file", "CamResult", "evaluate_ensemble", "evaluate_ensemble_cv", "EnsembleReport",
           "MemberReport", "format_table", "softmax"]


# ---------------------------------------------------------------------------------------------- the file
@dataclass
class EnsembleMember:
    checkpoint: str
    name: str = ""
    weight: float = 1.0
    temperature: float | None = None
    absolute: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class EnsembleSpec:
    members: list[EnsembleMember]
    path: Path | None = None
    extra: dict = field(default_factory=dict)

    def resolve(self, member: EnsembleMember) -> Path:
        """The member's folder: relative to the file, else where it was when the file was written."""
        p = Path(member.checkpoint).expanduser()
        if not p.is_absolute() and self.path is not None:
            p = self.path.parent / p
        if p.exists():
            return p
        if member.absolute and Path(member.absolute).exists():
            return Path(member.absolute)
        raise FileNotFoundError(f"{self.path}: member {member.name}: {member.checkpoint} does not exist (looked "
                                f"for {p}{' and ' + member.absolute if member.absolute else ''})")

    def save(self, path: str | Path | None = None) -> Path:
        path = Path(path) if path is not None else self.path
        if path is None:
            raise ValueError("no path to save the ensemble file to")
        d = {"format": ENSEMBLE_FORMAT, "version": 1, **self.extra,
             "members": [m.to_dict() for m in self.members]}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, d, indent=1)
        self.path = path
        return path


def _positive_number(value, path: Path, what: str) -> float:
    """``value`` as a finite number > 0, else a ValueError naming the file and the entry."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or not (math.isfinite(x) and x > 0):
        raise ValueError(f"{path}: {what} must be a finite number > 0, got {value!r}")
    return x


def load_spec(path: str | Path) -> EnsembleSpec:
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not an ensemble file (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not an ensemble file (invalid JSON at line {exc.lineno}, column "
                         f"{exc.colno}: {exc.msg})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: not an ensemble file (a JSON object with 'members' is expected)")
    if d.get("format") not in (None, ENSEMBLE_FORMAT):
        raise ValueError(f"{path}: not an ensemble file (format {d.get('format')!r})")
    members = d.get("members")
    if not members:
        raise ValueError(f"{path}: the ensemble lists no members")
    if not isinstance(members, list):
        raise ValueError(f"{path}: 'members' must be a list")
    out = []
    for i, m in enumerate(members):
        if isinstance(m, str):
            m = {"checkpoint": m}
        if not isinstance(m, dict) or not isinstance(m.get("checkpoint"), str):
            raise ValueError(f"{path}: member {i} has no 'checkpoint' path")
        w = _positive_number(m.get("weight", 1.0), path, f"member {i}'s weight")
        t = m.get("temperature")
        absolute = m.get("absolute")
        out.append(EnsembleMember(m["checkpoint"], str(m.get("name") or f"m{i}"), w,
                                  _positive_number(t, path, f"member {i}'s temperature") if t is not None
                                  else None, absolute if isinstance(absolute, str) else None))
    extra = {k: v for k, v in d.items() if k not in ("format", "version", "members")}
    return EnsembleSpec(out, path.resolve(), extra)


@contextlib.contextmanager
def _naming(spec: EnsembleSpec, member: EnsembleMember):
    """A member that is not a classifier checkpoint: the error names the ensemble file and the member."""
    try:
        yield
    except (FileNotFoundError, ValueError) as exc:
        text = str(exc)
        raise ValueError(text if text.startswith(str(spec.path)) else f"{spec.path}: member {member.name}: {text}"
                         ) from None


def create_spec(path: str | Path, checkpoints: Sequence[str | Path], *, names: Sequence[str] | None = None,
                weights: Sequence[float] | None = None) -> EnsembleSpec:
    """Write a new ensemble file (paths stored relative to it when possible)."""
    path = Path(path).resolve()
    members = []
    for i, c in enumerate(checkpoints):
        c = Path(c).resolve()
        try:
            rel = str(Path(*_relpath(c, path.parent)))
        except ValueError:
            rel = str(c)
        members.append(EnsembleMember(rel, names[i] if names else c.name,
                                      float(weights[i]) if weights else 1.0, absolute=str(c)))
    spec = EnsembleSpec(members, path)
    spec.save()
    return spec


def _relpath(target: Path, start: Path) -> tuple[str, ...]:
    import os

    return tuple(Path(os.path.relpath(target, start)).parts)


# ----------------------------------------------------------------------------------------------- maths
#: the fitted temperature is kept inside these bounds. The NLL has no finite minimum when the validation
#: predictions are no better than a constant (the fit runs to T -> inf, uniform probabilities) or all right
#: with a margin (T -> 0); the bound then stands for "unbounded", and the report says it was reached.
TEMPERATURE_LIMITS = (0.05, 20.0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, max_iter: int = 200) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T) (LBFGS on log T, float64), within
    :data:`TEMPERATURE_LIMITS`."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(y) == 0:
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t):
        return 1.0
    lo, hi = TEMPERATURE_LIMITS
    return float(min(max(t, lo), hi))


def combine(member_probs: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean over members: [M, N, C] -> [N, C]."""
    p = np.asarray(member_probs, dtype=np.float64)
    w = np.ones(p.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    return np.tensordot(w, p, axes=1)


# ----------------------------------------------------------------------------------------------- model
class EnsembleModel(nn.Module):
    """Input: images [B, 3, S, S] in [0, 1] (not normalised). Output: (ensemble probabilities [B, C],
    member probabilities [M, B, C]). Each member normalises with its own mean/std and divides its logits
    by its temperature. Pure tensor ops: exportable to ONNX."""

    def __init__(self, models: Sequence[nn.Module], means: Sequence[Sequence[float]],
                 stds: Sequence[Sequence[float]], temperatures: Sequence[float], weights: Sequence[float]):
        super().__init__()
        self.members = nn.ModuleList(models)
        # [M, 3, 1, 1]: 4-D, so .to(memory_format=torch.channels_last) accepts them; m[i] broadcasts on [B, 3, S, S]
        m = torch.tensor([list(x) for x in means], dtype=torch.float32).view(len(models), 3, 1, 1)
        s = torch.tensor([list(x) for x in stds], dtype=torch.float32).view(len(models), 3, 1, 1)
        self.register_buffer("mean", m, persistent=False)
        self.register_buffer("std", s, persistent=False)
        self.shared_norm = bool((m == m[0]).all() and (s == s[0]).all())
        w = torch.tensor(list(weights), dtype=torch.float32)
        self.register_buffer("weights", w / w.sum(), persistent=False)
        self.register_buffer("inv_temperature", 1.0 / torch.tensor(list(temperatures), dtype=torch.float32),
                             persistent=False)

    def member_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        xn = (x - self.mean[0]) / self.std[0] if self.shared_norm else None
        for i, model in enumerate(self.members):
            xi = xn if xn is not None else (x - self.mean[i]) / self.std[i]
            outs.append(model(xi).float())
        return outs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.stack([torch.softmax(z * self.inv_temperature[i], dim=-1)
                             for i, z in enumerate(self.member_logits(x))])       # [M, B, C]
        ens = (probs * self.weights.view(-1, 1, 1)).sum(0)                         # [B, C]
        return ens, probs


@dataclass
class LoadedEnsemble:
    spec: EnsembleSpec
    names: list[str]
    configs: list[dict]
    module: EnsembleModel
    classes: list[str]
    image_size: int
    device: torch.device

    @property
    def weights(self) -> list[float]:
        return [m.weight for m in self.spec.members]

    def preprocess(self, img) -> torch.Tensor:
        """PIL RGB image -> float [3, S, S] in [0, 1] (the eval transform's resize; normalising is the model's)."""
        from core.data.transforms import resize_pil, to_float_tensor

        return to_float_tensor(resize_pil(img, self.image_size, self.configs[0].get("interpolation", "bicubic")))

    def load_image(self, path: str | Path) -> torch.Tensor:
        from core.data.transforms import load_rgb

        return self.preprocess(load_rgb(path))

    def inference(self, *, precision: str | torch.dtype | None = "fp32", channels_last: bool | None = None,
                  check_tol: float | None = None, log=None) -> Inference:
        """The ensemble module as an :class:`Inference`: batch [B, 3, S, S] in [0, 1] (or uint8) ->
        (ensemble probabilities [B, C], member probabilities [M, B, C])."""
        return Inference(self.module, self.device, precision=precision, channels_last=channels_last,
                         check_tol=check_tol, log=log)

    def predict(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """fp32 (ensemble [B, C], members [M, B, C]) for images [B, 3, S, S] in [0, 1]."""
        return self.inference()(x)

    def cam(self, x: torch.Tensor, target: int | None = None) -> "CamResult":
        """Grad-CAM of every member for one image ``x`` [3, S, S] in [0, 1]; target = the ensemble's
        predicted class unless given."""
        x = x.to(self.device)[None]
        if target is None:
            ens, _ = self.predict(x)
            target = int(ens[0].argmax())
        maps = {}
        mod = self.module
        for i, (name, model) in enumerate(zip(self.names, mod.members)):
            xi = (x - mod.mean[i]) / mod.std[i]
            maps[name] = grad_cam(model, xi, target)[0]
        w = np.asarray(self.weights) / sum(self.weights)
        ens_map = sum(wi * m for wi, m in zip(w, maps.values()))
        peak = ens_map.max()
        return CamResult(self.classes[target], target, maps, ens_map / peak if peak > 0 else ens_map)


@dataclass
class CamResult:
    """Grad-CAM of one image: the explained class, each member's map and the weighted ensemble map
    (each [H, W] float32 in [0, 1])."""
    class_name: str
    class_index: int
    members: dict[str, np.ndarray]
    ensemble: np.ndarray


def cam_for_file(ens: "LoadedEnsemble", path: str | Path, target: int | None = None) -> CamResult:
    """Grad-CAM heatmaps for one image file at the file's own resolution (for the viewer): like
    :meth:`LoadedEnsemble.cam`, with every map resized to [H, W] of the original image (float32, 0..1)."""
    from core.data.transforms import load_rgb

    img = load_rgb(path)
    out = ens.cam(ens.preprocess(img), target)
    h, w = img.height, img.width

    def up(m: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
        return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].clamp_(0, 1).numpy()

    return CamResult(out.class_name, out.class_index, {k: up(v) for k, v in out.members.items()},
                     up(out.ensemble))


def load_ensemble(spec: EnsembleSpec | str | Path, device: str | torch.device | None = None,
                  *, require_calibrated: bool = False) -> LoadedEnsemble:
    """Load every member of an ensemble file (single checkpoints; k-fold runs are for evaluation only)."""
    from core.models.classifier import load_classifier
    from core.train.kfold import is_kfold_run
    from core.train.distributed import pick_device

    if not isinstance(spec, EnsembleSpec):
        spec = load_spec(spec)
    device = pick_device(str(device) if device else None)
    models, configs, temps = [], [], []
    for m in spec.members:
        p = spec.resolve(m)
        if is_kfold_run(p):
            raise ValueError(f"member {m.name}: {p} is a k-fold run; point the ensemble at one checkpoint "
                             f"(e.g. {p}/fold0) for prediction, or use `medssl ensemble` to evaluate CV")
        with _naming(spec, m):
            model, cfg = load_classifier(p, device)
        models.append(model)
        configs.append(cfg)
        if m.temperature is None:
            if require_calibrated:
                raise ValueError(f"member {m.name} is not calibrated; run `medssl ensemble` first")
            log.warning("member %s has no temperature (uncalibrated): using T = 1", m.name)
        temps.append(m.temperature or 1.0)
    classes = configs[0]["classes"]
    size = int(configs[0]["image_size"])
    for m, c in zip(spec.members, configs):
        if c["classes"] != classes:
            raise ValueError(f"member {m.name} has classes {c['classes']}, the first member {classes}")
        if int(c["image_size"]) != size:
            raise ValueError(f"member {m.name} uses {c['image_size']} px, the first member {size} px: "
                             f"all members of an ensemble take the same input size")
    module = EnsembleModel(models, [c["mean"] for c in configs], [c["std"] for c in configs], temps,
                           [m.weight for m in spec.members]).to(device).eval()
    return LoadedEnsemble(spec, [m.name for m in spec.members], configs, module, list(classes), size, device)


# -------------------------------------------------------------------------------------------- Grad-CAM
def grad_cam(model: nn.Module, x: torch.Tensor, target: int | Sequence[int] | None = None,
             size: tuple[int, int] | None = None) -> np.ndarray:
    """Grad-CAM on the last stage of a timm CNN. ``x`` normalised [B, 3, H, W]; target class per image
    (default: the model's prediction). Returns [B, H, W] (or ``size``) float32 in [0, 1]."""
    model.eval()
    with torch.enable_grad():
        feats = model.forward_features(x.detach())                  # [B, C, h, w]
        if feats.ndim != 4:
            raise ValueError("Grad-CAM needs a CNN whose forward_features gives [B, C, h, w]")
        feats = feats.detach().requires_grad_(True)
        logits = model.forward_head(feats)                          # [B, K]
        if target is None:
            tgt = logits.argmax(1)
        elif isinstance(target, int):
            tgt = torch.full((x.shape[0],), target, dtype=torch.long, device=x.device)
        else:
            tgt = torch.as_tensor(list(target), dtype=torch.long, device=x.device)
        score = logits.gather(1, tgt[:, None]).sum()
        (grad,) = torch.autograd.grad(score, feats)
    w = grad.mean(dim=(2, 3), keepdim=True)                         # [B, C, 1, 1]
    cam = F.relu((w * feats.detach()).sum(1, keepdim=True))         # [B, 1, h, w]
    cam = F.interpolate(cam, size=size or tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).float().cpu().numpy()


def _jet(v: np.ndarray) -> np.ndarray:
    """Jet-like colormap without matplotlib: [H, W] in [0, 1] -> uint8 [H, W, 3]."""
    v = np.clip(v, 0, 1)[..., None]
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.concatenate([r, g, b], -1) * 255).astype(np.uint8)


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB [H, W, 3] (or float [3, H, W] in [0, 1]) + cam [H, W] -> uint8 overlay [H, W, 3]."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = np.transpose(img, (1, 2, 0))
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    heat = _jet(cam).astype(np.float32)
    return (img.astype(np.float32) * (1 - alpha) + heat * alpha).astype(np.uint8)


def save_cam_png(path: Path, x01: torch.Tensor, cam: CamResult) -> None:
    """One PNG: the input, then each member's Grad-CAM, then the ensemble's, side by side."""
    from PIL import Image

    img = (x01.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
    tiles = [img] + [cam_overlay(img, m) for m in cam.members.values()] + [cam_overlay(img, cam.ensemble)]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(tiles, axis=1)).save(path)


# -------------------------------------------------------------------------------------------- evaluation
def _member_logits(ckpt: Path, rel_paths: Sequence[str], root: Path, part: str, device, ctx=None,
                   batch_size: int = 32, unreadable: dict[str, str] | None = None) -> np.ndarray:
    """fp32 logits of one checkpoint on images (cached ``logits_<part>.csv`` of its run when it matches).
    An image that cannot be read gets a row of NaN and its reason in ``unreadable`` (rel path -> reason):
    one spoilt file leaves that image out, not the whole evaluation."""
    from core.models.classifier import load_classifier
    from core.inference.logits import read_logits

    run_dir = ckpt.parent if ckpt.name.startswith("checkpoint-") else ckpt
    cached = run_dir / f"logits_{part}.csv"
    if ckpt.name == "checkpoint-best" and cached.is_file():
        paths, _, lg = read_logits(cached)
        if paths == list(rel_paths):
            return lg
    from core.data.transforms import eval_transform, load_rgb

    model, cfg = load_classifier(ckpt, device)
    tf = eval_transform(int(cfg["image_size"]), cfg["mean"], cfg["std"], cfg.get("interpolation", "bicubic"))
    run = Inference(model, device, precision="fp32", channels_last=False)
    out = np.full((len(rel_paths), len(cfg["classes"])), np.nan, np.float32)
    for start in range(0, len(rel_paths), batch_size):
        if ctx is not None:
            ctx.check_cancelled()
        rows, images = [], []
        for i, rel in enumerate(rel_paths[start:start + batch_size], start):
            try:
                images.append(tf(load_rgb(root / rel)))
            except ImageReadError as exc:
                if unreadable is not None:
                    unreadable[rel] = exc.reason
                continue
            rows.append(i)
        if images:
            out[rows] = run(torch.stack(images))
    return out


def _readable(logits: Sequence[np.ndarray]) -> np.ndarray:
    """Rows every member could compute (an unreadable image is NaN in the members that read it)."""
    return np.all([np.isfinite(lg).all(axis=1) for lg in logits], axis=0)


@dataclass
class MemberReport:
    name: str
    checkpoint: str
    weight: float
    temperature: float
    before: dict          # classification_metrics before calibration
    after: dict           # ... and after (logits / temperature)
    temperature_at_limit: bool = False    # the fit reached TEMPERATURE_LIMITS: no finite best temperature


@dataclass
class EnsembleReport:
    """What :func:`evaluate_ensemble` measured: metrics of the members and the ensemble before/after
    calibration, and the per-image arrays they came from (labels [N], ensemble [N, C], members [M, N, C],
    calibrated). :meth:`to_dict` is the JSON report file (no arrays)."""
    split: str
    classes: list[str]
    members: list[MemberReport]
    ensemble_before: dict
    ensemble_after: dict
    mean_entropy: float | None
    mean_js: float | None
    paths: list[str]
    labels_n: np.ndarray
    probs_nc: np.ndarray
    member_probs_mnc: np.ndarray
    unreadable: dict[str, str] = field(default_factory=dict)    # images of the split left out: rel -> reason

    @property
    def n(self) -> int:
        return int(len(self.labels_n))

    def verdict(self) -> EnsembleVerdict | None:
        """Calibrated ensemble vs its best calibrated member on the images it was evaluated on."""
        return judge({m.name: m.after.get("accuracy") for m in self.members}, self.ensemble_after.get("accuracy"),
                     split_source(self.split, self.n))

    def to_dict(self) -> dict:
        verdict = self.verdict()
        return {"split": self.split, "n": self.n, "classes": self.classes,
                "members": [asdict(m) for m in self.members],
                "ensemble": {"before": self.ensemble_before, "after": self.ensemble_after},
                "uncertainty": {"mean_entropy": self.mean_entropy, "mean_js": self.mean_js},
                "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable.items()],
                "verdict": verdict.to_dict() if verdict else None}


def evaluate_ensemble(spec: EnsembleSpec, *, split: str = "test", calibrate: bool = True,
                      data_root: str | Path | None = None, device=None, ctx=None, save: bool = True,
                      per_image: str | Path | None = None, cam_dir: str | Path | None = None,
                      cam_limit: int = 32) -> EnsembleReport:
    """Calibrate each member on its validation split, evaluate members and ensemble on ``split`` of the
    members' runs, before and after calibration. Temperatures are written back to the file (``save``)."""
    from core.train.data import read_split
    from core.train.checkpoint import resolve_classifier_checkpoint
    from core.train.distributed import pick_device

    device = pick_device(str(device) if device else None)
    ckpts = []
    for m in spec.members:
        with _naming(spec, m):
            ckpts.append(resolve_classifier_checkpoint(spec.resolve(m)))
    splits = [read_split(c.parent if c.name.startswith("checkpoint-") else c) for c in ckpts]
    classes = splits[0]["classes"]
    for m, s in zip(spec.members, splits):
        if s["classes"] != classes:
            raise ValueError(f"member {m.name} was trained on classes {s['classes']}, not {classes}")
    part = split if splits[0].get(split) else "val"
    if part != split:
        log.warning("the runs have no %s split: evaluating on val", split)
    eval_items = splits[0][part]
    for m, s in zip(spec.members, splits):
        if sorted(map(tuple, s.get(part) or [])) != sorted(map(tuple, eval_items)):
            raise ValueError(f"member {m.name} has a different {part} split from {spec.members[0].name}: "
                             f"fine-tune the members on the same split (with --project they share the split saved in "
                             f"the store; with a folder, the same labels, seed and fractions or folds)")
    rel = [r for r, _ in eval_items]
    y = np.asarray([classes.index(lbl) for _, lbl in eval_items], dtype=np.int64)
    unreadable: dict[str, str] = {}
    logits_eval, val_logits = [], []
    for k, (m, ck, s) in enumerate(zip(spec.members, ckpts, splits)):
        root = Path(data_root) if data_root else Path(s["root"])
        if ctx is not None:
            ctx.progress(k, len(spec.members), message=f"member {m.name}")
        with _naming(spec, m):
            logits_eval.append(_member_logits(ck, rel, root, part, device, ctx, unreadable=unreadable))
            vrel = [r for r, _ in s.get("val") or []] if calibrate else []
            val_logits.append(_member_logits(ck, vrel, root, "val", device, ctx, unreadable=unreadable)
                              if vrel else None)
    folder = Path(data_root) if data_root else Path(splits[0]["root"])
    for path, reason in unreadable.items():
        if ctx is not None:
            ctx.log(f"skipped {folder / path}: {reason}")
    keep = _readable(logits_eval)
    rel, y, logits_eval = [r for r, k in zip(rel, keep) if k], y[keep], [lg[keep] for lg in logits_eval]
    member_rows, temps = [], []
    for m, ck, s, lg, vl in zip(spec.members, ckpts, splits, logits_eval, val_logits):
        t = m.temperature or 1.0
        if calibrate:
            if vl is not None:
                vy = np.asarray([classes.index(lbl) for _, lbl in s["val"]])
                readable = _readable([vl])
                vl, vy = vl[readable], vy[readable]
                t = fit_temperature(vl, vy)
                m.temperature = t
                if t in TEMPERATURE_LIMITS:
                    log.warning("member %s: temperature %.2f is the fit's limit (%d validation images; its "
                                "predictions there are %s)", m.name, t, len(vy),
                                "no better than a constant" if t == TEMPERATURE_LIMITS[1] else "all right")
            else:
                log.warning("member %s has no validation split: not calibrated", m.name)
        temps.append(t)
        member_rows.append(MemberReport(m.name, str(ck), m.weight, t, classification_metrics(y, softmax(lg), classes),
                                        classification_metrics(y, softmax(lg, t), classes),
                                        calibrate and t in TEMPERATURE_LIMITS))
    eval_set = {r for r, _ in eval_items}
    weights = [m.weight for m in spec.members]
    before = np.stack([softmax(lg) for lg in logits_eval])
    after = np.stack([softmax(lg, t) for lg, t in zip(logits_eval, temps)])
    ens_after = combine(after, weights)
    report = EnsembleReport(
        part, list(classes), member_rows, classification_metrics(y, combine(before, weights), classes),
        classification_metrics(y, ens_after, classes),
        float(predictive_entropy(ens_after).mean()) if len(y) else None,
        float(js_divergence(after, weights).mean()) if len(y) else None, rel, y, ens_after, after,
        {r: reason for r, reason in unreadable.items() if r in eval_set})
    if calibrate and save and spec.path is not None:
        spec.save()
    if per_image:
        write_per_image(Path(per_image), rel, y, classes, ens_after, after, [m.name for m in spec.members],
                        weights)
    if cam_dir:
        ens = load_ensemble(spec, device)
        for r in rel[:cam_limit]:
            try:
                x = ens.load_image(folder / r)
            except ImageReadError as exc:      # its logits came from the runs' cache: the file changed since
                if ctx is not None:
                    ctx.log(f"no Grad-CAM for {folder / r}: {exc.reason}")
                continue
            cam = ens.cam(x)
            out = Path(cam_dir) / (Path(r).with_suffix("").as_posix().replace("/", "__") + "_cam.png")
            save_cam_png(out, x, cam)
    return report


def cached_verdict(checkpoints: Sequence[str | Path], names: Sequence[str], split: str = "test"
                   ) -> EnsembleVerdict | None:
    """The verdict an ensemble of these fine-tuned members would get (calibrated, equal weights), from the
    validation and test logits their runs cached, so the dialog that picks members can say it before the
    ensemble is built. None when a member has no cached logits (nothing is run then)."""
    from core.train.checkpoint import resolve_classifier_checkpoint

    for c in checkpoints:
        ck = resolve_classifier_checkpoint(Path(c))
        run_dir = ck.parent if ck.name.startswith("checkpoint-") else ck
        if ck.name != "checkpoint-best" or not (run_dir / "logits_val.csv").is_file():
            return None       # (a run writes logits_test.csv too whenever it has a test split)
    spec = EnsembleSpec([EnsembleMember(str(c), n) for c, n in zip(checkpoints, names)], None)
    return evaluate_ensemble(spec, split=split, save=False, device="cpu").verdict()


def write_per_image(path: Path, rel: Sequence[str], y: np.ndarray | None, classes: Sequence[str],
                    ens: np.ndarray, members: np.ndarray, names: Sequence[str], weights) -> None:
    ent = predictive_entropy(ens)
    js = js_divergence(members, weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csvcells.writer(fh)
        w.writerow(["path", "label", "predicted"] + [f"prob_{c}" for c in classes] + ["entropy", "disagreement_js"]
                   + [f"{n}_prob_{c}" for n in names for c in classes])
        for i, r in enumerate(rel):
            w.writerow([r, classes[y[i]] if y is not None else "", classes[int(ens[i].argmax())]]
                       + [f"{v:.6f}" for v in ens[i]] + [f"{ent[i]:.6f}", f"{js[i]:.6f}"]
                       + [f"{v:.6f}" for m in members[:, i] for v in m])


def evaluate_ensemble_cv(spec: EnsembleSpec, *, calibrate: bool = True, data_root=None, device=None,
                         ctx=None) -> dict:
    """Members are k-fold run folders with the same k and folds: evaluate fold by fold on the held-out
    fold (calibrating on each fold's validation part), then mean ± std over folds and pooled metrics."""
    from core.train.kfold import fold_dirs

    dirs = [fold_dirs(spec.resolve(m)) for m in spec.members]
    if not all(dirs) or len({len(d) for d in dirs}) != 1:
        raise ValueError("cross-validated evaluation needs every member to be a k-fold run with the same k")
    k = len(dirs[0])
    folds, pooled_y, pooled_ens, pooled_mem = [], [], [], []
    for f in range(k):
        if ctx is not None:
            ctx.progress(f, k, message=f"fold {f + 1}/{k}")
        fold_spec = EnsembleSpec([EnsembleMember(str(d[f]), m.name, m.weight) for m, d in
                                  zip(spec.members, dirs)], None)
        rep = evaluate_ensemble(fold_spec, calibrate=calibrate, data_root=data_root, device=device, ctx=ctx,
                                save=False)
        pooled_y.append(rep.labels_n)
        pooled_ens.append(rep.probs_nc)
        pooled_mem.append(rep.member_probs_mnc)
        folds.append(rep.to_dict())
    classes = folds[0]["classes"]
    names = [m.name for m in spec.members]
    rows: dict[str, dict] = {}
    for i, name in enumerate(names):
        rows[name] = {stage: summarize_folds([fr["members"][i][stage] for fr in folds]) for stage in
                      ("before", "after")}
        rows[name]["temperatures"] = [fr["members"][i]["temperature"] for fr in folds]
    rows["ensemble"] = {stage: summarize_folds([fr["ensemble"][stage] for fr in folds]) for stage in
                        ("before", "after")}
    y = np.concatenate(pooled_y)
    mem = np.concatenate(pooled_mem, axis=1)
    pooled = {name: classification_metrics(y, mem[i], classes) for i, name in enumerate(names)}
    pooled["ensemble"] = classification_metrics(y, np.concatenate(pooled_ens), classes)
    verdict = judge({n: fold_mean(rows[n]["after"], "accuracy") for n in names},
                    fold_mean(rows["ensemble"]["after"], "accuracy"), f"the held-out folds (mean over {k})")
    return {"k": k, "classes": classes, "members": names, "mean_std": rows, "pooled_after": pooled,
            "folds": folds, "verdict": verdict.to_dict() if verdict else None}


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, dict):
        return f"{v['mean']:.3f} ± {v['std']:.3f}"
    return f"{v:.3f}"


def format_table(report: EnsembleReport | dict, keys: Sequence[str] = ("accuracy", "balanced_accuracy", "macro_f1",
                                                                     "roc_auc_ovr", "ece")) -> str:
    """Markdown table: one row per member and the ensemble, before / after calibration (an
    :class:`EnsembleReport`, or the mean ± std dict of :func:`evaluate_ensemble_cv`), then the verdict."""
    head = "| model | calibration | " + " | ".join(keys) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 2)]
    if isinstance(report, EnsembleReport):
        rows = {m.name: {"before": m.before, "after": m.after} for m in report.members}
        rows["ensemble"] = {"before": report.ensemble_before, "after": report.ensemble_after}
    else:
        rows = report["mean_std"]
    for name, row in rows.items():
        for stage in ("before", "after"):
            lines.append(f"| {name} | {stage} | " + " | ".join(_fmt(row[stage].get(k)) for k in keys) + " |")
    verdict = (report.verdict() if isinstance(report, EnsembleReport)
               else EnsembleVerdict.from_dict(report["verdict"]) if report.get("verdict") else None)
    if verdict is not None:
        lines += ["", verdict.sentence()]
    return "\n".join(lines)


def ensemble_job(members: Sequence[str | Path], run_dir: str | Path, *, names: Sequence[str] | None = None,
                 split: str = "test", calibrate: bool = True, device=None):
    """A ``core.jobs.Job`` that writes ``RUN/ensemble.json`` from fine-tuned members, calibrates and evaluates
    it (``report.json``, ``per_image.csv``); the desktop's "Build ensemble" runs this."""
    from core.jobs import Job

    run_dir = Path(run_dir)

    def fn(ctx):
        path = run_dir / "ensemble.json"
        spec = create_spec(path, members, names=names or None)
        report = evaluate_ensemble(spec, split=split, calibrate=calibrate, device=device, ctx=ctx,
                                   per_image=run_dir / "per_image.csv")
        rep = report.to_dict()
        write_json_atomic(run_dir / "report.json", rep, indent=1, default=float)
        ctx.log(f"ensemble of {len(spec.members)} written to {path}")
        verdict = report.verdict()
        if verdict is not None:
            ctx.log(verdict.sentence())
        # the verdict's flat keys and sentence go to the runs table (the window shows them where ensembles are chosen)
        flat = {**verdict.to_metrics(), "verdict": verdict.sentence()} if verdict else {}
        return {**rep, **flat, "ensemble_file": str(path)}

    return Job("ensemble", fn, state_dir=run_dir)
