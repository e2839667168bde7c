"""PromptHash (issue 16): cross-modal hashing with affinity prompts and SSM + Transformer fusion, searched as binary
codes in FAISS (the spine's ``faiss-binary`` stage).

Paper: "PromptHash: Affinity-Prompted Collaborative Cross-Modal Learning for Adaptive Hashing Retrieval"; reference
code CCRG-XJU/PromptHash (``hash_model.py``, ``train_asym.py``, ``utils/get_args.py``). Registers the encoder
``prompthash`` (:mod:`.encoder`), the re-rank stage ``hamming-float`` (:mod:`.codes`) and the task ``prompthash``
(:mod:`.task`). Pieces: :mod:`.scan` (selective scan), :mod:`.model` (fusion and hash heads), :mod:`.towers`
(open_clip / sentence-transformers towers, affinity prompts), :mod:`.losses`, :mod:`.metrics` (mAP@k and precision
within Hamming radius 2).
"""

from xmr.prompthash import codes, encoder, task  # noqa: F401  (registration)


