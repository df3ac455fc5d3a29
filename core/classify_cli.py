"""`medssl finetune`, `medssl ensemble`, `medssl predict`, `medssl export-onnx`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_BACKBONE = "convnext_tiny"


def _run(job, quiet: bool = False):
    try:
        from core.cli import run_with_progress
    except ImportError:  # pragma: no cover - core.cli ships with the app
        return job.run()
    return run_with_progress(job, quiet=quiet)


def _kv(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except ValueError:
        return k, v


def _int_list(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def register_cli(subparsers) -> None:
    _register_finetune(subparsers)
    _register_ensemble(subparsers)
    _register_predict(subparsers)
    _register_export(subparsers)


# ---------------------------------------------------------------------------------------------- finetune
def _register_finetune(subparsers) -> None:
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
    g.add_argument("--timm-kwarg", action="append", type=_kv, default=[], metavar="KEY=VALUE",
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
    s.add_argument("--folds", type=_int_list, default=None, help="only these folds, e.g. 0,1")
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
    r.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    r.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_finetune)


def _finetune(args) -> int:
    from core.finetune import FinetuneConfig, finetune_job, pretrained_metadata
    from core.transforms import AugmentConfig

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
            if not args.tiny and not timm_kwargs and meta.get("backbone_kwargs"):
                timm_kwargs = dict(meta["backbone_kwargs"])
            print(f"backbone from the pretraining run: {backbone} {timm_kwargs or ''}", file=sys.stderr)
    cfg = FinetuneConfig(
        backbone=backbone or DEFAULT_BACKBONE, tiny=args.tiny, timm_kwargs=timm_kwargs, init=init,
        init_weights=args.init_weights if init == "pretrained" else args.weights_file,
        image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        min_lr=args.min_lr, weight_decay=args.weight_decay, layer_decay=args.layer_decay,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, drop_path=args.drop_path,
        balance=args.balance, patience=args.patience, val_fraction=args.val_fraction,
        test_fraction=0.0 if args.kfold else args.test_fraction, seed=args.seed, num_workers=args.workers,
        device=args.device, amp=not args.no_amp,
        aug=AugmentConfig(vflip=args.vflip, rotate_deg=args.rotate))
    job = finetune_job(cfg, args.out, folder=args.data, project=args.project, kfold=args.kfold,
                       resume=args.resume, folds=args.folds, split_name=args.split_name,
                       new_split=args.new_split)
    import os

    result = _run(job, args.quiet or int(os.environ.get("RANK", "0")) != 0)
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


# ---------------------------------------------------------------------------------------------- ensemble
def _register_ensemble(subparsers) -> None:
    p = subparsers.add_parser(
        "ensemble", help="calibrate and evaluate an ensemble of fine-tuned members",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Temperature-scale every member on its validation split, average probabilities "
                    "(weighted) and report members and ensemble side by side, before and after calibration. "
                    "Temperatures are saved into the ensemble file. With --members, the file is created first. "
                    "When the members are k-fold runs, evaluation is per fold (mean ± std and pooled).")
    p.add_argument("ensemble", help="ensemble file (JSON)")
    p.add_argument("--members", nargs="+", help="create the file from these checkpoints / run folders")
    p.add_argument("--names", nargs="+", help="member names (with --members)")
    p.add_argument("--weights", nargs="+", type=float, help="member weights (with --members)")
    p.add_argument("--split", default="test", choices=("test", "val"), help="split to evaluate on")
    p.add_argument("--no-calibrate", action="store_true", help="keep the file's temperatures")
    p.add_argument("--data", help="image folder, when it moved since fine-tuning")
    p.add_argument("--report", help="write the report JSON here (default: beside the ensemble file)")
    p.add_argument("--per-image", help="CSV with per-image probabilities, entropy and disagreement")
    p.add_argument("--cam", metavar="DIR", help="write Grad-CAM PNGs (input | each member | ensemble)")
    p.add_argument("--cam-limit", type=int, default=32, help="at most this many CAM images")
    p.add_argument("--device", default=None)
    p.set_defaults(handler=_ensemble)


def _ensemble(args) -> int:
    from core.ensemble import (create_spec, evaluate_ensemble, evaluate_ensemble_cv, format_table, load_spec)
    from core.finetune import is_kfold_run
    from core.jobs import Job

    if args.members:
        spec = create_spec(args.ensemble, args.members, names=args.names, weights=args.weights)
    else:
        spec = load_spec(args.ensemble)
    cv = all(is_kfold_run(spec.resolve(m)) for m in spec.members)

    def fn(ctx):
        if cv:
            return evaluate_ensemble_cv(spec, calibrate=not args.no_calibrate, data_root=args.data,
                                        device=args.device, ctx=ctx)
        rep = evaluate_ensemble(spec, split=args.split, calibrate=not args.no_calibrate, data_root=args.data,
                                device=args.device, ctx=ctx, per_image=args.per_image, cam_dir=args.cam,
                                cam_limit=args.cam_limit)
        rep.pop("_probs", None)
        return rep

    report = _run(Job("ensemble", fn))
    out = Path(args.report) if args.report else Path(args.ensemble).with_suffix(".report.json")
    out.write_text(json.dumps(report, indent=1))
    print(format_table(report))
    if cv:
        print(f"\n{report['k']}-fold CV, mean ± std over folds (test = held-out fold)")
    else:
        temps = ", ".join(f"{m['name']}: T={m['temperature']:.3f}" for m in report["members"])
        print(f"\n{report['split']} split, n = {report['n']}; {temps}")
    print(f"report: {out}")
    return 0


# ----------------------------------------------------------------------------------------------- predict
def _register_predict(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="classify every image in a folder (resumable, CSV or JSON lines)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Stream all images under FOLDER through the ensemble and append one row per image to "
                    "--out (.csv, or .jsonl for JSON lines): predicted class, ensemble and member "
                    "probabilities, predictive entropy, member disagreement (JS divergence). Rows already in "
                    "--out are skipped, so re-running after an interruption resumes. Unreadable files become "
                    "rows with status=error and the reason.")
    p.add_argument("folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ensemble", help="ensemble file (calibrate it first with `medssl ensemble`)")
    src.add_argument("--onnx", help="an ONNX export (`medssl export-onnx`), run with ONNX Runtime")
    p.add_argument("--out", required=True, help="output .csv or .jsonl")
    p.add_argument("--format", choices=("csv", "jsonl"), default=None, help="default: from --out's suffix")
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                   help="auto = ONNX Runtime on a CPU when onnxruntime is installed (export cached beside the "
                        "ensemble file), else PyTorch")
    p.add_argument("--batch-size", type=int, default=None, help="default: 4 on a CPU, 32 on a GPU")
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: min(2, CPUs))")
    p.add_argument("--device", default=None)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto = bf16 only where the CPU/GPU has native bf16 (checked against fp32)")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=None)
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads")
    p.add_argument("--limit", type=int, default=None, help="stop after this many new images")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_predict)


def _predict(args) -> int:
    from core.predict import predict_job

    job = predict_job(args.folder, args.out, ensemble=args.ensemble, onnx=args.onnx, backend=args.backend,
                      fmt=args.format,
                      batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                      channels_last=args.channels_last, precision=args.precision, threads=args.threads,
                      limit=args.limit)
    s = _run(job, args.quiet)
    rate = f"{s['images_per_s']:.1f} images/s" if s["images_per_s"] else ""
    print(f"{s['predicted']} predicted, {s['errors']} errors, {s['already_done']} already done; {rate} "
          f"({s['backend']}, {s['precision']}) -> {s['out']}")
    return 0


def _register_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export-onnx", help="export an ensemble as one ONNX graph for ONNX Runtime",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Write normalisation, all members, temperatures and averaging as one ONNX graph "
                    "(input 'image' [B, 3, S, S] in [0, 1]; outputs 'probs' and 'member_probs'), checked "
                    "against PyTorch with ONNX Runtime. Run it with `medssl predict FOLDER --onnx FILE`. "
                    "Needs the optional packages onnx and onnxruntime.")
    p.add_argument("ensemble")
    p.add_argument("--out", required=True, help="output .onnx")
    p.add_argument("--opset", type=int, default=17, help="17+ has LayerNormalization")
    p.set_defaults(handler=_export)


def _export(args) -> int:
    from core.predict import export_onnx

    out = export_onnx(args.ensemble, args.out, opset=args.opset)
    print(f"wrote {out}")
    return 0
