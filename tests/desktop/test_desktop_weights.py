"""The window's ImageNet weights offer and page, driven against a local server that answers like the hub."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui

from core.jobs import EventKind  # noqa: E402
from fake_hub import serve_fake_hub  # noqa: E402

NAME = "convnext_atto.d2_in1k"


@pytest.fixture(scope="module")
def atto_bytes() -> bytes:
    import timm
    from safetensors.torch import save

    torch.manual_seed(0)
    return save({k: v.contiguous() for k, v in timm.create_model("convnext_atto").state_dict().items()})


@pytest.fixture
def hub(atto_bytes, monkeypatch, tmp_path):
    with serve_fake_hub({("timm/" + NAME, "model.safetensors"): atto_bytes}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("MEDSSL_WEIGHTS_DIR", str(tmp_path / "weights"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield fake


def test_offer_downloads_with_progress_then_says_installed(qtbot, hub, atto_bytes, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from desktop.widgets.weights_offer import WeightsOffer

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 1 << 20)
    offer = WeightsOffer(NAME)
    qtbot.addWidget(offer)
    offer.show()
    qtbot.waitUntil(lambda: offer.download.isVisible(), timeout=120000)
    assert offer.installed is False and "14.8 MB" in offer.download.text() and offer.import_.isVisible()
    assert "not on this computer" in offer.status.text()
    # first attempt: cancelled after the first chunk (from the job's own thread: deterministic)
    offer.start_download()
    job = offer.runner.job
    job.subscribe(lambda e: job.cancel() if e.kind is EventKind.PROGRESS else None)
    assert offer.cancel.isVisible() and offer.bar.isVisible() and not offer.download.isVisible()
    qtbot.waitUntil(lambda: offer.download.isVisible() and "interrupted" in offer.status.text(), timeout=120000)
    assert offer.runner is None
    # second attempt resumes and installs
    with qtbot.waitSignal(offer.changed, timeout=60000, check_params_cb=lambda installed: installed):
        offer.download.click()
    assert (tmp_path / "weights" / f"{NAME}.safetensors").read_bytes() == atto_bytes
    assert any(r and r != "bytes=0-" for r in hub.ranges())
    assert str(tmp_path / "weights") in offer.status.text() and not offer.download.isVisible()


def test_offer_imports_a_file_and_page_lists_it(qtbot, atto_bytes, tmp_path, monkeypatch):
    from desktop.pages.weights_page import WeightsPage
    from desktop.widgets.weights_offer import WeightsOffer

    monkeypatch.setenv("MEDSSL_WEIGHTS_DIR", str(tmp_path / "weights"))
    brought = tmp_path / "model.safetensors"
    brought.write_bytes(atto_bytes)
    offer = WeightsOffer(NAME)
    qtbot.addWidget(offer)
    qtbot.waitUntil(lambda: offer.installed is False, timeout=120000)
    with qtbot.waitSignal(offer.changed, timeout=60000, check_params_cb=lambda installed: installed):
        offer.import_file(str(brought))
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not weights")
    offer.set_name("convnext_femto.d1_in1k")
    qtbot.waitUntil(lambda: offer.installed is False, timeout=120000)
    offer.import_file(str(bad))
    qtbot.waitUntil(lambda: str(bad) in offer.status.text() and "does not load" in offer.status.text(),
                    timeout=120000)

    page = WeightsPage()
    qtbot.addWidget(page)
    qtbot.waitUntil(lambda: page.table.rowCount() > 0, timeout=120000)
    names = [page.table.item(r, 0).text() for r in range(page.table.rowCount())]
    assert names[0] == "convnext_tiny.fb_in1k" and NAME in names
    row = names.index(NAME)
    assert page.table.item(row, 1).text() == "yes" and page.table.item(row, 4).text() == "apache-2.0"
    assert page.table.item(names.index("convnext_tiny.fb_in1k"), 1).text() == "no"
    page.verify.click()
    qtbot.waitUntil(lambda: "files OK" in page.verify_result.text(), timeout=120000)
    assert page.verify_result.text().startswith("1 of 1 files OK")


def test_page_shows_weights_found_outside_its_folder_as_fine_tuning_finds_them(qtbot, atto_bytes, tmp_path,
                                                                              monkeypatch):
    """Weights in a Hugging Face cache are installed as far as fine-tuning is concerned: the page says so."""
    from desktop.pages.weights_page import WeightsPage

    monkeypatch.setenv("MEDSSL_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    repo = tmp_path / "hf" / f"models--timm--{NAME}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.safetensors").write_bytes(atto_bytes)
    page = WeightsPage()
    qtbot.addWidget(page)
    qtbot.waitUntil(lambda: page.table.rowCount() > 0, timeout=120000)
    names = [page.table.item(r, 0).text() for r in range(page.table.rowCount())]
    row = names.index(NAME)
    assert page.table.item(row, 1).text() == "yes (hf-cache)"
    assert str(repo) in page.table.item(row, 3).text()
    assert page.table.item(names.index("convnext_tiny.fb_in1k"), 1).text() == "no"


def test_window_opens_the_weights_page_without_a_project(qtbot, main_window, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSSL_WEIGHTS_DIR", str(tmp_path / "weights"))
    action = main_window.actions_by_id["show_weights"]
    assert action.isEnabled() and not main_window.project.is_open
    dlg = main_window.show_weights()
    qtbot.addWidget(dlg)
    qtbot.waitUntil(lambda: dlg.page.table.rowCount() > 0, timeout=120000)
    assert str(tmp_path / "weights") in dlg.page.where.text()


def test_finetune_dialog_offers_the_missing_weights_and_never_dead_ends(qtbot, hub, demo_window, tmp_path,
                                                                         atto_bytes):
    from desktop.widgets.job_dialogs import FinetuneDialog

    dlg = FinetuneDialog(demo_window.project, demo_window.settings, demo_window)
    qtbot.addWidget(dlg)
    dlg.init_imagenet.setChecked(True)
    dlg.backbone.setCurrentText("convnext_atto")
    offer = dlg.weights_offer
    assert offer.isVisibleTo(dlg)
    qtbot.waitUntil(lambda: offer.installed is False and offer.name == NAME, timeout=120000)
    assert "not on this computer" in dlg.validate() and NAME in dlg.validate()
    with qtbot.waitSignal(offer.changed, timeout=60000, check_params_cb=lambda installed: installed):
        offer.download.click()
    assert dlg.validate() is None
    assert (tmp_path / "weights" / f"{NAME}.safetensors").read_bytes() == atto_bytes
    dlg.init_random.setChecked(True)
    assert not offer.isVisibleTo(dlg) and dlg.validate() is None
