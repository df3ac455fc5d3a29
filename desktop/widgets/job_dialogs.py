"""Dialogs that launch jobs: pretraining, fine-tuning, building an ensemble, predicting a folder.

Each dialog edits one plain dict (the run's stored config, see :data:`core.project.runs.JOB_KINDS`),
remembers the last values per project-independent key in the desktop settings, shows the compute device
(CPU / CUDA) and lets the user pick it. :meth:`JobDialog.request` returns ``(kind, name, config)``.
Defaults, ranges and tool tips of the training options come from the config dataclasses
(``core.train.config.FINETUNE_OPTIONS``, ``core.pretrain.config.TRAIN_OPTIONS``) and the MAE defaults from
the method (``default_options``), like the CLI's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from PySide6 import QtCore, QtWidgets

from desktop.bridge.jobs_bridge import AsyncCaller
from desktop.widgets.weights_offer import WeightsOffer

BACKBONES = ["convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano", "convnext_tiny",
             "convnext_small", "convnextv2_atto", "convnextv2_femto", "convnextv2_nano", "convnextv2_tiny"]

#: pretraining entries shown in the method list: (label, registry name, option overrides)
METHOD_LABELS = {
    "mae": "MAE, entropy-guided masks",
    "mae-random": "MAE, random masks",
    "simclr": "SimCLR",
    "micle": "MICLe (SimCLR, positives from the same case)",
    "fgssl": "FG-SSL (hierarchical jigsaw, Barlow Twins)",
    "multimodal": "Multimodal contrastive (other modalities of a case)",
}


def device_entries(cuda_count: int, names: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(label, value) of the compute devices: auto, CPU, each CUDA GPU (with its name once known)."""
    out = [(f"Automatic ({'CUDA' if cuda_count else 'CPU'})", ""), ("CPU", "cpu")]
    for i in range(cuda_count):
        out.append((f"CUDA:{i}" + (f" {names[i]}" if i < len(names) else ""), f"cuda:{i}"))
    return out


