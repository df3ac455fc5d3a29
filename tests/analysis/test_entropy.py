"""core.analysis.entropy (cell and dense local entropy, colour maps) and the `medssl entropy` job/command."""

from __future__ import annotations

import argparse
import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from core.analysis import entropy as E
from core.analysis.entropy import apply_colormap, cell_entropy, cell_grid_shape, colormap_lut, local_entropy_map


def reference_cells(images: np.ndarray, cell: int, bins: int, alpha: float = 1.0, edge: str = "crop") -> np.ndarray:
    """Straightforward per-cell loop (float64) with the documented binning; partial cells for edge='pad'."""
    n, H, W = images.shape
    h, w = cell_grid_shape(H, W, cell, edge)
    idx = np.clip(np.floor(images.astype(np.float32) * np.float32(bins)), 0, bins - 1).astype(np.int64)
    out = np.zeros((n, h, w))
    for b in range(n):
        for i in range(h):
            for j in range(w):
                counts = np.bincount(idx[b, i * cell:(i + 1) * cell, j * cell:(j + 1) * cell].ravel(),
                                     minlength=bins)
                p = counts[counts > 0] / counts.sum()
                if alpha == 1:
                    out[b, i, j] = -(p * np.log2(p)).sum()
                else:
                    out[b, i, j] = np.log2((p ** alpha).sum()) / (1 - alpha)
    return out


