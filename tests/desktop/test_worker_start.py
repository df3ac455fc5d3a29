"""DataLoader workers of the window's jobs: not forked from the multi-threaded (Qt, jobs, CUDA) process on
Linux but started by a forkserver; the datasets its jobs load with workers survive that (they are pickled)."""

from __future__ import annotations

import multiprocessing

import pytest
import torch
from torch.utils.data import DataLoader

from desktop.app import worker_start_method


def test_worker_start_method_by_platform():
    assert worker_start_method("linux") == "forkserver"
    assert worker_start_method("darwin") is None and worker_start_method("win32") is None   # spawn already


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver here")
def test_the_fine_tuning_dataset_loads_in_a_forkserver_worker(demo_dir):
    from core.train.data import ClassifierDataset, ImageCache, load_labeled_data

    data = load_labeled_data(demo_dir)
    samples = data.samples[:4]
    cidx = {c: i for i, c in enumerate(data.classes)}
    cache = ImageCache(samples, 32)
    ds = ClassifierDataset(samples, cidx, cache, train=True)
    torch.manual_seed(0)
    loader = DataLoader(ds, batch_size=4, num_workers=1,
                        multiprocessing_context=worker_start_method("linux"))
    x, y, _ = next(iter(loader))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [cidx[s.label] for s in samples]
