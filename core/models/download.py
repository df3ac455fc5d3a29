"""Public ImageNet weights from the Hugging Face hub, fetched only when a person asks for them.

This is the one module of MedSSL that opens a network connection, and only ``medssl weights get`` and the
window's "Download" buttons call it: scanning, training and prediction never do, and no image or label
ever leaves the machine (the request names a public model file, nothing else).

It uses huggingface_hub's own client (the library timm uses), so ``HF_ENDPOINT`` (a mirror), ``HF_TOKEN``,
``HTTP(S)_PROXY`` and ``HF_HUB_OFFLINE`` mean what they mean for every Hugging Face tool. The file is
written to ``.<name>.safetensors.part`` in the weights folder: a cut connection is resumed by the client
itself, a cancelled or killed download is resumed by the next ``get`` (HTTP range request), and a file
whose sha256 differs from the one the hub reports is deleted, never installed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from core.models.weights import weights_dir
from core.data.library import file_sha256
from core.models.weights_folder import DEFAULT_WEIGHTS, InstalledWeights, install_file, pretrained_cfg

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class WeightsDownloadError(RuntimeError):
    """The download did not happen or was refused; the message says why and how to get the file by hand."""


def hub_source(name: str) -> tuple[str, str]:
    """(Hugging Face repo id, file name) timm publishes ``name``'s weights under."""
    cfg = pretrained_cfg(name)
    repo = cfg.get("hf_hub_id")
    if not repo:
        raise WeightsDownloadError(f"timm has no Hugging Face source for '{name}' "
                                   f"(only {cfg.get('url') or 'no URL'}); import the file with "
                                   f"`medssl weights import FILE --name {name}`")
    return repo, cfg.get("hf_hub_filename") or "model.safetensors"


def _by_hand(name: str, repo: str, filename: str) -> str:
    target = weights_dir() / f"{name}.safetensors"
    return (f"To install it by hand, download https://huggingface.co/{repo}/resolve/main/{filename} on a "
            f"machine with internet and run `medssl weights import FILE --name {name}` (or copy it to {target}).")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _progress_bar(ctx, name: str):
    """A tqdm class for huggingface_hub that turns its byte counts into job events and honours cancel."""
    from tqdm.auto import tqdm

    class JobProgress(tqdm):
        def __init__(self, *args, **kwargs):
            self.bytes_done = kwargs.get("initial") or 0
            self.bytes_total = kwargs.get("total")
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            ctx.check_cancelled()        # raised before this chunk is written: the .part file holds whole chunks
            self.bytes_done += n
            ctx.progress(self.bytes_done, self.bytes_total, f"downloading {name}", phase="downloading")

    return JobProgress


def download_weights(name: str = DEFAULT_WEIGHTS, *, ctx=None, revision: str = "main") -> InstalledWeights:
    """Fetch ``name`` (timm ``arch.tag``) into the weights folder, verified, and return its record."""
    import httpx2
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    repo, filename = hub_source(name)
    if _offline():
        raise WeightsDownloadError(f"offline mode (HF_HUB_OFFLINE is set): not downloading {repo}/{filename}. "
                                   + _by_hand(name, repo, filename))
    endpoint = os.environ.get("HF_ENDPOINT") or None        # read now: the client reads it only at import
    token = os.environ.get("HF_TOKEN") or None
    url = hf_hub_url(repo, filename, revision=revision, endpoint=endpoint)
    say = ctx.log if ctx is not None else (lambda msg: None)
    try:
        meta = get_hf_file_metadata(url, token=token, endpoint=endpoint, retry_on_errors=True)
    except (RepositoryNotFoundError, EntryNotFoundError, RevisionNotFoundError) as exc:
        raise WeightsDownloadError(f"the hub has no {filename} in {repo} ({type(exc).__name__}). "
                                   + _by_hand(name, repo, filename)) from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise WeightsDownloadError(f"the hub refused {url} (HTTP {status}). " + _by_hand(name, repo, filename)
                                   ) from exc
    except (OfflineModeIsEnabled, OSError, httpx2.HTTPError) as exc:   # the client's transport errors
        raise WeightsDownloadError(f"cannot reach {url} ({type(exc).__name__}: {exc}). "
                                   + _by_hand(name, repo, filename)) from exc

    folder = weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    part = _part_path(name)
    state = folder / f".{name}.part.json"
    resume = 0
    if part.is_file():
        try:
            same = json.loads(state.read_text()).get("etag") == meta.etag
        except (OSError, ValueError):
            same = False
        resume = part.stat().st_size if same else 0
        if not same or (meta.size is not None and resume > meta.size):
            part.unlink()
            resume = 0
    state.write_text(json.dumps({"etag": meta.etag, "size": meta.size, "url": url}))
    if resume:
        say(f"resuming {filename} of {repo} at {resume} of {meta.size} bytes")
    else:
        say(f"downloading {filename} of {repo} ({meta.size} bytes) from {endpoint or 'huggingface.co'}")
    with open(part, "ab") as fh:
        http_get(meta.location, fh, resume_size=resume, headers=build_hf_headers(token=token),
                 expected_size=meta.size, displayed_filename=f"{name}.safetensors",
                 tqdm_class=_progress_bar(ctx, name) if ctx is not None else None)
    digest = file_sha256(part)
    if meta.etag and _SHA256.match(meta.etag) and digest != meta.etag:
        part.unlink()
        state.unlink(missing_ok=True)
        raise WeightsDownloadError(f"the downloaded {filename} of {repo} is damaged: sha256 {digest[:16]}... but "
                                   f"the hub reports {meta.etag[:16]}...; nothing was installed (run the same "
                                   f"command again)")
    entry = install_file(part, name, f"hub:{repo}@{meta.commit_hash}", sha256=digest, move=True)
    state.unlink(missing_ok=True)
    say(f"installed {entry.path} (sha256 {digest})")
    return entry


def download_job(name: str = DEFAULT_WEIGHTS):
    """The download as a cancellable job (the CLI's progress bar, the window's worker)."""
    from core.jobs import Job

    return Job(f"weights {name}", lambda ctx: download_weights(name, ctx=ctx))


def _part_path(name: str) -> Path:
    return weights_dir() / f".{name}.safetensors.part"


def partial_download(name: str) -> Path | None:
    """The unfinished download of ``name`` the next ``get`` resumes, if any."""
    part = _part_path(name)
    return part if part.is_file() else None
