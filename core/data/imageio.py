"""Reading medical images from disk into float arrays, with one clear error per unreadable file.

Every reader returns ``float32`` in [0, 1] so that the rest of the engine never cares whether a file was
8-bit, 16-bit, float or DICOM. Decisions worth knowing:

- Raster files (PNG, JPEG, TIFF, BMP, and anything else Pillow opens) are fully decoded (``load()``) so
  that a truncated file fails here, at scan time, not in the middle of training.
- The EXIF orientation tag is applied, so a phone JPEG comes back the way it is displayed.
- 8-bit data is divided by 255, 16-bit data (``I;16*``) by 65535 (the type max, not the image max, so
  intensities stay comparable between images). ``I`` (32-bit int) whose values fit in 0..65535 is treated
  as 16-bit (several writers store 16-bit data that way); other ``I`` data and ``F`` (float) data are
  min-max scaled, except float data already inside [0, 1], which is kept as is.
- An RGB image whose three channels are identical is returned as grey (``is_color=False``, shape
  ``[H, W]``): many ultrasound exports are grey images saved as RGB.
- Alpha is composited on black (colour * alpha): transparent pixels carry no image, and black is the
  background of medical images. Palette and CMYK images are converted to RGB first.
- 16-bit *colour* raster files are reduced to 8 bits by Pillow; this reader inherits that.
- DICOM (``.dcm``/``.dicom``, or any file with the ``DICM`` preamble): the modality LUT (rescale slope /
  intercept) is applied, then the first VOI window (WindowCenter/Width) or VOI LUT when the file has one,
  else the modality values are min-max scaled. MONOCHROME1 is inverted so bright always means dense.
  Multi-frame files: only the first frame is read. ``meta`` holds ``case_id`` (PatientID), ``modality``,
  ``n_frames`` and the study/series UIDs.
- Decompression bombs: the pixel count is checked from the header, before decoding, against
  ``max_pixels``. Pillow's own global limit is raised to at least ``max_pixels`` so that its warning or
  error does not fire before ours for an image we are allowed to read.
"""

from __future__ import annotations

import math
import os
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "DICOM_EXTENSIONS", "ImageReadError", "ImageData",
           "ImageHeader", "read_image", "open_plain_8bit", "read_grey", "read_mask", "probe_image", "is_mask_file",
           "mask_image_stem", "is_dicom_file"]

DEFAULT_MAX_PIXELS = 100_000_000
"""Largest image (width * height) read by default: 10k x 10k. Raise it for whole-slide images."""

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}) | DICOM_EXTENSIONS
"""Lower-case suffixes the library treats as images (DICOM files without a suffix are found by preamble)."""

_MASK_NAME = re.compile(r"^(?P<stem>.+)_mask(?:_\d+)?\.png$", re.IGNORECASE)
_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"
_ORIENTATION_SWAPS_AXES = {5, 6, 7, 8}
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's "L"
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_TO_RGB_MODES = {"CMYK", "YCbCr", "LAB", "HSV", "RGBX"}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


class ImageReadError(Exception):
    """A file that cannot be read as an image; ``reason`` is one human sentence for the user."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass
class ImageData:
    """Decoded pixels in [0, 1] plus what the file said about itself."""

    array: np.ndarray
    is_color: bool
    bit_depth: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        return int(self.array.shape[1])


@dataclass(frozen=True)
class ImageHeader:
    """Size and format from the header alone (no decode); width/height after EXIF orientation."""

    width: int
    height: int
    format: str
    mode: str


# -- names ------------------------------------------------------------------------------------------------
def is_mask_file(name: str | os.PathLike) -> bool:
    """True for BUSI-style lesion masks: ``<stem>_mask.png``, ``<stem>_mask_1.png``, ``<stem>_mask_2.png``..."""
    return _MASK_NAME.match(Path(name).name) is not None


def mask_image_stem(name: str | os.PathLike) -> str | None:
    """The stem of the image a mask belongs to (``a_mask_1.png`` -> ``a``), or None if not a mask name."""
    match = _MASK_NAME.match(Path(name).name)
    return match.group("stem") if match else None


def is_dicom_file(path: str | os.PathLike) -> bool:
    """DICOM by suffix, or by the ``DICM`` magic at byte 128 (DICOM files often have no suffix)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(_DICOM_MAGIC_OFFSET)
            return fh.read(len(_DICOM_MAGIC)) == _DICOM_MAGIC
    except OSError:
        return False


# -- public readers ---------------------------------------------------------------------------------------
def read_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageData:
    """Read any supported file as float32 [H, W] (grey) or [H, W, 3] (colour) in [0, 1].

    Raises :class:`ImageReadError` with a human reason for every failure (missing, empty, not an image,
    truncated, too large, unreadable DICOM). ``max_pixels=None`` turns our size guard off (Pillow's own
    limit then still applies).
    """
    path = Path(path)
    _check_file_exists_and_not_empty(path)
    if is_dicom_file(path):
        return _read_dicom(path, max_pixels)
    return _read_raster(path, max_pixels)


