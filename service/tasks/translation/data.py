"""Prepared parallel corpora for ``task: translation``: sentencepiece subwords, the training split
as Parquet shards, ``pairs.json`` (cached by content hash, :mod:`service.io.datacache`).

Sources: the vendored Multi30k (``multi30k-en-fr``, ``multi30k-en-de``) or user corpora (each split
one corpus or a list: two aligned text files, one TSV file or one Parquet file, gzip'd or not, from
paths or s3:// URIs; :mod:`.sources` reads them as streams of pairs).

Preparation, with memory independent of the corpus's size:

1. **Hash** the settings and the bytes of every file (streamed): an unchanged corpus is a cache hit.
2. **Sample**: each training corpus is read once, its pairs filtered (``data.filter``), and the
   ``data.subwords.sample_pairs`` kept pairs with the smallest seeded keys chosen
   (:func:`.sources.sample_corpus`); sentencepiece (BPE or unigram; one shared model or one per
   language; ids 0 pad, 1 unk, 2 bos, 3 eos) learns from them.
3. **Shards**: each training corpus is cut into chunks of ``data.shard_pairs`` pairs (in file order);
   a chunk is filtered, encoded and written as one shard ``train-<n>.parquet``
   (:func:`service.io.shards.write_shard`; columns ``src``/``tgt`` subword ids, ``src_text``/
   ``tgt_text``, ``fit_len`` = the longer of the source and the target with its end symbol). On Ray
   Data (``data.preparation``) the chunks are encoded and written in parallel, a wave of them at a
   time, by the same function: the same bytes as in this process.
4. ``valid.parquet`` and ``test.<name>.parquet`` (whole, never filtered), then ``pairs.json``: the
   commit marker, written last. A folder without it (a preparation that died) is emptied and
   prepared again (:func:`service.io.shards.start_fresh`).

The manifest keeps, per shard, a histogram of ``fit_len``, so the driver's checks and the workers
know how many pairs fit ``data.max_len`` without reading the pairs; and the pairs dropped by each
filter (logged as the MLflow params ``data.dropped.<reason>``).
"""

from __future__ import annotations

import gc
import hashlib
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ...io import datacache, shards, storage
from ...io.datacache import data_error
from ...paths import VENDORED_DATA
from ..base import DataFile
from .sources import (
    DROP_REASONS,
    Pair,
    bottom_k,
    chunks,
    drop_reason,
    iter_pairs,
    read_corpora,
    read_lines,
    read_parallel,
    sample_corpus,
    source_files,
)
from .spec import FilterSpec, ParallelSource, TranslationJob

SCHEMA_VERSION = 2
MANIFEST = "pairs.json"
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MULTI30K_DIR = VENDORED_DATA / "multi30k"
MULTI30K_TESTS = ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco")
ROWS_PER_GROUP = 4096  # sentence pairs per Parquet row group of a shard
NEVER_FITS = 1 << 30  # the fit_len of a pair whose source is empty
WRITER_MAX_CALLS = 4  # shards a Ray worker writes before it is replaced: its memory stays that of a few shards


@dataclass(frozen=True)
class PreparedCorpus:
    """A prepared parallel corpus: its folder, languages, subword vocabularies, split sizes, the
    training shards (with their fit_len histograms) and the pairs the filters dropped."""

    root: str
    content_hash: str
    src_lang: str
    tgt_lang: str
    shared_vocab: bool
    vocab_sizes: tuple[int, int]  # (source, target) pieces
    counts: dict[str, int]
    tests: list[str] = field(default_factory=list)
    manifest: str = MANIFEST
    train: shards.SplitShards = shards.SplitShards(())
    fit_hists: tuple[dict[int, int], ...] = ()  # per training shard: fit_len -> pairs
    dropped: dict[str, int] = field(default_factory=dict)
    read: int = 0  # training pairs read, before the filters
    sampled: int = 0  # pairs sentencepiece learned from

    def summary(self) -> str:
        vocab = (
            f"shared vocabulary of {self.vocab_sizes[0]:,}"
            if self.shared_vocab
            else f"vocabularies {self.vocab_sizes[0]:,} / {self.vocab_sizes[1]:,}"
        )
        return (
            f"{self.src_lang}->{self.tgt_lang}, {self.counts['train']:,} training pairs in "
            f"{len(self.train.shards)} shard(s) ({dropped_text(self.read, self.dropped)}), {vocab} pieces "
            f"learned from {self.sampled:,} pairs, tests {', '.join(self.tests) or 'none'}, "
            f"hash {self.content_hash[:12]}"
        )

    def model_files(self) -> tuple[str, str]:
        """URIs of the (source, target) sentencepiece models (the same file when shared)."""
        if self.shared_vocab:
            return (storage.join(self.root, "spm.model"),) * 2
        return storage.join(self.root, "spm_src.model"), storage.join(self.root, "spm_tgt.model")

    def usable(self, max_len: int, shard: int | None = None) -> int:
        """Training pairs that fit ``data.max_len`` (in one shard, or in all)."""
        hists = self.fit_hists if shard is None else (self.fit_hists[shard],)
        return sum(n for h in hists for length, n in h.items() if length <= max_len)


