"""xmr's training stack (extra ``train``): recipes in ``training/``, runs in ``runs/NAME``, ordinary encoders out.

Pieces: ``recipe`` (YAML -> validated dataclasses), ``losses`` (multi-positive InfoNCE, decoupled softmax, OHNM
triplet), ``batches`` (pairs, random and NGAME clustered plans, label columns), ``mining`` (ANCE hard negatives),
``label_vectors`` (centroid enrichment and learned label vectors), ``checkpoint`` (safetensors + JSON, atomic),
``distributed`` (gather with gradients), ``log`` (JSONL + curve) and ``trainer`` (the loop).
"""

from xmr.train.recipe import Recipe, RecipeError, load_recipe
from xmr.train.trainer import TrainingInterrupted, train

__all__ = ["Recipe", "RecipeError", "TrainingInterrupted", "load_recipe", "train"]
