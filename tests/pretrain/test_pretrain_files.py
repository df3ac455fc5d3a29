"""Pretraining on part of a folder (``TrainConfig.files``): a study's fold pretrains on its training images."""

from __future__ import annotations

import pytest

from core.pretrain.config import TrainConfig
from core.pretrain.data import scan_images, select_files
from core.pretrain.trainer import read_checkpoint_config, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_select_files_keeps_the_listed_images_and_names_missing_ones(demo_dir):
    records = scan_images(demo_dir).images
    some = [r.rel_path for r in records[:5]]
    assert [r.rel_path for r in select_files(records, some, demo_dir)] == some
    assert select_files(records, [], demo_dir) == records
    with pytest.raises(FileNotFoundError, match="not found or not readable.*nope.png"):
        select_files(records, some + ["nope.png"], demo_dir)


def test_pretraining_uses_only_the_listed_files(demo_dir, tmp_path):
    from core.models.backbones import TINY_CONVNEXT

    files = [r.rel_path for r in scan_images(demo_dir).images[:32]]
    cfg = TrainConfig(method="mae", data=str(demo_dir), files=files, out=str(tmp_path / "run"),
                      backbone="convnext_atto", timm_kwargs={k: list(v) for k, v in TINY_CONVNEXT.items()},
                      image_size=64, epochs=1, batch_size=16, warmup_epochs=0.5, probe_size=0,
                      options={"decoder_width": 32})
    result = train(cfg)
    assert result["n_images"] == 32 and result["steps_per_epoch"] == 2
    saved = read_checkpoint_config(tmp_path / "run")
    assert saved["data"]["n_images"] == 32 and saved["config"]["files"] == files
