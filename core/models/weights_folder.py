"""The MedSSL weights folder: which ImageNet weights are installed, importing a file, verifying them.

Every file that ``medssl weights get`` or ``medssl weights import`` installs is recorded in
``<weights folder>/manifest.json`` (name, sha256, size, where it came from, licence, when), so that
``verify`` can tell a damaged file from a good one and a run can record which exact file it started from.
Installing is atomic: a file is written beside its final name, fsynced and renamed into place, so a
killed install never leaves a half file under a name the loader would pick up. Nothing here uses the
network (downloading is :mod:`core.models.download`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from core.data.library import file_sha256
from core.models.weights import split_name, weights_dir
from core.atomic import fsync_path, write_json_atomic

MANIFEST = "manifest.json"

#: The architectures the app offers by name (any timm name with a Hugging Face source works too).
#: The first is member A of the paper's ensemble.
KNOWN_WEIGHTS = (
    "convnext_tiny.fb_in1k",
    "convnext_small.fb_in1k",
    "convnext_base.fb_in1k",
    "convnext_nano.in12k_ft_in1k",
    "convnext_pico.d1_in1k",
    "convnext_femto.d1_in1k",
    "convnext_atto.d2_in1k",
    "convnextv2_tiny.fcmae_ft_in1k",
    "efficientnet_lite0.ra_in1k",
)
DEFAULT_WEIGHTS = KNOWN_WEIGHTS[0]


class WeightsFileError(ValueError):
    """A weights file that cannot be installed or used; the message names the file and the reason."""


@dataclass
class InstalledWeights:
    name: str             # timm name with its pretrained tag, e.g. convnext_tiny.fb_in1k
    file: str             # file name inside the weights folder
    sha256: str
    size: int
    source: str           # "hub:<repo id>@<commit>" or "import:<original path>"
    licence: str | None
    installed_at: float

    @property
    def path(self) -> Path:
        return weights_dir() / self.file


@dataclass
class WeightsEntry:
    """One line of ``medssl weights list``."""
    name: str
    installed: InstalledWeights | None
    params: int | None            # parameter count
    hub_id: str | None
    licence: str | None

    @property
    def download_size(self) -> int | None:
        """Bytes of the fp32 safetensors file timm publishes (4 per parameter, the header is small)."""
        return 4 * self.params if self.params else None


@dataclass
class VerifyResult:
    name: str
    path: Path
    ok: bool
    reason: str = ""


def pretrained_cfg(name: str) -> dict:
    """timm's pretrained config of ``arch.tag`` (no network); WeightsFileError if timm does not know it."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise WeightsFileError(f"timm knows no pretrained weights named '{name}' (expected arch.tag, e.g. "
                               f"{DEFAULT_WEIGHTS}; `medssl weights list` shows the usual ones)")
    return cfg.to_dict()


def read_manifest() -> dict[str, InstalledWeights]:
    path = weights_dir() / MANIFEST
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise WeightsFileError(f"{path}: not valid JSON ({exc}); move it away and run `medssl weights verify`")
    return {name: InstalledWeights(**entry) for name, entry in raw.items()}


def _write_manifest(entries: dict[str, InstalledWeights]) -> None:
    write_json_atomic(weights_dir() / MANIFEST, {n: asdict(e) for n, e in sorted(entries.items())}, indent=1)


def check_fits(name: str, path: Path) -> int:
    """Load ``path`` into a fresh ``timm.create_model(arch)``; the number of tensors it filled.

    Raises WeightsFileError naming the file and what does not fit (another model's file, a damaged one)."""
    import pickle

    import timm
    from safetensors import SafetensorError

    from core.models.weights import WeightsNotFoundError, load_imagenet_weights

    arch, _ = split_name(name)
    if not timm.is_model(arch):
        raise WeightsFileError(f"'{arch}' is not a timm model name")
    model = timm.create_model(arch, pretrained=False)
    try:
        return load_imagenet_weights(model, name, path).loaded
    except (ValueError, RuntimeError, OSError, EOFError, pickle.UnpicklingError, SafetensorError,
            WeightsNotFoundError) as exc:
        raise WeightsFileError(f"{path}: does not load into {arch}: {exc}") from exc


