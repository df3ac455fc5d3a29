"""Entropy-guided MAE on ConvNeXt: no leakage from hidden cells, masked GRN, loss on hidden cells only,
masks, loss decrease, reconstruction panels and the CLI. Tiny ConvNeXt (core.models.backbones tiny=True), 64 px."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from timm.layers.grn import GlobalResponseNorm

from core.analysis.entropy import cell_entropy
from core.analysis.masking import sample_mask
from core.models.backbones import TINY_CONVNEXT, create_backbone
from core.pretrain import StepContext, get_method
from core.pretrain.mae import MaskedAutoencoder, _masked_grn, keep_at, masked_features, patchify
from core.pretrain.trainer import train
from core.pretrain.config import TrainConfig

TINY = {k: list(v) for k, v in TINY_CONVNEXT.items()}
BACKBONES = ["convnext_atto", "convnext_tiny", "convnextv2_atto", "convnextv2_tiny"]  # LN2d/LN, V1/V2 (GRN)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_mae(name="convnext_atto", width=32) -> MaskedAutoencoder:
    torch.manual_seed(0)
    enc = create_backbone(name, tiny=True)
    enc.head = torch.nn.Identity()
    return MaskedAutoencoder(enc, decoder_width=width).eval()


def with_hidden_pixels_changed(x: torch.Tensor, mask: torch.Tensor, seed=1) -> torch.Tensor:
    px = keep_at(mask, x.shape[-2:]).bool().expand_as(x)              # True on hidden pixels
    g = torch.Generator().manual_seed(seed)
    return torch.where(px, torch.rand(x.shape, generator=g) * 5 - 2.5, x)


@pytest.mark.parametrize("name,size", [(name, 128) for name in BACKBONES] + [("convnext_atto", 64)])
def test_no_leakage_from_hidden_cells(name, size):
    """Changing the pixels of hidden cells changes nothing at visible positions, at any stage."""
    model = tiny_mae(name)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, size, size, generator=g)
    h = size // 32
    mask = sample_mask(torch.rand(3, h, h, generator=g), ratio=0.5, generator=0)     # [B, h, w]
    x2 = with_hidden_pixels_changed(x, mask)
    with torch.no_grad():
        for zero_input in (True, False):   # False: the per-stage re-masking alone must hold it (patch stem)
            a = masked_features(model.encoder, x, mask, zero_input=zero_input)
            b = masked_features(model.encoder, x2, mask, zero_input=zero_input)
            for fa, fb in zip(a, b):
                vis = keep_at(~mask, fa.shape[-2:]).bool().expand_as(fa)
                assert torch.equal(fa[vis], fb[vis])
                assert fa[~vis].abs().max() == 0                       # hidden positions stay holes
        # the whole model (decoder included) predicts the same from the same visible pixels
        assert torch.equal(model.predict(x, mask), model.predict(x2, mask))
        # negative control: a dense forward does see the change at visible positions
        d1, d2 = masked_features(model.encoder, x, None)[-1], masked_features(model.encoder, x2, None)[-1]
        vis = keep_at(~mask, d1.shape[-2:]).bool().expand_as(d1)
        assert not torch.allclose(d1[vis], d2[vis])


def test_dense_path_is_timm_forward_features():
    model = tiny_mae("convnextv2_atto")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(masked_features(model.encoder, x, None)[-1], model.encoder.forward_features(x))


@pytest.mark.parametrize("channels_last", [False, True])
def test_masked_grn_uses_visible_positions_only(channels_last):
    torch.manual_seed(0)
    grn = GlobalResponseNorm(6, channels_last=channels_last)
    torch.nn.init.normal_(grn.weight)
    torch.nn.init.normal_(grn.bias)
    x = torch.randn(2, 6, 8, 8)
    keep = keep_at(torch.rand(2, 2, 2) > 0.5, (8, 8))                  # [B, 1, 8, 8]
    if channels_last:
        x, keep = x.permute(0, 2, 3, 1), keep.permute(0, 2, 3, 1)
    out = _masked_grn(grn, x, keep)
    ref = grn(x * keep)               # timm's GRN over an input whose hidden positions are zero
    vis = keep.bool().expand_as(x)
    assert torch.allclose(out[vis], ref[vis], atol=1e-6)
    assert not torch.allclose(grn(x)[vis], ref[vis])                   # the unmasked GRN would differ


def test_loss_counts_hidden_cells_only():
    """The gradient reaching the decoder's output is zero on visible cells, non-zero on hidden ones."""
    method = get_method("mae")
    model = tiny_mae().train()
    out = {}

    def keep_output(module, inputs, output):
        output.retain_grad()
        out["pred"] = output

    model.decoder.register_forward_hook(keep_output)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, 64, 64, generator=g).expand(-1, 3, -1, -1)
    batch = {"image": images, "entropy": cell_entropy(images[:, :1]), "index": torch.tensor([3, 7])}
    step = StepContext(epoch=0, global_step=0, total_steps=1, seed=0, device=torch.device("cpu"),
                       options=method.default_options())
    loss, metrics = method.loss(model, batch, step)
    loss.backward()
    mask = method.sample_masks(batch, step, step.options)
    grad = patchify(out["pred"].grad, 32).abs().sum(-1)                # [B, L]
    assert (grad[~mask.flatten(1)] == 0).all() and (grad[mask.flatten(1)] > 0).all()
    assert {"visible_loss", "hidden_entropy", "visible_entropy"} <= set(metrics)


