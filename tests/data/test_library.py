"""core.data.library.scan_folder: labels, manifest, masks, hashes, bad files, cancellation, and BUSI when present."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.jobs import EventKind, Job, JobCancelled, JobState
from core.data.library import MANIFEST_NAME, ImageRecord, ScanError, ScanResult, file_sha256, scan_folder
from tests.dicom_files import CT_PIXELS, write_dicom


def write_png(path: Path, value: int = 100, size: tuple[int, int] = (16, 12), mode: str = "L") -> Path:
    """A small PNG whose pixels depend on ``value`` (so different files have different hashes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    pixels = np.full((height, width), value % 256, dtype=np.uint8)
    pixels[0, 0] = (value * 7) % 256
    image = Image.fromarray(pixels, "L")
    if mode == "RGB":
        rgb = np.stack([pixels, 255 - pixels, np.zeros_like(pixels)], axis=-1)
        image = Image.fromarray(rgb, "RGB")
    image.save(path)
    return path


def write_mask(path: Path, box: tuple[int, int, int, int], size: tuple[int, int] = (16, 12)) -> Path:
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)
    return path


def by_rel_path(result: ScanResult) -> dict[str, ImageRecord]:
    return {record.rel_path: record for record in result.images}


def errors_by_name(result: ScanResult) -> dict[str, ScanError]:
    names = [error.path.name for error in result.errors]
    assert len(names) == len(set(names)), f"a file was reported more than once: {result.errors}"
    return {error.path.name: error for error in result.errors}


@pytest.fixture
def class_folder(tmp_path) -> Path:
    """root/{benign,malignant}/ images with BUSI-style masks, one root-level image, one nested image."""
    root = tmp_path / "data"
    write_png(root / "benign" / "b1.png", 10)
    write_mask(root / "benign" / "b1_mask.png", (0, 0, 4, 4))
    write_mask(root / "benign" / "b1_mask_1.png", (6, 6, 10, 10))
    write_png(root / "benign" / "b2.png", 20, mode="RGB")
    write_png(root / "malignant" / "m1.png", 30)
    write_mask(root / "malignant" / "m1_mask.png", (2, 2, 5, 5))
    write_png(root / "malignant" / "patient7" / "m2.png", 40)
    write_png(root / "loose.png", 50)
    write_png(root / ".medssl" / "thumb.png", 60)  # the app's own hidden folder
    write_png(root / "benign" / ".hidden.png", 70)
    (root / "README.txt").write_text("not an image")
    return root


def test_class_folders_become_labels(class_folder):
    result = scan_folder(class_folder)
    records = by_rel_path(result)
    assert sorted(records) == ["benign/b1.png", "benign/b2.png", "loose.png", "malignant/m1.png",
                               "malignant/patient7/m2.png"]
    assert [r.rel_path for r in result.images] == sorted(records)
    assert records["benign/b1.png"].label == "benign"
    assert records["malignant/patient7/m2.png"].label == "malignant"  # first-level folder wins
    assert records["loose.png"].label is None
    assert result.classes == ["benign", "malignant"]
    assert result.errors == []
    b2 = records["benign/b2.png"]
    assert b2.is_color and (b2.width, b2.height) == (16, 12)
    assert not records["benign/b1.png"].is_color
    assert b2.path == class_folder.resolve() / "benign" / "b2.png" and b2.path.is_absolute()
    assert result.summary() == {"n_images": 5, "classes": {"benign": 2, "malignant": 2}, "n_unlabeled": 1,
                                "n_with_masks": 2, "n_cases": 0, "modalities": {}, "n_errors": 0,
                                "n_duplicate_files": 0, "label_conflicts": [], "identical_files": []}


