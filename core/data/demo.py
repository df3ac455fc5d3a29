"""Procedural breast-ultrasound phantoms: a small, deterministic demo data set that needs no download.

``medssl demo-data OUT`` (or :func:`generate_demo`) writes three classes of B-mode-like images:

* ``normal``: breast tissue only (skin line, subcutaneous fat with Cooper's ligaments, bright
  fibroglandular layer with fat islands, retromammary fat, striated pectoralis muscle);
* ``benign``: a smooth, wider-than-tall, hypoechoic oval (fibroadenoma-like; now and then an anechoic
  cyst) with a thin capsule and slight posterior acoustic enhancement;
* ``malignant``: an irregular, spiculated, markedly hypoechoic mass (noisy polar radius plus narrow
  radial spikes), an echogenic halo, sometimes micro-calcifications, and a posterior acoustic shadow
  (a dark band under the mass whose depth follows the beam path through it).

How an image is made (all vectorised numpy, a few ms per 128 x 128 image): a tissue echogenicity map
(layers with wavy boundaries and periodic random texture fields) has the lesion drawn into it from its
exact binary mask; complex Gaussian scatterers scaled by that map are convolved with an anisotropic
point-spread function (FFT), whose envelope is Rayleigh distributed (fully developed speckle); the
envelope is multiplied by depth attenuation with TGC, the focal gain and the lesion's cumulative
shadow/enhancement along the beam, then log-compressed to 8-bit grey.

Benign cases: every fourth one (case index 2, 6, ...) is a cyst, the rest fibroadenomas.

Layout: ``n_cases`` is the number of cases **per class** (default 8: 3 x 8 = 24 cases). Each case has
``images_per_case`` views in each of two modalities, so the default set holds 3 x 8 x 2 x 2 = 96
images::

    OUT/<class>/<case>_<modality>_<view>.png        8-bit grey image
    OUT/<class>/<case>_<modality>_<view>_mask.png   lesion mask, 0/255 (all 0 for normal cases)
    OUT/manifest.csv                                path,label,case_id,modality (path posix, relative)
    OUT/.medssl-demo.json                           marker: parameters and the sha256 of every file

Case ids are ``case001``, ``case002``, ... interleaved over the classes (they do not reveal the label).
Modalities: ``US-A`` (standard B-mode: fine speckle, 45 dB dynamic range) and ``US-B`` (spatially
compounded, lower-frequency look: coarser but smoother speckle, higher gain, 55 dB). The two
modalities of one view are the same acquisition (same geometry and scatterers, same mask), processed
differently. Views of one case are the same patient (same tissue, same lesion shape) seen with small
shifts, rotations and size changes, with fresh speckle.

Everything is deterministic from ``seed``; a case's pixels depend only on (seed, class, case index),
not on ``n_cases``. Regenerating into a demo folder rewrites it byte for byte; a folder that is not
empty and holds no demo marker is refused, and a demo file that was changed after it was generated
(an edited mask, say) is never overwritten.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.atomic import write_bytes_atomic

CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")
MODALITIES: tuple[str, ...] = ("US-A", "US-B")
MARKER_NAME = ".medssl-demo.json"
MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("path", "label", "case_id", "modality")
DEFAULT_CASES = 8            # per class
DEFAULT_IMAGES_PER_CASE = 2  # per modality
_MARKER_FORMAT = "medssl-demo"
_MARKER_VERSION = 1


class DemoFolderError(ValueError):
    """The output folder cannot be used: ``.path`` and ``.reason`` (one sentence); str() = 'PATH: REASON'."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass
class DemoImage:
    """One rendered phantom: ``image`` uint8 [H, W], ``mask`` bool [H, W] and ``info`` (geometry)."""
    image: np.ndarray
    mask: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------
# synthesis
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ModalitySpec:
    psf_axial: float    # PSF sigma in px at size 128 (scaled with size)
    psf_lateral: float
    looks: int          # spatial compounding: number of independent speckle looks averaged
    dyn_range_db: float
    white_level: float  # envelope amplitude shown as white (before gain)
    gain_db: float
    gamma: float        # grey map applied after log compression
    smooth: float       # post-detection smoothing sigma in px at size 128 (display resolution)


