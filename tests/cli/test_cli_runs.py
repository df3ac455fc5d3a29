"""`medssl finetune --project P.db` records its run in the project, through core.project.runs like the window."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--tiny", "--backbone", "convnext_atto", "--init", "random", "--image-size", "32", "--epochs", "1",
        "--workers", "0", "--device", "cpu", "--precision", "fp32", "--quiet"]


@pytest.fixture
def project_db(demo_dir, tmp_path) -> Path:
    from core.data.library import scan_folder
    from core.project.store import ProjectStore

    db = tmp_path / "images" / ".medssl" / "project.db"
    with ProjectStore(db) as store:
        store.import_scan(scan_folder(demo_dir))
    return db


def test_finetune_with_a_project_is_recorded(project_db, tmp_path, capsys):
    from core.project.store import ProjectStore

    assert main(["finetune", "--project", str(project_db), "--name", "cli run", *TINY]) == 0
    with ProjectStore(project_db) as store:
        (run,) = store.list_runs()
        assert run.kind == "finetune" and run.name == "cli run" and run.state == "finished", run.error
        assert run.finished is not None and run.error == ""
        # the project's run folder layout, as for a run queued in the window
        assert Path(run.run_dir) == project_db.parent / "runs" / f"finetune-{run.id}-cli-run"
        assert {Path(c.path).name for c in store.checkpoints(run.id)} == {"checkpoint-best", "checkpoint-last"}
        assert {"test_accuracy", "val_balanced_accuracy"} <= set(run.metrics)
        assert run.config["backbone"] == "convnext_atto" and run.config["tiny"] and run.config["split_name"] == "default"
    assert f"run #{run.id}" in capsys.readouterr().err

    # the same --out again without --resume: refused before anything is written, the run kept as it was
    out = run.run_dir
    assert main(["finetune", "--project", str(project_db), "--out", out, *TINY]) == 1
    assert f"folder of run #{run.id}" in capsys.readouterr().err
    with ProjectStore(project_db) as store:
        assert [r.state for r in store.list_runs()] == ["finished"]
        assert store.get_run(run.id).metrics == run.metrics
    # --resume continues that run: the same row, no second one
    assert main(["finetune", "--project", str(project_db), "--out", out, "--resume", *TINY]) == 0
    with ProjectStore(project_db) as store:
        assert [(r.id, r.state) for r in store.list_runs()] == [(run.id, "finished")]
        assert len(store.checkpoints(run.id)) == 2


def test_finetune_without_project_or_out_is_a_clear_error(demo_dir, capsys):
    assert main(["finetune", str(demo_dir), *TINY]) == 1
    assert "give --out" in capsys.readouterr().err


def test_pretrain_with_a_project_is_recorded(project_db, demo_dir, capsys):
    from core.project.store import ProjectStore

    args = ["pretrain", "mae", str(demo_dir), "--project", str(project_db), "--tiny", "--backbone", "convnext_atto",
            "--image-size", "64", "--epochs", "1", "--batch-size", "32", "--warmup-epochs", "0",
            "--decoder-width", "16", "--entropy-mode", "random", "--device", "cpu"]
    assert main(args) == 0
    with ProjectStore(project_db) as store:
        (run,) = store.list_runs()
        assert run.kind == "pretrain" and run.name == "mae" and run.state == "finished", run.error
        assert Path(run.run_dir) == project_db.parent / "runs" / f"pretrain-{run.id}-mae"
        assert run.config["out"] == run.run_dir and run.config["method"] == "mae"
        assert {Path(c.path).name for c in store.checkpoints(run.id)} == {"checkpoint-last", "encoder.safetensors"}
        assert run.metrics["final_loss"] > 0
    # the same folder with other settings: the trainer refuses; the finished run stays as it was
    assert main([*args, "--out", run.run_dir, "--lr", "1"]) == 1
    assert "error" in capsys.readouterr().err
    with ProjectStore(project_db) as store:
        (again,) = store.list_runs()
        assert (again.state, again.error, again.metrics, again.finished) == ("finished", "", run.metrics, run.finished)
