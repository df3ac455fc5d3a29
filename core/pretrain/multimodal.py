"""Multimodal contrastive learning with domain-adaptive denormalization (DAD) (Wen et al., J. Biomed. Eng.
2023, doi 10.7507/1001-5515.202302050), on a timm ConvNeXt.

Positives: ``same_case_other_modality`` (two images of one patient case in different modalities; falls back
to ``same_case``, then to two views of one image). All views of one case in a batch are positives of each
other. Loss: multi-positive NT-Xent with in-batch negatives (as ``simclr``/``micle``; temperature 0.1).

Views: the SimCLR chain, then DAD with probability ``--dad-p`` per view (``core.pretrain.augment``):
``x' = sigma_t * (x - mu_s) / sigma_s + mu_t``. The paper does not publish its formula; we take the
AdaIN-style reading: the view is normalised with its own statistics (``--dad-source image``; or its
modality's, ``modality``) and de-normalised with the statistics of a *different* modality drawn at random,
so the encoder sees each image "as if" acquired in another domain and must not rely on a modality's
intensity signature to match the pair. With probability ``--dad-mix`` the target statistics are a random
convex mix of source and target (intermediate domains). Why own statistics by default: the output then has
exactly the target modality's mean and std whatever the image's own brightness (a modality's mean would
carry an unusually bright image's offset over). The per-modality (mu, sigma) are pooled over all pixels of
that modality's training-size images, computed once per data set (keyed by the images' content hashes,
modalities and the image size) and cached in the per-user cache folder (``core.paths.user_cache_dir()
/dad``; the image folder is never written).

With a single modality (e.g. BUSI) DAD maps every view onto that modality's statistics (an intensity
standardisation augmentation) and the pairs fall back as above; the run log says so.
"""

from __future__ import annotations

import hashlib

from core.pretrain import register_method
from core.pretrain.simclr import ContrastiveMethod

__all__ = ["Multimodal", "dad_stats_for", "dad_cache_file"]


def _stats_key(dataset) -> str:
    h = hashlib.sha256(f"dad-stats/1 size={dataset.size}\n".encode())
    for content, modality in sorted(zip(dataset.content_hashes, (m or "" for m in dataset.modalities))):
        h.update(f"{content}\t{modality}\n".encode())
    return h.hexdigest()


def dad_cache_file(key: str):
    from core.paths import user_cache_dir

    return user_cache_dir() / "dad" / f"{key[:32]}.json"


def dad_stats_for(dataset, ctx=None):
    """Per-modality intensity statistics of a ``PairedViews`` data set (computed once, then cached)."""
    from core.pretrain.augment import compute_modality_stats, modality_stats_cached

    key = _stats_key(dataset)
    return modality_stats_cached(dad_cache_file(key), key, lambda: compute_modality_stats(dataset.modality_items()))


@register_method("multimodal")
class Multimodal(ContrastiveMethod):
    help = "multimodal contrastive: positives are other modalities of the same case, with DAD augmentation"
    description = (
        "Contrastive pretraining whose positive pairs are images of the same case in different modalities "
        "(falls back to same case, then same image), with domain-adaptive denormalization: a view is "
        "re-normalised to another modality's intensity mean/std (x' = sigma_t (x - mu_s) / sigma_s + mu_t; "
        "per-modality statistics computed once and cached). Multi-positive NT-Xent, temperature 0.1. "
        "Writes encoder.safetensors for fine-tuning.")
    default_pairs = "same_case_other_modality"

    def default_options(self) -> dict:
        d = super().default_options()
        d.update({"dad_p": 0.5, "dad_source": "image", "dad_mix": 0.5})
        return d

    def add_method_arguments(self, g, d: dict) -> None:
        g.add_argument("--dad-p", type=float, default=d["dad_p"],
                       help="probability of domain-adaptive denormalization per view; 0 = off (default %(default)s)")
        g.add_argument("--dad-source", choices=("image", "modality"), default=d["dad_source"],
                       help="normalise a view with its own statistics or its modality's (default %(default)s)")
        g.add_argument("--dad-mix", type=float, default=d["dad_mix"],
                       help="probability that the target statistics are a random mix of source and target "
                            "(default %(default)s)")

    def check_options(self, options: dict, config) -> None:
        super().check_options(options, config)
        for key in ("dad_p", "dad_mix"):
            if not 0.0 <= float(options[key]) <= 1.0:
                raise ValueError(f"--{key.replace('_', '-')} must be in [0, 1], got {options[key]}")

    def make_augment(self, config, dataset, ctx=None):
        from core.pretrain.augment import Compose, DomainAdaptiveDenorm

        o = config.options
        ops = self.view_ops(config)
        if float(o["dad_p"]) <= 0:
            return ops
        stats = dad_stats_for(dataset, ctx)
        if ctx is not None:
            ctx.log("DAD statistics: " + ", ".join(f"{m}: mean {s.mean:.4f} std {s.std:.4f}"
                                                  for m, s in sorted(stats.items())))
            if len(stats) < 2:
                ctx.log("only one modality: DAD maps each view onto that modality's own statistics")
        return Compose([*ops.ops, DomainAdaptiveDenorm(stats, p=float(o["dad_p"]), source=o["dad_source"],
                                                       mix_p=float(o["dad_mix"]))])