_MODALITY_SPECS = {
    "US-A": _ModalitySpec(psf_axial=0.75, psf_lateral=1.35, looks=1, dyn_range_db=60.0,
                          white_level=6.0, gain_db=0.0, gamma=1.3, smooth=0.6),
    "US-B": _ModalitySpec(psf_axial=1.05, psf_lateral=1.9, looks=3, dyn_range_db=65.0,
                          white_level=6.0, gain_db=2.5, gamma=1.25, smooth=0.7),
}


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in key])


@functools.lru_cache(maxsize=64)
def _gauss_transfer(shape: tuple[int, int], sy: float, sx: float, real: bool,
                    unit_power: bool = False) -> np.ndarray:
    """Fourier transfer function of a Gaussian blur (sigmas in px); read-only, cached."""
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = (np.fft.rfftfreq(shape[1]) if real else np.fft.fftfreq(shape[1]))[None, :]
    h = np.exp(-2.0 * np.pi ** 2 * ((sy * ky) ** 2 + (sx * kx) ** 2))
    if unit_power:  # white noise in, unit variance out
        h = h / np.sqrt(np.mean(h ** 2))
    h.flags.writeable = False
    return h


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sy: float, sx: float) -> np.ndarray:
    """Periodic Gaussian random field, zero mean, unit std (sigmas in px)."""
    spec = np.fft.rfft2(rng.standard_normal(shape)) * _gauss_transfer(shape, sy, sx, real=True)
    f = np.fft.irfft2(spec, s=shape)
    f -= f.mean()
    return f / (f.std() + 1e-12)


def _wave(x: np.ndarray, amps: np.ndarray, freqs: np.ndarray, phases: np.ndarray) -> np.ndarray:
    return sum(a * np.sin(2 * np.pi * (f * x + p)) for a, f, p in zip(amps, freqs, phases))


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))


