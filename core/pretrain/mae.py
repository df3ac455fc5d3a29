"""Entropy-guided masked autoencoder for a timm ConvNeXt, SparK-style (masked dense convolution); a timm
EfficientNet-Lite encoder is masked the same way by ``core.pretrain.masked_cnn``.

Shapes: B batch, S image side, c = cell = 32 = the encoder's total stride, h = w = S / c cells per side,
L = h * w cells, C_i channels of stage i (strides 4, 8, 16, 32). ``mask``: bool [B, h, w], True = hidden
(removed), False = visible; ``keep = ~mask``.

Encoder (``masked_features``): a ConvNet cannot drop tokens, so hidden cells are emulated as holes:
  1. the input pixels of hidden cells are set to 0 (so nothing downstream can depend on them at all);
  2. the mask is upsampled (nearest) to each resolution and hidden positions are zeroed after the stem,
     after every stage's downsampling layer and after every block. The depthwise 7x7 convolution of a
     block spreads visible features into hidden positions; re-zeroing after each block keeps the holes
     empty, so every visible position sees exactly what a sparse convolution over the visible cells
     would see (hidden neighbours contribute 0).
  Normalisation: ConvNeXt's norms (stem LayerNorm2d, downsample LayerNorm2d, block LayerNorm) normalise
  each position over its channels only. They never mix positions, so a hidden position cannot change a
  visible one through them, and no masked variant is needed. ConvNeXt-V2's GRN *does* mix positions (a
  global L2 norm over H, W); here it is replaced, during masked forwards only, by a masked GRN whose
  norm runs over visible positions (as FCMAE's sparse GRN). Its parameters are the same tensors, so the
  encoder's state dict is unchanged.
Decoder (``LightDecoder``, SparK's light UNet): each stage's features are "densified" (per-position
LayerNorm, hidden positions filled with a learned mask token of that scale, 3x3 conv to the decoder
width of that scale) and added to the decoder stream at their scale; one up-sampling block per scale
(stride 32 -> 16 -> 8 -> 4 -> 2 -> 1; a 2x2 transposed conv and two 3x3 convs, see ``UpBlock``), then a
1x1 conv to pixels. Default width: the encoder's last-stage width, at most 512.
Loss: MSE between prediction and per-cell-normalised pixels ((x - mean) / sqrt(var + eps) over the
c x c x 3 values of a cell), averaged over hidden cells of each image, then over images.

Collapse (ConvNeXt-V1 can collapse under masked pretraining; GRN in V2 is the fix): the shared trainer
logs the encoder's feature std and effective rank on a fixed probe batch every epoch (``log.jsonl``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d
from timm.layers.grn import GlobalResponseNorm

from core.analysis.masking import DEFAULT_EPS, DEFAULT_RATIO, DEFAULT_TAU, MODES, mask_weights, num_masked, sample_mask
from core.pretrain import PretrainMethod, StepContext, register_method
from core.pretrain.masked_cnn import STAGE_STRIDES, check_maskable, freeze_batchnorm_statistics, is_block_cnn, \
    masked_block_features

MASK_SALT = 2
CELL = 32     # mask cell = ConvNeXt total stride


# -- masks --------------------------------------------------------------------------------------------
def keep_at(keep: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """keep [B, h, w] bool -> float [B, 1, H, W] (nearest upsampling by the integer factor H / h)."""
    B, h, w = keep.shape
    fy, fx = size[0] // h, size[1] // w
    assert fy * h == size[0] and fx * w == size[1], f"{size} is not a multiple of the mask grid {(h, w)}"
    return keep[:, None].repeat_interleave(fy, 2).repeat_interleave(fx, 3).float()


def _keep_cache(keep: torch.Tensor):
    """keep [B, h, w] -> a function giving keep [B, 1, H, W] at a tensor's resolution and dtype (upsampled once
    per resolution)."""
    cache: dict[tuple[int, int], torch.Tensor] = {}

    def keep_like(t: torch.Tensor) -> torch.Tensor:
        size = (t.shape[-2], t.shape[-1])
        if size not in cache:
            cache[size] = keep_at(keep, size)
        return cache[size].to(t.dtype)

    return keep_like


# -- masked encoder -----------------------------------------------------------------------------------
def _masked_grn(grn: GlobalResponseNorm, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """GRN whose global L2 norm runs over visible positions only (keep broadcast to x's layout)."""
    x_g = (x * keep).norm(p=2, dim=grn.spatial_dim, keepdim=True)
    x_n = x_g / (x_g.mean(dim=grn.channel_dim, keepdim=True) + grn.eps)
    return x + torch.addcmul(grn.bias.view(grn.wb_shape), grn.weight.view(grn.wb_shape), x * x_n)


def _block(block: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """One ConvNeXt block on x [B, C, H, W]; keep [B, 1, H, W]. Same maths as timm's ConvNeXtBlock.forward
    except a masked GRN (V2). Blocks without GRN run timm's own forward."""
    grn = getattr(block.mlp, "grn", None)
    if not isinstance(grn, GlobalResponseNorm):
        return block(x)
    shortcut = x
    x = block.conv_dw(x)
    channels_last = not block.use_conv_mlp
    if channels_last:
        x = x.permute(0, 2, 3, 1)                                     # [B, H, W, C]
        k = keep.permute(0, 2, 3, 1)                                  # [B, H, W, 1]
    else:
        k = keep
    x = block.norm(x)
    m = block.mlp
    x = m.drop1(m.act(m.fc1(x)))
    x = m.drop2(m.fc2(_masked_grn(m.grn, x, k)))
    if channels_last:
        x = x.permute(0, 3, 1, 2)
    if block.gamma is not None:
        x = x.mul(block.gamma.reshape(1, -1, 1, 1))
    return block.drop_path(x) + block.shortcut(shortcut)


def masked_features(encoder: nn.Module, x: torch.Tensor, mask: torch.Tensor | None,
                    zero_input: bool = True) -> list[torch.Tensor]:
    """Sparse features of a timm ConvNeXt (or EfficientNet, ``core.pretrain.masked_cnn``): x [B, 3, S, S]
    (normalised), mask [B, h, w] bool (True = hidden).

    Returns the 4 stage outputs [B, C_i, S / s_i, S / s_i] (s_i = 4, 8, 16, 32), zero at hidden positions.
    ``mask=None`` is the plain dense forward (same numbers as timm's ``forward_features`` minus norm_pre).
    ``zero_input=False`` is only for tests of the per-stage masking.
    """
    if is_block_cnn(encoder):      # its stem's input is zeroed like every spatial convolution's
        return masked_block_features(encoder, x, None if mask is None else _keep_cache(~mask))
    if mask is None:
        feats, y = [], encoder.stem(x)
        for stage in encoder.stages:
            y = stage(y)
            feats.append(y)
        return feats
    k = _keep_cache(~mask)
    if zero_input:
        x = x * k(x)                                                  # [B, 3, S, S]
    y = encoder.stem(x)
    y = y * k(y)                                                      # [B, C_0, S/4, S/4]
    feats = []
    for stage in encoder.stages:
        y = stage.downsample(y)
        y = y * k(y)                                                  # [B, C_i, S/s_i, S/s_i]
        for block in stage.blocks:
            y = _block(block, y, k(y))
            y = y * k(y)
        feats.append(y)
    return feats


# -- decoder ------------------------------------------------------------------------------------------
class UpBlock(nn.Module):
    """x2 up-sampling (2x2 transposed conv, cin -> cout), then conv3x3-LN-GELU-conv3x3-LN-GELU.

    Lighter than SparK's block (4x4 transposed conv at cin, 3x3 convs at cin), about 6x fewer operations
    at the same width, so a CPU run is not dominated by the decoder. LayerNorm per position, not
    BatchNorm: no batch statistics, so DDP equals one process."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2, bias=True)
        self.conv = nn.Sequential(
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), LayerNorm2d(cout), nn.GELU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), LayerNorm2d(cout), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x))


class LightDecoder(nn.Module):
    """SparK's light UNet decoder: widths w, w/2, ..., w/32 at strides 32 ... 1 (at least ``min_width``)."""

    def __init__(self, width: int, n_up: int = 5, out_chans: int = 3, min_width: int = 8):
        super().__init__()
        self.widths = [max(width // 2 ** i, min_width) for i in range(n_up + 1)]
        self.blocks = nn.ModuleList(UpBlock(self.widths[i], self.widths[i + 1]) for i in range(n_up))
        self.proj = nn.Conv2d(self.widths[-1], out_chans, kernel_size=1)

    def forward(self, to_dec: list[torch.Tensor]) -> torch.Tensor:
        """to_dec: densified features, deepest first ([B, w, S/32, S/32], [B, w/2, S/16, S/16], ...)."""
        x = 0
        for i, block in enumerate(self.blocks):
            if i < len(to_dec):
                x = x + to_dec[i]
            x = block(x)
        return self.proj(x)                                           # [B, out, S, S]


# -- model --------------------------------------------------------------------------------------------
def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, S, S] -> [B, L, p*p*C] (cells in row-major order)."""
    B, C, H, W = x.shape
    h, w = H // p, W // p
    x = x.reshape(B, C, h, p, w, p).permute(0, 2, 4, 3, 5, 1)         # [B, h, w, p, p, C]
    return x.reshape(B, h * w, p * p * C)


def unpatchify(x: torch.Tensor, p: int, h: int, w: int, C: int = 3) -> torch.Tensor:
    """[B, L, p*p*C] -> [B, C, h*p, w*p]."""
    B = x.shape[0]
    x = x.reshape(B, h, w, p, p, C).permute(0, 5, 1, 3, 2, 4)         # [B, C, h, p, w, p]
    return x.reshape(B, C, h * p, w * p)


class MaskedAutoencoder(nn.Module):
    """``encoder`` (timm ConvNeXt or EfficientNet without head) + densifiers + light decoder. Input images in
    [0, 1]."""

    def __init__(self, encoder: nn.Module, *, decoder_width: int = 512, cell: int = CELL,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), norm_pix_eps: float = 1e-6):
        super().__init__()
        info = [f for f in encoder.feature_info if f["reduction"] in STAGE_STRIDES]
        strides = [f["reduction"] for f in info]
        if strides != list(STAGE_STRIDES) or cell != 32:
            raise ValueError(f"the MAE needs an encoder with stage strides 4, 8, 16, 32 and cell 32, "
                             f"got strides {strides}, cell {cell}")
        if is_block_cnn(encoder):
            check_maskable(encoder)
        self.encoder = encoder
        self.cell, self.norm_pix_eps = cell, norm_pix_eps
        dims = [f["num_chs"] for f in info]                           # C_0..C_3
        self.decoder = LightDecoder(decoder_width, n_up=5, out_chans=3)
        dec_w = self.decoder.widths[:4][::-1]                         # width at strides 4, 8, 16, 32
        self.densify_norms = nn.ModuleList(LayerNorm2d(c) for c in dims)
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, c, 1, 1)) for c in dims)
        self.densify_projs = nn.ModuleList(
            nn.Conv2d(c, d, kernel_size=1 if i == 3 else 3, padding=0 if i == 3 else 1)
            for i, (c, d) in enumerate(zip(dims, dec_w)))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._init_decoder()

    def _init_decoder(self) -> None:
        for p in self.mask_tokens:
            nn.init.trunc_normal_(p, std=0.02)
        for mod in [self.decoder, self.densify_projs]:
            for m in mod.modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def train(self, mode: bool = True) -> "MaskedAutoencoder":
        """BatchNorm would mix hidden positions into visible ones through its batch statistics: kept in eval."""
        super().train(mode)
        freeze_batchnorm_statistics(self.encoder)
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def predict(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """images [B, 3, S, S] in [0, 1], mask [B, h, w] (True = hidden) -> prediction [B, 3, S, S]
        in per-cell-normalised pixel units."""
        feats = masked_features(self.encoder, self.normalize(images), mask)
        to_dec = []
        for i in (3, 2, 1, 0):                                        # deepest first
            f = self.densify_norms[i](feats[i])                       # [B, C_i, S/s_i, S/s_i]
            keep = keep_at(~mask, f.shape[-2:]).to(f.dtype)           # [B, 1, S/s_i, S/s_i]
            f = f * keep + self.mask_tokens[i].to(f.dtype) * (1 - keep)
            to_dec.append(self.densify_projs[i](f))
        return self.decoder(to_dec)

    def target(self, images: torch.Tensor) -> torch.Tensor:
        """Per-cell-normalised pixels [B, L, c*c*3] of images [B, 3, S, S] in [0, 1]."""
        t = patchify(images.float(), self.cell)
        mean = t.mean(dim=-1, keepdim=True)
        var = t.var(dim=-1, keepdim=True, unbiased=False)
        return (t - mean) / (var + self.norm_pix_eps).sqrt()

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-cell MSE [B, L] (all cells; the loss keeps the hidden ones) and the prediction [B, 3, S, S].
        The loss is computed inside forward so that a DDP wrapper sees the whole graph."""
        pred = self.predict(images, mask)
        err = (patchify(pred.float(), self.cell) - self.target(images)).pow(2).mean(dim=-1)  # [B, L]
        return err, pred


def grey_batch_to(images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``images`` [B, 3, S, S] on ``device``. The collate's batch is one grey channel expanded to 3 (a
    stride-0 view): copy that channel and expand on the device, a third of the bytes ``.to`` of the view moves."""
    if images.shape[1] == 3 and images.stride(1) == 0:
        return images[:, :1].to(device, non_blocking=True).expand(-1, 3, -1, -1)
    return images.to(device, non_blocking=True)


def masked_mean(cell_loss: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over the weighted cells of each image [B, L] -> [B] (0 where an image has none)."""
    return (cell_loss * weight).sum(1) / weight.sum(1).clamp_min(1)


# -- method -------------------------------------------------------------------------------------------
@register_method("mae")
class MAE(PretrainMethod):
    dataset = "images"
    help = "masked autoencoder (SparK-style masked ConvNeXt or EfficientNet-Lite) with entropy-guided masks"
    description = (
        "Pretrain a timm ConvNeXt or EfficientNet-Lite encoder as a masked autoencoder on unlabeled images. Cells of 32x32 px "
        "are hidden (default 60 %, preferring high-entropy cells), the encoder sees only the visible cells "
        "(masked dense convolution) and a light UNet decoder predicts the hidden pixels "
        "(MSE on per-cell-normalised pixels of hidden cells).")
    # (dataset options read by core.pretrain.data: entropy_source, entropy_bins)

    def add_arguments(self, parser) -> None:
        d = self.default_options()
        g = parser.add_argument_group("masked autoencoder")
        g.add_argument("--mask-ratio", type=float, default=d["mask_ratio"],
                       help="fraction of 32x32 cells hidden per image (default %(default)s)")
        g.add_argument("--entropy-mode", choices=MODES, default=d["entropy_mode"],
                       help="which cells the sampler prefers to hide: 'high' entropy (default), 'low', or "
                            "'random' (uniform, entropy ignored)")
        g.add_argument("--tau", type=float, default=d["tau"],
                       help="entropy sampler temperature: smaller = more strictly by entropy (default %(default)s)")
        g.add_argument("--eps", type=float, default=d["eps"],
                       help="entropy sampler uniform mix in [0, 1]; 1 = uniform random masks (default %(default)s)")
        g.add_argument("--entropy-bins", type=int, default=d["entropy_bins"],
                       help="grey-level histogram bins for the cell entropy (default %(default)s)")
        g.add_argument("--entropy-source", choices=("cached", "batch"), default=d["entropy_source"],
                       help="compute cell entropy once per image at start-up (cached, default) or on every batch")
        g.add_argument("--decoder-width", type=int, default=d["decoder_width"],
                       help="decoder channels at stride 32, halved at each up-sampling (default: the encoder's "
                            "last-stage width, at most 512: 320 for convnext_atto, 512 for convnext_tiny)")
        g.add_argument("--norm-pix-eps", type=float, default=d["norm_pix_eps"],
                       help="eps in the per-cell pixel normalisation of the target (default %(default)s)")

    def default_options(self) -> dict:
        return {"mask_ratio": DEFAULT_RATIO, "entropy_mode": "high", "tau": DEFAULT_TAU, "eps": DEFAULT_EPS,
                "entropy_bins": 64,
                "entropy_source": "cached", "decoder_width": None, "norm_pix_eps": 1e-6}

    def check_options(self, options: dict, config) -> None:
        if not 0.0 < options["mask_ratio"] < 1.0:
            raise ValueError(f"--mask-ratio must be in (0, 1), got {options['mask_ratio']}")
        L = (config.image_size // config.cell) ** 2
        n = num_masked(L, options["mask_ratio"])
        if n < 1 or n >= L:
            raise ValueError(f"mask ratio {options['mask_ratio']} hides {n} of {L} cells at "
                             f"{config.image_size} px; need at least one hidden and one visible cell")
        mask_weights(torch.zeros(1, 1, 1), options["tau"], options["eps"], options["entropy_mode"])  # validates
        if options.get("decoder_width") is None:   # resolved here so that the config records the number
            from core.models.backbones import create_backbone
            with torch.device("meta"):
                enc = create_backbone(config.backbone, **config.timm_kwargs)
            options["decoder_width"] = min(512, int(enc.feature_info[-1]["num_chs"]))

    def build(self, config) -> MaskedAutoencoder:
        from core.models.backbones import create_backbone

        o = config.options
        encoder = create_backbone(config.backbone, **config.timm_kwargs)
        encoder.reset_classifier(0)
        if is_block_cnn(encoder):
            # the MAE never uses the 1x1 head conv: frozen (no unused trainable parameters), exported unchanged
            for p in [*encoder.conv_head.parameters(), *encoder.bn2.parameters()]:
                p.requires_grad_(False)
        else:
            encoder.head = nn.Identity()      # the MAE never uses the classifier head: no unused parameters
            encoder.norm_pre = nn.Identity()
        return MaskedAutoencoder(encoder, decoder_width=int(o["decoder_width"]), cell=config.cell,
                           mean=config.mean, std=config.std, norm_pix_eps=float(o["norm_pix_eps"]))

    def sample_masks(self, batch: dict, step: StepContext, options: dict) -> torch.Tensor:
        """bool [B, h, w], True = hidden, one seeded generator per image (see StepContext.generator)."""
        if "entropy" in batch:
            ent = batch["entropy"]                                     # [B, h, w]
        elif options["entropy_mode"] == "random":
            B, S = batch["image"].shape[0], batch["image"].shape[-1]
            ent = torch.zeros(B, S // CELL, S // CELL)
        else:
            raise ValueError("entropy-guided masks need the batch's cell entropy (dataset entropy='none'?)")
        return torch.cat([
            sample_mask(ent[i:i + 1], ratio=float(options["mask_ratio"]), tau=float(options["tau"]),
                        eps=float(options["eps"]), mode=options["entropy_mode"],
                        generator=step.generator(int(idx), MASK_SALT))
            for i, idx in enumerate(batch["index"])])

    def loss(self, model, batch: dict, step: StepContext):
        o = step.options
        mask = self.sample_masks(batch, step, o)                        # [B, h, w]
        images = grey_batch_to(batch["image"], step.device)            # [B, 3, S, S]
        mask_d = mask.to(step.device)
        with torch.autocast(step.device.type, dtype=step.autocast_dtype,
                            enabled=step.autocast_dtype is not None):
            err, _ = model(images, mask_d)                             # [B, L]
        hidden = mask_d.flatten(1).float()                              # [B, L]
        loss = masked_mean(err, hidden).mean()
        metrics = {"visible_loss": float(masked_mean(err.detach(), 1 - hidden).mean())}
        if "entropy" in batch:
            ent = batch["entropy"].flatten(1)
            hid = mask.flatten(1).float()
            metrics["hidden_entropy"] = float(masked_mean(ent, hid).mean())
            metrics["visible_entropy"] = float(masked_mean(ent, 1 - hid).mean())
        return loss, metrics

