"""PromptHash (issue 16): selective scan, fusion, losses, hashing metrics, codes + float re-rank in the binary index,
the encoder folder, and the task through ``xmr.train`` on tiny random open_clip towers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xmr.errors import XMRError
from xmr.prompthash.codes import HashCodes
from xmr.prompthash.losses import (
    LossWeights,
    MemoryBank,
    info_nce,
    js_divergence,
    label_similarity,
    local_alignment,
    pairwise_likelihood,
    prompthash_loss,
)
from xmr.prompthash.metrics import hamming_map, multi_hot, precision_within_radius
from xmr.prompthash.model import HashNet, HashNetConfig, MambaMixer
from xmr.prompthash.scan import selective_scan, selective_scan_loop
from xmr.representations import BinaryCodes


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one thread is faster than two contending ones (and leaves the other core to the suite)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def scan_inputs(batch=2, dim=6, state=4, length=37, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)  # noqa: E731
    return dict(u=r(batch, dim, length), delta=r(batch, dim, length),
                A=-torch.rand(dim, state, generator=g, dtype=dtype) * 3, B=r(batch, state, length),
                C=r(batch, state, length), D=r(dim), z=r(batch, dim, length), delta_bias=r(dim), delta_softplus=True)


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_selective_scan_matches_the_naive_recurrence(chunk):
    inputs = scan_inputs()
    torch.testing.assert_close(selective_scan(**inputs, chunk=chunk), selective_scan_loop(**inputs), atol=1e-5,
                               rtol=1e-5)


def test_selective_scan_carries_state_across_chunks_and_long_sequences_stay_finite():
    inputs = scan_inputs(length=300, dtype=torch.float64)
    inputs["delta"] = inputs["delta"] + 3  # large steps: exp(delta * A) underflows where a naive cumprod would not
    fast, slow = selective_scan(**inputs, chunk=32), selective_scan_loop(**inputs)
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, slow, atol=1e-9, rtol=1e-9)


def test_mamba_block_is_causal():
    torch.manual_seed(0)
    block = MambaMixer(8, d_state=4)
    tokens = torch.randn(2, 6, 8)
    changed = tokens.clone()
    changed[:, 4:] += 5.0  # only the future of position 3 changes
    before, after = block(tokens), block(changed)
    torch.testing.assert_close(before[:, :4], after[:, :4])
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def test_pairwise_likelihood_rewards_codes_that_agree_when_labels_are_shared():
    codes = torch.tensor([[1.0, 1, 1, 1], [-1, -1, -1, -1]])
    shared = torch.tensor([[1.0, 0], [0, 1]])
    assert pairwise_likelihood(codes, codes, shared) < pairwise_likelihood(codes, -codes, shared)



def test_balanced_pairwise_likelihood_sees_a_rare_positive_that_the_plain_mean_drowns():
    others = torch.sign(torch.randn(2000, 16, generator=torch.Generator().manual_seed(0)))
    bank = torch.cat([torch.ones(1, 16), others, -others])  # the negatives' codes cancel: any code sees them alike
    similarity = torch.zeros(len(bank), 1)
    similarity[0] = 1.0  # one item of 4,001 shares the query's label (ESCO: one skill per catalogue query)
    agree, disagree = bank[:1], -bank[:1]
    plain = [float(pairwise_likelihood(bank, code, similarity)) for code in (agree, disagree)]
    balanced = [float(pairwise_likelihood(bank, code, similarity, balanced=True)) for code in (agree, disagree)]
    assert abs(plain[1] - plain[0]) < 0.01  # the positive is 1/4001 of the mean
    assert balanced[1] - balanced[0] > 7.0  # softplus(8) - softplus(-8): the positive counts as much as all negatives

def test_local_alignment_scales_the_temperature_by_one_over_one_plus_js():
    torch.manual_seed(0)
    image, prompt = torch.randn(5, 8), torch.randn(5, 8)
    js = float(js_divergence(image, prompt))
    assert js > 0
    expected = info_nce(image, prompt, 0.07 / (1 + js))
    torch.testing.assert_close(local_alignment(image, prompt, 0.07), expected)
    assert float(js_divergence(image, image)) == pytest.approx(0.0, abs=1e-7)


def test_hamming_map_is_one_for_perfect_codes_lower_for_wrong_ones_and_refuses_bad_calls():
    labels = multi_hot([[0], [1], [0], [1]], 2)
    good = BinaryCodes.from_signs(np.where(labels[:, :1] > 0, 1.0, -1.0).repeat(8, axis=1))
    wrong = BinaryCodes.from_signs(np.array([[1.0] * 8, [1.0] * 8, [-1.0] * 8, [-1.0] * 8]))
    assert hamming_map(queries=good, database=good, query_labels=labels, database_labels=labels) == 1.0
    assert hamming_map(queries=good, database=wrong, query_labels=labels, database_labels=labels, k=2) < 1.0
    with pytest.raises(TypeError):  # the reference's bug: a keyword the function does not take, swallowed as 0.0
        hamming_map(queries=good, database=good, query_labels=labels, database_labels=labels, topk=2)
    with pytest.raises(TypeError):  # positional arguments in the wrong order cannot slip through
        hamming_map(good, good, labels, labels)
    with pytest.raises(XMRError, match="no query shares a label"):  # all-zero label rows: undefined, not 0.0
        hamming_map(queries=good, database=good, query_labels=np.zeros_like(labels), database_labels=labels)
    with pytest.raises(XMRError, match="one row per code"):
        hamming_map(queries=good, database=good, query_labels=labels[:3], database_labels=labels)
    with pytest.raises(XMRError, match="bits"):
        hamming_map(queries=good, database=BinaryCodes(np.zeros((4, 2), np.uint8), 16), query_labels=labels,
                    database_labels=labels)


def test_precision_within_hamming_radius_two():
    database = BinaryCodes(np.array([[0b00000000], [0b00000011], [0b00000111], [0b11111111]], np.uint8), 8)
    query = BinaryCodes(np.array([[0b00000000]], np.uint8), 8)
    labels = multi_hot([[0], [0], [1], [1]], 2)
    result = precision_within_radius(queries=query, database=database, query_labels=multi_hot([[0]], 2),
                                     database_labels=labels)
    assert result == {"precision": 1.0, "empty": 0.0}  # distances 0, 2 (both relevant); 3 and 8 are outside
    far = precision_within_radius(queries=BinaryCodes(np.array([[0b10101010]], np.uint8), 8), database=database,
                                  query_labels=multi_hot([[0]], 2), database_labels=labels)
    assert far == {"precision": 0.0, "empty": 1.0}


def clustered_features(n=96, labels=4, dim=32, seed=0):
    """Two views of items whose features cluster by label, each view in its own random rotation."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(labels, size=n)
    centres = rng.normal(size=(labels, dim))
    rotation = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    image = centres[classes] + 0.6 * rng.normal(size=(n, dim))
    text = (centres[classes] + 0.6 * rng.normal(size=(n, dim))) @ rotation
    f = lambda x: torch.nn.functional.normalize(torch.tensor(x, dtype=torch.float32), dim=-1)  # noqa: E731
    return f(image), f(text), torch.from_numpy(multi_hot([[c] for c in classes], labels))