def install_file(src: Path, name: str, source: str, *, sha256: str | None = None, move: bool = False
                 ) -> InstalledWeights:
    """Put ``src`` into the weights folder as ``<name>.safetensors`` (or its own suffix) atomically and
    record it. ``move`` renames a file already inside the weights folder (a finished download)."""
    folder = weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    suffix = src.suffix if src.suffix in (".safetensors", ".pth", ".pt", ".bin") else ".safetensors"
    final = folder / f"{name}{suffix}"
    digest = sha256 or file_sha256(src)
    if move:
        fsync_path(src)
        os.replace(src, final)
    else:
        tmp = folder / f".{name}{suffix}.importing"
        shutil.copyfile(src, tmp)
        fsync_path(tmp)
        if file_sha256(tmp) != digest:
            tmp.unlink(missing_ok=True)
            raise WeightsFileError(f"{src}: the copy in {folder} differs from the original (disk error?)")
        os.replace(tmp, final)
    fsync_path(folder)
    try:
        licence = pretrained_cfg(name).get("license")
    except WeightsFileError:
        licence = None
    entry = InstalledWeights(name=name, file=final.name, sha256=digest, size=final.stat().st_size,
                             source=source, licence=licence, installed_at=time.time())
    entries = read_manifest()
    for other in [n for n, e in entries.items() if e.file == final.name and n != name]:
        del entries[other]
    entries[name] = entry
    _write_manifest(entries)
    return entry


def import_weights(file: str | Path, name: str | None = None) -> InstalledWeights:
    """Copy a weights file a person brought (for sites without internet) into the weights folder, after
    checking that it loads into its architecture. ``name`` defaults to the file name's stem
    (``convnext_tiny.fb_in1k.safetensors`` -> ``convnext_tiny.fb_in1k``)."""
    src = Path(file).expanduser()
    if not src.is_file():
        raise WeightsFileError(f"{src}: no such file")
    name = name or src.name.split(".safetensors")[0].split(".pth")[0].split(".bin")[0]
    if src.name.endswith(".pt") and name == src.name:
        name = src.name[:-3]
    arch, _ = split_name(name)
    import timm

    if not timm.is_model(arch):
        raise WeightsFileError(f"{src}: cannot tell which model it is for ('{name}' is not a timm name); "
                               f"pass --name ARCH.TAG, e.g. --name {DEFAULT_WEIGHTS}")
    check_fits(name, src)
    return install_file(src, name, f"import:{src.absolute()}")


def weights_entry(name: str, installed: dict[str, InstalledWeights] | None = None) -> WeightsEntry:
    """One name's line of the list: installed record, parameter count, hub source, licence (no network)."""
    import timm
    import torch

    installed = read_manifest() if installed is None else installed
    try:
        cfg = pretrained_cfg(name)
    except WeightsFileError:
        cfg = {}
    arch, _ = split_name(name)
    params = None
    if timm.is_model(arch):
        with torch.device("meta"):           # counts parameters without allocating them
            params = sum(p.numel() for p in timm.create_model(arch, pretrained=False).parameters())
    return WeightsEntry(name, installed.get(name), params, cfg.get("hf_hub_id"), cfg.get("license"))


def list_weights() -> list[WeightsEntry]:
    """The known architectures plus whatever else is installed."""
    installed = read_manifest()
    names = list(KNOWN_WEIGHTS) + sorted(n for n in installed if n not in KNOWN_WEIGHTS)
    return [weights_entry(n, installed) for n in names]


def verify_weights() -> list[VerifyResult]:
    """Each recorded file: present, same sha256 as when it was installed, and loadable into its model."""
    results = []
    for name, entry in read_manifest().items():
        path = entry.path
        if not path.is_file():
            results.append(VerifyResult(name, path, False, "file missing"))
            continue
        digest = file_sha256(path)
        if digest != entry.sha256:
            results.append(VerifyResult(name, path, False, f"sha256 {digest[:12]}... differs from the recorded "
                                                             f"{entry.sha256[:12]}... (damaged or replaced)"))
            continue
        try:
            check_fits(name, path)
        except WeightsFileError as exc:
            results.append(VerifyResult(name, path, False, str(exc)))
            continue
        results.append(VerifyResult(name, path, True))
    return results


def recorded_sha256(path: str | Path) -> str:
    """The sha256 of a weights file: from the manifest when it is the recorded, unchanged file, else hashed."""
    path = Path(path)
    try:
        for entry in read_manifest().values():
            if entry.path == path and path.stat().st_size == entry.size:
                return entry.sha256
    except WeightsFileError:
        pass
    return file_sha256(path)


def describe_size(n_bytes: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.1f} GB"
