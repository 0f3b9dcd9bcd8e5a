"""The job of ``task: translation``: an attention encoder-decoder whose recurrent layers are
HyperLSTMs or the LSTM baselines (the paper's GNMT experiment, §4.4)."""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from ...spec.schema import DataSpec, HyperSpec, JobSpec, ModelSpec, TrainSpec
from ...spec.strict import Strict

TASK_NAME = "translation"
OLD_NAMES = ("nmt",)  # what job files, checkpoints and MLflow runs of earlier versions call the task


class ParallelSource(Strict):
    """One parallel corpus: two aligned text files (``src`` and ``tgt``, a sentence a line), or one
    ``tsv`` file (source TAB target, or the two ``columns`` of a wider file), or one ``parquet`` file
    with two string columns. Text files may be gzip'd (recognised by content, not by name)."""

    src: str | None = Field(None, description="source-language file, a sentence a line (path or s3://; may be .gz)")
    tgt: str | None = Field(None, description="target-language file aligned line by line with src (may be .gz)")
    tsv: str | None = Field(None, description="one file of tab-separated pairs (path or s3://; may be .gz)")
    columns: tuple[int, int] | None = Field(
        None,
        description="tsv only: the 0-based fields holding source and target (null: each line is exactly "
        "source TAB target; given: every line has as many fields as the first)",
    )
    parquet: str | None = Field(None, description="one Parquet file with a source and a target string column")
    src_column: str = Field("src", description="parquet only: the source column")
    tgt_column: str = Field("tgt", description="parquet only: the target column")

    @model_validator(mode="after")
    def _one(self) -> ParallelSource:
        forms = [
            f
            for f, ok in (
                ("src/tgt", self.src is not None or self.tgt is not None),
                ("tsv", self.tsv is not None),
                ("parquet", self.parquet is not None),
            )
            if ok
        ]
        if len(forms) != 1:
            raise ValueError(f"give exactly one of src+tgt, tsv, parquet (found {', '.join(forms) or 'none'})")
        if forms == ["src/tgt"] and (self.src is None or self.tgt is None):
            raise ValueError("src and tgt must both name a file (aligned, a sentence a line)")
        if self.columns is not None:
            if self.tsv is None:
                raise ValueError(f"columns applies to a tsv file only (found {forms[0]})")
            if min(self.columns) < 0 or self.columns[0] == self.columns[1]:
                raise ValueError(f"columns: expected two different 0-based field numbers, found {list(self.columns)}")
        return self

    def describe(self) -> str:
        """The file(s) it names, for messages."""
        return self.tsv or self.parquet or f"{self.src} + {self.tgt}"


class FilterSpec(Strict):
    """Which training pairs are kept (``data.train`` only: validation and test sets are never
    filtered, their references stay whole). Lengths are counted in words (whitespace-separated), on
    the raw sentences, as WMT pipelines do (Moses' clean-corpus-n: 1 to 80 words, ratio 9). Pairs
    dropped are counted by reason (``too_short``, ``too_long``, ``ratio``; the first that applies),
    said on the ``[data]`` line and logged as MLflow params ``data.dropped.<reason>``."""

    min_len: int = Field(
        1, ge=0, description="fewest words on either side (1: an empty or blank line on either side is dropped)"
    )
    max_len: int | None = Field(None, gt=0, description="most words on either side (null: no limit)")
    max_ratio: float | None = Field(
        None, ge=1.0, description="largest ratio of the longer side's words to the shorter's (null: no limit)"
    )

    @model_validator(mode="after")
    def _order(self) -> FilterSpec:
        if self.max_len is not None and self.max_len < self.min_len:
            raise ValueError(f"max_len ({self.max_len}) must be at least min_len ({self.min_len})")
        return self


class SubwordSpec(Strict):
    """Sentencepiece vocabularies, trained on a seeded sample of the (filtered) training pairs."""

    model_type: Literal["bpe", "unigram"] = Field("bpe", description="sentencepiece algorithm")
    vocab_size: int = Field(8000, ge=100, description="subword pieces per vocabulary")
    shared: bool = Field(True, description="one vocabulary for both languages (else one each)")
    sample_pairs: int = Field(
        1_000_000,
        gt=0,
        description="training pairs sentencepiece learns from: a seeded sample when the training split is "
        "larger (all of it otherwise); the same pairs for the same corpus and seed",
    )
    seed: int = Field(0, description="seed of that sample")


def _one_or_list(value: Any) -> str:
    return "(list)" if isinstance(value, list) else "(one)"


# One corpus or a list of them; errors name the field as data.train.src or data.train.2.src.
Corpora = Annotated[
    Annotated[ParallelSource, Tag("(one)")] | Annotated[list[ParallelSource], Tag("(list)")],
    Discriminator(_one_or_list),
]


