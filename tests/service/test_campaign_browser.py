"""The MLflow UI shows a campaign as a parent run with its trials nested under it: a 2-trial
campaign (`hyperctl tune`, tiny model, 10 steps), `mlflow server` on 127.0.0.1, and headless
Chromium on the campaign's experiment page (the campaign's run, its trials counted and collapsed
under it) and on the parent run's page (its child runs listed by name). Screenshot and DOMs are
kept under test-artifacts/ (gitignored)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import ARTIFACTS, CHROMIUM, chromium, free_port, hyperctl, local_env, tiny_job, wait_healthy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (needed for the headless UI check)"),
]


def test_mlflow_ui_shows_campaign_with_nested_trials(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    job = tiny_job(tmp_path, "cmpui", max_steps=10, eval_every=5, checkpoint_every=10, log_every=5, sample_length=10)
    job["resources"] = {"workers": 1, "cpus_per_worker": 1, "max_failures": 1}
    job["tracking"] = {"experiment": "ui-campaign"}
    job["search"] = {
        "metric": "valid_bpc",
        "space": {"model.hyper.embed_size": {"grid": [4, 8]}},
        "max_concurrent": 2,
        "scheduler": "none",
    }
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(job))
    proc = hyperctl("tune", "campaign.yaml", "--num-cpus", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = json.loads(proc.stdout[proc.stdout.rindex("\n{") + 1 :])
    db = tmp_path / "runs" / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("ui-campaign")
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{out['parent_run_id']}'")
    child_names = sorted(c.info.run_name for c in children)
    assert len(child_names) == 2

    port = free_port()
    server_log = (tmp_path / "mlflow-server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--default-artifact-root",
            str(tmp_path / "runs" / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        env=local_env(),
        stdout=server_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", server, tmp_path / "mlflow-server.log")

        ARTIFACTS.mkdir(exist_ok=True)
        # The experiment's runs page: the campaign's run, with its two trials counted and collapsed
        # under it (the run-name cell of a parent run carries the expand button).
        url = f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs"
        dom = chromium(url, tmp_path / "chrome-dom", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
        (ARTIFACTS / "campaign_experiment_page.html").write_text(html)
        assert "ui-campaign" in html and f'href="#/experiments/{exp.experiment_id}/runs/{out["parent_run_id"]}"' in html
        assert ">cmpui</span>" in html, "the campaign's run is not in the runs table"
        page_text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
        assert "3 matching runs" in page_text  # parent + 2 nested trials
        assert "runnamecellrenderer" in html  # the parent's expand-children button
        # The parent run's page lists its nested runs by name.
        page = chromium(
            f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs/{out['parent_run_id']}",
            tmp_path / "chrome-run",
            "--dump-dom",
        )
        assert page.returncode == 0, page.stderr[-2000:]
        (ARTIFACTS / "campaign_parent_run_page.html").write_text(page.stdout)
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.stdout))
        assert "Child runs" in text, text[:3000]
        listed = text[text.index("Child runs") :][:400]
        for name in child_names:
            assert name in listed, f"child run {name} not listed on the parent run's page: {listed}"

        shot = ARTIFACTS / "campaign_experiment_page.png"
        shot.unlink(missing_ok=True)
        res = chromium(url, tmp_path / "chrome-shot", f"--screenshot={shot}")
        assert res.returncode == 0 and shot.exists() and shot.stat().st_size > 20_000, res.stderr[-2000:]
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
        server_log.close()
