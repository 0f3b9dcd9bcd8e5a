"""The job spec: one pydantic schema for a training job, validated at one boundary.

Everything downstream takes a validated :class:`JobSpec`. :func:`load_job` reads YAML, applies
``--set a.b.c=value`` overrides and turns every problem into a :class:`JobSpecError` whose lines
name the field path, what was expected and what was found.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class JobSpecError(ValueError):
    """A job spec that cannot run; ``problems`` holds one readable line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source, self.problems = source, problems
        super().__init__(f"{source}: invalid job spec\n" + "\n".join(f"  - {p}" for p in problems))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class DataSpec(Strict):
    """Where the text comes from and how it is cut into training batches."""

    dataset: Literal["ptb-char"] | None = Field(
        "ptb-char", description="built-in data set; null to read train/valid/test from paths or s3:// URIs")
    train: str | None = Field(None, description="plain-text training corpus: a path or s3:// URI")
    valid: str | None = Field(None, description="plain-text validation corpus: a path or s3:// URI")
    test: str | None = Field(None, description="plain-text test corpus (optional): a path or s3:// URI")
    format: Literal["ptb-char", "chars"] = Field(
        "chars", description="how user corpora are split into symbols: every character, or PTB's space-separated symbols")
    seq_len: int = Field(100, gt=0, description="truncated-BPTT segment length")
    batch_size: int = Field(128, gt=0, description="global batch (streams), split evenly across workers")
    eval_batch_size: int = Field(16, gt=0, description="streams used to evaluate a whole split")

    @model_validator(mode="after")
    def _source(self) -> DataSpec:
        if self.dataset is None and (self.train is None or self.valid is None):
            raise ValueError("with dataset: null, both data.train and data.valid must name a corpus")
        if self.dataset is not None and any(v is not None for v in (self.train, self.valid, self.test)):
            raise ValueError(f"give either data.dataset ({self.dataset!r}) or data.train/valid/test, not both")
        return self


class HyperSpec(Strict):
    hidden_size: int = Field(128, gt=0, description="hyper-cell units N_ĥ")
    embed_size: int = Field(4, gt=0, description="embedding size N_z")


class DropoutSpec(Strict):
    input: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the one-hot input")
    output: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the softmax and between layers")
    recurrent: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the cell candidate (Semeniuta et al.)")


class ModelSpec(Strict):
    cell: Literal["hyperlstm", "lstm", "ln_lstm"] = "hyperlstm"
    hidden_size: int = Field(1000, gt=0)
    num_layers: int = Field(1, gt=0, le=16)
    layer_norm: bool = Field(True, description="HyperLSTM only: layer norm in both cells")
    hyper: HyperSpec = HyperSpec()
    dropout: DropoutSpec = DropoutSpec()


class OptimizerSpec(Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)


class TrainSpec(Strict):
    optimizer: OptimizerSpec = OptimizerSpec()
    grad_clip: float | None = Field(1.0, gt=0.0, description="global gradient-norm clip; null for none")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; give this or epochs")
    epochs: int | None = Field(None, gt=0, description="passes over the training data; give this or max_steps")
    eval_every: int = Field(1000, gt=0, description="steps between validation passes")
    eval_max_symbols: int | None = Field(
        None, gt=0, description="cap on validation symbols per periodic pass (the final pass is always whole)")
    checkpoint_every: int = Field(1000, gt=0, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, gt=0, description="checkpoints retained (the latest ones)")
    log_every: int = Field(50, gt=0, description="steps between train-loss / tokens-per-second records")
    seed: int = 0
    sample_length: int = Field(300, ge=0, description="characters sampled into the run's artifacts at the end")

    @model_validator(mode="after")
    def _budget(self) -> TrainSpec:
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of train.max_steps and train.epochs")
        return self


class ResourcesSpec(Strict):
    workers: int = Field(1, gt=0, description="Ray Train workers (data-parallel ranks)")
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    max_failures: int = Field(3, ge=0, description="restarts from the latest checkpoint before the job fails")


class TrackingSpec(Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; null = local sqlite store under storage")
    experiment: str = Field("default", min_length=1)


class JobSpec(Strict):
    """A training job."""

    name: str = Field(pattern=NAME_PATTERN, description="run name: letters, digits, '.', '_', '-'")
    task: Literal["char_lm"] = "char_lm"
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    train: TrainSpec
    resources: ResourcesSpec = ResourcesSpec()
    storage: str = Field("./runs", min_length=1, description="checkpoint root: a local folder or s3://bucket/prefix")
    tracking: TrackingSpec = TrackingSpec()

    @model_validator(mode="after")
    def _divisible(self) -> JobSpec:
        if self.data.batch_size % self.resources.workers:
            raise ValueError(
                f"data.batch_size ({self.data.batch_size}) must be divisible by resources.workers "
                f"({self.resources.workers}): the global batch is split evenly across workers")
        return self

    def flat(self) -> dict[str, Any]:
        """The spec as ``{"a.b.c": value}``, e.g. for MLflow params."""
        return flatten(self.model_dump(mode="json"))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The schema class that holds the field at ``path`` (None when the path leaves the schema)."""
    model: Any = JobSpec
    for part in path:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _describe(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    where = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        known = list(parent.model_fields) if parent else []
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean '{'.'.join(map(str, loc[:-1] + (guess[0],)))}'?" if guess else ""
        return f"{where}: unknown key{hint} (known keys here: {', '.join(known)})"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{where}: required field is missing"
    if err["type"] == "value_error" or "input" not in err:
        return f"{where}: {msg}" if loc else msg
    return f"{where}: {msg}; found {err['input']!r}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key.strip()):
        raise JobSpecError("--set", [f"{text!r}: expected KEY.PATH=VALUE, e.g. model.hyper.embed_size=16"])
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise JobSpecError("--set", [f"{text!r}: {k} is not a section"])
            node = child
        node[keys[-1]] = value
    return raw


def validate_job(raw: Any, source: str = "job") -> JobSpec:
    """Validate a parsed document; raises :class:`JobSpecError` listing every problem."""
    if not isinstance(raw, dict):
        raise JobSpecError(source, [f"expected a mapping of sections (name, data, model, train, ...), "
                                    f"found {type(raw).__name__}"])
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as e:
        raise JobSpecError(source, [_describe(err) for err in e.errors()]) from None


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read, override and validate a job YAML file."""
    path = Path(path)
    if not path.is_file():
        raise JobSpecError(str(path), ["file not found (expected a job YAML file)"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise JobSpecError(str(path), [f"not valid YAML: {e}"]) from None
    if isinstance(raw, dict):
        raw = apply_overrides(raw, overrides or [])
    return validate_job(raw, str(path))


__all__ = ["JobSpec", "JobSpecError", "DataSpec", "ModelSpec", "TrainSpec", "ResourcesSpec", "TrackingSpec",
           "apply_overrides", "flatten", "load_job", "validate_job"]
