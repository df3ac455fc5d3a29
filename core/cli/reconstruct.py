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
        epilog="example: medssl reconstruct runs/mae-busi ~/data/busi/benign/*.png --out panels")
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
    from core.analysis.reconstruct import load_mae, reconstruct, save_panel
    from core.train.checkpoint import resolve_pretrain_checkpoint

    model, config = load_mae(args.checkpoint, args.device)
    out = args.out or resolve_pretrain_checkpoint(args.checkpoint).parent / "reconstructions"
    for path in args.images:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image")
    used: set[str] = set()
    for i, path in enumerate(args.images):   # one at a time: any number of images in bounded memory
        seed = args.seed + zlib.crc32(path.name.encode()) % 1_000_003   # same image, same mask, any order
        rec = reconstruct(model, config, [path], mask_ratio=args.mask_ratio, seed=seed)[0]
        name = f"{path.stem}_reconstruct.png" if path.stem not in used else f"{path.stem}_{i}_reconstruct.png"
        used.add(path.stem)
        dest = save_panel(rec, out / name)
        print(f"{dest}  masked loss {rec.masked_loss:.4f}")
    return 0
