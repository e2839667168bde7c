"""A UWE index folder: FAISS over the pooled vectors, then the ``late-interaction`` re-rank of the top ``rerank``.

Built through the spine's ``build_index_from_embeddings`` (an index recipe with ``rerank: K`` picks the token
representation's default stages, ``faiss-pooled`` and ``late-interaction``); what is added here is handing the
encoder's late-interaction temperature and target mode to the re-rank stage, so the folder scores as the model was
trained. Each target space (skills, occupations, sentences) is one such folder: its token vectors are computed once
and cached, and a query costs one encoder pass, one FAISS search and a K-candidate re-rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xmr.catalogue import LabelCatalogue
from xmr.encoders import Encoder, load_encoder
from xmr.errors import XMRError
from xmr.index import LabelIndex, build_index_from_embeddings
from xmr.index.recipes import IndexRecipe
from xmr.representations import TokenVectors
from xmr.uwe.encoder import LateInteractionEncoder
from xmr.uwe.stages import LateInteractionRerank

DEFAULT_RERANK = 100


def build_uwe_index(catalogue: LabelCatalogue | str | Path, encoder: Encoder | str | Mapping[str, Any],
                    out: str | Path | None, rerank: int = DEFAULT_RERANK, factory: str = "Flat",
                    labels: TokenVectors | None = None) -> LabelIndex:
    """Encode the catalogue's labels (or take ``labels``), index the pooled vectors with ``factory`` and keep the
    token vectors for a late-interaction re-rank of the top ``rerank`` candidates; ``out=None`` keeps it in memory."""
    if not isinstance(catalogue, LabelCatalogue):
        catalogue = LabelCatalogue.from_file(catalogue)
    encoder = load_encoder(encoder)
    if not isinstance(encoder, LateInteractionEncoder):
        raise XMRError(f"a UWE index needs a uwe-late-interaction encoder, got {encoder.type_name!r}")
    if labels is None:
        labels = encoder.encode(catalogue.items(), "label")
    recipe = IndexRecipe("uwe", factory, rerank=rerank, reason="UWE: FAISS over pooled vectors, late-interaction "
                                                               "re-rank of the top candidates")
    index = build_index_from_embeddings(catalogue, labels, None, encoder=encoder, recipe=recipe)
    stage = index.rerankers[0]
    if not isinstance(stage, LateInteractionRerank):
        raise XMRError(f"token indexes re-rank with late-interaction, got {stage.type_name}")
    stage.temperature, stage.target = encoder.temperature, encoder.target
    index._record_stages()
    if out is not None:
        index.save(out)
    return index