def test_fit_itq_gives_faiss_itq_lsh_codes_and_keeps_neighbours_better_than_a_random_projection():
    import faiss

    from xmr.prompthash.itq import fit_itq, itq_codes

    image, text, labels = clustered_features(n=400, dim=32, seed=1)
    vectors, rows = torch.cat([image, text]).numpy(), np.concatenate([labels.numpy()] * 2)
    weight, bias = fit_itq(vectors, 16)
    reference = faiss.index_factory(32, "ITQ16,LSH")
    reference.train(vectors)
    expected = np.unpackbits(reference.sa_encode(vectors), axis=1, bitorder="little")
    codes = itq_codes(vectors, weight, bias)
    np.testing.assert_array_equal(np.unpackbits(codes.codes, axis=1), expected)
    assert np.allclose((vectors @ weight.T + bias).std(axis=0), 1.0, atol=1e-3)  # unit scale for a tanh head
    projection = BinaryCodes.from_signs(vectors @ np.random.default_rng(0).normal(size=(32, 16)))
    score = lambda c: hamming_map(queries=c, database=c, query_labels=rows, database_labels=rows)  # noqa: E731
    assert score(codes) > score(projection) + 0.1, (score(codes), score(projection))
    with pytest.raises(XMRError, match="at most the 32 dimensions"):
        fit_itq(vectors, 64)