def test_target_is_normalised_per_cell():
    model = tiny_mae()
    images = torch.rand(2, 1, 64, 64).expand(-1, 3, -1, -1) * 0.3 + 0.5
    t = model.target(images)                                           # [B, L, 32*32*3]
    assert t.shape == (2, 4, 32 * 32 * 3)
    assert torch.allclose(t.mean(-1), torch.zeros(2, 4), atol=1e-5)
    assert torch.allclose(t.std(-1, unbiased=False), torch.ones(2, 4), atol=1e-3)


def test_masks_follow_entropy_and_do_not_depend_on_the_batch():
    method = get_method("mae")
    opts = {**method.default_options(), "tau": 0.25, "eps": 0.0}
    ent = torch.rand(6, 4, 4) * 6
    batch = {"image": torch.zeros(6, 3, 128, 128), "entropy": ent, "index": torch.arange(10, 16)}
    step = StepContext(epoch=2, global_step=5, total_steps=9, seed=4, device=torch.device("cpu"), options=opts)
    masks = method.sample_masks(batch, step, opts)
    assert masks.shape == (6, 4, 4) and (masks.flatten(1).sum(1) == 10).all()     # round(0.6 * 16)
    assert ent[masks].mean() > ent[~masks].mean() + 1.0                # high-entropy cells hidden first
    half = {"image": batch["image"][3:], "entropy": ent[3:], "index": batch["index"][3:]}
    assert torch.equal(method.sample_masks(half, step, opts), masks[3:])           # per-sample seeding
    other_epoch = StepContext(epoch=3, global_step=5, total_steps=9, seed=4, device=torch.device("cpu"))
    assert not torch.equal(method.sample_masks(batch, other_epoch, {**method.default_options()}), masks)


def test_v2_grn_backbone_trains_a_step():
    method = get_method("mae")
    model = tiny_mae("convnextv2_atto").train()
    images = torch.rand(2, 1, 64, 64).expand(-1, 3, -1, -1)
    batch = {"image": images, "entropy": cell_entropy(images[:, :1]), "index": torch.tensor([0, 1])}
    step = StepContext(epoch=0, global_step=0, total_steps=1, seed=0, device=torch.device("cpu"),
                       options=method.default_options())
    loss, _ = method.loss(model, batch, step)
    loss.backward()
    grn = [p for n, p in model.named_parameters() if "grn" in n]
    assert grn and all(p.grad is not None and torch.isfinite(p.grad).all() for p in grn)


def _config(demo_dir, out, **kw):
    base = dict(method="mae", data=str(demo_dir), out=str(out), backbone="convnext_atto", timm_kwargs=TINY,
                image_size=64, epochs=3, batch_size=16, lr=2e-3, warmup_epochs=0.5, probe_size=16,
                options={"decoder_width": 32})
    base.update(kw)
    return TrainConfig(**base)


def test_loss_decreases_over_a_few_steps(demo_dir, tmp_path):
    result = train(_config(demo_dir, tmp_path / "run"))
    losses = [loss for _, loss in result["step_losses"]]
    assert len(losses) == 18
    assert np.mean(losses[-3:]) < 0.95 * np.mean(losses[:3])
    log = [json.loads(s) for s in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]
    assert all(line["feat_eff_rank"] > 1 and line["feat_std"] > 0 for line in log)   # collapse is visible here


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, demo_dir):
    out = tmp_path_factory.mktemp("mae") / "run"
    train(_config(demo_dir, out, epochs=1))
    return out


