"""Throughput of masked-autoencoder pretraining steps: entropy-guided vs. random masks vs. a supervised step.

All on the same batch, in the same process, interleaved in rounds (best round per variant), each a full
optimizer step (forward, backward, AdamW) through the method's real ``loss``:

* ``entropy``: entropy-guided masks from per-cell entropy computed once per image (the trainer's default,
  ``--entropy-source cached``): the step pays only for mask sampling;
* ``entropy_on_batch``: the same, but ``cell_entropy`` is computed on every batch (``--entropy-source batch``);
* ``random``: uniform random masks (``--entropy-mode random``);
* ``supervised``: the same backbone with a classifier head, cross-entropy on random labels.

Last line: one JSON object (``entropy_images_per_s``, ``random_images_per_s``, ``entropy_vs_random_ratio``,
``supervised_images_per_s``, ...). Run heavy settings under ``flock /tmp/medssl-cpu.lock`` on shared CPUs.

    .venv/bin/python bench/pretrain.py                       # convnext_atto, 128 px, batch 32
    .venv/bin/python bench/pretrain.py --backbone convnext_tiny --image-size 224 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.analysis.entropy import cell_entropy  # noqa: E402
from core.models.backbones import create_backbone  # noqa: E402
from core.pretrain import StepContext, get_method  # noqa: E402
from core.pretrain.data import load_grey_resized  # noqa: E402
from core.train.distributed import pick_device  # noqa: E402
from core.train.precision import PRECISIONS, resolve_precision  # noqa: E402
from core.train.schedule import param_groups  # noqa: E402
from core.pretrain.config import TrainConfig


def load_batch(folder: Path | None, n: int, size: int) -> torch.Tensor:
    """n grey images [n, 1, S, S] from folder (BUSI by default, else freshly generated phantoms)."""
    if folder is None:
        busi = Path(__file__).resolve().parents[2] / "shared" / "data" / "busi"
        if busi.is_dir():
            folder = busi
        else:
            from core.data.demo import generate_demo
            folder = generate_demo(Path(tempfile.mkdtemp()) / "demo", size=size)
    paths = sorted(p for p in folder.rglob("*.png") if "_mask" not in p.name)[:n]
    if len(paths) < n:
        raise SystemExit(f"{folder}: need {n} images, found {len(paths)}")
    return torch.stack([load_grey_resized(p, size) for p in paths])[:, None]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="convnext_atto")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--decoder-width", type=int, default=None, help="default: the MAE's default for the backbone")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default=None)
    ap.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="what training uses (auto: bf16 on AMX/AVX512-BF16 CPUs; the figures in "
                         "docs/pretrain-mae.md are --precision fp32)")
    ap.add_argument("--data", type=Path, default=None)
    args = ap.parse_args(argv)

    device = pick_device(args.device)
    method = get_method("mae")
    grey = load_batch(args.data, args.batch_size, args.image_size)            # [B, 1, S, S]
    images = grey.expand(-1, 3, -1, -1)
    index = torch.arange(args.batch_size)
    ent = cell_entropy(grey)                                                   # [B, h, w]
    t0 = time.perf_counter()
    for _ in range(5):
        cell_entropy(grey)
    entropy_ms = (time.perf_counter() - t0) / 5 * 1e3

    cfg = TrainConfig(backbone=args.backbone, image_size=args.image_size,
                      options={**method.default_options(), "decoder_width": args.decoder_width})
    method.check_options(cfg.options, cfg)
    amp = resolve_precision(args.precision, device).dtype
    torch.manual_seed(0)
    mae = method.build(cfg).to(device).train()
    mae_opt = torch.optim.AdamW(param_groups(mae, 0.05), lr=1e-4)
    clf = create_backbone(args.backbone, num_classes=3).to(device).train()
    clf_opt = torch.optim.AdamW(param_groups(clf, 0.05), lr=1e-4)
    labels = torch.randint(0, 3, (args.batch_size,), generator=torch.Generator().manual_seed(0)).to(device)
    counter = [0]

    def mae_step(mode: str, on_batch: bool) -> None:
        counter[0] += 1
        opts = {**cfg.options, "entropy_mode": mode}
        e = cell_entropy(grey) if on_batch else ent
        batch = {"image": images, "entropy": e, "index": index}
        step = StepContext(epoch=0, global_step=counter[0], total_steps=1, seed=0, device=device,
                           autocast_dtype=amp, options=opts)
        mae_opt.zero_grad(set_to_none=True)
        loss, _ = method.loss(mae, batch, step)
        loss.backward()
        mae_opt.step()

    def supervised_step() -> None:
        clf_opt.zero_grad(set_to_none=True)
        x = mae.normalize(images.to(device))
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(clf(x).float(), labels)
        loss.backward()
        clf_opt.step()

    variants = {"entropy": lambda: mae_step("high", False), "entropy_on_batch": lambda: mae_step("high", True),
                "random": lambda: mae_step("random", False), "supervised": supervised_step}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for fn in variants.values():          # warm-up
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            sync()
            t = time.perf_counter()
            for _ in range(args.steps):
                fn()
            sync()
            times[name].append((time.perf_counter() - t) / args.steps)
    # mask sampling alone (per-image seeded generators), for the record
    step = StepContext(epoch=0, global_step=0, total_steps=1, seed=0, device=device, options=cfg.options)
    t = time.perf_counter()
    for _ in range(10):
        method.sample_masks({"image": images, "entropy": ent, "index": index}, step, cfg.options)
    mask_ms = (time.perf_counter() - t) / 10 * 1e3

    # Best round per variant: on a shared CPU, other processes only ever slow a round down, so the
    # fastest round is the least disturbed estimate (medians are in the output too).
    ips = {k: args.batch_size / min(v) for k, v in times.items()}
    med = {k: args.batch_size / statistics.median(v) for k, v in times.items()}
    result = {
        "backbone": args.backbone, "image_size": args.image_size, "batch_size": args.batch_size,
        "device": str(device), "threads": torch.get_num_threads(),
        "precision": str(amp).replace("torch.", "") if amp else "fp32",
        "entropy_images_per_s": round(ips["entropy"], 2),
        "random_images_per_s": round(ips["random"], 2),
        "entropy_vs_random_ratio": round(ips["entropy"] / ips["random"], 4),
        "entropy_on_batch_images_per_s": round(ips["entropy_on_batch"], 2),
        "supervised_images_per_s": round(ips["supervised"], 2),
        "mae_vs_supervised_ratio": round(ips["entropy"] / ips["supervised"], 4),
        "median_images_per_s": {k: round(v, 2) for k, v in med.items()},
        "decoder_width": cfg.options["decoder_width"],
        "mask_sampling_ms_per_batch": round(mask_ms, 3),
        "cell_entropy_ms_per_batch": round(entropy_ms, 3),
        "step_s_all_rounds": {k: [round(x, 4) for x in v] for k, v in times.items()},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
