"""`medssl finetune`: fine-tune a classifier on labelled images (one split or k-fold)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from core.cli import run_with_progress
from core.cli.args import int_list, key_value
from core.train.config import AUGMENT_OPTIONS as A, FINETUNE_OPTIONS as F


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune a classifier (one split or k-fold cross-validation)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Fine-tune a timm backbone as an image classifier on labelled images. Initial weights: "
                    "ImageNet (local file / Hugging Face cache, never downloaded), a pretraining run of this "
                    "project (--init-weights RUN), or random. Splits are stratified and grouped by case. "
                    "Writes RUN/checkpoint-best, checkpoint-last, metrics.json, history.jsonl; with --kfold K, "
                    "RUN/fold0..fold{K-1} and RUN/cv.json. With --project the run is recorded in the project "
                    "(the app's runs browser and ensemble dialog list it). Ctrl-C stops at the next batch; "
                    "--resume continues.")
    p.add_argument("data", nargs="?", help="image folder (class = sub-folder or manifest.csv label)")
    p.add_argument("--project", help="project store (.db) to take images and labels from instead of a folder")
    p.add_argument("--out", help="run folder (with --project, default: the project's runs/finetune-ID-NAME)")
    p.add_argument("--name", default=None, help="run name in the project (default: the --out folder's name)")
    g = p.add_argument_group("model")
    F.add_argument(g, "backbone", default=None,
                   help=f"timm model name (default: the pretraining run's backbone, else {F['backbone'].default})")
    g.add_argument("--tiny", action="store_true", help="tiny ConvNeXt dims (tests, smoke runs)")
    g.add_argument("--timm-kwarg", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="extra timm.create_model argument (JSON value), repeatable")
    g.add_argument("--init", choices=("imagenet", "pretrained", "random"), default=None,
                   help="initial weights (default: pretrained when --init-weights is given, else imagenet)")
    g.add_argument("--weights-file", help="ImageNet weights file (.safetensors/.pth/.bin) for --init imagenet")
    g.add_argument("--init-weights", help="pretraining run / checkpoint / encoder.safetensors (--init pretrained)")
    for name in ("image_size", "drop_path"):
        F.add_argument(g, name)
    t = p.add_argument_group("training")
    for name in ("epochs", "batch_size", "lr", "min_lr", "weight_decay", "layer_decay", "warmup_epochs",
                 "label_smoothing"):
        F.add_argument(t, name)
    F.add_argument(t, "balance")
    F.add_argument(t, "patience")
    A.add_argument(t, "vflip")
    A.add_argument(t, "rotate_deg", "--rotate")
    F.add_argument(t, "seed")
    s = p.add_argument_group("splits")
    F.add_argument(s, "val_fraction")
    F.add_argument(s, "test_fraction")
    s.add_argument("--kfold", type=int, default=None, metavar="K", help="K-fold cross-validation")
    s.add_argument("--folds", type=int_list, default=None, help="only these folds, e.g. 0,1")
    s.add_argument("--split-name", default="default",
                   help="with --project: the split saved in the store under this name (made and saved on "
                        "first use; k-fold splits are saved as NAME-Kfold), so all runs share it")
    s.add_argument("--folds-file", default=None, metavar="FOLDS_JSON",
                   help="with --kfold: the folds a study made (its OUT/folds.json), to rerun a study's fold by hand")
    s.add_argument("--new-split", action="store_true",
                   help="with --project: make the split again (seed, fractions) and replace the saved one; runs "
                        "already made keep their own split.json")
    r = p.add_argument_group("run")
    r.add_argument("--resume", action="store_true", help="continue the run in --out (finished folds are kept)")
    F.add_argument(r, "device")
    F.add_argument(r, "num_workers", "--workers")
    F.add_argument(r, "precision")
    F.add_argument(r, "tta")
    r.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_finetune)


def _finetune(args) -> int:
    from core.models.classifier import pretrained_metadata
    from core.train.finetune import finetune_job
    from core.train.config import FinetuneConfig
    from core.data.transforms import AugmentConfig

    if not args.data and not args.project:
        raise ValueError("give an image folder or --project")
    if not args.out and not args.project:
        raise ValueError("give --out RUN_DIR (the run folder)")
    if not args.out and args.resume:
        raise ValueError("--resume continues the run in --out: give --out RUN_DIR")
    if args.folds_file and (not args.kfold or args.project):
        raise ValueError("--folds-file goes with --kfold K and an image folder (a project keeps its folds by "
                         "--split-name)")
    init = args.init or ("pretrained" if args.init_weights else "imagenet")
    backbone, timm_kwargs = args.backbone, dict(args.timm_kwarg)
    if init == "pretrained":
        if not args.init_weights:
            raise ValueError("--init pretrained needs --init-weights RUN_OR_FILE")
        meta = pretrained_metadata(args.init_weights)
        if backbone is None and meta.get("backbone"):
            backbone = meta["backbone"]
            if not args.tiny and not timm_kwargs and meta.get("timm_kwargs"):
                timm_kwargs = dict(meta["timm_kwargs"])
            print(f"backbone from the pretraining run: {backbone} {timm_kwargs or ''}", file=sys.stderr)
    cfg = FinetuneConfig(
        backbone=backbone or F["backbone"].default, tiny=args.tiny, timm_kwargs=timm_kwargs, init=init,
        init_weights=args.init_weights if init == "pretrained" else args.weights_file,
        image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        min_lr=args.min_lr, weight_decay=args.weight_decay, layer_decay=args.layer_decay,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, drop_path=args.drop_path,
        balance=args.balance, patience=args.patience, val_fraction=args.val_fraction,
        test_fraction=0.0 if args.kfold else args.test_fraction, seed=args.seed, num_workers=args.workers,
        device=args.device, precision=args.precision, tta=args.tta,
        aug=AugmentConfig(vflip=args.vflip, rotate_deg=args.rotate))
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if args.project and main_rank:     # recorded in the project's runs table, like a run from the window
        data = str(Path(args.data).absolute()) if args.data else None     # resumable from any folder
        config = {**cfg.to_dict(), "data": data, "kfold": args.kfold, "folds": args.folds,
                  "split_name": args.split_name, "new_split": args.new_split}
        result, out = _recorded_finetune(args, config)
    else:
        job = finetune_job(cfg, args.out, folder=args.data, project=args.project, kfold=args.kfold,
                           resume=args.resume, folds=args.folds, split_name=args.split_name,
                           new_split=args.new_split, folds_file=args.folds_file)
        result, out = run_with_progress(job, quiet=args.quiet or not main_rank), Path(args.out)
    if not main_rank:
        return 0
    if args.kfold:
        ms = result.get("test_mean_std", {})
        print(f"{result['folds_done']}/{result['k']} folds done -> {out / 'cv.json'}")
        for k in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr", "ece"):
            if k in ms:
                print(f"  test {k:18s} {ms[k]['mean']:.4f} ± {ms[k]['std']:.4f}")
    else:
        for part in ("val", "test"):
            if part in result:
                m = result[part]
                print(f"{part}: acc {m['accuracy']:.4f}  bal. acc {m['balanced_accuracy']:.4f}  "
                      f"macro F1 {m['macro_f1']:.4f}  ECE {m['ece']:.4f}")
        print(f"best checkpoint: {out / 'checkpoint-best'}")
    return 0


def _recorded_finetune(args, config: dict) -> tuple[dict, Path]:
    """Run through core's run lifecycle (core.project.runs): the store records state, checkpoints, metrics."""
    from core.project import runs
    from core.project.store import ProjectStore

    store = ProjectStore(args.project, create=False)
    try:
        earlier = runs.find_run(store, "finetune", args.out) if args.out else None
        if earlier is not None and not args.resume:
            raise ValueError(f"{args.out} is the folder of run #{earlier.id} ({earlier.state}) in {args.project}; "
                             f"pass --resume to continue it, or choose another --out")
        if earlier is not None:
            run, job = runs.resume_run(store, earlier.id)
        else:
            name = args.name or (Path(args.out).name if args.out else "finetune")
            run, job = runs.start_run(store, "finetune", name, config, resume=args.resume,
                                      run_dir=Path(args.out).absolute() if args.out else None)
        print(f"run #{run.id} in {args.project}: {run.run_dir}", file=sys.stderr)
        return run_with_progress(job, quiet=args.quiet), Path(run.run_dir)
    finally:
        store.close()
