"""Test-time horizontal-flip averaging (``tta: hflip``): the same logits in fine-tuning's evaluation, after
loading the checkpoint, in ``medssl ensemble`` and in ``medssl predict``; Grad-CAM still explains the image
as shown."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.models.classifier import build_classifier, load_classifier, save_classifier_checkpoint
from core.models.tta import HorizontalFlipAverage
from core.train.data import load_labeled_data
from core.train.finetune import finetune
from tests.train.test_finetune import CLASSES, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_flip_average_is_the_mean_of_the_image_and_its_mirror():
    model, _ = build_classifier(tiny_cfg(), CLASSES, lambda m: None)
    model.eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.inference_mode():
        plain, mirrored = model(x), model(torch.flip(x, dims=(-1,)))
        both = HorizontalFlipAverage(model)(x)
    assert not torch.allclose(plain, mirrored)             # the model is not flip-invariant: the test can fail
    torch.testing.assert_close(both, (plain + mirrored) / 2)


def test_a_checkpoint_carries_its_tta_and_every_path_uses_it(demo_dir, tmp_path):
    from core.data.transforms import eval_transform, load_rgb
    from core.inference.ensemble import create_spec, evaluate_ensemble, grad_cam, load_ensemble
    from core.inference.logits import read_logits

    data = load_labeled_data(demo_dir)
    finetune(tiny_cfg(epochs=1, tta="hflip"), data, tmp_path / "run")
    cfg = json.loads((tmp_path / "run" / "checkpoint-best" / "config.json").read_text())
    assert cfg["tta"] == "hflip" and cfg["train"]["tta"] == "hflip"
    model, ccfg = load_classifier(tmp_path / "run")
    assert isinstance(model, HorizontalFlipAverage)

    # the test logits fine-tuning wrote (and its metrics) are the flip average of the loaded model
    rel, _, logged = read_logits(tmp_path / "run" / "logits_test.csv")
    tf = eval_transform(ccfg["image_size"], ccfg["mean"], ccfg["std"])
    x = torch.stack([tf(load_rgb(demo_dir / r)) for r in rel])
    with torch.inference_mode():
        plain = model.model(x).numpy()
        np.testing.assert_allclose(model(x).numpy(), logged, atol=1e-4)
    assert np.abs(plain - logged).max() > 1e-4

    # medssl ensemble reads the same logits; medssl predict's ensemble module gives their softmax
    # (checkpoint-last: the same weights after one epoch, and no cached logits_*.csv: computed afresh)
    spec = create_spec(tmp_path / "ens.json", [tmp_path / "run" / "checkpoint-last"], names=["A"])
    report = evaluate_ensemble(spec, split="test", calibrate=False, save=False)
    z = logged - logged.max(1, keepdims=True)
    probs = dict(zip(rel, np.exp(z) / np.exp(z).sum(1, keepdims=True)))
    np.testing.assert_allclose(report.member_probs_mnc[0], [probs[p] for p in report.paths], atol=1e-4)
    loaded = load_ensemble(spec)
    ens, _members = loaded.predict(torch.stack([loaded.load_image(demo_dir / r) for r in rel]))
    np.testing.assert_allclose(ens, [probs[r] for r in rel], atol=1e-4)

    # Grad-CAM explains the image as shown (the wrapper passes forward_features / forward_head through)
    cam = grad_cam(model, x[:2])
    assert cam.shape[0] == 2 and np.isfinite(cam).all()


def test_an_unknown_tta_in_a_checkpoint_is_refused_by_name(tmp_path):
    model, ccfg = build_classifier(tiny_cfg(), CLASSES, lambda m: None)
    save_classifier_checkpoint(tmp_path / "ck", model, dict(ccfg, tta="rotate-everything"))
    with pytest.raises(ValueError, match="tta must be one of none, hflip"):
        load_classifier(tmp_path / "ck")