class _Case:
    """Everything shared by the views of one case: tissue layout, texture fields, lesion shape."""

    def __init__(self, label: str, seed: int, case_index: int, size: int):
        if label not in CLASSES:
            raise ValueError(f"unknown class {label!r}; expected one of {', '.join(CLASSES)}")
        self.label, self.seed, self.case_index, self.size = label, seed, case_index, size
        self.class_index = CLASSES.index(label)
        rng = _rng(seed, self.class_index, case_index, 0xCA5E)
        self.scale = s = size / 128.0
        self.pad = pad = max(6, int(round(8 * s)))
        self.n = n = size + 2 * pad
        shape = (n, n)
        # tissue layout (normalised depth 0..1 = top..bottom of the image)
        self.skin_top = rng.uniform(0.012, 0.03)
        self.skin_thick = rng.uniform(0.03, 0.05)
        self.b1 = rng.uniform(0.2, 0.3)       # fat / fibroglandular
        self.b2 = rng.uniform(0.62, 0.72)       # fibroglandular / retromammary fat
        self.b3 = self.b2 + rng.uniform(0.07, 0.12)  # retromammary fat / pectoralis
        self.waves = [(rng.uniform(0.005, 0.025, 3), rng.uniform(0.4, 2.5, 3), rng.uniform(0, 1, 3))
                      for _ in range(4)]
        self.alpha = rng.uniform(0.5, 0.9)      # residual depth attenuation after TGC
        self.focus = rng.uniform(0.35, 0.55)
        self.fat_level = rng.uniform(0.26, 0.36)
        self.gland_level = rng.uniform(0.85, 1.05)
        self.muscle_freq = rng.uniform(22, 32)
        self.muscle_slope = rng.uniform(-3, 3)
        self.island_thr = rng.uniform(1.0, 1.5)
        # periodic texture fields (rolled laterally per view: seamless)
        self.f_lobule = _smooth_field(rng, shape, 3.0 * s, 4.5 * s)
        self.f_ligament = _smooth_field(rng, shape, 5.0 * s, 7.0 * s)
        self.f_mottle = _smooth_field(rng, shape, 2.0 * s, 3.5 * s)
        self.f_island = _smooth_field(rng, shape, 4.0 * s, 7.0 * s)
        self.f_warp = _smooth_field(rng, shape, 8.0 * s, 10.0 * s)
        self.f_inner = _smooth_field(rng, shape, 2.5 * s, 2.5 * s)
        # lesion (shape in the lesion's own normalised polar frame)
        self.kind = "none"
        if label == "benign":
            self.kind = "cyst" if case_index % 4 == 2 else "fibroadenoma"  # every 4th: a cyst
            self.a = rng.uniform(0.10, 0.17)                  # lateral semi-axis (fraction of width)
            self.b = self.a * rng.uniform(0.45, 0.7)          # wider than tall (parallel)
            self.theta = np.deg2rad(rng.uniform(-12, 12))
            self.harm = (rng.uniform(0, 0.04, 2), np.array([2, 3]), rng.uniform(0, 2 * np.pi, 2))
            self.spikes = (np.zeros(0), np.zeros(0), np.zeros(0))
            if self.kind == "cyst":
                self.level = rng.uniform(0.01, 0.025)
                self.kappa = rng.uniform(4.0, 6.0)            # posterior enhancement
                self.a *= 0.8
                self.b = self.a * rng.uniform(0.55, 0.8)
            else:
                self.level = rng.uniform(0.09, 0.16)
                self.kappa = rng.uniform(2.0, 3.5)
            self.halo = 0.0
        elif label == "malignant":
            self.kind = "carcinoma"
            self.a = rng.uniform(0.08, 0.13)
            self.b = self.a * rng.uniform(0.8, 1.35)          # often taller than wide
            self.theta = np.deg2rad(rng.uniform(-40, 40))
            k = np.arange(2, 17)
            amp = np.where(k <= 8, rng.uniform(0.02, 0.12, k.size) * (3.0 / k),
                           rng.uniform(0.0, 0.035, k.size))
            self.harm = (amp, k, rng.uniform(0, 2 * np.pi, k.size))
            n_sp = int(rng.integers(7, 15))
            self.spikes = (rng.uniform(0, 2 * np.pi, n_sp), rng.uniform(0.3, 0.9, n_sp),
                           rng.uniform(0.05, 0.11, n_sp))
            self.level = rng.uniform(0.03, 0.07)
            self.kappa = -rng.uniform(4.5, 7.0)               # posterior acoustic shadow
            self.halo = rng.uniform(0.12, 0.25)
            n_calc = int(rng.integers(3, 9)) if rng.uniform() < 0.6 else 0
            self.calcs = rng.uniform(-0.7, 0.7, (n_calc, 2))  # polar-frame positions (u, v)
        if self.kind != "none":
            self.cx = rng.uniform(0.36, 0.64)
            self.cy = rng.uniform(0.36, 0.47)
        self.tissue = self._tissue_echo()

    def _tissue_echo(self) -> np.ndarray:
        """Echogenicity of the lesion-free breast on the padded canvas (linear amplitude, ~0..3)."""
        n, pad, size = self.n, self.pad, self.size
        coords = (np.arange(n) - pad + 0.5) / size
        Y, X = coords[:, None], coords[None, :]
        lob, lig_f, mot, isl, warp = self.f_lobule, self.f_ligament, self.f_mottle, self.f_island, self.f_warp
        b1 = self.b1 + _wave(X, *self.waves[0])
        b2 = self.b2 + _wave(X, *self.waves[1])
        b3 = self.b3 + _wave(X, *self.waves[2])
        skin_top = self.skin_top + 0.3 * _wave(X, *self.waves[3])
        skin_bot = skin_top + self.skin_thick
        edge = 0.008                                             # layer boundary softness

        lig = np.exp(-(lig_f / 0.11) ** 2)                       # echogenic septa / Cooper's ligaments
        fat = self.fat_level * (1.0 + 0.18 * lob) + 0.65 * lig
        islands = _sigmoid((isl - self.island_thr) / 0.12)      # fat lobules inside the gland
        gland = self.gland_level * (1.0 + 0.22 * mot)
        gland = gland * (1 - islands) + islands * self.fat_level * (1.0 + 0.15 * lob) + 0.2 * lig
        retro = 0.8 * self.fat_level * (1.0 + 0.18 * lob) + 0.45 * lig
        phase = 2 * np.pi * (self.muscle_freq * (Y - b3) + self.muscle_slope * X) + 1.2 * warp
        muscle = 0.28 + 0.55 * (0.5 + 0.5 * np.cos(phase)) ** 4  # striated pectoralis
        dermis = 0.45 + 0.12 * mot

        echo = np.full((n, n), 0.025)          # coupling gel
        for layer, bound in ((dermis, skin_top), (fat, skin_bot), (gland, b1), (retro, b2), (muscle, b3)):
            w = _sigmoid((Y - bound) / edge)
            echo = echo * (1 - w) + layer * w
        w_line = 0.008                                           # skin entry / exit echoes
        echo = (echo + 2.5 * np.exp(-((Y - skin_top) / w_line) ** 2)
                + 1.6 * np.exp(-((Y - skin_bot) / w_line) ** 2))
        return echo

    # lesion boundary radius R(phi) in the normalised frame, tabulated on a fine angle grid
    _LUT = 4096

    def radius_table(self, extra: tuple | None = None) -> np.ndarray:
        phi = np.arange(self._LUT + 1) * (2 * np.pi / self._LUT)     # closed: last = first
        if getattr(self, "_base_r", None) is None:
            r = np.ones_like(phi)
            for a_, k_, p_ in zip(*self.harm):
                r = r + a_ * np.cos(k_ * phi + p_)
            for p0, h, w in zip(*self.spikes):
                d = (phi - p0 + np.pi) % (2 * np.pi) - np.pi
                r = r + h * np.exp(-(d / w) ** 2)
            self._base_r = r
        r = self._base_r
        if extra is not None:
            r = r + sum(a_ * np.cos(k_ * phi + p_) for a_, k_, p_ in zip(*extra))
        return np.maximum(r, 0.5)

    @classmethod
    def radius_at(cls, table: np.ndarray, phi: np.ndarray) -> np.ndarray:
        return np.interp(np.mod(phi, 2 * np.pi) * (cls._LUT / (2 * np.pi)), np.arange(cls._LUT + 1), table)


