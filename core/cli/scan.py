"""`medssl scan FOLDER`: summary of what the image library sees in a folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.data.duplicates import DEFAULT_MAX_HAMMING, DEFAULT_MIN_SSIM
from core.data.imageio import DEFAULT_MAX_PIXELS
from core.jobs import Job


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "scan", help="list images, classes, masks, cases and unreadable files of a folder",
        description="Scan an image folder: class sub-folders become labels, manifest.csv "
                    "(path,label,case_id,modality) overrides them, <name>_mask*.png are lesion masks. "
                    "Every unreadable file is reported with its reason; the rest is scanned.",
        epilog="example: medssl scan ~/data/busi --store. Exit status: 0 done (unreadable files are listed, the "
               "rest scanned); 1 an error, one line naming the file: a missing folder, a damaged project file, "
               "or a full disk (nothing of the import is stored, the project keeps what it held); 2 a usage error; "
               "130 cancelled")
    p.add_argument("folder", type=Path, help="image folder")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images with more pixels than this (decompression-bomb guard; default %(default)s)")
    p.add_argument("--store", action="store_true",
                   help="also import the scan into the project store FOLDER/.medssl/project.db")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    d = p.add_argument_group("near-duplicates")
    d.add_argument("--duplicates", action="store_true",
                   help="also find near-duplicate groups (perceptual hash, confirmed by SSIM) and the groups whose "
                        "labels disagree; with --store they are saved in the project (nothing is deleted)")
    d.add_argument("--max-hamming", type=int, default=DEFAULT_MAX_HAMMING,
                   help="perceptual hashes (64 bits) differing in at most this many bits are candidates")
    d.add_argument("--min-ssim", type=float, default=DEFAULT_MIN_SSIM,
                   help="a candidate pair counts when the SSIM of its thumbnails is at least this")
    p.set_defaults(handler=_scan)


def _scan(args: argparse.Namespace) -> int:
    from core.cli import run_with_progress
    from core.data.library import scan_folder

    if not args.folder.is_dir():
        raise FileNotFoundError(f"{args.folder}: not a folder")
    job = Job(f"scan {args.folder.name}", lambda ctx: scan_folder(args.folder, ctx=ctx, max_pixels=args.max_pixels))
    result = run_with_progress(job)
    summary = result.summary()
    duplicates = None
    if args.duplicates:
        duplicates = run_with_progress(Job("near-duplicates", lambda ctx: scan_result_duplicates(
            result, max_hamming=args.max_hamming, min_ssim=args.min_ssim, ctx=ctx)))
        summary["near_duplicates"] = duplicates_summary(duplicates)
    if args.store:
        from core.paths import default_store_path
        from core.project.store import ProjectStore

        with ProjectStore(default_store_path(args.folder)) as store:
            summary["store"] = {"path": str(default_store_path(args.folder)), **store.import_scan(result)}
            if duplicates is not None:
                summary["store"]["duplicate_groups"] = store_duplicates(store, duplicates)
    if args.json:
        summary["errors"] = [{"path": str(e.path), "reason": e.reason} for e in result.errors]
        print(json.dumps(summary, indent=1, default=str))
        return 0
    print(format_summary(summary))
    for error in result.errors:
        print(f"  error: {error.path}: {error.reason}")
    if duplicates is not None:
        print(format_duplicates(duplicates))
    return 0


def scan_result_duplicates(result, *, max_hamming: int = DEFAULT_MAX_HAMMING, min_ssim: float = DEFAULT_MIN_SSIM,
                           ctx=None):
    """Near-duplicate groups among a library scan's images (labels from the scan)."""
    from core.data.duplicates import scan_near_duplicates

    return scan_near_duplicates(result.root, [r.rel_path for r in result.images],
                                {r.rel_path: r.label for r in result.images}, max_hamming=max_hamming,
                                min_ssim=min_ssim, ctx=ctx)


def store_duplicates(store, report) -> int:
    """Save a report's groups in the project (by image id; rel paths the store does not know are skipped)."""
    ids = {r.rel_path: r.id for r in store.images()}
    groups = [[ids[m] for m in g.members if m in ids] for g in report.groups]
    groups = [g for g in groups if len(g) > 1]
    store.save_duplicate_groups(groups, {"max_hamming": report.max_hamming, "min_ssim": report.min_ssim})
    return len(groups)


def duplicates_summary(report) -> dict:
    return {"groups": len(report.groups), "images": sum(len(g.members) for g in report.groups),
            "conflicting": len(report.conflicting), "candidates": report.candidates,
            "max_hamming": report.max_hamming, "min_ssim": report.min_ssim,
            "members": [{"members": g.members, "labels": g.labels, "conflicting": g.conflicting}
                        for g in report.groups],
            "errors": [{"path": k, "reason": r} for k, r in report.errors]}


def format_duplicates(report) -> str:
    lines = [f"near-duplicate groups  {len(report.groups)} ({sum(len(g.members) for g in report.groups)} images; "
             f"hash distance <= {report.max_hamming}, SSIM >= {report.min_ssim})",
             f"  with conflicting labels  {len(report.conflicting)}"]
    for g in report.groups:
        tag = "labels disagree: " if g.conflicting else ""
        lines.append(f"  {tag}" + " ~ ".join(f"{m} ({g.labels.get(m) or 'unlabelled'})" for m in g.members))
    for key, reason in report.errors:
        lines.append(f"  not compared: {key}: {reason}")
    return "\n".join(lines)


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
    for group in summary["identical_files"]:
        lines.append(f"  identical files (the project keeps one image, the first): {' = '.join(group)}")
    return "\n".join(lines)
