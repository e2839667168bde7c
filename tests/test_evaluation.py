"""evaluate() on indexes whose rankings are known: hand-made vectors (the ranking of every query is written down) and
label texts through the tiny encoder; the CLI's ``xmr eval`` against the Python API."""

import json

import numpy as np
import pytest

import xmr
from xmr.catalogue import LabelCatalogue
from xmr.cli import main
from xmr.datasets import Instances
from xmr.evaluation import evaluate
from xmr.metrics import inverse_propensity, precision_at_k
from xmr.report import compare_runs, write_run

IDS = [10, 11, 12, 13, 14, 15]  # label ids are not catalogue rows, so the id -> row mapping is exercised


@pytest.fixture
def hand_index():
    """Six labels at the unit vectors e_0..e_5 (row r has id 10 + r): a query's ranking is the order of its entries."""
    catalogue = LabelCatalogue.from_records([{"id": label, "text": f"label {label}"} for label in IDS])
    return xmr.build_index_from_embeddings(catalogue, np.eye(6, dtype=np.float32), None)


def ranking(*rows):
    """A query vector whose exact ranking of the six labels is ``rows`` (a permutation of 0..5)."""
    vector = np.zeros(6, dtype=np.float32)
    vector[list(rows)] = np.linspace(1.0, 0.5, 6)
    return vector / np.linalg.norm(vector)


def hand_queries(labels, groups=None):
    extra = [{"subset": group} for group in groups] if groups else []
    return Instances(list(range(len(labels))), [f"q{number}" for number in range(len(labels))], labels, extra, "hand")


def test_hand_rankings_are_what_the_index_returns(hand_index):
    vectors = np.stack([ranking(3, 4, 0, 1, 2, 5), ranking(5, 0, 1, 2, 3, 4)])
    assert hand_index.search_embeddings(vectors, k=6).rows.tolist() == [[3, 4, 0, 1, 2, 5], [5, 0, 1, 2, 3, 4]]


def test_reciprocal_pair_filter_file_removes_pairs_from_predictions_and_truth(hand_index, tmp_path):
    # q0 ranks row 0 (its only true label) first; q1 ranks 3, 4 first and has both; q2 ranks 5 (true) first
    vectors = np.stack([ranking(0, 1, 2, 3, 4, 5), ranking(3, 4, 0, 1, 2, 5), ranking(5, 0, 1, 2, 3, 4)])
    test = hand_queries([[10], [13, 14], [15]])
    plain = evaluate(hand_index, test, ks=(1,), query_vectors=vectors)
    assert plain["metrics"]["P@1"] == pytest.approx(1.0) and plain["metrics"]["R@1"] == pytest.approx(5 / 6)
    pairs = tmp_path / "filter.txt"
    pairs.write_text("0 10\n1 13\n")  # query row, label id
    filtered = evaluate(hand_index, test, ks=(1,), query_vectors=vectors, filter_labels=pairs)
    assert filtered["filter"] == {"pairs": 2}
    # q0: top hit is now row 1 and its truth is empty -> 0; q1: top hit row 4, truth {14} -> P 1, R 1; q2 unchanged.
    # (Filtering predictions only would give R@1 1/2; filtering truth only would give P@1 1/3.)
    assert filtered["metrics"]["P@1"] == pytest.approx(2 / 3)
    assert filtered["metrics"]["R@1"] == pytest.approx(2 / 3)


def test_groups_get_the_metrics_of_their_queries_evaluated_alone(hand_index):
    rankings = [ranking(0, 1, 2, 3, 4, 5), ranking(1, 2, 3, 4, 0, 5), ranking(2, 4, 0, 1, 3, 5),
                ranking(3, 4, 5, 0, 1, 2)]
    labels, groups = [[10], [15], [12, 14], [15]], ["a", "b", "a", "b"]
    vectors = np.stack(rankings)
    train = hand_queries([[10], [10, 11], [12], [13], [14, 15], [15], [15]])
    result = evaluate(hand_index, hand_queries(labels, groups), ks=(1, 3), train=train, group_by="subset",
                      query_vectors=vectors)
    assert result["groups"]["a"]["queries"] == result["groups"]["b"]["queries"] == 2
    for group in ("a", "b"):
        rows = [row for row, value in enumerate(groups) if value == group]
        alone = evaluate(hand_index, hand_queries([labels[row] for row in rows]), ks=(1, 3), train=train,
                         query_vectors=vectors[rows])
        assert result["groups"][group]["metrics"] == pytest.approx(alone["metrics"])
    # by hand: group a hits at rank 1 (and q2's 14 at rank 2); group b's label 15 is at rank 6 and rank 3
    assert result["groups"]["a"]["metrics"]["P@1"] == 1.0 and result["groups"]["b"]["metrics"]["P@1"] == 0.0
    assert result["groups"]["a"]["metrics"]["P@3"] == pytest.approx((1 + 2) / 3 / 2)
    assert result["groups"]["b"]["metrics"]["P@3"] == pytest.approx((0 + 1) / 3 / 2)


