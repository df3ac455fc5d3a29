"""SimCLR and MICLe (Azizi et al., ICCV 2021: "Big self-supervised models advance medical image classification").

Both train ``encoder`` (timm ConvNeXt, head and norm_pre removed, exactly what fine-tuning loads) + an MLP
projection head with the multi-positive NT-Xent loss (``core.pretrain.losses``; temperature 0.1, in-batch
negatives, gathered over DDP ranks). They differ only in the positive pairs (``--pairs``):

* ``simclr``: ``same_image``: two augmentations of one image; other images (even of the same case) are
  negatives, as in SimCLR.
* ``micle``: ``same_case``: view 1 of image i, view 2 of another image of i's case (single-image cases and
  images without a case id fall back to two views of one image). All views of one case that meet in a
  batch are positives of each other (multi-positive numerator), never negatives.

Shapes: B images per (local) batch, 2B views, S image side, C encoder width, D projection width.
Views come from ``core.pretrain.pairs.PairedViews`` (data set kind ``"pairs"``) with the SimCLR chain of
``core.pretrain.augment``. ``ContrastiveMethod`` holds what SimCLR, MICLe, multimodal and FG-SSL share:
options, encoder, projection heads, the view chain, and LARS.

Optimiser: the shared trainer asks the method (``PretrainMethod.build_optimizer``): AdamW by default,
:class:`LARS` with ``--optimizer lars`` as in SimCLR.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from core.pretrain import PretrainMethod, StepContext, register_method
from core.pretrain.losses import multi_positive_nt_xent, nt_xent_metrics
from core.pretrain.pairs import RULES, list_pair_samplers

__all__ = ["ContrastiveMethod", "SimCLR", "MICLe", "ContrastiveModel", "build_encoder", "projector",
           "stage_features", "LARS", "GlobalBatchNorm1d"]


# -- model pieces -----------------------------------------------------------------------------------------
def build_encoder(config) -> nn.Module:
    """timm ConvNeXt of ``config`` without classifier head and norm_pre (keys = what fine-tuning loads)."""
    from core.models.backbones import create_backbone

    encoder = create_backbone(config.backbone, **config.timm_kwargs)
    encoder.reset_classifier(0)
    encoder.head = nn.Identity()       # never used here: no unused parameters (DDP), not in encoder.safetensors
    encoder.norm_pre = nn.Identity()
    return encoder


def stage_features(encoder: nn.Module, x: torch.Tensor, upto: int = -1) -> list[torch.Tensor]:
    """Outputs of stages 0..upto of a timm ConvNeXt: [B, C_i, S / s_i, S / s_i] (s_i = 4, 8, 16, 32)."""
    n = len(encoder.stages)
    upto = upto % n
    feats, y = [], encoder.stem(x)
    for stage in encoder.stages[:upto + 1]:
        y = stage(y)
        feats.append(y)
    return feats


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics cover the global batch under DDP, on CPU (gloo) and CUDA.

    (torch's SyncBatchNorm is CUDA-only.) Local sums are all-reduced differentiably, so N processes compute
    what one process computes on the whole batch, with the same formula (sums, then E[x^2] - E[x]^2) in
    both cases; state-dict keys are BatchNorm1d's; evaluation mode is plain BatchNorm1d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dist = torch.distributed
        xf = x.float()
        n = xf.new_tensor([float(xf.shape[0])])
        stats = torch.cat([xf.sum(0), (xf * xf).sum(0), n])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            import torch.distributed.nn.functional as dist_fn
            stats = dist_fn.all_reduce(stats)
        c = xf.shape[1]
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c:2 * c] / total - mean * mean).clamp_min(0)
        out = (xf - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                unbiased = var * total / (total - 1).clamp_min(1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
                self.num_batches_tracked.add_(1)
        return out.to(x.dtype)


def projector(in_dim: int, hidden: int, out: int, layers: int = 2, last_bias: bool = True) -> nn.Sequential:
    """MLP head: (Linear -> BatchNorm1d -> ReLU) x (layers - 1) -> Linear (SimCLR: 2 layers; Barlow: 3).
    The BatchNorm is :class:`GlobalBatchNorm1d` (global batch statistics under DDP). ``last_bias=False``
    for losses that standardise each dimension over the batch (Barlow Twins): the bias could not matter,
    its gradient is float noise, and AdamW would turn that noise into steps."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden, bias=False), GlobalBatchNorm1d(hidden), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, out, bias=last_bias))
    return nn.Sequential(*mods)