def _render_view(case: _Case, view: int) -> dict[str, Any]:
    """Geometry, echo map, mask, attenuation and base scatterers of one view (shared by modalities)."""
    s, n, pad, size = case.scale, case.n, case.pad, case.size
    rng = _rng(case.seed, case.class_index, case.case_index, 0x51E0 + view)
    coords = (np.arange(n) - pad + 0.5) / size
    Y, X = coords[:, None], coords[None, :]
    # the probe slides sideways: the tissue map is periodic-safe for |shift| <= pad (only the pad wraps)
    shift_px = 0 if view == 0 else int(rng.integers(-int(6 * s), int(6 * s) + 1))
    echo = np.roll(case.tissue, shift_px, axis=1)

    info: dict[str, Any] = {"label": case.label, "case_index": case.case_index, "view": view,
                            "kind": case.kind, "shift_px": shift_px}
    mask_full = np.zeros((n, n), dtype=bool)
    kappa = 0.0
    if case.kind != "none":
        scale = rng.uniform(0.92, 1.08)
        a, b = case.a * scale, case.b * scale
        theta = case.theta + np.deg2rad(rng.uniform(-6, 6))
        cx = case.cx + shift_px / size + rng.uniform(-0.02, 0.02)
        cy = case.cy + rng.uniform(-0.015, 0.015)
        extra = None
        if case.label == "malignant":  # probe pressure changes the outline a little
            extra = (rng.uniform(0, 0.025, 4), np.array([3, 5, 7, 9]), rng.uniform(0, 2 * np.pi, 4))
        # keep the whole lesion (with its spikes) inside the image and above the retromammary layer
        table = case.radius_table(extra)
        phis = np.arange(case._LUT) * (2 * np.pi / case._LUT)
        rr = table[:-1]
        du, dv = rr * np.cos(phis), rr * np.sin(phis)
        bx = a * du * np.cos(theta) - b * dv * np.sin(theta)
        by = a * du * np.sin(theta) + b * dv * np.cos(theta)
        fit = min(1.0, 0.84 / (bx.max() - bx.min()), 0.48 / (by.max() - by.min()))
        a, b, bx, by = a * fit, b * fit, bx * fit, by * fit
        cx = float(np.clip(cx, 0.08 - bx.min(), 0.92 - bx.max()))
        cy = float(np.clip(cy, 0.16 - by.min(), 0.66 - by.max()))
        # work in a window around the lesion (halo included): the rest of the canvas is untouched
        ext = 1.7 * max(np.abs(bx).max(), np.abs(by).max()) + 3.0 / size
        def index(c: float) -> int:
            return int(np.clip(np.floor(c * size + pad), 0, n))

        win = (slice(index(cy - ext), index(cy + ext) + 1), slice(index(cx - ext), index(cx + ext) + 1))
        dx, dy = X[:, win[1]] - cx, Y[win[0]] - cy
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / a
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
        rho = np.hypot(u, v)
        R = case.radius_at(table, np.arctan2(v, u))
        inside = rho <= R
        mask_full[win] = inside
        inner = case.f_inner[win] if case.label == "malignant" else 0.4 * case.f_inner[win]
        lesion = case.level * np.clip(1.0 + 0.35 * inner, 0.15, None)
        if case.label == "malignant" and len(case.calcs):
            for cu, cv in case.calcs:
                d2 = ((u - cu) * a * size) ** 2 + ((v - cv) * b * size) ** 2
                lesion = lesion + 2.5 * np.exp(-d2 / (0.6 * s) ** 2)
        t = (rho - R) / R
        e = echo[win]
        if case.label == "malignant":
            e = e + ~inside * 0.8 * np.exp(-(t / case.halo) ** 2)        # echogenic halo
        else:
            wall = 0.6 if case.kind == "cyst" else 0.25
            e = e + ~inside * wall * np.exp(-(t / 0.05) ** 2)             # thin capsule
        echo[win] = np.where(inside, lesion, e)
        kappa = case.kappa
        area = a * b * np.pi * float(np.mean(table[:-1] ** 2)) * size * size  # 1/2 integral of R^2
        info.update(center=(cx * size - 0.5, cy * size - 0.5), semi_axes_px=(a * size, b * size),
                    theta_deg=float(np.rad2deg(theta)), lesion_area_px=area, kappa=kappa)

    # attenuation along the beam (columns): depth, focus, and the lesion's shadow / enhancement
    atten = np.exp(-case.alpha * np.clip(Y, 0, None)) * (1 + 0.2 * np.exp(-((Y - case.focus) / 0.22) ** 2))
    atten = np.broadcast_to(atten, (n, n))
    if kappa != 0.0:
        path = np.cumsum(mask_full, axis=0) / size
        path = np.fft.irfft(np.fft.rfft(path, axis=1)
                            * np.exp(-2 * np.pi ** 2 * (1.2 * s * np.fft.rfftfreq(n)) ** 2), n=n, axis=1)
        atten = atten * np.exp(kappa * path)
    scat = rng.standard_normal((2, n, n))
    return {"echo": echo, "mask": mask_full[pad:pad + size, pad:pad + size].copy(), "atten": atten,
            "scat": (scat[0] + 1j * scat[1]) * np.sqrt(0.5), "info": info}


