"""The task registry (service/tasks/): nothing outside a task's folder names a task, and a task
defined anywhere (here: a toy regression inside this test) is a complete task once registered:
it validates, trains through ``hyperctl submit`` with one Ray Train worker and reaches MLflow."""

from __future__ import annotations

import ast
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pytest
import torch
import yaml
from pydantic import Field

from service import tasks as registry
from service.cli import EXIT_OK, main
from service.io import datacache, storage, tracking
from service.spec.schema import DataSpec, JobSpec, ModelSpec
from service.tasks.base import DataFile, Metrics, Task
from service.worker.worker import Window, Worker, make_optimizer

from helpers import ROOT

SERVICE = ROOT / "service"
TASKS_DIR = SERVICE / "tasks"


# ---- nothing outside service/tasks/<task>/ names a task -------------------------------------------


def _task_words() -> dict[str, str]:
    """Every name a task goes by (its name and aliases) and every metric it owns -> the task: code
    outside the task that names its metrics branches on the task by proxy (``HIGHER_IS_BETTER``
    once held ``valid_bleu``)."""
    words = {}
    for t in registry.TASKS.values():
        m = t.metrics
        for word in (t.name, *t.aliases, m.valid, m.test, m.train, *m.reported, *m.higher_is_better):
            words[word] = t.name
    return words


def _compares_a_task(node: ast.AST) -> bool:
    """``x.task == ...``, ``... in (DEFAULT_TASK, ...)``: a branch on which task a job is."""
    if not isinstance(node, ast.Compare):
        return False
    sides = [node.left, *node.comparators]
    return any(
        (isinstance(s, ast.Attribute) and s.attr == "task") or (isinstance(s, ast.Name) and s.id == "DEFAULT_TASK")
        for s in sides
    )


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes (prose: they may say "translation")."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                found.add(id(body[0].value))
    return found


