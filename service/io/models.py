"""Finding a trained model from what a user gives ``hyperctl evaluate``, ``translate`` or ``sample``:
the one place that tells the kinds of source apart.

* a **run folder** ``<storage>/<name>`` (what ``submit`` prints; it holds ``mlflow_run_id``): its
  newest checkpoint, which is the final model once the job has finished;
* a **checkpoint folder** (local or ``s3://``, holding ``meta.json`` and ``model.pt``), usable while
  the job still trains;
* an **MLflow run id**: the run's final model, ``runs:/<id>/model``;
* **``runs:/<id>/<name>``**: a model a run logged (the service logs one, ``model``);
* **``models:/<name>/<version>``** or **``models:/<name>@<alias>``**: a version of a registered model
  (``tracking.register_model``).

The last three need the tracking store (``--tracking-uri``, a job file, or ``--storage``); they are
MLflow models (the ``mlflow.pytorch`` flavour, :func:`service.worker.worker.log_model`) and carry
the spec and what using them needs as extra files. A checkpoint carries the spec in ``meta.json``
and reaches its vocabulary or subword models through its prepared data folder. Either way a task
gets a :class:`ModelSource` and builds what it needs from it (``service/tasks/<task>/use.py``).

Reading never writes: a missing tracking store is reported, not created.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import storage, tracking

META_FILE = "meta.json"  # service.worker.checkpoint's names, repeated: importing it loads torch
MODEL_FILE = "model.pt"
SPEC_FILE = "job.json"  # service.worker.worker.SPEC_FILE
EXTRA_FILES = "extra_files"  # where mlflow.pytorch keeps a model's extra files


class ModelSourceError(ValueError):
    """What was given names no usable model; the message says what was given and what there is."""


@dataclass
class ModelSource:
    """A trained model and what it was trained with.

    ``spec`` is the job document; ``run_id`` the MLflow run it belongs to (None for a checkpoint
    folder outside a run folder); ``checkpoint``/``data_root`` for a checkpoint, ``model_dir`` (a
    local copy) and ``model_uri`` for an MLflow model."""

    given: str
    spec: dict[str, Any]
    run_id: str | None = None
    tracking_uri: str | None = None
    checkpoint: str | None = None
    data_root: str | None = None
    model_dir: str | None = None
    model_uri: str | None = None

    @property
    def task(self) -> str:
        return str(self.spec.get("task", ""))

    def describe(self) -> str:
        if self.checkpoint is not None:
            return f"checkpoint {self.checkpoint}"
        return f"MLflow model {self.model_uri} of run {self.run_id}"

    def module(self, build: Callable[[], Any]) -> Any:
        """The model in eval mode on the CPU: a checkpoint's weights loaded into ``build()`` (the
        task's model for ``spec``), or the MLflow model as ``mlflow.pytorch.load_model`` returns it."""
        import torch  # deferred: resolving a source needs no torch

        if self.checkpoint is not None:
            model = build()
            with tempfile.TemporaryDirectory(prefix="hyperctl-model-") as tmp:
                local = Path(tmp) / MODEL_FILE
                local.write_bytes(storage.read_bytes(storage.join(self.checkpoint, MODEL_FILE)))
                model.load_state_dict(torch.load(local, map_location="cpu", weights_only=True))
        else:
            assert self.model_dir is not None
            model = tracking.load_pytorch_model(self.model_dir)
        return model.eval()

    def file(self, name: str) -> bytes | None:
        """An extra file of an MLflow model (e.g. ``vocab.json``); None for a checkpoint (its task reads
        the same from ``data_root``) or when the model has none."""
        if self.model_dir is None:
            return None
        path = Path(self.model_dir) / EXTRA_FILES / name
        return path.read_bytes() if path.is_file() else None

    def prepared_root(self, what: str) -> str:
        """A checkpoint's prepared data folder, for ``what`` (e.g. "the vocabulary"); ModelSourceError
        when it is gone."""
        root = self.data_root
        if not root or not storage.exists(root):
            raise ModelSourceError(
                f"{self.given}: {what} of this checkpoint lives in its prepared data folder "
                f"{root or '(not recorded)'}, which is gone; "
                "use the run's MLflow model (run id, runs:/ID/model) instead"
            )
        return root

    def log_target(self, explicit_uri: str | None = None) -> tuple[str, str]:
        """(tracking URI, run id) to add results to; ModelSourceError for a checkpoint folder that belongs
        to no run. A checkpoint's store is ``explicit_uri`` or the one its saved spec names."""
        if self.run_id is None:
            raise ModelSourceError(
                f"--log: {self.given} is a checkpoint folder outside any run folder (no {tracking.RUN_ID_FILE} "
                "beside it): there is no MLflow run to add results to; give the run id, runs:/ID/model, "
                "models:/NAME/VERSION or the run folder instead, or leave out --log"
            )
        uri = explicit_uri or self.tracking_uri
        if uri is None:
            from ..spec.errors import JobSpecError
            from ..spec.loading import validate_job

            try:
                uri = tracking.tracking_uri_for(validate_job(self.spec, f"{self.given}: {META_FILE}"))
            except JobSpecError as e:
                raise ModelSourceError(
                    f"--log: cannot tell the tracking store of {self.given} from its spec ({e}); pass --tracking-uri"
                ) from None
        if tracking.find_run(uri, self.run_id) is None:
            raise ModelSourceError(f"--log: run {self.run_id} of {self.given} is not in {tracking.redact(uri)}")
        return uri, self.run_id


