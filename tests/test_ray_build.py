"""xmr build --engine ray: Ray Data + an encoder actor pool, one trained quantiser, shards merged into on-disk IVF
lists; the same labels and scores as the single-process build. Also: sharded search runs its shards in parallel."""

import json
import shutil
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import label_records

import xmr
from xmr.cli import main
from xmr.errors import CatalogueError, UnsupportedOperation
from xmr.index.recipes import IndexRecipe
from xmr.index.shards import ShardedIndex

QUERIES = ["python data engineer", "cook food kitchen", "repair hydraulic machine", "music teach children",
           "cloud network security", "paint wall house"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """600 labels in two Parquet shards (string ids, to show ids are looked up, not implied by order)."""
    folder = tmp_path_factory.mktemp("catalogue")
    records = [{**record, "id": f"L{record['id']}"} for record in label_records(600)]
    pq.write_table(pa.Table.from_pylist(records[:250]), folder / "part-a.parquet")
    pq.write_table(pa.Table.from_pylist(records[250:]), folder / "part-b.parquet")
    return folder, records


def test_wrong_inputs_are_refused_before_ray_starts(shards, tiny_encoder, tmp_path, labels_file, capsys):
    from xmr.index.ray_build import build_index_ray

    with pytest.raises(CatalogueError, match="reads Parquet catalogue shards"):
        build_index_ray(labels_file, tiny_encoder, tmp_path / "out", factory="IVF8,Flat")
    with pytest.raises(UnsupportedOperation, match="'HNSW32' is not an IVF factory"):
        build_index_ray(shards[0], tiny_encoder, tmp_path / "out", factory="HNSW32")
    assert main(["build", "--engine", "ray", "--labels", str(labels_file), "--out", str(tmp_path / "cli"),
                 "--encoder", tiny_encoder.model_name, "--factory", "IVF8,Flat"]) == 2
    assert "reads Parquet catalogue shards" in capsys.readouterr().err
    import ray

    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def local_cluster():
    """A Ray cluster this test module starts itself on this machine: a head node (1 CPU: the read tasks) and
    2 worker nodes of 1 CPU each (the encoder actors)."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [IndexRecipe("ivf", "IVF8,Flat", search={"nprobe": 3}),
                                    IndexRecipe("ivf-sq8-rerank", "IVF8,SQ8", search={"nprobe": 3}, rerank=40)],
                         ids=["ivf-flat", "ivf-sq8-rerank"])
def test_the_ray_build_answers_like_the_single_process_build(local_cluster, shards, tiny_encoder, tmp_path, recipe):
    from xmr.index.ray_build import build_index_ray

    folder, records = shards
    single = xmr.build_index(xmr.LabelCatalogue.from_records(records), tiny_encoder, tmp_path / "single",
                             recipe=recipe)
    if recipe.rerank:  # the Python API
        built = build_index_ray(folder, tiny_encoder, tmp_path / "ray", recipe=recipe, workers=2, block_rows=100)
    else:  # the command line
        assert main(["build", "--engine", "ray", "--workers", "2", "--labels", str(folder), "--out",
                     str(tmp_path / "ray"), "--encoder", tiny_encoder.model_name, "--device", "cpu", "--factory",
                     recipe.factory, "--nprobe", str(recipe.search["nprobe"])]) == 0
        built = xmr.load_index(tmp_path / "ray")
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert [stage["type"] for stage in manifest["stages"]] == ["faiss-ondisk"] + (["exact-dense"] if recipe.rerank
                                                                                   else [])
    assert "index.ivfdata" in manifest["files"] and manifest["build"]["engine"] == "ray"
    # 600 rows in blocks of at most 100 (API) or 4,096 (CLI default), at least one block per worker; whether the
    # second actor gets one depends on how fast the first finishes (scripts/bench_ray_build.py measures both at work)
    assert manifest["build"]["workers"] == 2 and manifest["build"]["encoder_processes"] in (1, 2)
    assert manifest["build"]["embedding_shards"] == (6 if recipe.rerank else 2)
    added = manifest["build"]["add_shards"]
    assert len(added) == min(2, manifest["build"]["embedding_shards"]) and sum(s["labels"] for s in added) == 600
    assert single.manifest["stages"][0]["trained_on"] == manifest["stages"][0]["trained_on"] == 600

    shutil.move(tmp_path / "ray", tmp_path / "moved")  # the list file is found beside the index file
    moved = xmr.load_index(tmp_path / "moved", mmap=True)
    for knobs in ({}, {"nprobe": 8}):
        expected = single.predict(QUERIES, k=10, **knobs)
        for index in (built, moved):
            got = index.predict(QUERIES, k=10, **knobs)
            assert [got.label_ids(q) for q in range(len(QUERIES))] == [expected.label_ids(q)
                                                                        for q in range(len(QUERIES))]
            np.testing.assert_allclose(got.scores, expected.scores, atol=1e-5)
    with pytest.raises(UnsupportedOperation, match="read-only"):
        xmr.load_index(tmp_path / "moved").add([{"id": "new", "text": "python"}])


class SlowShard:
    """A shard whose every search takes 0.3 s more (as a remote or very large one would)."""

    def __init__(self, index):
        self.index = index
        self.manifest, self.catalogue, self.internal_ids = index.manifest, index.catalogue, index.internal_ids

    def __getattr__(self, name):
        return getattr(self.index, name)

    def __len__(self):
        return len(self.index)

    def predict_encoded(self, queries, k=10, **knobs):
        time.sleep(0.3)
        return self.index.predict_encoded(queries, k=k, **knobs)


def test_sharded_search_runs_its_shards_in_parallel(tiny_encoder):
    catalogue = xmr.LabelCatalogue.from_records(label_records(300))
    vectors = tiny_encoder.encode(catalogue.items(), "label").values
    parts = [list(range(start, 300, 3)) for start in range(3)]
    sharded = ShardedIndex([SlowShard(xmr.build_index_from_embeddings(catalogue.take(rows), vectors[rows], None,
                                                                      encoder=tiny_encoder)) for rows in parts])
    started = time.perf_counter()
    result = sharded.search_embeddings(vectors[:6], k=4)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.85, f"3 shards of 0.3 s took {elapsed:.2f} s: searched one after another"
    # the merge is exact: each label's own vector finds that label first, whichever shard holds it
    assert [result.label_ids(q)[0] for q in range(6)] == catalogue.ids[:6]
