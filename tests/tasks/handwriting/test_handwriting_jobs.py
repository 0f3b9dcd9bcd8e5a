"""The shipped handwriting jobs: `hyperctl validate` of the paper's IAM-OnDB pair reports the paper's
parameter counts (PAPER.md §3: LSTM 900 3.36M, HyperLSTM 900 3.94M) within 1%, and the built-in
pair compares equal widths."""

from __future__ import annotations

import json

import pytest

from service.cli import main
from service.spec.loading import load_job

from helpers import ROOT


@pytest.mark.parametrize("job, paper", [("iam-ondb-lstm", 3.36e6), ("iam-ondb-hyperlstm", 3.94e6)])
def test_iam_ondb_jobs_report_the_papers_parameter_counts(job: str, paper: float, capsys) -> None:
    assert main(["validate", str(ROOT / "jobs" / f"{job}.yaml"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["parameters"] == pytest.approx(paper, rel=0.01)
    assert out["spec"]["model"]["hidden_size"] == 900 and out["spec"]["train"]["grad_clip"] == 5.0


def test_builtin_pair_differs_only_in_the_cell() -> None:
    hyper, lstm = (load_job(ROOT / "jobs" / f"hanzi-{c}.yaml").model_dump() for c in ("hyperlstm", "lstm"))
    assert hyper["model"].pop("cell") == "hyperlstm" and lstm["model"].pop("cell") == "lstm"
    assert hyper.pop("name") != lstm.pop("name")
    assert hyper == lstm
