"""Trained models as MLflow models, the model registry, and every source ``hyperctl evaluate``,
``translate`` and ``sample`` accept (:mod:`service.io.models`), without Ray: a tiny char LM saved
as its loop saves it (a checkpoint in its run folder, and ``log_model`` into a real sqlite MLflow
store, registered), then loaded back from each kind of source."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from service.cli import main
from service.exitcodes import EXIT_BAD_INPUT, EXIT_OK
from service.io import tracking
from service.io.models import ModelSourceError, open_model
from service.paths import run_dir
from service.spec.loading import validate_job
from service.tasks.char_lm.data import load_split, prepare_text
from service.tasks.char_lm.model import build_model
from service.tasks.char_lm.use import VOCAB_FILE, load_lm, vocab_document
from service.worker import checkpoint as ckpt
from service.worker.worker import log_model

from helpers import local_env, tiny_job

pytestmark = pytest.mark.slow  # a real MLflow store, a model logged and registered, a fresh interpreter: ~30 s

MODEL = "tiny-lm"


def save_checkpoint(folder: Path, spec: Any, model: torch.nn.Module, data_root: str, step: int = 2) -> None:
    """A checkpoint as the loop writes it (rank 0 of 1)."""
    meta = {"spec": spec.model_dump(mode="json"), "world_size": 1, "data_root": data_root}
    optimizer = torch.optim.Adam(model.parameters())
    ckpt.save(folder, 0, ckpt.Position(step=step), None, model=model, optimizer=optimizer, meta=meta)


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished tiny char-LM run: checkpoint_00000002 in its run folder, its MLflow run (FINISHED)
    with the model logged by the loop's ``log_model`` and registered as version 1 of ``tiny-lm``,
    plus a second run that logged no model."""
    tmp = tmp_path_factory.mktemp("models")
    raw = tiny_job(tmp, "lm")
    raw["tracking"]["register_model"] = MODEL
    raw["resources"]["workers"] = 1
    spec = validate_job(raw)
    prepared = prepare_text(spec, str(tmp / "runs" / "datasets"))
    torch.manual_seed(0)
    model = build_model(spec, len(prepared.vocab)).eval()
    uri = f"sqlite:///{tmp / 'runs' / 'mlflow.db'}"
    run_id, _ = tracking.open_run(spec, uri)
    folder = Path(run_dir(spec)) / "checkpoint_00000002"
    save_checkpoint(folder, spec, model, prepared.root)
    example = load_split(prepared, "valid")[:25].view(-1, 1).numpy()
    elsewhere = f"sqlite:///{tmp / 'elsewhere' / 'mlflow.db'}"  # a store the environment names, left alone
    os.environ["MLFLOW_TRACKING_URI"] = elsewhere
    log_model(
        tracking.RunLog(uri, run_id),
        model,
        spec,
        example,
        {VOCAB_FILE: vocab_document(prepared)},
    )
    tracking.close_run(uri, run_id)
    # MLflow's fluent API (which logs models) was pointed at this store only while logging
    assert os.environ.pop("MLFLOW_TRACKING_URI") == elsewhere
    assert not (tmp / "elsewhere").exists()
    import mlflow

    assert mlflow.get_tracking_uri() != uri
    bare = validate_job({**raw, "name": "no-model", "tracking": {"experiment": "tests"}})
    bare_id, _ = tracking.open_run(bare, uri)
    tracking.close_run(uri, bare_id)
    (tmp / "job.yaml").write_text(yaml.safe_dump(raw))
    x = load_split(prepared, "test")[:40].view(-1, 1)
    with torch.no_grad():
        want, _ = model(x)
    return {
        "tmp": tmp,
        "spec": spec,
        "prepared": prepared,
        "uri": uri,
        "run_id": run_id,
        "bare_id": bare_id,
        "checkpoint": folder,
        "x": x,
        "want": want,
        "model": model,
    }


