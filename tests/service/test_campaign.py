"""Search campaigns (service/driver/campaign.py): the search section's validation, a 4-trial ASHA campaign
through `hyperctl submit` on 2 CPUs tracked as a parent run with nested children and a summary,
the best trial's job YAML run again, and a campaign whose driver is SIGKILLed mid-way resumed
with `hyperctl resume` into exactly four child runs.

Tiny model and corpus (tests/helpers.py's ``tiny_job``): every trial is a 1-worker job of
40 steps, evaluated every 10. The learning rates span three orders of magnitude, so the 1e-5
trials barely learn and ASHA (grace period 10 steps, reduction factor 2) stops at least one of
them at a rung where a 0.02 trial is already recorded."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from service.driver.campaign import close_trial_runs, param_space, trial_spec
from service.driver.campaign_report import best_job_document, searched_keys
from service.io import tracking
from service.io.tracking import TAG_STOPPED
from service.spec.errors import JobSpecError
from service.spec.loading import load_job, validate_job

from helpers import ROOT, hyperctl, tiny_job

LRS, NZS = [0.02, 1e-5], [4, 8]


def campaign_job(tmp: Path, name: str = "cmp") -> dict:
    job = tiny_job(tmp, name, max_steps=40, eval_every=10, checkpoint_every=20, log_every=5, sample_length=20)
    job["resources"] = {"workers": 1, "cpus_per_worker": 1, "max_failures": 1}
    job["search"] = {
        "metric": "valid_bpc",
        "mode": "min",
        "algorithm": "grid",
        "space": {"train.optimizer.lr": {"grid": LRS}, "model.hyper.embed_size": {"grid": NZS}},
        "max_concurrent": 2,
        "scheduler": {"name": "asha", "grace_period": 10, "max_t": 40, "reduction_factor": 2},
    }
    return job


def last_json(stdout: str) -> dict:
    return json.loads(stdout[stdout.rindex("\n{") + 1 :])


def runs_of(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tests")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


# ---- the search section: validated like the rest of the spec (no Ray) ---------------------------


def _problems(job: dict) -> str:
    with pytest.raises(JobSpecError) as e:
        validate_job(job)
    return "\n".join(e.value.problems)


@pytest.mark.parametrize(
    "search, expected",
    [
        (
            {"space": {"model.hyper.embed_sz": {"choice": [4, 8]}}},
            "search.space.model.hyper.embed_sz: names no spec field; did you mean 'model.hyper.embed_size'?",
        ),
        ({"space": {"model.hyper": {"choice": [4]}}}, "search.space.model.hyper: a section, not a field"),
        (
            {"space": {"model.hyper.embed_size": {"choise": [4]}}},
            "did you mean 'search.space.model.hyper.embed_size.choice'?",
        ),
        (
            {"space": {"model.hyper.embed_size": {"grid": [4, 0]}}},
            "search.space.model.hyper.embed_size: value 0 makes an invalid job: model.hyper.embed_size: "
            "Input should be greater than 0",
        ),
        (
            {"space": {"resources.workers": {"choice": [1, 3]}}},
            "value 3 makes an invalid job: data.batch_size (8) must be divisible by resources.workers (3)",
        ),
        ({"space": {"model.hyper.embed_size": {"uniform": [4, 64]}}}, "an integer field; uniform draws fractions"),
        ({"space": {"train.optimizer.lr": {"loguniform": [0.0, 0.1]}}}, "loguniform: lo must be > 0"),
        ({"space": {"train.optimizer.lr": {"uniform": [0.1, 0.01]}}}, "lo < hi"),
        ({"space": {"train.optimizer.lr": {"grid": [0.1]}}, "algorithm": "optuna"}, "algorithm optuna samples"),
        (
            {"space": {"train.optimizer.lr": {"loguniform": [1e-4, 1e-2]}}, "algorithm": "grid"},
            "algorithm grid needs grid or choice values",
        ),
        ({"space": {"train.seed": {"grid": [1, 2]}}, "algorithm": "grid", "samples": 2}, "train.seed cannot also"),
        ({"space": {"storage": {"choice": ["a", "b"]}}}, "search.space.storage: storage cannot be searched"),
        ({"space": {"train.optimizer.lr": {"grid": [0.1]}}, "metric": "valid_bcp"}, "did you mean 'valid_bpc'?"),
        (
            {"space": {"train.optimizer.lr": {"grid": [0.1]}}, "scheduler": {"name": "asha", "grace_period": 40}},
            "grace_period (40) must be below max_t (40)",
        ),
        (
            {"space": {"train.optimizer.lr": {"grid": [0.1]}}, "scheduler": {"name": "asha", "max_t": 80}},
            "max_t (80) is beyond train.max_steps (40)",
        ),
        ({"space": {}}, "search.space: Dictionary should have at least 1 item"),
    ],
)
def test_search_section_rejects(tmp_path: Path, search: dict, expected: str) -> None:
    job = tiny_job(tmp_path, "bad")
    job["train"]["max_steps"] = 40
    job["search"] = {"scheduler": {"name": "asha", "grace_period": 10}, **search}
    assert expected in _problems(job)


def test_search_space_to_tune(tmp_path: Path) -> None:
    from ray import tune

    job = campaign_job(tmp_path)
    job["search"]["samples"] = 3
    spec = validate_job(job)
    space, num_samples = param_space(spec)
    # grid with samples: 3 -> a seed axis (seed, seed+1, seed+2) and one pass: 2 x 2 x 3 = 12 trials
    assert num_samples == 1 and searched_keys(spec) == ["train.optimizer.lr", "model.hyper.embed_size", "train.seed"]
    assert space["train.seed"] == {"grid_search": [0, 1, 2]} and space["train.optimizer.lr"] == {"grid_search": LRS}

    job["search"].update(
        algorithm="random",
        samples=5,
        space={
            "train.optimizer.lr": {"loguniform": [1e-4, 3e-3]},
            "model.hyper.embed_size": {"choice": [4, 8, 16]},
            "model.hyper.hidden_size": {"randint": [8, 17]},
        },
    )
    spec = validate_job(job)
    space, num_samples = param_space(spec)
    assert num_samples == 5
    assert isinstance(space["train.optimizer.lr"], tune.search.sample.Float)
    assert isinstance(space["model.hyper.embed_size"], tune.search.sample.Categorical)
    assert isinstance(space["model.hyper.hidden_size"], tune.search.sample.Integer)

    t = trial_spec(spec, {"train.optimizer.lr": 3e-4, "model.hyper.embed_size": 16}, "abc12_00003")
    assert t.name == "cmp-abc12_00003" and t.search is None and t.storage == str(tmp_path / "runs" / "cmp")
    assert t.train.optimizer.lr == 3e-4 and t.model.hyper.embed_size == 16
    best = best_job_document(spec, {"train.optimizer.lr": 3e-4, "model.hyper.embed_size": 16})
    assert "search" not in best and best["name"] == "cmp-best" and best["model"]["hyper"]["embed_size"] == 16


def test_campaign_job_file_is_valid() -> None:
    proc = hyperctl("validate", "jobs/ptb-embed-size-campaign.yaml", cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr

    spec = load_job(ROOT / "jobs" / "ptb-embed-size-campaign.yaml")
    assert spec.search.space["model.hyper.embed_size"].grid == [4, 8, 16, 32, 64]
    assert spec.search.scheduler.name == "asha"


def test_validate_names_a_bad_space_key(tmp_path: Path) -> None:
    job = campaign_job(tmp_path)
    job["search"]["space"]["train.optimiser.lr"] = job["search"]["space"].pop("train.optimizer.lr")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(job))
    proc = hyperctl("validate", str(tmp_path / "c.yaml"), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "search.space.train.optimiser.lr: names no spec field; did you mean 'train.optimizer.lr'?" in proc.stderr


def test_a_late_trial_failure_keeps_the_drivers_killed(tmp_path: Path) -> None:
    """Tune can deliver an ASHA stop to a trial's fit() (as ActorDiedError) after the driver has already
    ended that trial's run KILLED: the trial's failure path must not turn it FAILED. Either order ends
    KILLED with the stopped-early tag and no error tag."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = validate_job(campaign_job(tmp_path))
    client = MlflowClient(uri)
    exp = client.create_experiment("e")
    for driver_first in (True, False):
        run_id = client.create_run(exp).info.run_id
        stopped = [{"run_id": run_id, "state": "stopped early", "step": 10, "history": [(10, 3.5)]}]
        late_failure = "ActorDiedError: The actor died unexpectedly before finishing this task."
        if driver_first:
            close_trial_runs(spec, uri, stopped, interrupted=False)
            tracking.close_run(uri, run_id, late_failure, only_if_running=True)
        else:
            tracking.close_run(uri, run_id, late_failure, only_if_running=True)
            close_trial_runs(spec, uri, stopped, interrupted=False)
        run = client.get_run(run_id)
        assert run.info.status == "KILLED", driver_first
        assert run.data.tags[TAG_STOPPED] == "asha at step 10" and tracking.TAG_ERROR not in run.data.tags