def textured(n: int, H: int, W: int, seed: int = 0) -> np.ndarray:
    """Images with flat, dark-noise and speckle regions, float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 0.25, size=(n, H, W))
    x[:, : H // 3] = 0.4                                  # flat band
    x[:, H // 3: H // 2] *= 0.1                           # dark noise
    return np.clip(x, 0, 1).astype(np.float32)


# -- values -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0.0, 0.37, 1.0])
@pytest.mark.parametrize("alpha", [1.0, 2.0, 0.0, math.inf])
def test_constant_image_has_zero_bits(value, alpha):
    img = torch.full((2, 1, 64, 96), value)
    assert torch.equal(cell_entropy(img, alpha=alpha), torch.zeros(2, 2, 3))
    assert np.array_equal(local_entropy_map(img[0, 0], radius=3, alpha=alpha), np.zeros((64, 96), np.float32))


@pytest.mark.parametrize("bins", [16, 64])
def test_uniform_noise_is_close_to_log2_bins(bins):
    x = torch.from_numpy(np.random.default_rng(1).random((4, 128, 160), dtype=np.float32))
    e = cell_entropy(x, cell=32, bins=bins)
    # 1024 samples per cell: the plug-in estimate is biased low by about (bins - 1) / (2 N ln 2) bits.
    assert abs(e.mean().item() - math.log2(bins)) < 0.1
    assert e.min().item() > math.log2(bins) - 0.2 and e.max().item() <= math.log2(bins) + 1e-6


@pytest.mark.parametrize("alpha", [1.0, 2.0, 0.0, math.inf, 0.5])
def test_exactly_uniform_histogram_is_log2_bins_for_every_order(alpha):
    bins, cell = 16, 8                                    # 64 pixels per cell, 4 per bin
    values = (np.arange(cell * cell) % bins + 0.5) / bins
    img = np.tile(values.reshape(cell, cell), (2, 3)).astype(np.float32)
    e = cell_entropy(img, cell=cell, bins=bins, alpha=alpha)
    assert e.shape == (2, 3)
    assert torch.allclose(e, torch.full((2, 3), 4.0), atol=1e-6)


def test_renyi_orders_are_ordered_and_continuous_at_one():
    x = textured(2, 64, 64, seed=2)
    h = {a: cell_entropy(x, cell=16, bins=32, alpha=a) for a in (0.0, 0.999, 1.0, 2.0, math.inf)}
    assert torch.all(h[0.0] >= h[1.0] - 1e-5) and torch.all(h[1.0] >= h[2.0] - 1e-5)
    assert torch.all(h[2.0] >= h[math.inf] - 1e-5)
    assert torch.allclose(h[0.999], h[1.0], atol=5e-3)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
@pytest.mark.parametrize("edge", ["crop", "pad"])
def test_matches_per_cell_reference(alpha, edge):
    x = textured(3, 70, 100, seed=3)                    # not a multiple of the cell
    ours = cell_entropy(x, cell=32, bins=64, alpha=alpha, edge=edge).numpy()
    ref = reference_cells(x, 32, 64, alpha, edge)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-5


def test_matches_skimage_rank_entropy():
    rank = pytest.importorskip("skimage.filters.rank")
    x = textured(1, 96, 128, seed=4)[0]
    idx = np.clip(np.floor(x * 64), 0, 63).astype(np.uint8)
    # Cells: a 32 x 32 footprint is centred at (16, 16), so it covers exactly the cell at the cell centres.
    dense = rank.entropy(idx, np.ones((32, 32), bool))
    assert np.abs(cell_entropy(x).numpy() - dense[16::32, 16::32]).max() < 1e-5
    # Dense map: the same square window, clipped at the border.
    for radius in (1, 5):
        ref = rank.entropy(idx, np.ones((2 * radius + 1,) * 2, bool))
        assert np.abs(local_entropy_map(x, radius=radius, bins=64) - ref).max() < 1e-5


# -- batching, devices, shapes -------------------------------------------------------------------------------
def test_batched_equals_one_by_one_and_layouts_agree():
    x = torch.from_numpy(textured(5, 96, 64, seed=5))
    batched = cell_entropy(x)
    singles = torch.stack([cell_entropy(img) for img in x])         # [H, W] in -> [h, w] out
    assert torch.equal(batched, singles)
    assert torch.equal(batched, cell_entropy(x[:, None]))           # [B, 1, H, W]
    assert torch.equal(batched, cell_entropy(x.numpy()))            # numpy in
    assert torch.equal(batched, cell_entropy(x, max_chunk_pixels=1))  # one image per chunk
    dense = E.local_entropy(x[:2], radius=4)
    assert torch.equal(dense[1], E.local_entropy(x[1], radius=4))
    # Chunks of bins only change the order of a float32 sum.
    assert torch.allclose(dense, E.local_entropy(x[:2], radius=4, chunk_elements=1), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_gpu_matches_cpu():
    x = torch.from_numpy(textured(3, 70, 100, seed=6))
    for edge in ("crop", "pad"):
        assert torch.allclose(cell_entropy(x.cuda(), edge=edge).cpu(), cell_entropy(x, edge=edge), atol=1e-6)
    assert np.allclose(local_entropy_map(x[0], device="cuda"), local_entropy_map(x[0]), atol=1e-5)


def test_shapes_for_non_square_and_non_divisible_sizes():
    x = torch.from_numpy(textured(2, 70, 100, seed=7))
    assert cell_entropy(x).shape == (2, 2, 3)                        # crop: 70 // 32, 100 // 32
    assert cell_entropy(x, edge="pad").shape == (2, 3, 4)            # pad: ceil
    assert cell_grid_shape(70, 100, 32, "crop") == (2, 3) and cell_grid_shape(70, 100, 32, "pad") == (3, 4)
    assert cell_entropy(x[:, :20, :]).shape == (2, 0, 3)             # smaller than a cell: empty grid
    # crop ignores the remainder; pad's partial cells count only real pixels.
    y = x.clone()
    y[:, 64:, :] = torch.rand(2, 6, 100)
    y[:, :, 96:] = 0.0
    assert torch.equal(cell_entropy(x), cell_entropy(y))
    pad = cell_entropy(x, edge="pad")
    assert torch.equal(pad[:, :2, :3], cell_entropy(x))
    corner = cell_entropy(x[:, 64:70, 96:100], cell=32, edge="pad")  # one partial 6 x 4 cell
    assert torch.allclose(pad[:, 2:, 3:], corner)
    assert local_entropy_map(x[0]).shape == (70, 100)


def test_local_map_ranks_regions_with_a_cost_independent_of_the_radius(monkeypatch):
    """Speed is bench/entropy.py's job (about 0.05 s for 500x600 on 2 idle cores); here, without timing: the
    map is two separable box sums (one per axis) whatever the radius, never O(radius^2) filtering."""
    x = textured(1, 500, 600, seed=8)[0]
    calls = []
    real_box_sum = E._box_sum
    monkeypatch.setattr(E, "_box_sum", lambda t, radius, dim: calls.append(radius) or real_box_sum(t, radius, dim))
    m = local_entropy_map(x)                               # defaults: radius 5, 32 bins
    assert m.dtype == np.float32 and m.shape == (500, 600)
    flat, dark, speckle = m[20:150, 20:-20].mean(), m[180:230, 20:-20].mean(), m[300:480, 20:-20].mean()
    assert flat == 0.0 and flat < dark < speckle
    assert np.all(local_entropy_map(x, radius=0) == 0)
    per_radius = {}
    for r in (5, 40):
        calls.clear()
        local_entropy_map(x, radius=r)
        per_radius[r] = list(calls)
    assert per_radius[5] and set(per_radius[5]) == {5} and per_radius[40] == [40] * len(per_radius[5])


def test_a_radius_beyond_the_image_is_clamped_to_it(monkeypatch):
    """`medssl entropy --radius 100000` ran 770 s on 16 tiny images: the box sums were padded by the radius.
    A window wider than the image covers all of it at every pixel, so the radius is clamped per axis
    (exact): every pixel then has the entropy of the whole image's histogram."""
    x = textured(1, 12, 20, seed=3)[0]
    radii = []
    real_box_sum = E._box_sum
    monkeypatch.setattr(E, "_box_sum", lambda t, radius, dim: radii.append(radius) or real_box_sum(t, radius, dim))
    huge = local_entropy_map(x, radius=100_000, bins=16)
    assert max(radii) <= 19                                 # the padding follows the image, not the radius
    counts = np.bincount(np.clip(np.floor(x * np.float32(16)), 0, 15).astype(np.int64).ravel(), minlength=16)
    p = counts[counts > 0] / counts.sum()
    np.testing.assert_allclose(huge, np.full(x.shape, -(p * np.log2(p)).sum()), atol=1e-5)
    np.testing.assert_array_equal(huge, local_entropy_map(x, radius=19, bins=16))


