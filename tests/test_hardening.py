"""Hostile and careless input (issue 13, first part): no code runs because a folder says so, a foreign folder is never
replaced, an edited manifest is refused, bad files and queries give one line and exit 2."""

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xmr
from xmr.cli import main
from xmr.errors import CatalogueError, IndexFolderError, XMRError
from xmr.index.folder import manifest_digest
from xmr.train import load_recipe

REUTERS_RECIPE = Path(__file__).parents[1] / "training" / "reuters-labelvectors.yaml"


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("xmr: error: "), lines
    return lines[0]


def test_an_edited_manifest_is_refused(labels_file, tiny_encoder, tmp_path):
    out = tmp_path / "index"
    xmr.build_index(xmr.LabelCatalogue.from_file(labels_file), tiny_encoder, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["labels"]["next_internal_id"] = 3  # would make add() reuse internal ids
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFolderError, match="manifest was modified after it was written"):
        xmr.load_index(out)
    manifest["files"] = {}
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFolderError, match="lists no files with checksums"):
        xmr.load_index(out)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda manifest: [manifest], "format is 'list'"),
    (lambda manifest: {key: value for key, value in manifest.items() if key != "stages"}, "field 'stages' is missing"),
    (lambda manifest: {**manifest, "labels": "many"}, "field 'labels' is a str"),
    (lambda manifest: {**manifest, "files": {"index.faiss": {"bytes": 1}}}, r"files\['index.faiss'\] needs 'sha256'"),
])
def test_a_hand_made_manifest_is_refused_by_field(labels_file, tiny_encoder, tmp_path, capsys, edit, message):
    out = tmp_path / "index"
    xmr.build_index(xmr.LabelCatalogue.from_file(labels_file), tiny_encoder, out)
    manifest = edit(json.loads((out / "manifest.json").read_text()))
    if isinstance(manifest, dict):
        manifest["manifest_sha256"] = manifest_digest(manifest)  # consistent, so the field check is what refuses
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["info", str(out)]) == 2
    assert re.search(message, one_error_line(capsys))


def test_a_folder_with_someone_elses_manifest_is_never_replaced(labels_file, tiny_model, tmp_path, capsys):
    app = tmp_path / "webapp"
    app.mkdir()
    (app / "manifest.json").write_text('{"name": "my web app", "icons": []}')
    (app / "index.html").write_text("<h1>sources</h1>")
    code = main(["build", "--labels", str(labels_file), "--encoder", tiny_model, "--out", str(app)])
    assert code == 2 and "is not an xmr index folder" in one_error_line(capsys)
    assert sorted(path.name for path in app.iterdir()) == ["index.html", "manifest.json"]
    assert (app / "index.html").read_text() == "<h1>sources</h1>"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["labels.jsonl", "webapp"]  # no temporaries left


def test_an_out_that_cannot_be_replaced_is_refused_before_encoding(labels_file, tiny_model, tmp_path, capsys,
                                                                   monkeypatch):
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    encoded = []
    monkeypatch.setattr(xmr.encoders.SentenceTransformerEncoder, "encode_labels",
                        lambda self, items: encoded.append(len(items)))
    for out, message in ((".", "is not an xmr index folder"), ("notes.txt", "is not a folder")):
        assert main(["build", "--labels", str(labels_file), "--encoder", tiny_model, "--out", out]) == 2
        assert message in one_error_line(capsys)
    assert encoded == [] and (tmp_path / "notes.txt").read_text() == "mine"


def test_built_folders_follow_the_umask(labels_file, tiny_encoder, tmp_path):
    previous = os.umask(0o022)
    try:
        xmr.build_index(xmr.LabelCatalogue.from_file(labels_file), tiny_encoder, tmp_path / "shared")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o755  # others can read a shared index


def test_remote_code_runs_only_when_the_caller_allows_it(labels_file, tiny_model, tmp_path, capsys):
    out = tmp_path / "index"
    encoder = xmr.load_encoder(tiny_model)
    xmr.build_index(xmr.LabelCatalogue.from_file(labels_file), encoder, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["encoder"]["trust_remote_code"] = True  # what a hostile folder would say (re-sealed, so it loads)
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["query", str(out), "python"]) == 2
    assert "--trust-remote-code" in one_error_line(capsys)
    assert main(["info", str(out)]) == 0
    assert "sets trust_remote_code" in capsys.readouterr().out
    with pytest.raises(IndexFolderError, match="trust_remote_code"):
        xmr.load_index(out).search(["python"])
    assert xmr.load_index(out, trust_remote_code=True).encoder.trust_remote_code is True  # the caller opted in