def _render_modality(case: _Case, view_data: dict[str, Any], view: int, modality: str) -> np.ndarray:
    spec = _MODALITY_SPECS[modality]
    s, n, pad, size = case.scale, case.n, case.pad, case.size
    m = MODALITIES.index(modality)
    rng = _rng(case.seed, case.class_index, case.case_index, 0x51E0 + view, 0xA0 + m)
    H = _gauss_transfer((n, n), spec.psf_axial * s, spec.psf_lateral * s, False, True)
    scat = view_data["scat"][None]
    if spec.looks > 1:
        extra = rng.standard_normal((spec.looks - 1, 2, n, n))
        scat = np.concatenate([scat, (extra[:, 0] + 1j * extra[:, 1]) * np.sqrt(0.5)], axis=0)
    env = np.abs(np.fft.ifft2(np.fft.fft2(scat * view_data["echo"]) * H)).mean(axis=0)
    env = np.fft.irfft2(np.fft.rfft2(env) * _gauss_transfer((n, n), spec.smooth * s, spec.smooth * s, True),
                        s=(n, n))
    env = np.maximum(env, 0.0) * view_data["atten"]
    gain_db = spec.gain_db + rng.uniform(-1.0, 1.0)
    db = 20 * np.log10(env[pad:pad + size, pad:pad + size] / spec.white_level + 1e-6) + gain_db
    img = np.clip(1.0 + db / spec.dyn_range_db, 0.0, 1.0) ** spec.gamma
    return np.round(img * 255.0).astype(np.uint8)


