"""The fuzz/fault suite (issue 13): every family of user input (catalogues, queries, index folders, recipes, command
lines) mutated the way a careless or hostile user would. Each case asserts the exact outcome through the CLI:
refused with exit 2 and ONE line ``xmr: error: ...`` naming the file, line or field, or accepted with the right
result; and in every case nothing outside ``--out`` changed (every file under the case's folder is hashed before
and after; a refused build leaves no ``--out`` and no temporary behind)."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import xmr
from xmr.cli import main
from xmr.index.folder import manifest_digest

MANY = [{"id": number, "text": f"label number {number}"} for number in range(2000)]
LABELS = [{"id": 1, "text": "python developer"}, {"id": 2, "text": "forklift driver"},
          {"id": 3, "text": "music teacher"}, {"id": 4, "text": "kitchen cook"}]


def snapshot(root: Path, skip: Path | tuple[Path, ...] = ()) -> dict[str, str]:
    """Path -> content digest (or link target / 'dir') of everything under ``root`` except ``skip`` (the paths a
    command may write: its --out, a run folder and its lock)."""
    skips = (skip,) if isinstance(skip, Path) else skip
    state = {}
    for path in sorted(root.rglob("*")):
        if any(path == place or place in path.parents for place in skips):
            continue
        name = str(path.relative_to(root))
        if path.is_symlink():
            state[name] = "-> " + str(path.readlink())
        elif path.is_dir():
            state[name] = "dir"
        else:
            state[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def run_cli(argv: list[str], root: Path, capsys, out: Path | tuple[Path, ...] = ()) -> tuple[int, str, str]:
    """``xmr argv`` in-process; asserts that nothing under ``root`` but ``out`` changed."""
    capsys.readouterr()
    before = snapshot(root, out)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    captured = capsys.readouterr()
    assert snapshot(root, out) == before, f"{argv} changed files outside --out"
    return code, captured.out, captured.err


def assert_refused(result: tuple[int, str, str], message: str) -> None:
    code, _, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("xmr: error: "), (code, err)
    assert "Traceback" not in err
    assert re.search(message, lines[0]), lines[0]


# ---------------------------------------------------------------------------------------------------- catalogues
def jsonl(records: list) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


@dataclass
class CatalogueCase:
    name: str
    file: str  # the catalogue's file name
    content: bytes | str | Callable[[Path], None]  # file content, or a function writing the case's files
    message: str | None  # the refusal's pattern; None: accepted
    labels: int | None = None  # accepted: the label count
    flags: tuple[str, ...] = ()


CSV_OK = 'id,text\n1,"python, developer"\n2,"forklift\ndriver"\n3,music teacher\n'
CATALOGUE_CASES = [
    # JSONL
    CatalogueCase("jsonl-bad-json", "labels.jsonl", jsonl(LABELS[:2]) + '{"id": 3, "text": \n', r"labels.jsonl:3"),
    CatalogueCase("jsonl-array-line", "labels.jsonl", jsonl(LABELS[:2]) + "[3, \"x\"]\n", r"labels.jsonl:3"),
    CatalogueCase("jsonl-no-text", "labels.jsonl", jsonl(LABELS[:2] + [{"id": 3}]), r"labels.jsonl:3.*text"),
    CatalogueCase("jsonl-empty-text", "labels.jsonl", jsonl(LABELS[:2] + [{"id": 3, "text": "  "}]),
                  r"labels.jsonl:3.*text"),
    CatalogueCase("jsonl-text-not-string", "labels.jsonl", jsonl(LABELS[:2] + [{"id": 3, "text": 42}]),
                  r"labels.jsonl:3.*text"),
    CatalogueCase("jsonl-no-id", "labels.jsonl", jsonl(LABELS[:2] + [{"text": "x"}]), r"labels.jsonl:3.*id"),
    CatalogueCase("jsonl-duplicate-id", "labels.jsonl", jsonl(LABELS + [{"id": 2, "text": "again"}]),
                  r"labels.jsonl:5.*duplicate.*2"),
    CatalogueCase("jsonl-float-id", "labels.jsonl", jsonl(LABELS[:2] + [{"id": 2.5, "text": "x"}]),
                  r"labels.jsonl:3.*id"),
    CatalogueCase("jsonl-bool-id", "labels.jsonl", jsonl(LABELS[:2] + [{"id": True, "text": "x"}]),
                  r"labels.jsonl:3.*id"),
    CatalogueCase("jsonl-id-beyond-int64", "labels.jsonl", jsonl(LABELS[:2] + [{"id": 2**63, "text": "x"}]),
                  r"labels.jsonl:3.*id"),
    CatalogueCase("jsonl-mixed-id-types", "labels.jsonl", jsonl(LABELS[:2] + [{"id": "skill/3", "text": "x"}]),
                  r"labels.jsonl:3.*id"),
    CatalogueCase("jsonl-empty-file", "labels.jsonl", "", r"labels.jsonl: the catalogue is empty"),
    CatalogueCase("jsonl-blank-lines-only", "labels.jsonl", "\n\n  \n", r"labels.jsonl: the catalogue is empty"),
    CatalogueCase("jsonl-not-utf8", "labels.jsonl", jsonl(LABELS[:2]).encode() + b'{"id": 3, "text": "caf\xe9"}\n',
                  r"labels.jsonl:3: not UTF-8 text"),
    CatalogueCase("jsonl-gz-truncated", "labels.jsonl.gz", gzip.compress(jsonl(MANY).encode())[:-40],
                  r"labels.jsonl.gz:\d+: broken gzip stream"),
    CatalogueCase("jsonl-gz-not-gzip", "labels.jsonl.gz", jsonl(LABELS), r"labels.jsonl.gz:1: broken gzip stream"),
    CatalogueCase("jsonl-images-not-list", "labels.jsonl", jsonl(LABELS[:2] + [{"id": 3, "text": "x", "images": 7}]),
                  r"labels.jsonl:3.*image"),
    # a missing image is the image encoder's to refuse (or skip: FusedEncoder(skip_missing_images)); a text encoder
    # reads the text only
    CatalogueCase("jsonl-image-missing-text-encoder", "labels.jsonl",
                  jsonl([{"id": 1, "text": "x", "image": "nope.jpg"}]), None, labels=1),
    CatalogueCase("jsonl-image-escapes", "labels.jsonl", jsonl([{"id": 1, "text": "x", "image": "../../etc/passwd"}]),
                  r"labels.jsonl:1.*outside"),
    CatalogueCase("jsonl-unicode-ok", "labels.jsonl", jsonl(LABELS[:2] + [{"id": 3, "text": "Köchin 料理 🍳"}]),
                  None, labels=3),
    CatalogueCase("jsonl-string-ids-ok", "labels.jsonl", jsonl([{"id": "a", "text": "x y"}, {"id": "b", "text": "z"}]),
                  None, labels=2),
    CatalogueCase("jsonl-gz-ok", "labels.jsonl.gz", gzip.compress(jsonl(LABELS).encode()), None, labels=4),
    CatalogueCase("jsonl-crlf-ok", "labels.jsonl", jsonl(LABELS).replace("\n", "\r\n"), None, labels=4),
    CatalogueCase("jsonl-row-ids-ok", "labels.jsonl", jsonl([{"text": "a b"}, {"text": "c d"}, {"text": "e"}]),
                  None, labels=3, flags=("--id-field", "@row")),
    CatalogueCase("jsonl-wrong-text-field", "labels.jsonl", jsonl(LABELS), r"labels.jsonl:1.*title",
                  flags=("--text-field", "title")),
    # CSV
    CatalogueCase("csv-unterminated-quote", "labels.csv", 'id,text\n1,python\n2,"forklift\n3,cook\n4,teacher\n',
                  r"labels.csv:3: malformed CSV .*unterminated quote"),
    CatalogueCase("csv-short-row", "labels.csv", "id,text\n1,python\n2\n", r"labels.csv:3"),
    CatalogueCase("csv-long-row", "labels.csv", "id,text\n1,python\n2,cook,extra\n", r"labels.csv:3"),
    CatalogueCase("csv-no-text-column", "labels.csv", "id,name\n1,python\n", r"labels.csv.*text"),
    CatalogueCase("csv-header-only", "labels.csv", "id,text\n", r"labels.csv: the catalogue is empty"),
    CatalogueCase("csv-not-utf8", "labels.csv", b"id,text\n1,python\n2,caf\xe9\n", r"labels.csv:3: not UTF-8 text"),
    CatalogueCase("csv-duplicate-id", "labels.csv", "id,text\n1,python\n1,cook\n", r"labels.csv:3.*duplicate"),
    CatalogueCase("csv-bom-ok", "labels.csv", "\ufeffid,text\n1,python\n2,cook\n", None, labels=2),
    CatalogueCase("csv-quoted-ok", "labels.csv", CSV_OK, None, labels=3),
    # Parquet
    CatalogueCase("parquet-corrupt", "labels.parquet",
                  parquet_bytes(pa.table({"id": [1, 2], "text": ["a", "b"]}))[:-30],
                  r"labels.parquet.*(Parquet|parquet)"),
    CatalogueCase("parquet-not-parquet", "labels.parquet", "id,text\n1,a\n", r"labels.parquet.*(Parquet|parquet)"),
    CatalogueCase("parquet-no-text", "labels.parquet", parquet_bytes(pa.table({"id": [1], "name": ["a"]})),
                  r"labels.parquet.*text"),
    CatalogueCase("parquet-null-text", "labels.parquet", parquet_bytes(pa.table({"id": [1, 2], "text": ["a", None]})),
                  r"labels.parquet: row 2: field 'text' is missing"),
    CatalogueCase("parquet-ok", "labels.parquet", parquet_bytes(pa.table({"id": [7, 8], "text": ["a b", "c"]})),
                  None, labels=2),
    # the path itself
    CatalogueCase("unknown-extension", "labels.xlsx", "id,text\n", r"labels.xlsx: unknown file type '.xlsx'"),
    CatalogueCase("labels-is-a-folder", "labels.jsonl", lambda folder: (folder / "labels.jsonl").mkdir(),
                  r"labels.jsonl: is a folder, not a catalogue file"),
    CatalogueCase("labels-missing", "labels.jsonl", lambda folder: None, r"labels.jsonl: no such catalogue file"),
]


@pytest.mark.parametrize("case", CATALOGUE_CASES, ids=[case.name for case in CATALOGUE_CASES])
def test_catalogue_files(case, tiny_model, tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    if callable(case.content):
        case.content(folder)
    else:
        content = case.content.encode() if isinstance(case.content, str) else case.content
        (folder / case.file).write_bytes(content)
    out = tmp_path / "index"
    result = run_cli(["build", "--labels", str(folder / case.file), "--encoder", tiny_model, "--out", str(out),
                      *case.flags], tmp_path, capsys, out)
    if case.message is not None:
        assert_refused(result, case.message)
        assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]  # no --out, no temporary
    else:
        assert result[0] == 0, result[2]
        assert len(xmr.load_index(out)) == case.labels


# ---------------------------------------------------------------------------------------------------- queries
@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model) -> Path:
    folder = tmp_path_factory.mktemp("built")
    (folder / "labels.jsonl").write_text(jsonl(LABELS))
    assert main(["build", "--labels", str(folder / "labels.jsonl"), "--encoder", tiny_model,
                 "--out", str(folder / "index")]) == 0
    return folder / "index"


@dataclass
class QueryCase:
    name: str
    argv: list[str]  # after `query INDEX`; {dir} is the case's folder
    message: str | None
    files: dict[str, bytes | str] | None = None
    rows: int | None = None  # accepted: result lines printed (--json)


QUERY_CASES = [
    QueryCase("blank-text", ["   "], r"query 1 has no text \(blank\)"),
    QueryCase("empty-text", [""], r"query 1 has no text \(blank\)"),
    QueryCase("second-text-blank", ["python", "\t"], r"query 2 has no text \(blank\)"),
    QueryCase("no-query", [], r"no queries: give query texts"),
    QueryCase("k-zero", ["-k", "0", "python"], r"k must be a positive integer, got 0"),
    QueryCase("k-negative", ["-k", "-3", "python"], r"k must be a positive integer, got -3"),
    QueryCase("k-not-number", ["-k", "many", "python"], r"query: argument -k: invalid int value: 'many'"),
    QueryCase("k-huge-is-clamped", ["-k", str(10**9), "--json", "python"], None, rows=1),
    QueryCase("options-after-text", ["python", "-k", "2", "--json"], None, rows=1),
    QueryCase("unknown-option", ["--frobnicate", "python"], r"unrecognized arguments: --frobnicate"),
    QueryCase("file-missing", ["--file", "{dir}/nope.txt"], r"nope.txt: no such query file"),
    QueryCase("file-not-utf8", ["--file", "{dir}/q.txt"], r"q.txt:2: not UTF-8 text",
              files={"q.txt": b"python\ncaf\xe9\n"}),
    QueryCase("file-blank-line-inside", ["--file", "{dir}/q.txt", "--json"], None,
              files={"q.txt": "python\n\ncook\n"}, rows=2),
    QueryCase("file-empty", ["--file", "{dir}/q.txt"], r"q.txt: no queries in the file", files={"q.txt": "\n\n"}),
    QueryCase("jsonl-bad-json", ["--file", "{dir}/q.jsonl"], r"q.jsonl:2",
              files={"q.jsonl": '{"text": "python"}\n{"text": \n'}),
    QueryCase("jsonl-no-text", ["--file", "{dir}/q.jsonl"], r"q.jsonl:1.*text", files={"q.jsonl": '{"query": "x"}\n'}),
    QueryCase("jsonl-image-escapes", ["--file", "{dir}/q.jsonl"], r"q.jsonl:1.*outside",
              files={"q.jsonl": '{"text": "x", "image": "../../../etc/passwd"}\n'}),
    QueryCase("image-missing", ["--image", "{dir}/nope.jpg", "python"], r"--image .*nope.jpg: no such image file"),
    QueryCase("image-on-a-text-index", ["--image", "{dir}/a.jpg", "python"], r"reads text only; a query image would",
              files={"a.jpg": b"jpeg"}),
    QueryCase("ef-search-negative", ["--ef-search", "-1", "python"], r"--ef-search must be at least 1, got -1"),
    QueryCase("nprobe-on-flat", ["--nprobe", "4", "python"], r"\['nprobe'\] do not apply to IndexIDMap2>IndexFlatIP"),
    QueryCase("rerank-negative", ["--rerank", "-5", "python"], r"--rerank must be at least 0, got -5"),
    QueryCase("rerank-without-vectors", ["--rerank", "5", "python"], r"stores no vectors to re-rank with"),
    QueryCase("index-missing", ["python"], r"nowhere: not an xmr index folder \(no manifest.json\)", files={}),
]


@pytest.mark.parametrize("case", QUERY_CASES, ids=[case.name for case in QUERY_CASES])
def test_queries(case, built, tmp_path, capsys):
    for name, content in (case.files or {}).items():
        (tmp_path / name).write_bytes(content.encode() if isinstance(content, str) else content)
    index = str(tmp_path / "nowhere") if case.name == "index-missing" else str(built)
    argv = ["query", index, *(part.replace("{dir}", str(tmp_path)) for part in case.argv)]
    before = snapshot(built.parent)
    result = run_cli(argv, tmp_path, capsys)
    assert snapshot(built.parent) == before  # querying never writes into the index folder
    if case.message is not None:
        assert_refused(result, case.message)
    else:
        code, out, err = result
        assert code == 0, err
        answers = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert len(answers) == case.rows
        k = int(case.argv[case.argv.index("-k") + 1]) if "-k" in case.argv else 10
        assert all(len(answer["hits"]) == min(k, len(LABELS)) for answer in answers)  # k clamped to the labels


# ---------------------------------------------------------------------------------------------------- folders
def rewrite(folder: Path, edit: Callable[[dict], object], consistent: bool = True) -> None:
    """Edit the manifest; ``consistent`` recomputes its digest, so a later check (not the digest) must refuse."""
    manifest = json.loads((folder / "manifest.json").read_text())
    edited = edit(manifest)
    manifest = edited if isinstance(edited, list) else manifest  # edits change the dict in place; a list replaces it
    if consistent and isinstance(manifest, dict):
        manifest["manifest_sha256"] = manifest_digest(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def relist(folder: Path, name: str) -> None:
    """Re-checksum ``name`` in the manifest (a hostile edit that keeps the checksums consistent)."""
    def edit(manifest):
        path = folder / name
        manifest["files"][name] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                   "bytes": path.stat().st_size}
    rewrite(folder, edit)


def flip_byte(path: Path, at: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def candidate_file(folder: Path) -> str:
    return json.loads((folder / "manifest.json").read_text())["stages"][0]["files"][0]


def swap_vectors_dim(folder: Path) -> None:
    np.save(folder / "vectors.npy", np.zeros((len(LABELS), 5), np.float32))


FOLDER_CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("manifest-missing", lambda f: (f / "manifest.json").unlink(), r"not an xmr index folder"),
    ("manifest-not-json", lambda f: (f / "manifest.json").write_text("{oops"), r"manifest.json: corrupted manifest"),
    ("manifest-empty", lambda f: (f / "manifest.json").write_text(""), r"manifest.json: corrupted manifest"),
    ("manifest-list", lambda f: rewrite(f, lambda m: [m]), r"format is 'list'"),
    ("manifest-foreign", lambda f: (f / "manifest.json").write_text('{"name": "app"}'), r"format is None"),
    ("manifest-future-version", lambda f: rewrite(f, lambda m: m.update(format_version=99)), r"version 99"),
    ("manifest-edited", lambda f: rewrite(f, lambda m: m["labels"].update(count=99), consistent=False),
     r"modified after it was written"),
    ("manifest-next-id-edited", lambda f: rewrite(f, lambda m: m["labels"].update(next_internal_id=0),
                                                   consistent=False), r"modified after it was written"),
    ("manifest-no-files", lambda f: rewrite(f, lambda m: m.update(files={})), r"lists no files"),
    ("manifest-no-encoder", lambda f: rewrite(f, lambda m: m.pop("encoder")), r"field 'encoder' is missing"),
    ("manifest-no-representation", lambda f: rewrite(f, lambda m: m.pop("representation")),
     r"field 'representation' is missing"),
    ("manifest-no-labels", lambda f: rewrite(f, lambda m: m.pop("labels")), r"field 'labels' is missing"),
    ("manifest-stages-not-list", lambda f: rewrite(f, lambda m: m.update(stages={})), r"field 'stages' is a dict"),
    ("manifest-files-entry-bad", lambda f: rewrite(f, lambda m: m["files"].update({"labels.parquet": "x"})),
     r"files\['labels.parquet'\] needs"),
    ("manifest-unknown-kind", lambda f: rewrite(f, lambda m: m.update(kind="crystal-ball")),
     r"unknown predictor kind 'crystal-ball'"),
    ("manifest-unknown-stage", lambda f: rewrite(f, lambda m: m["stages"][0].update(type="teleport")),
     r"unknown index stage 'teleport'"),
    ("manifest-file-outside-folder", lambda f: rewrite(f, lambda m: m["files"].update(
        {"../secret": {"sha256": "0" * 64, "bytes": 1}})),
     r"files\['\.\./secret'\] is not a file name inside the folder"),
    ("manifest-remote-code", lambda f: rewrite(f, lambda m: m["encoder"].update(trust_remote_code=True)),
     r"its encoder config sets trust_remote_code.*allow it for this run with --trust-remote-code"),
    ("labels-count-lies", lambda f: rewrite(f, lambda m: m["labels"].update(count=3)),
     r"4 label rows, manifest says 3"),
    ("dim-lies", lambda f: rewrite(f, lambda m: m["representation"].update(dim=7)),
     r"index.faiss has dim 32, manifest says 7"),
    ("metric-lies", lambda f: rewrite(f, lambda m: m["representation"].update(metric="l2")),
     r"unknown representation or metric in manifest"),
    ("labels-file-flipped", lambda f: flip_byte(f / "labels.parquet"), r"labels.parquet: checksum mismatch"),
    ("labels-file-truncated", lambda f: (f / "labels.parquet").write_bytes((f / "labels.parquet").read_bytes()[:50]),
     r"labels.parquet: size"),
    ("labels-file-missing", lambda f: (f / "labels.parquet").unlink(), r"labels.parquet: missing"),
    ("labels-corrupt-but-relisted", lambda f: ((f / "labels.parquet").write_bytes(b"PAR1 junk PAR1"),
                                               relist(f, "labels.parquet")),
     r"cannot read the label store: .*labels.parquet"),
    ("faiss-file-flipped", lambda f: flip_byte(f / candidate_file(f)), r"checksum mismatch"),
    ("faiss-file-corrupt-but-relisted", lambda f: ((f / candidate_file(f)).write_bytes(b"\0" * 64),
                                                   relist(f, candidate_file(f))), r"index.faiss: cannot read it"),
    ("unlisted-stage-file", lambda f: (swap_vectors_dim(f), rewrite(f, lambda m: m["stages"].append(
        {"role": "rerank", "type": "exact-dense", "files": ["vectors.npy"], "depth": 2}))),
     r"no checksum for \['vectors.npy'\]"),
    ("rerank-vectors-wrong-dim", lambda f: (swap_vectors_dim(f), relist(f, "vectors.npy"), rewrite(
        f, lambda m: m["stages"].append({"role": "rerank", "type": "exact-dense", "files": ["vectors.npy"],
                                         "depth": 2}))),
                                          r"vectors.npy: float32 \(4, 5\), expected float32 \(labels, 32\)"),
    ("stage-file-symlink-outside", lambda f: ((f / "labels.parquet").rename(f.parent / "moved.parquet"),
                                              (f / "labels.parquet").symlink_to(f.parent / "moved.parquet")),
     r"labels.parquet: a symbolic link; an index folder holds regular files only"),
]


@pytest.mark.parametrize(("name", "corrupt", "message"), FOLDER_CASES, ids=[case[0] for case in FOLDER_CASES])
@pytest.mark.parametrize("command", ["info", "query"])
def test_corrupted_folders(name, corrupt, message, command, built, tmp_path, capsys):
    folder = tmp_path / "index"
    shutil.copytree(built, folder)
    corrupt(folder)
    argv = ["info", str(folder)] if command == "info" else ["query", str(folder), "python"]
    result = run_cli(argv, tmp_path, capsys)
    if command == "info" and name in INFO_READS_MANIFEST_ONLY:
        return  # info reports what the manifest says; the query below must refuse
    assert_refused(result, message)


# info checks the manifest and the checksums but does not open the FAISS file, the label store or the encoder
INFO_READS_MANIFEST_ONLY = {"manifest-remote-code", "labels-count-lies", "dim-lies", "metric-lies",
                            "labels-corrupt-but-relisted", "faiss-file-corrupt-but-relisted",
                            "rerank-vectors-wrong-dim", "manifest-unknown-stage"}


def test_no_verify_skips_checksums_but_not_sizes(built, tmp_path, capsys):
    folder = tmp_path / "index"
    shutil.copytree(built, folder)
    (folder / "labels.parquet").write_bytes(b"x")
    assert_refused(run_cli(["query", str(folder), "--no-verify", "python"], tmp_path, capsys), r"labels.parquet: size")


# ---------------------------------------------------------------------------------------------------- build --out
def out_cases(tmp: Path) -> list[tuple[str, Path, str]]:
    (tmp / "file.txt").write_text("mine")
    (tmp / "app").mkdir()
    (tmp / "app" / "manifest.json").write_text('{"name": "app"}')
    (tmp / "nonempty").mkdir()
    (tmp / "nonempty" / "notes.md").write_text("keep me")
    return [("regular-file", tmp / "file.txt", r"file.txt: exists and is not a folder"),
            ("foreign-manifest", tmp / "app", r"app: exists and is not an xmr index folder"),
            ("non-index-folder", tmp / "nonempty", r"nonempty: exists and is not an xmr index folder"),
            ("inside-a-file", tmp / "file.txt" / "index", r"index: cannot be made, .*file.txt is a file"),
            ("root", Path("/"), r"/: exists and is not an xmr index folder")]


def test_build_out_that_must_not_be_replaced(tiny_model, tmp_path, capsys):
    (tmp_path / "labels.jsonl").write_text(jsonl(LABELS))
    for _, out, message in out_cases(tmp_path):
        result = run_cli(["build", "--labels", str(tmp_path / "labels.jsonl"), "--encoder", tiny_model,
                          "--out", str(out)], tmp_path, capsys)
        assert_refused(result, message)


def test_build_replaces_its_own_index_and_keeps_its_neighbours(tiny_model, tmp_path, capsys):
    (tmp_path / "labels.jsonl").write_text(jsonl(LABELS))
    (tmp_path / "neighbour.txt").write_text("untouched")
    argv = ["build", "--labels", str(tmp_path / "labels.jsonl"), "--encoder", tiny_model,
            "--out", str(tmp_path / "index")]
    assert run_cli(argv, tmp_path, capsys, tmp_path / "index")[0] == 0
    (tmp_path / "labels.jsonl").write_text(jsonl(LABELS[:3]))
    before = snapshot(tmp_path, tmp_path / "index")
    assert main(argv) == 0 and snapshot(tmp_path, tmp_path / "index") == before
    assert len(xmr.load_index(tmp_path / "index")) == 3


# ---------------------------------------------------------------------------------------------------- recipes
@pytest.fixture
def recipe_folder(tmp_path, tiny_model, monkeypatch) -> Path:
    (tmp_path / "train.jsonl").write_text(jsonl([{"text": "python code", "labels": [1]},
                                                 {"text": "drive a truck", "labels": [2]}]))
    (tmp_path / "labels.jsonl").write_text(jsonl(LABELS))
    monkeypatch.chdir(tmp_path)  # a recipe's run folder is runs/NAME under the working directory
    return tmp_path


BASE_RECIPE = {"name": "fuzz", "seed": 0, "data": {"train": "train.jsonl", "labels": "labels.jsonl"},
               "encoder": {"type": "sentence-transformers", "model": "TINY"}, "schedule": {"max_steps": 1}}

RECIPE_CASES: list[tuple[str, Callable[[dict], object] | str | bytes, list[str], str]] = [
    ("not-yaml", "name: [unclosed\n", [], r"recipe.yaml: line \d+ bad YAML"),
    ("a-list", "- name\n- data\n", [], r"a recipe is a mapping of fields, got list"),
    ("empty-file", "", [], r"a recipe is a mapping of fields, got NoneType"),
    ("not-utf8", b"seed: 0\nname: caf\xe9\n", [], r"recipe.yaml:2: not UTF-8 text"),
    ("unknown-key", lambda r: r.update(epocks=3), [], r"epocks: unknown key"),
    ("unknown-section-key", lambda r: r["schedule"].update(max_stpes=3), [], r"schedule.max_stpes: unknown key"),
    ("unknown-method", lambda r: r.update(method="alchemy"), [], r"method: 'alchemy' is not a known method"),
    ("no-name", lambda r: r.pop("name"), [], r"recipe.yaml: name: required"),
    ("name-with-slash", lambda r: r.update(name="../../elsewhere"), [],
     r"name: '../../elsewhere' must be a plain folder"),
    ("no-train-data", lambda r: r["data"].pop("train"), [], r"data.train"),
    ("negative-lr", lambda r: r.update(optimizer={"lr": -1e-4}), [], r"optimizer.lr"),
    ("negative-clip", lambda r: r.update(optimizer={"clip_norm": -1.0}), [], r"optimizer.clip_norm"),
    ("warmup-above-one", lambda r: r.update(optimizer={"warmup": 1.5}), [], r"optimizer.warmup"),
    ("negative-weight-decay", lambda r: r.update(optimizer={"weight_decay": -0.1}), [], r"optimizer.weight_decay"),
    ("lr-a-string", lambda r: r.update(optimizer={"lr": "fast"}), [], r"optimizer.lr"),
    ("negative-temperature", lambda r: r.update(loss={"name": "multi-positive-infonce",
                                                      "options": {"temperature": -0.05}}), [],
                                                       r"loss.options: .*temperature must be positive"),
    ("unknown-loss", lambda r: r.update(loss={"name": "magic"}), [], r"loss.name"),
    ("keep-zero", lambda r: r.update(checkpoint={"keep": 0}), [], r"checkpoint.keep"),
    ("zero-batch", lambda r: r.update(batching={"batch_size": 0}), [], r"batching.batch_size"),
    ("negative-steps", lambda r: r["schedule"].update(max_steps=-1), [], r"schedule.max_steps"),
    ("negative-epochs", lambda r: r.update(schedule={"epochs": -1}), [], r"schedule.epochs"),
    ("unknown-metric", lambda r: r.update(evaluation={"metric": "accuracy"}), [], r"evaluation.metric"),
    ("unknown-precision", lambda r: r.update(optimizer={"precision": "fp8"}), [], r"optimizer.precision"),
    ("section-not-mapping", lambda r: r.update(optimizer=[1, 2]), [], r"optimizer: expected a mapping"),
    ("set-without-equals", lambda r: None, ["--set", "schedule.max_steps"],
     r"train: argument --set: --set needs FIELD=VALUE"),
    ("set-unknown-field", lambda r: None, ["--set", "schedule.max_stpes=2"], r"schedule.max_stpes: unknown key"),
    ("set-bad-value", lambda r: None, ["--set", "optimizer.lr=-3"], r"optimizer.lr"),
    ("resume-and-restart", lambda r: None, ["--resume", "--restart"],
     r"argument --restart: not allowed with argument --resume"),
    ("recipe-missing", "MISSING", [], r"nowhere.yaml: cannot read recipe: .*No such file"),
]


@pytest.mark.parametrize(("name", "edit", "flags", "message"), RECIPE_CASES, ids=[case[0] for case in RECIPE_CASES])
def test_recipes(name, edit, flags, message, recipe_folder, tiny_model, capsys):
    path = recipe_folder / "recipe.yaml"
    if isinstance(edit, bytes):
        path.write_bytes(edit)
    elif edit == "MISSING":
        path = recipe_folder / "nowhere.yaml"
    elif isinstance(edit, str):
        path.write_text(edit)
    else:
        recipe = json.loads(json.dumps(BASE_RECIPE).replace("TINY", tiny_model))
        edit(recipe)
        path.write_text(yaml.safe_dump(recipe))
    result = run_cli(["train", str(path), *flags], recipe_folder, capsys)
    assert_refused(result, message)
    assert not (recipe_folder / "runs").exists()  # refused before any run folder was made


def test_the_base_recipe_of_the_suite_is_accepted(recipe_folder, tiny_model):
    """The recipe cases above are refused for their edit, not because the base recipe is broken."""
    recipe = json.loads(json.dumps(BASE_RECIPE).replace("TINY", tiny_model))
    (recipe_folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert xmr.train.load_recipe(recipe_folder / "recipe.yaml").name == "fuzz"


# ---------------------------------------------------------------------------------------------------- eval
EVAL_CASES = [
    ("test-missing", ["--test", "{dir}/nope.jsonl"], {}, r"nope.jsonl: no such data file"),
    ("test-bad-line", ["--test", "{dir}/t.jsonl"], {"t.jsonl": '{"text": "python", "labels": [1]}\n{"text": 1}\n'},
     r"t.jsonl:2: field 'text' is missing or empty"),
    ("test-labels-not-list", ["--test", "{dir}/t.jsonl"], {"t.jsonl": '{"text": "python", "labels": 1}\n'},
     r"t.jsonl:1.*labels"),
    ("k-zero", ["--test", "{dir}/t.jsonl", "-k", "0"], {"t.jsonl": '{"text": "python", "labels": [1]}\n'},
     r"k must be"),
    ("filter-bad-line", ["--test", "{dir}/t.jsonl", "--filter", "{dir}/f.txt"],
     {"t.jsonl": '{"text": "python", "labels": [1]}\n', "f.txt": "0 1\nzero one\n"}, r"f.txt:2"),
    ("group-by-missing-field", ["--test", "{dir}/t.jsonl", "--group-by", "subset"],
     {"t.jsonl": '{"text": "python", "labels": [1]}\n'}, r"--group-by subset: no record of .*t.jsonl has that field"),
]


@pytest.mark.parametrize(("name", "argv", "files", "message"), EVAL_CASES, ids=[case[0] for case in EVAL_CASES])
def test_eval_inputs(name, argv, files, message, built, tmp_path, capsys):
    for file, content in files.items():
        (tmp_path / file).write_text(content)
    result = run_cli(["eval", str(built), *(part.replace("{dir}", str(tmp_path)) for part in argv)], tmp_path, capsys)
    assert_refused(result, message)


def test_eval_accepts_good_input_and_writes_only_its_out(built, tmp_path, capsys):
    """A gold label the index lacks is accepted, reported and kept in recall's denominator (never dropped)."""
    (tmp_path / "t.jsonl").write_text(jsonl([{"text": "python developer", "labels": [1, 99]},
                                             {"text": "kitchen cook", "labels": [4, 3]}]))
    code, out, err = run_cli(["eval", str(built), "--test", str(tmp_path / "t.jsonl"), "-k", "1", "4",
                              "--out", str(tmp_path / "run")], tmp_path, capsys, tmp_path / "run")
    assert code == 0, err
    result = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result["true_labels_missing_from_index"] == 1  # one label occurrence
    assert result["metrics"]["R@4"] == pytest.approx(0.75)  # top-4 of 4 labels: all found but 99 (q1 1/2, q2 2/2)


