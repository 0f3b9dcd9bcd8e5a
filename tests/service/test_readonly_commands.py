"""Commands that read a tracking store (``hyperctl list``, ``ui``, ``translate``, ``evaluate``,
``sample``) never create one,
say which store they read, and say when it holds no runs (issue 16, kind 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cli import main
from service.exitcodes import EXIT_BAD_INPUT, EXIT_OK
from service.io import tracking


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_list_without_arguments_creates_nothing(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == EXIT_OK
    out = capsys.readouterr().out
    store = f"sqlite:///{cwd / 'runs' / 'mlflow.db'}"
    assert f"store: {store}" in out and f"no runs in {store} (no store there yet)" in out
    assert not (cwd / "runs").exists()


def test_ui_and_translate_on_a_missing_store_create_nothing(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = cwd / "other"
    elsewhere.mkdir()
    assert main(["ui", "--storage", str(elsewhere)]) == EXIT_OK  # no server started on an empty store
    assert "no runs in sqlite:///" in capsys.readouterr().out
    assert main(["translate", "0123456789abcdef", "--storage", str(elsewhere)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"neither a checkpoint folder nor a run in sqlite:///{elsewhere / 'mlflow.db'}" in err
    assert list(elsewhere.iterdir()) == []


def test_list_of_an_empty_store_says_so(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"sqlite:///{cwd / 'runs' / 'mlflow.db'}"
    (cwd / "runs").mkdir()
    tracking._client(uri).create_experiment("empty")
    assert tracking.store_exists(uri)
    assert main(["list"]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"no runs in {uri}\n" in out and "RUN ID" not in out


def test_evaluate_and_sample_on_a_missing_store_create_nothing(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = cwd / "other"
    elsewhere.mkdir()
    store = f"sqlite:///{elsewhere / 'mlflow.db'}"
    assert main(["evaluate", "0123456789abcdef", "--split", "test", "--storage", str(elsewhere)]) == EXIT_BAD_INPUT
    assert f"0123456789abcdef: neither a checkpoint folder nor a run in {store}" in capsys.readouterr().err
    for args in (
        ["evaluate", "models:/lm/1", "--split", "test"],
        ["evaluate", "runs:/0123/model", "--split", "test", "--log"],
        ["sample", "models:/lm/1"],
    ):
        assert main([*args, "--storage", str(elsewhere)]) == EXIT_BAD_INPUT
        assert f"{args[1]}: no MLflow store at {store} (nothing has run there yet)" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == [] and not (cwd / "runs").exists() and not (cwd / "mlruns").exists()