def render_demo_image(label: str, case_index: int = 0, view: int = 0, modality: str = "US-A", *,
                      size: int = 128, seed: int = 0) -> DemoImage:
    """Render one phantom in memory (what generate_demo writes for that class/case/view/modality).

    ``info`` holds the lesion geometry: ``center`` (x, y px), ``semi_axes_px``, ``theta_deg``,
    ``lesion_area_px`` (analytic area of the drawn outline), ``kind`` (none/fibroadenoma/cyst/...).
    """
    if modality not in _MODALITY_SPECS:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    case = _Case(label, seed, case_index, size)
    vd = _render_view(case, view)
    return DemoImage(_render_modality(case, vd, view, modality), vd["mask"], dict(vd["info"]))


# ---------------------------------------------------------------------------------------------------
# writing a data set
# ---------------------------------------------------------------------------------------------------

def case_id_for(class_index: int, case_index: int) -> str:
    """Case ids interleave the classes: case001 normal, case002 benign, case003 malignant, ..."""
    return f"case{case_index * len(CLASSES) + class_index + 1:03d}"


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_marker(out: Path) -> dict | None:
    path = out / MARKER_NAME
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != _MARKER_FORMAT \
            or not isinstance(marker.get("files"), dict):
        return None
    return marker


def _inside(out: Path, rel: str) -> Path | None:
    path = (out / rel)
    try:
        path.resolve().relative_to(out.resolve())
    except ValueError:
        return None
    return path


