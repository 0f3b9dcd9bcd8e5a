"""``task: char_lm``: character-level language modelling (paper §4.1-4.2) with truncated BPTT.

* :mod:`.spec`: the job class; :mod:`.data`: PTB char and user corpora to ids; :mod:`.model`: the
  :class:`hypermodels.CharLM` a job describes; :mod:`.loop`: the Ray Train worker loop and the
  run's artifacts (sample text, learning curve, weight-scaling plot); :mod:`.use`: a trained model's
  bits per character (``hyperctl evaluate``) and samples (``hyperctl sample``, :mod:`.commands`).
"""

from __future__ import annotations

from ..base import Metrics, SummaryAxis, Task, deferred
from .spec import CharLMJob

TASK: Task[CharLMJob] = Task(
    name="char_lm",
    job_class=CharLMJob,
    prepare=deferred(f"{__name__}.data", "prepare_text"),
    train_loop=deferred(f"{__name__}.loop", "train_loop_per_worker"),
    data_files=deferred(f"{__name__}.data", "data_files"),
    source_name=deferred(f"{__name__}.data", "source_name"),
    parameter_count=deferred(f"{__name__}.sizes", "parameter_count"),
    check_prepared=deferred(f"{__name__}.data", "check_prepared"),
    metrics=Metrics(valid="valid_bpc", test="test_bpc", train="train_bpc", reported=("valid_bpc", "train_bpc")),
    summary_axis=SummaryAxis("model.hyper.embed_size", "N_z", log_base=2),
    add_commands=deferred(f"{__name__}.commands", "add_commands"),
    add_evaluate_arguments=deferred(f"{__name__}.commands", "add_evaluate_arguments"),
    evaluate=deferred(f"{__name__}.use", "evaluate"),
)

__all__ = ["TASK"]
