"""OTSeq2Set: the Seq2Set decoder path of xmr (issue 17).

Cao et al., "An Optimal Transport Enhanced Sequence-to-Set Model for Extreme Multi-label Text Classification"
(reference code caojie54/OTSeq2Set): a GRU decoder with attention over an encoder's token states generates each
query's label SET, trained by bipartite (Hungarian) matching of gold labels to decoder steps plus an optimal
transport distance between predicted and gold label embeddings. Beyond the paper, each query's output layer can be
restricted to a shortlist from an xmr index, so the decoder scales to extreme label counts.

Importing this package registers the training task ``seq2set`` (``method: seq2set`` in a recipe) and the predictor
kind ``seq2set`` (``xmr eval`` / ``load_predictor`` on ``runs/NAME/predictor``).
"""

from xmr.predictor import PREDICTOR_KINDS
from xmr.seq2set.predictor import KIND, Seq2SetPredictor, load_seq2set
from xmr.seq2set.task import Seq2SetTask

PREDICTOR_KINDS[KIND] = "xmr.seq2set.predictor:load_seq2set"

__all__ = ["Seq2SetPredictor", "Seq2SetTask", "load_seq2set"]