class ContrastiveModel(nn.Module):
    """``encoder`` + global average pool + projection head. Input images in [0, 1], normalised inside."""

    def __init__(self, encoder: nn.Module, *, proj_hidden: int, proj_dim: int, layers: int = 2,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        super().__init__()
        self.encoder = encoder
        self.head = projector(encoder.num_features, proj_hidden, proj_dim, layers)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, 3, S, S] in [0, 1] -> pooled encoder features h [N, C]."""
        return self.encoder.forward_features((x - self.mean) / self.std).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, 3, S, S] in [0, 1] -> projections z [N, D] (not normalised; the loss does that)."""
        return self.head(self.embed(x))


# -- LARS -------------------------------------------------------------------------------------------------
class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al. 2017), SimCLR's variant.

    Per parameter of a group with ``weight_decay > 0``: g <- g + wd * w; g <- g * eta * ||w|| / ||g||
    (when both norms are > 0); buf <- momentum * buf + g; w <- w - lr * buf. Groups with weight decay 0
    (biases, norms, layer scales: the trainer's no-decay group) are neither decayed nor adapted, as in
    SimCLR and BYOL.
    """

    def __init__(self, params, lr: float = 0.3, momentum: float = 0.9, weight_decay: float = 1e-6,
                 eta: float = 1e-3):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, eta, mom = group["weight_decay"], group["eta"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd > 0:
                    g = g.add(p, alpha=wd)
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    g = g * ratio
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = g.clone()
                else:
                    buf.mul_(mom).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss


# -- the shared method class --------------------------------------------------------------------------------
class ContrastiveMethod(PretrainMethod):
    """Options, views, encoder/heads and optimiser shared by simclr, micle, multimodal and fgssl."""

    dataset = "pairs"
    default_pairs = "same_image"
    loss_name = "NT-Xent"

    def default_options(self) -> dict:
        return {"pairs": self.default_pairs, "temperature": 0.1, "proj_hidden": 2048, "proj_dim": 128,
                "crop_min": 0.2, "jitter": 0.4, "blur_p": 0.5, "optimizer": "adamw", "lars_eta": 1e-3}

    def add_arguments(self, parser) -> None:
        d = self.default_options()
        g = parser.add_argument_group(f"{self.name}: pairs, views, head, loss")
        g.add_argument("--pairs", choices=list_pair_samplers(), default=d["pairs"],
                       help="positive pairs: same_image (two views of one image), same_case (two images of "
                            "one case; falls back to same_image), same_case_other_modality (falls back to "
                            "same_case, then same_image). Case and modality come from manifest.csv or DICOM "
                            "tags (default %(default)s)")
        if "temperature" in d:
            g.add_argument("--temperature", type=float, default=d["temperature"],
                           help="NT-Xent temperature (default %(default)s)")
        g.add_argument("--proj-hidden", type=int, default=d["proj_hidden"],
                       help="projection head hidden width (default %(default)s)")
        g.add_argument("--proj-dim", type=int, default=d["proj_dim"],
                       help="projection (embedding) width (default %(default)s)")
        g.add_argument("--crop-min", type=float, default=d["crop_min"],
                       help="random resized crop: smallest area fraction (default %(default)s)")
        g.add_argument("--jitter", type=float, default=d["jitter"],
                       help="brightness/contrast (and, for colour images, saturation) strength "
                            "(default %(default)s)")
        g.add_argument("--blur-p", type=float, default=d["blur_p"],
                       help="probability of Gaussian blur per view (default %(default)s)")
        g.add_argument("--optimizer", choices=("adamw", "lars"), default=d["optimizer"],
                       help="adamw (shared trainer) or lars (SGD + layer-wise trust ratio; with LARS give a "
                            "larger --lr, e.g. 0.3 x batch / 256, and --weight-decay 1e-6) (default %(default)s)")
        g.add_argument("--lars-eta", type=float, default=d["lars_eta"],
                       help="LARS trust coefficient (default %(default)s)")
        self.add_method_arguments(g, d)

    def add_method_arguments(self, group, defaults: dict) -> None:
        """Extra options of a subclass (same argument group)."""

    def check_options(self, options: dict, config) -> None:
        if options["pairs"] not in list_pair_samplers():
            raise ValueError(f"--pairs must be one of {', '.join(list_pair_samplers())}, got {options['pairs']!r}")
        if "temperature" in options and not options["temperature"] > 0:
            raise ValueError(f"--temperature must be > 0, got {options['temperature']}")
        if not 0.0 < options["crop_min"] <= 1.0:
            raise ValueError(f"--crop-min must be in (0, 1], got {options['crop_min']}")
        if min(options["proj_hidden"], options["proj_dim"]) < 1:
            raise ValueError("--proj-hidden and --proj-dim must be >= 1")
        if options["optimizer"] not in ("adamw", "lars"):
            raise ValueError(f"--optimizer must be adamw or lars, got {options['optimizer']!r}")
        if config.batch_size < 2:
            raise ValueError("contrastive pretraining needs --batch-size >= 2 (in-batch negatives)")

    def build_optimizer(self, param_groups: list[dict], config) -> torch.optim.Optimizer:
        """AdamW (as the trainer) or LARS, over the trainer's decay / no-decay parameter groups."""
        o = config.options
        if o.get("optimizer", "adamw") == "lars":
            return LARS(param_groups, lr=config.lr, eta=float(o.get("lars_eta", 1e-3)))
        return torch.optim.AdamW(param_groups, lr=config.lr, betas=tuple(config.betas))

    def view_ops(self, config):
        from core.pretrain.augment import simclr_ops

        o = config.options
        return simclr_ops(config.image_size, crop_scale=(float(o["crop_min"]), 1.0), blur_p=float(o["blur_p"]),
                          strength=float(o["jitter"]), hflip_p=0.5 if config.hflip else 0.0)

    def make_augment(self, config, dataset, ctx=None):
        """The per-view augmentation of the ``pairs`` data set (called once the images are loaded)."""
        return self.view_ops(config)

    def build(self, config) -> nn.Module:
        o = config.options
        model = ContrastiveModel(build_encoder(config), proj_hidden=int(o["proj_hidden"]),
                                 proj_dim=int(o["proj_dim"]), mean=config.mean, std=config.std)
        return model

    @staticmethod
    def rule_metrics(batch: dict) -> dict[str, float]:
        """Fraction of this batch's pairs made by each rule (fallbacks show up here)."""
        rule = batch["rule"]
        return {f"pairs_{name}": float((rule == i).float().mean()) for i, name in enumerate(RULES)}

    def loss(self, model, batch: dict, step: StepContext):
        o = step.options
        views = torch.cat([batch["view1"], batch["view2"]]).to(step.device, non_blocking=True)   # [2B, 3, S, S]
        groups = batch["group"].repeat(2).to(step.device)                                       # [2B]
        with torch.autocast(step.device.type, dtype=step.autocast_dtype,
                            enabled=step.autocast_dtype is not None):
            z = model(views)                                                                    # [2B, D]
        loss = multi_positive_nt_xent(z.float(), groups, float(o["temperature"]))
        return loss, {**nt_xent_metrics(z.detach(), groups), **self.rule_metrics(batch)}


@register_method("simclr")
class SimCLR(ContrastiveMethod):
    help = "SimCLR: NT-Xent between two augmented views of each image (in-batch negatives)"
    description = (
        "Contrastive pretraining (Chen et al. 2020) of a timm ConvNeXt encoder: two SimCLR-augmented views "
        "of every image (random resized crop, flip, brightness/contrast, colour jitter and grey only for "
        "colour images, blur), a projection head, NT-Xent with in-batch negatives (temperature 0.1). "
        "Writes encoder.safetensors for `medssl finetune --init-weights`.")
    default_pairs = "same_image"


@register_method("micle")
class MICLe(SimCLR):
    help = "MICLe: SimCLR whose positives are two images of the same patient case (multi-positive NT-Xent)"
    description = (
        "Multi-Instance Contrastive Learning (Azizi et al. 2021): positive pairs are two different images of "
        "the same case (case_id from manifest.csv or DICOM PatientID); a case with one image falls back to two "
        "views of that image. All images of one case in a batch are positives of each other. Otherwise as "
        "simclr.")
    default_pairs = "same_case"