def open_plain_8bit(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image | None:
    """A plain 8-bit grey or RGB raster without EXIF rotation, decoded as stored (the fast path of
    ``core.data.transforms.load_8bit``: the same pixels as :func:`read_image`, without the float round trip);
    None for anything :func:`read_image` must convert (alpha, palette, 16-bit, EXIF rotation, DICOM).
    Same checks and errors as :func:`read_image` (the pixel guard included)."""
    path = Path(path)
    _check_file_exists_and_not_empty(path)
    if is_dicom_file(path):
        return None
    im = _open_raster(path, max_pixels)
    try:
        if im.mode not in ("L", "RGB") or _exif_orientation(im) != 1:
            im.close()
            return None
        im.load()           # reads the pixels and closes the file (single-frame images)
    except Image.DecompressionBombError as exc:
        im.close()
        raise ImageReadError(path, _pillow_bomb_reason(exc, max_pixels)) from None
    except _DECODE_ERRORS as exc:
        im.close()
        raise ImageReadError(path, f"the image data is truncated or corrupt ({exc})") from None
    return im


def read_grey(path: str | os.PathLike, **kwargs: Any) -> np.ndarray:
    """float32 [H, W] in [0, 1]; colour is converted to luminance (ITU-R 601 weights)."""
    data = read_image(path, **kwargs)
    if data.array.ndim == 2:
        return data.array
    return np.clip(data.array @ _LUMA_WEIGHTS, 0.0, 1.0).astype(np.float32, copy=False)


def read_mask(paths: str | os.PathLike | Iterable[str | os.PathLike], *,
              max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """bool [H, W]: the pixel-wise union of one or more mask files (any channel > 0 is lesion).

    BUSI gives some lesions several mask files (``_mask``, ``_mask_1``...); the lesion is their union.
    All masks must have the same size, otherwise :class:`ImageReadError` names the odd one out.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("read_mask needs at least one mask path")
    union: np.ndarray | None = None
    for path in paths:
        array = read_image(path, max_pixels=max_pixels).array
        lesion = array > 0 if array.ndim == 2 else np.any(array > 0, axis=-1)
        if union is None:
            union = lesion
        elif lesion.shape != union.shape:
            raise ImageReadError(path, f"mask is {lesion.shape[1]}x{lesion.shape[0]} pixels but "
                                       f"{paths[0].name} is {union.shape[1]}x{union.shape[0]}")
        else:
            union |= lesion
    return union


def probe_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Size and format from the header only (cheap); applies the same checks as :func:`read_image`
    except the full decode, so a truncated body is not detected here."""
    path = Path(path)
    _check_file_exists_and_not_empty(path)
    if is_dicom_file(path):
        ds = _open_dicom(path, stop_before_pixels=True)
        width, height = _dicom_size(path, ds)
        _check_pixel_count(path, width, height, max_pixels)
        return ImageHeader(width, height, "DICOM", str(ds.get("PhotometricInterpretation", "")))
    with _open_raster(path, max_pixels) as im:
        width, height = im.size
        if _exif_orientation(im) in _ORIENTATION_SWAPS_AXES:
            width, height = height, width
        return ImageHeader(width, height, im.format or "", im.mode)


# -- raster files (Pillow) --------------------------------------------------------------------------------
def _check_file_exists_and_not_empty(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReadError(path, "the file does not exist") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot access the file ({exc.strerror or exc})") from None
    if path.is_dir():
        raise ImageReadError(path, "this is a folder, not an image file")
    if size == 0:
        raise ImageReadError(path, "the file is empty (0 bytes)")


def _allow_pil_up_to(max_pixels: int | None) -> None:
    """Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that, before we see the size.
    Raise its limit (never lower it: other readers share it) so that our own check decides."""
    current = Image.MAX_IMAGE_PIXELS
    if max_pixels is not None and current is not None and current < max_pixels:
        Image.MAX_IMAGE_PIXELS = int(max_pixels)


def _check_pixel_count(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(path, f"the image is {width}x{height} = {width * height:,} pixels, over the "
                                   f"limit of {max_pixels:,} (decompression-bomb guard; raise max_pixels "
                                   f"to read it)")


def _pillow_bomb_reason(exc: Exception, max_pixels: int | None) -> str:
    """Pillow refused before we saw the size (over twice its limit): same wording as our own check."""
    match = re.search(r"\((\d+) pixels\)", str(exc))
    if match is None or max_pixels is None:
        return f"the image is too large to read safely ({exc})"
    return (f"the image has {int(match.group(1)):,} pixels, over the limit of {max_pixels:,} "
            f"(decompression-bomb guard; raise max_pixels to read it)")


def _open_raster(path: Path, max_pixels: int | None) -> Image.Image:
    """Open (header only) and check the pixel count; the caller closes the image."""
    _allow_pil_up_to(max_pixels)
    try:
        with warnings.catch_warnings():   # Pillow's bomb warning: our own check below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image file, or a format that is not supported "
                                   "(PNG, JPEG, TIFF, BMP and DICOM are)") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, _pillow_bomb_reason(exc, max_pixels)) from None
    except PermissionError:
        raise ImageReadError(path, "no permission to read the file") from None
    except _DECODE_ERRORS as exc:
        raise ImageReadError(path, f"the image header is corrupt ({exc})") from None
    try:
        _check_pixel_count(path, im.width, im.height, max_pixels)
    except ImageReadError:
        im.close()
        raise
    return im


def _exif_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a broken EXIF block must not make the pixels unreadable
        return 1


def _read_raster(path: Path, max_pixels: int | None) -> ImageData:
    with _open_raster(path, max_pixels) as im:
        source_format, source_mode = im.format or "", im.mode
        n_frames = int(getattr(im, "n_frames", 1) or 1)
        try:
            im.load()  # force the full decode: truncation shows up here, not later
        except Image.DecompressionBombError as exc:
            raise ImageReadError(path, _pillow_bomb_reason(exc, max_pixels)) from None
        except _DECODE_ERRORS as exc:
            raise ImageReadError(path, f"the image data is truncated or corrupt ({exc})") from None
        try:
            if _exif_orientation(im) != 1:
                im = ImageOps.exif_transpose(im)
            array, is_color, bit_depth = _pil_to_array(im)
        except ImageReadError:
            raise
        except _DECODE_ERRORS as exc:
            raise ImageReadError(path, f"cannot convert pixel mode {source_mode} ({exc})") from None
    meta = {"format": source_format, "mode": source_mode, "n_frames": n_frames}
    return ImageData(array=array, is_color=is_color, bit_depth=bit_depth, meta=meta)


def _pil_to_array(im: Image.Image) -> tuple[np.ndarray, bool, int]:
    """A loaded PIL image -> (float32 array in [0, 1], is_color, bit depth of the source)."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32), False, 1
    if mode in _SIXTEEN_BIT_MODES:
        return np.asarray(im).astype(np.float32) / 65535.0, False, 16
    if mode == "I":
        values = np.asarray(im)
        if values.size and values.min() >= 0 and values.max() <= 65535:
            return values.astype(np.float32) / 65535.0, False, 16
        return _min_max(values.astype(np.float64)), False, 32
    if mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            return values.astype(np.float32, copy=False), False, 32
        return _min_max(values.astype(np.float64)), False, 32
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode in _TO_RGB_MODES:
        im = im.convert("RGB")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    elif mode not in {"L", "LA", "RGB", "RGBA"}:
        im = im.convert("RGB")  # any other mode Pillow can convert; raises ValueError if it cannot
    pixels = np.asarray(im)
    if im.mode in {"LA", "RGBA"}:      # in place: one float copy of the image at a time (large images)
        array = pixels[..., :-1].astype(np.float32)
        alpha = pixels[..., -1:].astype(np.float32)
        alpha /= 255.0
        array *= alpha                  # composite on black
        del alpha
        array /= 255.0
        if array.shape[-1] == 1:
            array = array[..., 0]
    else:
        array = pixels.astype(np.float32)
        array /= 255.0
    if array.ndim == 3 and _channels_identical(array):
        return np.ascontiguousarray(array[..., 0]), False, 8
    return array.astype(np.float32, copy=False), array.ndim == 3, 8


def _channels_identical(array: np.ndarray) -> bool:
    return bool(np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 1], array[..., 2]))


def _min_max(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the image's own range; a constant image becomes all zeros."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    scaled = (np.nan_to_num(values, nan=low, posinf=high, neginf=low) - low) / (high - low)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


# -- DICOM (pydicom) --------------------------------------------------------------------------------------
def _open_dicom(path: Path, *, stop_before_pixels: bool = False):
    """Parse a DICOM header; pixel data is read lazily (deferred) so the size check comes first."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        try:
            return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, defer_size="1 MB")
        except InvalidDicomError:
            # Old files without the 128-byte preamble are still DICOM when the suffix says so.
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, defer_size="1 MB", force=True)
            if "Rows" not in ds or "Columns" not in ds:
                raise ImageReadError(path, "not a DICOM file (no DICM marker and no image attributes)") from None
            return ds
    except (ImageReadError, MemoryError):   # running out of memory is not the file's fault
        raise
    except PermissionError:
        raise ImageReadError(path, "no permission to read the file") from None
    except Exception as exc:  # pydicom raises many types for damaged files
        raise ImageReadError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from None


