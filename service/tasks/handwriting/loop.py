"""The Ray Train worker loop of ``task: handwriting``: data-parallel training of a mixture-density
handwriting generator on whole sequences.

Data layout: each epoch visits the training sequences in a permutation seeded by (seed, epoch);
step ``batch`` of the epoch takes ``data.batch_size`` of them (an incomplete last batch is
dropped) and rank ``r`` of ``W`` trains on its ``batch_size / W`` of those, zero-padded to their
longest. A batch is thus a function of the position only: a resumed run draws the same batches.
Every sequence starts from the zero state (no state is carried between steps).

The optimised loss is the mean NLL per point of the rank's batch. Logged: ``train_nll`` (nats per
sequence: the global loss sum over the window's ``steps x batch_size`` sequences),
``train_nll_per_point``, ``points_per_s``; at evaluations ``valid_nll`` (per sequence, the
campaign metric) and ``valid_nll_per_point``, plus a grid of generated samples; at the end the
same on the whole validation and test splits, the model, the learning curve and (HyperLSTM) the
weight-scaling plot over a validation sequence.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

import numpy as np
import torch

from hypermodels import HandwritingModel, HyperLSTM, log_loss, pad_sequences, sequence_nll, teacher_inputs

from ...io.tracking import RunLog
from ...worker import plots as shared_plots
from ...worker.worker import Window, Worker, log_model, make_optimizer, seed_rank
from . import plots
from .data import PreparedStrokes, load_prepared, load_split
from .model import build_model
from .spec import HandwritingJob
from .use import SCALE_FILE


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The training sequences' order in ``epoch`` (the same on every rank and after a resume)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train.torch  # deferred: see service.worker.worker

    # ---- set-up -------------------------------------------------------------------------------
    w = Worker(config, HandwritingJob)
    spec, device, rank, world = w.spec, w.device, w.rank, w.world
    tr, B = spec.train, spec.data.batch_size
    b = B // world

    prepared = load_prepared(config["data_root"])
    train = load_split(prepared, "train")
    valid = load_split(prepared, "valid")
    G = B * tr.accumulate_steps  # sequences per optimizer step
    if len(train) < G:
        raise ValueError(f"{len(train)} training sequences, fewer than data.batch_size x train.accumulate_steps = {G}")
    batches_per_epoch = len(train) // G

    torch.manual_seed(tr.seed)  # identical initial weights on every rank
    model: HandwritingModel = build_model(spec).to(device)
    optimizer = make_optimizer(tr.optimizer, model.parameters())
    seed_rank(tr.seed, rank)
    total_steps = tr.total_steps(batches_per_epoch)  # None: train.time_budget alone bounds the run

    pos, _ = w.restore(model, optimizer, total_steps)
    ddp = ray.train.torch.prepare_model(model)  # DistributedDataParallel when world > 1
    w.start(pos, total_steps, model, batches_per_epoch=batches_per_epoch, unit="batches")
    meta = {"data_root": prepared.root, "content_hash": prepared.content_hash}
    order = epoch_order(tr.seed, pos.epoch, len(train))

    def evaluate(seqs: list[torch.Tensor], cap: int | None = None) -> tuple[float, float]:
        """(per sequence, per point) log-loss on rank 0's unwrapped model, broadcast to every rank."""
        seqs = seqs[:cap] if cap else seqs
        per_seq, per_point = log_loss(model, seqs, spec.data.eval_batch_size) if rank == 0 else (0.0, 0.0)
        return w.broadcast(per_seq), w.broadcast(per_point)

    # ---- training loop ------------------------------------------------------------------------
    window = Window()
    model.train()
    while not w.done(pos):
        if pos.batch == batches_per_epoch:
            pos.epoch, pos.batch = pos.epoch + 1, 0
            order = epoch_order(tr.seed, pos.epoch, len(train))
        t0 = time.perf_counter()
        for i in w.micro_batches(ddp):
            first = pos.batch * G + i * B + rank * b
            points, lengths = pad_sequences([train[int(j)] for j in order[first : first + b]])
            points = points.to(device)
            with w.autocast():
                mix, _ = ddp(teacher_inputs(points))  # through DDP's forward: its backward all-reduces
                loss_sum = sequence_nll(mix, points, lengths).sum()
            w.backward(loss_sum, int(lengths.sum()))
        totals = w.step(pos, model, optimizer)
        if totals is None:  # non-finite: the driver reports it (service.worker.worker)
            return
        pos.step, pos.batch = pos.step + 1, pos.batch + 1
        window.add(*totals, time.perf_counter() - t0)

        if w.log_due(pos):
            per_sequence = window.loss / max(window.steps * G, 1)
            w.log(pos.step, train_nll=per_sequence)
            window = w.log_window(
                pos,
                total_steps,
                window,
                optimizer,
                loss=("train_nll_per_point", window.mean_loss(), "nats/point"),
                rate=("points_per_s", "points/s"),
            )

        if w.eval_due(pos):
            valid_nll, valid_per_point = evaluate(valid, tr.eval_max_sequences)
            over = f"{min(len(valid), tr.eval_max_sequences or len(valid)):,} sequences"
            w.evaluated(pos, over, valid_nll=valid_nll, valid_nll_per_point=valid_per_point)
            if rank == 0 and w.tracker is not None:
                log_samples(spec, model, prepared, w.tracker, f"samples/step_{pos.step:08d}.png", pos.step)

        if w.checkpoint_due(pos):
            w.save_checkpoint(pos, model, optimizer, meta)

    # ---- finish (rank 0): whole-split evaluation, samples, artifacts --------------------------
    if not w.finishes():  # rank 0 finishes, unless preempted
        return
    final_valid, final_valid_per_point = log_loss(model, valid, spec.data.eval_batch_size)
    figures = {}
    if prepared.has_split("test"):
        figures["test_nll"], figures["test_nll_per_point"] = log_loss(
            model, load_split(prepared, "test"), spec.data.eval_batch_size
        )
    curve = {"valid_nll": final_valid, "valid_nll_per_point": final_valid_per_point}
    w.log_final(pos.step, curve=curve, figures=figures)
    assert w.tracker is not None
    example = valid[0][:50].unsqueeze(1).float().numpy()  # (points, batch, 3)
    log_model(w.tracker, model, spec, example, {SCALE_FILE: json.dumps(list(prepared.scale)).encode()})
    log_samples(spec, model, prepared, w.tracker, "samples/final.png", pos.step)
    shared_plots.log_learning_curve(
        w.tracker,
        "train_nll",
        "valid_nll",
        title=spec.name,
        train_label="train NLL",
        valid_label="valid NLL",
        ylabel="nats per sequence",
    )
    if isinstance(model.rnn, HyperLSTM):
        log_scaling_vectors(model, prepared, valid, w.tracker)


