"""A translation worker's shard of the training batches, in a reproducible order per epoch, with
memory that does not grow with the corpus.

The training split is a list of shards (:mod:`.data`). Worker ``rank`` of ``world`` owns the rows
``[n * rank // world, n * (rank + 1) // world)`` of every shard of ``n`` rows and reads only those
(the row groups that hold them, :class:`service.io.shards.ShardedSplit`), one shard at a time.

Epoch ``e``: the shards are visited in the order :func:`service.io.shards.epoch_order` gives for
``(seed, e)`` (the same on every worker). In each, the worker's pairs that fit ``data.max_len``
are shuffled (seeded by seed, epoch, shard and rank), put after the pairs left over from the shard
before, cut into runs of :data:`BUCKET` batches sorted by source length (length bucketing), and the
full batches of ``local_batch`` pairs taken in a shuffled order; the fewer than ``local_batch`` pairs
left over go on to the next shard. A worker thus has ``floor(usable / local_batch)`` batches an
epoch, and every worker stops at the smallest of these (:attr:`RankBatches.steps_per_epoch`): DDP
needs the same number of steps on each. Held in memory: one shard's share and the left-over pairs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...io import shards
from .data import PreparedCorpus

BUCKET = 50  # batches sorted by length together

Batch = tuple[list[list[int]], list[list[int]]]  # (sources, targets) as subword ids


class RankBatches:
    """The batches of worker ``rank`` of ``world``: ``local_batch`` pairs each (``data.batch_size /
    world x train.accumulate_steps``), pairs longer than ``max_len`` subwords left out."""

    def __init__(
        self, prepared: PreparedCorpus, rank: int, world: int, local_batch: int, max_len: int, seed: int
    ) -> None:
        self.rank, self.world, self.local_batch, self.max_len, self.seed = rank, world, local_batch, max_len, seed
        self.split = shards.ShardedSplit(prepared.root, prepared.train, columns=["src", "tgt", "fit_len"])
        starts = self.split.starts
        self.ranges = [  # per shard, per rank: its rows of the split
            [(starts[k] + n * r // world, starts[k] + n * (r + 1) // world) for r in range(world)]
            for k, n in enumerate(s.rows for s in prepared.train.shards)
        ]
        # usable pairs of every rank: the fit_len column only, a shard at a time
        lengths = shards.ShardedSplit(prepared.root, prepared.train, columns=["fit_len"])
        usable = [0] * world
        for k, per_rank in enumerate(self.ranges):
            if prepared.usable(max_len, k) == 0:
                continue
            column = lengths.read(per_rank[0][0], per_rank[-1][1]).column("fit_len").to_numpy()
            base = per_rank[0][0]
            for r, (lo, hi) in enumerate(per_rank):
                usable[r] += int((column[lo - base : hi - base] <= max_len).sum())
            lengths.close()
        self.usable = usable
        self.steps_per_epoch = min(u // local_batch for u in usable)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """The ``steps_per_epoch`` batches of ``epoch`` from the ``skip``-th on (a resume)."""
        order = shards.epoch_order(len(self.ranges), self.seed, epoch)
        B, n = self.local_batch, 0
        carry: pa.Table | None = None  # the pairs left over from the shard before (fewer than B)
        for k in order:
            if n >= self.steps_per_epoch:
                return
            lo, hi = self.ranges[k][self.rank]
            table = self.split.read(lo, hi)
            keep = np.nonzero(table.column("fit_len").to_numpy() <= self.max_len)[0]
            rng = np.random.default_rng([self.seed, epoch, k, self.rank])
            mine = table.select(["src", "tgt"]).take(pa.array(keep[rng.permutation(len(keep))]))
            pool = (pa.concat_tables([carry, mine]) if carry is not None else mine).combine_chunks()
            del table, mine
            self.split.close()  # one shard's file open at a time
            lengths = pc.list_value_length(pool.column("src")).to_numpy(zero_copy_only=False)
            full = len(pool) // B * B
            batches = []
            for start in range(0, full, BUCKET * B):  # runs of BUCKET batches sorted by source length
                run = start + np.argsort(lengths[start : min(start + BUCKET * B, full)], kind="stable")
                batches += [run[b : b + B] for b in range(0, len(run), B)]
            carry = pool.slice(full)
            for i in rng.permutation(len(batches)):
                if n >= self.steps_per_epoch:
                    return
                if n >= skip:
                    idx = pa.array(batches[i])
                    yield pool.column("src").take(idx).to_pylist(), pool.column("tgt").take(idx).to_pylist()
                n += 1
            del pool
            pa.default_memory_pool().release_unused()  # a shard's buffers go back before the next


__all__ = ["BUCKET", "Batch", "RankBatches"]
