"""`medssl entropy FOLDER --out DIR`: per-image entropy heatmaps of an image folder.

For every image (``core.data.library.scan_folder``; masks are not images) it writes, mirroring the folder
layout under DIR:

* ``<name>_entropy.png`` dense local-entropy heatmap in a colour map, same size as the image; colour
  scale fixed from 0 to log2(heatmap bins) bits so heatmaps of different images are comparable;
* ``<name>_entropy.npy`` the raw dense map, float32 [H, W], bits;
* ``<name>_cells.npy`` per-cell entropy, float32 [h, w], bits (the grid the masked autoencoder uses);

and ``DIR/errors.csv`` (path,reason; header only when every file worked). An unreadable file is logged
and listed there; the other files go on. Torch is imported only when the command runs (keeps
``medssl --help`` fast).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable

# Same values as core.analysis.entropy (kept here so building the parser does not import torch; a test checks).
DEFAULT_CELL = 32
DEFAULT_BINS = 64
DEFAULT_HEATMAP_BINS = 32
DEFAULT_RADIUS = 5
COLORMAPS = ("inferno", "magma", "viridis", "grey")
_FALLBACK_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "entropy", help="write per-image local-entropy heatmaps (PNG + .npy) of an image folder",
        description="Compute grey-level entropy maps of every image in FOLDER: a dense local-entropy "
                    "heatmap (square window of side 2*radius+1, clipped at the border) as a colour PNG "
                    "and a raw .npy, plus the per-cell entropy grid (.npy) used by entropy-guided "
                    "masking. Images are read as grey in [0, 1]; the histogram bins span [0, 1]. "
                    "Entropy is in bits (Shannon, or Renyi of order --alpha). Unreadable files are "
                    "listed in DIR/errors.csv and skipped.",
        epilog="example: medssl entropy ~/data/busi --out ~/busi-entropy --radius 5 --colormap magma")
    p.add_argument("folder", type=Path, help="image folder (scanned recursively; mask files are skipped)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created; mirrors FOLDER's layout)")
    p.add_argument("--cell", type=int, default=DEFAULT_CELL,
                   help=f"cell size in pixels of the per-cell grid = encoder's total stride "
                        f"(default {DEFAULT_CELL}, ConvNeXt)")
    p.add_argument("--edge", choices=("crop", "pad"), default="crop",
                   help="cell grid when the size is not a multiple of --cell: 'crop' drops the bottom/right "
                        "remainder like ConvNeXt (default), 'pad' adds partial cells")
    p.add_argument("--bins", type=int, default=DEFAULT_BINS,
                   help=f"histogram bins over [0, 1] for the per-cell grid (default {DEFAULT_BINS})")
    p.add_argument("--heatmap-bins", type=int, default=DEFAULT_HEATMAP_BINS,
                   help=f"histogram bins over [0, 1] for the heatmap (default {DEFAULT_HEATMAP_BINS}: with "
                        f"an 11x11 window, more bins make noise in dark shadows look as busy as tissue)")
    p.add_argument("--radius", type=int, default=DEFAULT_RADIUS,
                   help=f"heatmap window radius in pixels; window side 2r+1 (default {DEFAULT_RADIUS})")
    p.add_argument("--alpha", type=float, default=1.0,
                   help="Renyi entropy order; 1 = Shannon (default), 0 = log2 of occupied bins, inf = min-entropy")
    p.add_argument("--colormap", choices=COLORMAPS, default="inferno", help="PNG colour map (default inferno)")
    p.add_argument("--device", default="auto",
                   help="torch device: auto (GPU when there is one), cpu, cuda, cuda:1, ... (default auto)")
    p.set_defaults(handler=_entropy_command)


def _entropy_command(args: argparse.Namespace) -> int:
    from core.cli import run_with_progress
    from core.jobs import Job

    if not args.folder.is_dir():
        raise FileNotFoundError(f"{args.folder}: not a folder")
    fn = entropy_folder_job(args.folder, args.out, cell=args.cell, bins=args.bins, radius=args.radius,
                            alpha=args.alpha, colormap=args.colormap, edge=args.edge, device=args.device,
                            heatmap_bins=args.heatmap_bins)
    result = run_with_progress(Job(f"entropy {args.folder.name}", fn))
    print(f"{result['n_written']} of {result['n_images']} images written to {result['out']}")
    if result["n_errors"]:
        print(f"{result['n_errors']} files failed; see {result['errors_csv']}")
    return 0 if result["n_written"] or not result["n_images"] else 1


# -- the job ---------------------------------------------------------------------------------------------
def entropy_folder_job(folder: str | Path, out: str | Path, *, cell: int = DEFAULT_CELL, bins: int = DEFAULT_BINS,
                       radius: int = DEFAULT_RADIUS, alpha: float = 1.0, colormap: str = "inferno",
                       edge: str = "crop", device: str = "auto",
                       heatmap_bins: int = DEFAULT_HEATMAP_BINS) -> Callable[[Any], dict]:
    """The work of ``medssl entropy`` as a job function ``fn(ctx) -> summary dict``.

    Summary: ``n_images``, ``n_written``, ``n_errors`` (scan + read/compute errors), ``out``,
    ``errors_csv``, ``errors`` (list of (path, reason)). Arguments are checked here, before any work.
    """
    folder, out = Path(folder), Path(out)
    if cell < 1 or radius < 0 or not 2 <= bins <= 65536 or not 2 <= heatmap_bins <= 65536 or not alpha >= 0:
        raise ValueError(f"need cell >= 1, radius >= 0, bins and heatmap bins in [2, 65536], alpha >= 0 (got "
                         f"cell={cell}, radius={radius}, bins={bins}, heatmap_bins={heatmap_bins}, alpha={alpha})")
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colour map {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    if edge not in ("crop", "pad"):
        raise ValueError(f"edge must be 'crop' or 'pad', got {edge!r}")
    if out.resolve() == folder.resolve():
        raise ValueError("the output folder must not be the image folder itself (use a sub-folder or another one)")
    if device != "auto":
        import torch

        try:
            torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"unknown torch device {device!r}: {exc}") from None

    def run(ctx) -> dict:
        import numpy as np
        import torch
        from PIL import Image

        from core.analysis.entropy import apply_colormap, cell_entropy, local_entropy_map

        dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        read_grey, read_error = _image_reader()
        items, errors = _find_images(folder, out, ctx)
        out.mkdir(parents=True, exist_ok=True)
        total = len(items)
        vmax = math.log2(heatmap_bins)
        if ctx is not None:
            for path, reason in errors:
                ctx.log(f"error: {path}: {reason}")
            ctx.log(f"{total} images in {folder}; writing heatmaps to {out} (device {dev})")
        # Outputs are named after the stem; keep the extension where two images share one (a.png, a.jpg).
        stems = Counter(Path(rel).with_suffix("").as_posix().lower() for _, rel in items)
        written = 0
        for i, (path, rel) in enumerate(items):
            if ctx is not None:
                ctx.check_cancelled()
            try:
                image = read_grey(path)
                x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(dev)
                dense = local_entropy_map(x, radius=radius, bins=heatmap_bins, alpha=alpha)
                cells = cell_entropy(x, cell=cell, bins=bins, alpha=alpha, edge=edge).cpu().numpy()
                stem = Path(rel).with_suffix("")
                stem = out / (rel if stems[stem.as_posix().lower()] > 1 else stem)
                stem.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(apply_colormap(dense, 0.0, vmax, colormap)).save(f"{stem}_entropy.png",
                                                                                  compress_level=1)
                np.save(f"{stem}_entropy.npy", dense.astype(np.float32))
                np.save(f"{stem}_cells.npy", cells.astype(np.float32))
                written += 1
            except Exception as exc:  # per-file error: report, keep going (JobCancelled is raised above)
                reason = getattr(exc, "reason", None) if isinstance(exc, read_error) else None
                reason = reason or f"{type(exc).__name__}: {exc}"
                errors.append((str(path), str(reason)))
                if ctx is not None:
                    ctx.log(f"error: {path}: {reason}")
            if ctx is not None:
                ctx.progress(i + 1, total, message=rel, errors=len(errors))
        errors_csv = out / "errors.csv"
        with open(errors_csv, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "reason"])
            writer.writerows(errors)
        return {"n_images": total, "n_written": written, "n_errors": len(errors), "out": str(out),
                "errors_csv": str(errors_csv), "errors": errors}

    return run


def _find_images(folder: Path, out: Path, ctx) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """(path, rel_path) of every image under ``folder`` (not under ``out``) and the scan's errors."""
    out_resolved = out.resolve()

    def inside_out(path: Path) -> bool:
        return out_resolved == path.resolve() or out_resolved in path.resolve().parents

    try:
        from core.data.library import scan_folder
    except ImportError:
        scan_folder = None
    if scan_folder is not None:
        result = scan_folder(folder, ctx=ctx)   # its progress shows as the bar's first pass; cancellable
        items = [(Path(r.path), r.rel_path) for r in result.images if not inside_out(Path(r.path))]
        errors = [(str(e.path), str(e.reason)) for e in result.errors if not inside_out(Path(e.path))]
        return items, errors
    # Fallback while core.data.library is not available: every image file that is not a mask.
    try:
        from core.data.imageio import IMAGE_EXTENSIONS, is_mask_file
    except ImportError:
        IMAGE_EXTENSIONS = _FALLBACK_EXTENSIONS

        def is_mask_file(name: str) -> bool:
            return "_mask" in Path(name).stem.lower()
    exts = {e.lower() for e in IMAGE_EXTENSIONS}
    items = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not inside_out(Path(dirpath, d)))
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if path.suffix.lower() in exts and not is_mask_file(name):
                items.append((path, path.relative_to(folder).as_posix()))
    return items, []


def _image_reader():
    """(read_grey, its error class): core.data.imageio when present, else a minimal Pillow reader."""
    try:
        from core.data.imageio import ImageReadError, read_grey
        return read_grey, ImageReadError
    except ImportError:
        return _read_grey_pillow, OSError


def _read_grey_pillow(path: Path):
    """Stand-in for core.data.imageio.read_grey (PNG/JPEG/TIFF only): float32 [H, W] in [0, 1]."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im, dtype=np.float32) / 65535.0
        else:
            a = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    return np.clip(a, 0.0, 1.0)
