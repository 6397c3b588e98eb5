"""Distillation (``frugalvision distill``): a large teacher teaches a small student that runs cheaply on a CPU.

The teacher is a timm / offline / ``open_clip:`` model name, a model bundle, or an embedding store of its
embeddings (``frugalvision embed``). Its embedding of every *clean* image (its own evaluation preprocessing, no
augmentation) is computed once and cached on disk as an :class:`~frugalvision.embeddings.EmbeddingStore`, so the
teacher never runs during training. The student -- a timm backbone (default ``mobilenetv3_small_100``, from
scratch) + pooling + a linear head to the teacher's dimension + L2 normalisation, i.e. a normal
:class:`~frugalvision.models.EmbeddingModel` -- sees lightly augmented versions of the same photos and learns to
map each to the teacher's embedding of the clean photo, with :class:`~frugalvision.losses.DistillationLoss`
(InfoNCE between student and teacher rows + squared error, Li et al., ICCV 2023). This follows the authors' code,
which also caches the teacher's features of un-augmented images and augments only the student's input. Labels are
never used for training: unlabeled photos distil as well as labelled ones.

Held-out images (``val_split`` / ``val_fraction``, or ``val_data``) measure, every ``eval_every`` epochs and at the
end: the mean cosine between student and teacher embeddings (``val/cosine``), how often the student's nearest
held-out neighbour is the teacher's (``val/nn_agreement``) and, where the images have labels, kNN Recall@1 and
MAP@R of student and teacher on the same images (:func:`frugalvision.metrics.retrieval_metrics`, cosine, each
image querying the others). No epoch is chosen on them: the bundle holds the final weights, so the held-out
numbers are an honest estimate.

What a run leaves in ``out``::

    config.yaml          the resolved DistillConfig
    teacher_cache/       the teacher's embeddings of the images (unless the teacher is a store, or teacher_cache)
    checkpoints/         last.ckpt, written atomically every epoch (resume with resume=True / --resume)
    logs/, tensorboard/  CSV and TensorBoard logs
    model/               the student bundle (frugalvision.load, embed/search/evaluate --model, export to ONNX)

Resuming reaches the same weights as an uninterrupted run: batches and augmentations depend only on
``(seed, epoch)`` and the global generators are re-seeded from ``(seed, epoch, rank)`` at every epoch start, as in
:mod:`frugalvision.train.engine` (``last.ckpt`` is read with ``weights_only=True``).

The loop is the training run scaffold's (:func:`frugalvision.train.run.run_task`, with :class:`DistillRun` as the
task): the ``Trainer``, per-epoch re-seeding, atomic checkpoints, resume checks, the finite-loss check; and the
engine's data module (shuffle sampler), cache extraction by rank 0 and gathering across processes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from frugalvision._lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers; at run time each name is imported on first use (PEP 562)
    from frugalvision.distill.config import DEFAULT_STUDENT, DEFAULT_TEACHER, DistillConfig
    from frugalvision.distill.data import holdout_split
    from frugalvision.distill.run import DistillResult, DistillRun, distill
    from frugalvision.distill.student import build_student, freeze_unused, trainable_parameters
    from frugalvision.distill.task import DistillTask, heldout_metrics, nearest_neighbours
    from frugalvision.distill.teacher import Teacher, resolve_teacher, teacher_embeddings

#: Where each public name lives: importing the package (e.g. for its torch-free ``config`` module) loads no
#: torch; ``from frugalvision.X import name`` imports the one module that defines it.
_MODULES = {
    "DEFAULT_STUDENT": "frugalvision.distill.config",
    "DEFAULT_TEACHER": "frugalvision.distill.config",
    "DistillConfig": "frugalvision.distill.config",
    "holdout_split": "frugalvision.distill.data",
    "DistillResult": "frugalvision.distill.run",
    "DistillRun": "frugalvision.distill.run",
    "distill": "frugalvision.distill.run",
    "build_student": "frugalvision.distill.student",
    "freeze_unused": "frugalvision.distill.student",
    "trainable_parameters": "frugalvision.distill.student",
    "DistillTask": "frugalvision.distill.task",
    "heldout_metrics": "frugalvision.distill.task",
    "nearest_neighbours": "frugalvision.distill.task",
    "Teacher": "frugalvision.distill.teacher",
    "resolve_teacher": "frugalvision.distill.teacher",
    "teacher_embeddings": "frugalvision.distill.teacher",
}

__all__ = [
    "DEFAULT_STUDENT",
    "DEFAULT_TEACHER",
    "DistillConfig",
    "DistillResult",
    "DistillRun",
    "DistillTask",
    "Teacher",
    "build_student",
    "distill",
    "freeze_unused",
    "heldout_metrics",
    "holdout_split",
    "nearest_neighbours",
    "resolve_teacher",
    "teacher_embeddings",
    "trainable_parameters",
]


__getattr__, __dir__ = lazy_exports(__name__, _MODULES)
