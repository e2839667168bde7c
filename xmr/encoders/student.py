"""A layer-reduced student of a sentence-transformers encoder, distilled to give its query vectors fast.

The student is the teacher's own model with some of its transformer layers kept, spread over its depth (xmr's
default: every other layer). Initialising the student from the teacher's layers is the layer-reduction recipe of
sentence-transformers' distillation examples and of DistilBERT (Sanh et al. 2019, section 3). It is trained so that
its vector of a text, read up to ``max_seq_length`` tokens, equals the teacher's query vector of the whole text. The
loss is the mean squared error between the two (Reimers & Gurevych 2020, *Making Monolingual Sentence Embeddings
Multilingual using Knowledge Distillation*, section 2: ``1/|B| sum_j ||M(s_j) - M^(s_j)||^2`` with the teacher
``M`` fixed), trained by sentence-transformers' own ``SentenceTransformerTrainer`` and ``losses.MSELoss``. The
student's vectors live in the teacher's space, so an index's label vectors (encoded by the teacher, or learned over
its query vectors) are searched by them as they are.

Fewer layers make each query cheaper than the teacher truncated to the same tokens (``onnx-int8``); training
recovers what the dropped layers gave, not the words cut off (on Reuters a 4-of-6-layer student at 48 tokens has the
6-layer teacher's P@1 at 48 tokens, ``eval/bench/fast-queries/FINDINGS.md``). ``xmr fast-queries --method student``
runs it on ONNX Runtime int8 (:mod:`xmr.encoders.onnx_runtime`). On disk a student is one safetensors file of its
weights: tokenizer, pooling and normalisation are the teacher's, loaded from the teacher's model (``model``) and cut
to ``layers``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from xmr.encoders.base import register_encoder, write_encoder_config
from xmr.encoders.sentence_transformer import SentenceTransformerEncoder
from xmr.errors import EncoderError
from xmr.io.atomic import sha256_file

if TYPE_CHECKING:
    import torch

WEIGHTS_FILE = "student.safetensors"  # in an encoder folder written by save()
INSTALL_HINT = "pip install 'xmr[train]' (sentence-transformers' trainer needs datasets and accelerate)"


@register_encoder("sentence-transformers-student")
class StudentEncoder(SentenceTransformerEncoder):
    """The sentence-transformers model ``model`` cut to its transformer ``layers`` (indices into the teacher's, in
    order), with the student's trained ``weights`` (safetensors of the whole model's state; None: the teacher's
    own layers, untrained). Other options are :class:`SentenceTransformerEncoder`'s.

    ``distilled_from`` (the teacher's identity), ``distillation`` (how) and the weights' SHA-256 are part of the
    identity, not the weights' path, so a copied index folder still matches its student.
    """

    runtime_keys: ClassVar[frozenset[str]] = SentenceTransformerEncoder.runtime_keys | {"weights"}

    def __init__(self, model: str, layers: Sequence[int], weights: str | None = None,
                 weights_sha256: str | None = None, distilled_from: Mapping[str, Any] | None = None,
                 distillation: Mapping[str, Any] | None = None, **options: Any) -> None:
        self.layers = [int(layer) for layer in layers]
        self.weights_path = Path(weights) if weights is not None else None
        self.weights_sha256 = None
        if self.weights_path is not None:
            if not self.weights_path.is_file():
                raise EncoderError(f"{weights}: the student's weights file is missing")
            self.weights_sha256 = sha256_file(self.weights_path)
            if weights_sha256 is not None and weights_sha256 != self.weights_sha256:
                raise EncoderError(f"{weights}: SHA-256 {self.weights_sha256[:12]}... differs from the config's "
                                   f"{weights_sha256[:12]}...")
        self.distilled_from = dict(distilled_from) if distilled_from is not None else None
        self.distillation = dict(distillation) if distillation is not None else None
        super().__init__(model, **options)

    def _adapt_model(self) -> None:
        """Keep ``layers`` of the transformer, then load the student's weights (before any ONNX export)."""
        network, layer_list = transformer_layers(self.model, self.model_name)
        count = len(layer_list)
        if not self.layers or len(set(self.layers)) != len(self.layers) or not all(
                0 <= layer < count for layer in self.layers):
            raise EncoderError(f"layers {self.layers}: distinct indices of the teacher's {count} transformer layers "
                               f"(0 to {count - 1}) are needed")
        kept = type(layer_list)([layer_list[layer] for layer in self.layers])
        replace_layers(network, layer_list, kept)
        network.config.num_hidden_layers = len(self.layers)
        if self.weights_path is not None:
            from safetensors.torch import load_model

            try:
                load_model(self.model, str(self.weights_path), strict=True, device="cpu")
            except (OSError, RuntimeError, ValueError) as error:
                raise EncoderError(f"{self.weights_path}: not this student's weights ({len(self.layers)} layers "
                                   f"of {self.model_name!r}): {str(error).splitlines()[0]}") from None

    def _export_variant(self) -> str | None:
        return f"student layers={self.layers} weights={self.weights_sha256}"

    def write_weights(self, path: Path) -> None:
        """The student's weights as safetensors at ``path`` (torch backend: ONNX runs hold no torch weights)."""
        self._require_torch("write_weights")
        from safetensors.torch import save_model

        save_model(self.model, str(path))

    def save(self, folder: str | Path) -> Path:
        """An encoder folder: ``xmr_encoder.json`` and the weights (``student.safetensors``); the config names the
        teacher's model, which the student is loaded from."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.write_weights(folder / WEIGHTS_FILE)
        write_encoder_config(folder, self.config() | {"weights": WEIGHTS_FILE, "device": None,
                                                      "weights_sha256": sha256_file(folder / WEIGHTS_FILE)})
        return folder

    def config(self) -> dict[str, Any]:
        return super().config() | {
            "layers": self.layers,
            "weights": str(self.weights_path) if self.weights_path is not None else None,
            "weights_sha256": self.weights_sha256,
            "distilled_from": self.distilled_from,
            "distillation": self.distillation,
        }


def transformer_layers(model: Any, model_name: str) -> tuple[torch.nn.Module, torch.nn.ModuleList]:
    """The transformers network of a sentence-transformers model and its list of transformer layers: the one
    ``ModuleList`` as long as ``config.num_hidden_layers`` (``encoder.layer`` in BERT, ``transformer.layer`` in
    DistilBERT, ``layers`` in ModernBERT), found by shape because architectures name it differently."""
    import torch

    network = getattr(model[0], "auto_model", None)
    count = getattr(getattr(network, "config", None), "num_hidden_layers", None)
    lists = [module for module in network.modules() if isinstance(module, torch.nn.ModuleList)
             and len(module) == count] if network is not None and count else []
    if len(lists) != 1:
        raise EncoderError(f"model {model_name!r}: a student keeps some of a transformer's layers, but no single "
                           f"list of its {count} layers was found")
    return network, lists[0]


def replace_layers(network: torch.nn.Module, old: torch.nn.ModuleList, new: torch.nn.ModuleList) -> None:
    """Put ``new`` where ``old`` is in ``network``."""
    for name, module in network.named_modules():
        if module is old:
            parent_name, _, attribute = name.rpartition(".")
            setattr(network.get_submodule(parent_name) if parent_name else network, attribute, new)
            return


def every_other_layer(teacher: SentenceTransformerEncoder) -> list[int]:
    """The default student: layers 0, 2, 4, ... of the teacher (half its depth)."""
    _, layer_list = transformer_layers(teacher.model, teacher.model_name)
    return list(range(0, len(layer_list), 2))


def distill_student(teacher: SentenceTransformerEncoder, folder: str | Path, corpus: Sequence[str],
                    layers: Sequence[int] | None = None, max_seq_length: int | None = None, epochs: int = 10,
                    learning_rate: float = 2e-4, batch_size: int = 32, seed: int = 42) -> StudentEncoder:
    """A student of ``teacher`` (on its ``layers``, reading ``max_seq_length`` tokens) trained on ``corpus`` to give
    the teacher's query vectors; its weights are written to ``folder/student.safetensors``."""
    if type(teacher) is not SentenceTransformerEncoder or teacher.backend != "torch":
        raise EncoderError(f"a student is distilled from a sentence-transformers encoder on backend 'torch', not "
                           f"{getattr(teacher, 'type_name', type(teacher).__name__)!r}")
    texts = [text for text in corpus if text.strip()]
    if not texts:
        raise EncoderError("distilling a student needs a corpus of query-like texts (--corpus)")
    try:
        from datasets import Dataset
        from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
        from sentence_transformers.sentence_transformer import losses
    except ImportError as error:
        raise EncoderError(f"distilling a student needs sentence-transformers' trainer ({error}); "
                           f"{INSTALL_HINT}") from None
    layers = list(layers) if layers is not None else every_other_layer(teacher)
    options = {key: value for key, value in teacher.config().items() if key not in ("type", "dim")}
    if max_seq_length is not None:
        options["max_seq_length"] = max_seq_length
    student = StudentEncoder(layers=layers, distilled_from=teacher.identity(), **options)
    targets = teacher.encode_queries(texts)  # the whole text, at the teacher's own length
    if teacher.normalize:  # encode() normalises; the trained forward pass must too (no state: not saved)
        from sentence_transformers.sentence_transformer.modules import Normalize

        if not any(isinstance(module, Normalize) for module in student.model):
            student.model.append(Normalize())
    dataset = Dataset.from_dict({"text": texts, "label": targets.tolist()})
    with tempfile.TemporaryDirectory(prefix=".xmr-student-") as scratch:
        arguments = SentenceTransformerTrainingArguments(
            output_dir=scratch, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
            learning_rate=learning_rate, seed=seed, save_strategy="no", report_to="none", logging_strategy="epoch",
            prompts=teacher.query_prompt or None, use_cpu=teacher.device == "cpu", disable_tqdm=True,
            dataloader_pin_memory=False)
        trainer = SentenceTransformerTrainer(model=student.model, args=arguments, train_dataset=dataset,
                                             loss=losses.MSELoss(student.model))
        trainer.train()
    losses_by_epoch = [round(entry["loss"], 6) for entry in trainer.state.log_history if "loss" in entry]
    student.model.eval()
    path = Path(folder) / WEIGHTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    student.write_weights(path)
    recipe = {"method": "layer-reduction", "loss": "mse", "corpus": len(texts), "epochs": epochs,
              "learning_rate": learning_rate, "batch_size": batch_size, "seed": seed, "loss_by_epoch": losses_by_epoch}
    return StudentEncoder(layers=layers, weights=str(path), distilled_from=teacher.identity(), distillation=recipe,
                          **options)