def test_query_texts_may_follow_the_options(labels_file, tiny_encoder, tmp_path, capsys):
    xmr.build_index(xmr.LabelCatalogue.from_file(labels_file), tiny_encoder, tmp_path / "index")
    assert main(["query", str(tmp_path / "index"), "python sql", "-k", "2", "--json", "cook food"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [entry["query"] for entry in printed] == ["python sql", "cook food"]
    assert all(len(entry["hits"]) == 2 for entry in printed)
    with pytest.raises(SystemExit):
        main(["query", str(tmp_path / "index"), "-k", "2", "--bogus", "text"])


def test_bad_queries_are_refused_naming_the_query(labels_file, tiny_encoder, tmp_path, capsys):
    index = xmr.build_index(xmr.LabelCatalogue.from_file(labels_file), tiny_encoder, tmp_path / "index")
    for queries, message in ((["python", "   "], "query 2 has no text"), (None, "queries must be"),
                             ([{"text": ""}], "query 1 has no text"), ([7], "query 1 is a int")):
        with pytest.raises(XMRError, match=message):
            index.search(queries)
    vectors = tiny_encoder.encode_queries(["python", "cook"])
    vectors[1, 3] = np.nan
    with pytest.raises(XMRError, match="query vector 1 has NaN"):
        index.search_embeddings(vectors)
    assert main(["query", str(tmp_path / "index"), " "]) == 2
    assert "query 1 has no text" in one_error_line(capsys)


def test_an_id_beyond_int64_is_refused_where_it_is_read(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"id": 1, "text": "a"}\n{"id": 99999999999999999999, "text": "b"}\n')
    with pytest.raises(CatalogueError, match=r"labels.jsonl:2: field 'id' is 99999999999999999999, outside the int64"):
        xmr.LabelCatalogue.from_file(path)


def test_a_csv_with_a_byte_order_mark_reads_its_header(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffid,text\n1,hello\n2,world\n".encode())
    assert xmr.LabelCatalogue.from_file(path).texts == ["hello", "world"]


def test_training_numbers_out_of_range_are_all_refused_at_load():
    overrides = {"optimizer.lr": -1e-4, "optimizer.clip_norm": -1.0, "loss.options": {"temperature": -0.05},
                 "evaluation.metric": "P@99", "label_vectors.lr": -1.0}
    with pytest.raises(XMRError) as refused:
        load_recipe(REUTERS_RECIPE, overrides)
    for field in ("optimizer.lr", "optimizer.clip_norm", "temperature must be positive", "evaluation.metric",
                  "label_vectors.lr"):
        assert field in str(refused.value)


def test_a_sharded_folder_refuses_a_swapped_shard(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 8)).astype(np.float32)
    catalogue = xmr.LabelCatalogue.from_records([{"id": row, "text": f"label {row}"} for row in range(40)])
    halves = [xmr.build_index_from_embeddings(catalogue.take(list(rows)), vectors[rows], None)
              for rows in (range(0, 20), range(20, 40))]
    xmr.ShardedIndex(halves).save(tmp_path / "sharded")
    xmr.build_index_from_embeddings(catalogue.take(list(range(20, 40))), vectors[20:] * 2, tmp_path / "other")
    (tmp_path / "sharded" / "shard-001").rename(tmp_path / "kept")
    (tmp_path / "other").rename(tmp_path / "sharded" / "shard-001")
    with pytest.raises(IndexFolderError, match="shard shard-001 is not the one this folder was saved with"):
        xmr.load_predictor(tmp_path / "sharded")


def test_image_paths_stay_inside_the_catalogues_folder_unless_allowed(tmp_path, monkeypatch):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    (data / "pics").mkdir(parents=True)
    elsewhere.mkdir()
    (data / "pics" / "ok.jpg").write_bytes(b"jpeg")
    (elsewhere / "secret.jpg").write_bytes(b"private")
    (data / "pics" / "link.jpg").symlink_to(elsewhere / "secret.jpg")
    catalogue = data / "labels.jsonl"

    def read(image, **options):
        catalogue.write_text(json.dumps({"id": 1, "text": "a", "image": "pics/ok.jpg"}) + "\n"
                             + json.dumps({"id": 2, "text": "b", "image": image}) + "\n")
        return xmr.LabelCatalogue.from_file(catalogue, **options)

    assert read("pics/ok.jpg").images[1] == [str((data / "pics" / "ok.jpg").resolve())]
    for image in ("../elsewhere/secret.jpg", str(elsewhere / "secret.jpg"), "pics/link.jpg", "../../etc/passwd"):
        with pytest.raises(CatalogueError, match=r"labels.jsonl:2: image .* resolves outside"):
            read(image)
    assert read(str(elsewhere / "secret.jpg"), image_roots=[elsewhere]).images[1][0].endswith("secret.jpg")
    with pytest.raises(CatalogueError, match=r"labels.jsonl:2: image '/dev/zero' is not a regular file"):
        read("/dev/zero", image_roots=["/dev"])
    monkeypatch.setattr(xmr.catalogue, "MAX_IMAGE_BYTES", 3)
    with pytest.raises(CatalogueError, match=r"labels.jsonl:1: image 'pics/ok.jpg' is 4 bytes, more than the 3"):
        read("pics/ok.jpg")


# ---- crashes and concurrent writers: kills injected at each point of a save, including inside the swap window ------
# kills injected into a writer at each point of a save (a script preamble: `point` and `out` are set before it runs)
INJECT = """
import os
from xmr.io import atomic
die = lambda *args, **kwargs: os._exit(9)
if point == "writing-faiss":  # the label store is written, the FAISS index not yet
    from xmr.index.stages.faiss_dense import FaissDenseStage
    FaissDenseStage.write = die
elif point == "before-swap":
    atomic.swap_into_place = die
elif point == "between-renames":
    atomic.exchange = lambda first, second: False  # a system without atomic exchange: two renames
    rename = os.rename
    def first_rename_then_die(source, target):
        rename(source, target)
        if str(source) == out:
            os._exit(9)
    atomic.os.rename = first_rename_then_die
elif point == "after-exchange":
    atomic.shutil.rmtree = die
"""
SAVE = """
import sys
import numpy as np
import xmr
point, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
""" + INJECT + """
vectors = np.random.default_rng(n).normal(size=(n, 8)).astype(np.float32)
catalogue = xmr.LabelCatalogue.from_records([{"id": row, "text": f"label {row}"} for row in range(n)])
xmr.build_index_from_embeddings(catalogue, vectors, out)
"""


def save_in_process(point: str, out: Path, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SAVE, point, str(out), str(n)], stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize(("point", "survivor"), [("writing-faiss", 30), ("before-swap", 30),
                                                 ("between-renames", 30), ("after-exchange", 40)])
def test_a_save_killed_at_any_point_leaves_an_index_that_loads(tmp_path, point, survivor):
    out = tmp_path / "index"
    assert save_in_process("none", out, 30).wait() == 0
    assert save_in_process(point, out, 40).wait() == 9  # killed at the injected point
    index = xmr.load_index(out)  # the old or the new index, whole (checksums verified)
    assert len(index) == survivor and len(index.search_embeddings(np.ones(8, np.float32), k=3).ids[0]) == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == ["index"]  # the next open cleaned what was left
    assert save_in_process("none", out, 50).wait() == 0 and len(xmr.load_index(out)) == 50


def test_concurrent_writers_take_turns_and_the_last_one_wins(tmp_path):
    out = tmp_path / "index"
    writers = [save_in_process("none", out, n) for n in (20, 21, 22, 23)]
    assert [writer.wait() for writer in writers] == [0, 0, 0, 0], [writer.stderr.read() for writer in writers]
    assert len(xmr.load_index(out)) in (20, 21, 22, 23)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["index"]


# ---- the real `xmr build` killed at every step, alone and beside a concurrent writer -------------------------------
BUILD = """
import os, sys
import xmr
from xmr.cli import main
point, labels, model, out = sys.argv[1:5]
""" + INJECT + """

def after(owner, name):  # run the original, then die: the step completed, the next one never starts
    original = getattr(owner, name)
    def run_then_die(*args, **kwargs):
        original(*args, **kwargs)
        os._exit(9)
    setattr(owner, name, run_then_die)

if point == "reading-catalogue":
    read = xmr.LabelCatalogue.from_file.__func__
    xmr.LabelCatalogue.from_file = classmethod(lambda cls, *a, **k: (read(cls, *a, **k), os._exit(9)))
elif point == "encoding":
    xmr.encoders.SentenceTransformerEncoder.encode_labels = die
elif point == "writing-label-store":
    import pyarrow.parquet as pq
    write_table = pq.write_table
    pq.write_table = lambda table, where, **k: (write_table(table.slice(0, 1), where, **k), os._exit(9))
elif point == "writing-manifest":
    from xmr.index import folder
    after(folder, "write_manifest")
sys.exit(main(["build", "--labels", labels, "--encoder", model, "--out", out]))
"""
BUILD_POINTS = ["reading-catalogue", "encoding", "writing-label-store", "writing-faiss", "writing-manifest",
                "before-swap", "between-renames", "after-exchange"]


def build_in_process(point: str, labels: Path, model: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BUILD, point, str(labels), model, str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def catalogue_of(folder: Path, count: int) -> Path:
    path = folder / f"labels-{count}.jsonl"
    path.write_text("".join(json.dumps({"id": row, "text": f"label {row} data"}) + "\n" for row in range(count)))
    return path


def assert_one_clean_index(root: Path, out: Path, counts: set[int]) -> None:
    index = xmr.load_index(out)  # the old or a new index, whole: checksums verified
    assert len(index) in counts and len(index.search("label data", k=3).ids[0]) == 3
    assert sorted(path.name for path in root.iterdir() if not path.name.startswith("labels-")) == ["index"]


@pytest.mark.slow
@pytest.mark.parametrize("point", BUILD_POINTS)
def test_xmr_build_killed_at_each_step_leaves_the_old_or_the_new_index(point, tiny_model, tmp_path):
    out = tmp_path / "index"
    assert main(["build", "--labels", str(catalogue_of(tmp_path, 30)), "--encoder", tiny_model,
                 "--out", str(out)]) == 0
    killed = build_in_process(point, catalogue_of(tmp_path, 40), tiny_model, out)
    assert killed.wait() == 9, killed.stderr.read()  # died at the injected step, not of something else
    assert_one_clean_index(tmp_path, out, {40} if point == "after-exchange" else {30})
    assert main(["build", "--labels", str(catalogue_of(tmp_path, 50)), "--encoder", tiny_model,
                 "--out", str(out)]) == 0
    assert_one_clean_index(tmp_path, out, {50})


@pytest.mark.slow
@pytest.mark.parametrize("point", ["encoding", "writing-faiss", "before-swap", "after-exchange"])
def test_a_writer_killed_beside_a_concurrent_one_loses_nothing_the_other_saved(point, tiny_model, tmp_path):
    out = tmp_path / "index"
    assert main(["build", "--labels", str(catalogue_of(tmp_path, 30)), "--encoder", tiny_model,
                 "--out", str(out)]) == 0
    killed = build_in_process(point, catalogue_of(tmp_path, 40), tiny_model, out)
    survivor = build_in_process("none", catalogue_of(tmp_path, 50), tiny_model, out)
    assert killed.wait() == 9 and survivor.wait() == 0, survivor.stderr.read()
    # the completed save is there, unless the killed one had already swapped its own in after it
    assert_one_clean_index(tmp_path, out, {40, 50} if point == "after-exchange" else {50})


def test_a_new_temporary_is_never_cleaned_by_a_writer_that_starts_at_the_same_moment(tmp_path, monkeypatch):
    """Injection: writer A pauses right after making its temporary, writer B starts then. B's clean_stale must not
    see A's temporary before A has marked it alive (A made and marked it under the parent lock)."""
    import threading
    import time

    from xmr.io import atomic

    make = atomic.tempfile.mkdtemp
    paused = threading.Event()

    def make_then_pause(*args, **kwargs):
        folder = make(*args, **kwargs)
        if threading.current_thread().name == "A":
            paused.set()
            time.sleep(0.5)  # the window in which another writer's cleanup used to remove this folder
        return folder

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", make_then_pause)
    out, errors = tmp_path / "folder", []

    def write_a():
        try:
            atomic.write_folder_atomically(out, lambda folder: (folder / "who").write_text("A"))
        except OSError as error:
            errors.append(error)

    writer = threading.Thread(target=write_a, name="A")
    writer.start()
    assert paused.wait(5)
    atomic.write_folder_atomically(out, lambda folder: (folder / "who").write_text("B"))
    writer.join()
    assert errors == [] and (out / "who").read_text() in ("A", "B")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["folder"]