def test_train_propensities_change_psp_but_not_precision(hand_index):
    vectors = ranking(0, 1, 2, 3, 4, 5)[None, :]
    test = hand_queries([[10, 11]])  # both true; label 10 ranked first
    rare_first = hand_queries([[10]] + [[11]] * 19)  # label 10 seen once in 20 training rows, label 11 19 times
    frequent_first = hand_queries([[11]] + [[10]] * 19)
    a = evaluate(hand_index, test, ks=(1,), query_vectors=vectors, train=rare_first)["metrics"]
    b = evaluate(hand_index, test, ks=(1,), query_vectors=vectors, train=frequent_first)["metrics"]
    assert a["P@1"] == b["P@1"] == 1.0
    assert a["PSP@1"] == pytest.approx(1.0)  # the rarer true label was found: the best achievable
    # label 10 now frequent: PSP@1 = w(19 rows) / w(1 row) with the default A=0.55, B=1.5 (w(1 row) = log 20)
    assert b["PSP@1"] == pytest.approx((1 + (np.log(20) - 1) * (2.5 / 20.5) ** 0.55) / np.log(20))
    assert "PSP@1" not in evaluate(hand_index, test, ks=(1,), query_vectors=vectors)["metrics"]


@pytest.fixture
def index(labels_file, tiny_encoder):
    return xmr.build_index(xmr.LabelCatalogue.from_file(labels_file), tiny_encoder, None, factory="Flat")


def instances_from_labels(index, rows):
    """Queries that are label texts, each labelled with that label and the next one."""
    catalogue = index.catalogue
    return Instances(
        ids=list(range(len(rows))),
        texts=[catalogue.texts[row] for row in rows],
        labels=[[catalogue.ids[row], catalogue.ids[(row + 1) % len(catalogue)]] for row in rows],
        source="synthetic",
    )


def test_evaluate_scores_the_rows_the_index_returns_for_text_queries(index):
    test = instances_from_labels(index, list(range(0, 60, 2)))
    train = instances_from_labels(index, list(range(0, 300, 3)))
    result = evaluate(index, test, ks=(1, 3, 5), train=train, batch_size=7)
    predictions = index.search(test.texts, k=5).rows
    truth = [[index.catalogue.position(label) for label in labels] for labels in test.labels]
    for k in (1, 3, 5):
        assert result["metrics"][f"P@{k}"] == pytest.approx(precision_at_k(predictions, truth, k))
    assert result["metrics"]["P@1"] == pytest.approx(1.0)  # a label's own text finds it first
    weights = inverse_propensity([[index.catalogue.position(label) for label in labels] for labels in train.labels],
                                 len(index))
    psp = [weights[row] for row, labels in zip(predictions[:, 0], truth, strict=True) if row in labels]
    best = [max(weights[labels]) for labels in truth]
    assert result["metrics"]["PSP@1"] == pytest.approx(sum(psp) / sum(best))
    assert result["curves"]["P@k"][2] == pytest.approx(result["metrics"]["P@3"])
    assert sum(result["deciles"]["contribution"]) == pytest.approx(result["metrics"]["P@5"])
    assert result["predictor"] == index.describe() and result["structure"] == index.describe()["structure"]


def test_unknown_true_labels_stay_in_the_denominator(index):
    test = Instances([0], [index.catalogue.texts[0]], [[index.catalogue.ids[0], "no-such-label"]], [], "x")
    result = evaluate(index, test, ks=(1,))
    assert result["true_labels_missing_from_index"] == 1
    assert result["metrics"]["R@1"] == pytest.approx(0.5)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_eval_cli_gives_the_python_api_metrics_and_compares_runs(labels_file, tiny_model, tmp_path, capsys):
    folder = tmp_path / "ix"
    assert main(["build", "--labels", str(labels_file), "--encoder", tiny_model, "--out", str(folder)]) == 0
    records = [json.loads(line) for line in labels_file.read_text().splitlines()]
    test = write_jsonl(tmp_path / "test.jsonl", [
        {"id": r["id"], "text": r["text"], "labels": [r["id"], (r["id"] + 1) % 300], "subset": f"s{r['id'] % 2}"}
        for r in records[:40]])
    train = write_jsonl(tmp_path / "train.jsonl", [{"id": r["id"], "text": r["text"], "labels": [r["id"]]}
                                                   for r in records[::2]])
    run = tmp_path / "runs" / "tiny"
    assert main(["eval", str(folder), "--test", str(test), "--train", str(train), "-k", "1", "5",
                 "--group-by", "subset", "--out", str(run)]) == 0
    written = json.loads((run / "metrics.json").read_text())
    expected = evaluate(xmr.load_index(folder), test, ks=(1, 5), train=train, group_by="subset")
    assert written["metrics"] == pytest.approx(expected["metrics"])
    assert written["groups"]["s0"]["metrics"] == pytest.approx(expected["groups"]["s0"]["metrics"])
    assert written["metrics"]["P@1"] == pytest.approx(1.0) and written["index"] == str(folder)
    assert (run / "p_at_k.png").read_bytes()[:4] == b"\x89PNG"
    assert f"| P | 100.00 | {100 * expected['metrics']['P@5']:.2f} |" in (run / "report.md").read_text()
    capsys.readouterr()
    assert main(["eval", "--compare", str(run), str(run)]) == 0
    assert capsys.readouterr().out.count("| tiny |") == 2
    assert main(["eval", str(folder)]) == 2
    error = capsys.readouterr().err.splitlines()
    assert len(error) == 1 and error[0].startswith("xmr: error: ") and "--test FILE" in error[0]


def test_write_run_round_trip(hand_index, tmp_path):
    vectors = np.stack([ranking(0, 1, 2, 3, 4, 5), ranking(1, 0, 2, 3, 4, 5)])
    result = evaluate(hand_index, hand_queries([[10], [10]]), ks=(1, 2), query_vectors=vectors)
    write_run(result, tmp_path / "r")
    written = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert written["metrics"]["P@1"] == result["metrics"]["P@1"] == 0.5
    assert "| r |" in compare_runs([tmp_path / "r"])