def latest_checkpoint(run_folder: str) -> str | None:
    """The newest checkpoint folder of a run folder (``<storage>/<name>``, as ``submit`` prints it), or None
    when ``run_folder`` is not one or holds no checkpoint yet."""
    if not storage.exists(storage.join(run_folder, tracking.RUN_ID_FILE)):
        return None
    names = [n for n in storage.list_names(run_folder) if n.startswith("checkpoint_")]
    for name in sorted(names, reverse=True):
        if storage.exists(storage.join(run_folder, name, META_FILE)):
            return storage.join(run_folder, name)
    return None


def _parent_run_id(checkpoint: str) -> str | None:
    path = checkpoint.rstrip("/")
    parent = path.rsplit("/", 1)[0] if "/" in path else "."
    id_file = storage.join(parent, tracking.RUN_ID_FILE)
    return storage.read_bytes(id_file).decode().strip() if storage.exists(id_file) else None


def _checkpoint(given: str) -> ModelSource:
    folder = latest_checkpoint(given)
    if folder is None and storage.exists(storage.join(given, tracking.RUN_ID_FILE)):
        raise ModelSourceError(f"{given}: a run folder without a checkpoint yet (none with {META_FILE})")
    folder = folder or given
    if not storage.exists(storage.join(folder, META_FILE)):
        raise ModelSourceError(
            f"{given}: neither a run folder (with {tracking.RUN_ID_FILE} and checkpoint_* folders) nor a "
            f"checkpoint folder (with {META_FILE} and {MODEL_FILE})"
        )
    meta = json.loads(storage.read_bytes(storage.join(folder, META_FILE)))
    return ModelSource(
        given, meta.get("spec", {}), run_id=_parent_run_id(folder), checkpoint=folder, data_root=meta.get("data_root")
    )


def _need_store(uri: str, given: str) -> None:
    if not tracking.store_exists(uri):  # reading must not create one
        raise ModelSourceError(f"{given}: no MLflow store at {tracking.redact(uri)} (nothing has run there yet)")


def _run(given: str, uri: str, run_id: str, name: str = tracking.MODEL_NAME) -> tuple[str, str]:
    if tracking.find_run(uri, run_id) is None:
        raise ModelSourceError(f"{given}: no run {run_id} in {tracking.redact(uri)}")
    try:
        return tracking.run_model_uri(uri, run_id, name), run_id
    except tracking.ModelLookupError as e:
        raise ModelSourceError(f"{given}: {e}") from None


def _registered(given: str, uri: str) -> tuple[str, str | None]:
    rest = given.removeprefix("models:/")
    name, alias, version = rest, None, None
    if "@" in rest:
        name, alias = rest.split("@", 1)
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
    if not name or "/" in name or (version is None and not alias) or (version is not None and not version.isdigit()):
        raise ModelSourceError(f"{given}: expected models:/NAME/VERSION (a number) or models:/NAME@ALIAS")
    try:
        _, source, run_id = tracking.registered_version(uri, name, version, alias)
    except tracking.ModelLookupError as e:
        raise ModelSourceError(f"{given}: {e}") from None
    return source, run_id


@contextlib.contextmanager
def open_model(given: str, tracking_uri: Callable[[], str]) -> Iterator[ModelSource]:
    """The model ``given`` names (see the module's docstring); ``tracking_uri()`` is asked only for a
    source that needs the store. ModelSourceError naming what was given and what exists otherwise.
    An MLflow model is downloaded into a temporary folder that lives as long as the block."""
    if given.startswith(("models:/", "runs:/")):
        uri = tracking_uri()
        _need_store(uri, given)
        if given.startswith("models:/"):
            model_uri, run_id = _registered(given, uri)
        else:
            run_id, _, name = given.removeprefix("runs:/").partition("/")
            if not run_id or not name:
                raise ModelSourceError(f"{given}: expected runs:/RUN_ID/{tracking.MODEL_NAME}")
            model_uri, run_id = _run(given, uri, run_id, name)
    elif storage.is_s3(given) or Path(given).is_dir():
        yield _checkpoint(given)
        return
    else:
        uri = tracking_uri()
        if not tracking.store_exists(uri) or tracking.find_run(uri, given) is None:
            raise ModelSourceError(f"{given}: neither a checkpoint folder nor a run in {tracking.redact(uri)}")
        model_uri, run_id = _run(given, uri, given)
    tmp = tempfile.mkdtemp(prefix="hyperctl-mlflow-model-")
    try:
        folder = tracking.download_model(uri, model_uri, tmp)
        spec_path = Path(folder) / EXTRA_FILES / SPEC_FILE
        if not spec_path.is_file():
            raise ModelSourceError(f"{given}: {model_uri} is not a model this service logged (no {SPEC_FILE})")
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
        yield ModelSource(given, spec, run_id=run_id, tracking_uri=uri, model_dir=folder, model_uri=model_uri)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["ModelSource", "ModelSourceError", "latest_checkpoint", "open_model"]
