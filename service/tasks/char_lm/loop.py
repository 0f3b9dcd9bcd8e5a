"""The Ray Train worker loop of ``task: char_lm``: data-parallel truncated-BPTT training of a
character-level LM.

Read top to bottom: set up (spec, data, model, optimizer, resume) -> loop over steps (forward,
backward, clip, step; log / eval / checkpoint every so often) -> finish on rank 0 (whole-split
valid and test bpc, a sample, artifacts). What every task's loop shares (checkpoints, the
non-finite stop, MLflow buffering) is in :mod:`service.worker.worker`.

Data layout: the training ids are cut into ``G = data.batch_size x train.accumulate_steps``
contiguous streams (:func:`hypermodels.stream_batches`); rank ``r`` of ``W`` trains on streams
``[r*G/W, (r+1)*G/W)``, as ``k = accumulate_steps`` micro-batches of ``b = batch_size / W`` streams,
reading only those streams' ids from the shards, a window at a time (:mod:`.streams`), and so does
evaluation: a worker's memory does not grow with the corpus.
A step is one ``seq_len`` segment of every stream (the position's batch is the segment's index);
the recurrent state is carried from segment to segment (detached: truncated BPTT), each
micro-batch carrying the state of its own streams, and reset when the epoch wraps. The rank's
state over all its streams is one state (streams on dim 1), as without accumulation.
"""

from __future__ import annotations

import math
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hypermodels import CharLM, HyperLSTM, detach_state, map_state

from ...io.shards import ShardedSplit
from ...io.tracking import MetricBuffer
from ...worker import plots
from ...worker.worker import Window, Worker, log_model, make_optimizer, seed_rank
from .data import PreparedText, load_prepared, open_split, read_ids
from .model import build_model
from .spec import CharLMJob
from .streams import Streams, bits_per_char
from .use import VOCAB_FILE, vocab_document

PAD = -100
SAMPLE_WIDTH = 80