def check_output_dir(out_dir: str | Path) -> dict[str, str | None]:
    """Raise DemoFolderError unless ``out_dir`` may receive a demo set; return the previous demo's files.

    Allowed: a missing or empty folder, or a folder made by a previous demo run (it holds the marker
    ``.medssl-demo.json``) none of whose generated files was changed since. Returns {relative path:
    sha256 or None} of the files the previous run wrote (empty for a new folder).
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise DemoFolderError(out, "exists and is not a folder; choose a new folder for the demo data")
    if not out.exists() or not any(out.iterdir()):
        return {}
    marker = _read_marker(out)
    if marker is None:
        raise DemoFolderError(out, "folder is not empty and is not a MedSSL demo folder (no valid "
                                   f"{MARKER_NAME}); refusing to write into it so nothing of yours is "
                                   "overwritten; choose a new or empty folder")
    changed = []
    for rel, digest in marker["files"].items():
        path = _inside(out, rel)
        if path is None:
            raise DemoFolderError(out, f"{MARKER_NAME} names a file outside the folder ({rel}); "
                                       "refusing to use this folder")
        if digest is not None and path.is_file() and _sha256(path.read_bytes()) != digest:
            changed.append(rel)
    if changed:
        more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
        raise DemoFolderError(out, f"{len(changed)} demo file(s) were changed after they were generated: "
                                   f"{', '.join(sorted(changed)[:3])}{more}; refusing to overwrite them; "
                                   "move them away or choose another folder")
    return {str(k): v for k, v in marker["files"].items()}


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    write_bytes_atomic(path, data)


def _marker_bytes(params: dict, files: dict[str, str | None], complete: bool) -> bytes:
    marker = {"format": _MARKER_FORMAT, "version": _MARKER_VERSION, "generator": "medssl demo-data",
              "complete": complete, "params": params, "classes": list(CLASSES),
              "modalities": list(MODALITIES), "files": dict(sorted(files.items()))}
    return (json.dumps(marker, indent=1, sort_keys=True) + "\n").encode("utf-8")


def generate_demo(out_dir: str | Path, *, n_cases: int = DEFAULT_CASES,
                  images_per_case: int = DEFAULT_IMAGES_PER_CASE, size: int = 128, seed: int = 0,
                  ctx=None) -> Path:
    """Write the phantom set into ``out_dir`` and return it (see the module docstring for the layout).

    ``n_cases`` cases **per class**, ``images_per_case`` views per case **and modality** (two
    modalities), so ``3 * n_cases * 2 * images_per_case`` images (96 by default). ``ctx`` (a
    ``core.jobs.JobContext``) gets progress per case and may cancel between cases; running again
    finishes the set. Raises DemoFolderError (a ValueError) for a folder that is not ours.
    """
    if int(n_cases) < 1 or int(images_per_case) < 1:
        raise ValueError("n_cases and images_per_case must be at least 1")
    if not 32 <= int(size) <= 2048:
        raise ValueError(f"size must be between 32 and 2048 px (got {size})")
    n_cases, images_per_case, size, seed = int(n_cases), int(images_per_case), int(size), int(seed)
    out = Path(out_dir).expanduser().absolute()
    previous = check_output_dir(out)
    params = {"n_cases": n_cases, "images_per_case": images_per_case, "size": size, "seed": seed}

    planned: list[tuple[str, int, int]] = [(label, ci, k) for k in range(n_cases)
                                           for ci, label in enumerate(CLASSES)]
    out.mkdir(parents=True, exist_ok=True)
    # a marker first, so an interrupted run leaves a folder that a rerun may complete
    pending = dict(previous)
    for label, ci, k in planned:
        for m in MODALITIES:
            for v in range(images_per_case):
                stem = f"{label}/{case_id_for(ci, k)}_{m}_{v}"
                for rel in (f"{stem}.png", f"{stem}_mask.png"):
                    pending.setdefault(rel, None)
    pending.setdefault(MANIFEST_NAME, None)
    clash = sorted(rel for rel in pending if rel not in previous and (out / rel).exists())
    if clash:
        raise DemoFolderError(out, f"{clash[0]} already exists and was not made by the demo generator; "
                                   "refusing to overwrite it; choose a new or empty folder")
    _write_if_changed(out / MARKER_NAME, _marker_bytes(params, pending, complete=False))

    written: dict[str, str] = {}
    rows: list[tuple[str, str, str, str]] = []
    total = len(planned)
    for step, (label, ci, k) in enumerate(planned):
        if ctx is not None:
            ctx.check_cancelled()
            ctx.progress(step, total, f"{label} {case_id_for(ci, k)}")
        (out / label).mkdir(exist_ok=True)
        case = _Case(label, seed, k, size)
        cid = case_id_for(ci, k)
        for v in range(images_per_case):
            vd = _render_view(case, v)
            mask_bytes = _png_bytes(vd["mask"].astype(np.uint8) * 255)
            for m in MODALITIES:
                stem = f"{label}/{cid}_{m}_{v}"
                img_bytes = _png_bytes(_render_modality(case, vd, v, m))
                for rel, data in ((f"{stem}.png", img_bytes), (f"{stem}_mask.png", mask_bytes)):
                    _write_if_changed(out / rel, data)
                    written[rel] = _sha256(data)
                rows.append((f"{stem}.png", label, cid, m))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(sorted(rows))
    manifest = buf.getvalue().encode("utf-8")
    _write_if_changed(out / MANIFEST_NAME, manifest)
    written[MANIFEST_NAME] = _sha256(manifest)
    # files of a previous, larger demo run that this run did not make again
    for rel in sorted(set(previous) - set(written)):
        path = _inside(out, rel)
        if path is not None and path.is_file():
            path.unlink()
    for label in CLASSES:
        folder = out / label
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    _write_if_changed(out / MARKER_NAME, _marker_bytes(params, written, complete=True))
    if ctx is not None:
        ctx.progress(total, total, "done")
    return out
