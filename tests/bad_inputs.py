"""A corpus of bad (and awkward but good) inputs, generated on the fly: every path of the engine must
handle each one (a clear per-file error naming the file, or a result), and the rest must proceed."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.dicom_files import write_dicom

FORMULA_NAME = "=cmd|' calc'!A0.png"
NOT_UTF8_NAME = b"caf\xe9.png"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels over a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def _encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def make_corpus(root: Path, label: str = "c") -> tuple[set[str], set[str]]:
    """Write the corpus under ``root`` (one class folder ``label``); returns (names that must be errors, names
    that may be read) — names are the files' printable relative paths."""
    c = root / label
    c.mkdir(parents=True)
    rng = np.random.default_rng(0)
    grey = Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8), "L")
    colour = Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8), "RGB")
    png, jpg = _encoded(grey, "PNG"), _encoded(colour, "JPEG", quality=90)
    bad = {
        "truncated.png": png[: len(png) // 2],
        "truncated.jpg": jpg[: len(jpg) // 2],
        "empty.png": b"",
        "text.png": b"this is plain text, not an image\n",
        "page.jpg": b"<!DOCTYPE html><html><body>not a JPEG</body></html>",
        "huge_header.png": png_header_claiming(200_000, 200_000),
    }
    rgba = np.zeros((48, 40, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = np.asarray(colour), 128
    exif = grey.getexif()
    exif[0x0112] = 6
    good = {
        "grey16.png": _encoded(Image.fromarray((np.arange(48 * 40).reshape(48, 40) * 30).astype(np.uint16)), "PNG"),
        "rgba.png": _encoded(Image.fromarray(rgba, "RGBA"), "PNG"),
        "palette.png": _encoded(colour.convert("P", palette=Image.Palette.ADAPTIVE, colors=8), "PNG"),
        "cmyk.jpg": _encoded(colour.convert("CMYK"), "JPEG"),
        "rotated.jpg": _encoded(grey, "JPEG", exif=exif),
        "one_pixel.png": _encoded(Image.new("L", (1, 1), 128), "PNG"),
        "ünïcødé 画像.png": png,
        "  lots   of   spaces  .png": png,
        ("long_" + "x" * 230 + ".png"): png,
        FORMULA_NAME: png,
        "plain.png": png,
    }
    for name, data in {**bad, **good}.items():
        (c / name).write_bytes(data)
    write_dicom(c / "no_pixels.dcm", None, PatientID="case-1", Modality="US")
    write_dicom(c / "odd_photometric.dcm", np.arange(64, dtype=np.uint8).reshape(8, 8), photometric="YBR_NONSENSE",
                PatientID="case-1", Modality="US")
    bad_names = {f"{label}/{n}" for n in bad} | {f"{label}/no_pixels.dcm"}
    maybe = {f"{label}/{n}" for n in good} | {f"{label}/odd_photometric.dcm"}
    with open(os.path.join(os.fsencode(c), NOT_UTF8_NAME), "wb") as fh:
        fh.write(png)
    bad_names.add(f"{label}/caf\\xe9.png")
    os.symlink("loop.png", c / "loop.png")                  # a link to itself
    bad_names.add(f"{label}/loop.png")
    (c / "folder.png").mkdir()                               # a folder named like an image
    (c / "folder.png" / "inside.png").write_bytes(png)
    maybe.add(f"{label}/folder.png/inside.png")
    (root / "empty_folder").mkdir(exist_ok=True)
    return bad_names, maybe


def check_handled(path_name: str, ok: set[str], errors: dict[str, str], bad: set[str], maybe: set[str]) -> None:
    """Every bad input has an error with a reason, every maybe-good one a result or an error, no bad input a
    result; prints the path's figure (tried / handled) and the names its errors gave."""
    tried = bad | maybe
    handled = {n for n in bad if n in errors and errors[n]} | {n for n in maybe if n in ok or errors.get(n)}
    print(f"{path_name}: {len(tried)} bad inputs tried, {len(handled)} handled; errors named: "
          f"{sorted(errors)}")
    assert handled == tried, sorted(tried - handled)
    assert not ok & bad


def rel_to(root, path) -> str:
    """``path`` relative to ``root`` as the corpus names it (a printable path: ``\\xNN`` for odd bytes)."""
    return str(path).split(str(root) + "/", 1)[-1]


def good_images(folder: Path, n: int, *, seed: int = 0, stem: str = "good") -> list[str]:
    """``n`` plain grey PNGs (48 x 40) in ``folder``, so a path that needs a batch of images gets one; their
    names."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        name = f"{stem}_{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8), "L").save(folder / name)
        names.append(name)
    return names


def make_two_class_corpus(root: Path) -> tuple[set[str], set[str]]:
    """The corpus in two class folders 'a' and 'b' (every bad file in each, six good images beside them), for
    the labelled paths (fine-tune, study); returns (bad, maybe) as :func:`make_corpus`."""
    bad, maybe = set(), set()
    for label, seed in (("a", 1), ("b", 2)):
        b, m = make_corpus(root, label=label)
        bad |= b
        maybe |= m | {f"{label}/{n}" for n in good_images(root / label, 6, seed=seed)}
    return bad, maybe


def tree(folder: Path) -> dict[str, int]:
    """Every entry under ``folder`` (files, links, folders) with its size, to see that nothing was written."""
    return {rel_to(folder, os.fsencode(p).decode("utf-8", "backslashreplace")):
            (p.lstat().st_size if not p.is_dir() or p.is_symlink() else -1) for p in folder.rglob("*")}
