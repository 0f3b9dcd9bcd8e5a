"""WMT-style parallel data (issue 15): several training corpora (aligned files and TSV, gzip'd or
not, CRLF), the length and ratio filters with their counts, sentencepiece on a seeded sample,
training shards, a worker's shard of batches, a preparation that dies half-way, corrupt and
truncated inputs named, the Ray Data path giving the same bytes, and the WMT'14 job."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from tasks.translation.test_translation_job import multi30k_lines, translation_job

from service.io import shards
from service.spec.errors import JobSpecError
from service.spec.loading import load_job, validate_job
from service.tasks.translation import TASK
from service.tasks.translation.batches import RankBatches
from service.tasks.translation.data import ShardWriter, check_prepared, load_split, prepare_corpus
from service.tasks.translation.sources import bottom_k, sample_corpus
from service.tasks.translation.spec import FilterSpec, ParallelSource

from helpers import ROOT, hyperctl

EN, FR = multi30k_lines("train", "en", 400), multi30k_lines("train", "fr", 400)


def write(path: Path, lines: list[str], gz: bool = False, eol: str = "\n") -> str:
    body = (eol.join(lines) + eol).encode()
    path.write_bytes(gzip.compress(body, mtime=0) if gz else body)
    return str(path)


def three_corpora(tmp: Path) -> list[dict]:
    """Pairs 0-149 as gzip'd aligned files, 150-299 as a CRLF TSV, 300-399 as a gzip'd 3-column TSV."""
    tsv = [f"{a}\t{b}" for a, b in zip(EN[150:300], FR[150:300], strict=True)]
    wide = [f"{i}\t{b}\t{a}" for i, (a, b) in enumerate(zip(EN[300:], FR[300:], strict=True))]
    return [
        {"src": write(tmp / "a.en.gz", EN[:150], gz=True), "tgt": write(tmp / "a.fr.gz", FR[:150], gz=True)},
        {"tsv": write(tmp / "b.tsv", tsv, eol="\r\n")},
        {"tsv": write(tmp / "c.tsv.gz", wide, gz=True), "columns": [2, 1]},
    ]


def wmt_job(tmp: Path, **data: object) -> dict:
    tmp.mkdir(exist_ok=True)
    job = translation_job(tmp, n_train=10)
    job["data"].update({"train": three_corpora(tmp), "shard_pairs": 64, **data})
    return job


def test_several_corpora_gzipped_tsv_crlf_become_shards_in_order(tmp_path: Path) -> None:
    prepared = prepare_corpus(validate_job(wmt_job(tmp_path)), str(tmp_path / "cache"))
    assert prepared.counts["train"] == 400 and prepared.read == 400 and sum(prepared.dropped.values()) == 0
    # a chunk of 64 pairs of each corpus per shard: 150 -> 3, 150 -> 3, 100 -> 2
    assert [s.rows for s in prepared.train.shards] == [64, 64, 22, 64, 64, 22, 64, 36]
    train = load_split(prepared, "train")
    assert train.src_text == EN and train.tgt_text == FR  # columns [2, 1]: source field 2, target field 1
    assert "400 training pairs in 8 shard(s) (none dropped of 400 read)" in prepared.summary()


def test_filters_count_every_reason_and_the_checks_count_them(tmp_path: Path) -> None:
    kept = [(" ".join(a.split()[:6]), " ".join(b.split()[:6])) for a, b in zip(EN[:60], FR[:60], strict=True)]
    pairs = list(kept)
    pairs += [("", "x y"), ("a b", "   ")] + [("one", "x y")] * 3  # too_short with min_len 2: 5
    pairs += [(" ".join(["w"] * 9), "x y")] * 4  # too_long with max_len 8: 4
    pairs += [("a b", " ".join(["z"] * 7))] * 2  # ratio 3.5 > 3: 2
    job = translation_job(tmp_path, n_train=10, subwords={"vocab_size": 100})
    job["data"]["train"] = {
        "src": write(tmp_path / "f.en", [a for a, _ in pairs]),
        "tgt": write(tmp_path / "f.fr", [b for _, b in pairs]),
    }
    job["data"]["filter"] = {"min_len": 2, "max_len": 8, "max_ratio": 3}
    prepared = prepare_corpus(validate_job(job), str(tmp_path / "cache"))
    assert prepared.dropped == {"too_short": 5, "too_long": 4, "ratio": 2}
    assert prepared.counts["train"] == 60 and prepared.read == 71
    assert "dropped 11 of 71 read: 5 too_short, 4 too_long, 2 ratio" in prepared.summary()
    manifest = json.loads((Path(prepared.root) / "pairs.json").read_text())
    assert manifest["mlflow_params"] == {
        "data.train_pairs_read": 71,
        "data.train_pairs": 60,
        "data.dropped.too_short": 5,
        "data.dropped.too_long": 4,
        "data.dropped.ratio": 2,
    }
    train = load_split(prepared, "train")
    assert list(zip(train.src_text, train.tgt_text, strict=True)) == kept

    spec = validate_job({**job, "data": {**job["data"], "batch_size": 64}})
    assert check_prepared(spec, prepared) == [
        "data.batch_size: 64 pairs per batch, but only 60 of 60 training pairs fit data.max_len = 64 (after "
        "data.filter dropped 11 of 71 read: 5 too_short, 4 too_long, 2 ratio)"
    ]
    spec = validate_job({**job, "data": {**job["data"], "max_len": 1}})
    assert check_prepared(spec, prepared)[0].startswith("data.max_len: 0 of 60 training pairs fit data.max_len = 1")
    assert check_prepared(spec, prepared)[0].endswith(
        "(after data.filter dropped 11 of 71 read: 5 too_short, 4 too_long, 2 ratio)"
    )


def test_a_filter_that_keeps_nothing_is_named(tmp_path: Path) -> None:
    job = wmt_job(tmp_path, filter={"max_len": 1})
    with pytest.raises(JobSpecError, match=r"data.filter: no training pair of data.train\[0\], data.train\[1\]"):
        prepare_corpus(validate_job(job), str(tmp_path / "cache"))


def test_the_sentencepiece_sample_is_seeded_and_the_same_however_the_corpora_are_read(tmp_path: Path) -> None:
    corpora = [ParallelSource(**c) for c in three_corpora(tmp_path)]
    f = FilterSpec()
    per_corpus = [sample_corpus(f"data.train[{i}]", i, c, f, 50, seed=7) for i, c in enumerate(corpora)]
    sample = bottom_k(per_corpus, 50)
    assert len(sample) == 50 and len(set(sample)) == 50 and set(sample) <= set(zip(EN, FR, strict=True))
    assert bottom_k(reversed(per_corpus), 50) == sample  # the merge does not depend on the order of arrival
    assert bottom_k([per_corpus[0][:10], per_corpus[0][10:], *per_corpus[1:]], 50) == sample
    other = bottom_k([sample_corpus(f"c{i}", i, c, f, 50, seed=8) for i, c in enumerate(corpora)], 50)
    assert other != sample

    prepared = [
        prepare_corpus(
            validate_job(wmt_job(tmp_path, subwords={"vocab_size": 150, "sample_pairs": 120, "seed": s})),
            str(tmp_path / d),
        )
        for s, d in ((3, "x"), (3, "y"), (4, "z"))
    ]
    assert prepared[0].sampled == 120 and prepared[0].counts["train"] == 400
    models = [(Path(p.root) / "spm.model").read_bytes() for p in prepared]
    assert models[0] == models[1] and models[0] != models[2]


def test_a_workers_shard_of_batches_is_its_own_and_reproducible_per_epoch(tmp_path: Path) -> None:
    prepared = prepare_corpus(validate_job(wmt_job(tmp_path)), str(tmp_path / "cache"))
    world, local = 2, 8
    ranks = [RankBatches(prepared, r, world, local, max_len=64, seed=5) for r in range(world)]
    assert ranks[0].steps_per_epoch == ranks[1].steps_per_epoch == min(u // local for u in ranks[0].usable)
    assert sum(ranks[0].usable) == prepared.usable(64)
    train = load_split(prepared, "train")
    starts = shards.ShardedSplit(prepared.root, prepared.train).starts
    owned: list[set[tuple[int, ...]]] = [set(), set()]
    for k, shard in enumerate(prepared.train.shards):
        for r in range(world):
            lo, hi = starts[k] + shard.rows * r // world, starts[k] + shard.rows * (r + 1) // world
            owned[r] |= {tuple(train.src[i]) for i in range(lo, hi)}
    epochs = {}
    for r, rb in enumerate(ranks):
        for e in (0, 1):
            batches = list(rb.epoch(e))
            assert len(batches) == rb.steps_per_epoch and all(len(s) == len(t) == local for s, t in batches)
            seen = [tuple(s) for src, _ in batches for s in src]
            assert len(set(seen)) == len(seen) and set(seen) <= owned[r]  # each pair once, from its own rows
            epochs[r, e] = batches
        again = RankBatches(prepared, r, world, local, max_len=64, seed=5)
        assert list(again.epoch(1)) == epochs[r, 1]  # the same order for the same epoch
        assert list(again.epoch(1, skip=7)) == epochs[r, 1][7:]  # a resume
        assert epochs[r, 0] != epochs[r, 1]
    assert not {tuple(s) for s, _ in epochs[0, 0] for s in s} & {tuple(s) for s, _ in epochs[1, 0] for s in s}
    short = RankBatches(prepared, 0, world, local, max_len=12, seed=5)
    assert all(len(s) <= 12 and len(t) < 12 for src, tgt in short.epoch(0) for s, t in zip(src, tgt, strict=True))


def test_a_preparation_that_dies_half_way_leaves_no_manifest_and_the_next_starts_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = validate_job(wmt_job(tmp_path))
    real = ShardWriter.__call__
    calls = []

    def dies_at_the_fourth(self: ShardWriter, item: tuple) -> dict:
        calls.append(item[0])
        if len(calls) == 4:
            raise KeyboardInterrupt("killed")
        return real(self, item)

    monkeypatch.setattr(ShardWriter, "__call__", dies_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(spec, str(tmp_path / "cache"))
    (folder,) = (tmp_path / "cache").iterdir()
    assert not (folder / "pairs.json").exists() and len(list(folder.glob("train-*.parquet"))) == 3
    (folder / "train-00099.parquet").write_bytes(b"stale")  # e.g. from an earlier, different cut
    monkeypatch.setattr(ShardWriter, "__call__", real)
    prepared = prepare_corpus(spec, str(tmp_path / "cache"))
    assert Path(prepared.root) == folder and (folder / "pairs.json").exists()
    assert sorted(p.name for p in folder.glob("train-*.parquet")) == [s.name for s in prepared.train.shards]
    assert load_split(prepared, "train").src_text == EN


def test_a_truncated_or_corrupt_gz_and_a_misaligned_pair_are_named(tmp_path: Path) -> None:
    job = wmt_job(tmp_path)
    big = gzip.compress(("\n".join(EN * 20) + "\n").encode(), mtime=0)
    bad = tmp_path / "cut.en.gz"
    bad.write_bytes(big[: len(big) // 2])
    job["data"]["train"][0]["src"] = str(bad)
    with pytest.raises(JobSpecError) as err:
        prepare_corpus(validate_job(job), str(tmp_path / "cache"))
    assert (
        f"data.train[0].src: {bad}: truncated gzip file: the compressed stream stops at byte offset {len(big) // 2:,}"
    ) in str(err.value)
    assert not list((tmp_path / "cache").rglob("pairs.json"))

    corrupt = bytearray(big)
    corrupt[len(big) // 2 : len(big) // 2 + 8] = b"\xff" * 8
    bad.write_bytes(bytes(corrupt))
    with pytest.raises(JobSpecError, match=r"data.train\[0\].src: .*cut.en.gz: corrupt gzip data in compressed bytes"):
        prepare_corpus(validate_job(job), str(tmp_path / "cache"))

    job["data"]["train"][0]["src"] = write(tmp_path / "short.en.gz", EN[:149], gz=True)
    with pytest.raises(JobSpecError) as err:
        prepare_corpus(validate_job(job), str(tmp_path / "cache"))
    assert f"data.train[0]: misaligned corpus: {tmp_path / 'short.en.gz'} (src) has 149 lines" in str(err.value)

    job["data"]["train"] = three_corpora(tmp_path)
    (tmp_path / "b.tsv").write_bytes((tmp_path / "b.tsv").read_bytes().replace(b"\t", b" ", 1))
    with pytest.raises(JobSpecError, match=r"data.train\[1\].tsv: .*b.tsv line 1: expected source TAB target"):
        prepare_corpus(validate_job(job), str(tmp_path / "cache"))


def test_the_wmt14_job_validates_with_the_users_files(tmp_path: Path) -> None:
    names = [
        "europarl-v7.fr-en", "commoncrawl.fr-en", "undoc.2000.fr-en", "news-commentary-v9.fr-en",
        "newstest2012", "newstest2013", "newstest2014",
    ]  # fmt: skip
    for name in names:
        write(tmp_path / f"{name}.en", EN[:3])
        write(tmp_path / f"{name}.fr", FR[:3])
    for lang, lines in (("en", EN[:3]), ("fr", FR[:3])):
        write(tmp_path / f"giga-fren.release2.fixed.{lang}.gz", lines, gz=True)
    job = ROOT / "jobs" / "wmt14-en-fr-hyperlstm.yaml"
    missing = hyperctl("validate", str(job), "--set", f"storage={tmp_path / 'runs'}", cwd=tmp_path)
    assert (
        missing.returncode == 2 and "data.train[0].src: expected a UTF-8 text file, found nothing at" in missing.stderr
    )
    proc = hyperctl(
        "validate", str(job), "--set", f"data.dir={tmp_path}", "--set", f"storage={tmp_path / 'runs'}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "# model parameters: 278,694,144 (278.69M)" in proc.stdout

    spec = load_job(job, [f"data.dir={tmp_path}"])
    m = spec.model
    assert (m.cell, m.num_layers, m.hidden_size, m.hyper.hidden_size, m.hyper.embed_size, m.layer_norm) == (
        "hyperlstm", 8, 1024, 128, 32, True
    )  # fmt: skip
    assert spec.data.subwords.vocab_size == 32000 and len(spec.data.sources("train")) == 5
    assert spec.data.sources("train")[4][1].src == str(tmp_path / "giga-fren.release2.fixed.en.gz")
    assert TASK.parameter_count(spec) == 278_694_144


@pytest.mark.slow
def test_ray_data_preparation_writes_the_same_bytes_as_this_process(tmp_path: Path) -> None:
    import ray

    spec = validate_job(wmt_job(tmp_path, subwords={"vocab_size": 150, "sample_pairs": 200}))
    local = prepare_corpus(spec, str(tmp_path / "local"), ray_data=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = prepare_corpus(spec, str(tmp_path / "ray"), ray_data=True)
        # an error in a Ray task is the same error, naming the file: a truncated .gz of the 3rd corpus
        job = wmt_job(tmp_path / "cut")
        wide = Path(job["data"]["train"][2]["tsv"])
        wide.write_bytes(wide.read_bytes()[:-12])
        with pytest.raises(JobSpecError, match=r"data.train\[2\].tsv: .*c.tsv.gz: truncated gzip file"):
            prepare_corpus(validate_job(job), str(tmp_path / "ray"), ray_data=True)
    finally:
        ray.shutdown()
    a, b = Path(local.root), Path(on_ray.root)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and len(names) == 8 + 4  # 8 shards, spm, valid, test, manifest
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