def cuda_device_count() -> int:
    """Visible CUDA devices; does not initialise CUDA, so the UI thread may ask."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cuda_device_names(count: int) -> list[str]:
    """The GPUs' names. This initialises CUDA in the process (seconds with some drivers): run it in a
    worker (AsyncCaller), never on the UI thread."""
    import torch

    return [torch.cuda.get_device_name(i) for i in range(count)]


def method_entries() -> list[tuple[str, str, dict]]:
    from core.pretrain import list_methods

    out = []
    for name in list_methods():
        out.append((METHOD_LABELS.get(name, name), name, {}))
        if name == "mae":
            out.append((METHOD_LABELS["mae-random"], "mae", {"entropy_mode": "random"}))
    return out


class PathPicker(QtWidgets.QWidget):
    def __init__(self, caption: str, *, folder: bool = False, filt: str = "", parent=None):
        super().__init__(parent)
        self.edit = QtWidgets.QLineEdit()
        self.button = QtWidgets.QToolButton()
        self.button.setText("…")
        lay = QtWidgets.QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.edit, 1)
        lay.addWidget(self.button)
        self.button.clicked.connect(lambda: self._pick(caption, folder, filt))

    def _pick(self, caption, folder, filt) -> None:
        start = self.edit.text() or str(Path.home())
        if folder:
            path = QtWidgets.QFileDialog.getExistingDirectory(self, caption, start)
        else:
            path, _ = QtWidgets.QFileDialog.getOpenFileName(self, caption, start, filt)
        if path:
            self.edit.setText(path)

    def text(self) -> str:
        return self.edit.text().strip()

    def setText(self, text: str) -> None:
        self.edit.setText(text)


class JobDialog(QtWidgets.QDialog):
    kind = ""
    title = ""

    def __init__(self, project, settings=None, parent=None):
        super().__init__(parent)
        self.project = project
        self.settings = settings
        self.setWindowTitle(self.title)
        self.setMinimumWidth(520)
        self.form = QtWidgets.QFormLayout()
        self.form.setFieldGrowthPolicy(QtWidgets.QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.name = QtWidgets.QLineEdit()
        self.form.addRow("Run name", self.name)
        self.device = QtWidgets.QComboBox()
        cuda_count = cuda_device_count()
        for label, value in device_entries(cuda_count):
            self.device.addItem(label, value)
        if cuda_count:      # the names come from a worker and fill in the labels
            self._device_names = AsyncCaller(workers=1, parent=self)
            self._device_names.submit(lambda: cuda_device_names(cuda_count),
                                      lambda names: self._name_devices(cuda_count, names))
        self.note = QtWidgets.QLabel()
        self.note.setObjectName("dim")
        self.note.setWordWrap(True)
        self.buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Ok
                                                  | QtWidgets.QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Ok).setText("Start")
        self.buttons.accepted.connect(self._accept)
        self.buttons.rejected.connect(self.reject)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addLayout(self.form)
        lay.addWidget(self.note)
        lay.addWidget(self.buttons)

    def spin(self, lo, hi, value, step=1, decimals: int | None = None):
        if decimals is None:
            w = QtWidgets.QSpinBox()
        else:
            w = QtWidgets.QDoubleSpinBox()
            w.setDecimals(decimals)
        w.setRange(lo, hi)
        w.setSingleStep(step)
        w.setValue(value)
        return w

    # -- remembered values ------------------------------------------------------------------------------
    def _key(self) -> str:
        return f"jobs/{self.kind}"

    def remembered(self) -> dict:
        if self.settings is None:
            return {}
        raw = self.settings.value(self._key())
        try:
            return json.loads(raw) if raw else {}
        except (TypeError, ValueError):
            return {}

    def remember(self, values: dict) -> None:
        if self.settings is not None:
            self.settings.set_value(self._key(), json.dumps(values))

    def _name_devices(self, cuda_count: int, names: list[str]) -> None:
        for label, value in device_entries(cuda_count, names):
            self.device.setItemText(self.device.findData(value), label)

    def set_device(self, value: str) -> None:
        i = self.device.findData(value or "")
        self.device.setCurrentIndex(max(0, i))

    # -- result -----------------------------------------------------------------------------------------
    def values(self) -> dict:
        raise NotImplementedError

    def config(self) -> dict:
        raise NotImplementedError

    def validate(self) -> str | None:
        return None

    def request(self) -> tuple[str, str, dict]:
        return self.kind, self.name.text().strip() or self.kind, self.config()

    def _accept(self) -> None:
        problem = self.validate()
        if problem:
            QtWidgets.QMessageBox.warning(self, self.title, problem)
            return
        self.remember(self.values())
        self.accept()


# ---------------------------------------------------------------------------------------------- pretrain
class TrainingDialog(JobDialog):
    """Pretraining and fine-tuning share the model and schedule rows (and their remembered values)."""
    tiny_text = "test-size model (smoke tests only)"

    def __init__(self, project, settings=None, parent=None):
        super().__init__(project, settings, parent)
        self.backbone = QtWidgets.QComboBox()
        self.backbone.setEditable(True)
        self.backbone.addItems(BACKBONES)
        self.backbone.setToolTip(self.options()["backbone"].help)
        self.tiny = QtWidgets.QCheckBox(self.tiny_text)
        self.image_size = self.option_spin("image_size", 32)
        self.epochs = self.option_spin("epochs")
        self.batch = self.option_spin("batch_size")
        self.lr = self.option_spin("lr", 1e-4, decimals=6)
        self.estimate = QtWidgets.QLabel("Looking for the speed earlier runs measured…")
        self.estimate.setObjectName("dim")
        self.estimate.setWordWrap(True)
        self.measure = QtWidgets.QPushButton("Measure speed")
        self.measure.setToolTip("Time a few training steps of this backbone at this image size (a few seconds, "
                                "in the background)")
        self.measure.clicked.connect(self.measure_speed)
        self._speeds: list | None = None      # core.train.estimate.Throughput, newest first; None: still reading
        self._cuda = cuda_device_count() > 0
        self._estimator = AsyncCaller(workers=1, parent=self)
        store = getattr(project, "store", None)
        if store is not None:
            from core.train.estimate import project_throughputs

            self._estimator.submit(lambda: project_throughputs(store, self._cuda), self._got_speeds,
                                   lambda msg: self._got_speeds([]))
        else:
            self._speeds = []

    def options(self):
        """The run's :class:`core.train.options.ConfigOptions` (defaults, ranges, help)."""
        raise NotImplementedError

    def option_default(self, name: str):
        return self.options()[name].default

    def option_spin(self, name: str, step=1, decimals: int | None = None):
        """A spin box with the option's range, default and help (as its tool tip)."""
        spec = self.options()[name]
        if spec.min is None or spec.max is None:
            raise ValueError(f"option {name} needs a range to be shown in a spin box")
        w = self.spin(spec.min, spec.max, spec.default, step, decimals)
        w.setToolTip(spec.help)
        return w

    def add_model_rows(self) -> None:
        f = self.form
        f.addRow("Backbone", self.backbone)
        f.addRow("", self.tiny)
        f.addRow("Image size (px)", self.image_size)
        f.addRow("Epochs", self.epochs)
        f.addRow("Batch size", self.batch)
        f.addRow("Learning rate", self.lr)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.estimate, 1)
        row.addWidget(self.measure, 0, QtCore.Qt.AlignmentFlag.AlignTop)
        f.addRow("Estimated time", row)

    # -- time estimate ------------------------------------------------------------------------------------
    def watch_estimate(self, *spins) -> None:
        """Called once a dialog has all its rows: the estimate follows every setting it depends on."""
        for w in (self.image_size, self.epochs, *spins):
            w.valueChanged.connect(self.update_estimate)
        self.backbone.currentTextChanged.connect(self.update_estimate)
        self.tiny.toggled.connect(self.update_estimate)
        self.device.currentIndexChanged.connect(self.update_estimate)
        self.update_estimate()

    def training_images(self) -> int | None:
        """Images one epoch trains on (None without an open project)."""
        items = getattr(self.project, "items", None)
        return len(items) if items else None

    def _got_speeds(self, speeds: list) -> None:
        self._speeds = list(speeds) + (self._speeds or [])
        self.update_estimate()

    def update_estimate(self) -> None:
        from core.train.estimate import device_type, estimate_time

        if self._speeds is None:
            return
        n = self.training_images()
        if not n:
            self.estimate.setText("Open a project with images to get a time estimate.")
            return
        kind = device_type(self.device.currentData(), self._cuda)
        est = estimate_time(self.kind, backbone=self.backbone.currentText().strip(), tiny=self.tiny.isChecked(),
                            image_size=self.image_size.value(), epochs=self.epochs.value(), n_images=n,
                            device_type=kind, measured=self._speeds)
        self.estimate.setText(f"{self.epochs.value()} epochs of {n} images: {est.text()}." if est is not None else
                              f"No earlier run measured a comparable setting on {kind.upper()}: Measure speed "
                              "to estimate.")

    def measure_speed(self) -> None:
        """A short probe of the chosen setting, off the UI thread; its speed joins the measured ones."""
        backbone, tiny, size = self.backbone.currentText().strip(), self.tiny.isChecked(), self.image_size.value()
        batch, device = self.batch.value(), self.device.currentData() or None
        self.measure.setEnabled(False)
        self.estimate.setText(f"Measuring {backbone} at {size} px…")

        def probe():
            from desktop.bridge.jobs_bridge import import_engine

            return import_engine("core.train.estimate").probe_throughput(backbone, tiny=tiny, image_size=size,
                                                                         batch_size=batch, device=device)

        def failed(msg: str) -> None:
            self.measure.setEnabled(True)
            self.estimate.setText(f"Could not measure {backbone}: {msg}")

        self._estimator.submit(probe, lambda t: (self.measure.setEnabled(True), self._got_speeds([t])), failed)

    def restore_model(self, v: dict) -> None:
        self.backbone.setCurrentText(v.get("backbone", self.option_default("backbone")))
        self.tiny.setChecked(bool(v.get("tiny", False)))
        self.image_size.setValue(int(v.get("image_size", self.option_default("image_size"))))
        self.epochs.setValue(int(v.get("epochs", self.option_default("epochs"))))
        self.batch.setValue(int(v.get("batch_size", self.option_default("batch_size"))))
        self.lr.setValue(float(v.get("lr", self.option_default("lr"))))
        self.set_device(v.get("device", ""))

    def model_values(self) -> dict:
        return {"backbone": self.backbone.currentText(), "tiny": self.tiny.isChecked(),
                "image_size": self.image_size.value(), "epochs": self.epochs.value(),
                "batch_size": self.batch.value(), "lr": self.lr.value(), "device": self.device.currentData(),
                "name": self.name.text()}