class TranslationDataSpec(DataSpec):
    """Built-in ``multi30k-en-fr`` / ``multi30k-en-de`` (vendored raw Multi30k task 1), or user
    corpora. Subword vocabularies are trained on the training split with sentencepiece."""

    user_file_keys = ("train", "valid", "test")  # given without dataset: the built-in default gives way
    dataset: Literal["multi30k-en-fr", "multi30k-en-de"] | None = "multi30k-en-fr"
    train: Corpora | None = Field(
        None,
        description="the training corpus: one parallel corpus, or a list of them read in order "
        "(e.g. WMT's Europarl, Common Crawl, UN, News Commentary, Gigaword)",
    )
    valid: Corpora | None = Field(
        None, description="the validation corpus: one parallel corpus or a list (concatenated, e.g. newstest2012+2013)"
    )
    test: dict[str, ParallelSource] = Field(default_factory=dict, description="named test sets")
    dir: str | None = Field(
        None,
        description="the folder (path or s3://) that relative file names of data.train, data.valid and "
        "data.test are in (null: as given, relative to the working directory)",
    )
    subwords: SubwordSpec = SubwordSpec()
    filter: FilterSpec = Field(FilterSpec(), description="length and ratio filters of the training pairs")
    shard_pairs: int = Field(
        200_000,
        gt=0,
        description="training pairs per prepared shard, counted before filtering (a worker holds one shard "
        "at a time, and the Ray Data path tokenises shards in parallel)",
    )
    preparation: Literal["auto", "local", "ray"] = Field(
        "auto",
        description="where the training split is tokenised and written: ray (Ray Data tasks on the cluster's "
        "CPUs), local (the driver's process), or auto: ray for training files of 256 MiB or more in all on 4 or "
        "more CPUs, else local (bench/data_scale.py --parallel); the prepared shards are the same either way",
    )
    max_len: int = Field(64, gt=0, description="training pairs longer than this (subwords, either side) are skipped")
    batch_size: int = Field(64, gt=0, description="sentence pairs per global batch, split across workers")
    eval_batch_size: int = Field(100, gt=0, description="sentences per batch when evaluating and translating")
    eval_sentences: int | None = Field(
        300,
        gt=0,
        description="validation sentences translated for the periodic BLEU (null: all; the final pass is always whole)",
    )

    @model_validator(mode="after")
    def _source(self) -> TranslationDataSpec:
        if self.dataset is None and (self.train is None or self.valid is None):
            given = [f"data.{k}" for k in ("train", "valid") if getattr(self, k) is not None]
            raise ValueError(
                "own corpora need both data.train and data.valid as parallel corpora (found "
                f"{', '.join(given) or 'neither'}); or set data.dataset (multi30k-en-fr, multi30k-en-de)"
            )
        if self.dataset is not None and (self.train is not None or self.valid is not None or self.test):
            raise ValueError(f"give either data.dataset ({self.dataset!r}) or data.train/valid/test, not both")
        if self.dir is not None:
            for src in [s for _, s in self.sources("train") + self.sources("valid")] + list(self.test.values()):
                for key in ("src", "tgt", "tsv", "parquet"):
                    name = getattr(src, key)
                    if name is not None and "://" not in name and not os.path.isabs(name):
                        joined = f"{self.dir.rstrip('/')}/{name}" if "://" in self.dir else os.path.join(self.dir, name)
                        setattr(src, key, joined)
        if isinstance(self.train, list) and not self.train:
            raise ValueError("data.train: expected at least one parallel corpus, found an empty list")
        if isinstance(self.valid, list) and not self.valid:
            raise ValueError("data.valid: expected at least one parallel corpus, found an empty list")
        return self

    def sources(self, split: Literal["train", "valid"]) -> list[tuple[str, ParallelSource]]:
        """The corpora of ``split`` with the spec field naming each (``data.train`` for a single one,
        ``data.train[2]`` in a list)."""
        given = getattr(self, split)
        if given is None:
            return []
        if isinstance(given, ParallelSource):
            return [(f"data.{split}", given)]
        return [(f"data.{split}[{i}]", src) for i, src in enumerate(given)]


class TranslationModelSpec(ModelSpec):
    """The GNMT-style attention encoder-decoder (:class:`hypermodels.Seq2Seq`)."""

    cell: Literal["hyperlstm", "lstm", "ln_lstm"] = "hyperlstm"
    hidden_size: int = Field(256, gt=0)
    embedding_size: int = Field(256, gt=0, description="subword embedding width")
    num_layers: int = Field(2, gt=0, le=8, description="encoder and decoder layers each (GNMT: 8)")
    layer_norm: bool = Field(True, description="HyperLSTM only: layer norm in both cells")
    hyper: HyperSpec = HyperSpec(hidden_size=128, embed_size=32)
    attention: Literal["additive", "general"] = "additive"
    input_feeding: bool = True
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    beam_size: int = Field(5, gt=0, description="beam width for evaluation and hyperctl translate (1: greedy)")
    length_penalty: float = Field(0.6, ge=0.0, description="GNMT length normalisation alpha")
    max_decode_ratio: float = Field(2.0, gt=0.0, description="longest output: ratio x source length + 10")


class TranslationJob(JobSpec):
    """``task: translation``: an attention encoder-decoder whose recurrent layers are HyperLSTMs
    (or baselines). Job files may still say ``task: nmt`` (deprecated)."""

    task: Literal["translation"]
    data: TranslationDataSpec = TranslationDataSpec()
    model: TranslationModelSpec = TranslationModelSpec()
    train: TrainSpec


__all__ = [
    "OLD_NAMES",
    "TASK_NAME",
    "FilterSpec",
    "ParallelSource",
    "SubwordSpec",
    "TranslationDataSpec",
    "TranslationJob",
    "TranslationModelSpec",
]
