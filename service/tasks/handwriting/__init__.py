"""``task: handwriting``: unconditional handwriting generation with a mixture density output
(paper §4.3, Graves 2013) on the built-in Make Me a Hanzi strokes, IAM-OnDB or stroke-3 ``.npz``.

* :mod:`.spec`: the job class; :mod:`.data`: sources to normalised stroke-3 Parquet; :mod:`.model`:
  the :class:`hypermodels.HandwritingModel` a job describes; :mod:`.loop`: the Ray Train worker
  loop and the run's artifacts; :mod:`.plots`: sample grids and the weight-scaling plot.
"""

from __future__ import annotations

from ..base import Metrics, SummaryAxis, Task
from .data import data_files, prepare_strokes, source_name
from .loop import train_loop_per_worker
from .model import parameter_count
from .spec import HandwritingJob

TASK: Task[HandwritingJob] = Task(
    name="handwriting",
    job_class=HandwritingJob,
    prepare=prepare_strokes,
    train_loop=train_loop_per_worker,
    data_files=data_files,
    source_name=source_name,
    parameter_count=parameter_count,
    metrics=Metrics(
        valid="valid_nll",
        test="test_nll",
        train="train_nll",
        reported=("valid_nll", "valid_nll_per_point", "train_nll", "train_nll_per_point"),
    ),
    summary_axis=SummaryAxis("model.hyper.embed_size", "N_z", log_base=2),
)

__all__ = ["TASK"]
