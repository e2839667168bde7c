"""xmr's training stack (extra ``train``): recipes (bundled in ``xmr/train/recipes``), runs in ``runs/NAME``,
ordinary encoders and indexes out.

Pieces: ``recipe`` (YAML -> validated dataclasses, every problem at once), ``run`` (the run folder, its lock and its
tasks in order), ``loop`` (the one training loop: steps, precision, schedule, checkpoints, resume, signals,
validation), ``tasks`` (one module per method: ``dual-encoder``, ``label-vectors``; the ``TASKS`` registry),
``losses`` (model outputs; multi-positive InfoNCE, decoupled softmax, OHNM triplet, one-vs-all BCE), ``data``,
``batches`` (pairs, random and NGAME clustered plans, label columns), ``mining`` (ANCE hard negatives),
``label_vectors`` (centroid enrichment and the learned label-vector model), ``checkpoint`` (safetensors + JSON,
atomic), ``distributed`` (gather with gradients) and ``log`` (JSONL + curve).
"""

from xmr.train.loop import TrainingInterrupted
from xmr.train.recipe import Recipe, RecipeError, load_recipe
from xmr.train.run import train

__all__ = ["Recipe", "RecipeError", "TrainingInterrupted", "load_recipe", "train"]
