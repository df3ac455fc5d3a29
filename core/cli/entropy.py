"""`medssl entropy FOLDER --out DIR`: per-image entropy heatmaps of an image folder.

Argparse and printing only; the work is :func:`core.analysis.entropy_maps.entropy_folder_job` (what it
writes is described there), the defaults are :mod:`core.analysis.entropy`'s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from core.analysis.entropy import COLORMAPS, DEFAULT_BINS, DEFAULT_CELL, DEFAULT_HEATMAP_BINS, DEFAULT_RADIUS


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
                   help=f"heatmap window radius in pixels; window side 2r+1 (default {DEFAULT_RADIUS}); a radius "
                        f"beyond an image's size is clamped to it (the window then covers the whole image)")
    p.add_argument("--alpha", type=float, default=1.0,
                   help="Renyi entropy order; 1 = Shannon (default), 0 = log2 of occupied bins, inf = min-entropy")
    p.add_argument("--colormap", choices=COLORMAPS, default="inferno", help="PNG colour map (default inferno)")
    p.add_argument("--device", default="auto",
                   help="torch device: auto (GPU when there is one), cpu, cuda, cuda:1, ... (default auto)")
    p.set_defaults(handler=_entropy_command)


def _entropy_command(args: argparse.Namespace) -> int:
    from core.analysis.entropy_maps import entropy_folder_job
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
