"""ImageNet weights on request: `medssl weights get/import/verify/list` against a real HTTP server on 127.0.0.1
that answers like the Hugging Face hub, driven through the real huggingface_hub client (HF_ENDPOINT)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.cli import main
from fake_hub import COMMIT, serve_fake_hub
from core.jobs import EventKind, JobCancelled

NAME = "convnext_atto.d2_in1k"          # timm publishes it as timm/convnext_atto.d2_in1k/model.safetensors
REPO = "timm/" + NAME
@pytest.fixture(scope="module")
def atto_file(tmp_path_factory) -> tuple[bytes, dict]:
    """A real-size convnext_atto state dict as the hub would publish it (random weights, seeded)."""
    import timm
    from safetensors.torch import save

    torch.manual_seed(0)
    sd = {k: v.contiguous() for k, v in timm.create_model("convnext_atto", pretrained=False).state_dict().items()}
    return save(sd), sd


@pytest.fixture
def hub(atto_file, monkeypatch, tmp_path):
    with serve_fake_hub({(REPO, "model.safetensors"): atto_file[0]}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("MEDSSL_WEIGHTS_DIR", str(tmp_path / "weights"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield fake


def test_get_installs_a_verified_file_that_loads_into_timm(hub, atto_file, tmp_path, monkeypatch, capsys):
    import timm

    from core.models.backbones import create_backbone
    from core.models.weights import find_imagenet_weights, load_imagenet_weights
    from core.models.weights_folder import read_manifest

    monkeypatch.setenv("HF_TOKEN", "hf_secret_token")
    assert main(["weights", "get", NAME, "--quiet"]) == 0
    installed = tmp_path / "weights" / f"{NAME}.safetensors"
    assert installed.read_bytes() == atto_file[0]
    entry = read_manifest()[NAME]
    assert entry.sha256 == hashlib.sha256(atto_file[0]).hexdigest() and entry.source == f"hub:{REPO}@{COMMIT}"
    assert entry.licence == "apache-2.0"
    assert all(auth == "Bearer hf_secret_token" for _, _, _, auth in hub.requests)
    assert not list((tmp_path / "weights").glob(".*part*"))
    # fine-tuning finds it offline and it loads into timm.create_model
    found = find_imagenet_weights("convnext_atto")
    assert found.kind == "weights-dir" and found.path == installed and found.tag == "d2_in1k"
    model = create_backbone("convnext_atto", num_classes=3)
    rep = load_imagenet_weights(model, "convnext_atto")
    assert torch.equal(model.stem[0].weight, atto_file[1]["stem.0.weight"])
    assert rep.to_dict()["sha256"] == entry.sha256
    plain = timm.create_model("convnext_atto", pretrained=False)
    from safetensors.torch import load_file
    plain.load_state_dict(load_file(str(installed)))
    capsys.readouterr()
    assert main(["weights", "verify"]) == 0
    assert f"ok  {NAME}" in capsys.readouterr().out
    assert main(["weights", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(NAME))
    assert f"yes ({entry.sha256[:12]})" in line and REPO in line and "apache-2.0" in line


def test_a_cut_connection_is_resumed_with_a_range_request(hub, atto_file, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from core.models.download import download_weights

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 1 << 20)   # whole chunks are kept
    hub.cut_first_body_after = 3_500_000
    entry = download_weights(NAME)
    assert entry.path.read_bytes() == atto_file[0]
    assert hub.ranges() == [f"bytes={3 << 20}-"], hub.requests


def test_a_cancelled_download_resumes_where_it_stopped(hub, atto_file, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    from core.models.download import download_job, partial_download

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 1 << 20)
    job = download_job(NAME)
    job.subscribe(lambda e: job.cancel() if e.kind is EventKind.PROGRESS and e.phase == "downloading" else None)
    with pytest.raises(JobCancelled):
        job.run()
    part = partial_download(NAME)
    assert part is not None and 0 < part.stat().st_size < len(atto_file[0])
    assert not (tmp_path / "weights" / f"{NAME}.safetensors").exists()
    assert main(["weights", "list"]) == 0
    assert "partial download" in next(x for x in capsys.readouterr().out.splitlines() if x.startswith(NAME))
    done = part.stat().st_size
    assert main(["weights", "get", NAME, "--quiet"]) == 0
    assert (tmp_path / "weights" / f"{NAME}.safetensors").read_bytes() == atto_file[0]
    assert f"bytes={done}-" in hub.ranges()
    assert partial_download(NAME) is None


def test_a_corrupted_download_is_refused(hub, tmp_path):
    from core.models.download import WeightsDownloadError, download_weights
    from core.models.weights_folder import read_manifest

    hub.corrupt = True
    with pytest.raises(WeightsDownloadError, match="damaged"):
        download_weights(NAME)
    assert not list((tmp_path / "weights").glob("*.safetensors")) and not list((tmp_path / "weights").glob(".*part"))
    assert NAME not in read_manifest()


def test_not_on_the_hub_says_where_to_put_the_file(hub, tmp_path, capsys):
    assert main(["weights", "get", "convnext_femto.d1_in1k"]) == 1
    err = capsys.readouterr().err
    assert "timm/convnext_femto.d1_in1k" in err and "medssl weights import FILE --name convnext_femto.d1_in1k" in err
    assert str(tmp_path / "weights" / "convnext_femto.d1_in1k.safetensors") in err


def test_unreachable_hub_is_a_clear_error(monkeypatch, tmp_path, capsys):
    with socket.socket() as s:           # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MEDSSL_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(["weights", "get", NAME]) == 1
    err = capsys.readouterr().err
    assert "cannot reach" in err and "medssl weights import" in err


def test_offline_mode_refuses_to_download(hub, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run([sys.executable, "-m", "core.cli", "weights", "get", NAME], capture_output=True,
                         text=True, env=env, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 1, out.stderr
    assert "offline mode" in out.stderr and "medssl weights import" in out.stderr
    assert hub.requests == []
    assert not (tmp_path / "weights" / f"{NAME}.safetensors").exists()


def test_import_checks_the_file_and_verify_finds_damage(atto_file, tmp_path, monkeypatch, capsys):
    from core.models.weights_folder import WeightsFileError, import_weights, read_manifest

    monkeypatch.setenv("MEDSSL_WEIGHTS_DIR", str(tmp_path / "weights"))
    brought = tmp_path / "downloads" / "convnext_atto_d2-01bb0f51.pth"
    brought.parent.mkdir()
    torch.save({"state_dict": atto_file[1]}, brought)           # a torch file, nested as many are
    assert main(["weights", "import", str(brought), "--name", NAME]) == 0
    installed = tmp_path / "weights" / f"{NAME}.pth"
    assert installed.is_file() and brought.is_file()              # copied, the original left alone
    assert read_manifest()[NAME].source == f"import:{brought}"
    with pytest.raises(WeightsFileError, match="does not load into convnext_femto"):
        import_weights(brought, "convnext_femto.d1_in1k")        # another model's file
    with pytest.raises(WeightsFileError, match="pass --name"):
        import_weights(brought)                                  # the file name says nothing
    not_weights = tmp_path / "downloads" / "convnext_atto.d2_in1k.safetensors"
    not_weights.write_bytes(b"this is not a safetensors file")
    with pytest.raises(WeightsFileError, match=re.escape(str(not_weights))):
        import_weights(not_weights)
    assert main(["weights", "verify"]) == 0
    data = bytearray(installed.read_bytes())
    data[-10] ^= 0xFF
    installed.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["weights", "verify"]) == 1
    assert f"BAD {NAME}" in capsys.readouterr().out and json.loads(
        (tmp_path / "weights" / "manifest.json").read_text())[NAME]["sha256"]


def test_get_then_finetune_from_imagenet_needs_no_other_step(hub, atto_file, demo_dir, tmp_path, capsys):
    """`medssl weights get` then `medssl finetune --init imagenet`: the run starts from the downloaded file and
    records its sha256."""
    assert main(["weights", "get", NAME, "--quiet"]) == 0
    out = tmp_path / "run"
    assert main(["finetune", str(demo_dir), "--out", str(out), "--backbone", "convnext_atto", "--init", "imagenet",
                 "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--workers", "0", "--device", "cpu",
                 "--precision", "fp32", "--quiet"]) == 0
    init = json.loads((out / "checkpoint-best" / "config.json").read_text())["init"]
    assert init["source"] == "imagenet" and init["kind"] == "weights-dir" and init["tag"] == "d2_in1k"
    assert init["sha256"] == hashlib.sha256(atto_file[0]).hexdigest()
    assert init["path"] == str(tmp_path / "weights" / f"{NAME}.safetensors")