def test_minmax_normalisation_stretches_each_image():
    x = textured(2, 64, 64, seed=9)
    squeezed = 0.2 + 0.2 * x
    stretched = (squeezed - squeezed.min(axis=(1, 2), keepdims=True))
    stretched /= stretched.max(axis=(1, 2), keepdims=True)
    a = cell_entropy(squeezed, bins=32, normalize="minmax")
    assert torch.allclose(a, cell_entropy(stretched, bins=32), atol=1e-5)
    assert not torch.allclose(a, cell_entropy(squeezed, bins=32))


def test_bad_inputs_raise():
    with pytest.raises(TypeError):
        cell_entropy(np.zeros((1, 32, 32), np.uint8))
    with pytest.raises(ValueError):
        cell_entropy(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError):
        cell_entropy(torch.zeros(1, 32, 32), bins=1)
    with pytest.raises(ValueError):
        cell_entropy(torch.zeros(1, 32, 32), edge="wrap")
    with pytest.raises(ValueError):
        local_entropy_map(torch.zeros(2, 32, 32))


def test_colormaps():
    for name in E.COLORMAPS:
        lut = colormap_lut(name)
        assert lut.shape == (256, 3) and lut.dtype == np.uint8
    inferno = colormap_lut("inferno")
    assert tuple(inferno[0]) == (0, 0, 4) and tuple(inferno[255]) == (252, 255, 164)
    assert np.all(np.diff(inferno.astype(int).sum(axis=1)) >= -3)     # brightness rises along the map
    rgb = apply_colormap(np.array([[-1.0, 0.0, 3.0, 6.0, 9.0, np.nan]]), 0.0, 6.0)
    assert rgb.shape == (1, 6, 3)
    assert tuple(rgb[0, 0]) == tuple(inferno[0]) and tuple(rgb[0, 4]) == tuple(inferno[255])
    with pytest.raises(ValueError):
        colormap_lut("jet")


# -- the job and the command -------------------------------------------------------------------------
@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(10)
    for label in ("benign", "normal"):
        (root / label).mkdir(parents=True)
        img = (textured(1, 90, 70, seed=len(label))[0] * 255).astype(np.uint8)
        Image.fromarray(img).save(root / label / f"{label} 1.png")
        Image.fromarray(((rng.random((90, 70)) > 0.5) * 255).astype(np.uint8)).save(
            root / label / f"{label} 1_mask.png")
    (root / "benign" / "broken.png").write_bytes(b"this is not a png")
    return root