def test_masks_are_attached_in_order_and_never_listed(class_folder):
    from core.data.imageio import read_mask

    records = by_rel_path(scan_folder(class_folder))
    assert not any("_mask" in rel for rel in records)
    b1 = records["benign/b1.png"]
    assert [p.name for p in b1.mask_paths] == ["b1_mask.png", "b1_mask_1.png"]
    assert all(p.is_absolute() for p in b1.mask_paths)
    union = read_mask(b1.mask_paths)
    assert union.sum() == 16 + 16 and union[0, 0] and union[7, 7] and not union[5, 5]
    assert records["benign/b2.png"].mask_paths == []


def test_mask_problems_are_reported_once_each(class_folder):
    write_mask(class_folder / "benign" / "orphan_mask.png", (0, 0, 2, 2))
    write_mask(class_folder / "malignant" / "m1_mask_1.png", (0, 0, 2, 2), size=(8, 8))  # wrong size
    result = scan_folder(class_folder)
    errors = errors_by_name(result)
    assert set(errors) == {"orphan_mask.png", "m1_mask_1.png"}
    assert "mask without image" in errors["orphan_mask.png"].reason
    assert "8x8" in errors["m1_mask_1.png"].reason and "16x12" in errors["m1_mask_1.png"].reason
    records = by_rel_path(result)
    assert [p.name for p in records["malignant/m1.png"].mask_paths] == ["m1_mask.png"]
    assert len(result.images) == 5


def test_manifest_overrides_and_extends(class_folder):
    write_png(class_folder / "extra" / "scan.jfif", 80)  # unknown suffix: only the manifest brings it in
    (class_folder / MANIFEST_NAME).write_text(
        "path,label,case_id,modality\n"
        "benign/b1.png,malignant,case-1,US\n"
        "loose.png,normal,case-2,\n"
        ".\\malignant\\m1.png,,case-1,MG\n"   # Windows separators; empty label keeps the folder label
        "extra/scan.jfif,benign,case-3,US\n"
        "benign/missing.png,benign,case-9,US\n", encoding="utf-8")
    result = scan_folder(class_folder)
    records = by_rel_path(result)
    assert (records["benign/b1.png"].label, records["benign/b1.png"].case_id,
            records["benign/b1.png"].modality) == ("malignant", "case-1", "US")
    assert (records["loose.png"].label, records["loose.png"].modality) == ("normal", None)
    assert (records["malignant/m1.png"].label, records["malignant/m1.png"].modality) == ("malignant", "MG")
    assert records["extra/scan.jfif"].label == "benign"
    assert records["benign/b2.png"].case_id is None
    errors = errors_by_name(result)
    assert set(errors) == {"missing.png"}
    assert "manifest.csv" in errors["missing.png"].reason and "does not exist" in errors["missing.png"].reason
    summary = result.summary()
    assert summary["classes"] == {"benign": 2, "malignant": 3, "normal": 1}
    assert summary["n_cases"] == 3 and summary["modalities"] == {"MG": 1, "US": 2}
    assert summary["n_unlabeled"] == 0 and summary["n_errors"] == 1


def test_manifest_without_path_column_is_reported(class_folder):
    (class_folder / MANIFEST_NAME).write_text("file,label\nloose.png,normal\n")
    result = scan_folder(class_folder)
    assert [e.path.name for e in result.errors] == [MANIFEST_NAME]
    assert "'path' column" in result.errors[0].reason
    assert by_rel_path(result)["loose.png"].label is None


def test_dicom_metadata_fills_case_and_modality(tmp_path):
    root = tmp_path / "dicoms"
    write_dicom(root / "ct" / "a.dcm", CT_PIXELS, PatientID="P1", Modality="CT")
    write_dicom(root / "ct" / "IM0002", CT_PIXELS, PatientID="P2", Modality="CT")  # no suffix: found by preamble
    write_dicom(root / "DICOMDIR", CT_PIXELS, PatientID="index", Modality="CT")  # an index file, never an image
    write_dicom(root / "mr" / "b.dcm", CT_PIXELS, PatientID="P1", Modality="MR")
    (root / MANIFEST_NAME).write_text("path,modality\nmr/b.dcm,MR-T2\n")
    result = scan_folder(root)
    records = by_rel_path(result)
    assert sorted(records) == ["ct/IM0002", "ct/a.dcm", "mr/b.dcm"]
    assert (records["ct/a.dcm"].case_id, records["ct/a.dcm"].modality) == ("P1", "CT")
    assert records["mr/b.dcm"].modality == "MR-T2"
    assert result.summary()["n_cases"] == 2
    assert result.summary()["modalities"] == {"CT": 2, "MR-T2": 1}


