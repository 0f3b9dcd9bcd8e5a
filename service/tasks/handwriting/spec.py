"""The job of ``task: handwriting``: unconditional handwriting generation with a mixture density
output (paper §4.3, Graves 2013) on the built-in Make Me a Hanzi strokes, IAM-OnDB or any stroke-3
``.npz``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ...spec.schema import DataSpec, HyperSpec, JobSpec, ModelSpec, TrainSpec
from ...spec.strict import Strict

CELLS = Literal["hyperlstm", "lstm", "ln_lstm"]
IAM_CLIP = 500.0  # raw IAM-OnDB units: the usual long-jump clip (Graves; sketch-rnn's IAM loader)


class HandwritingDataSpec(DataSpec):
    """Where the strokes come from, how they are prepared and batched."""

    user_file_keys = ("path",)  # given without dataset: the built-in default gives way
    dataset: Literal["hanzi-medians"] | None = Field(
        "hanzi-medians", description="built-in data set (data/handwriting); null to read data.path"
    )
    format: Literal["stroke3", "iam-ondb"] = Field(
        "stroke3",
        description="data.path is a stroke-3 .npz (keys train, valid, [test]) or an IAM-OnDB lineStrokes tree",
    )
    path: str | None = Field(None, description="the .npz file or the lineStrokes folder: a path or s3:// URI")
    valid_list: str | None = Field(
        None,
        description="iam-ondb: ids (one per line, e.g. IAM-OnDB's testset_v.txt) whose lines form the validation split",
    )
    test_list: str | None = Field(
        None, description="iam-ondb: ids whose lines form the test split (e.g. testset_f.txt)"
    )
    valid_fraction: float = Field(0.05, gt=0.0, lt=0.5, description="iam-ondb without lists: seeded validation share")
    test_fraction: float = Field(0.05, ge=0.0, lt=0.5, description="iam-ondb without lists: seeded test share")
    split_seed: int = Field(0, ge=0, description="seed of the fractional split")
    clip_offset: float | None = Field(
        None,
        gt=0.0,
        description="clip |Δx|, |Δy| to this many raw units (long-jump outliers); "
        f"null: {IAM_CLIP:g} for iam-ondb, no clipping otherwise",
    )
    max_points: int = Field(2000, gt=1, description="longest sequence accepted; a longer one is an error")
    batch_size: int = Field(32, gt=0, description="global batch (sequences), split evenly across workers")
    eval_batch_size: int = Field(64, gt=0, description="sequences per evaluation batch")

    @model_validator(mode="after")
    def _source(self) -> HandwritingDataSpec:
        if self.dataset is None and self.path is None:
            raise ValueError(
                "own strokes need data.path: a stroke-3 .npz or an IAM-OnDB lineStrokes folder (or set "
                "data.dataset: hanzi-medians for the built-in strokes)"
            )
        if self.dataset is not None and self.path is not None:
            raise ValueError(f"give either data.dataset ({self.dataset!r}) or data.path, not both")
        if self.format != "iam-ondb" and (self.valid_list or self.test_list):
            raise ValueError("data.valid_list and data.test_list apply to format: iam-ondb only")
        return self

    def clip(self) -> float | None:
        """The offset clip in effect (see ``clip_offset``)."""
        if self.clip_offset is None and self.dataset is None and self.format == "iam-ondb":
            return IAM_CLIP
        return self.clip_offset


class HandwritingDropoutSpec(Strict):
    output: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the mixture layer and between layers")
    recurrent: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the cell candidate (Semeniuta et al.)")


class HandwritingModelSpec(ModelSpec):
    cell: CELLS = "hyperlstm"
    hidden_size: int = Field(900, gt=0)
    num_layers: int = Field(1, gt=0, le=16)
    num_mixtures: int = Field(20, gt=0, description="bivariate Gaussian components M of the output")
    layer_norm: bool = Field(False, description="HyperLSTM only: layer norm in both cells (it hurt here in the paper)")
    hyper: HyperSpec = HyperSpec()
    dropout: HandwritingDropoutSpec = HandwritingDropoutSpec()
    fast: bool = Field(True, description="HyperLSTM only: the fast path; false runs the reference implementation")


class HandwritingTrainSpec(TrainSpec):
    """The shared training settings plus handwriting's own."""

    eval_max_sequences: int | None = Field(
        None, gt=0, description="cap on validation sequences per periodic pass (the final pass is always whole)"
    )
    samples: int = Field(9, ge=0, description="sequences drawn into each sample grid (each evaluation and the end)")
    sample_length: int = Field(200, gt=0, description="points per drawn sequence")
    sample_bias: float = Field(0.5, ge=0.0, description="Graves' sampling bias b (0: the model's own distribution)")


class HandwritingJob(JobSpec):
    """``task: handwriting``: a mixture-density handwriting generator."""

    task: Literal["handwriting"]
    data: HandwritingDataSpec = HandwritingDataSpec()
    model: HandwritingModelSpec = HandwritingModelSpec()
    train: HandwritingTrainSpec


__all__ = [
    "HandwritingDataSpec",
    "HandwritingDropoutSpec",
    "HandwritingJob",
    "HandwritingModelSpec",
    "HandwritingTrainSpec",
]
