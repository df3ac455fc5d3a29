"""`medssl reconstruct CKPT IMAGE...`: what a masked autoencoder reconstructs, one panel PNG per image."""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path


def register_cli(subparsers) -> None:
    r = subparsers.add_parser(
        "reconstruct", help="show what a masked autoencoder reconstructs (panel PNG per image)",
        description="For each image: original | cell entropy heatmap | hidden cells | reconstruction | "
                    "reconstruction pasted into the hidden cells, as one PNG. Masks follow the checkpoint's "
                    "entropy sampler settings.",
        epilog="An image that cannot be read is named with the reason and skipped; the others are written. "
               "Exit status 0 when every panel was written, 1 when any image failed. "
               "example: medssl reconstruct runs/mae-busi ~/data/busi/benign/*.png --out panels")
    r.add_argument("checkpoint", type=Path, metavar="CKPT", help="MAE run folder or checkpoint folder")
    r.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    r.add_argument("--out", type=Path, default=None,
                   help="folder for the panels (default: RUN_DIR/reconstructions)")
    r.add_argument("--mask-ratio", type=float, default=None, help="override the checkpoint's mask ratio")
    r.add_argument("--seed", type=int, default=0,
                   help="mask seed, combined with each file name (default %(default)s)")
    r.add_argument("--device", default="cpu", help="default %(default)s")
    r.set_defaults(handler=_reconstruct)


def _reconstruct(args: argparse.Namespace) -> int:
    import os

    from core.analysis.reconstruct import load_mae, reconstruct, save_panel
    from core.data.imageio import ImageReadError
    from core.data.walk import printable_path
    from core.paths import output_file_name
    from core.train.checkpoint import resolve_pretrain_checkpoint

    model, config = load_mae(args.checkpoint, args.device)
    out = args.out or resolve_pretrain_checkpoint(args.checkpoint).parent / "reconstructions"
    used: set[str] = set()
    failed = 0
    for i, path in enumerate(args.images):   # one at a time: any number of images in bounded memory
        seed = args.seed + zlib.crc32(os.fsencode(path.name)) % 1_000_003   # same image, same mask, any order
        stem = path.stem if path.stem not in used else f"{path.stem}_{i}"
        used.add(path.stem)
        try:
            if not path.is_file():
                raise FileNotFoundError("no such image")
            rec = reconstruct(model, config, [path], mask_ratio=args.mask_ratio, seed=seed)[0]
            dest = save_panel(rec, out / output_file_name(stem, "_reconstruct.png"))
        except (ImageReadError, OSError, ValueError) as exc:   # this image only: name it, go on
            failed += 1
            reason = exc.reason if isinstance(exc, ImageReadError) else (getattr(exc, "strerror", None) or exc)
            print(f"error: {printable_path(path)}: {reason}")
            continue
        print(f"{printable_path(dest)}  masked loss {rec.masked_loss:.4f}")
    if failed:
        print(f"{failed} of {len(args.images)} images could not be reconstructed")
    return 1 if failed else 0
