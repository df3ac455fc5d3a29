"""FG-SSL: fine-grained self-supervised learning with hierarchical jigsaw puzzles (Park & Ryu, Computers in
Biology and Medicine 2024, arXiv 2308.05770), on a timm ConvNeXt.

Views (per image, from the ``pairs`` data set; default ``same_image``): two SimCLR-augmented views v1, v2,
and from v1 one jigsaw view per granularity n in ``--granularities`` (n x n blocks shuffled; block side =
image size // n, so the list scales with the image size). Following the public code (PMG-style), the
granularities are sorted fine -> coarse (most blocks first) and paired with the encoder's stages shallow
-> deep: with K granularities, granularity k uses stage 4 - K + k (default 8, 4, 2 -> stages 1, 2, 3, i.e.
strides 8, 16, 32). Phase k: jigsaw_k(v1) and the clean v2 both go through the encoder up to that stage,
are average-pooled and projected by the stage's own head (Linear-BN-ReLU x2 -> Linear); loss
Barlow(z_jigsaw, z_clean). Final phase: v1 and v2 through the whole encoder, final features (pooled last
stage; ``--clean-features concat`` = the pooled jigsaw stages concatenated, as PMG) -> final head;
loss ``--final-weight`` (2, as in the public code) x Barlow(z_v1, z_v2). No negatives, no momentum or
predictor network: both sides share every weight.

Loss: canonical Barlow Twins (``core.pretrain.losses.barlow_twins_loss``): sum (1 - C_ii)^2 +
lambda * sum_{i != j} C_ij^2, lambda = 5e-3, on batch-standardised embeddings (global batch under DDP).
The public code instead uses lambda^2 * ||C - I||^2 (equal weights, tiny scale); see losses.py.

Schedule (``--schedule``):

* ``progressive`` (default, the paper's): the public code takes, for every batch, K + 1 optimiser steps in
  a row: granularity 1, 2, ..., K, then the clean pair. The shared trainer takes one optimiser step per
  batch, so optimiser step t trains phase t mod (K + 1): the same sequence of updates (fine jigsaw at a
  shallow stage first, the clean pair last), each on the next batch. One epoch therefore holds 1/(K + 1)
  of the paper's updates per phase; give (K + 1) x the epochs for the same number of updates.
* ``joint``: every step sums all phases (weights 1, ..., 1, final weight): one update per batch, K + 2
  encoder passes.

The logged ``loss`` of a progressive run mixes phases (the final phase counts double); ``phase`` and the
per-phase ``on_diag`` / ``off_diag`` sums are logged with it.
Shapes: B images per batch, S side, C_i stage widths, D projection width.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from core.pretrain import StepContext, register_method
from core.pretrain.augment import jigsaw
from core.pretrain.losses import barlow_twins_loss
from core.pretrain.simclr import ContrastiveMethod, build_encoder, projector, stage_features

__all__ = ["FGSSL", "FGSSLModel", "JIGSAW_SALT", "jigsaw_batch"]

JIGSAW_SALT = 200


def jigsaw_batch(images: torch.Tensor, n: int, index: torch.Tensor, step: StepContext, k: int) -> torch.Tensor:
    """Per-image jigsaw of images [B, 3, S, S]; permutation from (seed, epoch, index, salt + k)."""
    out = torch.empty_like(images)
    for b in range(images.shape[0]):
        g = step.generator(int(index[b]), JIGSAW_SALT + k)
        out[b] = jigsaw(images[b], n, perm=torch.randperm(n * n, generator=g))
    return out


class FGSSLModel(nn.Module):
    """``encoder`` + one projection head per jigsaw stage + a final head. Inputs in [0, 1]."""

    def __init__(self, encoder: nn.Module, granularities: list[int], *, proj_hidden: int, proj_dim: int,
                 clean_features: str = "last", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        super().__init__()
        n_stages = len(encoder.stages)
        if not 1 <= len(granularities) <= n_stages:
            raise ValueError(f"FG-SSL needs 1..{n_stages} granularities for this encoder, got {granularities}")
        self.encoder = encoder
        self.granularities = sorted((int(n) for n in granularities), reverse=True)     # fine -> coarse
        self.stages = [n_stages - len(self.granularities) + k for k in range(len(self.granularities))]
        dims = [f["num_chs"] for f in encoder.feature_info]
        self.heads = nn.ModuleList(projector(dims[s], proj_hidden, proj_dim, 3, last_bias=False) for s in self.stages)
        self.clean_features = clean_features
        final_in = dims[-1] if clean_features == "last" else sum(dims[s] for s in self.stages)
        self.final_head = projector(final_in, proj_hidden, proj_dim, 3, last_bias=False)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def n_phases(self) -> int:
        return len(self.granularities) + 1

    def pooled(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        """Average-pooled features [N, C_i] of stages 0..upto for x [N, 3, S, S] in [0, 1]."""
        return [f.mean(dim=(2, 3)) for f in stage_features(self.encoder, (x - self.mean) / self.std, upto)]

    def final(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        h = pooled[-1] if self.clean_features == "last" else torch.cat([pooled[s] for s in self.stages], 1)
        return self.final_head(h)

    def forward(self, clean: torch.Tensor, other: list[torch.Tensor | None], phases: list[int],
                touch_all: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Embedding pairs [(z_a [B, D], z_b [B, D]) per phase].

        ``other``: K + 1 tensors [B, 3, S, S] (None for phases not asked for): jigsaw_k(v1) for phase k < K and
        v1 itself for the final phase K; ``clean`` = v2, the other side of every pair. ``touch_all`` adds
        0 x every parameter: parameters a phase does not use (deeper stages, other heads) get a zero gradient
        instead of none, so DDP (no unused-parameter search) works, and one process takes exactly the same
        optimiser steps as DDP (AdamW keeps moving them by momentum, as with zeroed rather than None grads).
        """
        B = clean.shape[0]
        out = []
        if len(phases) == 1:                                  # one phase: views batched in one pass
            k = phases[0]
            both = torch.cat([other[k], clean])               # [2B, 3, S, S]
            if k < len(self.granularities):
                h = self.pooled(both, self.stages[k])[self.stages[k]]
                z = self.heads[k](h)
            else:
                z = self.final(self.pooled(both, -1))
            out.append((z[:B], z[B:]))
        else:                                                 # joint: the clean view once, all stages
            clean_p = self.pooled(clean, -1)
            for k in phases:
                if k < len(self.granularities):
                    s = self.stages[k]
                    z = self.heads[k](torch.cat([self.pooled(other[k], s)[s], clean_p[s]]))
                else:
                    z = self.final([torch.cat([a, b]) for a, b in zip(self.pooled(other[-1], -1), clean_p)])
                out.append((z[:B], z[B:]))
        if touch_all:
            zero = sum(p.sum() for p in self.parameters()) * 0.0
            out[0] = (out[0][0] + zero, out[0][1])
        return out


