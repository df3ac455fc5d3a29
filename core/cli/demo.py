"""`medssl demo-data OUT`: the procedural phantom data set (no download)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from core.cli import run_with_progress
from core.cli.args import positive_int
from core.data.demo import (CLASSES, DEFAULT_CASES, DEFAULT_IMAGES_PER_CASE, MANIFEST_NAME, MODALITIES,
                            check_output_dir, generate_demo)
from core.jobs import Job


def register_cli(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo-data", help="write a small synthetic breast-ultrasound data set (no download)",
        description="Generate procedural breast-ultrasound phantoms with exact lesion masks: classes "
                    "normal (tissue only), benign (smooth hypoechoic oval, posterior enhancement) and "
                    "malignant (irregular spiculated mass, posterior shadow). Every case has "
                    "--per-case views in each of two modalities (US-A standard B-mode, US-B compounded "
                    "/ lower frequency). Writes OUT/<class>/<case>_<modality>_<view>.png, "
                    "..._mask.png (0/255) and OUT/manifest.csv (path,label,case_id,modality). "
                    "Deterministic from --seed. OUT must be new, empty or a previous demo folder.",
        epilog="example: medssl demo-data ~/medssl-demo   (96 images of 128x128 in about a second)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", metavar="OUT", type=Path, help="output folder (created if missing)")
    p.add_argument("--cases", type=positive_int, default=DEFAULT_CASES, help="cases per class")
    p.add_argument("--per-case", type=positive_int, default=DEFAULT_IMAGES_PER_CASE,
                   help="images (views) per case and modality")
    p.add_argument("--size", type=positive_int, default=128, help="image width and height in px")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.set_defaults(handler=_demo_data)
    return p


def _demo_data(args: argparse.Namespace) -> int:
    check_output_dir(args.out)  # refuse early, with a clean message
    t0 = time.perf_counter()
    job = Job(f"demo-data {args.out.name}",
              lambda ctx: generate_demo(args.out, n_cases=args.cases, images_per_case=args.per_case,
                                        size=args.size, seed=args.seed, ctx=ctx))
    out = run_with_progress(job)
    per_class = args.cases * len(MODALITIES) * args.per_case
    print(f"wrote {per_class * len(CLASSES)} images of {args.size}x{args.size} with masks to {out} "
          f"in {time.perf_counter() - t0:.1f} s")
    print(f"  classes: {', '.join(f'{c} {per_class}' for c in CLASSES)}")
    print(f"  {args.cases * len(CLASSES)} cases, modalities {' and '.join(MODALITIES)}, "
          f"{args.per_case} view(s) each; seed {args.seed}")
    print(f"  manifest: {out / MANIFEST_NAME}")
    return 0