def test_a_net_started_from_a_linear_hash_emits_its_codes_and_still_trains():
    from xmr.prompthash.itq import fit_itq, itq_codes

    torch.manual_seed(0)
    image, text, labels = clustered_features()
    net = HashNet(HashNetConfig(features=32, bits=[16], auxiliary_bits=32, dropout=0.0))
    vectors = torch.cat([image, text]).numpy()
    heads = {bits: tuple(torch.from_numpy(a) for a in fit_itq(vectors, bits)) for bits in (16, 32)}
    net.eval()
    with torch.no_grad():
        random_codes = BinaryCodes.from_signs(net.encode(image, None, 16)["image"].numpy())
        net.start_from_linear_hash(heads)
        started = BinaryCodes.from_signs(net.encode(image, None, 16)["image"].numpy())
    target = np.unpackbits(itq_codes(image.numpy(), *[h.numpy() for h in heads[16]]).codes, axis=1)
    agree = lambda codes: np.mean(np.unpackbits(codes.codes, axis=1) == target)  # noqa: E731
    assert agree(started) > 0.97 and agree(random_codes) < 0.75, (agree(started), agree(random_codes))
    net.train()
    output = net(image[:8], text[:8])
    output.image[16].sum().backward()
    assert all(block[-1].weight.grad is not None and block[-1].weight.grad.abs().sum() > 0 for block in net.mlp.blocks)


def test_sparse_label_similarity_equals_the_dense_one_and_the_bank_fills_from_codes():
    import scipy.sparse

    from xmr.prompthash.losses import sparse_label_similarity

    dense = torch.from_numpy(multi_hot([[0, 2], [1], [2], [3], [1, 3]], 4))
    rows = np.array([4, 0])
    sparse = scipy.sparse.csr_matrix(dense.numpy())
    torch.testing.assert_close(sparse_label_similarity(sparse, rows), label_similarity(dense, dense[rows]))
    bank = MemoryBank(5, [8], seed=0)
    image, text = torch.randn(5, 8), torch.randn(5, 8)
    bank.fill({8: image}, {8: text})
    torch.testing.assert_close(bank.binary[8], torch.sign(image + text))
    image[0] = 0  # the bank holds copies
    assert bank.image[8][0].abs().sum() > 0


def cross_modal_map(net, image, text, labels, bits=16):
    net.eval()
    with torch.no_grad():
        queries = BinaryCodes.from_signs(net.encode(image, None, bits)["image"].numpy())
        database = BinaryCodes.from_signs(net.encode(None, text, bits)["text"].numpy())
    net.train()
    return hamming_map(queries=queries, database=database, query_labels=labels.numpy(),
                       database_labels=labels.numpy())


def test_training_the_hash_net_lowers_the_loss_and_raises_cross_modal_map():
    torch.manual_seed(0)
    image, text, labels = clustered_features()
    net = HashNet(HashNetConfig(features=32, bits=[16], auxiliary_bits=32, dropout=0.0))
    bank = MemoryBank(len(image), [16, 32], seed=0)
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-3)
    before = cross_modal_map(net, image, text, labels)
    losses = []
    for epoch in range(12):
        if epoch:
            bank.refresh()
        for rows in torch.randperm(len(image)).split(32):
            drop = torch.rand(len(rows)) < 0.5
            output = net(image[rows], text[rows], text[rows], drop, ~drop)
            bank.update(rows, output)
            loss = sum(prompthash_loss(output, rows, label_similarity(labels, labels[rows]), bank, [16], 32,
                                       LossWeights()).values())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
    after = cross_modal_map(net, image, text, labels)
    assert np.mean(losses[-6:]) < 0.7 * np.mean(losses[:6])
    assert after > before + 0.2 and after > 0.8, (before, after)


