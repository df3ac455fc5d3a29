"""Near-duplicate finder on made-up near-duplicates of demo phantoms, and the split grouping it feeds."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from core.data.duplicates import find_near_duplicates, merge_groups, scan_near_duplicates, signature
from core.data.demo import CLASSES, render_demo_image
from core.data.splits import kfold_indices


def _variants(img: Image.Image) -> dict[str, Image.Image]:
    """The ways a public data set saves one lesion twice."""
    w, h = img.size
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=60)
    return {
        "resized": img.resize((int(w * 0.7), int(h * 0.7)), Image.BICUBIC),
        "jpeg": Image.open(io.BytesIO(buf.getvalue())),
        "cropped": img.crop((3, 3, w - 3, h - 3)),
        "brighter": ImageEnhance.Brightness(img).enhance(1.15),
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Four originals (different cases and classes), each with four near-duplicates, plus 14 distinct images."""
    root = tmp_path_factory.mktemp("dups")
    labels = {}
    for k in range(4):
        img = Image.fromarray(render_demo_image(CLASSES[k % 3], case_index=k, view=0, size=160).image)
        img.save(root / f"orig{k}.png")
        labels[f"orig{k}.png"] = CLASSES[k % 3]
        for name, v in _variants(img).items():
            rel = f"orig{k}_{name}.png"
            v.save(root / rel)
            labels[rel] = CLASSES[(k + (name == "jpeg")) % 3]     # one variant filed under another class
    for k in range(4, 18):
        Image.fromarray(render_demo_image(CLASSES[k % 3], case_index=k, view=k % 2, size=160).image).save(
            root / f"other{k}.png")
        labels[f"other{k}.png"] = CLASSES[k % 3]
    return root, labels


def test_finds_each_original_with_its_variants_and_nothing_else(folder):
    root, labels = folder
    rep = scan_near_duplicates(root, sorted(labels), labels)
    groups = {tuple(g.members) for g in rep.groups}
    expected = {tuple(sorted([f"orig{k}.png"] + [f"orig{k}_{v}.png" for v in ("brighter", "cropped", "jpeg",
                                                                            "resized")])) for k in range(4)}
    assert groups == expected, [g.members for g in rep.groups]
    assert len(rep.conflicting) == 4 and all(g.conflicting for g in rep.groups)
    assert rep.n_images == len(labels) and not rep.errors
    assert all(p.ssim >= rep.min_ssim and p.hamming <= rep.max_hamming for g in rep.groups for p in g.pairs)


def test_thresholds_are_tunable(folder):
    root, labels = folder
    strict = scan_near_duplicates(root, sorted(labels), labels, max_hamming=0, min_ssim=0.999)
    assert sum(len(g.members) for g in strict.groups) < 20


def test_unreadable_files_are_listed_not_fatal(folder, tmp_path):
    root, labels = folder
    (root / "broken.png").write_bytes(b"not a png")
    rep = scan_near_duplicates(root, sorted(labels) + ["broken.png"], labels)
    assert [k for k, _ in rep.errors] == ["broken.png"] and len(rep.groups) == 4
    (root / "broken.png").unlink()


def test_folds_never_split_a_near_duplicate_group_or_a_case(folder):
    root, labels = folder
    keys = sorted(labels)
    rep = scan_near_duplicates(root, keys, labels)
    cases = [("caseX" if k in ("other4.png", "other5.png") else None) for k in keys]   # two views of one case
    groups = merge_groups(keys, cases, rep)
    folds = kfold_indices([labels[k] for k in keys], groups, k=3, seed=0)
    fold_of = {}
    for f, (_, test_idx) in enumerate(folds):
        for i in test_idx:
            fold_of[keys[i]] = f
    for g in rep.groups:
        assert len({fold_of[m] for m in g.members}) == 1, g.members
    assert fold_of["other4.png"] == fold_of["other5.png"]
    assert len(set(groups)) == len(keys) - 4 * 4 - 1


def test_signature_is_stable_under_resizing():
    u8 = render_demo_image("benign", case_index=1, view=0, size=128).image
    a = signature("a", u8.astype(np.float32) / 255)
    b = signature("b", np.asarray(Image.fromarray(u8).resize((96, 96)), np.float32) / 255)
    rep = find_near_duplicates([a, b])
    assert [g.members for g in rep.groups] == [["a", "b"]]
