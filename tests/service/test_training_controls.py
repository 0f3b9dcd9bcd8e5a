"""The training controls every task gets through the Worker (issue 14): learning-rate schedules,
gradient accumulation, early stopping and time budgets.

Fast and in-process: the real char-LM loop and the real Worker run under Ray Train's local mode
(``ScalingConfig(num_workers=0)``: the training function runs in this process, with Ray Train's
context, no cluster), recording into a real MLflow sqlite store. Keeping the best checkpoint is
Ray Train's checkpoint manager's business: the end-to-end check is the toy task's run in
``test_registry.py``.
"""

from __future__ import annotations

import math
import queue
from pathlib import Path
from typing import Any

import pytest
import torch

from service.driver.local import absolute_storage, build_trainer
from service.driver.progress import format_event
from service.io import storage, tracking
from service.spec.errors import JobSpecError
from service.spec.loading import validate_job
from service.spec.schema import EarlyStoppingSpec, LRScheduleSpec
from service.tasks import TASKS, task_of
from service.worker import checkpoint as ckpt
from service.worker.schedule import LRSchedule
from service.worker.stopping import EarlyStopping
from service.worker.worker import Worker, make_optimizer

from helpers import tiny_job

# ---- the spec: every key validated, errors name the field, what was expected and what was found ----


def train_error(**train: Any) -> str:
    with pytest.raises(JobSpecError) as e:
        validate_job({"name": "x", "data": {"batch_size": 8}, "train": train})
    return str(e.value)


def test_bad_controls_are_refused_naming_the_field() -> None:
    assert "train.time_budget: expected a duration such as 90s, 30m, 2h or 1h30m, found 'soon'" in train_error(
        time_budget="soon"
    )
    assert "found 60" in train_error(time_budget=60)  # no unit: ambiguous
    assert "give one of train.max_steps, train.epochs and train.time_budget (found none)" in train_error()
    err = train_error(max_steps=9, lr_schedule={"name": "step", "milestones": [6, 3]})
    assert "train.lr_schedule: milestones: expected increasing positive optimizer steps" in err and "[6, 3]" in err
    err = train_error(max_steps=9, lr_schedule={"name": "step", "milestones": [2], "warmup_steps": 3})
    assert "milestones: expected steps after warmup_steps (3), found [2]" in err
    err = train_error(max_steps=9, lr_schedule={"name": "cosine", "milestones": [3]})
    assert "train.lr_schedule: milestones not read by name: cosine" in err
    assert "train.lr_schedule.name" in train_error(max_steps=9, lr_schedule={"name": "linear"})
    assert "cosine decays over the run's length" in train_error(time_budget="5m", lr_schedule={"name": "cosine"})
    assert "train.accumulate_steps: Input should be greater than 0; found 0" in train_error(
        max_steps=9, accumulate_steps=0
    )
    assert "train.early_stopping.patience" in train_error(max_steps=9, early_stopping={"patience": 0})
    assert "train.early_stopping.min_delta" in train_error(max_steps=9, early_stopping={"patience": 2, "min_delta": -1})


def test_a_time_budget_alone_bounds_a_run() -> None:
    spec = validate_job({"name": "x", "data": {"batch_size": 8}, "train": {"time_budget": "1h30m"}})
    assert spec.train.time_budget_s == 5400 and spec.train.total_steps(100) is None
    both = validate_job({"name": "x", "data": {"batch_size": 8}, "train": {"time_budget": "90s", "epochs": 2}})
    assert both.train.time_budget_s == 90 and both.train.total_steps(100) == 200
    # a dumped spec (a campaign's trial) validates again: defaults of other schedules are not "given"
    step = validate_job(
        {
            "name": "x",
            "data": {"batch_size": 8},
            "train": {"max_steps": 9, "lr_schedule": {"name": "step", "milestones": [4]}},
        }
    )
    assert validate_job(step.model_dump(mode="json")).train.lr_schedule == step.train.lr_schedule


# ---- learning-rate schedules: torch's classes, stepped by the Worker --------------------------------