class PretrainDialog(TrainingDialog):
    kind = "pretrain"
    title = "Pretrain an encoder (self-supervised)"
    tiny_text = "test-size model (a few thousand weights; smoke tests only)"

    def __init__(self, project, settings=None, parent=None):
        super().__init__(project, settings, parent)
        self.method = QtWidgets.QComboBox()
        for label, name, extra in method_entries():
            self.method.addItem(label, (name, extra))
        mae = self.mae_defaults()
        self.mask_ratio = self.spin(0.05, 0.95, mae["mask_ratio"], 0.05, decimals=2)
        self.entropy_mode = QtWidgets.QComboBox()
        for label, v in (("high entropy first", "high"), ("low entropy first", "low"), ("random (plain MAE)", "random")):
            self.entropy_mode.addItem(label, v)
        self.entropy_mode.setCurrentIndex(self.entropy_mode.findData(mae["entropy_mode"]))
        self.tau = self.spin(0.01, 100.0, mae["tau"], 0.1, decimals=2)
        self.eps = self.spin(0.0, 1.0, mae["eps"], 0.05, decimals=2)
        self.mae_box = QtWidgets.QGroupBox("Masking (MAE)")
        mf = QtWidgets.QFormLayout(self.mae_box)
        mf.addRow("Mask ratio", self.mask_ratio)
        mf.addRow("Entropy mode", self.entropy_mode)
        mf.addRow("Temperature τ", self.tau)
        mf.addRow("Uniform mix ε", self.eps)
        f = self.form
        f.addRow("Method", self.method)
        self.add_model_rows()
        f.addRow(self.mae_box)
        f.addRow("Device", self.device)
        self.method.currentIndexChanged.connect(self._method_changed)
        self._restore()
        self._method_changed()
        self.watch_estimate()
        folder = project.paths.folder if project is not None and project.paths else None
        self.note.setText(f"Trains on every image of {folder} (labels are not used). "
                          "Cancel saves a checkpoint; Resume continues it." if folder else "")

    def options(self):
        from core.pretrain.config import TRAIN_OPTIONS

        return TRAIN_OPTIONS

    @staticmethod
    def mae_defaults() -> dict:
        from core.pretrain import get_method

        return get_method("mae").default_options()

    def _restore(self) -> None:
        v = self.remembered()
        mae = self.mae_defaults()
        i = self.method.findText(v.get("method_label", METHOD_LABELS["mae"]))
        if i >= 0:
            self.method.setCurrentIndex(i)
        self.restore_model(v)
        self.mask_ratio.setValue(float(v.get("mask_ratio", mae["mask_ratio"])))
        self.entropy_mode.setCurrentIndex(max(0, self.entropy_mode.findData(v.get("entropy_mode",
                                                                                  mae["entropy_mode"]))))
        self.tau.setValue(float(v.get("tau", mae["tau"])))
        self.eps.setValue(float(v.get("eps", mae["eps"])))
        if v.get("name"):
            self.name.setText(v["name"])
            self.name.setModified(True)

    def _method_changed(self) -> None:
        name, extra = self.method.currentData()
        self.mae_box.setVisible(name == "mae")
        if "entropy_mode" in extra:
            self.entropy_mode.setCurrentIndex(self.entropy_mode.findData(extra["entropy_mode"]))
            self.entropy_mode.setEnabled(False)
        else:
            if name == "mae" and self.entropy_mode.currentData() == "random":
                self.entropy_mode.setCurrentIndex(0)
            self.entropy_mode.setEnabled(True)
        if not self.name.isModified():
            self.name.setText("mae-random" if extra.get("entropy_mode") == "random" else name)
        self.adjustSize()

    def values(self) -> dict:
        return {**self.model_values(), "method_label": self.method.currentText(),
                "mask_ratio": self.mask_ratio.value(), "entropy_mode": self.entropy_mode.currentData(),
                "tau": self.tau.value(), "eps": self.eps.value()}

    def validate(self) -> str | None:
        if self.image_size.value() % 32:
            return "The image size must be a multiple of 32 (the encoder's stride)."
        if self.method.currentData()[0] == "mae" and self.image_size.value() < 64:
            return "MAE hides 32 px cells and needs hidden and visible ones: use 64 px or more."
        if self.project is None or self.project.paths is None:
            return "Open a project first."
        return None

    def config(self) -> dict:
        from core.models.backbones import TINY_CONVNEXT
        from core.pretrain import get_method
        from core.pretrain.config import TrainConfig

        name, extra = self.method.currentData()
        options = dict(get_method(name).default_options())
        if name == "mae":
            options.update(mask_ratio=self.mask_ratio.value(), entropy_mode=self.entropy_mode.currentData(),
                           tau=self.tau.value(), eps=self.eps.value())
        options.update(extra)
        cfg = TrainConfig(method=name, data=str(self.project.paths.folder), backbone=self.backbone.currentText(),
                          timm_kwargs={k: list(v) for k, v in TINY_CONVNEXT.items()} if self.tiny.isChecked()
                          else {}, image_size=self.image_size.value(), epochs=self.epochs.value(),
                          batch_size=self.batch.value(), lr=self.lr.value(), options=options,
                          device=self.device.currentData() or None,
                          warmup_epochs=min(5.0, max(0.0, self.epochs.value() / 10)))
        return cfg.to_dict()


