"""A worker's truncated-BPTT streams read from the sharded split, a window at a time.

The layout is :func:`hypermodels.stream_batches`' (what the loop sliced from the whole split before
the data was sharded, so runs and checkpoints stay comparable): a split of ``n + 1`` ids is cut into
``G`` streams of ``L = ceil(n / G)`` positions; stream ``s`` holds inputs ``ids[s*L : s*L + L]``
and targets ``ids[s*L + 1 : s*L + L + 1]``, clipped at ``n`` and padded (inputs with 0, targets
with ``pad_id``). :class:`Streams` serves positions ``[a, b)`` of streams ``[first, first + count)``
by reading, per stream, only the ids of that window (:meth:`service.io.shards.ShardedSplit.read`),
keeping the last two row groups of each stream decoded (a window is smaller than a row group, so
each group is read once per pass): the memory a worker holds is ``count x (window + 2 row groups)``
ids, whatever the corpus's size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from hypermodels import segments_bits_per_char

from ...io.shards import ShardedSplit
from .data import read_ids

WINDOW_POSITIONS = 2048  # positions per stream held at once (rounded down to whole segments)


class Streams:
    """Streams ``[first, first + count)`` of the ``num_streams``-stream layout of the first
    ``num_ids`` ids of ``split``, served segment by segment (``seq_len`` positions)."""

    def __init__(
        self,
        split: ShardedSplit,
        num_streams: int,
        first: int,
        count: int,
        seq_len: int,
        *,
        num_ids: int | None = None,
        pad_id: int = -100,
        window: int = WINDOW_POSITIONS,
        device: torch.device | str = "cpu",
    ) -> None:
        split.cache_groups = max(split.cache_groups, 2 * count)
        self.split, self.first, self.count, self.seq_len, self.pad_id = split, first, count, seq_len, pad_id
        self.num_ids = split.num_rows if num_ids is None else min(num_ids, split.num_rows)
        self.n = max(self.num_ids - 1, 0)  # inputs (= targets)
        self.length = math.ceil(self.n / num_streams)  # positions per stream (L)
        self.segments = math.ceil(self.length / seq_len)
        self.per_window = max(1, window // seq_len)  # segments per window
        self.device = torch.device(device)
        self._window: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def rows(self, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets ``(b - a, count)`` (int64) at positions ``[a, b)`` of the streams."""
        b = min(b, self.length)
        inputs = torch.zeros(b - a, self.count, dtype=torch.int64)
        targets = torch.full((b - a, self.count), self.pad_id, dtype=torch.int64)
        for j in range(self.count):
            start = (self.first + j) * self.length + a  # the stream's first input in the split
            stop = min((self.first + j) * self.length + b, self.n)
            if stop <= start:
                continue  # a stream wholly past the end: all padding
            ids = read_ids(self.split, start, stop + 1)
            inputs[: stop - start, j] = ids[:-1]
            targets[: stop - start, j] = ids[1:]
        return inputs, targets

    def segment(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment ``index`` (positions ``[index*seq_len, (index+1)*seq_len)``) on the device; the
        window holding it is read when it is not the one held."""
        w = index // self.per_window
        if self._window is None or self._window[0] != w:
            self._window = None  # release the old window before reading the next
            a = w * self.per_window * self.seq_len
            x, y = self.rows(a, a + self.per_window * self.seq_len)
            self._window = (w, x.to(self.device), y.to(self.device))
        _, x, y = self._window
        at = (index - w * self.per_window) * self.seq_len
        return x[at : at + self.seq_len], y[at : at + self.seq_len]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(self.segments):
            yield self.segment(i)


@torch.no_grad()
def bits_per_char(model: Any, split: ShardedSplit, batch_size: int, seq_len: int, num_ids: int | None = None) -> float:
    """:func:`hypermodels.bits_per_char` over the first ``num_ids`` ids of a sharded split (all of
    them by default), read a window at a time: the same streams, segments, order and sums, so the
    same number, in memory independent of the split's size."""
    device = model.decoder.weight.device
    return segments_bits_per_char(
        model, Streams(split, batch_size, 0, batch_size, seq_len, num_ids=num_ids, device=device)
    )


__all__ = ["WINDOW_POSITIONS", "Streams", "bits_per_char"]