def test_hash_codes_float_rerank_recovers_exact_float_order_and_round_trips(tmp_path):
    from xmr.catalogue import LabelCatalogue
    from xmr.index import build_index_from_embeddings, load_index
    from xmr.index.recipes import IndexRecipe

    rng = np.random.default_rng(0)
    floats = rng.normal(size=(200, 16)).astype(np.float32)
    floats /= np.linalg.norm(floats, axis=1, keepdims=True)
    labels = HashCodes.from_signs(floats @ rng.normal(size=(16, 32)))
    labels = HashCodes(labels.codes, 32, floats)
    catalogue = LabelCatalogue.from_records([{"id": i, "text": f"label {i}"} for i in range(200)])
    queries = HashCodes(labels.codes[:10], 32, floats[:10] + 0.01)
    recipe = IndexRecipe("test", "BFlat", rerank=200)
    index = build_index_from_embeddings(catalogue, labels, tmp_path / "idx", recipe=recipe)
    exact = np.argsort(-(queries.floats @ floats.T), axis=1)[:, :5]
    assert (index.search_embeddings(queries, k=5).rows == exact).all()
    hamming_only = index.search_embeddings(queries, k=5, rerank=0)
    assert (hamming_only.scores <= 32).all() and not (hamming_only.rows == exact).all()
    loaded = load_index(tmp_path / "idx")
    assert [stage["type"] for stage in loaded.manifest["stages"]] == ["faiss-binary", "hamming-float"]
    assert loaded.representation == {"kind": "binary", "metric": "hamming", "bits": 32}
    assert (loaded.search_embeddings(queries, k=5).rows == exact).all()
    with pytest.raises(XMRError, match="float vectors"):
        loaded.search_embeddings(BinaryCodes(queries.codes, 32), k=5)


def test_multi_index_hashing_finds_every_code_within_the_guaranteed_radius(tmp_path):
    from xmr.catalogue import LabelCatalogue
    from xmr.index import build_index_from_embeddings, load_index

    rng = np.random.default_rng(1)
    codes = BinaryCodes(rng.integers(0, 256, size=(500, 8), dtype=np.uint8), 64)
    catalogue = LabelCatalogue.from_records([{"id": i, "text": f"l{i}"} for i in range(500)])
    flipped = np.unpackbits(codes.codes[:20], axis=1)
    flipped[:, [3, 40, 60]] ^= 1  # 3 bits away; 4 substrings of 16 bits: one substring matches exactly
    queries = BinaryCodes(np.packbits(flipped, axis=1), 64)
    index = build_index_from_embeddings(catalogue, codes, tmp_path / "mih", factory="BHash4x16")
    assert "IndexBinaryMultiHash" in index.candidates.structure and index.knobs() == {"nflip": 0}
    found = load_index(tmp_path / "mih").search_embeddings(queries, k=1)
    assert (found.rows[:, 0] == np.arange(20)).all() and (found.scores[:, 0] == 61).all()


