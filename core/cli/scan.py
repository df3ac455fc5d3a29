"""`medssl scan FOLDER`: summary of what the image library sees in a folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.data.imageio import DEFAULT_MAX_PIXELS
from core.jobs import Job


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "scan", help="list images, classes, masks, cases and unreadable files of a folder",
        description="Scan an image folder: class sub-folders become labels, manifest.csv "
                    "(path,label,case_id,modality) overrides them, <name>_mask*.png are lesion masks. "
                    "Every unreadable file is reported with its reason; the rest is scanned.",
        epilog="example: medssl scan ~/data/busi --store")
    p.add_argument("folder", type=Path, help="image folder")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images with more pixels than this (decompression-bomb guard; default %(default)s)")
    p.add_argument("--store", action="store_true",
                   help="also import the scan into the project store FOLDER/.medssl/project.db")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_scan)


def _scan(args: argparse.Namespace) -> int:
    from core.cli import run_with_progress
    from core.data.library import scan_folder

    if not args.folder.is_dir():
        raise FileNotFoundError(f"{args.folder}: not a folder")
    job = Job(f"scan {args.folder.name}", lambda ctx: scan_folder(args.folder, ctx=ctx, max_pixels=args.max_pixels))
    result = run_with_progress(job)
    summary = result.summary()
    if args.store:
        from core.paths import default_store_path
        from core.project.store import ProjectStore

        with ProjectStore(default_store_path(args.folder)) as store:
            summary["store"] = {"path": str(default_store_path(args.folder)), **store.import_scan(result)}
    if args.json:
        summary["errors"] = [{"path": str(e.path), "reason": e.reason} for e in result.errors]
        print(json.dumps(summary, indent=1, default=str))
        return 0
    print(format_summary(summary))
    for error in result.errors:
        print(f"  error: {error.path}: {error.reason}")
    return 0


def format_summary(summary: dict) -> str:
    rows = [("images", summary["n_images"])]
    rows += [(f"  class {name}", count) for name, count in summary["classes"].items()]
    rows += [("  unlabeled", summary["n_unlabeled"]), ("with masks", summary["n_with_masks"]),
             ("cases", summary["n_cases"])]
    rows += [(f"  modality {name}", count) for name, count in summary["modalities"].items()]
    rows += [("errors", summary["n_errors"]), ("duplicate files", summary["n_duplicate_files"])]
    if "store" in summary:
        rows += [("store", summary["store"]["path"])]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    for group in summary["label_conflicts"]:
        lines.append(f"  label conflict (identical files, the project keeps the first): {' = '.join(group)}")
    return "\n".join(lines)
