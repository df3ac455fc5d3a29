"""`medssl study`: the paper's protocol as one command (duplicate-aware k-fold, members A/B, random-mask
MAE control, ensemble, report)."""

from __future__ import annotations

import argparse
import shlex

from core.cli.args import key_value
from core.study.runner import BUDGETS, ENSEMBLE_WEIGHTS


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "study", help="run a whole study (k-fold, members A/B, MAE control, ensemble) and write its report",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Run the protocol end to end on a labelled folder or project: k-fold cross-validation "
                    "grouped by case and by near-duplicate group; member A (ImageNet), member B "
                    "(entropy-guided MAE, pretrained per fold on its training images, or once on all images "
                    "with --transductive), a random-mask MAE control at equal compute, each fine-tuned with "
                    "the same recipe; the A+B ensemble with a temperature on the averaged probabilities; "
                    "OUT/report/report.html and report.json. Run it again to continue: finished steps are "
                    "skipped. Ctrl-C stops at the next batch.")
    p.add_argument("data", nargs="?", help="labelled image folder (class = sub-folder or manifest.csv label)")
    p.add_argument("--project", help="project store (.db) to take images and labels from instead of a folder")
    p.add_argument("--out", required=True, help="study folder (runs, folds, report)")
    p.add_argument("--budget", choices=tuple(BUDGETS), default="cpu",
                   help="image size / epochs / backbones: tiny (tests), cpu (about 3 CPU-hours for BUSI on 2 "
                        "cores), gpu (ConvNeXt-Tiny both members, 224 px)")
    p.add_argument("--kfold", type=int, default=5, metavar="K", help="number of folds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--transductive", action="store_true",
                   help="pretrain member B (and the control) once on all images, labels unused, instead of on "
                        "each fold's training images (the report says which)")
    p.add_argument("--no-control", action="store_true", help="skip the random-mask MAE control")
    p.add_argument("--ensemble-weights", choices=ENSEMBLE_WEIGHTS, default="equal",
                   help="equal (the paper) or fitted on each fold's validation part")
    p.add_argument("--member-a-init", choices=("imagenet", "random"), default="imagenet",
                   help="member A's initial weights (random: offline smoke runs and tests)")
    p.add_argument("--weights-file", help="ImageNet weights file of member A's backbone")
    p.add_argument("--set", action="append", type=key_value, default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a budget setting (" + ", ".join(BUDGETS["cpu"]) + "), repeatable")
    p.add_argument("--max-hamming", type=int, default=None, help="near-duplicates: perceptual hash distance")
    p.add_argument("--min-ssim", type=float, default=None, help="near-duplicates: SSIM that confirms a pair")
    p.add_argument("--panels", type=int, default=2, help="test images shown as MAE / Grad-CAM panels")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of each paired difference")
    p.add_argument("--device", default=None)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--workers", type=int, default=None, help="DataLoader worker processes")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_study)


def _study(args) -> int:
    from core.cli import run_with_progress
    from core.study.runner import StudyConfig, study_job

    if not args.data and not args.project:
        raise ValueError("give a labelled image folder or --project")
    cfg = StudyConfig(out=args.out, data=args.data, project=args.project, budget=args.budget, k=args.kfold,
                      seed=args.seed, transductive=args.transductive, control=not args.no_control,
                      ensemble_weights=args.ensemble_weights, member_a_init=args.member_a_init,
                      weights_file=args.weights_file, max_hamming=args.max_hamming, min_ssim=args.min_ssim,
                      overrides=dict(args.overrides), device=args.device, precision=args.precision,
                      num_workers=args.workers, panels=args.panels, n_boot=args.n_boot)
    cfg.settings()           # unknown budget keys fail before any work
    result = run_with_progress(study_job(cfg, study_command(cfg)), quiet=args.quiet)
    print(f"ensemble accuracy {100 * result['ensemble_accuracy']:.1f} % (mean over {result['k']} folds); best "
          f"member {result['best_member']} {100 * result['best_member_accuracy']:.1f} %")
    print(result["verdict"])
    print(f"report: {result['report']}")
    return 0


def study_command(cfg) -> str:
    """The command line that reproduces ``cfg`` (recorded in the report)."""
    parts = ["medssl", "study"] + ([cfg.data] if cfg.data else []) + (["--project", cfg.project] if cfg.project else [])
    parts += ["--out", cfg.out, "--budget", cfg.budget, "--kfold", str(cfg.k), "--seed", str(cfg.seed)]
    parts += ["--transductive"] if cfg.transductive else []
    parts += [] if cfg.control else ["--no-control"]
    parts += ["--ensemble-weights", cfg.ensemble_weights, "--member-a-init", cfg.member_a_init]
    parts += ["--weights-file", cfg.weights_file] if cfg.weights_file else []
    for k, v in cfg.overrides.items():
        parts += ["--set", f"{k}={v}"]
    parts += ["--precision", cfg.precision]
    return " ".join(shlex.quote(p) for p in parts)
