"""The commands that find a submitted job again from its job file (`list`, `status`, `ui`) take the
`--set` overrides it was submitted with, and `status JOB` honours `--storage`; experiments open in
MLflow's training view. Against a real sqlite MLflow store, with the run opened as `submit` opens it
(no Ray: nothing here trains)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from service.cli import build_parser, main
from service.io import tracking
from service.spec.loading import load_job

from helpers import tiny_job

SUBMITTED_WITH = ["name=tuned", "model.hyper.embed_size=8"]


@pytest.fixture(scope="module")
def submitted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A job file, and a run of it opened with SUBMITTED_WITH and storage elsewhere."""
    tmp = tmp_path_factory.mktemp("store-commands")
    job = tmp / "job.yaml"
    job.write_text(yaml.safe_dump(tiny_job(tmp, "tiny")))
    elsewhere = tmp / "elsewhere"
    spec = load_job(job, [*SUBMITTED_WITH, f"storage={elsewhere}"])
    uri = tracking.tracking_uri_for(spec)
    run_id, _ = tracking.open_run(spec, uri, name=tracking.run_name(spec.name, SUBMITTED_WITH))
    return {"job": str(job), "elsewhere": str(elsewhere), "uri": uri, "run_id": run_id, "tmp": tmp}


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def test_status_finds_the_run_with_the_same_overrides_and_storage(submitted: dict, capsys) -> None:
    code = main(["status", submitted["job"], *sets(SUBMITTED_WITH), "--storage", submitted["elsewhere"]])
    out = capsys.readouterr().out
    assert code == 0, out
    shown = json.loads(out)
    assert shown["run_id"] == submitted["run_id"] and shown["status"] == "RUNNING"
    assert shown["job"] == "tuned" and shown["run_name"] == "tuned embed_size=8"


@pytest.mark.parametrize(
    "args, missing",
    [([], "tiny"), (SUBMITTED_WITH, "tuned")],  # without the overrides; with them but not --storage
    ids=["no-set", "no-storage"],
)
def test_status_names_what_it_looked_for(submitted: dict, capsys, args: list[str], missing: str) -> None:
    code = main(["status", submitted["job"], *sets(args)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"no run of job {missing!r} under {submitted['tmp'] / 'runs' / missing}" in err
    assert "--set" in err and "--storage" in err


def test_list_reads_the_store_the_overrides_name(submitted: dict, capsys) -> None:
    code = main(["list", submitted["job"], *sets([*SUBMITTED_WITH, f"storage={submitted['elsewhere']}"])])
    out = capsys.readouterr().out
    assert code == 0 and submitted["run_id"] in out and " tuned " in out


def test_ui_list_status_accept_set() -> None:
    parser = build_parser()
    for command in (["ui", "job.yaml"], ["list", "job.yaml"], ["status", "job.yaml"]):
        args = parser.parse_args([*command, *sets(SUBMITTED_WITH), "--storage", "/x"])
        assert args.overrides == SUBMITTED_WITH and args.storage == "/x"


def test_experiments_are_created_in_the_training_view(submitted: dict) -> None:
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(submitted["uri"]).get_experiment_by_name("tests")
    assert exp.tags[tracking.TAG_EXPERIMENT_KIND] == "custom_model_development"


def test_ui_marks_existing_experiments_but_creates_no_store(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    missing = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    assert tracking.mark_training_experiments(missing) == {}
    assert not (tmp_path / "none").exists()

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    old = client.create_experiment("made-by-hand")  # as an older version or the user made it
    chosen = client.create_experiment("genai", tags={tracking.TAG_EXPERIMENT_KIND: "genai_development"})
    found = tracking.mark_training_experiments(uri)
    assert found["made-by-hand"] == old and found["genai"] == chosen
    assert client.get_experiment(old).tags[tracking.TAG_EXPERIMENT_KIND] == "custom_model_development"
    assert client.get_experiment(chosen).tags[tracking.TAG_EXPERIMENT_KIND] == "genai_development"  # kept


def test_list_reads_final_figures_of_this_and_older_versions() -> None:
    """``hyperctl list``'s valid/test columns: final/<name> (a finished run), final_<name> (a run of a
    version before the final/ section), else the curve's last value (a run still training)."""
    from service.driver.runs import final

    assert final({"final/valid_bpc": 1.5, "final_valid_bpc": 1.6, "valid_bpc": 1.7}, "valid_bpc") == 1.5
    assert final({"final_valid_bpc": 1.6, "valid_bpc": 1.7}, "valid_bpc") == 1.6
    assert final({"valid_bpc": 1.7}, "valid_bpc") == 1.7
    assert final({"train_bpc": 2.0}, "test_bpc") is None


def test_scripts_read_final_figures_by_their_plain_names() -> None:
    """The submit summary and a campaign's trial results: final/<name> replaces the curve's <name>."""
    from service.io.tracking import final_metrics

    logged = {"valid_bpc": 1.7, "final/valid_bpc": 1.5, "final/test_bpc": 1.4, "train_bpc": 2.0}
    assert final_metrics(logged) == {"valid_bpc": 1.5, "test_bpc": 1.4, "train_bpc": 2.0}