def rates(spec: LRScheduleSpec, total: int, evals: dict[int, float] | None = None) -> list[float]:
    """The rate each of ``total`` steps is taken with (base 1.0); ``evals``: step -> validation value."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = LRSchedule(spec, optimizer, total)
    out = []
    for step in range(1, total + 1):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
        if evals and step in evals:
            schedule.evaluated(evals[step])
    return out


def test_each_schedule_gives_its_rates() -> None:
    warm = [min(1.0, s / 4) for s in range(1, 5)]  # linear warm-up over 4 steps: 1/4 .. 1
    assert rates(LRScheduleSpec(warmup_steps=4), 8) == pytest.approx(warm + [1.0] * 4)
    step = LRScheduleSpec(name="step", warmup_steps=4, milestones=[6, 8], factor=0.1)
    assert rates(step, 10) == pytest.approx(warm + [1.0, 1.0, 0.1, 0.1, 0.01, 0.01])  # x0.1 from step 7, 9
    cosine = LRScheduleSpec(name="cosine", warmup_steps=2, min_lr=0.1)
    expected = [0.5, 1.0] + [0.1 + 0.9 * (1 + math.cos(math.pi * i / 8)) / 2 for i in range(8)]
    assert rates(cosine, 10) == pytest.approx(expected)
    plateau = LRScheduleSpec(name="plateau", factor=0.5, patience=1)
    # evaluations every 2 steps: 3.0 (best), 2.0 (best), 2.5, 2.4 (2 without improvement > patience 1: cut)
    got = rates(plateau, 10, evals={2: 3.0, 4: 2.0, 6: 2.5, 8: 2.4})
    assert got == pytest.approx([1.0] * 8 + [0.5] * 2)


# ---- the real Worker and the real char-LM loop, in this process (Ray Train's local mode) -------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny char-LM corpus and an MLflow store for every run of this module."""
    tmp = tmp_path_factory.mktemp("controls")
    return {"tmp": tmp, "job": tiny_job(tmp, "base")}


def char_lm_spec(lab: dict[str, Any], name: str, batch_size: int = 8, **train: Any) -> Any:
    raw = tiny_job(lab["tmp"], name)  # the same corpus files as lab's
    raw["model"].update(hidden_size=16, dropout={})  # dropout off: comparable updates
    raw["data"]["batch_size"] = batch_size
    raw["resources"]["workers"] = 1
    raw["train"].update({"sample_length": 0, "log_every": 1, "eval_every": 1000, "checkpoint_every": 1000, **train})
    return absolute_storage(validate_job(raw))


def fit_local(spec: Any, fn: Any = None, **config: Any) -> tuple[Any, str, str]:
    """Run ``fn`` (default: the task's loop) under Ray Train's local mode with ``spec``'s MLflow run;
    returns (its return value, tracking URI, run id)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    task = task_of(spec)
    prepared = task.prepare(spec, storage.join(spec.storage, "datasets"))
    uri = tracking.tracking_uri_for(spec)
    run_id, _ = tracking.open_run(spec, uri, {})
    metrics = task.metrics
    result = TorchTrainer(
        fn or task.train_loop,
        train_loop_config={
            "spec": spec.model_dump(mode="json"),
            "data_root": prepared.root,
            "tracking_uri": uri,
            "run_id": run_id,
            "progress": None,
            "valid_metric": metrics.valid,
            "valid_mode": metrics.mode(metrics.valid),
            **config,
        },
        scaling_config=ScalingConfig(num_workers=0),
        run_config=RunConfig(name=spec.name, storage_path=str(Path(spec.storage) / "ray")),
    ).fit()
    assert result.error is None, result.error
    return result.return_value, uri, run_id


def trained_model(uri: str, run_id: str, tmp: Path) -> dict[str, torch.Tensor]:
    """The run's final model (its MLflow model, runs:/ID/model) as a state dict."""
    folder = tracking.download_model(uri, f"runs:/{run_id}/model", str(tmp))
    state: dict[str, torch.Tensor] = tracking.load_pytorch_model(folder).state_dict()
    return state


def test_the_rate_of_every_step_reaches_mlflow(lab: dict[str, Any]) -> None:
    spec = char_lm_spec(
        lab, "sched", max_steps=7, lr_schedule={"name": "step", "warmup_steps": 2, "milestones": [4], "factor": 0.5}
    )
    _, uri, run_id = fit_local(spec)
    lr = tracking.metric_history(uri, run_id, "lr")
    assert [s for s, _ in lr] == list(range(1, 8))
    assert [v for _, v in lr] == pytest.approx([0.005, 0.01, 0.01, 0.01, 0.005, 0.005, 0.005])


