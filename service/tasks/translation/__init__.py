"""``task: translation``: an attention encoder-decoder whose recurrent layers are HyperLSTMs or the
LSTM baselines (the paper's GNMT experiment, §4.4), on Multi30k or user parallel corpora.

* :mod:`.spec`: the job class; :mod:`.data`: parallel corpora checked pair by pair, sentencepiece
  subwords, Parquet splits; :mod:`.model`: the :class:`hypermodels.Seq2Seq` a job describes;
  :mod:`.loop`: the Ray Train worker loop and the run's artifacts; :mod:`.translate`: beam search,
  sacreBLEU, loading a trained model; :mod:`.commands`: ``hyperctl translate``; :mod:`.plots`:
  attention heatmaps.
"""

from __future__ import annotations

from ..base import Metrics, SummaryAxis, Task, deferred
from .spec import OLD_NAMES, TASK_NAME, TranslationJob

TASK: Task[TranslationJob] = Task(
    name=TASK_NAME,
    job_class=TranslationJob,
    prepare=deferred(f"{__name__}.data", "prepare_corpus"),
    train_loop=deferred(f"{__name__}.loop", "train_loop_per_worker"),
    data_files=deferred(f"{__name__}.data", "data_files"),
    source_name=deferred(f"{__name__}.data", "source_name"),
    parameter_count=deferred(f"{__name__}.sizes", "parameter_count"),
    check_prepared=deferred(f"{__name__}.data", "check_prepared"),
    metrics=Metrics(
        valid="valid_bleu",
        test="test_bleu",
        train="train_ppl",
        reported=("valid_bleu", "valid_ppl", "train_ppl"),
        higher_is_better=frozenset({"valid_bleu"}),
    ),
    summary_axis=SummaryAxis("model.hyper.embed_size", "N_z", log_base=2),
    add_commands=deferred(f"{__name__}.commands", "add_commands"),
    add_evaluate_arguments=deferred(f"{__name__}.commands", "add_evaluate_arguments"),
    evaluate=deferred(f"{__name__}.translate", "evaluate"),
    aliases=OLD_NAMES,
)

__all__ = ["TASK"]
