"""``hyperctl schema``: the reference of every key, and the JSON Schema editors read."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from service.cli import EXIT_BAD_INPUT, EXIT_OK, main
from service.spec.reference import key_reference
from service.tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]


def schema_output(capsys, *args: str) -> str:
    assert main(["schema", *args]) == EXIT_OK
    return capsys.readouterr().out


def test_reference_lists_every_key_with_type_default_and_description(capsys) -> None:
    out = schema_output(capsys)  # the default task
    seq_len = next(line for line in out.splitlines() if line.startswith("data.seq_len "))
    assert "int, > 0" in seq_len and " 100 " in seq_len and "truncated-BPTT segment length" in seq_len
    name = next(line for line in out.splitlines() if line.startswith("name "))
    assert "required" in name
    # Only the keys of the job's task: the translation task's keys are not the char LM's.
    assert "data.subwords.vocab_size" not in out
    translation = schema_output(capsys, "translation")
    assert "data.subwords.vocab_size" in translation and "data.seq_len " not in translation
    assert "data.test.<name>.src" in translation  # named sections of a mapping


@pytest.mark.parametrize("task", list(TASKS))
def test_reference_covers_every_field_of_the_job_class(task, capsys) -> None:
    out = schema_output(capsys, task)
    listed = {line.split()[0] for line in out.splitlines()[3:]}
    assert {k.key for k in key_reference(TASKS[task].job_class)} <= listed
    for section in ("data.batch_size", "train.optimizer.lr", "resources.workers", "tracking.uri"):
        assert section in listed


def test_unknown_task_is_named(capsys) -> None:
    assert main(["schema", "chr_lm"]) == EXIT_BAD_INPUT
    assert "task: expected one of" in capsys.readouterr().err


def test_json_schema_accepts_every_shipped_job_and_refuses_a_typo(capsys) -> None:
    schema = json.loads(schema_output(capsys, "--json"))
    validator = jsonschema.Draft202012Validator(schema)
    jobs = sorted((ROOT / "jobs").glob("*.yaml"))
    assert len(jobs) >= 10
    for path in jobs:
        doc = yaml.safe_load(path.read_text())
        errors = list(validator.iter_errors(doc))
        assert not errors, f"{path.name}: {errors[0].message}"
    quickstart = yaml.safe_load((ROOT / "jobs" / "quickstart.yaml").read_text())
    assert not validator.is_valid({**quickstart, "trian": {"max_steps": 1}})
    assert not validator.is_valid({**quickstart, "data": {"batch_size": "many"}})
    # One task's schema alone.
    one = json.loads(schema_output(capsys, "translation", "--json"))
    assert list(one["anyOf"]) == [{"$ref": "#/$defs/TranslationJob"}]


@pytest.mark.parametrize(
    "job", ["quickstart.yaml", "multi30k-en-fr-hyperlstm.yaml", "mnist-test-hyper.yaml", "hanzi-hyperlstm.yaml"]
)
def test_validate_and_schema_load_no_torch_ray_or_mlflow(job) -> None:
    """What keeps `validate` well under a second: it reads the spec, checks files, counts parameters
    (hypermodels.sizes) and loads none of the heavy libraries."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from service.cli import main\n"
        f"assert main(['validate', 'jobs/{job}']) == 0\n"
        "assert main(['schema']) == 0\n"
        "heavy = [m for m in ('torch', 'ray', 'mlflow') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120, capture_output=True)
