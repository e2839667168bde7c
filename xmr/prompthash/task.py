"""Task ``prompthash``: trains a :class:`~xmr.prompthash.encoder.PromptHashEncoder` through the shared loop
(reference ``train_asym.py``: ``train_epoch``, ``compute_loss``, the per-epoch ``bbuf`` refresh).

A training item is a pair of views with labels. Image data (records with an image): the image and its text (the
caption). Text-only data: the query text in the image slot and, as its "caption", the name of one of its labels
(drawn per epoch from the seed), so that catalogue labels, encoded alone through the text slot, are what queries
are trained to meet. Every item also has its affinity prompt built from all its label names. Per batch: the
towers' features (open_clip blocks that are unfrozen get gradients; frozen text towers are encoded once), the
hash net with partners dropped at ``partner_dropout``, the memory banks updated with the batch's codes, then the
losses of :mod:`xmr.prompthash.losses`; ``B = sign(F + G)`` is refreshed at every epoch boundary. Parameter
groups follow the reference: towers' unfrozen blocks at ``tower_lr`` (its ``clip_lr * 10``), the fusion at
``fusion_lr`` (``lr * 0.1``), the rest of the hash net and the prompt context at ``lr``.

Two departures from the reference's initialisation, each off by default (``init: random``, ``bank_init: random``
reproduce it): ``init: itq`` starts the hash heads from PCA-ITQ of the tower features with the residual paths at
identity (:meth:`PromptHashTask.start_from_itq`), and ``bank_init: codes`` starts the memory banks, hence ``B``,
from the initial network's codes instead of random rows (:meth:`PromptHashTask.initial_codes`). They matter where
the towers are frozen text encoders and training is short (ESCO: one or two epochs over catalogue queries); the
label-sharing similarity of the banks is computed sparsely (:func:`~xmr.prompthash.losses.sparse_label_similarity`).

Outputs: ``runs/NAME/prompthash/{best,last}`` (encoder folders) and ``runs/NAME/index``: the catalogue's labels
hashed at ``hash_index.bits`` in a ``faiss-binary`` index (manifest representation: binary, hamming, bits), with
the ``hamming-float`` re-rank when ``hash_index.rerank > 0``; ``xmr eval`` scores it like any index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse
import torch

from xmr.datasets import Instances
from xmr.encoders import load_encoder
from xmr.errors import XMRError
from xmr.evaluation import evaluate
from xmr.index import build_index, build_index_from_embeddings
from xmr.index.recipes import IndexRecipe
from xmr.io.atomic import write_folder_atomically
from xmr.prompthash.encoder import PromptHashEncoder, item_parts
from xmr.prompthash.itq import fit_itq
from xmr.prompthash.losses import LossWeights, MemoryBank, prompthash_loss, sparse_label_similarity
from xmr.prompthash.metrics import hamming_map, multi_hot
from xmr.prompthash.towers import ClipTowers, prompt_text
from xmr.train.batches import random_plan
from xmr.train.recipe import DataSpec
from xmr.train.tasks import register_task
from xmr.train.tasks.base import LoopSettings, ParameterGroup, Task, TaskContext


@dataclass
class PromptHashSpec:
    """The ``prompthash`` section: towers, code lengths, training budget and the loss weights."""

    towers: dict[str, Any] = field(default_factory=lambda: {"kind": "open_clip", "model": "prompthash-tiny-clip",
                                                            "unfreeze_last": 2})
    bits: list[int] = field(default_factory=lambda: [16, 32, 64])
    auxiliary_bits: int = 256
    mlp_layers: int = 2
    dropout: float = 0.5
    partner_dropout: float = 0.5  # a pair's partner replaced by the absent token (single-modality codes)
    prompt: bool = True  # the affinity prompt and its local alignment
    init: str = "random"  # random (the reference) | itq: heads from PCA-ITQ of the tower features, see start_from_itq
    bank_init: str = "random"  # random rows (the reference) | codes: the initial network's codes of every item
    epochs: int = 20
    batch_size: int = 32
    lr: float = 2e-3  # hash net and prompt context (reference --lr)
    fusion_lr: float = 2e-4  # reference: lr * 0.1
    tower_lr: float = 1e-5  # unfrozen tower blocks (reference: clip_lr * 10)
    weight_decay: float = 0.01
    warmup: float = 0.05
    validate_every_epochs: int = 1
    loss: LossWeights = field(default_factory=LossWeights)


@dataclass
class HashIndexSpec:
    """``runs/NAME/index``: which code length, the binary factory, its search knobs, float re-rank depth."""

    bits: int = 64
    factory: str = "BFlat"
    search: dict[str, int] = field(default_factory=dict)
    rerank: int = 0


@dataclass
class PromptHashSections:
    data: DataSpec
    prompthash: PromptHashSpec = field(default_factory=PromptHashSpec)
    hash_index: HashIndexSpec = field(default_factory=HashIndexSpec)


@register_task("prompthash")
class PromptHashTask(Task):
    """PromptHash training (see the module docstring)."""

    sections = PromptHashSections
    distributed = False
    selection_metrics = ("mAP", "mAP I->T", "mAP T->I")  # cross-modal, with open_clip towers (see validate)

    @classmethod
    def check(cls, sections: PromptHashSections) -> list[str]:
        spec, problems = sections.prompthash, []
        if sections.hash_index.bits not in spec.bits:
            problems.append(f"hash_index.bits: {sections.hash_index.bits} is not one of prompthash.bits {spec.bits}")
        problems += [f"prompthash.bits: {b} is not a positive multiple of 8" for b in [*spec.bits, spec.auxiliary_bits]
                     if b < 8 or b % 8]
        problems += [f"prompthash.{name}: must be at least 1" for name in ("epochs", "batch_size",
                                                                          "validate_every_epochs")
                     if getattr(spec, name) < 1]
        problems += [f"prompthash.{name}: must be at least 0" for name in ("lr", "fusion_lr", "tower_lr",
                                                                          "weight_decay")
                     if getattr(spec, name) < 0]
        if not 0 <= spec.partner_dropout < 1:
            problems.append("prompthash.partner_dropout: a probability in [0, 1)")
        if spec.init not in ("random", "itq"):
            problems.append(f"prompthash.init: random or itq, got {spec.init!r}")
        if spec.bank_init not in ("random", "codes"):
            problems.append(f"prompthash.bank_init: random or codes, got {spec.bank_init!r}")
        if spec.towers.get("kind") not in ("open_clip", "sentence-transformers"):
            problems.append("prompthash.towers.kind: open_clip or sentence-transformers")
        if sections.hash_index.rerank < 0:
            problems.append("hash_index.rerank: must be at least 0")
        return problems

    def __init__(self, context: TaskContext) -> None:
        super().__init__(context)
        self.spec: PromptHashSpec = context.sections.prompthash
        spec, seed = self.spec, context.recipe.seed
        data = context.data()
        self.data, self.labels, pairs = data, data.labels, data.pairs
        self.encoder = PromptHashEncoder(spec.towers, {"bits": spec.bits, "auxiliary_bits": spec.auxiliary_bits,
                                                       "mlp_layers": spec.mlp_layers, "dropout": spec.dropout},
                                         bits=context.sections.hash_index.bits, seed=seed)
        self.towers = self.encoder.towers
        self.clip = isinstance(self.towers, ClipTowers)
        self.positives = pairs.positives
        self.incidence = scipy.sparse.csr_matrix(  # (items, labels): S of the memory banks, kept sparse
            (np.ones(sum(map(len, pairs.positives)), np.float32),
             np.concatenate([np.asarray(rows, np.int64) for rows in pairs.positives]),
             np.cumsum([0, *map(len, pairs.positives)])), shape=(len(pairs), len(self.labels)))
        parts = [item_parts(item) for item in pairs.queries]
        names = self.labels.texts
        prompts = [prompt_text(self.towers.prompt_template, [names[r] for r in rows]) for rows in pairs.positives]
        self.prompts = prompts
        if self.clip:
            missing = [row for row, (path, text) in enumerate(parts) if path is None or text is None]
            if missing:
                raise XMRError(f"{context.sections.data.train}: open_clip towers train on image + text pairs; "
                               f"training item {missing[0]} lacks one ({str(pairs.queries[missing[0]])[:80]})")
            self.pixels = self.towers.pixels([path for path, _ in parts])
            self.captions = self.towers.tokens([text for _, text in parts])
            self.prompt_tokens = self.towers.tokens(prompts)
        else:
            context.say(f"prompthash: encoding {len(parts)} training queries and {len(self.labels)} labels once with "
                        "the frozen text tower")
            self.query_features = torch.from_numpy(self.towers.encode([text for _, text in parts], "query"))
            self.label_features = torch.from_numpy(self.towers.encode(list(names), "label"))
        self.bank = MemoryBank(len(pairs), [*spec.bits, spec.auxiliary_bits], seed)
        self.plan: list[np.ndarray] = []
        self.caption_rows = np.zeros(len(pairs), dtype=np.int64)  # text-only: the label that is each item's caption
        self.last_terms: dict[str, float] = {}
        if spec.init == "itq":
            self.start_from_itq()
        self.encoder.train_mode(True)
        context.say(f"prompthash: {len(pairs)} items, {len(self.labels)} labels, codes {spec.bits} + "
                    f"{spec.auxiliary_bits}, towers {self.towers.kind}")

    # ---- what the loop drives --------------------------------------------------------------------------------
    def settings(self) -> LoopSettings:
        spec = self.spec
        batches = math.ceil(len(self.positives) / spec.batch_size)
        validating = self.data.validation is not None
        return LoopSettings(batches, max_steps=spec.epochs * batches, weight_decay=spec.weight_decay,
                            warmup=spec.warmup, lr_schedule="linear", clip_norm=1.0, precision="fp32",
                            validate_every=batches * spec.validate_every_epochs if validating else None,
                            validate_before=validating, validate_at_end=validating)

    def parameter_groups(self) -> list[ParameterGroup]:
        net = self.encoder.net
        fusion = list(net.fusion.parameters())
        fusion_ids = {id(p) for p in fusion}
        head = [p for p in net.parameters() if id(p) not in fusion_ids] + [self.towers.ctx]
        groups = [ParameterGroup("hash", head, self.spec.lr), ParameterGroup("fusion", fusion, self.spec.fusion_lr)]
        tower = self.towers.trainable_tower_parameters()
        if tower:
            groups.append(ParameterGroup("towers", tower, self.spec.tower_lr))
        return groups

    def begin_epoch(self, epoch: int) -> int:
        seed = self.context.recipe.seed
        if epoch > 0:
            self.bank.refresh()  # B = sign(F + G) from the codes the last epoch wrote
        rng = np.random.default_rng([seed, epoch, 11])
        self.caption_rows = np.array([rows[rng.integers(len(rows))] for rows in self.positives], dtype=np.int64)
        if epoch == 0 and self.spec.bank_init == "codes":  # (a resumed run restores its bank instead)
            self.bank.fill(*self.initial_codes())
        self.plan = random_plan(len(self.positives), self.spec.batch_size, seed, epoch)
        return len(self.plan)

    def pair_features(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The towers' image-slot and text-slot features of training items ``rows`` (text-only: the query and the
        label drawn as its caption this epoch)."""
        index = torch.from_numpy(rows)
        if self.clip:
            return self.towers.image(self.pixels[index]), self.towers.text(self.captions[index])
        return self.query_features[index], self.label_features[torch.from_numpy(self.caption_rows[rows])]

    @torch.no_grad()
    def start_from_itq(self) -> None:
        """``prompthash.init: itq``: PCA-ITQ (:func:`~xmr.prompthash.itq.fit_itq`) of the training items' tower
        features (text-only: the queries and every catalogue label) becomes each hash head that fits (code lengths
        up to the feature width and the number of vectors; a longer code keeps its random head), through
        :meth:`~xmr.prompthash.model.HashNet.start_from_linear_hash`, so step 0's codes are the ITQ codes."""
        if self.clip:
            parts = [self.pair_features(rows) for rows in np.array_split(np.arange(len(self.positives)),
                                                                          max(1, len(self.positives) // 256))]
            vectors = torch.cat([torch.cat(pair) for pair in parts]).numpy()
        else:
            vectors = torch.cat([self.query_features, self.label_features]).numpy()
        net = self.encoder.net
        heads = {}
        for bits in net.all_bits:
            if bits <= min(vectors.shape[1], len(vectors)):
                weight, bias = fit_itq(vectors, bits)
                heads[bits] = (torch.from_numpy(weight), torch.from_numpy(bias))
        net.start_from_linear_hash(heads)
        self.context.say(f"prompthash: hash heads {sorted(heads)} start from PCA-ITQ of {len(vectors)} tower vectors")

    @torch.no_grad()
    def initial_codes(self) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """``(F, G)``: every item's continuous codes from the current network, each side hashed alone (the codes
        an index stores and a query sends), for ``bank_init: codes``. The reference's random rows make epoch 0's
        quantisation target ``B`` and long-code target random: with one or two epochs most of the loss then fits
        noise (the first ESCO run: 150 of its 300 loss units were reconstructions of a random long code)."""
        net = self.encoder.net
        self.encoder.train_mode(False)
        image: dict[int, list[torch.Tensor]] = {bits: [] for bits in net.all_bits}
        text: dict[int, list[torch.Tensor]] = {bits: [] for bits in net.all_bits}
        try:
            for rows in np.array_split(np.arange(len(self.positives)), max(1, len(self.positives) // 256)):
                image_features, text_features = self.pair_features(rows)
                for side, codes in ((image, net.codes(net.fuse(image_features, None)[0])),
                                    (text, net.codes(net.fuse(None, text_features)[1]))):
                    for bits, values in codes.items():
                        side[bits].append(values)
        finally:
            self.encoder.train_mode(True)
        return ({bits: torch.cat(parts) for bits, parts in image.items()},
                {bits: torch.cat(parts) for bits, parts in text.items()})

    def forward(self, position: int, rng: np.random.Generator) -> Any:
        rows = self.plan[position]
        index = torch.from_numpy(rows)
        image, text = self.pair_features(rows)
        prompt = None
        if self.spec.prompt:
            prompt = self.towers.prompt(self.prompt_tokens[index]) if self.clip else self.text_prompts(rows)
        p = self.spec.partner_dropout
        drop_image = torch.from_numpy(rng.random(len(rows)) < p)
        drop_text = torch.from_numpy(rng.random(len(rows)) < p)
        output = self.encoder.net(image, text, prompt, drop_image, drop_text)
        self.bank.update(index, output)  # the reference writes the batch's codes before the loss
        return output, index

    def text_prompts(self, rows: np.ndarray) -> torch.Tensor:
        """Prompt features of the batch, each distinct prompt (label set) run through the text tower once."""
        distinct, position = np.unique([self.prompts[row] for row in rows], return_inverse=True)
        return self.towers.prompt(self.towers.tokens(list(distinct)))[torch.from_numpy(position.reshape(-1))]

    def loss(self, output: Any) -> torch.Tensor:
        result, index = output
        similarity = sparse_label_similarity(self.incidence, index.numpy())
        terms = prompthash_loss(result, index, similarity, self.bank, self.spec.bits, self.spec.auxiliary_bits,
                                self.spec.loss)
        self.last_terms = {name: float(value.detach()) for name, value in terms.items()}
        return sum(terms.values())

    def validate(self) -> dict[str, float] | None:
        """``evaluate`` of the validation queries against the labels hashed at ``hash_index.bits`` (Hamming only);
        with open_clip towers also the cross-modal ``mAP I->T``, ``mAP T->I`` and their mean ``mAP`` among the
        validation items' images and texts (the paper's model selection)."""
        validation = self.data.validation
        if validation is None:
            return None
        self.encoder.train_mode(False)
        try:
            codes = self.encoder.encode(self.labels.items(), "label")
            index = build_index_from_embeddings(self.labels, codes, None, encoder=self.encoder, factory="BFlat")
            ks = self.context.recipe.evaluation.ks
            metrics = evaluate(index, validation, ks=ks, train=self.data.train)["metrics"]
            if self.clip:
                metrics.update(self.cross_modal_map(validation))
        finally:
            self.encoder.train_mode(True)
        return metrics

    def cross_modal_map(self, instances: Instances) -> dict[str, float]:
        rows = [row for row, images in enumerate(instances.images or []) if images and instances.texts[row]]
        if not rows:
            raise XMRError(f"{instances.source}: cross-modal validation needs items with an image and a text")
        known = [[self.labels.position(label) for label in instances.labels[row] if label in self.labels]
                 for row in rows]
        targets = multi_hot(known, len(self.labels))
        image = self.encoder.encode([{"images": list(instances.images[row])} for row in rows], "query")
        text = self.encoder.encode([instances.texts[row] for row in rows], "label")
        i2t = hamming_map(queries=image, database=text, query_labels=targets, database_labels=targets)
        t2i = hamming_map(queries=text, database=image, query_labels=targets, database_labels=targets)
        return {"mAP I->T": i2t, "mAP T->I": t2i, "mAP": (i2t + t2i) / 2}

    def save(self, which: str) -> None:
        """``runs/NAME/prompthash/{best,last}``: encoder folders ``load_encoder`` opens."""
        write_folder_atomically(self.context.run / "prompthash" / which, self.encoder.save)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"plan": np.concatenate(self.plan), "plan_sizes": np.array([len(batch) for batch in self.plan]),
                "caption_rows": self.caption_rows, **self.bank.arrays()}

    def restore(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        self.plan = np.split(arrays["plan"], np.cumsum(arrays["plan_sizes"])[:-1])
        self.caption_rows = np.array(arrays["caption_rows"])
        self.bank.restore(arrays)

    def finish(self, best: dict[str, Any] | None) -> dict[str, Any]:
        """``runs/NAME/index`` of the best (else last) encoder's label codes."""
        run, spec = self.context.run, self.context.sections.hash_index
        folder = run / "prompthash" / ("best" if (run / "prompthash" / "best").is_dir() else "last")
        encoder = load_encoder(folder)
        recipe = IndexRecipe("prompthash", spec.factory, search=dict(spec.search), rerank=spec.rerank,
                             reason=f"{spec.bits}-bit PromptHash codes")
        out = run / "index"
        build_index(self.labels, encoder, out, recipe=recipe)
        self.context.say(f"prompthash: {spec.bits}-bit codes of {len(self.labels)} labels in {out} "
                         f"({spec.factory}{', float re-rank ' + str(spec.rerank) if spec.rerank else ''})")
        return {"encoder": str(folder), "index": str(out), "last_loss_terms": self.last_terms}
