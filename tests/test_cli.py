import json
import subprocess
import sys

import pytest

from xmr.cli import main


@pytest.fixture
def built(labels_file, tiny_model, tmp_path, capsys):
    out = tmp_path / "skills"
    code = main(["build", "--labels", str(labels_file), "--encoder", tiny_model, "--factory", "HNSW16",
                 "--ef-search", "48", "--out", str(out)])
    assert code == 0
    assert "built" in capsys.readouterr().out
    return out


def test_query_prints_ranked_labels(built, capsys):
    assert main(["query", str(built), "python sql engineer", "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "python sql engineer" and len(lines) == 4
    assert lines[1].strip().startswith("1.")


def test_query_json_from_file(built, tmp_path, capsys):
    queries = tmp_path / "queries.txt"
    queries.write_text("cook food\n\ndrive truck\n")
    assert main(["query", str(built), "--file", str(queries), "--json", "-k", "2", "--ef-search", "100"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["query"] for row in rows] == ["cook food", "drive truck"]
    assert all(len(row["hits"]) == 2 and set(row["hits"][0]) == {"id", "text", "score"} for row in rows)


def test_info_shows_manifest(built, capsys):
    assert main(["info", str(built)]) == 0
    text = capsys.readouterr().out
    assert "HNSW16" in text and "300 (ids: int" in text and "efSearch': 48" in text
    assert main(["info", str(built), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["manifest"]["labels"]["count"] == 300


def test_errors_are_reported_not_raised(tmp_path, capsys):
    bad = tmp_path / "labels.jsonl"
    bad.write_text('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n')
    assert main(["build", "--labels", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "labels.jsonl:2: duplicate id 1" in capsys.readouterr().err
    assert main(["query", str(tmp_path), "hello"]) == 2
    assert "not an xmr index folder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_console_script_runs():
    done = subprocess.run([sys.executable, "-m", "xmr.cli", "--help"], capture_output=True, text=True, check=True)
    assert "build" in done.stdout and "query" in done.stdout and "demo" in done.stdout
