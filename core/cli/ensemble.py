"""`medssl ensemble`: calibrate and evaluate an ensemble of fine-tuned members."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.cli import run_with_progress


def register_cli(subparsers) -> None:
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
    from core.inference.ensemble import (create_spec, evaluate_ensemble, evaluate_ensemble_cv, format_table, load_spec)
    from core.train.kfold import is_kfold_run
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
        return evaluate_ensemble(spec, split=args.split, calibrate=not args.no_calibrate, data_root=args.data,
                                 device=args.device, ctx=ctx, per_image=args.per_image, cam_dir=args.cam,
                                 cam_limit=args.cam_limit)

    report = run_with_progress(Job("ensemble", fn))
    out = Path(args.report) if args.report else Path(args.ensemble).with_suffix(".report.json")
    out.write_text(json.dumps(report if cv else report.to_dict(), indent=1))
    print(format_table(report))
    if cv:
        print(f"\n{report['k']}-fold CV, mean ± std over folds (test = held-out fold)")
    else:
        temps = ", ".join(f"{m.name}: T={m.temperature:.3f}" for m in report.members)
        print(f"\n{report.split} split, n = {report.n}; {temps}")
    print(f"report: {out}")
    return 0