def dropped_text(read: int, dropped: dict[str, int]) -> str:
    """``"dropped 12 of 600: 10 too_short, 2 ratio"`` (or ``"none dropped of 600"``)."""
    total = sum(dropped.values())
    if not total:
        return f"none dropped of {read:,} read"
    parts = ", ".join(f"{dropped[r]:,} {r}" for r in DROP_REASONS if dropped.get(r))
    return f"dropped {total:,} of {read:,} read: {parts}"


def data_files(spec: TranslationJob) -> list[DataFile]:
    """Every file of the user corpus: each split's src/tgt, tsv or parquet (none for built-ins)."""
    d = spec.data
    sources = d.sources("train") + d.sources("valid") + [(f"data.test.{n}", s) for n, s in d.test.items()]
    return [
        DataFile(where, uri, not where.endswith(".parquet"))
        for name, src in sources
        for where, uri in source_files(name, src)
    ]


def source_name(spec: TranslationJob) -> str:
    if spec.data.dataset is not None:
        return spec.data.dataset
    corpora = [src.describe() for _, src in spec.data.sources("train")]
    return corpora[0] if len(corpora) == 1 else f"{len(corpora)} training corpora ({', '.join(corpora)})"


@dataclass(frozen=True)
class Corpora:
    """What a job's data is: its name, languages, and the corpora of each split (spec field, corpus)."""

    name: str
    src_lang: str
    tgt_lang: str
    train: list[tuple[str, ParallelSource]]
    valid: list[tuple[str, ParallelSource]]
    tests: dict[str, list[tuple[str, ParallelSource]]]


def corpora(spec: TranslationJob) -> Corpora:
    d = spec.data
    if d.dataset is not None:
        src_lang, tgt_lang = d.dataset.removeprefix("multi30k-").split("-")

        def vendored(stem: str) -> list[tuple[str, ParallelSource]]:
            files = {k: str(MULTI30K_DIR / f"{stem}.{lang}.gz") for k, lang in (("src", src_lang), ("tgt", tgt_lang))}
            return [("data.dataset", ParallelSource(**files))]

        tests = {t: vendored(t) for t in MULTI30K_TESTS}
        return Corpora(d.dataset, src_lang, tgt_lang, vendored("train"), vendored("val"), tests)
    tests = {n: [(f"data.test.{n}", s)] for n, s in d.test.items()}
    return Corpora("custom", "src", "tgt", d.sources("train"), d.sources("valid"), tests)


def load_sentences(spec: TranslationJob) -> tuple[str, str, str, dict[str, tuple[list[str], list[str]]]]:
    """(name, source language, target language, {split: (sources, targets)}) of the validation and
    test splits (``test.<name>``): the small splits, read whole."""
    c = corpora(spec)
    splits = {"valid": read_corpora(c.valid)}
    splits.update({f"test.{t}": read_corpora(srcs) for t, srcs in c.tests.items()})
    return c.name, c.src_lang, c.tgt_lang, splits


def train_sentencepiece(sentences: list[str], spec: TranslationJob, field_name: str) -> bytes:
    """A sentencepiece model (serialized) trained on ``sentences`` with the job's subword settings."""
    import io

    import sentencepiece as spm  # deferred: only translation jobs need it

    sw = spec.data.subwords
    out = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=out,
            vocab_size=sw.vocab_size,
            model_type=sw.model_type,
            character_coverage=1.0,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            num_threads=1,
            minloglevel=2,
            shuffle_input_sentence=False,
            input_sentence_size=0,  # every sentence given: the sample is already drawn
        )
    except RuntimeError as e:
        message = str(e).strip().splitlines()[-1]
        raise data_error(
            "data.subwords.vocab_size",
            f"sentencepiece cannot build {sw.vocab_size:,} {sw.model_type} pieces from {field_name}: {message}",
        ) from None
    return out.getvalue()


