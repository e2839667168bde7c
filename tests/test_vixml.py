"""ViXML fusion at the catalogue level: several images per item, and items with and without images in one space."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import xmr
from xmr.encoders.fusable import IMAGE_SLOT
from xmr.train import train

LABELS = ["python sql", "forklift truck", "cook food"]
COLOURS = [(220, 30, 30), (30, 200, 40), (30, 40, 220)]  # one colour family per label


@pytest.fixture(scope="module")
def shaded(tmp_path_factory) -> list[list[str]]:
    """Three JPEGs per label: shades of the label's colour, each with its own texture."""
    from PIL import Image

    folder, rng = tmp_path_factory.mktemp("shaded"), np.random.default_rng(0)
    paths = []
    for label, colour in enumerate(COLOURS):
        paths.append([])
        for shade in range(3):
            pixels = np.clip(np.array(colour) * (0.7 + 0.15 * shade) + rng.normal(0, 12, (48, 48, 3)), 0, 255)
            path = folder / f"label{label}-shade{shade}.jpg"
            Image.fromarray(pixels.astype(np.uint8)).save(path)
            paths[-1].append(str(path))
    return paths


@pytest.fixture(params=["sentence-transformers", "decoder-llm"])
def fused3(request, tiny_model, tiny_decoder, tiny_clip, tmp_path, monkeypatch):
    """A fused encoder over either text encoder kind that reads up to 3 images per item (ViXML's setting)."""
    monkeypatch.setenv("XMR_CACHE", str(tmp_path / "cache"))
    text = {"type": request.param, "model": tiny_model if request.param == "sentence-transformers" else tiny_decoder}
    return xmr.load_encoder({"type": "fused", "text": text, "image": {"model": tiny_clip}, "max_images": 3})


def test_three_images_take_three_slots_in_order_and_a_fourth_is_dropped(fused3, shaded):
    a, b, c = (family[0] for family in shaded)  # three different colours
    sequences, images = fused3._prepare([{"text": "python", "images": [a, b, c, shaded[1][1]]}], "query")
    assert sequences[0].ids.count(IMAGE_SLOT) == 3 and images[0].shape == (3, fused3.tower.dim)
    three, two, reordered, four = fused3.encode_queries([{"text": "python", "images": [a, b, c]},
                                                         {"text": "python", "images": [a, b]},
                                                         {"text": "python", "images": [c, a, b]},
                                                         {"text": "python", "images": [a, b, c, shaded[1][1]]}])
    assert not np.allclose(three, two, atol=1e-4)  # the third image is read
    assert not np.allclose(three, reordered, atol=1e-4)  # each image has its own position
    np.testing.assert_allclose(three, four, atol=1e-6)  # only the first max_images are
    fused3.train_mode(False)
    with torch.no_grad():  # the training forward reads the same three slots
        trained_path = fused3.embed([{"text": "python", "images": [a, b, c]}], "query").numpy()
    np.testing.assert_allclose(trained_path[0], three, atol=1e-5)


def test_a_mixed_catalogue_is_one_space_ranked_by_one_score(fused3, shaded):
    """Entries with 0-3 images: each vector is the one it gets alone (unit length, whatever its neighbours), a query
    equal to an entry finds it first with cosine 1, and one search ranks both kinds by the same inner product."""
    entries = [{"id": "plain-python", "text": "python sql"},
               {"id": "one-image", "text": "python sql", "images": shaded[0][:1]},
               {"id": "three-images", "text": "forklift truck", "images": shaded[1]},
               {"id": "plain-cook", "text": "cook food kitchen"},
               {"id": "two-images", "text": "cook food", "images": shaded[2][:2]}]
    items = [{key: value for key, value in entry.items() if key != "id"} for entry in entries]
    together = fused3.encode_labels(items)
    alone = np.vstack([fused3.encode_labels([item]) for item in items])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    index = xmr.build_index(xmr.LabelCatalogue.from_records(entries), fused3, None)
    result = index.search(items, k=len(entries))
    for query, entry in enumerate(entries):
        assert result.label_ids(query)[0] == entry["id"]
        assert result.scores[query, 0] == pytest.approx(1.0, abs=1e-4)
    queries = [*items, "python", {"images": shaded[1][:1]}]  # and a text-only and an image-only query
    result, vectors = index.search(queries, k=len(entries)), fused3.encode_queries(queries)
    for query in range(len(queries)):  # every score is q . v of the separately encoded entry, sorted
        expected = vectors[query] @ alone[result.rows[query]].T
        np.testing.assert_allclose(result.scores[query], expected, atol=1e-4)
        assert np.all(np.diff(result.scores[query]) <= 1e-6)


