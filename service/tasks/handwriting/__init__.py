"""``task: handwriting``: unconditional handwriting generation with a mixture density output
(paper §4.3, Graves 2013) on the built-in Make Me a Hanzi strokes, IAM-OnDB or stroke-3 ``.npz``.

* :mod:`.spec`: the job class; :mod:`.data`: sources to normalised stroke-3 Parquet; :mod:`.model`:
  the :class:`hypermodels.HandwritingModel` a job describes; :mod:`.loop`: the Ray Train worker
  loop and the run's artifacts; :mod:`.plots`: sample grids and the weight-scaling plot.
"""

from __future__ import annotations

from ..base import Metrics, SummaryAxis, Task, deferred
from .spec import HandwritingJob

TASK: Task[HandwritingJob] = Task(
    name="handwriting",
    job_class=HandwritingJob,
    prepare=deferred(f"{__name__}.data", "prepare_strokes"),
    train_loop=deferred(f"{__name__}.loop", "train_loop_per_worker"),
    data_files=deferred(f"{__name__}.data", "data_files"),
    source_name=deferred(f"{__name__}.data", "source_name"),
    parameter_count=deferred(f"{__name__}.sizes", "parameter_count"),
    check_prepared=deferred(f"{__name__}.data", "check_prepared"),
    metrics=Metrics(
        valid="valid_nll",
        test="test_nll",
        train="train_nll",
        reported=("valid_nll", "valid_nll_per_point", "train_nll", "train_nll_per_point"),
    ),
    summary_axis=SummaryAxis("model.hyper.embed_size", "N_z", log_base=2),
    add_evaluate_arguments=deferred(f"{__name__}.commands", "add_evaluate_arguments"),
    evaluate=deferred(f"{__name__}.use", "evaluate"),
)

__all__ = ["TASK"]
