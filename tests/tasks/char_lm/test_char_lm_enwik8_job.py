"""enwik8 end to end, on a 2 MB synthetic stand-in (the real file is not needed): the Ray Data
preparation writes byte-identical shards to the single-process one, and an enwik8-shaped job runs
through ``hyperctl submit`` on 2 workers, reading sharded data."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest
import yaml

from service.spec.loading import validate_job
from service.tasks.char_lm.data import prepare_text
from service.tasks.char_lm.synthetic import write_standin

from helpers import hyperctl

pytestmark = pytest.mark.slow


def folder_bytes(root: str) -> dict[str, bytes]:
    return {name: Path(root, name).read_bytes() for name in sorted(os.listdir(root))}


def test_ray_data_preparation_writes_the_same_bytes(tmp_path: Path) -> None:
    import ray

    from service.driver.local import init_ray

    standin = write_standin(tmp_path / "enwik8", 2_000_000)
    text = tmp_path / "train.txt"
    text.write_bytes(b"\xef\xbb\xbf" + "h\u00e9llo w\u00f6rld\n".encode() * 20_000)  # a BOM, 2-byte characters
    jobs = {
        "enwik8": {"dataset": "enwik8", "path": str(standin)},
        "chars": {"dataset": None, "train": str(text), "valid": str(text)},
    }
    sizes = {"piece_bytes": 150_000, "rows_per_group": 4096}
    local = {
        k: prepare_text(
            validate_job({"name": "t", "train": {"max_steps": 1}, "data": {**d, "preparation": "local"}}),
            str(tmp_path / "local"),
            **sizes,
        )
        for k, d in jobs.items()
    }
    os.environ.pop("RAY_ADDRESS", None)
    init_ray(num_cpus=2)
    try:
        lines: list[str] = []
        for k, d in jobs.items():
            spec = validate_job({"name": "t", "train": {"max_steps": 1}, "data": {**d, "preparation": "ray"}})
            on_ray = prepare_text(spec, str(tmp_path / "ray"), say=lines.append, **sizes)
            assert dataclasses.replace(on_ray, root=local[k].root) == local[k]
            assert folder_bytes(on_ray.root) == folder_bytes(local[k].root), k
            assert len([n for n in os.listdir(on_ray.root) if n.startswith("train-")]) >= 2
    finally:
        ray.shutdown()
    assert lines[0] == "[data]  2,000,000 bytes in 14 pieces, prepared on Ray Data", lines
    assert any("written" in line and "/14 pieces" in line for line in lines), lines
    manifest = json.loads(Path(local["chars"].root, "vocab.json").read_text())
    assert manifest["notes"] and "byte-order mark" in manifest["notes"][0]  # told on the driver, from a task


def test_enwik8_two_worker_submit(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    standin = write_standin(tmp_path / "enwik8", 2_000_000)
    job = {
        "name": "enwik8-tiny",
        "data": {"dataset": "enwik8", "path": str(standin), "seq_len": 30, "batch_size": 8, "eval_batch_size": 32},
        "model": {"cell": "hyperlstm", "hidden_size": 32, "hyper": {"hidden_size": 8, "embed_size": 4}},
        "train": {
            "optimizer": {"name": "adam", "lr": 0.01},
            "max_steps": 20,
            "log_every": 5,
            "eval_every": 10,
            "eval_max_symbols": 1000,
            "checkpoint_every": 10,
            "sample_length": 40,
        },
        "resources": {"workers": 2, "cpus_per_worker": 1},
        "storage": str(tmp_path / "runs"),
        "tracking": {"experiment": "tests"},
    }
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    proc = hyperctl("submit", str(job_file), "--num-cpus", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"[data]  preparing enwik8 from {standin}" in proc.stdout
    summary = json.loads(proc.stdout[proc.stdout.rindex("\n{") + 1 :])
    assert summary["status"] == "FINISHED"
    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    metrics = client.get_run(summary["run_id"]).data.metrics
    vocab = json.loads(Path(client.download_artifacts(summary["run_id"], "vocab.json", str(tmp_path))).read_text())
    assert vocab["splits"] == {"train": 1_800_000, "valid": 100_000, "test": 100_000}
    assert len(vocab["symbols"]) == len(set(standin.read_bytes()))
    # Whole-split evaluations of 100,000 bytes each, below a uniform guess over the vocabulary.
    assert 0 < metrics["final/test_bpc"] < math.log2(len(vocab["symbols"]))
    assert 0 < metrics["valid_bpc"] < math.log2(len(vocab["symbols"]))
