"""The job of ``task: translation``: an attention encoder-decoder whose recurrent layers are
HyperLSTMs or the LSTM baselines (the paper's GNMT experiment, §4.4)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ...spec.schema import DataSpec, HyperSpec, JobSpec, ModelSpec, TrainSpec
from ...spec.strict import Strict

TASK_NAME = "translation"
OLD_NAMES = ("nmt",)  # what job files, checkpoints and MLflow runs of earlier versions call the task


class ParallelSource(Strict):
    """One split of a parallel corpus: two aligned text files (``src`` and ``tgt``, a sentence a
    line), or one ``tsv`` file (source TAB target), or one ``parquet`` file with two string columns."""

    src: str | None = None
    tgt: str | None = None
    tsv: str | None = None
    parquet: str | None = None
    src_column: str = "src"
    tgt_column: str = "tgt"

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
        return self


class SubwordSpec(Strict):
    model_type: Literal["bpe", "unigram"] = "bpe"
    vocab_size: int = Field(8000, ge=100, description="subword pieces per vocabulary")
    shared: bool = Field(True, description="one vocabulary for both languages (else one each)")


class TranslationDataSpec(DataSpec):
    """Built-in ``multi30k-en-fr`` / ``multi30k-en-de`` (vendored raw Multi30k task 1), or user
    corpora. Subword vocabularies are trained on the training split with sentencepiece."""

    user_file_keys = ("train", "valid", "test")  # given without dataset: the built-in default gives way
    dataset: Literal["multi30k-en-fr", "multi30k-en-de"] | None = "multi30k-en-fr"
    train: ParallelSource | None = None
    valid: ParallelSource | None = None
    test: dict[str, ParallelSource] = Field(default_factory=dict, description="named test sets")
    subwords: SubwordSpec = SubwordSpec()
    max_len: int = Field(64, gt=0, description="training pairs longer than this (subwords, either side) are skipped")
    batch_size: int = Field(64, gt=0, description="sentence pairs per global batch, split across workers")
    eval_batch_size: int = Field(100, gt=0)
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
        return self


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
    "ParallelSource",
    "SubwordSpec",
    "TranslationDataSpec",
    "TranslationJob",
    "TranslationModelSpec",
]
