"""``task: image_classification``: convnets whose kernels a static hypernetwork generates (paper
§3.1): the paper's MNIST convnet and Wide ResNet 40-k, or their free-kernel baselines.

* :mod:`.spec`: the job class; :mod:`.data`: idx files and CIFAR-10 batches to Parquet;
  :mod:`.model`: the convnet a job describes and its parameter counts; :mod:`.loop`: the Ray Train
  worker loop and the run's artifacts; :mod:`.plots`: the generated kernels as a picture;
  :mod:`.use`: a trained model's error on given idx files (``hyperctl evaluate``).
"""

from __future__ import annotations

from ..base import Metrics, SummaryAxis, Task, deferred
from .spec import ImageJob

TASK: Task[ImageJob] = Task(
    name="image_classification",
    job_class=ImageJob,
    prepare=deferred(f"{__name__}.data", "prepare_images"),
    train_loop=deferred(f"{__name__}.loop", "train_loop_per_worker"),
    data_files=deferred(f"{__name__}.data", "data_files"),
    source_name=deferred(f"{__name__}.data", "source_name"),
    parameter_count=deferred(f"{__name__}.sizes", "parameter_count"),
    check_prepared=deferred(f"{__name__}.data", "check_prepared"),
    metrics=Metrics(
        valid="valid_error", test="test_error", train="train_loss", reported=("valid_error", "valid_loss", "train_loss")
    ),
    summary_axis=SummaryAxis("model.hyper.embed_size", "N_z", log_base=2),
    add_evaluate_arguments=deferred(f"{__name__}.commands", "add_evaluate_arguments"),
    evaluate=deferred(f"{__name__}.use", "evaluate"),
)

__all__ = ["TASK"]
