"""The one folder walk (core.data.walk): its rules one by one, and that every caller lists the same images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.walk import attach_masks, walk_folder
from tests.dicom_files import CT_PIXELS, write_dicom


def write_png(path: Path, value: int = 100, size: tuple[int, int] = (16, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size[1], size[0]), value % 256, dtype=np.uint8)
    pixels[: size[1] // 2] = (value * 7) % 256        # some texture, so entropy maps are not trivial
    Image.fromarray(pixels).save(path)
    return path


def rels(walk) -> list[str]:
    return walk.rel_paths


# -- the rules, one by one --------------------------------------------------------------------------------
def test_images_by_suffix_any_case_and_nothing_else(tmp_path):
    for name in ("a.png", "b.JPG", "c.jpeg", "d.tif", "e.TIFF", "f.bmp", "g.dcm", "h.dicom"):
        (tmp_path / name).write_bytes(b"")   # names decide; nothing is decoded
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "weights.npy").write_bytes(b"\x93NUMPY")
    assert rels(walk_folder(tmp_path)) == ["a.png", "b.JPG", "c.jpeg", "d.tif", "e.TIFF", "f.bmp", "g.dcm",
                                           "h.dicom"]


def test_suffix_less_dicom_is_detected_by_its_preamble(tmp_path):
    pytest.importorskip("pydicom")
    write_dicom(tmp_path / "series" / "IM0001", CT_PIXELS)
    (tmp_path / "series" / "README").write_text("x" * 200)
    assert rels(walk_folder(tmp_path)) == ["series/IM0001"]


def test_dicomdir_index_hidden_entries_and_medssl_are_skipped(tmp_path):
    pytest.importorskip("pydicom")
    write_dicom(tmp_path / "DICOMDIR", CT_PIXELS)
    for rel in (".medssl/thumbs/t.png", ".git/x.png", "a/.hidden.png", ".b/c.png", "a/kept.png"):
        write_png(tmp_path / rel)
    assert rels(walk_folder(tmp_path)) == ["a/kept.png"]


def test_masks_are_attached_in_order_and_never_listed(tmp_path):
    for rel in ("a.png", "a.tif", "a_mask.png", "a_mask_10.png", "a_mask_2.png", "a_mask_1.png", "b.png",
                "z_mask.png", "sub/a_mask.png"):
        write_png(tmp_path / rel)
    walk = walk_folder(tmp_path)
    assert rels(walk) == ["a.png", "a.tif", "b.png"]
    expected = [tmp_path / n for n in ("a_mask.png", "a_mask_1.png", "a_mask_2.png", "a_mask_10.png")]
    assert walk.masks[tmp_path / "a.png"] == expected and walk.masks[tmp_path / "a.tif"] == expected
    assert tmp_path / "b.png" not in walk.masks
    assert walk.orphan_masks == [tmp_path / "sub" / "a_mask.png", tmp_path / "z_mask.png"]
    assert len(walk.mask_files) == 6


def test_attach_masks_takes_images_the_walk_did_not_list(tmp_path):
    masks, orphans = attach_masks([tmp_path / "scan.xyz"], [tmp_path / "scan_mask.png", tmp_path / "q_mask.png"])
    assert masks == {tmp_path / "scan.xyz": [tmp_path / "scan_mask.png"]} and orphans == [tmp_path / "q_mask.png"]


def test_file_links_are_images_and_broken_links_are_reported(tmp_path):
    write_png(tmp_path / "real.png")
    os.symlink(tmp_path / "real.png", tmp_path / "alias.png")
    os.symlink(tmp_path / "missing.png", tmp_path / "dangling.png")
    os.symlink("self.png", tmp_path / "self.png")                         # a link to itself
    walk = walk_folder(tmp_path)
    assert rels(walk) == ["alias.png", "real.png"]
    assert [p.path.name for p in walk.problems] == ["dangling.png", "self.png"]
    assert all("symbolic link" in p.reason for p in walk.problems)


def test_folder_links_are_followed_once_and_loops_are_cut(tmp_path):
    root = tmp_path / "root"
    write_png(root / "benign" / "a.png")
    write_png(tmp_path / "outside" / "o.png")
    os.symlink(root / "benign", root / "another-name")          # same folder twice: listed under its real path
    os.symlink(root, root / "benign" / "up")                    # a loop back to the root
    os.symlink(tmp_path / "outside", root / "linked")           # a folder outside the root
    os.symlink(tmp_path / "outside", root / "linked-again")
    walk = walk_folder(root)
    assert rels(walk) == ["benign/a.png", "linked/o.png"]
    assert walk.problems == []


def test_a_link_to_itself_named_like_a_folder_does_not_stop_the_walk(tmp_path):
    write_png(tmp_path / "a" / "x.png")
    os.symlink("loop", tmp_path / "loop")
    assert rels(walk_folder(tmp_path)) == ["a/x.png"]


@pytest.mark.skipif(os.name != "posix", reason="only POSIX file systems allow names that are not UTF-8")
def test_names_that_are_not_utf8_are_reported_not_fatal(tmp_path):
    write_png(tmp_path / "ok.png")
    try:
        fd = os.open(os.fsencode(tmp_path) + b"/caf\xe9.png", os.O_CREAT | os.O_WRONLY)
        os.close(fd)
        os.mkdir(os.fsencode(tmp_path) + b"/dir\xff")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    open(os.fsencode(tmp_path) + b"/dir\xff/inner.png", "wb").close()
    walk = walk_folder(tmp_path)
    assert rels(walk) == ["ok.png"]
    reasons = sorted(p.reason for p in walk.problems)
    assert len(reasons) == 2 and all("not valid UTF-8" in r for r in reasons)
    for p in walk.problems:                                      # printable: bytes written as \\xNN
        str(p).encode("utf-8")
    assert {p.path.name for p in walk.problems} == {"caf\\xe9.png", "dir\\xff"}


def test_excluded_folders_are_not_entered(tmp_path):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "out" / "a_entropy.png")
    assert rels(walk_folder(tmp_path, exclude=[tmp_path / "out"])) == ["a.png"]


def test_not_a_folder_is_a_clear_error(tmp_path):
    with pytest.raises(NotADirectoryError, match="not a folder"):
        walk_folder(tmp_path / "nope")


def test_cancel_is_checked_between_folders(tmp_path):
    from core.jobs import JobCancelled

    write_png(tmp_path / "a" / "x.png")

    class Cancelled:
        def check_cancelled(self):
            raise JobCancelled("stop")

    with pytest.raises(JobCancelled):
        walk_folder(tmp_path, ctx=Cancelled())


# -- every caller lists the same images -------------------------------------------------------------------
@pytest.fixture
def tricky_folder(tmp_path) -> Path:
    """Every rule at once: masks, shared stems, hidden and app folders, links (file, folder, loop, dangling),
    a DICOMDIR, suffix-less DICOM, an orphan mask, a name that is not UTF-8, and other files."""
    pytest.importorskip("pydicom")
    root = tmp_path / "data"
    write_png(root / "benign" / "a.png", 10)
    write_png(root / "benign" / "a_mask.png", 255)
    write_png(root / "benign" / "a_mask_1.png", 255)
    write_png(root / "benign" / "a.tif", 20)
    write_png(root / "normal" / "b.JPG", 30)
    write_png(root / "unlabeled.bmp", 40)
    write_png(root / "orphan_mask.png", 255)
    write_png(root / ".medssl" / "thumbs" / "t.png", 50)
    write_png(root / "benign" / ".hidden.png", 60)
    write_dicom(root / "ct" / "IM0001", CT_PIXELS)
    write_dicom(root / "DICOMDIR", CT_PIXELS)
    write_png(tmp_path / "elsewhere" / "e.png", 70)
    (root / "notes.txt").write_text("not an image")
    os.symlink(root / "benign", root / "benign-again")
    os.symlink(root, root / "normal" / "loop")
    os.symlink(tmp_path / "elsewhere", root / "elsewhere")
    os.symlink(root / "unlabeled.bmp", root / "normal" / "alias.bmp")
    os.symlink(root / "gone.png", root / "dangling.png")
    try:
        open(os.fsencode(root) + b"/caf\xe9.png", "wb").close()
    except OSError:
        pass
    return root


EXPECTED = ["benign/a.png", "benign/a.tif", "ct/IM0001", "elsewhere/e.png", "normal/alias.bmp", "normal/b.JPG",
            "unlabeled.bmp"]


def test_library_predict_quick_listing_and_entropy_list_the_same_images(tricky_folder, tmp_path):
    from core.analysis.entropy_maps import entropy_folder_job
    from core.data.library import scan_folder
    from core.inference.predict import list_images
    from core.jobs import Job
    from desktop.bridge.rows import quick_listing

    assert rels(walk_folder(tricky_folder)) == EXPECTED
    scan = scan_folder(tricky_folder)
    assert [r.rel_path for r in scan.images] == EXPECTED
    assert {r.rel_path: len(r.mask_paths) for r in scan.images if r.mask_paths} == {"benign/a.png": 2,
                                                                                     "benign/a.tif": 2}
    assert list_images(tricky_folder) == EXPECTED
    listed = quick_listing(tricky_folder)
    assert [it.rel_path for it in listed] == EXPECTED
    assert [it.n_masks for it in listed] == [2, 2, 0, 0, 0, 0, 0]

    out = tmp_path / "entropy"
    result = Job("entropy", entropy_folder_job(tricky_folder, out, radius=2, cell=4, device="cpu")).run()
    assert result["n_images"] == len(EXPECTED) and result["n_written"] == len(EXPECTED)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_entropy.npy"))
    assert written == ["benign/a.png_entropy.npy", "benign/a.tif_entropy.npy", "ct/IM0001_entropy.npy",
                       "elsewhere/e_entropy.npy", "normal/alias_entropy.npy", "normal/b_entropy.npy",
                       "unlabeled_entropy.npy"]
    # the walk's problems (the dangling link, the name that is not UTF-8) are reported, not fatal
    problem_names = {Path(p).name for p, _ in result["errors"]}
    assert "dangling.png" in problem_names
    assert "dangling.png" in {e.path.name for e in scan.errors}


def test_entropy_command_survives_a_symlink_loop(tricky_folder, tmp_path, capsys):
    from core.cli import main

    out = tmp_path / "cli-out"
    assert main(["entropy", str(tricky_folder), "--out", str(out), "--radius", "2", "--cell", "4",
                 "--device", "cpu"]) == 0
    assert len(list(out.rglob("*_entropy.png"))) == len(EXPECTED)
    assert f"{len(EXPECTED)} of {len(EXPECTED)} images written" in capsys.readouterr().out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_pipes_are_never_opened(tmp_path):
    write_png(tmp_path / "a.png")
    os.mkfifo(tmp_path / "IM0002")          # no suffix: a DICOM probe would block reading it
    os.mkfifo(tmp_path / "b.png")
    assert rels(walk_folder(tmp_path)) == ["a.png"]


def test_a_dangling_mask_link_is_reported_and_not_attached(tmp_path):
    write_png(tmp_path / "a.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "a_mask.png")
    walk = walk_folder(tmp_path)
    assert walk.masks == {} and [p.path.name for p in walk.problems] == ["a_mask.png"]
