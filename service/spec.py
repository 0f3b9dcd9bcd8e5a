"""The job spec: one pydantic schema for a training job, validated at one boundary.

Everything downstream takes a validated :class:`JobSpec`: one of the task classes
(:class:`CharLMJob`, :class:`ImageJob`, :class:`TranslationJob`), chosen by the document's ``task``. :func:`load_job` reads YAML, applies
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
    fast: bool = Field(True, description="HyperLSTM only: the fast path (hand-written BPTT, fused kernels); false "
                                         "runs the reference step-by-step implementation (same numbers, slower)")


# ---- image classification (paper §3.1: static hypernetworks for convolutions) ---------------------

class AugmentSpec(Strict):
    pad_crop: int = Field(0, ge=0, description="pad by this many pixels and crop back at random (0: off)")
    flip: bool = Field(False, description="random horizontal flips (CIFAR; not for digits)")


class ImageDataSpec(Strict):
    """Where the images come from. Built-in: ``mnist-test`` (MNIST's 10,000 test images, vendored:
    the first 8,000 train, the last 2,000 test) and ``fashion-mnist`` (Debian's
    dataset-fashion-mnist). Otherwise idx files (MNIST format, gzip or not) or CIFAR-10's python
    batches, from paths or s3:// URIs. Validation is ``valid_fraction`` of the training images,
    held out with a fixed seed."""

    dataset: Literal["mnist-test", "fashion-mnist"] | None = Field("mnist-test", description="built-in data set; null for user files")
    format: Literal["idx", "cifar10"] = Field("idx", description="user files: idx (MNIST format) or cifar10 (python batches)")
    train_images: str | None = Field(None, description="idx images file (format idx)")
    train_labels: str | None = Field(None, description="idx labels file (format idx)")
    test_images: str | None = Field(None, description="idx images file (format idx)")
    test_labels: str | None = Field(None, description="idx labels file (format idx)")
    cifar10: str | None = Field(None, description="folder holding data_batch_1..5 and test_batch (format cifar10)")
    valid_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of training images held out for validation")
    batch_size: int = Field(128, gt=0, description="global batch, split evenly across workers")
    eval_batch_size: int = Field(500, gt=0)
    augment: AugmentSpec = AugmentSpec()

    @model_validator(mode="after")
    def _source(self) -> ImageDataSpec:
        idx = ("train_images", "train_labels", "test_images", "test_labels")
        given = [k for k in (*idx, "cifar10") if getattr(self, k) is not None]
        if self.dataset is not None:
            if given:
                raise ValueError(f"give either data.dataset ({self.dataset!r}) or data.{given[0]}, not both")
        elif self.format == "idx":
            missing = [k for k in idx if getattr(self, k) is None]
            if missing:
                raise ValueError(f"with dataset: null and format idx, data.{', data.'.join(missing)} must name idx files")
        elif self.cifar10 is None:
            raise ValueError("with dataset: null and format cifar10, data.cifar10 must name the batches' folder")
        return self


class ConvHyperSpec(Strict):
    embed_size: int | None = Field(None, gt=0, description="N_z (default: 4 for mnist_convnet, 64 for wide_resnet)")


class ConvModelSpec(Strict):
    arch: Literal["mnist_convnet", "wide_resnet"] = "mnist_convnet"
    kernels: Literal["hyper", "plain"] = Field(
        "hyper", description="hyper: kernels generated by the static hypernetwork; plain: free kernels (the baseline)")
    hyper: ConvHyperSpec = ConvHyperSpec()
    depth: int = Field(40, ge=10, description="wide_resnet: depth (6n+4)")
    widen_factor: int = Field(1, gt=0, description="wide_resnet: k")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    shortcut: Literal["pad", "conv"] = Field(
        "pad", description="wide_resnet: shortcut where the shape changes; pad: parameter-free (the paper's), "
                           "conv: 1x1 projection (Zagoruyko's WRN)")
    bn_scale: bool = Field(False, description="wide_resnet: batch norm learns a scale γ as well as β "
                                              "(the paper's network has β only)")

    @model_validator(mode="after")
    def _arch(self) -> ConvModelSpec:
        if self.arch == "wide_resnet" and (self.depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4 for a Wide ResNet (10, 16, 22, 28, 34, 40, ...), found {self.depth}")
        if self.hyper.embed_size is None:
            self.hyper.embed_size = 4 if self.arch == "mnist_convnet" else 64
        return self


# ---- translation (the paper's GNMT experiment, on Multi30k) ---------------------------------------

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
        forms = [f for f, ok in (("src/tgt", self.src is not None or self.tgt is not None),
                                 ("tsv", self.tsv is not None), ("parquet", self.parquet is not None)) if ok]
        if len(forms) != 1:
            raise ValueError(f"give exactly one of src+tgt, tsv, parquet (found {', '.join(forms) or 'none'})")
        if forms == ["src/tgt"] and (self.src is None or self.tgt is None):
            raise ValueError("src and tgt must both name a file (aligned, a sentence a line)")
        return self


class SubwordSpec(Strict):
    model_type: Literal["bpe", "unigram"] = "bpe"
    vocab_size: int = Field(8000, ge=100, description="subword pieces per vocabulary")
    shared: bool = Field(True, description="one vocabulary for both languages (else one each)")


class TranslationDataSpec(Strict):
    """Built-in ``multi30k-en-fr`` / ``multi30k-en-de`` (vendored raw Multi30k task 1), or user
    corpora. Subword vocabularies are trained on the training split with sentencepiece."""

    dataset: Literal["multi30k-en-fr", "multi30k-en-de"] | None = "multi30k-en-fr"
    train: ParallelSource | None = None
    valid: ParallelSource | None = None
    test: dict[str, ParallelSource] = Field(default_factory=dict, description="named test sets")
    subwords: SubwordSpec = SubwordSpec()
    max_len: int = Field(64, gt=0, description="training pairs longer than this (subwords, either side) are skipped")
    batch_size: int = Field(64, gt=0, description="sentence pairs per global batch, split across workers")
    eval_batch_size: int = Field(100, gt=0)
    eval_sentences: int | None = Field(
        300, gt=0, description="validation sentences translated for the periodic BLEU (null: all; the final pass "
                               "is always whole)")

    @model_validator(mode="after")
    def _source(self) -> TranslationDataSpec:
        if self.dataset is None and (self.train is None or self.valid is None):
            raise ValueError("with dataset: null, both data.train and data.valid must name a parallel corpus")
        if self.dataset is not None and (self.train is not None or self.valid is not None or self.test):
            raise ValueError(f"give either data.dataset ({self.dataset!r}) or data.train/valid/test, not both")
        return self


class Seq2SeqModelSpec(Strict):
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


class OptimizerSpec(Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="sgd only: Nesterov momentum when > 0")


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


# ---- search campaigns ----------------------------------------------------------------------------

# What each task reports to Ray Tune at every evaluation / checkpoint; the first is a campaign's default.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "char_lm": ("valid_bpc", "train_bpc"),
    "image_classification": ("valid_error", "valid_loss", "train_loss"),
    "nmt": ("valid_bleu", "valid_ppl", "train_ppl"),
}
SEARCH_METRICS = tuple(dict.fromkeys(m for ms in TASK_METRICS.values() for m in ms))
HIGHER_IS_BETTER = ("valid_bleu",)


def metric_mode(metric: str) -> Literal["min", "max"]:
    return "max" if metric in HIGHER_IS_BETTER else "min"
# Spec fields a campaign never searches: they name and place the campaign itself.
UNSEARCHABLE = ("name", "task", "storage", "tracking", "search")


class Domain(Strict):
    """One searched key's values: exactly one of ``choice``, ``grid``, ``uniform``, ``loguniform``,
    ``randint``. Ranges are ``[lo, hi]``; ``randint`` draws integers ``lo <= v < hi`` (Tune's
    convention), ``loguniform`` needs ``lo > 0``."""

    choice: list[Any] | None = Field(None, min_length=1, description="values drawn uniformly at random")
    grid: list[Any] | None = Field(None, min_length=1, description="every value is tried (a grid axis)")
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one(self) -> Domain:
        given = [k for k in ("choice", "grid", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of choice, grid, uniform, loguniform, randint (found "
                             f"{', '.join(given) or 'none'})")
        kind = given[0]
        if kind in ("uniform", "loguniform", "randint"):
            lo, hi = getattr(self, kind)
            if not lo < hi:
                raise ValueError(f"{kind}: expected [lo, hi] with lo < hi, found [{lo}, {hi}]")
            if kind == "loguniform" and lo <= 0:
                raise ValueError(f"loguniform: lo must be > 0, found {lo}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("choice", "grid", "uniform", "loguniform", "randint") if getattr(self, k) is not None)

    def corners(self) -> list[Any]:
        """The values that bound this domain: every listed value, or a range's two ends."""
        kind = self.kind
        if kind in ("choice", "grid"):
            return list(getattr(self, kind))
        lo, hi = getattr(self, kind)
        return [lo, hi - 1] if kind == "randint" else [lo, hi]