# ---- a whole campaign ---------------------------------------------------------------------------


@pytest.mark.slow
def test_campaign_asha_nested_runs_summary_and_best_job(tmp_path: Path) -> None:
    job = campaign_job(tmp_path)
    job["tracking"]["register_model"] = "cmp-lm"  # only the best trial's model is registered, at the end
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    t0 = time.monotonic()
    proc = hyperctl("submit", "campaign.yaml", "--num-cpus", "2", cwd=tmp_path)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    out = last_json(proc.stdout)
    assert out["status"] == "FINISHED" and len(out["trials"]) == 4
    states = [t["state"] for t in out["trials"]]
    assert set(states) <= {"completed", "stopped early"} and "stopped early" in states, states
    assert "completed" in states
    print(f"campaign wall time {elapsed:.0f}s; states {states}")

    # MLflow: one parent, four nested children carrying their sampled values and flat spec.
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert out["tracking_uri"] == uri
    client, parents, children = runs_of(uri)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.run_id == out["parent_run_id"] and parent.info.status == "FINISHED"
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    spec = validate_job(job)
    by_trial = {t["trial"]: t for t in out["trials"]}
    seen = set()
    for child in children:
        trial = by_trial[child.data.tags["hyperctl.trial_id"]]
        sampled = {
            "train.optimizer.lr": trial["config"]["train.optimizer.lr"],
            "model.hyper.embed_size": trial["config"]["model.hyper.embed_size"],
        }
        expected = {k: str(v) for k, v in trial_spec(spec, sampled, trial["trial"]).flat().items()}
        expected.update({f"sampled.{k}": str(v) for k, v in sampled.items()})
        assert child.data.params == expected
        # The trial's name, then the values it was given (run names say what distinguishes them).
        assert child.info.run_name.startswith(f"cmp-{trial['trial']} ") and child.info.run_id == trial["run_id"]
        seen.add((sampled["train.optimizer.lr"], sampled["model.hyper.embed_size"]))
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "valid_bpc")]
        assert steps and steps == sorted(set(steps))  # a curve, no step twice
        if trial["state"] == "completed":
            assert child.info.status == "FINISHED" and steps[-1] == 40 and "final/valid_bpc" in child.data.metrics
        else:
            assert child.info.status == "KILLED" and child.data.tags["hyperctl.stopped_early"].startswith("asha")
            assert trial["step"] < 40
    assert seen == {(lr, nz) for lr in LRS for nz in NZS}
    # ASHA stopped a poor trial (lr 1e-5), never the best one.
    stopped = [t for t in out["trials"] if t["state"] == "stopped early"]
    assert any(t["config"]["train.optimizer.lr"] == 1e-5 for t in stopped)
    assert out["best"]["config"]["train.optimizer.lr"] == 0.02

    # The summary on the parent run.
    arts = {a.path for d in (None, "summary", "plots") for a in client.list_artifacts(parent.info.run_id, d)}
    assert {
        "summary/trials.csv",
        "summary/trials.md",
        "plots/valid_bpc_vs_N_z.png",
        "plots/valid_bpc_vs_train.optimizer.lr.png",
        "plots/learning_curves.png",
        "best_job.yaml",
        "job.yaml",
    } <= arts
    dl = tmp_path / "dl"
    dl.mkdir()
    csv_text = Path(client.download_artifacts(parent.info.run_id, "summary/trials.csv", str(dl))).read_text()
    rows = [line.split(",") for line in csv_text.strip().splitlines()]
    assert rows[0][:6] == ["rank", "trial", "run_id", "state", "step", "valid_bpc"] and len(rows) == 5
    values = [float(r[5]) for r in rows[1:]]
    assert values == sorted(values)
    md = Path(client.download_artifacts(parent.info.run_id, "summary/trials.md", str(dl))).read_text()
    assert md.count("\n| ") == 5 and out["best"]["trial"] in md
    for png in ("plots/valid_bpc_vs_N_z.png", "plots/learning_curves.png"):
        data = Path(client.download_artifacts(parent.info.run_id, png, str(dl))).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert parent.data.metrics["best_valid_bpc"] == pytest.approx(out["best"]["value"])
    assert parent.data.metrics["trials"] == 4 and parent.data.metrics["trials_stopped_early"] >= 1
    (version,) = client.search_model_versions("name = 'cmp-lm'")
    assert version.run_id == out["best"]["run_id"] and str(version.version) == "1"
    assert parent.data.tags["hyperctl.registered_model"] == "models:/cmp-lm/1"
    assert (
        f"[model] best trial {out['best']['trial']}'s model registered as models:/cmp-lm/1" in proc.stderr + proc.stdout
    )

    # `hyperctl status CAMPAIGN.yaml` from the campaign's storage.
    status = hyperctl("status", "campaign.yaml", cwd=tmp_path, timeout=120)
    assert status.returncode == 0, status.stderr
    assert "cmp: finished (4 trials" in status.stdout and status.stdout.count("stopped early") == len(stopped)

    # The best trial as a job: it validates, and it runs (two steps).

    best_file = Path(client.download_artifacts(parent.info.run_id, "best_job.yaml", str(dl)))
    best = load_job(best_file)
    assert best.search is None and best.name == "cmp-best"
    assert (
        best.train.optimizer.lr == 0.02
        and best.model.hyper.embed_size == out["best"]["config"]["model.hyper.embed_size"]
    )
    run = hyperctl(
        "submit",
        str(best_file),
        "--set",
        "train.max_steps=2",
        "--set",
        "train.checkpoint_every=2",
        "--num-cpus",
        "2",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert last_json(run.stdout)["status"] == "FINISHED"
    _, parents, children = runs_of(uri)
    names = sorted(r.info.run_name for r in parents)  # the best job's name carries its overrides
    assert names[0] == "cmp" and names[1].startswith("cmp-best ") and len(children) == 4
    # best_job.yaml keeps tracking.register_model: the best job's run is the model's next version
    versions = {str(v.version): v.run_id for v in client.search_model_versions("name = 'cmp-lm'")}
    assert versions["1"] == out["best"]["run_id"] and versions["2"] == last_json(run.stdout)["run_id"]


@pytest.mark.slow
def test_campaign_resumes_after_driver_sigkill(tmp_path: Path) -> None:
    job = campaign_job(tmp_path, "cmpk")
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(
        [sys.executable, "-m", "service", "submit", "campaign.yaml", "--num-cpus", "2"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    db = tmp_path / "runs" / "mlflow.db"

    def finished_children() -> dict[str, int]:
        try:
            with sqlite3.connect(db) as con:
                return dict(
                    con.execute(
                        "select r.run_uuid, r.end_time from runs r join tags t on t.run_uuid = r.run_uuid "
                        "where t.key = 'mlflow.parentRunId' and r.status = 'FINISHED'"
                    ).fetchall()
                )
        except sqlite3.Error:
            return {}

    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and not finished_children() and driver.poll() is None:
            time.sleep(1)
        done_before = finished_children()
        assert driver.poll() is None, "the campaign ended before it could be killed"
        assert done_before, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        os.kill(driver.pid, signal.SIGKILL)  # the driver dies: no cleanup of any kind
        driver.wait()
        time.sleep(3)
        try:  # what the driver's local Ray instance left behind (its own session)
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()

    status = hyperctl("status", "campaign.yaml", cwd=tmp_path, timeout=120)
    assert status.returncode == 0 and "interrupted" in status.stdout, status.stdout + status.stderr

    proc = hyperctl("resume", "campaign.yaml", "--num-cpus", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    out = last_json(proc.stdout)
    assert out["status"] == "FINISHED" and len(out["trials"]) == 4
    assert all(t["state"] in ("completed", "stopped early") for t in out["trials"])

    client, parents, children = runs_of(out["tracking_uri"])
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4, [c.info.run_name for c in children]
    assert len({c.data.tags["hyperctl.trial_id"] for c in children}) == 4
    assert {c.info.run_id for c in children} == {t["run_id"] for t in out["trials"]}
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.info.status in ("FINISHED", "KILLED")
        for key in ("valid_bpc", "train_bpc"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert steps == sorted(set(steps)), (child.info.run_name, key, steps)
    # Trials that had finished before the kill were not run again.
    after = {c.info.run_id: c.info.end_time for c in children}
    for run_id, end_time in done_before.items():
        assert after[run_id] == end_time
    assert not (tmp_path / "runs" / "cmpk" / "driver.json").exists()


@pytest.mark.slow
def test_stopped_campaign_reports_the_interruption(tmp_path: Path) -> None:
    """Issue 16, kind 5: `hyperctl stop CAMPAIGN.yaml` during a trial: the campaign exits non-zero
    (130), its parent run ends KILLED saying it was interrupted and how to resume, and every
    unfinished child ends KILLED with the tag the campaign's docstring promises (no run left RUNNING).
    Kind 3 for campaigns: a trial whose sampled batch the data cannot fill fails, told, without a run."""
    job = campaign_job(tmp_path, "cmps")
    job["train"]["max_steps"] = 400  # long enough to be cut off
    # The first trial's batch cannot be cut from the corpus: it fails before its run exists, told.
    job["search"].update(space={"data.batch_size": {"grid": [10**6, 8]}}, max_concurrent=1)
    job["search"]["scheduler"] = {"name": "none"}
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    driver = subprocess.Popen(
        [sys.executable, "-m", "service", "submit", "campaign.yaml", "--num-cpus", "2"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list((tmp_path / "runs" / "cmps").glob("cmps-*/checkpoint_*")):
            assert driver.poll() is None, driver.communicate()[0][-3000:]
            time.sleep(0.5)
        stop = hyperctl("stop", "campaign.yaml", cwd=tmp_path, timeout=180)
        assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
        out, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, out[-3000:]
    result = last_json(out)
    assert result["status"] == "KILLED" and "interrupted with" in result["error"], result
    unfit = next(t for t in result["trials"] if t["config"]["data.batch_size"] == 10**6)
    assert unfit["state"] == "failed" and unfit["run_id"] is None, unfit
    assert f"[trial] {unfit['trial']} failed: data.batch_size: 1000000 streams need at least" in out, out[-3000:]
    client, [parent], children = runs_of(result["tracking_uri"])
    assert parent.info.status == "KILLED"
    assert "interrupted with" in parent.data.tags["hyperctl.error"]
    assert "`hyperctl resume`" in parent.data.tags["hyperctl.error"]
    assert children and not [c for c in children if c.info.status == "RUNNING"]
    unfinished = [c for c in children if c.info.status != "FINISHED"]
    assert unfinished, "the stop came too late to cut a trial off"
    for child in unfinished:
        assert child.info.status == "KILLED" and child.data.tags["hyperctl.error"] == "campaign stopped; resume it"
