import json

import numpy as np
import pytest

import xmr
from xmr.cli import main
from xmr.datasets import Instances
from xmr.evaluation import evaluate
from xmr.metrics import precision_at_k
from xmr.report import compare_runs, write_run


@pytest.fixture
def index(labels_file, tiny_encoder):
    return xmr.build_index(xmr.LabelCatalogue.from_file(labels_file), tiny_encoder, None, factory="Flat")


def instances_from_labels(index, rows, groups=("a", "b")):
    """Queries that are label texts, each labelled with that label and one other (a realistic, non-trivial task)."""
    catalogue = index.catalogue
    return Instances(
        ids=list(range(len(rows))),
        texts=[catalogue.texts[row] for row in rows],
        labels=[[catalogue.ids[row], catalogue.ids[(row + 1) % len(catalogue)]] for row in rows],
        extra=[{"subset": groups[number % len(groups)]} for number in range(len(rows))],
        source="synthetic",
    )


def test_evaluate_matches_metrics_on_the_search_results(index):
    test = instances_from_labels(index, list(range(0, 60, 2)))
    train = instances_from_labels(index, list(range(0, 300, 3)))
    result = evaluate(index, test, ks=(1, 3, 5), train=train, group_by="subset", batch_size=7)
    predictions = index.search(test.texts, k=5).ids
    truth = [[index.internal_id(label) for label in labels] for labels in test.labels]
    for k in (1, 3, 5):
        assert result["metrics"][f"P@{k}"] == pytest.approx(precision_at_k(predictions, truth, k))
    assert result["metrics"]["P@1"] == pytest.approx(1.0)  # the query is the label's own text
    assert 0 < result["metrics"]["PSP@1"] <= 1 and "PSnDCG@5" in result["metrics"]
    assert set(result["groups"]) == {"a", "b"} and result["groups"]["a"]["queries"] == 15
    assert len(result["curves"]["PSP@k"]) == 5
    assert sum(result["deciles"]["contribution"]) == pytest.approx(result["metrics"]["P@5"])
    assert result["timings"]["search_queries_per_s"] > 0


def test_filter_removes_pairs_from_predictions_and_truth(index):
    test = instances_from_labels(index, [0, 1, 2])
    plain = evaluate(index, test, ks=(1,))
    filtered = evaluate(index, test, ks=(1,), filter_labels={0: {index.catalogue.ids[0]}})
    assert plain["metrics"]["P@1"] == pytest.approx(1.0)
    assert filtered["filter"] == {"pairs": 1}
    assert filtered["metrics"]["P@1"] <= 1.0 and filtered["metrics"]["R@1"] >= 0


def test_unknown_true_labels_stay_in_the_denominator(index):
    test = Instances([0], [index.catalogue.texts[0]], [[index.catalogue.ids[0], "no-such-label"]], [], "x")
    result = evaluate(index, test, ks=(1,))
    assert result["true_labels_missing_from_index"] == 1
    assert result["metrics"]["R@1"] == pytest.approx(0.5)


def test_eval_cli_writes_run_folder_and_compares(labels_file, tiny_model, tmp_path, capsys):
    folder = tmp_path / "ix"
    assert main(["build", "--labels", str(labels_file), "--encoder", tiny_model, "--out", str(folder)]) == 0
    records = [json.loads(line) for line in labels_file.read_text().splitlines()]
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"id": r["id"], "text": r["text"], "labels": [r["id"]],
                                        "subset": "s" + str(r["id"] % 2)}) + "\n" for r in records[:40]))
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"id": r["id"], "text": r["text"], "labels": [r["id"]]}) + "\n"
                             for r in records[::2]))
    run = tmp_path / "runs" / "tiny"
    assert main(["eval", str(folder), "--test", str(test), "--train", str(train), "-k", "1", "5",
                 "--group-by", "subset", "--out", str(run)]) == 0
    assert {path.name for path in run.iterdir()} == {"metrics.json", "report.md", "p_at_k.png", "p_by_decile.png"}
    report = (run / "report.md").read_text()
    assert "| P | 100.00 |" in report and "## By group" in report
    assert (run / "p_at_k.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["eval", "--compare", str(run), str(run)]) == 0
    table = capsys.readouterr().out
    assert table.count("| tiny |") == 2 and "PSP@1" in table
    assert main(["eval", str(folder)]) == 2


def test_write_run_round_trip(index, tmp_path):
    result = evaluate(index, instances_from_labels(index, [0, 1]), ks=(1, 2))
    write_run(result, tmp_path / "r")
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["metrics"]["P@1"] == result["metrics"]["P@1"]
    assert "| r |" in compare_runs([tmp_path / "r"])
    assert np.isfinite(result["timings"]["peak_rss_mb"])
