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

import random
from collections.abc import Iterator

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
        self.usable = usable
        self.steps_per_epoch = min(u // local_batch for u in usable)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """The ``steps_per_epoch`` batches of ``epoch`` from the ``skip``-th on (a resume)."""
        order = shards.epoch_order(len(self.ranges), self.seed, epoch)
        carry_src: list[list[int]] = []
        carry_tgt: list[list[int]] = []
        n = 0
        B = self.local_batch
        for k in order:
            if n >= self.steps_per_epoch:
                return
            lo, hi = self.ranges[k][self.rank]
            table = self.split.read(lo, hi)
            keep = (table.column("fit_len").to_numpy() <= self.max_len).nonzero()[0]
            src, tgt = table.column("src").to_pylist(), table.column("tgt").to_pylist()
            rng = random.Random(f"{self.seed}:{epoch}:{k}:{self.rank}")
            picked = [int(i) for i in keep]
            rng.shuffle(picked)
            pool_src = carry_src + [src[i] for i in picked]
            pool_tgt = carry_tgt + [tgt[i] for i in picked]
            del src, tgt, table
            batches: list[Batch] = []
            full = len(pool_src) // B * B
            for start in range(0, full, BUCKET * B):
                run = sorted(range(start, min(start + BUCKET * B, full)), key=lambda i: len(pool_src[i]))
                for b in range(0, len(run), B):
                    idx = run[b : b + B]
                    batches.append(([pool_src[i] for i in idx], [pool_tgt[i] for i in idx]))
            carry_src, carry_tgt = pool_src[full:], pool_tgt[full:]
            rng.shuffle(batches)
            for batch in batches:
                if n >= self.steps_per_epoch:
                    return
                if n >= skip:
                    yield batch
                n += 1


__all__ = ["BUCKET", "Batch", "RankBatches"]
