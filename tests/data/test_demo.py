"""core.data.demo: procedural breast-ultrasound phantoms (layout, determinism, exact masks, look, safety)."""

from __future__ import annotations

import argparse
import csv
import hashlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.cli.demo import register_cli
from core.data.demo import (CLASSES, MANIFEST_NAME, MARKER_NAME, MODALITIES, DemoFolderError, generate_demo,
                            render_demo_image)
from core.jobs import EventKind, Job, JobCancelled

SMALL = dict(n_cases=2, images_per_case=1, size=64)


def read_manifest(root: Path) -> list[dict]:
    with open(root / MANIFEST_NAME, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


def mask_path(root: Path, rel: str) -> Path:
    return root / (rel[: -len(".png")] + "_mask.png")


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    padded = np.pad(mask, r)
    win = np.lib.stride_tricks.sliding_window_view(padded, (2 * r + 1, 2 * r + 1))
    return win.any(axis=(-1, -2))


def lesion_images(root: Path, label: str):
    for row in read_manifest(root):
        if row["label"] == label:
            yield row, load(root / row["path"]).astype(np.float64), load(mask_path(root, row["path"])) > 0


# -- layout ----------------------------------------------------------------------------------------

def test_default_set_layout_and_counts(demo_dir):
    rows = read_manifest(demo_dir)
    assert list(rows[0].keys()) == ["path", "label", "case_id", "modality"]
    assert 60 <= len(rows) <= 120
    assert Counter(r["label"] for r in rows) == {c: len(rows) // 3 for c in CLASSES}
    assert Counter(r["modality"] for r in rows) == {m: len(rows) // 2 for m in MODALITIES}
    per_case = defaultdict(list)
    for r in rows:
        assert "\\" not in r["path"] and not Path(r["path"]).is_absolute()
        assert r["path"].startswith(r["label"] + "/")
        assert Path(r["path"]).name.startswith(f"{r['case_id']}_{r['modality']}_")
        per_case[r["case_id"]].append(r)
    assert len(per_case) == 3 * 8
    for case_rows in per_case.values():
        assert len(case_rows) >= 2
        assert {r["modality"] for r in case_rows} == set(MODALITIES)
        assert len({r["label"] for r in case_rows}) == 1
        assert Counter(r["modality"] for r in case_rows) == {m: len(case_rows) // 2 for m in MODALITIES}
    for r in rows:
        img = load(demo_dir / r["path"])
        mask = load(mask_path(demo_dir, r["path"]))
        assert img.shape == mask.shape == (128, 128) and img.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        if r["label"] == "normal":
            assert not mask.any()
        else:
            assert (mask > 0).sum() > 40
        assert 40 < img.mean() < 200 and img.std() > 15
    # nothing but the listed images, their masks, the manifest and the marker
    listed = {r["path"] for r in rows} | {mask_path(Path(""), r["path"]).as_posix() for r in rows}
    assert set(digests(demo_dir)) == listed | {MANIFEST_NAME, MARKER_NAME}


def test_both_modalities_of_a_view_share_the_mask_but_differ(demo_dir):
    base = demo_dir / "malignant" / "case003"
    a = load(Path(f"{base}_US-A_0.png"))
    b = load(Path(f"{base}_US-B_0.png"))
    assert np.array_equal(load(Path(f"{base}_US-A_0_mask.png")), load(Path(f"{base}_US-B_0_mask.png")))
    assert not np.array_equal(a, b)
    corr = np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1]
    assert 0.3 < corr < 0.98  # same anatomy, different texture


# -- determinism -----------------------------------------------------------------------------------

def test_same_seed_same_bytes_different_seed_different(tmp_path):
    a = digests(generate_demo(tmp_path / "a", seed=3, **SMALL))
    b = digests(generate_demo(tmp_path / "b", seed=3, **SMALL))
    c = digests(generate_demo(tmp_path / "c", seed=4, **SMALL))
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith(".png") and not k.endswith("_mask.png")]
    assert all(a[k] != c[k] for k in images)
    # regenerating into an existing demo folder is fine and gives the same bytes
    assert digests(generate_demo(tmp_path / "a", seed=3, **SMALL)) == a


def test_a_case_does_not_depend_on_the_number_of_cases(tmp_path):
    small = digests(generate_demo(tmp_path / "s", seed=1, n_cases=1, images_per_case=1, size=64))
    big = digests(generate_demo(tmp_path / "b", seed=1, n_cases=2, images_per_case=1, size=64))
    for rel, digest in small.items():
        if rel.endswith(".png"):
            assert big[rel] == digest


def test_render_matches_written_files(demo_dir):
    d = render_demo_image("benign", 1, 1, "US-B", seed=0)
    base = demo_dir / "benign" / "case005_US-B_1"   # case index 1 of class 1 -> case005
    assert np.array_equal(d.image, load(Path(f"{base}.png")))
    assert np.array_equal(d.mask, load(Path(f"{base}_mask.png")) > 0)


# -- exact masks and the look ----------------------------------------------------------------------

@pytest.mark.parametrize("label", ["benign", "malignant"])
def test_mask_is_the_drawn_lesion(label):
    for k in range(6):
        for view in range(2):
            d = render_demo_image(label, k, view, "US-A", size=128, seed=7)
            area = d.mask.sum()
            assert area == pytest.approx(d.info["lesion_area_px"], rel=0.04, abs=6)
            cx, cy = d.info["center"]
            assert d.mask[int(round(cy)), int(round(cx))]
            ys, xs = np.nonzero(d.mask)
            assert np.hypot(xs.mean() - cx, ys.mean() - cy) < 0.6 * max(d.info["semi_axes_px"])
            # inside the image, not touching its border
            assert ys.min() > 0 and xs.min() > 0 and ys.max() < 127 and xs.max() < 127
    if label == "benign":  # smooth oval: the mask is nearly convex-elliptical (area ~ pi a b)
        d = render_demo_image(label, 0, 0, "US-A", size=128, seed=7)
        a, b = d.info["semi_axes_px"]
        assert d.mask.sum() == pytest.approx(np.pi * a * b, rel=0.12)


def test_normal_images_have_empty_masks():
    for k in range(3):
        d = render_demo_image("normal", k, 0, "US-B", seed=2)
        assert not d.mask.any() and "lesion_area_px" not in d.info


def test_malignant_outline_is_irregular_benign_is_smooth():
    def roughness(mask):  # perimeter^2 / (4 pi area): 1 for a disc, larger for spiky outlines
        edges = (mask ^ np.roll(mask, 1, 0)).sum() + (mask ^ np.roll(mask, 1, 1)).sum()
        return edges ** 2 / (4 * np.pi * mask.sum())
    benign = [roughness(render_demo_image("benign", k, seed=0).mask) for k in range(6)]
    malignant = [roughness(render_demo_image("malignant", k, seed=0).mask) for k in range(6)]
    assert max(benign) < min(malignant)


@pytest.mark.parametrize("label", ["benign", "malignant"])
def test_lesion_is_darker_than_surrounding_tissue(demo_dir, label):
    for row, img, mask in lesion_images(demo_dir, label):
        below = (np.cumsum(mask, axis=0) > 0) & ~mask          # the beam path under the lesion
        ring = dilate(mask, 6) & ~dilate(mask, 1) & ~below
        assert img[mask].mean() < img[ring].mean() - 20, row["path"]


def _below_vs_beside(img: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    chord = mask.sum(axis=0)
    under = np.nonzero(chord >= 0.5 * chord.max())[0]
    bottom = max(np.nonzero(mask[:, c])[0].max() for c in under)
    rows = slice(bottom + 3, min(img.shape[0], bottom + 3 + img.shape[0] // 5))
    beside = ~dilate(mask.any(axis=0)[None, :], 6)[0]
    return img[rows][:, under].mean(), img[rows][:, beside].mean()


def test_malignant_has_a_posterior_shadow(demo_dir):
    n = 0
    for row, img, mask in lesion_images(demo_dir, "malignant"):
        below, beside = _below_vs_beside(img, mask)
        assert below < beside - 15, row["path"]
        n += 1
    assert n == 32


def test_benign_has_posterior_enhancement_on_average(demo_dir):
    diffs = [np.subtract(*_below_vs_beside(img, mask)) for _, img, mask in lesion_images(demo_dir, "benign")]
    assert np.mean(diffs) > 5


# -- safety ----------------------------------------------------------------------------------------

def test_refuses_a_foreign_non_empty_folder(tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.png").write_bytes(b"not yours")
    with pytest.raises(DemoFolderError, match="not a MedSSL demo folder"):
        generate_demo(mine, **SMALL)
    assert sorted(p.name for p in mine.iterdir()) == ["holiday.png"]
    assert (mine / "holiday.png").read_bytes() == b"not yours"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(DemoFolderError):
        generate_demo(a_file, **SMALL)
    # an empty folder is fine
    (tmp_path / "empty").mkdir()
    assert (generate_demo(tmp_path / "empty", **SMALL) / MANIFEST_NAME).is_file()


def test_never_overwrites_an_edited_demo_file(tmp_path):
    out = generate_demo(tmp_path / "demo", **SMALL)
    edited = out / "benign" / "case002_US-A_0_mask.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(edited)
    before = edited.read_bytes()
    with pytest.raises(DemoFolderError, match="changed after they were generated"):
        generate_demo(out, **SMALL)
    assert edited.read_bytes() == before


def test_regenerating_smaller_removes_only_its_own_stale_files(tmp_path):
    out = generate_demo(tmp_path / "demo", seed=0, n_cases=2, images_per_case=1, size=64)
    note = out / "benign" / "my_notes.txt"
    note.write_text("keep me")
    generate_demo(out, seed=0, n_cases=1, images_per_case=1, size=64)
    rows = read_manifest(out)
    assert len(rows) == 3 * 1 * 2
    assert not list(out.rglob("case00[4-6]_*"))
    assert note.read_text() == "keep me"
    assert set(digests(out)) == ({r["path"] for r in rows} | {mask_path(Path(""), r["path"]).as_posix()
                                                               for r in rows}
                                 | {MANIFEST_NAME, MARKER_NAME, "benign/my_notes.txt"})


def test_cancel_and_rerun_completes(tmp_path):
    out = tmp_path / "demo"
    job = Job("demo", lambda ctx: generate_demo(out, ctx=ctx, **SMALL))
    job.subscribe(lambda e: job.cancel() if e.kind is EventKind.PROGRESS and e.step == 2 else None)
    with pytest.raises(JobCancelled):
        job.run()
    assert not (out / MANIFEST_NAME).exists()
    events = []
    job = Job("demo", lambda ctx: generate_demo(out, ctx=ctx, **SMALL))
    job.subscribe(events.append)
    job.run()
    steps = [e for e in events if e.kind is EventKind.PROGRESS]
    assert steps[-1].step == steps[-1].total == 6
    assert digests(out) == digests(generate_demo(tmp_path / "fresh", **SMALL))


# -- CLI -------------------------------------------------------------------------------------------

def _parser():
    parser = argparse.ArgumentParser(prog="medssl")
    register_cli(parser.add_subparsers(dest="command"))
    return parser


def test_cli_help_and_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["demo-data", "--help"])
    help_text = capsys.readouterr().out
    for option in ("OUT", "--cases", "--per-case", "--size", "--seed"):
        assert option in help_text
    args = _parser().parse_args(["demo-data", str(tmp_path / "d"), "--cases", "1", "--per-case", "1",
                                 "--size", "48", "--seed", "5"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "6 images" in out and "manifest" in out
    assert len(read_manifest(tmp_path / "d")) == 6
    assert load(tmp_path / "d" / "normal" / "case001_US-A_0.png").shape == (48, 48)
    with pytest.raises(SystemExit):
        _parser().parse_args(["demo-data", str(tmp_path / "e"), "--cases", "0"])


def test_cli_refuses_foreign_folder_with_a_clear_message(tmp_path):
    (tmp_path / "x.txt").write_text("mine")
    args = _parser().parse_args(["demo-data", str(tmp_path)])
    with pytest.raises(ValueError, match="refusing to write"):
        args.handler(args)
