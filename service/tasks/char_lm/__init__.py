"""``task: char_lm``: character-level language modelling (paper §4.1-4.2) with truncated BPTT.

* :mod:`.spec`: the job class; :mod:`.data`: PTB char and user corpora to ids; :mod:`.model`: the
  :class:`hypermodels.CharLM` a job describes; :mod:`.loop`: the Ray Train worker loop and the
  run's artifacts (sample text, learning curve, weight-scaling plot).
"""

from __future__ import annotations

from ..base import Metrics, SummaryAxis, Task
from .data import check_prepared, data_files, prepare_text, source_name
from .loop import train_loop_per_worker
from .model import parameter_count
from .spec import CharLMJob

TASK: Task[CharLMJob] = Task(
    name="char_lm",
    job_class=CharLMJob,
    prepare=prepare_text,
    train_loop=train_loop_per_worker,
    data_files=data_files,
    source_name=source_name,
    parameter_count=parameter_count,
    check_prepared=check_prepared,
    metrics=Metrics(valid="valid_bpc", test="test_bpc", train="train_bpc", reported=("valid_bpc", "train_bpc")),
    summary_axis=SummaryAxis("model.hyper.embed_size", "N_z", log_base=2),
)

__all__ = ["TASK"]