@pytest.fixture(scope="module")
def coco_like(tmp_path_factory):
    """12 tiny images (4 colours = 4 labels) with captions, as an xmr JSONL training file and label catalogue."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("coco-like")
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "white": (240, 240, 240)}
    (folder / "labels.jsonl").write_text("".join(json.dumps({"id": i, "text": name}) + "\n"
                                                 for i, name in enumerate(colours)))
    rows = []
    for number in range(16):
        label = number % 4
        name, colour = list(colours.items())[label]
        pixels = np.clip(np.array(colour) + np.random.default_rng(number).integers(-20, 20, (40, 40, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{number}.png")
        rows.append({"id": number, "text": f"a {name} square", "image": f"{number}.png", "labels": [label]})
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def test_task_trains_through_xmr_train_and_writes_a_binary_index_eval_scores(coco_like, tmp_path):
    from xmr.datasets import read_instances
    from xmr.encoders import load_encoder
    from xmr.evaluation import evaluate
    from xmr.index import load_index
    from xmr.train import train
    from xmr.train.recipe import load_recipe

    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(json.dumps({
        "name": "ph", "method": "prompthash", "seed": 0, "output": str(tmp_path / "runs"),
        "data": {"train": str(coco_like / "train.jsonl"), "labels": str(coco_like / "labels.jsonl"),
                 "validation_size": 4},
        "prompthash": {"towers": {"kind": "open_clip", "model": "prompthash-tiny-clip", "unfreeze_last": 1},
                       "bits": [16, 32], "auxiliary_bits": 64, "epochs": 3, "batch_size": 6,
                       "init": "itq", "bank_init": "codes"},
        "hash_index": {"bits": 32, "rerank": 4},
        "evaluation": {"ks": [1], "metric": "mAP"},
        "checkpoint": {"every": 100, "keep": 1}}))
    summary = train(load_recipe(str(recipe_file)))
    run = tmp_path / "runs" / "ph"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == 6 and all(np.isfinite(losses))
    manifest = json.loads((run / "index" / "manifest.json").read_text())
    assert manifest["representation"] == {"kind": "binary", "metric": "hamming", "bits": 32}
    assert [stage["type"] for stage in manifest["stages"]] == ["faiss-binary", "hamming-float"]
    index = load_index(run / "index")
    test = read_instances(str(coco_like / "train.jsonl"))
    for modality in ("image", "text", "all"):  # search by image, by text, by both
        report = evaluate(index, test, ks=[1], modality=modality)
        assert 0.0 <= report["metrics"]["P@1"] <= 1.0
    encoder = load_encoder(run / "prompthash" / "best")
    assert summary["encoder"] == str(run / "prompthash" / "best")  # validation picked a step
    validations = [entry["validation"] for entry in log if "validation" in entry]
    assert summary["best"]["value"] == max(v["mAP"] for v in validations)  # the step with the best cross-modal mAP
    again = load_encoder(summary["encoder"])
    items = [{"images": [str(coco_like / "0.png")]}, "a red square"]
    assert (encoder.encode(items, "query").codes == again.encode(items, "query").codes).all()
    trained = {name: p.detach().clone() for name, p in encoder.trainable().items()}
    fresh = load_encoder({**encoder.config(), "model": None})
    assert any(not torch.equal(trained[name], p) for name, p in fresh.trainable().items())



def test_a_recipe_may_select_by_the_cross_modal_map_its_task_computes_and_no_other_task_accepts_it(coco_like,
                                                                                                    tmp_path):
    from xmr.train.recipe import RecipeError, load_recipe

    base = {"name": "ph", "data": {"train": str(coco_like / "train.jsonl"), "labels": str(coco_like / "labels.jsonl"),
                                   "validation_size": 4},
            "evaluation": {"ks": [1], "metric": "mAP"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps({**base, "method": "prompthash"}))
    assert load_recipe(str(path)).evaluation.metric == "mAP"
    path.write_text(json.dumps({**base, "method": "dual-encoder"}))
    with pytest.raises(RecipeError, match="evaluation.metric: 'mAP' is not computed"):
        load_recipe(str(path))
    path.write_text(json.dumps({**base, "method": "prompthash", "evaluation": {"ks": [1], "metric": "mAP@5"}}))
    with pytest.raises(RecipeError, match="the method's own: mAP, mAP I->T, mAP T->I"):
        load_recipe(str(path))

def test_untrained_encoder_is_deterministic_and_refuses_a_code_length_it_has_no_head_for():
    from xmr.encoders import load_encoder

    config = {"type": "prompthash", "towers": {"kind": "open_clip", "model": "prompthash-tiny-clip"},
              "net": {"bits": [16, 32], "auxiliary_bits": 64}, "bits": 32}
    first, second = load_encoder(config), load_encoder(config)
    codes = first.encode(["a cat", "a dog"], "label")
    assert codes.bits == 32 and codes.floats.shape == (2, 64)
    assert (codes.codes == second.encode(["a cat", "a dog"], "label").codes).all()
    with pytest.raises(XMRError, match="bits 24"):
        load_encoder({**config, "bits": 24})


@pytest.mark.slow
def test_text_towers_affinity_prompt_starts_at_the_towers_vector_and_its_context_learns(tmp_path, monkeypatch):
    from xmr.prompthash.towers import TextTowers, prompt_text

    monkeypatch.setenv("XMR_CACHE", str(tmp_path))
    towers = TextTowers("all-MiniLM-L6-v2")
    text = prompt_text(towers.prompt_template, ["grain", "wheat"])
    tokens = towers.tokens([text])
    with torch.no_grad():
        towers.ctx.zero_()
        zero_context = towers.prompt(tokens)
    np.testing.assert_allclose(zero_context.numpy(), towers.encode([text], "label"), atol=1e-5)
    target = torch.nn.functional.normalize(torch.ones(1, towers.features), dim=-1)
    optimiser = torch.optim.Adam([towers.ctx], lr=1e-2)
    before = float((towers.prompt(tokens) @ target.T).detach())
    for _ in range(5):
        loss = -(towers.prompt(tokens) @ target.T).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert float((towers.prompt(tokens) @ target.T).detach()) > before + 0.01
    assert all(not p.requires_grad for p in towers.st.parameters())  # the tower stays frozen
    assert (tmp_path / "prompthash-text").is_dir()  # the frozen tower's vectors are cached