def test_bad_files_each_give_one_clear_error_and_the_rest_is_scanned(tmp_path):
    root = tmp_path / "mixed"
    good = [write_png(root / "ok" / f"good{i}.png", i) for i in range(3)]
    noise = np.random.default_rng(1).integers(0, 256, (30, 30), dtype=np.uint8)  # under max_pixels
    (root / "bad").mkdir()
    truncated = root / "bad" / "truncated.png"
    Image.fromarray(noise).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    (root / "bad" / "text.png").write_text("hello, I am text\n" * 10)
    (root / "bad" / "empty.png").write_bytes(b"")
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(root / "bad" / "bomb.png")
    dicom = write_dicom(root / "bad" / "corrupt.dcm", CT_PIXELS, PatientID="P", Modality="CT")
    dicom.write_bytes(dicom.read_bytes()[:-100])
    result = scan_folder(root, max_pixels=1000)
    errors = errors_by_name(result)
    assert set(errors) == {"truncated.png", "text.png", "empty.png", "bomb.png", "corrupt.dcm"}
    assert "truncated" in errors["truncated.png"].reason
    assert "not an image" in errors["text.png"].reason
    assert "empty" in errors["empty.png"].reason
    assert "limit of 1,000" in errors["bomb.png"].reason
    assert "dicom" in errors["corrupt.dcm"].reason.lower()
    for error in result.errors:
        assert error.path.is_absolute() and str(error) == f"{error.path}: {error.reason}"
    assert sorted(r.path.name for r in result.images) == [p.name for p in good]
    assert result.summary()["n_errors"] == 5


def test_content_hash_is_stable_when_the_folder_moves(class_folder, tmp_path):
    first = scan_folder(class_folder)
    moved = shutil.copytree(class_folder, tmp_path / "elsewhere" / "renamed")
    second = scan_folder(moved)
    hashes = {r.rel_path: r.content_hash for r in first.images}
    assert hashes == {r.rel_path: r.content_hash for r in second.images}
    assert len(set(hashes.values())) == len(hashes)
    b1 = by_rel_path(first)["benign/b1.png"]
    assert b1.content_hash == file_sha256(b1.path) and len(b1.content_hash) == 64
    assert {r.path.parent.parent for r in second.images if r.label} == {moved.resolve()} | {
        moved.resolve() / "malignant"}


def test_single_worker_gives_the_same_result(class_folder):
    assert scan_folder(class_folder, workers=1) == scan_folder(class_folder, workers=3)


def test_progress_is_reported_per_file(class_folder):
    job = Job("scan", lambda ctx: scan_folder(class_folder, ctx=ctx))
    events = []
    job.subscribe(events.append)
    result = job.run()
    progress = [e for e in events if e.kind is EventKind.PROGRESS]
    assert [e.step for e in progress] == list(range(len(result.images) + 1))
    assert all(e.total == len(result.images) for e in progress)


def test_cancellation_stops_the_scan(tmp_path):
    root = tmp_path / "many"
    for i in range(40):
        write_png(root / "c" / f"img{i:02d}.png", i)
    job = Job("scan", lambda ctx: scan_folder(root, ctx=ctx, workers=2))
    steps = []

    def cancel_after_three_files(event):
        if event.kind is EventKind.PROGRESS:
            steps.append(event.step)
            if event.step == 3:
                job.cancel()
    job.subscribe(cancel_after_three_files)
    with pytest.raises(JobCancelled):
        job.run()
    assert job.state is JobState.CANCELLED
    assert max(steps) == 3


