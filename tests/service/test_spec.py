"""``hyperctl validate`` end to end: bad jobs exit 2 with a precise message and write nothing.

Most cases run ``service.cli.main`` in-process (fast); those marked ``subprocess`` run the
installed ``hyperctl`` script, as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.cli import EXIT_BAD_INPUT, EXIT_OK, main
from service.driver.preflight import check_job
from service.io import storage
from service.spec.errors import JobSpecError
from service.spec.loading import validate_job
from service.tasks.char_lm.model import build_model
from service.tasks.char_lm.spec import CharLMJob
from service.tasks.image_classification.spec import ImageJob
from service.tasks.translation.spec import TranslationJob

HYPERCTL = str(Path(sys.executable).parent / "hyperctl")
GOOD = "name: ok\ntrain:\n  max_steps: 10\n"
CORPUS = "data:\n  dataset: null\n  train: {train}\n  valid: {valid}\n"
FOLDER = "<a folder named job.yaml>"

# (id, job YAML, extra arguments, substrings stderr must contain, how to run)
CASES = [
    ("typo-top-level", GOOD + "trian:\n  epochs: 1\n", [], ["trian: unknown key; did you mean 'train'?"], "subprocess"),
    (
        "typo-nested",
        GOOD + "model:\n  hiden_size: 10\n",
        [],
        ["model.hiden_size: unknown key; did you mean 'model.hidden_size'?"],
        "main",
    ),
    (
        "wrong-type",
        GOOD + "model:\n  hidden_size: big\n",
        [],
        ["model.hidden_size: Input should be a valid integer", "found 'big'"],
        "main",
    ),
    (
        "negative-size",
        GOOD + "data:\n  seq_len: -5\n",
        [],
        ["data.seq_len: Input should be greater than 0", "found -5"],
        "main",
    ),
    (
        "batch-not-divisible",
        GOOD + "data:\n  batch_size: 10\nresources:\n  workers: 3\n",
        [],
        ["data.batch_size (10) must be divisible by resources.workers (3)"],
        "main",
    ),
    (
        "steps-and-epochs",
        "name: ok\ntrain:\n  max_steps: 10\n  epochs: 2\n",
        [],
        ["train: give one of train.max_steps (10) and train.epochs (2), not both", "--set train.epochs=null"],
        "main",
    ),
    (
        "epochs-set-on-a-steps-job",
        GOOD,
        ["--set", "train.epochs=2"],
        ["train: give one of train.max_steps (10) and train.epochs (2)", "(from --set train.epochs=2)"],
        "main",
    ),
    (
        "own-corpus-half-given",
        GOOD + "data:\n  valid: valid.txt\n",
        [],
        ["own corpora need both data.train and data.valid (found data.valid)", "data.dataset: ptb-char"],
        "main",
    ),
    (
        "yaml-tab-indent",
        "name: ok\ntrain:\n\tmax_steps: 10\n",
        [],
        ["job.yaml: invalid job spec", "line 3: indented with a tab; YAML indents with spaces only"],
        "subprocess",
    ),
    (
        "yaml-duplicate-key",
        GOOD + "name: other\n",
        [],
        ["line 4: key 'name' appears twice (first at line 1); keep one"],
        "main",
    ),
    (
        "yaml-duplicate-nested-key",
        "name: ok\ntrain:\n  max_steps: 10\n  max_steps: 20\n",
        [],
        ["line 4: key 'max_steps' appears twice (first at line 3)"],
        "main",
    ),
    ("yaml-empty", "# a comment only\n", [], ["job.yaml: invalid job spec", "the file is empty"], "main"),
    (
        "set-not-yaml",
        GOOD,
        ["--set", "model.hyper={a"],
        ["'model.hyper={a': the value is not valid YAML"],
        "main",
    ),
    (
        "set-unknown-key",
        GOOD,
        ["--set", "data.bach_size=4"],
        ["data.bach_size: unknown key; did you mean 'data.batch_size'?", "(from --set data.bach_size=4)"],
        "main",
    ),
    (
        "missing-data-file",
        GOOD + CORPUS.format(train="missing.txt", valid="valid.txt"),
        [],
        ["data.train: expected a UTF-8 text file, found nothing at missing.txt"],
        "subprocess",
    ),
    (
        "undecodable-data-file",
        GOOD + CORPUS.format(train="binary.txt", valid="valid.txt"),
        [],
        ["data.train: expected gzip'd UTF-8 text, found corrupt gzip data at the start of binary.txt"],
        "main",
    ),
    (
        "s3-missing-bucket",
        GOOD + CORPUS.format(train="s3://no-such-bucket/train.txt", valid="valid.txt"),
        [],
        ["data.train: expected a readable text file", "bucket 'no-such-bucket' does not exist"],
        "subprocess",
    ),
    (
        "s3-missing-object",
        GOOD + CORPUS.format(train="train.txt", valid="s3://{bucket}/nothing/valid.txt"),
        [],
        ["data.valid: expected a UTF-8 text file, found nothing at s3://{bucket}/nothing/valid.txt"],
        "main",
    ),
    (
        "storage-scheme",
        GOOD + "storage: gs://bucket/runs\n",
        [],
        ["storage: expected a writable local folder or s3://bucket/prefix", "unsupported scheme 'gs://'"],
        "main",
    ),
    (
        "storage-no-bucket",
        GOOD + "storage: s3://\n",
        [],
        ["storage: expected a writable local folder or s3://bucket/prefix", "found no bucket name"],
        "main",
    ),
    (
        "storage-is-a-file",
        GOOD + "storage: valid.txt\n",
        [],
        ["storage: expected a writable local folder", "valid.txt: exists and is not a folder"],
        "main",
    ),
    (
        "tracking-relative-sqlite",
        GOOD + "tracking:\n  uri: sqlite:///mlflow.db\n",
        [],
        ["tracking.uri: expected an absolute sqlite path (sqlite:////absolute/path.db", "'sqlite:///mlflow.db'"],
        "main",
    ),
    (
        "tracking-file-store",
        GOOD + "tracking:\n  uri: file:///tmp/mlruns\n",
        [],
        ["tracking.uri: expected null", "MLflow 3 no longer supports"],
        "main",
    ),
    (
        "too-many-cpus",
        GOOD + "resources:\n  workers: 2\n  cpus_per_worker: 100000\n",
        [],
        ["resources: expected workers x cpus_per_worker <= ", "found 2 x 100000 = 200000"],
        "main",
    ),
    (
        "gpus-without-gpu",
        GOOD + "resources:\n  gpus_per_worker: 1\n",
        [],
        ["resources.gpus_per_worker: expected 0 on a machine without GPUs", "found 1"],
        "subprocess",
    ),
    (
        "mixed-precision-on-cpu",
        "name: ok\ntrain:\n  max_steps: 10\n  precision: bf16\n",
        [],
        [
            "train.precision: expected fp32 on CPU workers, found bf16 with resources.gpus_per_worker 0",
            "set resources.gpus_per_worker",
            "or train.precision: fp32",
        ],
        "main",
    ),
    (
        "mixed-precision-on-cpu-set",
        GOOD,
        ["--set", "train.precision=fp16"],
        ["train.precision: expected fp32 on CPU workers, found fp16"],
        "main",
    ),
    (
        "not-a-mapping",
        "- name: ok\n- train: {}\n",
        [],
        ["job.yaml: invalid job spec", "expected a mapping of sections", "found list"],
        "subprocess",
    ),
    (
        "yaml-syntax",
        "name: ok\ntrain: [max_steps: 10\n",
        [],
        ["job.yaml: invalid job spec", "line 3, column 1: not valid YAML", "started at line 2"],
        "main",
    ),
    (
        "set-malformed",
        GOOD,
        ["--set", "model.hidden_size"],
        ["--set: invalid job spec", "'model.hidden_size': expected KEY.PATH=VALUE"],
        "main",
    ),
    (
        "set-wrong-value",
        GOOD,
        ["--set", "model.hyper.embed_size=0"],
        ["model.hyper.embed_size: Input should be greater than 0", "found 0 (from --set model.hyper.embed_size=0)"],
        "main",
    ),
    ("job-file-missing", None, [], ["job.yaml: invalid job spec", "file not found (expected a job YAML file"], "main"),
    ("job-is-a-folder", FOLDER, [], ["job.yaml: invalid job spec", "is a folder; expected a job YAML file"], "main"),
]


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def bucket_keys(server) -> list[str]:
    return [o["Key"] for o in server.client().list_objects_v2(Bucket=server.bucket).get("Contents", [])]


@pytest.fixture
def workdir(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current directory for a case, holding its small corpora; storage defaults to ./runs here."""
    (tmp_path / "train.txt").write_text("some training text\n")
    (tmp_path / "valid.txt").write_text("some text\n")
    (tmp_path / "binary.txt").write_bytes(b"\x1f\x8b\x08\x00 gzip header")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def hyperctl(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [HYPERCTL, *args], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("case, text, extra, expected, how", CASES, ids=[c[0] for c in CASES])
def test_bad_job(case, text, extra, expected, how, workdir: Path, s3_env, capsys: pytest.CaptureFixture) -> None:
    if text == FOLDER:
        (workdir / "job.yaml").mkdir()
    elif text is not None:
        (workdir / "job.yaml").write_text(text.replace("{bucket}", s3_env.bucket))
    before, keys_before = snapshot(workdir), bucket_keys(s3_env)
    args = ["validate", "job.yaml", *extra]
    if how == "subprocess":
        # CUDA_VISIBLE_DEVICES="" hides any GPU, so "no GPU" holds on every machine.
        result = hyperctl(args, workdir, {**s3_env.env(), "CUDA_VISIBLE_DEVICES": ""})
        code, out, err = result.returncode, result.stdout, result.stderr
    else:
        code = main(args)
        out, err = capsys.readouterr()
    assert code == EXIT_BAD_INPUT, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    for fragment in expected:
        assert fragment.replace("{bucket}", s3_env.bucket) in err, f"{fragment!r} not in stderr:\n{err}"
    assert err.startswith("error: ") and "Traceback" not in err and out == ""
    assert snapshot(workdir) == before, "validate must not write anything"
    assert bucket_keys(s3_env) == keys_before


def test_every_problem_is_listed_at_once(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    (workdir / "job.yaml").write_text(
        GOOD
        + CORPUS.format(train="missing.txt", valid="binary.txt")
        + "storage: gs://b/r\ntracking:\n  uri: sqlite:///x.db\n"
    )
    assert main(["validate", "job.yaml"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert [line.split(":")[0] for line in err.splitlines() if line.startswith("  - ")] == [
        "  - data.train",
        "  - data.valid",
        "  - storage",
        "  - tracking.uri",
    ]


def test_good_job_prints_resolved_spec_and_parameters(workdir: Path) -> None:
    (workdir / "job.yaml").write_text(GOOD)
    before = snapshot(workdir)
    result = hyperctl(["validate", "job.yaml"], workdir)
    assert result.returncode == EXIT_OK, result.stderr
    assert "# model parameters: 4,923,154 (4.92M)" in result.stdout
    resolved = yaml.safe_load(result.stdout)
    assert resolved["model"] == {
        "cell": "hyperlstm",
        "hidden_size": 1000,
        "num_layers": 1,
        "layer_norm": True,
        "hyper": {"hidden_size": 128, "embed_size": 4},
        "dropout": {"input": 0.0, "output": 0.0, "recurrent": 0.0},
        "fast": True,
    }
    assert resolved["train"]["max_steps"] == 10 and resolved["storage"] == "./runs"

    result = hyperctl(["validate", "job.yaml", "--json", "--set", "model.hyper.embed_size=16"], workdir)
    assert result.returncode == EXIT_OK, result.stderr
    doc = json.loads(result.stdout)
    assert doc["spec"]["model"]["hyper"]["embed_size"] == 16 and doc["parameters"] > 4_923_154
    assert snapshot(workdir) == before, "validate must not write anything"


def test_good_job_on_s3(workdir: Path, s3_prefix: str, s3_env, capsys: pytest.CaptureFixture) -> None:
    for split in ("train", "valid"):
        storage.write_bytes_atomic(f"{s3_prefix}/{split}.txt", b"some text\n")
    keys = bucket_keys(s3_env)
    corpus = CORPUS.format(train=f"{s3_prefix}/train.txt", valid=f"{s3_prefix}/valid.txt")
    (workdir / "job.yaml").write_text(
        GOOD + corpus + f"storage: {s3_prefix}/runs\ntracking:\n  uri: sqlite:////tmp/mlflow.db\n"
    )
    assert main(["validate", "job.yaml", "--json"]) == EXIT_OK, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["spec"]["storage"] == f"{s3_prefix}/runs"
    assert bucket_keys(s3_env) == keys


def spec(**resources):
    return validate_job({"name": "r", "train": {"max_steps": 1}, "resources": resources, "data": {"batch_size": 12}})


def test_cluster_resources_passed_in(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    check_job(spec(workers=4, cpus_per_worker=2), available_cpus=8)
    with pytest.raises(JobSpecError, match=r"<= 7 CPUs available, found 4 x 2 = 8"):
        check_job(spec(workers=4, cpus_per_worker=2), available_cpus=7)
    check_job(spec(workers=2, gpus_per_worker=1), available_gpus=2)
    with pytest.raises(JobSpecError, match=r"workers x gpus_per_worker <= 2 GPUs available, found 4 x 1 = 4"):
        check_job(spec(workers=4, gpus_per_worker=1), available_gpus=2)
    with pytest.raises(JobSpecError, match="resources.gpus_per_worker: expected 0 on a machine without GPUs"):
        check_job(spec(gpus_per_worker=0.5), available_gpus=0)


def test_precision_with_gpus_is_valid() -> None:
    """bf16 / fp16 pass the schema on GPU workers (whether the GPUs exist is preflight's question)."""
    for precision in ("bf16", "fp16"):
        assert spec_train(precision, gpus_per_worker=1).train.precision == precision
    assert spec_train("fp32").train.precision == "fp32"
    assert validate_job({"name": "r", "train": {"max_steps": 1}}).train.precision == "fp32"  # the default


def spec_train(precision: str, **resources):
    return validate_job({"name": "r", "train": {"max_steps": 1, "precision": precision}, "resources": resources})


def test_storage_write_probe(s3_env) -> None:
    job = validate_job({"name": "r", "train": {"max_steps": 1}, "storage": f"s3://{s3_env.bucket}/probe"})
    check_job(job, probe_write=True)
    job = validate_job({"name": "r", "train": {"max_steps": 1}, "storage": "s3://no-such-bucket/probe"})
    with pytest.raises(JobSpecError, match="storage: .*bucket 'no-such-bucket' does not exist"):
        check_job(job)


def test_task_schemas_and_their_errors() -> None:
    """``task`` picks the schema: each has its own sections, and the errors name the task's fields."""
    base = {"name": "t", "train": {"max_steps": 1}}
    assert isinstance(validate_job(base), CharLMJob)
    assert isinstance(validate_job({**base, "task": "image_classification"}), ImageJob)
    translation = validate_job(
        {
            **base,
            "task": "translation",
            "search": {"space": {"model.hyper.embed_size": {"grid": [8, 32]}}, "scheduler": "none"},
        }
    )
    assert isinstance(translation, TranslationJob)
    assert (translation.search.metric, translation.search.mode) == ("valid_bleu", "max")
    cases = [
        (
            {"task": "image_clasification"},
            "task: expected one of char_lm, handwriting, image_classification, translation, found "
            "'image_clasification'; did you mean 'image_classification'?",
        ),
        ({"task": "translaton"}, "did you mean 'translation'?"),
        ({"task": "nm"}, "did you mean 'translation'?"),  # close to the old name: the new one is suggested
        (
            {"task": "image_classification", "model": {"kernel": "hyper"}},
            "model.kernel: unknown key; did you mean 'model.kernels'?",
        ),
        ({"task": "image_classification", "model": {"arch": "wide_resnet", "depth": 41}}, "depth must be 6n+4"),
        (
            {"task": "translation", "data": {"dataset": None, "train": {"src": "a.en"}, "valid": {"tsv": "v.tsv"}}},
            "data.train: src and tgt must both name a file",
        ),
        (
            {"task": "translation", "model": {"cell": "gru"}},
            "model.cell: Input should be 'hyperlstm', 'lstm' or 'ln_lstm'",
        ),
        # The char LM's own training keys belong to its job only.
        (
            {"task": "image_classification", "train": {"max_steps": 1, "sample_length": 10}},
            "train.sample_length: unknown key",
        ),
        (
            {"task": "translation", "train": {"max_steps": 1, "eval_max_symbols": 10}},
            "train.eval_max_symbols: unknown key",
        ),
        (
            {
                "task": "image_classification",
                "search": {"metric": "valid_bpc", "space": {"model.hyper.embed_size": {"grid": [2, 4]}}},
            },
            "search.metric: 'valid_bpc' is not reported to the tuner by task image_classification",
        ),
        (
            {"model": {"hyper": {"embed_size": 4}}, "search": {"space": {"model.kernels": {"grid": ["plain"]}}}},
            "search.space.model.kernels: names no spec field",
        ),
    ]
    for extra, expected in cases:
        with pytest.raises(JobSpecError) as err:
            validate_job({**base, **extra})
        assert expected in str(err.value), str(err.value)
    reference = validate_job({**base, "model": {"hidden_size": 16, "hyper": {"hidden_size": 8}, "fast": False}})
    assert build_model(reference, 50).rnn.fast is False and build_model(validate_job(base), 50).rnn.fast is True


def test_the_old_task_name_is_read_with_a_deprecation_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """``task: nmt`` (before the registry) still reads, as ``translation``, and says so once."""

    with caplog.at_level("WARNING", logger="hyperctl"):
        spec = validate_job({"name": "t", "task": "nmt", "train": {"max_steps": 1}})
    assert isinstance(spec, TranslationJob) and spec.task == "translation"
    assert [r.getMessage() for r in caplog.records] == [
        "job: task: 'nmt' is deprecated, write task: 'translation' (it is read as 'translation')"
    ]
    job = tmp_path / "old.yaml"
    job.write_text(yaml.safe_dump({"name": "t", "task": "nmt", "train": {"max_steps": 1}}))
    capsys.readouterr()
    assert main(["validate", str(job)]) == EXIT_OK
    captured = capsys.readouterr()
    assert (
        captured.err == f"warning: {job}: task: 'nmt' is deprecated, write task: 'translation' (it is read as "
        f"'translation')\n"
    )
    assert "task: translation" in captured.out


@pytest.mark.parametrize(
    "task, data",
    [
        ("char_lm", {"train": "a.txt", "valid": "b.txt"}),
        ("translation", {"train": {"tsv": "a.tsv"}, "valid": {"tsv": "b.tsv"}}),
        ("image_classification", {"cifar10": "batches/", "format": "cifar10"}),
        ("handwriting", {"path": "strokes.npz"}),
    ],
)
def test_own_files_replace_the_builtin_default_dataset(task, data) -> None:
    # The user never set data.dataset: the built-in default gives way to the files, in every task.
    spec = validate_job({"name": "own", "task": task, "data": data, "train": {"max_steps": 1}})
    assert spec.data.dataset is None
    # Setting both explicitly is still a clash, named.
    builtin = type(spec.data).model_fields["dataset"].default
    with pytest.raises(JobSpecError, match="give either data.dataset"):
        validate_job({"name": "own", "task": task, "data": {**data, "dataset": builtin}, "train": {"max_steps": 1}})


def test_a_relaunch_with_another_spec_is_refused_by_validate_and_submit_before_ray(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    """The README's second example: a variant of a finished job under the same name."""
    import ray

    from service.io import tracking

    (workdir / "job.yaml").write_text(f"name: quick\ntrain:\n  max_steps: 10\nstorage: {workdir / 'runs'}\n")
    spec = validate_job(yaml.safe_load((workdir / "job.yaml").read_text()))
    tracking.open_run(spec, tracking.tracking_uri_for(spec))  # the first run, as submit records it
    before = snapshot(workdir)
    variant = ["--set", "model.hyper.embed_size=16"]
    for command in ("validate", "submit"):
        assert main([command, "job.yaml", *variant]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert "holds a run named 'quick' with a different spec (model.hyper.embed_size: 4 -> 16)" in err
        assert "--set name=quick-embed_size-16" in err
    assert not ray.is_initialized(), "submit must refuse before starting Ray"
    assert snapshot(workdir) == before
    # The fix the message gives works; the unchanged job still validates (it would resume).
    assert main(["validate", "job.yaml", *variant, "--set", "name=quick-embed_size-16"]) == EXIT_OK
    assert main(["validate", "job.yaml"]) == EXIT_OK
