"""`medssl predict` (classify every image of a folder) and `medssl export-onnx`."""

from __future__ import annotations

import argparse
import os

from core.cli import run_with_progress


def register_cli(subparsers) -> None:
    _register_predict(subparsers)
    _register_export(subparsers)


def _register_predict(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="classify every image in a folder (resumable, CSV or JSON lines)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Stream all images under FOLDER through the ensemble and append one row per image to "
                    "--out (.csv, or .jsonl for JSON lines): predicted class, ensemble and member "
                    "probabilities, predictive entropy, member disagreement (JS divergence). Rows already in "
                    "--out are skipped, so re-running after an interruption resumes. Unreadable files become "
                    "rows with status=error and the reason; a file that ran out of memory while decoding gets "
                    "no row (exit status 1): run the command again to retry it. Under torchrun (python -m torch.distributed.run "
                    "--nproc-per-node N -m core.cli predict ...) each process takes its share of the files and "
                    "the rows still end up in the one --out file.")
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
    from core.inference.predict import predict_job

    job = predict_job(args.folder, args.out, ensemble=args.ensemble, onnx=args.onnx, backend=args.backend,
                      fmt=args.format,
                      batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                      channels_last=args.channels_last, precision=args.precision, threads=args.threads,
                      limit=args.limit)
    first_rank = int(os.environ.get("RANK", "0")) == 0   # under torchrun, rank 0 speaks for all
    s = run_with_progress(job, quiet=args.quiet or not first_rank)
    if first_rank:
        rate = f"{s['images_per_s']:.1f} images/s" if s["images_per_s"] else ""
        ranks = f", {s['world_size']} processes" if s["world_size"] > 1 else ""
        print(f"{s['predicted']} predicted, {s['errors']} errors, {s['already_done']} already done; {rate} "
              f"({s['backend']}, {s['precision']}{ranks}) -> {s['out']}")
        if s["retry_later"]:
            print(f"{s['retry_later']} files ran out of memory while decoding and have no row yet: run the same "
                  f"command again to retry them")
    return 1 if s["retry_later"] else 0


def _register_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export-onnx", help="export an ensemble as one ONNX graph for ONNX Runtime",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Write normalisation, all members, temperatures and averaging as one ONNX graph "
                    "(input 'image' [B, 3, S, S] in [0, 1]; outputs 'probs' and 'member_probs'), checked "
                    "against PyTorch with ONNX Runtime. Run it with `medssl predict FOLDER --onnx FILE`.")
    p.add_argument("ensemble")
    p.add_argument("--out", required=True, help="output .onnx")
    p.add_argument("--opset", type=int, default=17, help="17+ has LayerNormalization")
    p.set_defaults(handler=_export)


def _export(args) -> int:
    from core.inference.predict import export_onnx

    out = export_onnx(args.ensemble, args.out, opset=args.opset)
    print(f"wrote {out}")
    return 0