def own_label_first(encoder, index, queries: list, truth: list[int]) -> float:
    result = index.search(queries, k=1)
    return float(np.mean([result.rows[row, 0] == label for row, label in enumerate(truth)]))


def test_training_puts_text_only_and_image_queries_in_one_space(tmp_path, tiny_model, tiny_clip, shaded,
                                                               monkeypatch):
    """Fusion training on a mix of text-only queries and uninformative text + 1-3 images: afterwards ONE index of the
    labels (two text-only, one with images) ranks the own label first for both kinds of held-out query, where the
    untrained projection leaves the image queries near chance."""
    monkeypatch.setenv("XMR_CACHE", str(tmp_path / "cache"))
    labels = [{"id": 0, "text": LABELS[0]}, {"id": 1, "text": LABELS[1]},
              {"id": 2, "text": LABELS[2], "images": shaded[2][:1]}]
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(record) + "\n" for record in labels))
    rng = np.random.default_rng(0)
    rows = []
    for number in range(36):
        label = number % 3
        if number % 2:
            rows.append({"id": number, "text": LABELS[label].split()[number % 2], "labels": [label]})
        else:
            count = 1 + (number // 6) % 3  # 1-3 images, independent of the label
            rows.append({"id": number, "text": "photo", "labels": [label],
                         "images": list(rng.choice(shaded[label], size=count, replace=False))})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(record) + "\n" for record in rows))
    encoder = {"type": "fused", "text": {"type": "sentence-transformers", "model": tiny_model},
               "image": {"model": tiny_clip}, "max_images": 3}
    recipe = {"name": "mixed", "output": str(tmp_path / "runs"), "encoder": encoder,
              "data": {"train": str(tmp_path / "train.jsonl"), "labels": str(tmp_path / "labels.jsonl"),
                       "image_roots": [str(Path(shaded[0][0]).parent)]},
              "negatives": {"all_labels_up_to": 10}, "batching": {"batch_size": 12},
              "schedule": {"max_steps": 150}, "checkpoint": {"every": 150},
              "optimizer": {"lr": 1e-3, "projection_lr": 3e-2, "warmup": 0.0}}
    (tmp_path / "mixed.yaml").write_text(yaml.safe_dump(recipe))
    image_queries = [{"text": "photo", "images": shaded[label][2 - count:]} for label in range(3)
                     for count in range(3)]  # held-out combinations of 1-3 images
    image_truth = [label for label in range(3) for _ in range(3)]
    text_queries, text_truth = ["sql", "forklift", "cook", "python", "truck", "food"], [0, 1, 2, 0, 1, 2]
    catalogue = xmr.LabelCatalogue.from_records(labels)
    before = xmr.load_encoder(encoder)
    before_index = xmr.build_index(catalogue, before, None)
    image_before = own_label_first(before, before_index, image_queries, image_truth)
    train(tmp_path / "mixed.yaml", say=lambda message: None)
    after = xmr.load_encoder(tmp_path / "runs/mixed/encoder")
    index = xmr.build_index(catalogue, after, None)
    assert own_label_first(after, index, image_queries, image_truth) == 1.0 > image_before + 0.3
    assert own_label_first(after, index, text_queries, text_truth) == 1.0
