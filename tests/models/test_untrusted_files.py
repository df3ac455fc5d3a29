"""Untrusted files: a crafted pickle whose unpickling would create a marker file, put where each loader
expects weights, is refused with an error naming the file, and the marker never appears."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from core.models.classifier import build_classifier, load_classifier, save_classifier_checkpoint
from core.train.config import FinetuneConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Attack:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> Path:
    """Overwrite ``path`` with a pickle that would create ``marker`` when unpickled."""
    path.write_bytes(pickle.dumps({"state_dict": _Attack(marker)}))
    return path


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cls")
    cfg = FinetuneConfig(backbone="convnext_atto", tiny=True, init="random", image_size=32)
    model, ccfg = build_classifier(cfg, ["a", "b"], lambda m: None)
    save_classifier_checkpoint(root / "run" / "checkpoint-best", model, ccfg)
    return root / "run"


def _refused(call, path: Path, marker: Path) -> None:
    with pytest.raises(ValueError) as err:
        call()
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_classifier_checkpoint_pickle_is_refused(classifier_run, tmp_path):
    """ensemble --members, predict --ensemble and the window load classifiers through load_classifier."""
    from core.inference.ensemble import create_spec, load_ensemble

    run = tmp_path / "run"
    shutil.copytree(classifier_run, run)
    marker = tmp_path / "marker"
    bad = plant(run / "checkpoint-best" / "model.safetensors", marker)
    _refused(lambda: load_classifier(run), bad, marker)
    spec = create_spec(tmp_path / "ens.json", [run])
    _refused(lambda: load_ensemble(spec.path), bad, marker)


@pytest.mark.parametrize("name", ["encoder.safetensors", "weights.pth", "weights.safetensors"])
def test_init_weights_pickle_is_refused(tmp_path, name):
    """finetune / pretrain --init-weights read weights files through read_encoder_state."""
    from core.pretrain.trainer import read_encoder_state

    marker = tmp_path / "marker"
    bad = plant(tmp_path / name, marker)
    _refused(lambda: read_encoder_state(bad), bad, marker)


@pytest.mark.parametrize("name", ["w.safetensors", "w.pth"])
def test_weights_file_pickle_is_refused(tmp_path, name):
    """finetune --weights-file reads ImageNet weights through load_state_dict_file."""
    from core.models.weights import load_state_dict_file

    marker = tmp_path / "marker"
    bad = plant(tmp_path / name, marker)
    _refused(lambda: load_state_dict_file(bad), bad, marker)


def test_pretrain_checkpoint_pickle_is_refused_by_reconstruct_and_resume(demo_dir, tmp_path):
    """reconstruct loads a pretraining checkpoint; resume also reads its optimizer.pt."""
    from core.analysis.reconstruct import load_mae
    from core.models.backbones import TINY_CONVNEXT
    from core.pretrain.config import TrainConfig
    from core.pretrain.trainer import train

    cfg = dict(method="mae", data=str(demo_dir), backbone="convnext_atto", timm_kwargs=TINY_CONVNEXT,
               image_size=64, epochs=1, batch_size=32, warmup_epochs=0, num_workers=0, precision="fp32",
               probe_size=8, max_steps=1, options={"decoder_width": 16})
    out = tmp_path / "run"
    train(TrainConfig(**cfg, out=str(out)))
    marker = tmp_path / "marker"
    ckpt = out / "checkpoint-last"
    opt = plant(ckpt / "optimizer.pt", marker)
    with pytest.raises(ValueError) as err:
        train(TrainConfig(**{**cfg, "max_steps": 2}, out=str(out)), resume=out)
    assert str(opt) in str(err.value) and not marker.exists()
    bad = plant(ckpt / "model.safetensors", marker)
    _refused(lambda: load_mae(out), bad, marker)