def test_missing_root_is_an_exception(tmp_path):
    with pytest.raises(NotADirectoryError):
        scan_folder(tmp_path / "nope")


# -- BUSI (real data, outside the repo) -------------------------------------------------------------------
def busi_dir() -> Path | None:
    candidates = [os.environ.get("MEDSSL_BUSI_DIR"),
                  Path(__file__).resolve().parents[3] / "shared" / "data" / "busi"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "benign").is_dir():
            return Path(candidate)
    return None


def test_busi_scan():
    root = busi_dir()
    if root is None:
        pytest.skip("BUSI not found: set MEDSSL_BUSI_DIR or place it at ../shared/data/busi beside the repo")
    start = time.perf_counter()
    result = scan_folder(root)
    seconds = time.perf_counter() - start
    summary = result.summary()
    assert result.errors == []
    assert summary["n_images"] == 780 and summary["n_with_masks"] == 780
    assert summary["classes"] == {"benign": 437, "malignant": 210, "normal": 133}
    assert summary["n_unlabeled"] == 0 and summary["n_errors"] == 0
    assert sum(len(r.mask_paths) for r in result.images) == 798
    assert len(by_rel_path(result)["benign/benign (195).png"].mask_paths) == 3
    assert sum(r.is_color for r in result.images) == 16  # the images with colour annotation marks
    print(f"BUSI scan: {seconds:.1f} s")      # a figure, not a check: speed is bench/'s job
    # BUSI holds one image twice, once in each of two classes: reported, not silently merged
    assert summary["n_duplicate_files"] == 1
    assert summary["label_conflicts"] == [["benign/benign (433).png (benign)",
                                           "malignant/malignant (145).png (malignant)"]]


def test_identical_files_are_reported_and_conflicting_labels_flagged(tmp_path, capsys):
    from core.cli import main

    one = np.random.default_rng(0).integers(0, 255, (20, 24), dtype=np.uint8)
    other = 255 - one
    files = {"benign/a.png": one, "benign/a-copy.png": one, "malignant/b.png": one,
             "benign/c.png": other, "normal/c-again.png": other}
    for rel, img in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / rel)
    result = scan_folder(tmp_path)
    groups = {tuple(r.rel_path for r in g) for g in result.duplicates()}
    assert groups == {("benign/a-copy.png", "benign/a.png", "malignant/b.png"), ("benign/c.png", "normal/c-again.png")}
    conflicts = [[r.rel_path for r in g] for g in result.label_conflicts()]
    assert len(conflicts) == 2 and result.summary()["n_duplicate_files"] == 3
    assert main(["scan", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "label conflict" in out and "benign/c.png (benign) = normal/c-again.png (normal)" in out


def test_scan_decodes_large_images_one_at_a_time(tmp_path, monkeypatch):
    """Images over the scan's pixel budget are decoded alone, whatever the number of threads (a folder of
    huge images costs the memory of one); small ones still go in parallel."""
    import threading

    import numpy as np
    from PIL import Image

    import core.data.library as library

    for i in range(3):
        Image.fromarray(np.full((40, 40), i * 50, np.uint8)).save(tmp_path / f"big{i}.png")
    monkeypatch.setattr(library, "SCAN_PIXEL_BUDGET", 2000, raising=False)   # one 40x40 image (1600 px) fits, two not
    real_read, lock, arrived = library.read_image, threading.Lock(), threading.Event()
    state = {"now": 0, "most": 0}

    def read_and_wait_for_company(path, **kw):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            if state["now"] > 1:
                arrived.set()
        arrived.wait(0.5)                     # give a second decoder the chance to start beside this one
        try:
            return real_read(path, **kw)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(library, "read_image", read_and_wait_for_company)
    result = library.scan_folder(tmp_path, workers=4)
    assert len(result.images) == 3 and not result.errors
    assert state["most"] == 1