def test_the_run_holds_an_mlflow_pytorch_model_registered_with_its_files(lm: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(lm["uri"])
    (version,) = client.search_model_versions(f"name = '{MODEL}'")
    assert str(version.version) == "1" and version.run_id == lm["run_id"]
    assert client.get_run(lm["run_id"]).data.tags[tracking.TAG_REGISTERED] == f"models:/{MODEL}/1"
    folder = Path(tracking.download_model(lm["uri"], f"runs:/{lm['run_id']}/model", str(lm["tmp"] / "dl")))
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    assert "pytorch" in mlmodel["flavors"] and mlmodel["metadata"] == {"hyperctl_task": "char_lm"}
    assert mlmodel["saved_input_example_info"]["type"] == "ndarray"
    assert {p.name for p in (folder / "extra_files").iterdir()} == {"job.json", "vocab.json"}
    assert json.loads((folder / "extra_files" / "job.json").read_text()) == lm["spec"].model_dump(mode="json")
    assert (folder / "code" / "hypermodels" / "charlm.py").is_file()  # loads without this checkout
    requirements = (folder / "requirements.txt").read_text().split()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements and len(requirements) <= 3, requirements
    assert not (lm["tmp"] / "mlruns").exists()  # the model went to the run's store, not ./mlruns


def test_a_registered_model_loads_in_a_fresh_process_with_plain_mlflow(lm: dict[str, Any]) -> None:
    """``mlflow.pytorch.load_model("models:/tiny-lm/1")`` in a new interpreter, outside the checkout:
    the same outputs as the run's own checkpoint."""
    torch.save(lm["x"], lm["tmp"] / "x.pt")
    script = (
        "import sys, torch, mlflow.pytorch\n"
        f"m = mlflow.pytorch.load_model('models:/{MODEL}/1')\n"
        "with torch.no_grad():\n"
        "    out, _ = m.eval()(torch.load('x.pt'))\n"
        "torch.save(out, 'out.pt')\n"
        "print(type(m).__name__, sys.modules[type(m).__module__].__file__)\n"
    )
    env = {k: v for k, v in local_env(MLFLOW_TRACKING_URI=lm["uri"]).items() if k != "PYTHONPATH"}
    proc = __import__("subprocess").run(
        [sys.executable, "-c", script], cwd=lm["tmp"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, module_file = proc.stdout.split()
    assert name == "CharLM"
    assert "/code/hypermodels/" in module_file  # the model's own copy of the code, not this checkout's
    with open_model(str(lm["checkpoint"]), lambda: lm["uri"]) as source:
        with torch.no_grad():
            from_checkpoint, _ = load_lm(source).model(lm["x"])
    assert torch.equal(torch.load(lm["tmp"] / "out.pt"), from_checkpoint)
    assert torch.equal(from_checkpoint, lm["want"])


def test_every_kind_of_source_gives_the_same_model_and_its_run(lm: dict[str, Any]) -> None:
    client = tracking._client(lm["uri"])
    client.set_registered_model_alias(MODEL, "champion", "1")
    run_id, folder = lm["run_id"], lm["checkpoint"]
    for given in (
        str(folder.parent),  # the run folder: its newest checkpoint
        str(folder),
        run_id,
        f"runs:/{run_id}/model",
        f"models:/{MODEL}/1",
        f"models:/{MODEL}@champion",
    ):
        with open_model(given, lambda: lm["uri"]) as source:
            assert source.run_id == run_id, given
            assert (source.checkpoint is None) == (given not in (str(folder), str(folder.parent))), given
            with torch.no_grad():
                out, _ = load_lm(source).model(lm["x"])
        assert torch.equal(out, lm["want"]), given


def bad_source(given: str, uri: str) -> str:
    with pytest.raises(ModelSourceError) as err, open_model(given, lambda: uri):
        pass
    return str(err.value)


def test_bad_sources_name_what_was_given_and_what_exists(lm: dict[str, Any], tmp_path: Path) -> None:
    uri, run_id = lm["uri"], lm["run_id"]
    assert (
        bad_source("models:/nope/1", uri)
        == f"models:/nope/1: no registered model 'nope' in {uri} (registered: {MODEL})"
    )
    assert (
        bad_source(f"models:/{MODEL}/7", uri)
        == f"models:/{MODEL}/7: registered model '{MODEL}' has no version 7 (versions: 1)"
    )
    assert "has no alias 'best' (aliases: " in bad_source(f"models:/{MODEL}@best", uri)
    for malformed in (f"models:/{MODEL}", f"models:/{MODEL}/latest", "models:/"):
        assert (
            bad_source(malformed, uri) == f"{malformed}: expected models:/NAME/VERSION (a number) or models:/NAME@ALIAS"
        )
    assert bad_source("runs:/0123abcd/model", uri) == f"runs:/0123abcd/model: no run 0123abcd in {uri}"
    assert (
        bad_source(f"runs:/{run_id}/weights", uri)
        == f"runs:/{run_id}/weights: run {run_id} has no model 'weights' (its models: model)"
    )
    assert bad_source(lm["bare_id"], uri) == (
        f"{lm['bare_id']}: run {lm['bare_id']} has no model 'model' (its models: none: a run logs its model when "
        "training finishes)"
    )
    assert bad_source("runs:/model", uri) == "runs:/model: expected runs:/RUN_ID/model"
    assert bad_source("nothing-here", uri) == f"nothing-here: neither a checkpoint folder nor a run in {uri}"
    assert "neither a run folder (with mlflow_run_id and checkpoint_* folders) nor a checkpoint folder" in bad_source(
        str(tmp_path), uri
    )
    empty_run = tmp_path / "run"
    empty_run.mkdir()
    (empty_run / "mlflow_run_id").write_text(run_id)
    assert (
        bad_source(str(empty_run), uri) == f"{empty_run}: a run folder without a checkpoint yet (none with meta.json)"
    )
    missing = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    assert (
        bad_source(f"models:/{MODEL}/1", missing)
        == f"models:/{MODEL}/1: no MLflow store at {missing} (nothing has run there yet)"
    )
    assert not (tmp_path / "none").exists()


def evaluate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["evaluate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def metric(out: str, key: str) -> float:
    (line,) = [line for line in out.splitlines() if line.startswith(key + " ")]
    return float(line.split()[1])


def test_evaluate_char_lm_bpc_on_a_split_and_a_text_file(
    lm: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from hypermodels import bits_per_char

    spec, prepared = lm["spec"], lm["prepared"]
    want = bits_per_char(
        lm["model"], load_split(prepared, "test"), batch_size=spec.data.eval_batch_size, seq_len=spec.data.seq_len
    )
    code, out, err = evaluate(capsys, str(lm["checkpoint"]), "--split", "test")
    assert code == EXIT_OK, err
    assert metric(out, "eval/test/bpc") == pytest.approx(want, rel=1e-5)
    assert f"model: checkpoint {lm['checkpoint']} (char_lm)" in out
    # the test file itself, with a BOM and CRLF endings: the same symbols, the same bpc, named by its stem
    body = Path(spec.data.test).read_bytes()
    crlf = lm["tmp"] / "held-out.txt"
    crlf.write_bytes(b"\xef\xbb\xbf" + body.replace(b"\n", b"\r\n"))
    code, out, err = evaluate(capsys, f"models:/{MODEL}/1", "--text", str(crlf), "--storage", str(lm["tmp"] / "runs"))
    assert code == EXIT_OK, err
    assert metric(out, "eval/held-out/bpc") == pytest.approx(want, rel=1e-5)
    assert err.count("byte-order mark") == 1
    # without --log nothing reached the run
    assert not [k for k in tracking._client(lm["uri"]).get_run(lm["run_id"]).data.metrics if k.startswith("eval/")]


def test_evaluate_refuses_bad_input_with_exit_2(
    lm: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ckpt_folder = str(lm["checkpoint"])
    bad = tmp_path / "bad.txt"
    bad.write_text("a b c Q Z\n", encoding="utf-8")
    code, _, err = evaluate(capsys, ckpt_folder, "--text", str(bad))
    assert code == EXIT_BAD_INPUT
    assert f"error: --text: {bad}: 2 symbol(s) outside the model's vocabulary of" in err and "['Q', 'Z']" in err
    bad.write_bytes(b"a b \xff c\n")
    code, _, err = evaluate(capsys, ckpt_folder, "--text", str(bad))
    assert code == EXIT_BAD_INPUT and f"--text: {bad} line 1: expected UTF-8 text, found byte 0xff" in err
    code, _, err = evaluate(capsys, ckpt_folder, "--text", str(tmp_path / "missing.txt"))
    assert code == EXIT_BAD_INPUT and f"--text: expected a file, found nothing at {tmp_path / 'missing.txt'}" in err
    code, _, err = evaluate(capsys, ckpt_folder, "--images", "x.idx", "--labels", "y.idx")
    assert code == EXIT_BAD_INPUT
    assert (
        f"error: --images is for image_classification models; {ckpt_folder} is a char_lm model "
        "(its options: --text, --split)" in err
    )
    code, _, err = evaluate(capsys, ckpt_folder)
    assert code == EXIT_BAD_INPUT and "give one of --text FILE or --split valid|test for a char_lm model" in err
    code, _, err = evaluate(capsys, ckpt_folder, "--split", "train")
    assert code == EXIT_BAD_INPUT and "--split: expected valid or test for a char_lm model, found 'train'" in err


def test_evaluate_log_adds_eval_metrics_to_the_run(
    lm: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    client = tracking._client(lm["uri"])
    code, out, err = evaluate(capsys, str(lm["checkpoint"].parent), "--split", "valid", "--log", "--name", "my valid")
    assert code == EXIT_OK, err
    logged = client.get_run(lm["run_id"]).data.metrics
    assert logged["eval/my_valid/bpc"] == pytest.approx(metric(out, "eval/my_valid/bpc"))
    assert f"logged to run {lm['run_id']} in {lm['uri']}" in out
    # a checkpoint folder copied out of its run folder belongs to no run: --log is refused before any work
    loose = tmp_path / "loose"
    shutil.copytree(lm["checkpoint"], loose)
    code, out, err = evaluate(capsys, str(loose), "--split", "valid", "--log")
    assert code == EXIT_BAD_INPUT and out == ""
    assert f"error: --log: {loose} is a checkpoint folder outside any run folder (no mlflow_run_id beside it)" in err
    code, out, _ = evaluate(capsys, str(loose), "--split", "valid")  # without --log it evaluates
    assert code == EXIT_OK and metric(out, "eval/valid/bpc") == pytest.approx(logged["eval/my_valid/bpc"])


def test_sample_is_reproducible_and_refuses_unknown_prime_symbols(
    lm: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    store = ["--storage", str(lm["tmp"] / "runs")]
    outs = []
    for source in (str(lm["checkpoint"]), f"runs:/{lm['run_id']}/model"):
        assert main(["sample", source, "--prime", "the ", "--length", "30", "--seed", "3", *store]) == EXIT_OK
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].startswith("the ") and len(outs[0].rstrip("\n")) >= 34
    assert main(["sample", str(lm["checkpoint"]), "--prime", "the ", "--length", "30", "--seed", "4"]) == EXIT_OK
    assert capsys.readouterr().out != outs[0]
    assert main(["sample", str(lm["checkpoint"]), "--prime", "QQ", "--length", "3"]) == EXIT_BAD_INPUT
    assert "--prime: expected text of the model's" in capsys.readouterr().err


def test_schema_validates_register_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from service.spec.errors import JobSpecError

    raw = tiny_job(tmp_path, "x")
    raw["tracking"]["register_model"] = "bad name/1"
    with pytest.raises(JobSpecError, match="tracking.register_model"):
        validate_job(raw)
    raw["tracking"]["register_model"] = "ok-name_1.2"
    assert validate_job(raw).tracking.register_model == "ok-name_1.2"
    assert main(["schema"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "tracking.register_model" in out and "only the best trial's model is registered" in out


def test_a_runs_model_registers_as_a_new_version_as_a_campaign_registers_its_best(lm: dict[str, Any]) -> None:
    uri = lm["uri"]
    assert tracking.register_run_model(uri, lm["run_id"], "best-of") == 1
    assert tracking.register_run_model(uri, lm["run_id"], "best-of") == 2
    assert tracking.registered_version(uri, "best-of", "2", None)[2] == lm["run_id"]
    with pytest.raises(tracking.ModelLookupError, match="has no model 'model'"):
        tracking.register_run_model(uri, lm["bare_id"], "best-of")