def test_reconstruct_gives_five_views(trained_run, demo_dir):
    from core.analysis.reconstruct import VIEW_TITLES, load_mae, panel_image, reconstruct

    model, config = load_mae(trained_run)
    paths = sorted((demo_dir / "malignant").glob("*_0.png"))[:2]
    recs = reconstruct(model, config, paths, seed=3)
    assert len(recs) == 2
    rec = recs[0]
    views = rec.views()
    assert len(views) == len(VIEW_TITLES) and all(v.shape == (64, 64, 3) and v.dtype == np.uint8 for v in views)
    assert rec.mask.shape == (2, 2) and rec.mask.sum() == 2
    vis = ~rec.cell_mask()
    assert np.array_equal(rec.pasted[vis], rec.original[vis])
    assert not np.array_equal(rec.pasted[~vis], rec.original[~vis])
    assert np.isfinite(rec.masked_loss) and rec.masked_loss > 0
    panel = panel_image(rec)
    assert panel.ndim == 3 and panel.shape[1] >= 5 * 256
    # arrays work too (the desktop viewer passes what it shows), and masks can be given
    again = reconstruct(model, config, [rec.original], masks=torch.as_tensor(rec.mask)[None])[0]
    assert again.masked_loss == pytest.approx(rec.masked_loss, abs=1e-5)


def test_cli_reconstruct_and_pretrain(trained_run, demo_dir, tmp_path, capsys):
    from core.cli import main

    img = sorted((demo_dir / "benign").glob("*_0.png"))[0]
    assert main(["reconstruct", str(trained_run), str(img), "--out", str(tmp_path / "panels")]) == 0
    png = tmp_path / "panels" / f"{img.stem}_reconstruct.png"
    assert png.is_file() and Image.open(png).size[0] >= 5 * 256
    assert "masked loss" in capsys.readouterr().out

    args = ["pretrain", "mae", str(demo_dir), "--out", str(tmp_path / "cli"), "--tiny", "--backbone",
            "convnext_atto", "--image-size", "64", "--epochs", "1", "--batch-size", "32", "--warmup-epochs", "0",
            "--decoder-width", "16", "--mask-ratio", "0.5", "--entropy-mode", "random", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["global_step"] == 3 and out["finished"]
    cfg = json.loads((tmp_path / "cli" / "checkpoint-last" / "config.json").read_text())["config"]
    assert cfg["options"]["mask_ratio"] == 0.5 and cfg["options"]["entropy_mode"] == "random"
    assert main([*args[:-1], "--lr", "1"]) == 1                        # same --out, other settings: refused
    assert "lr: checkpoint" in capsys.readouterr().err
    assert main(["pretrain", "mae", str(demo_dir), "--out", str(tmp_path / "x"), "--resume", str(trained_run),
                 "--init-weights", str(trained_run)]) == 1


def test_cli_help_lists_method_options(capsys):
    from core.cli import main

    with pytest.raises(SystemExit):
        main(["pretrain", "mae", "--help"])
    text = capsys.readouterr().out
    for opt in ("--mask-ratio", "--entropy-mode", "--tau", "--resume", "--init-weights", "--accum-steps",
                "--precision", "--backbone"):
        assert opt in text


@pytest.mark.parametrize("workers", [0, 1])
def test_the_grey_batch_goes_to_the_device_as_one_channel(tmp_path, workers):
    """The collate's [B, 3, S, S] is one grey channel expanded; it reaches the device as [B, 1, S, S] and
    is expanded there ("meta" stands for CUDA: ``.to`` of the view itself would give a dense 3-channel copy)."""
    from torch.utils.data import DataLoader

    from core.pretrain.data import UnlabeledImages
    from core.pretrain.mae import grey_batch_to

    ds = UnlabeledImages([tmp_path / f"{i}.png" for i in range(4)], 32, entropy="none", hflip=False,
                         loader=lambda path, size: torch.rand(size, size))
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=ds.collate)))
    images = batch["image"]
    assert images.shape == (4, 3, 32, 32) and images.stride(1) == 0      # the collate's view survives workers
    on_device = grey_batch_to(images, "meta")
    assert on_device.shape == (4, 3, 32, 32) and on_device.stride(1) == 0
    assert torch.equal(grey_batch_to(images, "cpu"), images)
    dense = images.contiguous()
    assert grey_batch_to(dense, "meta").stride(1) != 0                  # a dense batch is copied as it is


def test_cli_reconstruct_names_bad_images_and_writes_the_rest(trained_run, demo_dir, tmp_path, capsys):
    import shutil

    from core.cli import main

    img = sorted((demo_dir / "benign").glob("*_0.png"))[0]
    long_name = tmp_path / ("é" * 110 + "x" * 26 + ".png")          # 250 bytes: "_reconstruct.png" would not fit
    shutil.copy(img, long_name)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    missing = tmp_path / "gone.png"
    panels = tmp_path / "panels"
    assert main(["reconstruct", str(trained_run), str(text), str(missing), str(long_name), str(img),
                 "--out", str(panels)]) == 1
    out = capsys.readouterr().out
    assert f"error: {text}" in out and f"error: {missing}" in out and "2 of 4 images" in out
    written = sorted(p.name for p in panels.iterdir())
    assert len(written) == 2 and f"{img.stem}_reconstruct.png" in written
    assert all(len(n.encode()) <= 255 for n in written)