def draw_samples(spec: HandwritingJob, model: HandwritingModel, step: int) -> list[np.ndarray]:
    """``train.samples`` sequences drawn with a generator seeded by (seed, step): the training RNG is
    untouched, so drawing does not change the run's numbers."""
    generator = torch.Generator().manual_seed(spec.train.seed * 1_000_003 + step)
    drawn = model.sample(spec.train.sample_length, spec.train.samples, bias=spec.train.sample_bias, generator=generator)
    return [drawn[:, i].numpy() for i in range(drawn.shape[1])]


def in_raw_units(seq: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    out = seq.astype(np.float64).copy()
    out[:, 0] *= scale[0]
    out[:, 1] *= scale[1]
    return out


def log_samples(
    spec: HandwritingJob, model: HandwritingModel, prepared: PreparedStrokes, tracker: RunLog, name: str, step: int
) -> None:
    """A grid of ``train.samples`` generated sequences as the artifact ``name`` (e.g. ``samples/final.png``)."""
    if not spec.train.samples:
        return
    seqs = [in_raw_units(s, prepared.scale) for s in draw_samples(spec, model, step)]
    title = f"{spec.name}: step {step}, {spec.train.sample_length} points, bias {spec.train.sample_bias:g}"
    folder, file = os.path.split(name)
    with tempfile.TemporaryDirectory(prefix="hyperctl-samples-") as tmp:
        path = os.path.join(tmp, file)
        plots.sample_grid(seqs, path, title)
        tracker.log_artifact(path, folder)


def log_scaling_vectors(
    model: HandwritingModel, prepared: PreparedStrokes, valid: list[torch.Tensor], tracker: RunLog
) -> None:
    """The weight-scaling vectors while the model reads the longest of the first 50 validation
    sequences (``plots/scaling_vectors.png``)."""
    assert isinstance(model.rnn, HyperLSTM)
    seq = max(valid[:50], key=len)
    x = seq.unsqueeze(1).to(model.head.weight.device, model.head.weight.dtype)
    d_h, d_x = model.rnn.scaling_vectors(x)
    with tempfile.TemporaryDirectory(prefix="hyperctl-plot-") as tmp:
        path = os.path.join(tmp, "scaling_vectors.png")
        plots.scaling_vectors(
            in_raw_units(seq.numpy(), prepared.scale),
            d_h.cpu(),
            d_x.cpu(),
            path,
            f"HyperLSTM weight-scaling vectors over a validation sequence ({len(seq)} points)",
        )
        tracker.log_artifact(path, "plots")


__all__ = ["draw_samples", "epoch_order", "log_samples", "log_scaling_vectors", "train_loop_per_worker"]