def _table(src_ids: list[list[int]], tgt_ids: list[list[int]], src_text: list[str], tgt_text: list[str]) -> pa.Table:
    return pa.table(
        {
            "src": pa.array(src_ids, type=pa.list_(pa.int32())),
            "tgt": pa.array(tgt_ids, type=pa.list_(pa.int32())),
            "src_text": pa.array(src_text, type=pa.string()),
            "tgt_text": pa.array(tgt_text, type=pa.string()),
        }
    )


def fit_len(src: list[int], tgt: list[int]) -> int:
    """The ``data.max_len`` a pair needs: its source, or its target with the end symbol (never for an empty source)."""
    return max(len(src), len(tgt) + 1) if src else NEVER_FITS


@dataclass(frozen=True)
class ShardWriter:
    """Filters, encodes and writes one chunk of training pairs as one shard: the same function (and
    so the same bytes) in this process and on Ray Data. Picklable (the models travel as bytes)."""

    root: str
    models: tuple[bytes, bytes]
    filter: FilterSpec

    def __call__(self, item: tuple[int, list[Pair]]) -> dict[str, Any]:
        import sentencepiece as spm  # deferred: only translation jobs need it

        index, pairs = item
        src_sp = spm.SentencePieceProcessor(model_proto=self.models[0])
        tgt_sp = src_sp if self.models[1] == self.models[0] else spm.SentencePieceProcessor(model_proto=self.models[1])
        dropped: Counter[str] = Counter()
        a, b = [], []
        for _, source, target in pairs:
            reason = drop_reason(source, target, self.filter)
            if reason is None:
                a.append(source)
                b.append(target)
            else:
                dropped[reason] += 1
        src_ids, tgt_ids = src_sp.encode(a), tgt_sp.encode(b)
        lengths = [fit_len(s, t) for s, t in zip(src_ids, tgt_ids, strict=True)]
        table = _table(src_ids, tgt_ids, a, b).append_column("fit_len", pa.array(lengths, type=pa.int32()))
        info = shards.write_shard(self.root, shards.shard_name("train", index), table, ROWS_PER_GROUP)
        del table, src_ids, tgt_ids
        pa.default_memory_pool().release_unused()  # a long-lived (Ray) worker keeps no shard's buffers
        return {
            "name": info.name,
            "rows": info.rows,
            "read": len(pairs),
            "dropped": dict(dropped),
            "fit": dict(Counter(lengths)),
        }


@dataclass(frozen=True)
class Sampler:
    """The sample of one training corpus (:func:`.sources.sample_corpus`); picklable for Ray Data."""

    filter: FilterSpec
    k: int
    seed: int

    def __call__(self, item: tuple[int, str, ParallelSource]) -> list[Any]:
        corpus, where, src = item
        return sample_corpus(where, corpus, src, self.filter, self.k, self.seed)


def content_hash(spec: TranslationJob, c: Corpora) -> str:
    d = spec.data
    h = hashlib.sha256(
        f"schema={SCHEMA_VERSION}\n{d.subwords.model_dump_json()}\n{d.filter.model_dump_json()}\n"
        f"shard_pairs={d.shard_pairs}\n".encode()
    )
    splits = [("train", c.train), ("valid", c.valid)] + [(f"test.{t}", srcs) for t, srcs in c.tests.items()]
    for split, srcs in splits:
        for where, src in srcs:
            h.update(f"{split} {src.model_dump_json()}\n".encode())
            for field_name, uri in source_files(where, src):
                h.update(f"{field_name}\n".encode())
                shards.hash_uri(h, uri, field_name)
    return h.hexdigest()


def use_ray(spec: TranslationJob, c: Corpora) -> bool:
    """Whether this preparation runs on Ray Data (:func:`service.io.shards.use_ray` over the training
    files' stored size, gzip'd or not)."""
    return shards.use_ray(
        spec.data.preparation,
        lambda: sum(storage.size(uri) for where, src in c.train for _, uri in source_files(where, src)),
    )


def _say(line: str) -> None:
    print(f"[data]  {line}", file=sys.stderr, flush=True)


def _waves(items: Iterator[tuple[int, list[Pair]]], size: int) -> Iterator[list[tuple[int, list[Pair]]]]:
    wave: list[tuple[int, list[Pair]]] = []
    for item in items:
        wave.append(item)
        if len(wave) == size:
            yield wave
            wave = []
    if wave:
        yield wave


