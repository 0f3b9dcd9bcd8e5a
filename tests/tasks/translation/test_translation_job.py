"""``task: translation``: parallel corpora checked pair by pair, subword preparation, and a 2-worker
translation job end to end (MLflow run with BLEU, then ``hyperctl translate`` on its model)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from service.io import storage, tracking
from service.paths import run_dir
from service.spec.errors import JobSpecError
from service.spec.loading import validate_job
from service.tasks.translation import TASK
from service.tasks.translation.data import load_processors, load_split, prepare_corpus
from service.tasks.translation.model import build_model
from service.tasks.translation.translate import load_translator, saved_spec
from service.worker import checkpoint as ckpt

from helpers import ROOT, hyperctl, saved_as_if_on_gpu

MULTI30K = ROOT / "data" / "multi30k"


def multi30k_lines(split: str, lang: str, n: int) -> list[str]:
    with gzip.open(MULTI30K / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(n)]


def write_pair(folder: Path, stem: str, n: int, split: str = "train") -> dict[str, str]:
    src, tgt = folder / f"{stem}.en", folder / f"{stem}.fr"
    src.write_text("\n".join(multi30k_lines(split, "en", n)) + "\n", encoding="utf-8")
    tgt.write_text("\n".join(multi30k_lines(split, "fr", n)) + "\n", encoding="utf-8")
    return {"src": str(src), "tgt": str(tgt)}


def translation_job(tmp: Path, name: str = "translation", n_train: int = 300, **data: object) -> dict:
    return {
        "name": name,
        "task": "translation",
        "data": {
            "dataset": None,
            "train": write_pair(tmp, "train", n_train),
            "valid": write_pair(tmp, "val", 24, "val"),
            "test": {"flickr16": write_pair(tmp, "test", 16, "test_2016_flickr")},
            "subwords": {"vocab_size": 200},
            "batch_size": 8,
            "eval_batch_size": 16,
            "eval_sentences": 8,
            **data,
        },
        "model": {
            "cell": "hyperlstm",
            "hidden_size": 32,
            "embedding_size": 32,
            "num_layers": 2,
            "hyper": {"hidden_size": 16, "embed_size": 4},
            "beam_size": 3,
            "dropout": 0.0,
        },
        "train": {
            "optimizer": {"name": "adam", "lr": 0.003},
            "max_steps": 20,
            "log_every": 5,
            "eval_every": 10,
            "checkpoint_every": 10,
        },
        "resources": {"workers": 2, "cpus_per_worker": 1, "max_failures": 0},
        "storage": str(tmp / "runs"),
        "tracking": {"experiment": "tests"},
    }


def prepare_error(job: dict, tmp: Path) -> str:
    with pytest.raises(JobSpecError) as err:
        prepare_corpus(validate_job(job), str(tmp / "cache-failed"))
    assert not list((tmp / "cache-failed").rglob("pairs.json"))  # nothing marked prepared
    return str(err.value)


def test_subwords_are_trained_on_train_and_every_split_is_prepared(tmp_path: Path) -> None:
    prepared = prepare_corpus(validate_job(translation_job(tmp_path)), str(tmp_path / "cache"))
    assert prepared.counts == {"train": 300, "valid": 24, "test.flickr16": 16} and prepared.tests == ["flickr16"]
    assert prepared.vocab_sizes == (200, 200) and prepared.shared_vocab
    src_sp, tgt_sp = load_processors(prepared)
    test = load_split(prepared, "test.flickr16")
    assert test.src_text == multi30k_lines("test_2016_flickr", "en", 16)  # raw references kept for BLEU
    assert src_sp.decode(test.src[3]) == test.src_text[3]  # ids round-trip to the sentence
    separate = prepare_corpus(
        validate_job(translation_job(tmp_path, subwords={"vocab_size": 150, "shared": False})), str(tmp_path / "cache")
    )
    assert separate.root != prepared.root and not separate.shared_vocab and separate.vocab_sizes == (150, 150)


def test_a_checkpoint_written_on_a_gpu_translates_on_the_cpu(tmp_path: Path) -> None:
    """``hyperctl translate`` on a checkpoint folder of a GPU run (its model.pt says cuda:0)."""
    import torch

    spec = validate_job(translation_job(tmp_path, n_train=120))
    prepared = prepare_corpus(spec, str(tmp_path / "cache"))
    model = build_model(spec, *prepared.vocab_sizes)
    folder = tmp_path / "checkpoint_00000010"
    meta = {"spec": spec.model_dump(mode="json"), "world_size": 1, "data_root": prepared.root}
    with saved_as_if_on_gpu():
        ckpt.save(
            folder,
            0,
            ckpt.Position(step=10),
            None,
            model=model,
            optimizer=torch.optim.Adam(model.parameters()),
            meta=meta,
        )
    translator = load_translator(str(folder))
    assert all(p.device.type == "cpu" for p in translator.model.parameters())
    for p, q in zip(translator.model.parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q)
    (out,) = translator.translate(["A man rides a bike."], beam_size=2)
    assert isinstance(out, str)


def test_misaligned_corpus_names_both_files_and_counts(tmp_path: Path) -> None:
    job = translation_job(tmp_path)
    tgt = Path(job["data"]["train"]["tgt"])
    tgt.write_text("\n".join(tgt.read_text(encoding="utf-8").splitlines()[:-2]) + "\n", encoding="utf-8")
    message = prepare_error(job, tmp_path)
    assert (
        f"data.train: misaligned corpus: {job['data']['train']['src']} (src) has 300 lines, {tgt} (tgt) has 298"
    ) in message


def test_empty_line_on_one_side_names_file_and_line(tmp_path: Path) -> None:
    job = translation_job(tmp_path)
    tgt = Path(job["data"]["valid"]["tgt"])
    lines = tgt.read_text(encoding="utf-8").splitlines()
    lines[6] = "   "
    tgt.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert f"data.valid.tgt: {tgt} line 7: empty sentence (one side)" in prepare_error(job, tmp_path)


def test_undecodable_bytes_name_file_and_line(tmp_path: Path) -> None:
    job = translation_job(tmp_path)
    src = Path(job["data"]["train"]["src"])
    raw = src.read_bytes().split(b"\n")
    raw[41] = raw[41][:5] + b"\xff\xfe" + raw[41][5:]
    src.write_bytes(b"\n".join(raw))
    assert f"data.train.src: {src} line 42: expected UTF-8 text, found byte 0xff" in prepare_error(job, tmp_path)


def test_tsv_and_parquet_corpora(tmp_path: Path) -> None:
    en, fr = multi30k_lines("train", "en", 300), multi30k_lines("train", "fr", 300)
    (tmp_path / "train.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in zip(en, fr, strict=True)), encoding="utf-8")
    pq.write_table(pa.table({"english": en[:24], "french": fr[:24]}), tmp_path / "valid.parquet")
    job = translation_job(tmp_path, test={})
    job["data"]["train"] = {"tsv": str(tmp_path / "train.tsv")}
    job["data"]["valid"] = {"parquet": str(tmp_path / "valid.parquet"), "src_column": "english", "tgt_column": "french"}
    prepared = prepare_corpus(validate_job(job), str(tmp_path / "cache"))
    assert prepared.counts == {"train": 300, "valid": 24}
    assert load_split(prepared, "valid").tgt_text == fr[:24]

    bad = dict(job["data"]["valid"], tgt_column="german")
    job["data"]["valid"] = bad
    message = prepare_error(job, tmp_path)
    assert "data.valid.tgt_column: " in message and "has no column 'german'" in message
    (tmp_path / "train.tsv").write_text(f"{en[0]}\t{fr[0]}\nno tab here\n", encoding="utf-8")
    job["data"]["valid"] = dict(bad, tgt_column="french")
    assert (
        f"data.train.tsv: {tmp_path / 'train.tsv'} line 2: expected source TAB target, found 0 tabs"
        in prepare_error(job, tmp_path)
    )


def test_spec_rejects_half_a_corpus_and_a_too_large_vocabulary(tmp_path: Path) -> None:
    job = translation_job(tmp_path)
    job["data"]["train"] = {"src": job["data"]["train"]["src"]}
    with pytest.raises(JobSpecError, match="data.train: src and tgt must both name a file"):
        validate_job(job)
    job = translation_job(tmp_path, n_train=20, subwords={"vocab_size": 5000})
    assert "data.subwords.vocab_size: sentencepiece cannot build 5,000 bpe pieces from data.train" in prepare_error(
        job, tmp_path
    )


@pytest.mark.slow
def test_two_worker_translation_job_end_to_end(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    (tmp_path / "job.yaml").write_text(yaml.safe_dump(translation_job(tmp_path, "translation-e2e")))
    proc = hyperctl("submit", str(tmp_path / "job.yaml"), "--num-cpus", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (
        "[train] starting: 20 steps, 2 worker(s)" in proc.stdout
        and "sacreBLEU signature: nrefs:1|case:mixed" in proc.stdout
    )
    summary = json.loads(proc.stdout[proc.stdout.rindex("\n{") + 1 :])
    assert summary["status"] == "FINISHED"

    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    run = client.get_run(summary["run_id"])
    m = run.data.metrics
    assert {"valid_bleu", "valid_ppl", "train_ppl", "tokens_per_s"} <= set(m)
    assert {"final/valid_bleu", "final/valid_ppl", "final/test_bleu", "final/test_bleu_flickr16"} <= set(m)
    assert 0.0 <= m["final/test_bleu"] <= 100.0 and m["final/test_bleu"] == m["final/test_bleu_flickr16"]
    assert m["final/valid_bleu"] == m["valid_bleu"]
    assert 1.0 < m["valid_ppl"] < 200.0  # a 200-piece vocabulary: learning moved it below uniform
    assert run.data.tags["sacrebleu.signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    # the filters' counts (pairs.json's mlflow_params), and the [data] line that said them
    assert {k: v for k, v in run.data.params.items() if k.startswith(("data.dropped.", "data.train_pairs"))} == {
        "data.dropped.too_short": "0",
        "data.dropped.too_long": "0",
        "data.dropped.ratio": "0",
        "data.train_pairs": "300",
        "data.train_pairs_read": "300",
    }
    assert "300 training pairs in 1 shard(s) (none dropped of 300 read)" in proc.stdout
    assert [h.step for h in client.get_metric_history(run.info.run_id, "valid_bleu")] == [10, 20]
    paths = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"subwords", "translations", "plots", "sample_translations.txt", "pairs.json"} <= paths
    assert tracking.run_model_uri(summary["tracking_uri"], run.info.run_id).startswith("models:/")  # runs:/ID/model
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {
        "plots/attention.png",
        "plots/learning_curve.png",
    }
    assert {a.path for a in client.list_artifacts(run.info.run_id, "subwords")} == {"subwords/spm.model"}

    # hyperctl translate: from the run (its final model), the run folder submit printed and a checkpoint
    # folder, same output; a blank line stays blank, line for line.
    sentences = "A dog runs on the beach.\n\nTwo men are talking.\n"
    out = {}
    run_folder = tmp_path / "runs" / "translation-e2e"
    for source in (summary["run_id"], str(run_folder), str(run_folder / "checkpoint_00000020")):
        t = hyperctl("translate", source, "--storage", str(tmp_path / "runs"), cwd=tmp_path, input=sentences)
        assert t.returncode == 0, t.stderr[-3000:]
        out[source] = t.stdout.splitlines()
        assert len(out[source]) == 3 and out[source][1] == "" and t.stderr.strip() == ""  # line for line
    assert len(set(map(tuple, out.values()))) == 1
    t = hyperctl("translate", "no-such-run", "--storage", str(tmp_path / "runs"), cwd=tmp_path, input="x\n")
    assert t.returncode == 2 and "no-such-run: neither a checkpoint folder nor a run in sqlite:///" in t.stderr


def test_runs_and_models_of_the_old_task_name_resume_and_load(tmp_path: Path) -> None:
    """Before the registry the task was ``nmt`` and every job carried the char LM's training keys:
    a relaunch still resumes such a run (same MLflow run), and a model saved then still loads."""
    from mlflow.tracking import MlflowClient

    spec = validate_job(translation_job(tmp_path))
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    old_params = {**spec.flat(), "task": "nmt", "train.eval_max_symbols": None, "train.sample_length": 300}
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("old")
    run_id = client.create_run(experiment).info.run_id
    for key, value in old_params.items():
        client.log_param(run_id, key, str(value))
    storage.write_bytes_atomic(storage.join(run_dir(spec), tracking.RUN_ID_FILE), run_id.encode())

    with pytest.raises(JobSpecError, match="different spec \\(task: nmt -> translation\\)"):
        tracking.open_run(spec, uri)  # without the task's old names: refused, as for any other change
    assert tracking.open_run(spec, uri, task_aliases=TASK.aliases) == (run_id, True)

    old_dump = spec.model_dump(mode="json")
    old_dump["task"] = "nmt"
    old_dump["train"] |= {"eval_max_symbols": None, "sample_length": 300}
    assert saved_spec(old_dump) == spec


def test_evaluate_gives_bleu_with_its_signature(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``hyperctl evaluate CHECKPOINT --source --reference``: sacreBLEU of the model's translations (the
    translator's own output scored by sacreBLEU), its signature printed; misaligned files exit 2."""
    import torch

    from service.cli import main
    from service.tasks.translation.translate import bleu

    job = translation_job(tmp_path, n_train=120)
    job["model"] |= {"beam_size": 1, "max_decode_ratio": 0.1}  # an untrained model decodes to the length limit
    spec = validate_job(job)
    prepared = prepare_corpus(spec, str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = build_model(spec, *prepared.vocab_sizes)
    folder = tmp_path / "checkpoint_00000010"
    meta = {"spec": spec.model_dump(mode="json"), "world_size": 1, "data_root": prepared.root}
    ckpt.save(
        folder, 0, ckpt.Position(step=10), None, model=model, optimizer=torch.optim.Adam(model.parameters()), meta=meta
    )
    pair = write_pair(tmp_path, "held", 3, "test_2016_flickr")
    want, signature = bleu(
        load_translator(str(folder)).translate(multi30k_lines("test_2016_flickr", "en", 3)),
        multi30k_lines("test_2016_flickr", "fr", 3),
    )
    assert main(["evaluate", str(folder), "--source", pair["src"], "--reference", pair["tgt"]]) == 0
    out = capsys.readouterr().out
    assert f"sacreBLEU signature: {signature}" in out and signature.startswith("nrefs:1|case:mixed")
    assert f"eval/held/bleu {want:.6g}" in out and f"{pair['src']}: 3 sentences translated" in out
    short = tmp_path / "short.fr"
    short.write_text("Un chien.\n", encoding="utf-8")
    assert main(["evaluate", str(folder), "--source", pair["src"], "--reference", str(short)]) == 2
    assert f"--reference: {short} has 1 lines, {pair['src']} (--source) has 3" in capsys.readouterr().err
    assert main(["evaluate", str(folder), "--split", "test"]) == 2
    assert "give --source FILE and --reference FILE for a translation model" in capsys.readouterr().err