def test_schedule_and_stopping_state_resume_exactly_through_a_checkpoint(lab: dict[str, Any], tmp_path: Path) -> None:
    """Steps 1-4, a checkpoint (the real files), a new Worker resumed from it, steps 5-9: the same
    rates as 9 steps in one go (warm-up, then cosine)."""
    spec = char_lm_spec(
        lab,
        "resume",
        max_steps=9,
        lr_schedule={"name": "cosine", "warmup_steps": 3},
        time_budget="1h",
        early_stopping={"patience": 3},
    )
    folder = tmp_path / "ckpt"

    def steps(w: Worker, model: torch.nn.Module, optimizer: torch.optim.Optimizer, pos: ckpt.Position, n: int) -> list:
        out = []
        for _ in range(n):
            for _ in w.micro_batches(model):
                w.backward(model(torch.ones(2, 3)).sum(), 2)
            out.append(optimizer.param_groups[0]["lr"])
            assert w.step(pos, model, optimizer) is not None
            pos.step += 1
        return out

    def loop(config: dict[str, Any]) -> tuple[list, list, list, dict]:
        def fresh() -> tuple[Worker, torch.nn.Module, torch.optim.Optimizer]:
            w = Worker(config, type(spec))
            torch.manual_seed(0)
            model = torch.nn.Linear(3, 1)
            return w, model, make_optimizer(w.spec.train.optimizer, model.parameters())

        w, model, opt = fresh()
        pos, _ = w.restore(model, opt, 9)
        w.start(pos, 9, model)
        whole = steps(w, model, opt, pos, 9)

        w, model, opt = fresh()
        pos, _ = w.restore(model, opt, 9)
        w.start(pos, 9, model)
        first = steps(w, model, opt, pos, 4)
        w.evaluated(pos, "", valid_bpc=2.0)
        ckpt.save(folder, 0, pos, None, model=model, optimizer=opt, meta={"world_size": 1}, controls=w.controls_state())
        saved = w.controls_state()

        w, model, opt = fresh()
        w.restore(model, opt, 9)
        restored = ckpt.load(folder, 0, 1, model, opt, torch.device("cpu"))
        w.load_controls(restored.controls)
        w.start(restored.position, 9, model)
        assert w.controls_state()["early_stopping"] == saved["early_stopping"]
        assert w.clock.elapsed() >= restored.controls["elapsed_s"] > 0  # earlier attempts' training time counts
        return whole, first, steps(w, model, opt, restored.position, 5), saved

    (whole, first, rest, saved), _, _ = fit_local(spec, loop)
    assert first + rest == pytest.approx(whole, abs=0, rel=1e-12)
    assert len(set(whole)) > 5  # the schedule moved: a frozen rate would pass the equality above
    assert saved["early_stopping"]["best"] == 2.0 and saved["early_stopping"]["best_step"] == 4


# ---- gradient accumulation -------------------------------------------------------------------------


def test_accumulating_k_micro_batches_is_one_batch_k_times_larger(lab: dict[str, Any], tmp_path: Path) -> None:
    """The real char-LM loop, 3 steps (the recurrent state carried across segments, per micro-batch):
    batch 4 x 2 micro-batches trains the same model as batch 8 in one; batch 4 alone does not. Plain
    SGD: unlike Adam's, its step is proportional to the gradient, so a wrong scale shows."""
    models = {}
    for name, batch, k in (("acc2", 4, 2), ("big", 8, 1), ("small", 4, 1)):
        sgd = {"name": "sgd", "lr": 0.5}
        spec = char_lm_spec(lab, name, batch_size=batch, max_steps=3, accumulate_steps=k, grad_clip=None, optimizer=sgd)
        _, uri, run_id = fit_local(spec)
        models[name] = trained_model(uri, run_id, tmp_path / name)
    for key, big in models["big"].items():
        torch.testing.assert_close(models["acc2"][key], big, rtol=1e-4, atol=1e-5, msg=key)
    assert any(not torch.allclose(models["small"][k], v, atol=1e-4) for k, v in models["big"].items())


