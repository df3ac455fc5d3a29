"""The Study dialog (Train menu): the settings of `medssl study` for the open project; Start queues a
"study" run (core.project.runs JOB_KINDS), the same job the command line runs."""

from __future__ import annotations

from PySide6 import QtWidgets

from core.study.runner import BUDGETS, ENSEMBLE_WEIGHTS
from desktop.widgets.job_dialogs import JobDialog
from desktop.widgets.weights_offer import WeightsOffer

BUDGET_HELP = {"tiny": "tiny models, 32 px (smoke test, seconds)",
               "cpu": f"{BUDGETS['cpu']['backbone_a']} + {BUDGETS['cpu']['backbone_b']}, "
                      f"{BUDGETS['cpu']['image_size']} px (about 3 CPU-hours for 800 images on 2 cores)",
               "gpu": f"{BUDGETS['gpu']['backbone_a']} both members, {BUDGETS['gpu']['image_size']} px (the paper)"}


class StudyDialog(JobDialog):
    kind = "study"
    title = "Run a study"

    def __init__(self, project, settings=None, parent=None):
        super().__init__(project, settings, parent)
        self.budget = QtWidgets.QComboBox()
        for name in BUDGETS:
            self.budget.addItem(f"{name}: {BUDGET_HELP[name]}", name)
        self.k = self.spin(2, 20, 5)
        self.seed = self.spin(0, 2**31 - 1, 0)
        self.transductive = QtWidgets.QCheckBox("pretrain member B once on all images (transductive; labels unused)")
        self.control = QtWidgets.QCheckBox("random-mask MAE control at equal compute")
        self.weights = QtWidgets.QComboBox()
        for w, text in zip(ENSEMBLE_WEIGHTS, ("equal weights (the paper)", "weights fitted on validation")):
            self.weights.addItem(text, w)
        self.member_a = QtWidgets.QComboBox()
        self.member_a.addItem("ImageNet weights", "imagenet")
        self.member_a.addItem("random init (offline smoke test)", "random")
        self.form.addRow("Budget", self.budget)
        self.form.addRow("Folds", self.k)
        self.form.addRow("Seed", self.seed)
        self.weights_offer = WeightsOffer(BUDGETS["cpu"]["backbone_a"], self)
        self.form.addRow("Member A", self.member_a)
        self.form.addRow("", self.weights_offer)
        self.form.addRow("Member B", self.transductive)
        self.form.addRow("Control", self.control)
        self.form.addRow("Ensemble", self.weights)
        self.n_boot = self.spin(100, 20000, 2000, step=500)
        self.n_boot.setToolTip("bootstrap resamples of each paired difference in the report (more: steadier "
                               "intervals, a slower report)")
        self.form.addRow("Bootstrap", self.n_boot)
        self.form.addRow("Device", self.device)
        v = self.remembered()
        self.name.setText(v.get("name", "study"))
        self.budget.setCurrentIndex(max(0, self.budget.findData(v.get("budget", "cpu"))))
        self.k.setValue(int(v.get("k", 5)))
        self.seed.setValue(int(v.get("seed", 0)))
        self.transductive.setChecked(bool(v.get("transductive", False)))
        self.control.setChecked(bool(v.get("control", True)))
        self.weights.setCurrentIndex(max(0, self.weights.findData(v.get("ensemble_weights", "equal"))))
        self.member_a.setCurrentIndex(max(0, self.member_a.findData(v.get("member_a_init", "imagenet"))))
        self.n_boot.setValue(int(v.get("n_boot", 2000)))
        self.set_device(v.get("device", ""))
        self.budget.currentIndexChanged.connect(self._member_a_changed)
        self.member_a.currentIndexChanged.connect(self._member_a_changed)
        self._member_a_changed()
        self.note.setText("Duplicate-aware grouped k-fold; member A (ImageNet), member B (entropy-guided MAE, "
                          "pretrained on each fold's training images unless transductive), the control, each "
                          "fine-tuned with the same recipe; the A+B ensemble; a report (Train > Studies). "
                          "Images excluded as near-duplicates take no part. Stopped studies continue where "
                          "they stopped.")

    def _member_a_changed(self) -> None:
        """Member A's ImageNet weights (of the budget's backbone): found here, or offered in place."""
        self.weights_offer.set_name(BUDGETS[self.budget.currentData()]["backbone_a"])
        self.weights_offer.setVisible(self.member_a.currentData() == "imagenet")

    def values(self) -> dict:
        return {"name": self.name.text(), **self.config(), "device": self.device.currentData()}

    def validate(self) -> str | None:
        if self.project is None or self.project.store is None:
            return "Open a project first."
        if self.member_a.currentData() == "imagenet":
            if self.weights_offer.installed is None:
                return "Still looking for the ImageNet weights on this computer…"
            if not self.weights_offer.installed:
                return (f"The ImageNet weights {self.weights_offer.name} of member A are not on this computer: "
                        f"Download or Import them above, or choose random init.")
        if len({it.label for it in self.project.items if it.label}) < 2:
            return "Label images of at least two classes first."
        return None

    def config(self) -> dict:
        return {"budget": self.budget.currentData(), "k": self.k.value(), "seed": self.seed.value(),
                "transductive": self.transductive.isChecked(), "control": self.control.isChecked(),
                "ensemble_weights": self.weights.currentData(), "member_a_init": self.member_a.currentData(),
                "n_boot": self.n_boot.value(), "device": self.device.currentData() or None}
