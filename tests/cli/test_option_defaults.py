"""One source of defaults: the CLI parsers and the option tables read the config dataclasses, so a command
given no options builds exactly the dataclass defaults (they cannot drift apart again)."""

from __future__ import annotations

import argparse

import pytest

from core.cli import build_parser
from core.data.transforms import AugmentConfig
from core.pretrain import get_method, list_methods
from core.pretrain.config import TRAIN_OPTIONS, TrainConfig
from core.train.config import AUGMENT_OPTIONS, FINETUNE_OPTIONS, FinetuneConfig
from core.train.options import ConfigOptions, Option


def test_finetune_default_backbone_is_convnext_tiny():
    # the paper's member A (ConvNeXt-Tiny, ImageNet weights convnext_tiny.fb_in1k), said once
    assert FinetuneConfig().backbone == "convnext_tiny" == FINETUNE_OPTIONS["backbone"].default


def test_finetune_command_without_options_builds_the_dataclass_defaults(tmp_path, monkeypatch):
    import core.train.finetune as finetune_module

    seen = {}

    def fake_job(cfg, out, **kwargs):
        seen["cfg"] = cfg
        raise SystemExit(0)            # stop before any work

    monkeypatch.setattr(finetune_module, "finetune_job", fake_job)
    args = build_parser().parse_args(["finetune", str(tmp_path), "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit):
        args.handler(args)
    assert seen["cfg"] == FinetuneConfig()


def test_finetune_parser_defaults_equal_the_dataclass_fields():
    args = build_parser().parse_args(["finetune", "data", "--out", "run"])
    defaults = FinetuneConfig()
    dests = {"num_workers": "workers"}
    for name in FINETUNE_OPTIONS:
        if name == "backbone":            # None on the command line: a pretraining run's backbone wins
            assert args.backbone is None
            continue
        assert getattr(args, dests.get(name, name)) == getattr(defaults, name), name
    assert (args.vflip, args.rotate) == (AugmentConfig().vflip, AugmentConfig().rotate_deg)


def test_pretrain_command_without_options_builds_the_dataclass_defaults(tmp_path):
    from core.cli.pretrain import config_from_args

    for method in list_methods():
        args = build_parser().parse_args(["pretrain", method, str(tmp_path), "--out", str(tmp_path / "run")])
        expected = TrainConfig(method=method, data=str(tmp_path), out=str(tmp_path / "run"),
                               options=get_method(method).default_options())
        assert config_from_args(args) == expected, method


def test_cli_refuses_values_outside_the_declared_range(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", "data", "--out", "run", "--val-fraction", "0.9"])
    assert "val_fraction must be in [0.05, 0.5], got 0.9" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["pretrain", "mae", "data", "--out", "run", "--epochs", "0"])
    assert "epochs must be in [1, 10000], got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", "data", "--out", "run", "--epochs", "two"])
    assert "invalid int value: 'two'" in capsys.readouterr().err
    args = parser.parse_args(["finetune", "data", "--out", "run", "--epochs", "10000", "--lr", "1"])
    assert (args.epochs, args.lr) == (10000, 1.0)


def test_option_tables_name_only_real_fields_and_cover_the_help():
    with pytest.raises(ValueError, match="no field"):
        ConfigOptions(FinetuneConfig, {"learning_rate": Option("typo")})
    for table in (FINETUNE_OPTIONS, TRAIN_OPTIONS, AUGMENT_OPTIONS):
        for name in table:
            spec = table[name]
            assert spec.help, name
            if spec.min is not None and spec.default is not None:
                assert spec.check(spec.default) == spec.default, name     # defaults lie in their range


def test_add_argument_takes_type_from_the_annotation():
    parser = argparse.ArgumentParser()
    FINETUNE_OPTIONS.add_argument(parser, "num_workers")          # int | None
    FINETUNE_OPTIONS.add_argument(parser, "warmup_epochs")        # float
    TRAIN_OPTIONS.add_argument(parser, "cache_mb")                # float with an int-looking default
    args = parser.parse_args(["--num-workers", "3", "--warmup-epochs", "2", "--cache-mb", "1.5"])
    assert (args.num_workers, args.warmup_epochs, args.cache_mb) == (3, 2.0, 1.5)
    assert parser.parse_args([]).num_workers is None
