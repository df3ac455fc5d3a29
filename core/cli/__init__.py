"""`medssl` command line: one argparse tree; each feature module adds its own sub-commands.

Long work runs as a ``core.jobs.Job`` in a worker thread; this module renders its events as a tqdm
progress bar and turns Ctrl-C into a cooperative cancel (the job stops at its next safe point and can
be resumed by running the same command again).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Sequence

from core import __version__
from core.jobs import EventKind, Job, JobCancelled, ProgressEvent

# One module per command, each with register_cli(subparsers). Order = order in `medssl --help`.
COMMAND_MODULES = (
    "core.cli.scan",
    "core.cli.study",
    "core.cli.demo",
    "core.cli.weights",
    "core.cli.entropy",
    "core.cli.pretrain",
    "core.cli.reconstruct",
    "core.cli.finetune",
    "core.cli.ensemble",
    "core.cli.predict",
)


class _ProgressRenderer:
    """Turns job events into a tqdm bar plus log lines on stderr."""

    def __init__(self, desc: str, quiet: bool = False):
        self.desc = desc
        self.quiet = quiet
        self.bar = None

    def __call__(self, event: ProgressEvent) -> None:
        from tqdm import tqdm

        if self.quiet:
            return
        if event.kind is EventKind.PROGRESS:
            if self.bar is None:
                # Off a terminal (logs, CI) a bar line every few seconds is plenty.
                interval = 0.2 if sys.stderr.isatty() else 5.0
                self.bar = tqdm(total=event.total, desc=self.desc, unit="it", dynamic_ncols=True,
                                file=sys.stderr, mininterval=interval)
            if event.total is not None and self.bar.total != event.total:
                self.bar.total = event.total
            if event.metrics:
                self.bar.set_postfix({k: _short(v) for k, v in event.metrics.items()}, refresh=False)
            self.bar.update(event.step - self.bar.n)  # tqdm rate-limits the redraw itself
        elif event.kind is EventKind.LOG:
            if self.bar is not None:
                self.bar.write(event.message, file=sys.stderr)
            else:
                print(event.message, file=sys.stderr)
        elif event.kind in (EventKind.FINISHED, EventKind.FAILED, EventKind.CANCELLED):
            if self.bar is not None:
                self.bar.close()
                self.bar = None


def _short(value: float) -> str:
    return f"{value:.4g}"


def run_with_progress(job: Job, *, quiet: bool = False) -> Any:
    """Run ``job`` in a worker thread with a progress bar; Ctrl-C cancels it cleanly.

    Returns the job's result; raises its exception (``JobCancelled`` when cancelled).
    """
    unsubscribe = job.subscribe(_ProgressRenderer(job.name, quiet=quiet))
    job.start()
    try:
        while not job.wait(0.2):
            pass
    except KeyboardInterrupt:
        print("\ncancelling... (waiting for a safe point)", file=sys.stderr)
        job.cancel()
        job.wait()
    finally:
        unsubscribe()
    if job.state.value == "cancelled":
        raise JobCancelled(f"{job.name} cancelled; run the same command again to resume")
    if job.error is not None:
        raise RuntimeError(job.error)
    return job.result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medssl",
        description="MedSSL Studio engine: scan image folders, make demo data, compute entropy maps, "
                    "pretrain (entropy-guided MAE and contrastive methods), fine-tune, ensemble, predict.",
    )
    parser.add_argument("--version", action="version", version=f"medssl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        module.register_cli(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if list(sys.argv[1:] if argv is None else argv) == ["--version"]:
        print(f"medssl {__version__}")    # without building the parser: its commands import torch
        raise SystemExit(0)
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except JobCancelled as exc:
        print(f"medssl: {exc}", file=sys.stderr)
        return 130
    except (FileNotFoundError, NotADirectoryError, ValueError, RuntimeError) as exc:
        print(f"medssl: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