def cat_states(states: list[Any]) -> Any:
    """Micro-batches' recurrent states as one over all their streams (dim 1 of every tensor)."""
    first = states[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(states, dim=1)
    parts = [cat_states(list(p)) for p in zip(*states, strict=True)]
    return type(first)(*parts) if hasattr(first, "_fields") else type(first)(parts)


def split_state(state: Any, k: int) -> list[Any]:
    """:func:`cat_states` undone: ``k`` equal groups of streams."""
    if state is None:
        return [None] * k

    def part(i: int) -> Any:
        return map_state(lambda t: t.chunk(k, dim=1)[i], state)

    return [part(i) for i in range(k)]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train.torch  # deferred: see service.worker.worker

    # ---- set-up -------------------------------------------------------------------------------
    w = Worker(config, CharLMJob)
    spec, device, rank, world = w.spec, w.device, w.rank, w.world
    tr, T, B, k = spec.train, spec.data.seq_len, spec.data.batch_size, spec.train.accumulate_steps

    prepared = load_prepared(config["data_root"])
    vocab_size = len(prepared.vocab)
    train_split = open_split(prepared, "train")
    valid_split = open_split(prepared, "valid")

    torch.manual_seed(tr.seed)  # identical initial weights on every rank
    model: CharLM = build_model(spec, vocab_size).to(device)
    optimizer = make_optimizer(tr.optimizer, model.parameters())
    seed_rank(tr.seed, rank)

    b = B // world  # streams of one micro-batch on this rank
    streams = Streams(train_split, B * k, rank * b * k, b * k, T, pad_id=PAD, device=device)
    segments_per_epoch = streams.segments
    total_steps = tr.total_steps(segments_per_epoch)  # None: train.time_budget alone bounds the run

    pos, state = w.restore(model, optimizer, total_steps)
    states = split_state(state, k)
    ddp = ray.train.torch.prepare_model(model)  # DistributedDataParallel when world > 1
    w.start(pos, total_steps, model, batches_per_epoch=segments_per_epoch, unit="segments")
    meta = {"data_root": prepared.root, "content_hash": prepared.content_hash, "vocab_size": vocab_size}

    def evaluate(split: ShardedSplit, cap: int | None = None) -> tuple[float, int]:
        """Bits per character on rank 0's unwrapped model, broadcast to every rank."""
        n = min(cap + 1, split.num_rows) if cap else split.num_rows
        value = bits_per_char(model, split, spec.data.eval_batch_size, T, num_ids=n) if rank == 0 else 0.0
        return w.broadcast(value), n - 1

    # ---- training loop ------------------------------------------------------------------------
    window = Window()
    model.train()
    while not w.done(pos):
        if pos.batch == segments_per_epoch:  # epoch wrap: start the streams again from zero state
            pos.epoch, pos.batch, states = pos.epoch + 1, 0, [None] * k
        t0 = time.perf_counter()
        inputs, targets = streams.segment(pos.batch)  # (T, b*k): this segment of the rank's streams
        for i in w.micro_batches(ddp):  # streams [i*b, (i+1)*b) of this rank's, with their own state
            x, y = inputs[:, i * b : (i + 1) * b], targets[:, i * b : (i + 1) * b]
            with w.autocast():
                logits, states[i] = ddp(x, states[i])
                loss_sum = F.cross_entropy(
                    logits.reshape(-1, vocab_size), y.reshape(-1), ignore_index=PAD, reduction="sum"
                )
            states[i] = detach_state(states[i])
            w.backward(loss_sum, int((y != PAD).sum()))
        totals = w.step(pos, model, optimizer)
        if totals is None:  # non-finite: the driver reports it (service.worker.worker)
            return
        pos.step, pos.batch = pos.step + 1, pos.batch + 1
        window.add(*totals, time.perf_counter() - t0)

        if w.log_due(pos):
            window = w.log_window(
                pos,
                total_steps,
                window,
                optimizer,
                loss=("train_bpc", window.mean_loss() / math.log(2), "bpc"),
                rate=("tokens_per_s", "tok/s"),
            )

        if w.eval_due(pos):
            valid_bpc, symbols = evaluate(valid_split, tr.eval_max_symbols)
            w.evaluated(pos, f"{symbols:,} symbols", valid_bpc=valid_bpc)

        if w.checkpoint_due(pos):
            w.save_checkpoint(pos, model, optimizer, meta, recurrent_state=cat_states(states))

    # ---- finish (rank 0): whole-split evaluation, a sample, artifacts -------------------------
    if not w.finishes():  # rank 0 finishes, unless preempted
        return
    final_valid = bits_per_char(model, valid_split, spec.data.eval_batch_size, T)
    figures = {}
    if prepared.has_split("test"):
        figures["test_bpc"] = bits_per_char(model, open_split(prepared, "test"), spec.data.eval_batch_size, T)
    w.log_final(pos.step, curve={"valid_bpc": final_valid}, figures=figures)
    assert w.tracker is not None
    finish_artifacts(spec, model, prepared, valid_split, w.tracker)


def wrap(text: str, width: int = SAMPLE_WIDTH) -> str:
    """``text`` with every line broken at spaces to at most ``width`` characters: a viewer (MLflow's
    artifact preview) then shows the lines as written instead of wrapping them mid-word."""
    return "\n".join(textwrap.fill(line, width, break_on_hyphens=False) for line in text.split("\n"))


def finish_artifacts(
    spec: CharLMJob, model: CharLM, prepared: PreparedText, valid_split: ShardedSplit, tracker: MetricBuffer
) -> None:
    """Final model, sampled text, learning curve and (HyperLSTM) weight-scaling plot."""
    model.eval()
    with tempfile.TemporaryDirectory(prefix="hyperctl-artifacts-") as tmp:
        tmp_path = Path(tmp)
        example = (
            read_ids(valid_split, 0, min(spec.data.seq_len, valid_split.num_rows)).view(-1, 1).numpy()
        )  # (seq, batch)
        log_model(tracker, model, spec, example, {VOCAB_FILE: vocab_document(prepared)})
        if spec.train.sample_length:
            prime = read_ids(valid_split, 0, 40).tolist()
            generator = torch.Generator().manual_seed(spec.train.seed)
            sampled = model.sample(prime, spec.train.sample_length, generator=generator)
            text = (
                f"prime ({len(prime)} symbols from the validation split):\n"
                f"{wrap(prepared.to_text(prime))}\n\n"
                f"sample ({len(sampled)} symbols, temperature 1):\n"
                f"{wrap(prepared.to_text(sampled))}\n"
            )
            tracker.log_text(text, "sample.txt")

        plots.log_learning_curve(
            tracker,
            "train_bpc",
            "valid_bpc",
            title=spec.name,
            train_label="train bpc",
            valid_label="valid bpc",
            ylabel="bits per character",
        )

        if isinstance(model.rnn, HyperLSTM):
            snippet = read_ids(valid_split, 0, plots.SCALING_VIEW_STEPS)
            device = model.decoder.weight.device
            x = F.one_hot(snippet.to(device), len(prepared.vocab)).to(model.decoder.weight.dtype).unsqueeze(1)
            d_h, d_x = model.rnn.scaling_vectors(x)
            plots.scaling_vectors(
                d_h.cpu(),
                d_x.cpu(),
                [prepared.to_text([i]) for i in snippet.tolist()],
                str(tmp_path / "scaling_vectors.png"),
            )
            tracker.log_artifact(str(tmp_path / "scaling_vectors.png"), "plots")


__all__ = ["cat_states", "finish_artifacts", "split_state", "train_loop_per_worker", "wrap"]