# ---------------------------------------------------------------------------------------------- finetune
def runs_of(project, kind: str, finished_only: bool = True) -> list:
    store = getattr(project, "store", None)
    if store is None:
        return []
    return [r for r in reversed(store.list_runs(kind)) if r.run_dir and (r.state == "finished" or not finished_only)]


class FinetuneDialog(TrainingDialog):
    kind = "finetune"
    title = "Fine-tune a classifier"

    def __init__(self, project, settings=None, parent=None):
        super().__init__(project, settings, parent)
        self.init_imagenet = QtWidgets.QRadioButton("ImageNet weights")
        self.init_pretrained = QtWidgets.QRadioButton("A pretraining run of this project")
        self.init_random = QtWidgets.QRadioButton("Random (no pretraining)")
        self.weights_file = PathPicker("ImageNet weights", filt="Weights (*.safetensors *.pth *.bin);;All files (*)")
        self.weights_file.setToolTip("Optional: a weights file of your own. Empty: the installed weights below.")
        self.weights_offer = WeightsOffer(self.backbone.currentText(), self)
        self.pretrain_run = QtWidgets.QComboBox()
        for r in runs_of(project, "pretrain"):
            self.pretrain_run.addItem(f"#{r.id} {r.name} ({r.config.get('method', '')}, {r.config.get('backbone', '')})",
                                      r.run_dir)
        if self.pretrain_run.count() == 0:
            self.pretrain_run.addItem("(no finished pretraining run yet)", "")
        self.val_fraction = self.option_spin("val_fraction", 0.05, decimals=2)
        self.test_fraction = self.option_spin("test_fraction", 0.05, decimals=2)
        self.patience = self.option_spin("patience")
        box = QtWidgets.QGroupBox("Initial weights")
        bl = QtWidgets.QGridLayout(box)
        bl.addWidget(self.init_imagenet, 0, 0)
        bl.addWidget(self.weights_file, 0, 1)
        bl.addWidget(self.weights_offer, 1, 1)
        bl.addWidget(self.init_pretrained, 2, 0)
        bl.addWidget(self.pretrain_run, 2, 1)
        bl.addWidget(self.init_random, 3, 0)
        bl.setColumnStretch(1, 1)
        f = self.form
        f.addRow(box)
        self.add_model_rows()
        f.addRow("Validation fraction", self.val_fraction)
        f.addRow("Test fraction", self.test_fraction)
        f.addRow("Early-stopping patience", self.patience)
        f.addRow("Device", self.device)
        for b in (self.init_imagenet, self.init_pretrained, self.init_random):
            b.toggled.connect(self._init_changed)
        self.pretrain_run.currentIndexChanged.connect(self._run_changed)
        self.backbone.currentTextChanged.connect(lambda text: self.weights_offer.set_name(text.strip()))
        self._restore()
        self._init_changed()
        self.watch_estimate(self.val_fraction, self.test_fraction)
        self.note.setText("Uses the labelled images of this project. The first run saves its split (stratified by "
                          "class, grouped by case) in the project as \"default\"; later runs reuse it, so ensemble "
                          "members are tested on the same images (the fractions apply only when no split is saved).")

    def options(self):
        from core.train.config import FINETUNE_OPTIONS

        return FINETUNE_OPTIONS

    def training_images(self) -> int | None:
        """The labelled images less the validation and test fractions (about: a saved split may differ)."""
        items = getattr(self.project, "items", None) or []
        n = sum(1 for it in items if it.label)
        return round(n * max(0.0, 1 - self.val_fraction.value() - self.test_fraction.value())) or None

    def _restore(self) -> None:
        v = self.remembered()
        init = v.get("init", "pretrained" if self.pretrain_run.currentData() else "random")
        {"imagenet": self.init_imagenet, "pretrained": self.init_pretrained}.get(init, self.init_random).setChecked(True)
        self.weights_file.setText(v.get("weights_file", ""))
        self.restore_model(v)
        self.val_fraction.setValue(float(v.get("val_fraction", self.option_default("val_fraction"))))
        self.test_fraction.setValue(float(v.get("test_fraction", self.option_default("test_fraction"))))
        self.patience.setValue(int(v.get("patience", self.option_default("patience"))))
        self.name.setText(v.get("name", "classifier"))

    def init_mode(self) -> str:
        return ("imagenet" if self.init_imagenet.isChecked() else
                "pretrained" if self.init_pretrained.isChecked() else "random")

    def _init_changed(self) -> None:
        mode = self.init_mode()
        self.weights_file.setEnabled(mode == "imagenet")
        self.weights_offer.setVisible(mode == "imagenet")
        self.pretrain_run.setEnabled(mode == "pretrained")
        self._run_changed()

    def _run_changed(self) -> None:
        """A pretraining run fixes the backbone (and image size default) to what it was trained with."""
        if self.init_mode() != "pretrained" or not self.pretrain_run.currentData():
            self.backbone.setEnabled(True)
            self.tiny.setEnabled(True)
            self.backbone.setToolTip(self.options()["backbone"].help)
            return
        store = self.project.store
        run = next((r for r in store.list_runs("pretrain") if r.run_dir == self.pretrain_run.currentData()), None)
        if run is not None:
            self.backbone.setCurrentText(run.config.get("backbone", self.backbone.currentText()))
            self.tiny.setChecked(bool(run.config.get("timm_kwargs")))
            self.image_size.setValue(int(run.config.get("image_size", self.image_size.value())))
        self.backbone.setEnabled(False)        # the encoder's weights fit only the backbone it was trained as
        self.tiny.setEnabled(False)
        self.backbone.setToolTip("Fixed by the pretraining run: its encoder was trained as this backbone.")

    def values(self) -> dict:
        return {**self.model_values(), "init": self.init_mode(), "weights_file": self.weights_file.text(),
                "val_fraction": self.val_fraction.value(), "test_fraction": self.test_fraction.value(),
                "patience": self.patience.value()}

    def validate(self) -> str | None:
        mode = self.init_mode()
        if mode == "pretrained" and not self.pretrain_run.currentData():
            return "Choose a finished pretraining run, or another kind of initial weights."
        if mode == "imagenet" and self.weights_file.text() and not Path(self.weights_file.text()).is_file():
            return f"{self.weights_file.text()}: no such file."
        if mode == "imagenet" and not self.weights_file.text():
            if self.weights_offer.installed is None:
                return "Still looking for the ImageNet weights on this computer…"
            if not self.weights_offer.installed:
                return (f"The ImageNet weights {self.weights_offer.name} are not on this computer: Download or "
                        f"Import them above, or choose another kind of initial weights.")
        if self.project is None or self.project.store is None:
            return "Open a project first."
        n = sum(1 for it in self.project.items if it.label)
        if n < 6:
            return f"Only {n} labelled images: label a few more per class first."
        return None

    def config(self) -> dict:
        from core.train.config import FinetuneConfig
        from dataclasses import asdict

        mode = self.init_mode()
        init_weights = (self.pretrain_run.currentData() if mode == "pretrained" else
                        (self.weights_file.text() or None) if mode == "imagenet" else None)
        backbone, timm_kwargs, tiny = self.backbone.currentText(), {}, self.tiny.isChecked()
        if mode == "pretrained":
            run = next((r for r in self.project.store.list_runs("pretrain") if r.run_dir == init_weights), None)
            if run is not None and run.config.get("timm_kwargs"):
                timm_kwargs, tiny = dict(run.config["timm_kwargs"]), False
        cfg = FinetuneConfig(backbone=backbone, tiny=tiny, timm_kwargs=timm_kwargs, init=mode,
                             init_weights=init_weights, image_size=self.image_size.value(), epochs=self.epochs.value(),
                             batch_size=self.batch.value(), lr=self.lr.value(), val_fraction=self.val_fraction.value(),
                             test_fraction=self.test_fraction.value(), patience=self.patience.value(),
                             device=self.device.currentData() or None, num_workers=0)
        return asdict(cfg)