# ---------------------------------------------------------------------------------------------------- training data
TRAINING_DATA_CASES = [
    ("bad-line", '{"text": "python code", "labels": [1]}\n{"text": 5}\n', r"train.jsonl:2: field 'text'"),
    ("no-known-label", '{"text": "python code", "labels": [77]}\n', r"no training query has a label from"),
    ("not-utf8", b'{"text": "python code", "labels": [1]}\n{"text": "caf\xe9", "labels": [2]}\n',
     r"train.jsonl:2: not UTF-8 text"),
]


@pytest.mark.parametrize(("name", "content", "message"), TRAINING_DATA_CASES, ids=[c[0] for c in TRAINING_DATA_CASES])
def test_bad_training_data_leaves_no_run_behind(name, content, message, recipe_folder, tiny_model, capsys):
    """Refused while reading its data: the run folder this command made is gone, so the same command runs again
    once the data is fixed (no 'already exists, use --resume')."""
    path = recipe_folder / "train.jsonl"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    (recipe_folder / "recipe.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(BASE_RECIPE).replace(
        "TINY", tiny_model))))
    (recipe_folder / "runs" / "other").mkdir(parents=True)  # someone else's run is never touched
    (recipe_folder / "runs" / "other" / "recipe.json").write_text("{}")
    runs = recipe_folder / "runs"
    assert_refused(run_cli(["train", str(recipe_folder / "recipe.yaml")], recipe_folder, capsys,
                           (runs / "fuzz", runs / ".fuzz.lock")), message)
    assert sorted(p.name for p in (recipe_folder / "runs").iterdir() if not p.name.startswith(".")) == ["other"]


def test_a_run_folder_that_exists_is_refused_and_kept(recipe_folder, tiny_model, capsys):
    (recipe_folder / "recipe.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(BASE_RECIPE).replace(
        "TINY", tiny_model))))
    (recipe_folder / "runs" / "fuzz").mkdir(parents=True)
    (recipe_folder / "runs" / "fuzz" / "notes.txt").write_text("mine")
    assert_refused(run_cli(["train", str(recipe_folder / "recipe.yaml")], recipe_folder, capsys,
                           recipe_folder / "runs" / ".fuzz.lock"),
                   r"runs/fuzz already exists: continue it with --resume or start over with --restart")