def prepare_corpus(
    spec: TranslationJob, cache_root: str, say: Callable[[str], None] = _say, ray_data: bool | None = None
) -> PreparedCorpus:
    """The prepared form of ``spec.data`` under ``cache_root`` (local or s3://), built if missing;
    on Ray Data when ``ray_data`` (None: :func:`use_ray`)."""
    import sentencepiece as spm  # deferred: only translation jobs need it

    d = spec.data
    c = corpora(spec)
    digest = content_hash(spec, c)
    root = datacache.prepared_folder(cache_root, c.name, digest)
    if datacache.is_complete(root, MANIFEST):
        return load_prepared(root)
    name, src_lang, tgt_lang, small = load_sentences(spec)  # validation and test sets: checked first
    on_ray = use_ray(spec, c) if ray_data is None else ray_data
    shards.start_fresh(root, MANIFEST)
    t0 = time.perf_counter()
    where = "on Ray Data" if on_ray else "in this process"

    # sentencepiece on a seeded sample of the filtered training pairs
    sampler = Sampler(d.filter, d.subwords.sample_pairs, d.subwords.seed)
    items = [(i, w, src) for i, (w, src) in enumerate(c.train)]
    samples = shards.parallel_map(sampler, items, use_ray=on_ray)
    sample = bottom_k(samples, d.subwords.sample_pairs)
    if not sample:
        fields = ", ".join(w for w, _ in c.train)
        raise data_error(
            "data.filter",
            f"no training pair of {fields} passes the filter (min_len {d.filter.min_len}, max_len "
            f"{d.filter.max_len}, max_ratio {d.filter.max_ratio}): nothing to learn subwords from",
        )
    say(f"subwords: learning from {len(sample):,} sampled training pairs ({time.perf_counter() - t0:.1f}s, {where})")
    train_src, train_tgt = [a for a, _ in sample], [b for _, b in sample]
    if d.subwords.shared:
        model = train_sentencepiece(train_src + train_tgt, spec, "data.train")
        storage.write_bytes_atomic(storage.join(root, "spm.model"), model)
        models = (model, model)
    else:
        models = (
            train_sentencepiece(train_src, spec, "data.train (source)"),
            train_sentencepiece(train_tgt, spec, "data.train (target)"),
        )
        storage.write_bytes_atomic(storage.join(root, "spm_src.model"), models[0])
        storage.write_bytes_atomic(storage.join(root, "spm_tgt.model"), models[1])
    sampled = len(sample)
    del sample, train_src, train_tgt, samples

    # the training shards: a chunk of each corpus per shard, in waves
    writer = ShardWriter(root, models, d.filter)

    def numbered() -> Iterator[tuple[int, list[Pair]]]:
        index = 0
        for w, src in c.train:
            for chunk in chunks(iter_pairs(w, src), d.shard_pairs):
                yield index, chunk
                index += 1

    wave_size = max(2, 2 * int(_cluster_cpus())) if on_ray else 1  # shards in flight: 2 per CPU
    results: list[dict[str, Any]] = []
    for wave in _waves(numbered(), wave_size):
        gc.collect()  # the previous wave's Ray Data dataset and its blocks
        results += shards.parallel_map(writer, wave, use_ray=on_ray, max_calls=WRITER_MAX_CALLS)
        read = sum(r["read"] for r in results)
        say(f"train: {len(results)} shard(s), {read:,} pairs read ({time.perf_counter() - t0:.1f}s, {where})")

    src_sp = spm.SentencePieceProcessor(model_proto=models[0])
    tgt_sp = spm.SentencePieceProcessor(model_proto=models[1])
    counts = {"train": sum(r["rows"] for r in results)}
    for split, (a, b) in small.items():
        datacache.write_parquet(
            storage.join(root, f"{split}.parquet"), _table(src_sp.encode(a), tgt_sp.encode(b), a, b)
        )
        counts[split] = len(a)
    dropped = {r: sum(x["dropped"].get(r, 0) for x in results) for r in DROP_REASONS}
    read = sum(r["read"] for r in results)
    train = shards.SplitShards(tuple(shards.ShardInfo(r["name"], r["rows"]) for r in results), ROWS_PER_GROUP)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "content_hash": digest,
        "name": name,
        "src_lang": src_lang,
        "tgt_lang": tgt_lang,
        "shared_vocab": d.subwords.shared,
        "subwords": d.subwords.model_dump(mode="json"),
        "filter": d.filter.model_dump(mode="json"),
        "vocab_sizes": [src_sp.get_piece_size(), tgt_sp.get_piece_size()],
        "counts": counts,
        "tests": [s.removeprefix("test.") for s in small if s.startswith("test.")],
        "ids": {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID},
        "train": train.to_json(),
        "fit_len": [{str(k): v for k, v in sorted(r["fit"].items())} for r in results],
        "read": read,
        "dropped": dropped,
        "sampled": sampled,
        "mlflow_params": {
            "data.train_pairs_read": read,
            "data.train_pairs": counts["train"],
            **{f"data.dropped.{r}": n for r, n in dropped.items()},
        },
    }
    shards.commit(root, MANIFEST, meta)
    return load_prepared(root)


