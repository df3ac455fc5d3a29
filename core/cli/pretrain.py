"""`medssl pretrain METHOD FOLDER --out RUN_DIR [...]`.

One sub-command per registered method (``core.pretrain.list_methods()``): the shared trainer options are
added here, the method adds its own (``PretrainMethod.add_arguments``). Under
``torchrun --nproc-per-node N`` the same command trains with DistributedDataParallel; only rank 0 shows
progress and writes files.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from core.pretrain import get_method, list_methods

EXAMPLES = """examples:
  medssl pretrain {name} ~/data/busi --out runs/{name}-busi
  medssl pretrain {name} ~/data/busi --out runs/{name}-atto --backbone convnext_atto --image-size 128 --epochs 40
  medssl pretrain {name} ~/data/busi --out runs/{name}-busi          # again: continues where it stopped
  medssl pretrain {name} ~/data/busi --out runs/b --init-weights runs/a/encoder.safetensors
  torchrun --nproc-per-node 4 -m core.cli pretrain {name} ~/data/busi --out runs/{name}-ddp --batch-size 256
"""


def _add_trainer_arguments(p: argparse.ArgumentParser) -> None:
    from core.pretrain.config import TrainConfig

    d = TrainConfig()
    p.add_argument("folder", type=Path, help="folder of unlabeled images (scanned recursively; labels ignored)")
    p.add_argument("--out", type=Path, default=None, metavar="RUN_DIR",
                   help="run folder for checkpoints and logs (required unless --resume names one)")
    g = p.add_argument_group("model and data")
    g.add_argument("--backbone", default=d.backbone,
                   help="timm ConvNeXt / ConvNeXt-V2 name, e.g. convnext_atto, convnext_tiny, convnextv2_nano "
                        "(default %(default)s)")
    g.add_argument("--tiny", action="store_true",
                   help="test-size backbone (a few thousand parameters, core.models.backbones.TINY_CONVNEXT): smoke tests only")
    g.add_argument("--image-size", type=int, default=d.image_size,
                   help="images are resized to this square size, a multiple of 32 (default %(default)s)")
    g.add_argument("--no-hflip", dest="hflip", action="store_false", help="no random horizontal flips")
    g.add_argument("--cache-mb", type=float, default=d.cache_mb,
                   help="keep resized images in memory up to this size (default %(default)s MB)")
    g.add_argument("--workers", type=int, default=d.num_workers, help="data loader processes (default %(default)s)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs, help="default %(default)s")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="images per step over all processes (default %(default)s)")
    g.add_argument("--accum-steps", type=int, default=d.accum_steps,
                   help="gradient accumulation: micro-batches per optimizer step (default %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate (default %(default)s)")
    g.add_argument("--min-lr", type=float, default=d.min_lr, help="final learning rate (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="default %(default)s")
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs,
                   help="linear warm-up, then cosine decay per iteration (default %(default)s)")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip,
                   help="clip the gradient L2 norm; 0 = off (default %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="default %(default)s")
    g = p.add_argument_group("run")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=d.precision,
                   help="autocast: auto = bf16 where the hardware has it natively (CUDA 8.0+, AMX/AVX512-BF16 "
                        "CPUs), fp16 on older GPUs, else fp32 (default %(default)s)")
    g.add_argument("--resume", type=Path, default=None, metavar="CKPT",
                   help="continue a run from its checkpoint (weights, optimizer, schedule, RNG); the settings "
                        "must match. Rerunning the same command with the same --out also continues.")
    g.add_argument("--init-weights", type=Path, default=None, metavar="CKPT",
                   help="start a new run with these encoder weights only (encoder.safetensors, a run or "
                        "checkpoint folder, or a timm weights file)")
    g.add_argument("--checkpoint-epochs", type=int, default=d.checkpoint_epochs,
                   help="save a checkpoint every N epochs (default %(default)s)")
    g.add_argument("--checkpoint-steps", type=int, default=d.checkpoint_steps,
                   help="also save every N optimizer steps; 0 = off (default %(default)s)")
    g.add_argument("--max-steps", type=int, default=None,
                   help="stop (with a checkpoint) after this many optimizer steps in total; resume later")
    g.add_argument("--json", action="store_true", help="print the result as JSON")


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain", help="self-supervised pretraining of a ConvNeXt encoder on unlabeled images",
        description="Pretrain an encoder on your own unlabeled images. Writes RUN_DIR/checkpoint-last/ "
                    "(model.safetensors, config.json, optimizer.pt), RUN_DIR/encoder.safetensors (timm key "
                    "names, for fine-tuning with --init-weights) and RUN_DIR/log.jsonl (one line per epoch).")
    sub = p.add_subparsers(dest="method", metavar="METHOD")
    for name in list_methods():
        method = get_method(name)
        mp = sub.add_parser(name, help=method.help, description=method.description,
                            epilog=EXAMPLES.format(name=name), formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_trainer_arguments(mp)
        method.add_arguments(mp)
        mp.set_defaults(handler=_pretrain, pretrain_method=name)
    p.set_defaults(handler=lambda args: p.print_help() or 2)


def config_from_args(args: argparse.Namespace):
    """TrainConfig from parsed `medssl pretrain METHOD` arguments."""
    from core.models.backbones import TINY_CONVNEXT
    from core.pretrain.config import TrainConfig

    import timm

    if not timm.is_model(args.backbone) or not args.backbone.startswith(("convnext", "convnextv2")):
        raise ValueError(f"--backbone {args.backbone!r} is not a timm ConvNeXt; choose one of: "
                         + ", ".join(timm.list_models("convnext*")))
    method = get_method(args.pretrain_method)
    options = {k: getattr(args, k) for k in method.default_options() if hasattr(args, k)}
    return TrainConfig(
        method=args.pretrain_method, data=str(args.folder), out=str(args.out) if args.out else "",
        backbone=args.backbone,
        timm_kwargs={k: list(v) for k, v in TINY_CONVNEXT.items()} if args.tiny else {},
        image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size,
        accum_steps=args.accum_steps, lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, grad_clip=args.grad_clip, seed=args.seed, hflip=args.hflip,
        options=options, device=args.device, precision=args.precision, num_workers=args.workers,
        cache_mb=args.cache_mb, checkpoint_epochs=args.checkpoint_epochs,
        checkpoint_steps=args.checkpoint_steps, max_steps=args.max_steps,
        init_weights=str(args.init_weights) if args.init_weights else None)


def _pretrain(args: argparse.Namespace) -> int:
    from core.cli import run_with_progress
    from core.pretrain.trainer import make_job

    if args.resume and args.init_weights:
        raise ValueError("--resume continues a run (everything restored); --init-weights starts a new one "
                         "from encoder weights: give one of them")
    if not args.folder.is_dir():
        raise FileNotFoundError(f"{args.folder}: not a folder")
    if args.out is None and args.resume is None:
        raise ValueError("give --out RUN_DIR (or --resume CKPT to continue a run)")
    config = config_from_args(args)
    if not config.out:
        from core.train.checkpoint import resolve_pretrain_checkpoint
        config.out = str(resolve_pretrain_checkpoint(args.resume).parent)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    job = make_job(config, resume=args.resume if args.resume else "auto",
                   state_dir=config.out if main_rank else None)
    result = run_with_progress(job, quiet=not main_rank)
    if not main_rank:
        return 0
    losses = result.pop("step_losses")
    if args.json:
        result["first_step_loss"] = losses[0][1] if losses else None
        result["last_step_loss"] = losses[-1][1] if losses else None
        print(json.dumps(result, default=str))
    else:
        logs = result.get("epoch_logs") or []
        if logs:
            print(f"epoch {logs[0]['epoch']}: loss {logs[0].get('loss', float('nan')):.4f} ... "
                  f"epoch {logs[-1]['epoch']}: loss {logs[-1].get('loss', float('nan')):.4f}")
        print(f"run folder: {result['run_dir']}\nencoder for fine-tuning: {result['encoder']}")
    return 0
