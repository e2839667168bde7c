"""FusionSent (issue 15): two contrastively fine-tuned bodies fused by SLERP, and a multi-label classifier head.

Registers the training task ``fusionsent`` (:mod:`xmr.fusionsent.task`) and the predictor kind ``classifier-head``
(:mod:`xmr.fusionsent.predictor`) with the spine's registries; nothing outside this folder names them.
"""

from xmr.predictor import PREDICTOR_KINDS

PREDICTOR_KINDS["classifier-head"] = "xmr.fusionsent.predictor:load_classifier_head"

from xmr.fusionsent import task  # noqa: E402,F401  (registers the task "fusionsent")
