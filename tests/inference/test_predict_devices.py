"""Prediction's device decisions, tested on the CPU: exporting to ONNX leaves the caller's ensemble where it
is (a CUDA ensemble must not be moved to the CPU in place), and the ONNX Runtime providers of a run."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from core.inference.ensemble import load_ensemble
from core.inference.predict import cpu_copy, is_on_cpu, ort_providers
from tests.inference.test_predict import ensemble_file  # noqa: F401  (the module-scoped fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_export_onnx_does_not_move_the_callers_ensemble(ensemble_file, tmp_path, monkeypatch):  # noqa: F811
    """Before: export_onnx called ``ens.module.to("cpu")`` on the caller's ensemble (a CUDA one was left on
    the CPU, its ``device`` still saying cuda)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from core.inference.predict import export_onnx

    ens = load_ensemble(ensemble_file, "cpu")

    def moved(*args, **kwargs):
        raise AssertionError("export_onnx moved the caller's ensemble")

    monkeypatch.setattr(ens.module, "to", moved)
    assert export_onnx(ens, tmp_path / "ens.onnx").is_file()


def test_a_module_off_the_cpu_is_exported_from_a_copy(monkeypatch):
    import core.inference.predict as predict

    cpu = nn.Linear(2, 2)
    assert is_on_cpu(cpu) and cpu_copy(cpu) is cpu
    with torch.device("meta"):                      # stands for a CUDA module on this machine
        elsewhere = nn.Linear(2, 2)
    assert not is_on_cpu(elsewhere)
    monkeypatch.setattr(predict, "is_on_cpu", lambda module: False)     # the copy path, run on the CPU
    copied = cpu_copy(cpu)
    assert copied is not cpu and torch.equal(copied.weight, cpu.weight)
    assert copied.weight.data_ptr() != cpu.weight.data_ptr()


@pytest.mark.parametrize("available, device, expect", [
    (["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    # a CPU run (and so export_onnx's check against fp32 PyTorch) never lands on the GPU, where TF32
    # convolutions would move the probabilities by ~1e-3
    (["CUDAExecutionProvider", "CPUExecutionProvider"], "cpu", ["CPUExecutionProvider"]),
    (["CPUExecutionProvider"], "cuda", ["CPUExecutionProvider"]),
])
def test_onnx_runtime_providers_follow_the_device(available, device, expect):
    assert ort_providers(available, device) == expect