@register_method("fgssl")
class FGSSL(ContrastiveMethod):
    help = "FG-SSL: hierarchical jigsaw views at matching encoder stages, Barlow Twins loss"
    description = (
        "Fine-grained SSL (Park & Ryu 2024): jigsaw views at several granularities (n x n blocks shuffled, "
        "fine to coarse) are matched to a clean view at increasingly deep encoder stages (pooled features + "
        "a projection head per stage), and two clean views at the final features; Barlow Twins loss "
        "(cross-correlation of standardised embeddings pushed to the identity). Progressive schedule: "
        "optimizer step t trains phase t mod (K + 1). Writes encoder.safetensors for fine-tuning.")
    default_pairs = "same_image"
    loss_name = "Barlow Twins"

    def default_options(self) -> dict:
        d = super().default_options()
        del d["temperature"]
        d.update({"proj_hidden": 2048, "proj_dim": 1024, "granularities": [8, 4, 2], "bt_lambda": 5e-3,
                  "schedule": "progressive", "clean_features": "last", "final_weight": 2.0})
        return d

    def add_method_arguments(self, g, d: dict) -> None:
        g.add_argument("--granularities", type=int, nargs="+", default=d["granularities"], metavar="N",
                       help="jigsaw blocks per side, one view each, paired fine->coarse with the last K encoder "
                            "stages shallow->deep (default %(default)s)")
        g.add_argument("--bt-lambda", type=float, default=d["bt_lambda"],
                       help="Barlow Twins off-diagonal weight lambda (default %(default)s)")
        g.add_argument("--schedule", choices=("progressive", "joint"), default=d["schedule"],
                       help="progressive: optimizer step t trains phase t mod (K+1) (the paper's order); "
                            "joint: all phases summed every step (default %(default)s)")
        g.add_argument("--clean-features", choices=("last", "concat"), default=d["clean_features"],
                       help="final phase features: pooled last stage (what fine-tuning uses) or the pooled "
                            "jigsaw stages concatenated (PMG) (default %(default)s)")
        g.add_argument("--final-weight", type=float, default=d["final_weight"],
                       help="weight of the clean-pair loss (default %(default)s)")

    def check_options(self, options: dict, config) -> None:
        super().check_options(options, config)
        ns = [int(n) for n in options["granularities"]]
        if not ns or len(set(ns)) != len(ns) or min(ns) < 1 or len(ns) > 4:
            raise ValueError(f"--granularities needs 1 to 4 distinct values >= 1, got {options['granularities']}")
        if max(ns) > config.image_size:
            raise ValueError(f"granularity {max(ns)} exceeds the image size {config.image_size}")
        options["granularities"] = sorted(ns, reverse=True)
        if config.batch_size < 3:
            raise ValueError("Barlow Twins needs --batch-size >= 3 (batch statistics)")

    def build(self, config) -> FGSSLModel:
        o = config.options
        model = FGSSLModel(build_encoder(config), list(o["granularities"]), proj_hidden=int(o["proj_hidden"]),
                           proj_dim=int(o["proj_dim"]), clean_features=o["clean_features"],
                           mean=config.mean, std=config.std)
        return model

    def phases(self, step: StepContext, n_phases: int) -> list[int]:
        if step.options["schedule"] == "joint":
            return list(range(n_phases))
        return [step.global_step % n_phases]

    def loss(self, model, batch: dict, step: StepContext):
        o = step.options
        ns = list(o["granularities"])
        K = len(ns)
        phases = self.phases(step, K + 1)
        v1, v2 = batch["view1"], batch["view2"]                                     # [B, 3, S, S]
        # others[k] = jigsaw_k(v1) (only for the phases trained now), others[K] = v1; v2 is the clean side
        others = [jigsaw_batch(v1, n, batch["index"], step, k) if k in phases else None for k, n in enumerate(ns)]
        others.append(v1)
        others = [t.to(step.device, non_blocking=True) if t is not None else None for t in others]
        clean = v2.to(step.device, non_blocking=True)
        with torch.autocast(step.device.type, dtype=step.autocast_dtype,
                            enabled=step.autocast_dtype is not None):
            pairs = model(clean, others, phases, touch_all=True)
        total = 0.0
        metrics: dict[str, float] = {"phase": float(phases[0]) if len(phases) == 1 else -1.0}
        on = off = 0.0
        for k, (za, zb) in zip(phases, pairs):
            lb, parts = barlow_twins_loss(za.float(), zb.float(), float(o["bt_lambda"]))
            weight = float(o["final_weight"]) if k == K else 1.0
            total = total + weight * lb
            on, off = on + parts["on_diag"], off + parts["off_diag"]
        metrics.update(on_diag=on, off_diag=off)
        return total, metrics