# ---------------------------------------------------------------------------------------------- ensemble
class EnsembleDialog(JobDialog):
    kind = "ensemble"
    title = "Build an ensemble"

    def __init__(self, project, settings=None, parent=None):
        super().__init__(project, settings, parent)
        self.members = QtWidgets.QListWidget()
        for r in runs_of(project, "finetune"):
            best = Path(r.run_dir) / "checkpoint-best"
            it = QtWidgets.QListWidgetItem(f"#{r.id} {r.name}  (init {r.config.get('init', '?')}, "
                                           f"{r.config.get('backbone', '')}, val bal. acc "
                                           f"{r.metrics.get('val_balanced_accuracy', float('nan')):.3f})")
            it.setData(QtCore.Qt.ItemDataRole.UserRole, (str(best if best.exists() else r.run_dir), slug_name(r)))
            it.setFlags(it.flags() | QtCore.Qt.ItemFlag.ItemIsUserCheckable)
            it.setCheckState(QtCore.Qt.CheckState.Checked)
            self.members.addItem(it)
        self.members.setMinimumHeight(140)
        self.calibrate = QtWidgets.QCheckBox("calibrate each member (temperature scaling on its validation split)")
        self.calibrate.setChecked(True)
        self.form.addRow("Members", self.members)
        self.form.addRow("", self.calibrate)
        self.form.addRow("Device", self.device)
        self.verdicts = verdict_label()
        earlier = runs_of(project, "ensemble") + runs_of(project, "study")
        self.verdicts.setText("\n".join(verdict_text(r) for r in earlier) if earlier else
                              "After it is built, the run says whether the ensemble beats its best member on the "
                              "test images (Predict a folder shows it too).")
        self.form.addRow("Earlier ensembles" if earlier else "", self.verdicts)
        self.preview = verdict_label()
        self.form.addRow("If built now", self.preview)
        self._previewer = AsyncCaller(workers=1, parent=self)
        self.members.itemChanged.connect(lambda _it: self.preview_verdict())
        self.preview_verdict()
        v = self.remembered()
        self.name.setText(v.get("name", "ensemble"))
        self.set_device(v.get("device", ""))
        self.note.setText("Members must share classes and image size. Runs fine-tuned in this project share "
                          "its saved split (\"default\"), so the report compares members and ensemble on the "
                          "same test images.")

    def preview_verdict(self) -> None:
        """The ticked members' ensemble against its best member, from their runs' cached logits (a worker)."""
        members = self.checked()
        if not members:
            self.preview.setText("Tick the members.")
            return
        paths, names = [p for p, _ in members], self._names([n for _, n in members])
        self.preview.setText("Comparing with the members…")

        def compare():
            from desktop.bridge.jobs_bridge import import_engine

            return import_engine("core.inference.ensemble").cached_verdict(paths, names)

        self._previewer.submit(compare, lambda v: self.preview.setText(
            v.sentence() + " (from the members' cached logits, equal weights)" if v is not None else
            "The members' runs kept no logits to compare with: the built ensemble's run will say."),
            lambda msg: self.preview.setText(f"These members cannot be compared: {msg}"), key="preview")

    @staticmethod
    def _names(names: list[str]) -> list[str]:
        return names if len(set(names)) == len(names) else [f"{n}-{i}" for i, n in enumerate(names)]

    def checked(self) -> list[tuple[str, str]]:
        out = []
        for i in range(self.members.count()):
            it = self.members.item(i)
            if it.checkState() == QtCore.Qt.CheckState.Checked:
                out.append(it.data(QtCore.Qt.ItemDataRole.UserRole))
        return out

    def values(self) -> dict:
        return {"name": self.name.text(), "device": self.device.currentData()}

    def validate(self) -> str | None:
        if not self.checked():
            return "Tick at least one finished fine-tuning run."
        return None

    def config(self) -> dict:
        members = self.checked()
        names = self._names([n for _, n in members])
        return {"members": [p for p, _ in members], "names": names, "calibrate": self.calibrate.isChecked(),
                "split": "test", "device": self.device.currentData() or None}


