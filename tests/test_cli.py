"""The ``xmr`` command line against the Python API and the encoder: what it prints is what the library computes."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import xmr
from xmr.cli import main


def build(labels_file, encoder, out, *flags):
    return main(["build", "--labels", str(labels_file), "--encoder", str(encoder), "--out", str(out), *flags])


@pytest.fixture
def flat(labels_file, tiny_model, tmp_path, capsys):
    out = tmp_path / "flat"
    assert build(labels_file, tiny_model, out) == 0
    assert capsys.readouterr().out.startswith(f"built {out}: 300 labels")
    return out


@pytest.fixture
def hnsw(labels_file, tiny_model, tmp_path, capsys):
    out = tmp_path / "hnsw"
    assert build(labels_file, tiny_model, out, "--factory", "HNSW16", "--ef-search", "48") == 0
    capsys.readouterr()
    return out


def printed_hits(text):
    """(label id, score) of each ranked line ``  1. 0.1234  [id] text`` of ``xmr query``."""
    hits = []
    for line in text.splitlines()[1:]:
        _, score, label = line.split()[:3]
        hits.append((int(label.strip("[]")), float(score)))
    return hits


def test_query_prints_the_labels_nearest_by_the_encoder(flat, tiny_encoder, capsys):
    assert main(["query", str(flat), "python sql engineer", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "python sql engineer"
    catalogue = xmr.load_index(flat).catalogue
    query = tiny_encoder.encode(["python sql engineer"], "query").values[0]
    scores = tiny_encoder.encode(catalogue.items(), "label").values @ query
    best = np.argsort(-scores)[:3]
    assert [label for label, _ in printed_hits(out)] == [catalogue.ids[row] for row in best]
    np.testing.assert_allclose([score for _, score in printed_hits(out)], scores[best], atol=1e-4)


def test_query_json_hits_equal_the_python_api(hnsw, tmp_path, capsys):
    queries = tmp_path / "queries.txt"
    queries.write_text("cook food\n\ndrive truck\n")
    assert main(["query", str(hnsw), "--file", str(queries), "--json", "-k", "2", "--ef-search", "100"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = xmr.load_index(hnsw).search(["cook food", "drive truck"], k=2, efSearch=100).to_records()
    assert [row["query"] for row in rows] == ["cook food", "drive truck"]  # the blank line is no query
    assert [row["hits"] for row in rows] == expected


def test_info_shows_kind_representation_pipeline_and_stages(hnsw, capsys):
    assert main(["info", str(hnsw)]) == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines() if line.strip())
    assert lines["label-index"] == str(hnsw)
    assert lines["labels"].startswith("300 (ids: int")
    assert lines["represents"] == "dense, inner_product, dim 32, normalized True"
    assert lines["pipeline"] == "faiss HNSW16, search parameters {'efSearch': 48}"
    assert lines["stage"].startswith("candidates: faiss factory HNSW16, structure IndexIDMap2>IndexHNSWFlat")
    assert main(["info", str(hnsw), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["manifest"]["labels"]["count"] == 300 and info["stages"][0]["search_params"] == {"efSearch": 48}


def downgrade_to_v1(folder):
    """Rewrite a folder's version-2 manifest in the version-1 layout (the one ``upgrade_v1`` reads): one ``faiss``
    section with the re-rank depth, the representation as top-level output/dim/metric/normalized, and
    ``next_internal_id`` at the top. The data files are the same in both versions."""
    path = folder / "manifest.json"
    v2 = json.loads(path.read_text())
    candidates, spec = v2["stages"][0], v2["representation"]
    v1 = {
        "format": "xmr-index", "format_version": 1, "xmr_version": "0.1.0", "created_at": v2["created_at"],
        "encoder": v2["encoder"], "output": spec["kind"], "dim": spec["dim"], "metric": spec["metric"],
        "normalized": spec["normalized"], "similarity": "cosine" if spec["normalized"] else "inner_product",
        "faiss": {key: candidates[key] for key in ("factory", "structure", "search_params", "trained_on",
                                                    "faiss_version")}
        | {"rerank": v2["stages"][1]["depth"] if len(v2["stages"]) > 1 else 0, "recipe": v2["recipe"]},
        "labels": {key: v2["labels"][key] for key in ("source", "id_type", "count", "has_images")},
        "next_internal_id": v2["labels"]["next_internal_id"],
        "written_at": v2["written_at"], "files": v2["files"],
    }
    path.write_text(json.dumps(v1, indent=2))


def test_info_and_query_read_a_version_1_folder(hnsw, tmp_path, capsys):
    old = tmp_path / "v1"
    shutil.copytree(hnsw, old)
    downgrade_to_v1(old)
    assert "stages" not in json.loads((old / "manifest.json").read_text())
    assert main(["info", str(old)]) == 0
    out = capsys.readouterr().out
    assert "pipeline     faiss HNSW16, search parameters {'efSearch': 48}" in out
    assert "stage        candidates: faiss factory HNSW16" in out and "300 (ids: int" in out
    for folder in (hnsw, old):
        assert main(["query", str(folder), "drive truck", "-k", "5", "--json"]) == 0
    new_hits, old_hits = (json.loads(line)["hits"] for line in capsys.readouterr().out.splitlines())
    assert old_hits == new_hits


def error_line(capsys):
    """The one stderr line of a failed command (no traceback, no second line)."""
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xmr: error: "), lines
    return lines[0]


def test_errors_exit_2_with_one_line_naming_the_file_or_field(labels_file, tiny_model, tmp_path, capsys):
    bad = tmp_path / "dupes.jsonl"
    bad.write_text('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n')
    assert main(["build", "--labels", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert f"{bad}:2: duplicate id 1" in error_line(capsys)
    assert not (tmp_path / "x").exists()

    assert main(["query", str(tmp_path), "hello"]) == 2
    assert f"{tmp_path}: not an xmr index folder" in error_line(capsys)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"format": "xmr-index",\n oops}')
    assert main(["info", str(broken)]) == 2
    assert f"{broken / 'manifest.json'}: corrupted manifest (line 2" in error_line(capsys)

    recipe = tmp_path / "mine.yaml"
    recipe.write_text("factory: Flat\nserch: {efSearch: 3}\n")
    assert build(labels_file, tiny_model, tmp_path / "y", "--recipe", str(recipe)) == 2
    line = error_line(capsys)
    assert str(recipe) in line and "'serch'" in line
    assert build(labels_file, tiny_model, tmp_path / "y", "--recipe", "hnsw32", "--factory", "Flat") == 2
    assert "--recipe or --factory" in error_line(capsys)
    assert not (tmp_path / "y").exists()


def test_build_flags_are_checked_against_the_encoder_type(labels_file, tiny_model, tiny_decoder, tmp_path, capsys):
    decoder = tmp_path / "decoder.json"
    decoder.write_text(json.dumps({"type": "decoder-llm", "model": tiny_decoder}))
    assert build(labels_file, decoder, tmp_path / "refused", "--query-prompt", "query: ") == 2
    line = error_line(capsys)
    assert "--query-prompt" in line and "'decoder-llm'" in line
    assert not (tmp_path / "refused").exists()
    # --max-seq-length applies to both types, under each type's own option name
    assert build(labels_file, decoder, tmp_path / "llm", "--max-seq-length", "16") == 0
    assert build(labels_file, tiny_model, tmp_path / "st", "--max-seq-length", "16", "--query-prompt", "python") == 0
    llm = json.loads((tmp_path / "llm" / "manifest.json").read_text())["encoder"]
    st = json.loads((tmp_path / "st" / "manifest.json").read_text())["encoder"]
    assert llm["type"] == "decoder-llm" and llm["max_length"] == 16
    assert st["max_seq_length"] == 16 and st["query_prompt"] == "python"


@pytest.mark.parametrize("module", ["xmr", "xmr.cli"])
def test_console_entry_point_exits_with_mains_code(tmp_path, module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True)
    assert "build" in done.stdout and "query" in done.stdout and "demo" in done.stdout
    failed = subprocess.run([sys.executable, "-m", module, "info", str(tmp_path)], capture_output=True, text=True)
    assert failed.returncode == 2 and failed.stderr.strip().splitlines() == [
        f"xmr: error: {tmp_path}: not an xmr index folder (no manifest.json)"]
