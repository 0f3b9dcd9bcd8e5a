"""The job of ``task: char_lm``: a character-level language model (paper §4.1-4.2) on PTB char or
any text corpus."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ...spec.schema import DataSpec, HyperSpec, JobSpec, ModelSpec, TrainSpec
from ...spec.strict import Strict

CELLS = Literal["hyperlstm", "lstm", "ln_lstm"]


class CharLMDataSpec(DataSpec):
    """Where the text comes from and how it is cut into training batches."""

    user_file_keys = ("train", "valid", "test")  # given without dataset: the built-in default gives way
    dataset: Literal["ptb-char", "enwik8"] | None = Field(
        "ptb-char",
        description="built-in data set: ptb-char (vendored), or enwik8 (the file the user supplies in "
        "data.path, split by bytes 90%/5%/5% as the paper: 90M/5M/5M of the real file; its symbols "
        "are bytes and the vocabulary is every distinct byte of the whole file, 205 in the real "
        "one, so the validation and test splits never hold an unseen symbol); null to read "
        "train/valid/test from paths or s3:// URIs",
    )
    path: str | None = Field(
        None,
        description="dataset enwik8 only: the enwik8 file or the standard enwik8.zip holding it (a path or s3:// URI)",
    )
    train: str | None = Field(None, description="plain-text training corpus: a path or s3:// URI")
    valid: str | None = Field(None, description="plain-text validation corpus: a path or s3:// URI")
    test: str | None = Field(None, description="plain-text test corpus (optional): a path or s3:// URI")
    format: Literal["ptb-char", "chars", "bytes"] = Field(
        "chars",
        description="how user corpora are split into symbols: every character (UTF-8), PTB's "
        "space-separated symbols, or every byte (no decoding)",
    )
    preparation: Literal["auto", "local", "ray"] = Field(
        "auto",
        description="where the corpus is prepared: ray (Ray Data tasks on the cluster's CPUs), local "
        "(the driver's process), or auto: ray for sources of 256 MiB or more on 4 or more CPUs, "
        "else local (bench/data_scale.py); the prepared shards are the same either way",
    )
    seq_len: int = Field(100, gt=0, description="truncated-BPTT segment length")
    batch_size: int = Field(128, gt=0, description="global batch (streams), split evenly across workers")
    eval_batch_size: int = Field(16, gt=0, description="streams used to evaluate a whole split")

    @model_validator(mode="after")
    def _source(self) -> CharLMDataSpec:
        if self.dataset is None and (self.train is None or self.valid is None):
            given = [f"data.{k}" for k in ("train", "valid", "test") if getattr(self, k) is not None]
            raise ValueError(
                "own corpora need both data.train and data.valid (found "
                f"{', '.join(given) or 'neither'}); or set data.dataset: ptb-char for the built-in corpus"
            )
        if self.dataset is not None and any(v is not None for v in (self.train, self.valid, self.test)):
            raise ValueError(f"give either data.dataset ({self.dataset!r}) or data.train/valid/test, not both")
        if self.dataset == "enwik8" and self.path is None:
            raise ValueError(
                "data.dataset enwik8 needs data.path: the enwik8 file or enwik8.zip (a path or s3:// URI), "
                "e.g. from http://mattmahoney.net/dc/enwik8.zip"
            )
        if self.dataset != "enwik8" and self.path is not None:
            raise ValueError(f"data.path is read only with data.dataset: enwik8 (found dataset {self.dataset!r})")
        return self


class CharLMDropoutSpec(Strict):
    input: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the one-hot input")
    output: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the softmax and between layers")
    recurrent: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the cell candidate (Semeniuta et al.)")


class CharLMModelSpec(ModelSpec):
    cell: CELLS = "hyperlstm"
    hidden_size: int = Field(1000, gt=0)
    num_layers: int = Field(1, gt=0, le=16)
    layer_norm: bool = Field(True, description="HyperLSTM only: layer norm in both cells")
    hyper: HyperSpec = HyperSpec()
    dropout: CharLMDropoutSpec = CharLMDropoutSpec()
    fast: bool = Field(
        True,
        description="HyperLSTM only: the fast path (hand-written BPTT, fused kernels); false "
        "runs the reference step-by-step implementation (same numbers, slower)",
    )


class CharLMTrainSpec(TrainSpec):
    """The shared training settings plus the language model's own."""

    eval_max_symbols: int | None = Field(
        None, gt=0, description="cap on validation symbols per periodic pass (the final pass is always whole)"
    )
    sample_length: int = Field(300, ge=0, description="characters sampled into the run's artifacts at the end")


class CharLMJob(JobSpec):
    """``task: char_lm``: a character-level language model (PTB char, or any text corpus)."""

    task: Literal["char_lm"] = "char_lm"
    data: CharLMDataSpec = CharLMDataSpec()
    model: CharLMModelSpec = CharLMModelSpec()
    train: CharLMTrainSpec


__all__ = ["CharLMDataSpec", "CharLMDropoutSpec", "CharLMJob", "CharLMModelSpec", "CharLMTrainSpec"]