def verdict_text(run) -> str:
    """One line on an ensemble (or study) run: does its ensemble beat its best member, measured where."""
    from core.inference.verdict import run_verdict

    verdict = run_verdict(run)
    if verdict is None:
        return f"#{run.id} {run.name}: no comparison with its members recorded (an older or unfinished run)."
    advice = "" if verdict.beats else f" Predicting with {verdict.best_member} alone is as good or better."
    return f"#{run.id} {run.name}: {verdict.sentence()}{advice}"


def verdict_label() -> QtWidgets.QLabel:
    label = QtWidgets.QLabel()
    label.setObjectName("verdict")
    label.setWordWrap(True)
    label.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def slug_name(run) -> str:
    from core.project.runs import slug

    return slug(f"{run.name}-{run.id}")


# ----------------------------------------------------------------------------------------------- predict
class PredictDialog(JobDialog):
    kind = "predict"
    title = "Predict a folder"

    def __init__(self, project, settings=None, parent=None):
        super().__init__(project, settings, parent)
        self.ensemble = QtWidgets.QComboBox()
        self._ensemble_runs = {}
        for r in runs_of(project, "ensemble"):
            path = r.ensemble_file
            self._ensemble_runs[str(Path(path).resolve())] = r
            self.ensemble.addItem(f"#{r.id} {r.name} ({len(r.config.get('members', []))} members)", path)
        self.ensemble_file = PathPicker("Ensemble file", filt="Ensemble (*.json);;All files (*)")
        self.verdict = verdict_label()
        self.ensemble.currentIndexChanged.connect(self._show_verdict)
        self.ensemble_file.edit.textChanged.connect(self._show_verdict)
        self.folder = PathPicker("Image folder", folder=True)
        self.batch = self.spin(0, 1024, 0)
        self.batch.setSpecialValueText("auto (4 on a CPU, 32 on a GPU)")
        self.form.addRow("Ensemble", self.ensemble)
        self.form.addRow("…or a file", self.ensemble_file)
        self.form.addRow("", self.verdict)
        self.form.addRow("Folder", self.folder)
        self.form.addRow("Batch size", self.batch)
        self.form.addRow("Device", self.device)
        v = self.remembered()
        self.name.setText(v.get("name", "predict"))
        self.batch.setValue(int(v.get("batch_size", 0)))
        self.set_device(v.get("device", ""))
        if project is not None and project.paths is not None:
            self.folder.setText(str(project.paths.folder))
        self._show_verdict()
        self.note.setText("Predictions of the project's own folder are stored in the project (Predictions page, "
                          "library filters, Grad-CAM); any folder also gets RUN/predictions.csv. Re-running "
                          "after a cancel skips images already done.")

    def ensemble_path(self) -> str:
        return self.ensemble_file.text() or (self.ensemble.currentData() or "")

    def _show_verdict(self) -> None:
        """The chosen ensemble against its best member, as its ensemble run measured it."""
        path = self.ensemble_path()
        run = self._ensemble_runs.get(str(Path(path).resolve())) if path else None
        self.verdict.setText(verdict_text(run) if run is not None else
                             "" if not path else "This file was not built in this project: no comparison with its "
                             "members is known.")

    def values(self) -> dict:
        return {"name": self.name.text(), "batch_size": self.batch.value(), "device": self.device.currentData()}

    def validate(self) -> str | None:
        if not self.ensemble_path() or not Path(self.ensemble_path()).is_file():
            return "Choose an ensemble (build one first, from Train → Build ensemble)."
        if not Path(self.folder.text()).is_dir():
            return f"{self.folder.text()}: not a folder."
        return None

    def config(self) -> dict:
        folder = Path(self.folder.text())
        in_project = (self.project is not None and self.project.paths is not None
                      and folder.resolve() == self.project.paths.folder.resolve())
        return {"ensemble": self.ensemble_path(), "folder": str(folder), "batch_size": self.batch.value() or None,
                "device": self.device.currentData() or None, "store": in_project}


DIALOGS = {"pretrain": PretrainDialog, "finetune": FinetuneDialog, "ensemble": EnsembleDialog, "predict": PredictDialog}
__all__ = ["DIALOGS", "PretrainDialog", "FinetuneDialog", "EnsembleDialog", "PredictDialog", "device_entries"]
