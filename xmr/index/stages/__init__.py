"""Index stages (see ``base.py``); importing this package registers the built-in ones.

Built in: candidate stages ``faiss`` (dense vectors, any FAISS index), ``faiss-ondisk`` (IVF with on-disk inverted
lists, from ``ray_build``) and ``faiss-binary`` (hash codes, FAISS ``IndexBinary*``); re-rank stage ``exact-dense``
(stored float32 vectors). A new stage is a module here with a ``@register_stage("name")`` class, imported below.
"""

from xmr.index.stages import exact_rerank, faiss_binary, faiss_dense, faiss_ondisk  # noqa: F401  (registers)
from xmr.index.stages.base import (
    STAGES,
    CandidateStage,
    RerankStage,
    Stage,
    register_stage,
    stage_class,
    stage_for,
)

__all__ = ["STAGES", "CandidateStage", "RerankStage", "Stage", "register_stage", "stage_class", "stage_for"]