class SchedulerSpec(Strict):
    """Early stopping of trials. ``asha``: asynchronous successive halving on the campaign's metric,
    in training steps: a trial is compared with the others at steps grace_period * rf^k < max_t and
    stopped unless it is in the best 1/rf there. ``none``: every trial runs its whole budget."""

    name: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1000, gt=0, description="steps every trial runs before it can be stopped")
    max_t: int | None = Field(None, gt=0, description="steps of a full trial (default: train.max_steps)")
    reduction_factor: float = Field(3.0, gt=1.0, description="keep the best 1/reduction_factor at each rung")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class SearchSpec(Strict):
    """A search campaign: every trial is a whole job (the spec with the sampled values put in).

    ``samples`` and the algorithms:

    * ``random``: ``samples`` trials draw every random key afresh; ``grid`` keys are crossed in
      (Ray Tune's rule): every sample runs the whole grid, so trials = samples x grid points.
    * ``grid``: every key must be ``grid`` or ``choice`` (a choice is a grid axis here); trials =
      grid points x samples, the repeats of a point differing only in ``train.seed`` (seed, seed+1,
      ...; so ``train.seed`` itself cannot be searched when samples > 1).
    * ``optuna``: Optuna's TPE through Ray Tune; ``samples`` trials; no ``grid`` keys.
    """

    metric: str | None = Field(None, description="what is optimised (default: the task's validation metric: "
                                                 "valid_bpc, valid_error or valid_bleu)")
    mode: Literal["min", "max"] | None = Field(None, description="default: max for BLEU, else min")
    space: dict[str, Domain] = Field(min_length=1, description="dotted spec key -> its values")
    samples: int = Field(1, gt=0, description="trials (random, optuna) or repeats of the grid (see above)")
    max_concurrent: int | None = Field(None, gt=0, description="trials running at once (default: as resources allow)")
    time_budget_s: float | None = Field(None, gt=0, description="no new trials start after this; running ones stop")
    scheduler: SchedulerSpec = SchedulerSpec()
    algorithm: Literal["random", "grid", "optuna"] = "random"
    max_failures: int = Field(2, ge=0, description="times a failed trial is relaunched (from its checkpoint)")
    seed: int | None = Field(0, description="sampler seed (random, optuna): the same campaign draws the same trials")