def _imported_modules(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a module called ``module``."""
    out = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names] + [(node.lineno, base)]
    return out


def task_name_violations(root: Path) -> list[str]:
    """Lines of ``root/service`` outside the task folders and the registry that import a task's
    module, or name a task in code: a string (not a docstring) or an identifier holding the name."""
    words = _task_words()
    patterns = {w: re.compile(rf"(?<![A-Za-z0-9]){re.escape(w)}(?![A-Za-z0-9])") for w in words}
    owned = {root / "service" / "tasks" / name for name in registry.TASKS}
    problems = []
    for path in sorted((root / "service").rglob("*.py")):
        if any(folder in path.parents for folder in owned) or path == root / "service" / "tasks" / "__init__.py":
            continue
        rel = path.relative_to(root)
        module = ".".join(rel.with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, imported in _imported_modules(tree, module):
            for name in registry.TASKS:
                if imported == f"service.tasks.{name}" or imported.startswith(f"service.tasks.{name}."):
                    problems.append(f"{rel}:{line}: imports {imported}")
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if _compares_a_task(node):
                problems.append(f"{rel}:{getattr(node, 'lineno', '?')}: compares a job's task")
            text = None
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                text = node.value
            elif isinstance(node, ast.Name):
                text = node.id
            elif isinstance(node, ast.Attribute):
                text = node.attr
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                text = node.name
            elif isinstance(node, ast.arg):
                text = node.arg
            if text is None:
                continue
            for word, pattern in patterns.items():
                if pattern.search(text):
                    what = (
                        "names task"
                        if word == words[word] or word in registry.TASKS[words[word]].aliases
                        else "names a metric of task"
                    )
                    problems.append(f"{rel}:{getattr(node, 'lineno', '?')}: {what} {words[word]!r} ({text[:60]!r})")
    return sorted(set(problems))


def test_no_module_outside_the_task_folders_names_a_task() -> None:
    assert len(registry.TASKS) >= 3
    assert task_name_violations(ROOT) == []


def test_the_name_check_finds_a_branch_on_a_task_and_an_import_of_its_module(tmp_path: Path) -> None:
    """The check above can fail: a copy of service/ with a branch on a task's name, one on a task
    by proxy (its metric; the default task), and an import of a task's module is caught, line by line."""
    copy = tmp_path / "service"
    for path in SERVICE.rglob("*.py"):
        target = copy / path.relative_to(SERVICE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    name = next(iter(registry.TASKS))
    cli = copy / "cli.py"
    cli.write_text(cli.read_text() + f"\n\ndef _branch(spec):\n    return spec.task == {name!r}\n")
    runs = copy / "driver" / "runs.py"
    runs.write_text(runs.read_text() + f"\nfrom ..tasks.{name} import spec as _spec\n")
    metric = registry.TASKS[name].metrics.valid
    local = copy / "driver" / "local.py"
    local.write_text(
        local.read_text() + f"\n\ndef _mode(m):\n    return 'max' if m == {metric!r} else 'min'\n"
        "\n\ndef _default(spec):\n    return spec.task == DEFAULT_TASK\n"
    )
    found = task_name_violations(tmp_path)
    assert any(p.startswith("service/cli.py:") and f"names task {name!r}" in p for p in found), found
    assert any(p.startswith("service/driver/runs.py:") and f"imports service.tasks.{name}" in p for p in found), found
    assert any(p.startswith("service/driver/local.py:") and f"names a metric of task {name!r}" in p for p in found)
    assert any(p.startswith("service/driver/local.py:") and "compares a job's task" in p for p in found), found
    assert task_name_violations(ROOT) == []  # the copy was changed, not the checkout


def test_a_task_imports_no_other_task() -> None:
    for name in registry.TASKS:
        for path in sorted((TASKS_DIR / name).rglob("*.py")):
            rel = path.relative_to(ROOT)
            tree = ast.parse(path.read_text(encoding="utf-8"))
            imported = [m for _, m in _imported_modules(tree, ".".join(rel.with_suffix("").parts))]
            others = [
                m
                for m in imported
                for other in registry.TASKS
                if other != name and (m == f"service.tasks.{other}" or m.startswith(f"service.tasks.{other}."))
            ]
            assert others == [], f"{rel} imports {others}"


def test_hypermodels_imports_nothing_of_the_service() -> None:
    for path in sorted((ROOT / "hypermodels").rglob("*.py")):
        rel = path.relative_to(ROOT)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = _imported_modules(tree, ".".join(rel.with_suffix("").parts))
        assert not [m for _, m in imported if m.split(".")[0] in ("service", "ray", "mlflow")], rel


def test_every_task_declares_what_the_service_needs() -> None:
    for name, task in registry.TASKS.items():
        assert task.name == name and task.job_class.model_fields["task"].annotation == Literal[name]
        assert task.metrics.valid in task.metrics.reported and task.metrics.train in task.metrics.reported
        assert registry.task_named(name) is task and registry.find_task(name) is task
        for alias in task.aliases:
            assert registry.find_task(alias) is task


# ---- a toy task, defined here, registered, trained through hyperctl submit ------------------------

TOY = "toy_regression"
MANIFEST = "toy.json"


class ToyData(DataSpec):
    samples: int = Field(512, gt=0, description="random (x, y) pairs, y = x . w* + noise")
    features: int = Field(4, gt=0)
    batch_size: int = Field(32, gt=0)


class ToyModel(ModelSpec):
    bias: bool = True


class ToyJob(JobSpec):
    task: Literal["toy_regression"]
    data: ToyData = ToyData()
    model: ToyModel = ToyModel()


@dataclass(frozen=True)
class PreparedToy:
    root: str
    content_hash: str
    manifest: str = MANIFEST

    def summary(self) -> str:
        return f"random regression data, hash {self.content_hash[:12]}"


def prepare_toy(spec: ToyJob, cache_root: str) -> PreparedToy:
    content_hash = f"{spec.data.samples:08d}{spec.data.features:08d}{spec.train.seed:016d}"
    root = datacache.prepared_folder(cache_root, TOY, content_hash)
    if not datacache.is_complete(root, MANIFEST):
        g = torch.Generator().manual_seed(spec.train.seed)
        x = torch.randn(spec.data.samples, spec.data.features, generator=g)
        y = x @ torch.arange(1.0, spec.data.features + 1) + 0.01 * torch.randn(spec.data.samples, generator=g)
        datacache.write_parquet(storage.join(root, "all.parquet"), pa.table({"x": x.tolist(), "y": y.tolist()}))
        datacache.write_manifest(root, MANIFEST, {"schema_version": 1, "samples": spec.data.samples})
    return PreparedToy(root, content_hash)


def toy_loop(config: dict[str, Any]) -> None:
    w = Worker(config, ToyJob)
    spec = w.spec
    table = datacache.read_parquet(storage.join(config["data_root"], "all.parquet"))
    x, y = torch.tensor(table.column("x").to_pylist()), torch.tensor(table.column("y").to_pylist())
    torch.manual_seed(spec.train.seed)
    model = torch.nn.Linear(spec.data.features, 1, bias=spec.model.bias)
    optimizer = make_optimizer(spec.train.optimizer, model.parameters())
    total = spec.train.max_steps  # None: the time budget (or early stopping) ends the run
    pos, _ = w.restore(model, optimizer, total)
    w.start(pos, total, model, batches_per_epoch=len(x) // spec.data.batch_size, unit="batches")
    held_out = len(x) // 4  # the last quarter: the test split
    window = Window()
    while not w.done(pos):
        i = (pos.step * spec.data.batch_size) % (len(x) - held_out - spec.data.batch_size)
        xb, yb = x[i : i + spec.data.batch_size], y[i : i + spec.data.batch_size]
        with w.autocast():
            loss_sum = ((model(xb).squeeze(1) - yb) ** 2).sum()
        totals = w.optimize(pos, model, optimizer, loss_sum, len(yb))
        assert totals is not None
        pos.step += 1
        window.add(*totals, 1e-3)
        if w.log_due(pos):
            window = w.log_window(
                pos,
                total,
                window,
                optimizer,
                loss=("train_mse", window.mean_loss(), "mse"),
                rate=("samples_per_s", "samples/s"),
            )
        if w.eval_due(pos) or w.done(pos):  # the toy's final evaluation is its last periodic one
            with torch.no_grad():
                w.evaluated(pos, "all samples", valid_mse=float(((model(x).squeeze(1) - y) ** 2).mean()))
        if w.checkpoint_due(pos):
            w.save_checkpoint(pos, model, optimizer, {"data_root": config["data_root"]})
    if w.tracker is not None:  # rank 0: the final figure
        with torch.no_grad():
            test_mse = float(((model(x[-held_out:]).squeeze(1) - y[-held_out:]) ** 2).mean())
        w.log_final(pos.step, curve={}, figures={"test_mse": test_mse})


def check_toy(spec: ToyJob, prepared: PreparedToy) -> list[str]:
    """The loop draws batches from the first three quarters of the samples."""
    train = spec.data.samples - spec.data.samples // 4
    if spec.data.batch_size >= train:
        return [f"data.batch_size: {spec.data.batch_size} needs more than the {train} training samples"]
    return []


def toy_task() -> Task[ToyJob]:
    return Task(
        name=TOY,
        job_class=ToyJob,
        prepare=prepare_toy,
        train_loop=toy_loop,
        data_files=lambda spec: list[DataFile](),
        source_name=lambda spec: "random numbers",
        parameter_count=lambda spec: spec.data.features + int(spec.model.bias),
        check_prepared=check_toy,
        metrics=Metrics(valid="valid_mse", test="test_mse", train="train_mse", reported=("valid_mse", "train_mse")),
    )


@pytest.mark.slow
def test_a_task_defined_in_a_test_validates_trains_and_reaches_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    import ray

    monkeypatch.setitem(registry.TASKS, TOY, toy_task())
    # Ray Train's workers import this module (the loop is pickled by reference) as pytest does: from
    # the test's folder, with tests/ (helpers) and the checkout on the path.
    here = str(Path(__file__).resolve().parent)
    paths = [here, str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # Bounded by a time budget alone, ended by early stopping (the training controls, end to end).
    job = {
        "name": "toy",
        "task": TOY,
        "train": {
            "time_budget": "5m",
            "early_stopping": {"patience": 2},  # min_delta 0: the stop comes after the best, whose checkpoint stays
            "log_every": 10,
            "eval_every": 10,
            "checkpoint_every": 1000,
            "keep_checkpoints": 1,
            "optimizer": {"lr": 0.1},
        },
        "resources": {"workers": 1},
        "storage": str(tmp_path / "runs"),
        "tracking": {"experiment": "toy"},
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(job))

    assert main(["validate", str(path)]) == EXIT_OK
    assert "# model parameters: 5 " in capfd.readouterr().out

    ray.shutdown()
    try:
        assert main(["submit", str(path), "--num-cpus", "1"]) == EXIT_OK
    finally:
        ray.shutdown()
    out = capfd.readouterr().out
    assert "[data]  preparing random numbers" in out and "steps unbounded within 5m" in out, out[-3000:]
    assert "[train] step     10 (" in out and "/None" not in out, out[-3000:]

    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    runs = tracking.search_runs(uri)
    assert len(runs) == 1 and runs[0]["status"] == "FINISHED"
    assert runs[0]["tags"][tracking.TAG_TASK] == TOY
    curve = tracking.metric_history(uri, runs[0]["run_id"], "valid_mse")
    assert math.isfinite(curve[-1][1]) and curve[-1][1] < 0.5 * curve[0][1] + 0.1, curve  # it learned
    # Early stopping, recomputed from the logged curve: patience 2 evaluations.
    best, best_step, bad, stop = math.inf, 0, 0, None
    for step, value in curve:
        best, best_step, bad = (value, step, 0) if value < best else (best, best_step, bad + 1)
        if bad == 2:
            stop = step
            break
    assert stop is not None and [step for step, _ in curve] == list(range(10, stop + 1, 10)), curve
    assert runs[0]["tags"][tracking.TAG_STOPPED].startswith(f"early_stopping at step {stop}: valid_mse best")
    assert f"at step {best_step}," in runs[0]["tags"][tracking.TAG_STOPPED]
    assert [step for step, _ in tracking.metric_history(uri, runs[0]["run_id"], "train_mse")][-1] == stop
    assert runs[0]["metrics"]["final/test_mse"] < curve[0][1]
    # keep_checkpoints 1: the best checkpoint by valid_mse, and the latest beside it.
    kept = sorted(p.name for p in (tmp_path / "runs" / "toy").glob("checkpoint_*") if p.is_dir())
    assert best_step < stop and kept == [f"checkpoint_{best_step:08d}", f"checkpoint_{stop:08d}"], (kept, curve)

    # hyperctl list shows the run with the toy's own metrics (the registry, not a guess).
    assert main(["list", "--storage", str(tmp_path / "runs")]) == EXIT_OK
    row = next(line for line in capfd.readouterr().out.splitlines() if runs[0]["run_id"] in line)
    assert f" {TOY} " in row and " mse " in row and f"{runs[0]['metrics']['final/test_mse']:9.4f}" in row, row
