"""The training dialogs open with the config dataclasses' defaults and ranges (the CLI reads the same ones,
tests/cli/test_option_defaults.py), so the window and the command line cannot drift apart."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui


def _check_spin(spin, spec):
    assert spin.value() == pytest.approx(spec.default), spec.name
    assert (spin.minimum(), spin.maximum()) == (pytest.approx(spec.min), pytest.approx(spec.max)), spec.name
    assert spin.toolTip() == spec.help


def test_finetune_dialog_opens_with_the_finetune_defaults(qtbot):
    from core.train.config import FINETUNE_OPTIONS as F, FinetuneConfig
    from desktop.widgets.job_dialogs import FinetuneDialog

    dlg = FinetuneDialog(None, None)
    qtbot.addWidget(dlg)
    assert dlg.backbone.currentText() == FinetuneConfig().backbone == "convnext_tiny"
    for spin, name in ((dlg.image_size, "image_size"), (dlg.epochs, "epochs"), (dlg.batch, "batch_size"),
                       (dlg.lr, "lr"), (dlg.val_fraction, "val_fraction"), (dlg.test_fraction, "test_fraction"),
                       (dlg.patience, "patience")):
        _check_spin(spin, F[name])
    cfg = FinetuneConfig.from_dict(dlg.config())
    defaults = FinetuneConfig()
    for name in ("backbone", "image_size", "epochs", "batch_size", "lr", "val_fraction", "test_fraction", "patience"):
        assert getattr(cfg, name) == getattr(defaults, name), name


def test_pretrain_dialog_opens_with_the_pretraining_and_mae_defaults(qtbot):
    from core.pretrain import get_method
    from core.pretrain.config import TRAIN_OPTIONS as T, TrainConfig
    from desktop.widgets.job_dialogs import PretrainDialog

    dlg = PretrainDialog(None, None)
    qtbot.addWidget(dlg)
    assert dlg.backbone.currentText() == TrainConfig().backbone
    for spin, name in ((dlg.image_size, "image_size"), (dlg.epochs, "epochs"), (dlg.batch, "batch_size"),
                       (dlg.lr, "lr")):
        _check_spin(spin, T[name])
    mae = get_method("mae").default_options()
    assert (dlg.mask_ratio.value(), dlg.tau.value(), dlg.eps.value()) == pytest.approx(
        (mae["mask_ratio"], mae["tau"], mae["eps"]))
    assert dlg.entropy_mode.currentData() == mae["entropy_mode"]


def test_remembered_values_still_win_over_the_defaults(qtbot, tmp_path):
    from desktop.settings import Settings
    from desktop.widgets.job_dialogs import FinetuneDialog

    settings = Settings(tmp_path / "s.ini")
    first = FinetuneDialog(None, settings)
    qtbot.addWidget(first)
    first.epochs.setValue(7)
    first.backbone.setCurrentText("convnext_atto")
    first.remember(first.values())
    again = FinetuneDialog(None, settings)
    qtbot.addWidget(again)
    assert (again.epochs.value(), again.backbone.currentText()) == (7, "convnext_atto")