class JobSpec(Strict):
    """A training job: the parts every task shares. A concrete job is one of the task classes
    (:class:`CharLMJob`, :class:`ImageJob`, :class:`TranslationJob`) chosen by ``task``; read a
    document with :func:`validate_job`, never with this class directly."""

    name: str = Field(pattern=NAME_PATTERN, description="run name: letters, digits, '.', '_', '-'")
    task: str
    train: TrainSpec
    resources: ResourcesSpec = ResourcesSpec()
    storage: str = Field("./runs", min_length=1, description="checkpoint root: a local folder or s3://bucket/prefix")
    tracking: TrackingSpec = TrackingSpec()
    search: SearchSpec | None = Field(None, description="makes the job a search campaign (service/campaign.py)")

    @model_validator(mode="after")
    def _divisible(self) -> JobSpec:
        batch = self.data.batch_size  # type: ignore[attr-defined]
        if batch % self.resources.workers:
            raise ValueError(
                f"data.batch_size ({batch}) must be divisible by resources.workers "
                f"({self.resources.workers}): the global batch is split evenly across workers")
        return self

    @model_validator(mode="after")
    def _search_space(self) -> JobSpec:
        if self.search is not None:
            metrics = TASK_METRICS[self.task]
            if self.search.metric is None:
                self.search.metric = metrics[0]
            if self.search.mode is None:
                self.search.mode = metric_mode(self.search.metric)
            check_search(self)
        return self

    def flat(self) -> dict[str, Any]:
        """The spec as ``{"a.b.c": value}``, e.g. for MLflow params (a campaign's ``search`` section
        as ``search.*``, a searched key's values as ``search.space.<key>.<kind>``)."""
        out = flatten(self.model_dump(mode="json", exclude={"search"}))
        if self.search is not None:
            search = self.search.model_dump(mode="json", exclude={"space"})
            out.update(flatten(search, "search."))
            for key, domain in self.search.space.items():
                out[f"search.space.{key}.{domain.kind}"] = getattr(domain, domain.kind)
        return out