def _cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1))


def load_prepared(root: str) -> PreparedCorpus:
    meta = datacache.read_manifest(root, MANIFEST, SCHEMA_VERSION, "parallel corpus")
    return PreparedCorpus(
        root,
        meta["content_hash"],
        meta["src_lang"],
        meta["tgt_lang"],
        bool(meta["shared_vocab"]),
        tuple(meta["vocab_sizes"]),
        dict(meta["counts"]),
        list(meta["tests"]),
        train=shards.SplitShards.from_json(meta["train"]),
        fit_hists=tuple({int(k): int(v) for k, v in h.items()} for h in meta["fit_len"]),
        dropped=dict(meta["dropped"]),
        read=int(meta["read"]),
        sampled=int(meta["sampled"]),
    )


def load_processors(prepared: PreparedCorpus) -> tuple[Any, Any]:
    """The (source, target) ``sentencepiece.SentencePieceProcessor``s."""
    import sentencepiece as spm  # deferred: only translation jobs need it

    src_uri, tgt_uri = prepared.model_files()
    src = spm.SentencePieceProcessor(model_proto=storage.read_bytes(src_uri))
    tgt = src if tgt_uri == src_uri else spm.SentencePieceProcessor(model_proto=storage.read_bytes(tgt_uri))
    return src, tgt


@dataclass
class Split:
    src: list[list[int]]
    tgt: list[list[int]]
    src_text: list[str]
    tgt_text: list[str]


def load_split(prepared: PreparedCorpus, split: str) -> Split:
    """``valid`` or ``test.<name>`` (or, for tests and small corpora, the whole ``train``: a worker
    reads its share of the training shards with :mod:`.batches` instead)."""
    if split == "train":
        table = shards.ShardedSplit(prepared.root, prepared.train).read(0, prepared.train.num_rows)
    else:
        uri = storage.join(prepared.root, f"{split}.parquet")
        try:
            table = datacache.read_parquet(uri)
        except FileNotFoundError:
            raise FileNotFoundError(f"{prepared.root}: this corpus has no {split!r} split") from None
    return Split(
        table.column("src").to_pylist(),
        table.column("tgt").to_pylist(),
        table.column("src_text").to_pylist(),
        table.column("tgt_text").to_pylist(),
    )


def fits(src: list[int], tgt: list[int], max_len: int) -> bool:
    """Whether a training pair is used: a non-empty source of at most ``data.max_len`` subwords and
    a target that fits with its end-of-sentence symbol."""
    return fit_len(src, tgt) <= max_len


def check_prepared(spec: TranslationJob, prepared: PreparedCorpus) -> list[str]:
    """What the worker loop needs of the prepared corpus: a full step's batch of training pairs
    (``data.batch_size x train.accumulate_steps``) that pass ``data.filter`` and fit ``data.max_len``,
    and validation pairs to evaluate. Reads the manifest only."""
    kept, max_len, (step, fields) = prepared.counts["train"], spec.data.max_len, spec.step_batch()
    usable = prepared.usable(max_len)
    filtered = (
        f" (after data.filter {dropped_text(prepared.read, prepared.dropped)})"
        if sum(prepared.dropped.values())
        else ""
    )
    problems = []
    if kept == 0:
        problems.append(
            f"data.filter: 0 of {prepared.read:,} training pairs pass it "
            f"({dropped_text(prepared.read, prepared.dropped)})"
        )
    elif usable == 0:
        problems.append(
            f"data.max_len: 0 of {kept:,} training pairs fit data.max_len = {max_len} "
            f"(subwords per side, the target with its end-of-sentence symbol){filtered}"
        )
    elif usable < step:
        problems.append(
            f"{fields}: {step} pairs per batch, but only {usable:,} of {kept:,} training pairs fit "
            f"data.max_len = {max_len}{filtered}"
        )
    if prepared.counts.get("valid", 0) == 0:
        problems.append("data.valid: expected sentence pairs to evaluate, found none")
    return problems


__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "PreparedCorpus",
    "Split",
    "UNK_ID",
    "Corpora",
    "ShardWriter",
    "check_prepared",
    "corpora",
    "data_files",
    "dropped_text",
    "fit_len",
    "fits",
    "load_prepared",
    "load_processors",
    "load_sentences",
    "load_split",
    "prepare_corpus",
    "read_lines",
    "read_parallel",
    "source_name",
    "train_sentencepiece",
]
