"""`medssl finetune`: fine-tune a classifier on labelled images (one split or k-fold)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from core.cli import run_with_progress
from core.cli.args import int_list, key_value

DEFAULT_BACKBONE = "convnext_tiny"


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune a classifier (one split or k-fold cross-validation)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Fine-tune a timm backbone as an image classifier on labelled images. Initial weights: "
                    "ImageNet (local file / Hugging Face cache, never downloaded), a pretraining run of this "
                    "project (--init-weights RUN), or random. Splits are stratified and grouped by case. "
                    "Writes RUN/checkpoint-best, checkpoint-last, metrics.json, history.jsonl; with --kfold K, "
                    "RUN/fold0..fold{K-1} and RUN/cv.json. Ctrl-C stops at the next batch; --resume continues.")
    p.add_argument("data", nargs="?", help="image folder (class = sub-folder or manifest.csv label)")
    p.add_argument("--project", help="project store (.db) to take images and labels from instead of a folder")
    p.add_argument("--out", required=True, help="run folder")
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default=None,
                   help=f"timm model name (default: the pretraining run's backbone, else {DEFAULT_BACKBONE})")
    g.add_argument("--tiny", action="store_true", help="tiny ConvNeXt dims (tests, smoke runs)")
    g.add_argument("--timm-kwarg", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="extra timm.create_model argument (JSON value), repeatable")
    g.add_argument("--init", choices=("imagenet", "pretrained", "random"), default=None,
                   help="initial weights (default: pretrained when --init-weights is given, else imagenet)")
    g.add_argument("--weights-file", help="ImageNet weights file (.safetensors/.pth/.bin) for --init imagenet")
    g.add_argument("--init-weights", help="pretraining run / checkpoint / encoder.safetensors (--init pretrained)")
    g.add_argument("--image-size", type=int, default=224)
    g.add_argument("--drop-path", type=float, default=0.1)
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (of the head)")
    t.add_argument("--min-lr", type=float, default=1e-6)
    t.add_argument("--weight-decay", type=float, default=0.05)
    t.add_argument("--layer-decay", type=float, default=0.75, help="layer-wise lr decay (1 = off)")
    t.add_argument("--warmup-epochs", type=float, default=1.0)
    t.add_argument("--label-smoothing", type=float, default=0.1)
    t.add_argument("--balance", choices=("sampler", "loss", "none"), default="sampler",
                   help="class balancing: balanced sampling, class-weighted loss, or none")
    t.add_argument("--patience", type=int, default=8, help="early stopping on val balanced accuracy")
    t.add_argument("--vflip", type=float, default=0.0, help="vertical flip probability (0 for ultrasound)")
    t.add_argument("--rotate", type=float, default=10.0, help="max rotation in degrees")
    t.add_argument("--seed", type=int, default=0)
    s = p.add_argument_group("splits")
    s.add_argument("--val-fraction", type=float, default=0.15)
    s.add_argument("--test-fraction", type=float, default=0.15, help="ignored with --kfold (test = held-out fold)")
    s.add_argument("--kfold", type=int, default=None, metavar="K", help="K-fold cross-validation")
    s.add_argument("--folds", type=int_list, default=None, help="only these folds, e.g. 0,1")
    s.add_argument("--split-name", default="default",
                   help="with --project: the split saved in the store under this name (made and saved on "
                        "first use; k-fold splits are saved as NAME-Kfold), so all runs share it")
    s.add_argument("--new-split", action="store_true",
                   help="with --project: make the split again (seed, fractions) and replace the saved one; runs "
                        "already made keep their own split.json")
    r = p.add_argument_group("run")
    r.add_argument("--resume", action="store_true", help="continue the run in --out (finished folds are kept)")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    r.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 0 when cached)")
    r.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="autocast: auto = bf16 where the hardware has it natively (CUDA 8.0+, AMX/AVX512-BF16 "
                        "CPUs), fp16 on older GPUs, else fp32 (default %(default)s)")
    r.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_finetune)


def _finetune(args) -> int:
    from core.models.classifier import pretrained_metadata
    from core.train.finetune import finetune_job
    from core.train.config import FinetuneConfig
    from core.data.transforms import AugmentConfig

    if not args.data and not args.project:
        raise ValueError("give an image folder or --project")
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
        backbone=backbone or DEFAULT_BACKBONE, tiny=args.tiny, timm_kwargs=timm_kwargs, init=init,
        init_weights=args.init_weights if init == "pretrained" else args.weights_file,
        image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        min_lr=args.min_lr, weight_decay=args.weight_decay, layer_decay=args.layer_decay,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, drop_path=args.drop_path,
        balance=args.balance, patience=args.patience, val_fraction=args.val_fraction,
        test_fraction=0.0 if args.kfold else args.test_fraction, seed=args.seed, num_workers=args.workers,
        device=args.device, precision=args.precision,
        aug=AugmentConfig(vflip=args.vflip, rotate_deg=args.rotate))
    job = finetune_job(cfg, args.out, folder=args.data, project=args.project, kfold=args.kfold,
                       resume=args.resume, folds=args.folds, split_name=args.split_name,
                       new_split=args.new_split)
    result = run_with_progress(job, quiet= args.quiet or int(os.environ.get("RANK", "0")) != 0)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if args.kfold:
        ms = result.get("test_mean_std", {})
        print(f"{result['folds_done']}/{result['k']} folds done -> {Path(args.out) / 'cv.json'}")
        for k in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr", "ece"):
            if k in ms:
                print(f"  test {k:18s} {ms[k]['mean']:.4f} ± {ms[k]['std']:.4f}")
    else:
        for part in ("val", "test"):
            if part in result:
                m = result[part]
                print(f"{part}: acc {m['accuracy']:.4f}  bal. acc {m['balanced_accuracy']:.4f}  "
                      f"macro F1 {m['macro_f1']:.4f}  ECE {m['ece']:.4f}")
        print(f"best checkpoint: {Path(args.out) / 'checkpoint-best'}")
    return 0