class CharLMJob(JobSpec):
    """``task: char_lm``: a character-level language model (PTB char, or any text corpus)."""

    task: Literal["char_lm"] = "char_lm"
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()


class ImageJob(JobSpec):
    """``task: image_classification``: a convnet whose kernels a static hypernetwork generates."""

    task: Literal["image_classification"]
    data: ImageDataSpec = ImageDataSpec()
    model: ConvModelSpec = ConvModelSpec()


class TranslationJob(JobSpec):
    """``task: nmt``: an attention encoder-decoder whose recurrent layers are HyperLSTMs (or baselines)."""

    task: Literal["nmt"]
    data: TranslationDataSpec = TranslationDataSpec()
    model: Seq2SeqModelSpec = Seq2SeqModelSpec()


TASKS: dict[str, type[JobSpec]] = {"char_lm": CharLMJob, "image_classification": ImageJob, "nmt": TranslationJob}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _model_at(path: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The schema class that holds the field at ``path`` (None when the path leaves the schema)."""
    model: Any = root
    parts = list(path)
    while parts:
        part = parts.pop(0)
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = field.annotation if field is not None else None
        if model is SearchSpec and part == "space" and parts:  # dict[str, Domain]: skip the key
            parts.pop(0)
            ann = Domain
        elif ann is not None and not isinstance(ann, type):  # X | None
            ann = next((a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)),
                       None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _describe(err: dict[str, Any], root: type[BaseModel]) -> str:
    loc = tuple(err["loc"])
    where = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1], root)
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
    cls = job_class(raw.get("task", "char_lm"), source)
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise JobSpecError(source, [_describe(err, cls) for err in e.errors()]) from None


def job_class(task: Any, source: str = "job") -> type[JobSpec]:
    """The schema of a task; JobSpecError (with a did-you-mean) for an unknown one."""
    if task not in TASKS:
        guess = difflib.get_close_matches(str(task), TASKS, n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        raise JobSpecError(source, [f"task: expected one of {', '.join(TASKS)}, found {task!r}{hint}"])
    return TASKS[task]


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


def leaf_fields(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every leaf field of a job schema as ``{"a.b.c": FieldInfo}`` (sections recursed into)."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(leaf_fields(ann, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = field
    return out


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """``raw`` with ``a.b.c`` set to ``value`` (sections created as needed; ``raw`` is changed)."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value
    return raw


def with_values(spec: JobSpec, values: dict[str, Any], **top: Any) -> dict[str, Any]:
    """The spec as a plain document with dotted ``values`` put in and no ``search`` section; ``top``
    replaces top-level fields (e.g. ``name``, ``storage``). Not validated: see :func:`validate_job`."""
    raw = spec.model_dump(mode="json", exclude={"search"})
    for key, value in values.items():
        set_dotted(raw, key, value)
    raw.update(top)
    return raw


def check_search(spec: JobSpec) -> None:
    """A campaign's space against the schema: every key names a searchable leaf field (with a
    did-you-mean), a float range is not put on an integer field, and the spec validates with every
    listed value and at the low and high corners of the space. Raises ValueError (one problem)."""
    assert spec.search is not None
    leaves = leaf_fields(type(spec))
    searchable = [k for k in leaves if k.split(".")[0] not in UNSEARCHABLE]
    problems: list[str] = []
    for key, domain in spec.search.space.items():
        if key.split(".")[0] in UNSEARCHABLE:
            problems.append(f"search.space.{key}: {key.split('.')[0]} cannot be searched (it names or places "
                            f"the campaign)")
            continue
        if key not in leaves:
            sections = sorted({k.rsplit(".", 1)[0] for k in searchable if k.startswith(key + ".")})
            if sections:
                problems.append(f"search.space.{key}: a section, not a field; search one of its fields "
                                f"({', '.join(k for k in searchable if k.startswith(key + '.'))})")
                continue
            guess = difflib.get_close_matches(key, searchable, n=1, cutoff=0.6)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            problems.append(f"search.space.{key}: names no spec field{hint}")
            continue
        if domain.kind in ("uniform", "loguniform") and leaves[key].annotation in (int, int | None):
            problems.append(f"search.space.{key}: an integer field; {domain.kind} draws fractions "
                            f"(use randint or choice)")
    search = spec.search
    reported = TASK_METRICS[spec.task]
    if search.metric not in reported:
        guess = difflib.get_close_matches(str(search.metric), reported, n=1)
        hint = f"; did you mean '{guess[0]}'?" if guess else ""
        problems.append(f"search.metric: {search.metric!r} is not reported to the tuner by task {spec.task}{hint} "
                        f"(one of {', '.join(reported)})")
    kinds = {key: d.kind for key, d in search.space.items()}
    if search.algorithm == "grid":
        problems += [f"search.space.{k}: algorithm grid needs grid or choice values, found {kind}"
                     for k, kind in kinds.items() if kind not in ("grid", "choice")]
        if search.samples > 1 and "train.seed" in search.space:
            problems.append("search.samples: > 1 with algorithm grid repeats every point with seeds seed, seed+1, "
                            "...: train.seed cannot also be in search.space")
    if search.algorithm == "optuna":
        problems += [f"search.space.{k}: algorithm optuna samples; a grid axis needs algorithm random or grid "
                     f"(or use choice)" for k, kind in kinds.items() if kind == "grid"]
    if problems:
        raise ValueError("\n  - ".join(problems))
    if spec.search.scheduler.name == "asha":
        sch, steps = spec.search.scheduler, spec.train.max_steps
        max_t = sch.max_t or steps
        if max_t is None:
            raise ValueError("search.scheduler.max_t: required with train.epochs (give it in steps, or use "
                             "train.max_steps)")
        if steps is not None and max_t > steps:
            raise ValueError(f"search.scheduler.max_t ({max_t}) is beyond train.max_steps ({steps})")
        if sch.grace_period >= max_t:
            raise ValueError(f"search.scheduler.grace_period ({sch.grace_period}) must be below max_t ({max_t})")
    # Every listed value, then the low and the high corner of the whole space, must make a valid job.
    checks: list[tuple[str, dict[str, Any]]] = []
    for key, domain in spec.search.space.items():
        checks += [(f"search.space.{key}: value {v!r}", {key: v}) for v in domain.corners()]
    lows = {k: d.corners()[0] for k, d in spec.search.space.items()}
    highs = {k: d.corners()[-1] for k, d in spec.search.space.items()}
    checks += [(f"search.space: the low corner {lows}", lows), (f"search.space: the high corner {highs}", highs)]
    for what, values in checks:
        try:
            type(spec).model_validate(with_values(spec, values))
        except ValidationError as e:
            raise ValueError(f"{what} makes an invalid job: {_describe(e.errors()[0], type(spec))}") from None


__all__ = ["CharLMJob", "ImageJob", "JobSpec", "JobSpecError", "TASKS", "TASK_METRICS", "TranslationJob",
           "job_class", "metric_mode", "DataSpec", "ModelSpec", "TrainSpec", "ResourcesSpec", "TrackingSpec",
           "Domain", "SchedulerSpec", "SearchSpec", "apply_overrides", "check_search", "flatten", "leaf_fields",
           "load_job", "set_dotted", "validate_job", "with_values"]
