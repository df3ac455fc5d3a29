"""Near-duplicate groups in the project: `medssl scan --duplicates --store`, the keep/exclude choice (nothing
deleted from disk), fine-tuning data without the excluded images, and a first-schema file migrating."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image, ImageEnhance

import core.project.store as store_mod
from core.cli import main
from core.data.demo import render_demo_image
from core.paths import default_store_path
from core.project.store import ProjectStore
from core.train.data import load_labeled_data


@pytest.fixture
def folder(tmp_path):
    """benign/orig.png with a resized copy (benign) and a JPEG copy filed under malignant; 6 distinct images."""
    root = tmp_path / "data"
    for c in ("benign", "malignant", "normal"):
        (root / c).mkdir(parents=True)
    img = Image.fromarray(render_demo_image("benign", case_index=0, view=0, size=160).image)
    img.save(root / "benign" / "orig.png")
    img.resize((112, 112), Image.BICUBIC).save(root / "benign" / "orig_small.png")
    buf = io.BytesIO()
    ImageEnhance.Brightness(img).enhance(1.1).save(buf, "JPEG", quality=60)
    (root / "malignant" / "orig_copy.jpg").write_bytes(buf.getvalue())
    for k, c in enumerate(["benign", "malignant", "normal"] * 2):
        Image.fromarray(render_demo_image(c, case_index=k + 1, view=k % 2, size=160).image).save(
            root / c / f"other{k}.png")
    return root


def test_scan_duplicates_lists_groups_and_conflicts_and_stores_them(folder, capsys):
    assert main(["scan", str(folder), "--duplicates", "--store", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    nd = summary["near_duplicates"]
    assert nd["groups"] == 1 and nd["conflicting"] == 1 and nd["images"] == 3
    assert nd["members"][0]["members"] == ["benign/orig.png", "benign/orig_small.png", "malignant/orig_copy.jpg"]
    assert summary["store"]["duplicate_groups"] == 1
    with ProjectStore(default_store_path(folder)) as store:
        ids = {r.rel_path: r.id for r in store.images()}
        assert store.duplicate_groups() == [sorted(ids[m] for m in nd["members"][0]["members"])]
        assert store.duplicate_scan_params()["max_hamming"] == nd["max_hamming"]

    assert main(["scan", str(folder), "--duplicates"]) == 0
    text = capsys.readouterr().out
    assert "near-duplicate groups  1 (3 images" in text and "labels disagree: benign/orig.png (benign)" in text


def test_excluded_images_leave_training_data_not_the_disk(folder, capsys):
    assert main(["scan", str(folder), "--duplicates", "--store", "--json"]) == 0
    capsys.readouterr()
    db = default_store_path(folder)
    with ProjectStore(db) as store:
        ids = {r.rel_path: r.id for r in store.images()}
        store.set_duplicate_choice(ids["malignant/orig_copy.jpg"], "exclude", user="alice")
        store.set_duplicate_choice(ids["benign/orig.png"], "keep", user="alice")
        with pytest.raises(ValueError, match="choice must be"):
            store.set_duplicate_choice(ids["benign/orig.png"], "delete")
        assert store.excluded_image_ids() == {ids["malignant/orig_copy.jpg"]}
    rels = {s.rel_path for s in load_labeled_data(project=db).samples}
    assert "malignant/orig_copy.jpg" not in rels and "benign/orig.png" in rels and len(rels) == 8
    assert (folder / "malignant" / "orig_copy.jpg").is_file()
    # a new scan replaces the groups and keeps the choices
    assert main(["scan", str(folder), "--duplicates", "--store", "--json", "--max-hamming", "0"]) == 0
    with ProjectStore(db) as store:
        assert store.duplicate_choices() == {ids["malignant/orig_copy.jpg"]: "exclude", ids["benign/orig.png"]: "keep"}
        store.set_duplicate_choice(ids["malignant/orig_copy.jpg"], None)
        assert store.excluded_image_ids() == set()


def test_first_schema_file_gains_the_duplicate_tables(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    with monkeypatch.context() as m:
        m.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:1])
        with ProjectStore(path) as s:
            img = s.add_image(content_hash="h", rel_path="a.png", abs_path="/d/a.png")
            s.set_label(img, "benign")
    with ProjectStore(path) as s:
        assert s.schema_version == len(store_mod.MIGRATIONS) >= 2
        assert s.current_label(img) == "benign" and s.duplicate_groups() == [] and s.duplicate_scan_params() is None
        s.set_duplicate_choice(img, "exclude")
        assert s.excluded_image_ids() == {img}