def _dicom_size(path: Path, ds) -> tuple[int, int]:
    try:
        return int(ds.Columns), int(ds.Rows)
    except Exception:
        raise ImageReadError(path, "the DICOM file has no valid image size (Rows/Columns): it is not an "
                                   "image, or it is truncated or corrupt") from None


def _dicom_text(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _dicom_tools():
    """(apply_modality_lut, apply_voi_lut, first_frame) for pydicom 3, falling back to pydicom 2.4."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

        def first_frame(ds, n_frames: int) -> np.ndarray:
            return pixel_array(ds, index=0) if n_frames > 1 else pixel_array(ds)
    except ImportError:  # pydicom < 3: decodes every frame, then we keep the first
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

        def first_frame(ds, n_frames: int) -> np.ndarray:
            return ds.pixel_array[0] if n_frames > 1 else ds.pixel_array
    return apply_modality_lut, apply_voi_lut, first_frame


def _read_dicom(path: Path, max_pixels: int | None) -> ImageData:
    apply_modality_lut, apply_voi_lut, first_frame = _dicom_tools()
    ds = _open_dicom(path)
    width, height = _dicom_size(path, ds)
    _check_pixel_count(path, width, height, max_pixels)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(path, "the DICOM file has no pixel data (not an image object)")
    try:
        n_frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        n_frames = 1
    try:
        raw = first_frame(ds, n_frames)
    except MemoryError:
        raise
    except Exception as exc:  # truncated data, missing decoder plugin, inconsistent attributes...
        raise ImageReadError(path, f"cannot decode the DICOM pixel data ({type(exc).__name__}: {exc})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits_stored = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    try:
        if raw.ndim == 3:  # colour (pydicom has already converted YBR to RGB)
            array, is_color = _dicom_colour(raw, bits_stored)
        else:
            array, is_color = _dicom_grey(raw, ds, apply_modality_lut, apply_voi_lut), False
    except (ImageReadError, MemoryError):
        raise
    except Exception as exc:
        raise ImageReadError(path, f"cannot apply the DICOM rescale/window ({type(exc).__name__}: {exc})") from None
    if photometric == "MONOCHROME1":
        array = 1.0 - array
    meta = {"format": "DICOM", "case_id": _dicom_text(ds, "PatientID"), "modality": _dicom_text(ds, "Modality"),
            "n_frames": n_frames, "photometric": photometric,
            "study_uid": _dicom_text(ds, "StudyInstanceUID"), "series_uid": _dicom_text(ds, "SeriesInstanceUID")}
    return ImageData(array=array.astype(np.float32, copy=False), is_color=is_color, bit_depth=bits_stored,
                     meta=meta)


def _dicom_colour(raw: np.ndarray, bits_stored: int) -> tuple[np.ndarray, bool]:
    array = raw[..., :3].astype(np.float32) / float(2 ** bits_stored - 1)
    array = np.clip(array, 0.0, 1.0)
    if _channels_identical(array):
        return np.ascontiguousarray(array[..., 0]), False
    return array, True


def _dicom_grey(raw: np.ndarray, ds, apply_modality_lut, apply_voi_lut) -> np.ndarray:
    """Modality LUT (slope/intercept), then the first window or VOI LUT, else min-max."""
    values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
    window = _first_window(ds)
    if window is not None:
        center, width = window
        function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper()
        return _apply_window(values, center, width, function)
    if "VOILUTSequence" in ds:
        lut_item = ds.VOILUTSequence[0]
        lut_bits = int(lut_item.LUTDescriptor[2])
        mapped = np.asarray(apply_voi_lut(values, ds, prefer_lut=True), dtype=np.float64)
        return np.clip(mapped / float(2 ** lut_bits - 1), 0.0, 1.0).astype(np.float32)
    return _min_max(values)


def _first_window(ds) -> tuple[float, float] | None:
    """(center, width) of the first VOI window, or None when absent or unusable (width < 1)."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None

    def first(value) -> float:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0]
        return float(value)

    try:
        center, width = first(ds.WindowCenter), first(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    if not (math.isfinite(center) and math.isfinite(width)) or width < 1:
        return None
    return center, width


def _apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing, mapped straight to [0, 1]."""
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "LINEAR_EXACT":
        out = (values - (center - width / 2.0)) / width
    else:  # LINEAR (the default)
        out = ((values - (center - 0.5)) / (width - 1.0) + 0.5) if width > 1 else (values > center - 0.5) * 1.0
    return np.clip(out, 0.0, 1.0).astype(np.float32)