def test_image_loop_accumulates_like_one_larger_batch(tmp_path: Path) -> None:
    """The real image loop (hyper convnet on the vendored MNIST test split, no augmentation: no
    random draws to line up): 2 steps of 2 x 8 images train the model of 2 steps of 16."""
    models = {}
    for name, batch, k in (("acc2", 8, 2), ("big", 16, 1)):
        raw = {
            "name": name,
            "task": "image_classification",
            "model": {"arch": "mnist_convnet", "kernels": "hyper"},
            "data": {"dataset": "mnist-test", "batch_size": batch, "augment": {"pad_crop": 0, "flip": False}},
            "train": {
                "max_steps": 2,
                "accumulate_steps": k,
                "grad_clip": None,
                "optimizer": {"name": "sgd", "lr": 0.1},
            },
            "resources": {"workers": 1},
            "storage": str(tmp_path / "runs"),
        }
        _, uri, run_id = fit_local(absolute_storage(validate_job(raw)))
        models[name] = trained_model(uri, run_id, tmp_path / name)
    for key, big in models["big"].items():
        torch.testing.assert_close(models["acc2"][key], big, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow  # two runs of the real loop with its finish (beam search, plots): ~15 s on 2 busy cores
def test_translation_loop_accumulates_like_one_larger_batch(tmp_path: Path) -> None:
    """The real translation loop (the test's tiny HyperLSTM encoder-decoder, dropout and label
    smoothing off, plain SGD): 2 steps of 2 x 4 sentence pairs, each micro-batch padded to its own
    length and weighed by its own target tokens, train the model of 2 steps of 8 pairs (which moved
    away from the initial weights: equal because trained alike, not because untrained)."""
    from tasks.translation.test_translation_job import translation_job, write_pair

    from service.tasks.translation.model import build_model

    small = {
        "valid": write_pair(tmp_path, "val", 2, "val"),
        "test": {"t": write_pair(tmp_path, "test", 2, "test_2016_flickr")},
    }
    models, spec = {}, None
    for name, batch, k in (("acc2", 4, 2), ("big", 8, 1)):
        raw = translation_job(tmp_path, name, n_train=40, batch_size=batch, eval_sentences=2, **small)
        raw["model"].update(dropout=0.0, label_smoothing=0.0, beam_size=1)
        raw["train"].update(
            max_steps=2, accumulate_steps=k, grad_clip=None, optimizer={"name": "sgd", "lr": 0.5}, eval_every=1000
        )
        raw["resources"]["workers"] = 1
        raw["storage"] = str(tmp_path / "runs")
        spec = absolute_storage(validate_job(raw))
        _, uri, run_id = fit_local(spec)
        models[name] = trained_model(uri, run_id, tmp_path / name)
    for key, big in models["big"].items():
        torch.testing.assert_close(models["acc2"][key], big, rtol=1e-4, atol=1e-5, msg=key)
    prepared = task_of(spec).prepare(spec, storage.join(spec.storage, "datasets"))
    torch.manual_seed(spec.train.seed)
    initial = build_model(spec, *prepared.vocab_sizes).state_dict()
    assert any(not torch.allclose(initial[k], v, atol=1e-4) for k, v in models["big"].items())


def test_micro_batches_of_unequal_counts_weigh_every_item_equally(lab: dict[str, Any]) -> None:
    """Token counts differ between micro-batches (padding, sentence lengths): 2 + 5 items accumulated
    make the step of the 7 items in one batch (the mean over items, not the mean of two means)."""
    spec = char_lm_spec(lab, "unequal", max_steps=1, accumulate_steps=2, optimizer={"name": "sgd", "lr": 1.0})
    x, y = torch.randn(7, 3, generator=torch.Generator().manual_seed(1)), torch.randn(7)

    def loop(config: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple[float, float]]:
        w = Worker(config, type(spec))
        params = []
        for parts in ([slice(0, 2), slice(2, 7)], [slice(0, 7)]):
            torch.manual_seed(0)
            model = torch.nn.Linear(3, 1)
            optimizer = make_optimizer(w.spec.train.optimizer, model.parameters())
            pos, _ = w.restore(model, optimizer, 1)
            for part in parts:
                loss_sum = ((model(x[part]).squeeze(1) - y[part]) ** 2).sum()
                w.backward(loss_sum, len(y[part]))
            totals = w.step(pos, model, optimizer)
            assert totals is not None
            params.append([p.detach().clone() for p in model.parameters()])
        return params[0], params[1], totals

    (accumulated, whole, totals), _, _ = fit_local(spec, loop)
    for a, b in zip(accumulated, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert totals[1] == 7  # the step's global count: every micro-batch's


def test_ddp_synchronises_only_on_the_last_micro_batch(lab: dict[str, Any], tmp_path: Path) -> None:
    """A real DDP model (one-process gloo group): its all-reduce hook runs in the last of 3
    micro-batches' backward only."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    spec = char_lm_spec(lab, "nosync", max_steps=1, accumulate_steps=3)

    def loop(config: dict[str, Any]) -> list[int]:
        w = Worker(config, type(spec))
        created = not dist.is_initialized()
        if created:
            dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
        try:
            model = torch.nn.Linear(3, 1)
            ddp = DistributedDataParallel(model)
            syncs: list[int] = []

            def counted(state, bucket):  # noqa: ANN001, ANN202 - DDP refuses annotations other than its own
                syncs.append(1)
                fut = torch.futures.Future()
                fut.set_result(bucket.buffer())
                return fut

            ddp.register_comm_hook(None, counted)
            optimizer = make_optimizer(w.spec.train.optimizer, model.parameters())
            pos, _ = w.restore(model, optimizer, 1)
            seen = []
            for _ in w.micro_batches(ddp):
                w.backward(ddp(torch.ones(2, 3)).sum(), 2)
                seen.append(len(syncs))
            assert w.step(pos, model, optimizer) is not None
            return seen
        finally:
            if created:
                dist.destroy_process_group()

    seen, _, _ = fit_local(spec, loop)
    assert seen == [0, 0, 1]


# ---- early stopping and the time budget -----------------------------------------------------------


def test_early_stopping_stops_on_the_validation_metric_and_says_so(lab: dict[str, Any]) -> None:
    spec = char_lm_spec(lab, "early", max_steps=100, early_stopping={"patience": 3, "min_delta": 0.1})

    def loop(config: dict[str, Any]) -> list[tuple[int, bool, bool, float]]:
        w = Worker(config, type(spec))
        model = torch.nn.Linear(3, 1)
        optimizer = make_optimizer(w.spec.train.optimizer, model.parameters())
        pos, _ = w.restore(model, optimizer, 100)
        w.start(pos, 100, model)
        seen = []
        # evaluations every 10 steps: 5, 4 (best), 4.5, 3.95 (better by less than min_delta), 4.2 -> stop
        for value in (5.0, 4.0, 4.5, 3.95, 4.2, 1.0):
            pos.step += 10
            assert not w.done(pos)
            w.evaluated(pos, "", valid_bpc=value)
            seen.append((pos.step, w.done(pos), w.checkpoint_due(pos), w.checkpoint_score(pos)))
            if w.done(pos):
                break
        pos.step += 1
        seen.append((pos.step, w.done(pos), w.checkpoint_due(pos), w.checkpoint_score(pos)))
        assert w.tracker is not None
        w.tracker.flush()
        return seen

    seen, uri, run_id = fit_local(spec, loop)
    assert [(s, d) for s, d, _, _ in seen] == [
        (10, False),
        (20, False),
        (30, False),
        (40, False),
        (50, True),
        (51, True),
    ]
    # a checkpoint at each new best value (even one within min_delta: the best must exist to be kept)
    # and at the stop
    assert [c for _, _, c, _ in seen[:5]] == [True, True, False, True, True]
    assert [score for _, _, _, score in seen[:5]] == [5.0, 4.0, 4.5, 3.95, 4.2]
    assert math.isnan(seen[5][3])  # no evaluation at that step: ranks last, not with a stale score
    tag = tracking.describe_run(uri, run_id)["tags"][tracking.TAG_STOPPED]
    assert tag.startswith("early_stopping at step 50: valid_bpc best 4 at step 20"), tag


def test_early_stopping_follows_the_metric_direction() -> None:
    """BLEU-like metrics (higher is better): a rise is an improvement, a fall is not."""
    rule = EarlyStopping(EarlyStoppingSpec(patience=2, min_delta=0.5), "max")
    assert [rule.update(step, v) for step, v in ((1, 10.0), (2, 12.0), (3, 12.4), (4, 11.0))] == [
        True,
        True,
        False,
        False,
    ]
    assert rule.stopped_at == 4 and rule.best_value() == 12.0 and rule.best_step == 2


@pytest.mark.timeout(120)  # a budget that does not end the run would otherwise hang here
def test_a_time_budget_ends_the_real_loop_with_its_final_evaluation(lab: dict[str, Any]) -> None:
    spec = char_lm_spec(lab, "budget", max_steps=None, time_budget="2s", log_every=5)
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    _, uri, run_id = fit_local(spec, progress=events)
    run = tracking.describe_run(uri, run_id)
    train = tracking.metric_history(uri, run_id, "train_bpc")
    last = train[-1][0]
    assert last > 5 and tracking.metric_history(uri, run_id, "final/test_bpc")[0][0] == last  # the final evaluation
    assert run["tags"][tracking.TAG_STOPPED] == f"time_budget 2s spent at step {last}"
    seen = []
    while not events.empty():
        seen.append(events.get_nowait())
    logs = [e for e in seen if e["event"] == "log"]
    lines = [format_event(e) for e in seen if e["event"] in ("start", "log")]
    assert "steps unbounded within 2s" in lines[0] and all("None" not in line for line in lines), lines
    fractions = [e["fraction"] for e in logs]
    assert fractions == sorted(fractions) and 0 < fractions[0] and fractions[-1] == 1.0
    assert all(e["eta_s"] <= 2.0 for e in logs)


# ---- the driver: the best checkpoint by the validation metric is kept alongside the latest ---------


@pytest.mark.parametrize("task", sorted(TASKS))
def test_early_stopping_keeps_the_best_checkpoint_by_the_task_metric(task: str, tmp_path: Path) -> None:
    raw: dict[str, Any] = {"name": "k", "task": task, "train": {"max_steps": 5}, "storage": str(tmp_path)}
    plain = build_trainer(validate_job(raw), "d", "sqlite:///m.db", "r").run_config.checkpoint_config
    assert plain.checkpoint_score_attribute is None and plain.num_to_keep == 2
    raw["train"]["early_stopping"] = {"patience": 2}
    trainer = build_trainer(validate_job(raw), "d", "sqlite:///m.db", "r")
    config = trainer.run_config.checkpoint_config
    metrics = TASKS[task].metrics
    assert config.checkpoint_score_attribute == "checkpoint_score" and config.num_to_keep == 2
    assert config.checkpoint_score_order == metrics.mode(metrics.valid)
    assert trainer.train_loop_config["valid_metric"] == metrics.valid


# ---- preemption: a stop request ends the loop after the current step, with a checkpoint at it -------


def test_a_stop_request_ends_the_real_loop_after_the_step_with_its_checkpoint(lab: dict[str, Any]) -> None:
    """The driver's request (what it writes on SIGTERM) is in the run folder before the first step:
    rank 0 sees it, the all-reduced decision stops training after step 1, whose checkpoint is
    written and reported, and the final evaluation (the finished run's) is skipped; an evaluation due
    at that step runs before the checkpoint, as in the uninterrupted run."""
    from service.paths import run_dir
    from service.worker import preemption

    spec = char_lm_spec(lab, "preempted", max_steps=50, log_every=5, eval_every=1)
    preemption.clear(run_dir(spec))
    preemption.write_request(run_dir(spec), "SIGTERM to the driver")
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    _, uri, run_id = fit_local(spec, progress=events)
    assert preemption.read_outcome(run_dir(spec)) == {"step": 1, "by": "SIGTERM to the driver"}
    assert tracking.metric_history(uri, run_id, "train_bpc")[-1][0] == 1  # flushed with step 1's checkpoint
    assert tracking.metric_history(uri, run_id, "final/test_bpc") == []  # no final evaluation
    assert [step for step, _ in tracking.metric_history(uri, run_id, "valid_bpc")] == [1]  # the one due at step 1
    seen = []
    while not events.empty():
        seen.append(events.get_nowait())
    assert {"event": "checkpoint", "step": 1} in seen
    said = [e["text"] for e in seen if e["event"] == "info"]
    assert "SIGTERM to the driver: training stops after step 1 with a checkpoint at it" in said
    preemption.clear(run_dir(spec))
    assert preemption.read_outcome(run_dir(spec)) is None
