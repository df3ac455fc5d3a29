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
import sys
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
    from core.pretrain.config import TRAIN_OPTIONS as T

    def add(group, name: str, *flags: str, **overrides) -> None:
        T.add_argument(group, name, *flags, show_default=True, **overrides)

    p.add_argument("folder", type=Path, help="folder of unlabeled images (scanned recursively; labels ignored)")
    p.add_argument("--out", type=Path, default=None, metavar="RUN_DIR",
                   help="run folder for checkpoints and logs (required unless --resume names one or --project "
                        "gives its runs/pretrain-ID-NAME)")
    p.add_argument("--project", type=Path, default=None, metavar="STORE.db",
                   help="record the run in this project (the app's runs browser and fine-tuning dialog list it)")
    p.add_argument("--name", default=None, help="run name in the project (default: the method)")
    g = p.add_argument_group("model and data")
    add(g, "backbone")
    g.add_argument("--tiny", action="store_true",
                   help="test-size backbone (a few thousand parameters, core.models.backbones.TINY_CONVNEXT): smoke tests only")
    add(g, "image_size")
    g.add_argument("--no-hflip", dest="hflip", action="store_false", help="no random horizontal flips")
    add(g, "cache_mb")
    add(g, "num_workers", "--workers")
    g = p.add_argument_group("optimisation")
    for name in ("epochs", "batch_size", "accum_steps", "lr", "min_lr", "weight_decay", "warmup_epochs",
                 "grad_clip", "seed"):
        add(g, name)
    g = p.add_argument_group("run")
    T.add_argument(g, "device")
    add(g, "precision")
    g.add_argument("--resume", type=Path, default=None, metavar="CKPT",
                   help="continue a run from its checkpoint (weights, optimizer, schedule, RNG); the settings "
                        "must match. Rerunning the same command with the same --out also continues.")
    add(g, "init")
    g.add_argument("--init-weights", type=Path, default=None, metavar="CKPT",
                   help="start a new run with these encoder weights only (encoder.safetensors, a run or "
                        "checkpoint folder, or a timm weights file); with --init imagenet: the ImageNet weights "
                        "file (default: found as fine-tuning finds it)")
    add(g, "checkpoint_epochs")
    add(g, "checkpoint_steps")
    T.add_argument(g, "max_steps")
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

    families = ("convnext", "efficientnet_lite") if args.pretrain_method == "mae" else ("convnext",)
    if not timm.is_model(args.backbone) or not args.backbone.startswith(families):
        raise ValueError(f"--backbone {args.backbone!r} is not a timm {' or '.join(families)}; choose one of: "
                         + ", ".join(m for f in families for m in timm.list_models(f + "*")))
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
        init="pretrained" if args.init == "random" and args.init_weights else args.init,
        init_weights=str(args.init_weights) if args.init_weights else None)


def _pretrain(args: argparse.Namespace) -> int:
    from core.cli import run_with_progress
    from core.pretrain.trainer import make_job

    if args.resume and (args.init_weights or args.init != "random"):
        raise ValueError("--resume continues a run (everything restored); --init/--init-weights start a new one "
                         "from encoder weights: give one of them")
    if not args.folder.is_dir():
        raise FileNotFoundError(f"{args.folder}: not a folder")
    if args.out is None and args.resume is None and (args.project is None or _world_size() > 1):
        raise ValueError("give --out RUN_DIR (or --resume CKPT to continue a run)")
    config = config_from_args(args)
    if not config.out and args.resume is not None:
        from core.train.checkpoint import resolve_pretrain_checkpoint
        config.out = str(resolve_pretrain_checkpoint(args.resume).parent)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    store = None
    try:
        if args.project and main_rank:
            store, run = _project_run(args, config)
        job = make_job(config, resume=args.resume if args.resume else "auto",
                       state_dir=config.out if main_rank else None)
        if store is not None:
            from core.project.runs import RunRecorder

            RunRecorder(store, run).attach(job)
        result = run_with_progress(job, quiet=not main_rank)
    finally:
        if store is not None:
            store.close()
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


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _project_run(args: argparse.Namespace, config):
    """The project's run for this folder (running the same command again continues it), or a new one; the
    run folder defaults to the project's runs/pretrain-ID-NAME."""
    from core.project import runs
    from core.project.store import ProjectStore

    store = ProjectStore(args.project, create=False)
    run = runs.find_run(store, "pretrain", config.out) if config.out else None
    if run is None:
        run = runs.create_run(store, "pretrain", args.name or config.method, config.to_dict(),
                              run_dir=Path(config.out).absolute() if config.out else None)
        config.out = run.run_dir
    print(f"run #{run.id} in {args.project}: {run.run_dir}", file=sys.stderr)
    return store, run
