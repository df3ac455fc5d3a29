"""Entropy heatmaps of a whole image folder, as a job (the work behind ``medssl entropy``).

For every image of the folder (:func:`core.data.walk.walk_folder`; masks are not images) it writes,
mirroring the folder layout under OUT:

* ``<name>_entropy.png`` dense local-entropy heatmap in a colour map, same size as the image; colour
  scale fixed from 0 to log2(heatmap bins) bits so heatmaps of different images are comparable;
* ``<name>_entropy.npy`` the raw dense map, float32 [H, W], bits;
* ``<name>_cells.npy`` per-cell entropy, float32 [h, w], bits (the grid the masked autoencoder uses);

and ``OUT/errors.csv`` (path,reason; header only when every file worked). An unreadable file is logged
and listed there; the other files go on. OUT inside the folder is not read back as input.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from core.analysis.entropy import (COLORMAPS, DEFAULT_BINS, DEFAULT_CELL, DEFAULT_HEATMAP_BINS, DEFAULT_RADIUS,
                                   apply_colormap, cell_entropy, local_entropy_map)
from core import csvcells
from core.data.imageio import ImageReadError, read_grey
from core.data.walk import walk_folder

__all__ = ["entropy_folder_job"]


def entropy_folder_job(folder: str | Path, out: str | Path, *, cell: int = DEFAULT_CELL, bins: int = DEFAULT_BINS,
                       radius: int = DEFAULT_RADIUS, alpha: float = 1.0, colormap: str = "inferno",
                       edge: str = "crop", device: str = "auto",
                       heatmap_bins: int = DEFAULT_HEATMAP_BINS) -> Callable[[Any], dict]:
    """The heatmaps of ``folder`` written to ``out``, as a job function ``fn(ctx) -> summary dict``.

    Summary: ``n_images``, ``n_written``, ``n_errors`` (walk + read/compute errors), ``out``,
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
        try:
            torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"unknown torch device {device!r}: {exc}") from None

    def run(ctx) -> dict:
        dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        walk = walk_folder(folder, exclude=[out], ctx=ctx)
        errors = [(str(p.path), p.reason) for p in walk.problems]
        items = list(zip(walk.images, walk.rel_paths))
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
                reason = exc.reason if isinstance(exc, ImageReadError) else f"{type(exc).__name__}: {exc}"
                errors.append((str(path), str(reason)))
                if ctx is not None:
                    ctx.log(f"error: {path}: {reason}")
            if ctx is not None:
                ctx.progress(i + 1, total, message=rel, errors=len(errors))
        errors_csv = out / "errors.csv"
        with open(errors_csv, "w", newline="", encoding="utf-8") as fh:
            writer = csvcells.writer(fh)
            writer.writerow(["path", "reason"])
            writer.writerows(errors)
        return {"n_images": total, "n_written": written, "n_errors": len(errors), "out": str(out),
                "errors_csv": str(errors_csv), "errors": errors}

    return run