def _run_job(fn):
    from core.jobs import Job

    events = []
    job = Job("entropy test", fn)
    job.subscribe(events.append)
    return job.run(), events


def test_entropy_folder_job_writes_heatmaps_and_errors(image_folder, tmp_path):
    from core.analysis.entropy_maps import entropy_folder_job

    out = tmp_path / "out"
    result, events = _run_job(entropy_folder_job(image_folder, out, radius=3, cell=32, device="cpu"))
    assert result["n_written"] == 2 and result["n_errors"] == 1
    for label in ("benign", "normal"):
        png = np.asarray(Image.open(out / label / f"{label} 1_entropy.png"))
        assert png.shape == (90, 70, 3) and png.dtype == np.uint8
        dense = np.load(out / label / f"{label} 1_entropy.npy")
        assert dense.shape == (90, 70) and dense.dtype == np.float32 and dense.max() > 1.0
        assert np.load(out / label / f"{label} 1_cells.npy").shape == (2, 2)
    assert not list(out.rglob("*_mask_entropy.png"))                # masks are not images
    with open(out / "errors.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"].endswith("broken.png") for r in rows] == [True] and rows[0]["reason"]
    assert any(e.kind.value == "progress" and e.total == result["n_images"] for e in events)
    assert any(e.kind.value == "log" and "broken.png" in e.message for e in events)


def test_job_skips_its_own_output_inside_the_folder(image_folder):
    from core.analysis.entropy_maps import entropy_folder_job

    out = image_folder / "entropy"
    first, _ = _run_job(entropy_folder_job(image_folder, out, radius=2))
    second, _ = _run_job(entropy_folder_job(image_folder, out, radius=2))
    assert second["n_images"] == first["n_images"] and second["n_written"] == 2


def test_job_rejects_bad_arguments_before_running(image_folder, tmp_path):
    from core.analysis.entropy_maps import entropy_folder_job

    with pytest.raises(ValueError):
        entropy_folder_job(image_folder, tmp_path, bins=1)
    with pytest.raises(ValueError):
        entropy_folder_job(image_folder, tmp_path, colormap="jet")
    with pytest.raises(ValueError):
        entropy_folder_job(image_folder, image_folder)
    with pytest.raises(ValueError):
        entropy_folder_job(image_folder, tmp_path, device="gpu")


def test_images_sharing_a_stem_get_separate_outputs(tmp_path):
    from core.analysis.entropy_maps import entropy_folder_job

    folder = tmp_path / "data"
    folder.mkdir()
    img = (textured(1, 40, 40)[0] * 255).astype(np.uint8)
    Image.fromarray(img).save(folder / "a.png")
    Image.fromarray(img).save(folder / "a.bmp")
    Image.fromarray(img).save(folder / "b.png")
    result, _ = _run_job(entropy_folder_job(folder, tmp_path / "out", radius=2, cell=16))
    assert result["n_written"] == 3
    names = sorted(p.name for p in (tmp_path / "out").glob("*_entropy.png"))
    assert names == ["a.bmp_entropy.png", "a.png_entropy.png", "b_entropy.png"]


def test_cli_defaults_match_the_library():
    from core.cli import entropy as entropy_cli

    assert (entropy_cli.DEFAULT_CELL, entropy_cli.DEFAULT_BINS, entropy_cli.DEFAULT_HEATMAP_BINS,
            entropy_cli.DEFAULT_RADIUS) == (E.DEFAULT_CELL, E.DEFAULT_BINS, E.DEFAULT_HEATMAP_BINS,
                                            E.DEFAULT_RADIUS)
    assert entropy_cli.COLORMAPS == E.COLORMAPS


def test_entropy_command_end_to_end(image_folder, tmp_path, capsys):
    from core.cli.entropy import register_cli

    parser = argparse.ArgumentParser(prog="medssl")
    register_cli(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli-out"
    args = parser.parse_args(["entropy", str(image_folder), "--out", str(out), "--radius", "2",
                              "--colormap", "magma", "--device", "cpu"])
    assert args.cell == 32 and args.bins == 64 and args.heatmap_bins == 32 and args.alpha == 1.0
    assert args.handler(args) == 0
    assert (out / "normal" / "normal 1_entropy.png").is_file()
    printed = capsys.readouterr().out
    assert "2 of 3 images written" in printed or "2 of 2 images written" in printed
    assert "errors.csv" in printed
