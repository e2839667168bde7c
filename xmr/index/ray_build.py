"""``xmr build --engine ray``: a label index built by a Ray cluster, for catalogues one process cannot encode in time.

1. **Encode** (Ray Data): ``ray.data.read_parquet`` reads the catalogue's Parquet shards; ``map_batches`` with an
   actor pool (``concurrency=workers``, one encoder loaded per actor, ``num_gpus=1`` per actor when asked) encodes
   each block (the rows split into blocks of at most ``block_rows``, at least one per worker) and writes it as an
   embedding shard (``part-*.npy``) into the scratch folder, passing on only the label ids and where each vector
   went, never the vectors.
2. **Train once**: the IVF quantiser (and PQ/SQ codebooks) is trained in the driver on the rows the single-process
   build samples (:func:`faiss_ops.training_rows`), gathered from the shards in row order, so both builds train the
   same quantiser.
3. **Add in parallel**: Ray tasks add groups of embedding shards to copies of the trained empty index, under the
   labels' internal ids (catalogue rows: explicit ids, saved in the lists and in ``labels.parquet``).
4. **Merge**: ``faiss.contrib.ondisk.merge_ondisk`` merges the shard indexes into one ``OnDiskInvertedLists`` file:
   the folder's candidate stage ``faiss-ondisk`` (``index.faiss`` + ``index.ivfdata``). A recipe with re-ranking also
   gets ``vectors.npy``, assembled from the shards in row order through a memory map.

The manifest's ``build`` section records the engine, workers, the embedding shards and the add shards (labels and
internal id range of each). The catalogue itself is read and validated once in the driver as well (duplicate ids,
empty texts: the same errors as ``xmr build``), since the folder's label store holds all of it.

On a multi-node cluster (``address=``) the scratch folder must be on a file system every node sees.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from xmr.catalogue import LabelCatalogue
from xmr.encoders import Encoder, load_encoder
from xmr.errors import CatalogueError, UnsupportedOperation, XMRError
from xmr.index import faiss_ops
from xmr.index.folder import refuse_foreign
from xmr.index.label_index import LabelIndex, _resolve_recipe, load_index, new_manifest
from xmr.index.recipes import IndexRecipe
from xmr.index.stages.exact_rerank import ExactDenseRerank
from xmr.index.stages.faiss_ondisk import FaissOnDiskStage
from xmr.representations import DenseVectors

BLOCK_ROWS = 4096  # catalogue rows per Ray Data batch, i.e. per embedding shard


def catalogue_files(labels: str | Path | Sequence[str | Path]) -> list[Path]:
    """The Parquet shards of a catalogue: a ``.parquet`` file, a folder of them (sorted by name), or a list."""
    if isinstance(labels, (str, Path)):
        path = Path(labels)
        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    else:
        files = [Path(name) for name in labels]
    if not files:
        raise CatalogueError(f"{labels}: no .parquet files in the folder")
    for file in files:
        if file.suffix != ".parquet" or not file.is_file():
            raise CatalogueError(f"{file}: --engine ray reads Parquet catalogue shards (.parquet files)")
    return files


class EncodeBlock:
    """The Ray Data actor: one encoder per worker; each block becomes an embedding shard file."""

    def __init__(self, config: Mapping[str, Any], id_field: str, text_field: str, scratch: str,
                 threads: int | None) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.encoder = load_encoder(dict(config))
        self.id_field, self.text_field, self.scratch = id_field, text_field, Path(scratch)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.time()
        vectors = self.encoder.encode([str(text) for text in batch[self.text_field]], "label").values
        name = f"part-{uuid.uuid4().hex}.npy"
        np.save(self.scratch / name, np.ascontiguousarray(vectors, dtype=np.float32))
        return {"id": np.asarray(batch[self.id_field]), "part": np.full(len(vectors), name),
                "offset": np.arange(len(vectors), dtype=np.int64), "pid": np.full(len(vectors), os.getpid()),
                "started": np.full(len(vectors), started), "ended": np.full(len(vectors), time.time())}


def _add_shard(trained: bytes, parts: list[tuple[str, np.ndarray, np.ndarray]], out: str) -> dict[str, Any]:
    """Ray task: add embedding shards ``(file, offsets, internal ids)`` to a copy of the trained index; write it."""
    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    ids = []
    for file, offsets, part_ids in parts:
        faiss_ops.add(index, np.load(file, mmap_mode="r")[offsets], part_ids)
        ids.append(part_ids)
    faiss.write_index(index, out)
    every = np.concatenate(ids)
    return {"file": Path(out).name, "labels": int(len(every)), "min_id": int(every.min()), "max_id": int(every.max())}


def build_index_ray(
    labels: str | Path | Sequence[str | Path],
    encoder: Encoder | str | Mapping[str, Any],
    out: str | Path,
    factory: str | None = None,
    recipe: IndexRecipe | str | None = None,
    search_params: Mapping[str, int] | None = None,
    train_size: int = faiss_ops.DEFAULT_TRAIN_SIZE,
    workers: int = 2,
    address: str | None = None,
    gpus_per_worker: float = 0,
    threads_per_worker: int | None = 1,
    id_field: str = "id",
    text_field: str = "text",
    scratch: str | Path | None = None,
    block_rows: int = BLOCK_ROWS,
) -> LabelIndex:
    """Build the index folder ``out`` from Parquet catalogue shards with Ray (see the module docstring); the
    result answers like :func:`xmr.build_index` with the same encoder and IVF factory or recipe.

    ``address``: a running cluster (``"auto"``, ``"ray://host:10001"``); ``None`` starts a new local one with
    ``workers + 1`` CPUs (never joins a cluster found on the machine). A Ray session already started in this process
    (``ray.init``) is used as it is. ``scratch`` holds the embedding and add shards (default: a folder beside ``out``).
    """
    import ray

    if workers < 1:
        raise XMRError(f"workers must be at least 1, got {workers}")
    out = Path(out)
    refuse_foreign(out)
    files = catalogue_files(labels)
    catalogue = functools.reduce(LabelCatalogue.concat, [
        LabelCatalogue.from_file(file, id_field=id_field, text_field=text_field) for file in files])
    if catalogue.images is not None:
        raise UnsupportedOperation(f"{files[0]}: --engine ray encodes label texts; this catalogue has images")
    encoder = load_encoder(encoder)
    spec = {**encoder.representation_spec(), "normalized": bool(getattr(encoder, "normalize", False))}
    if spec["kind"] != DenseVectors.kind:
        raise UnsupportedOperation(f"--engine ray builds dense indexes; {encoder.type_name!r} gives {spec['kind']}")
    resolved, auto = _resolve_recipe(spec["kind"], recipe, factory or "IVF{nlist},Flat", len(catalogue),
                                     spec["dim"], None, 0.95)
    trained = faiss_ops.create(spec["dim"], resolved.factory, spec["metric"])
    if faiss.try_extract_index_ivf(trained) is None or auto:
        raise UnsupportedOperation(f"--engine ray merges IVF inverted lists; {resolved.factory!r} is not an IVF "
                                   "factory (use e.g. IVF4096,Flat, IVF{nlist},SQ8 or the ivf-sq8 / ivf-pq recipes)")
    faiss_ops.set_build_parameters(trained, resolved.build)

    scratch = Path(scratch) if scratch else out.parent
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.ray-", dir=scratch))
    started_here = not ray.is_initialized()
    if started_here:  # a local cluster: one CPU per encoder actor and one for Ray Data's read tasks
        ray.init(address=address or "local", num_cpus=None if address else workers + 1, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < workers + 1:  # the actors would hold every CPU and the read tasks never start (a hang)
            raise XMRError(f"the Ray cluster has {cpus:g} CPUs: {workers} encoder actors take one each and Ray "
                           f"Data's read tasks need one more; use --workers {max(int(cpus) - 1, 1)} or add nodes")
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        # Ray Data reads a small Parquet file as one block, and map_batches bundles blocks up to batch_size before
        # an actor sees them: split the rows into equal blocks of at most block_rows, at least one per worker, and
        # make the batch one such block, so every encoder actor gets work.
        blocks = max(workers, math.ceil(len(catalogue) / block_rows))
        data = ray.data.read_parquet([str(file) for file in files], columns=[id_field, text_field]).repartition(
            blocks)
        placed = data.map_batches(
            EncodeBlock, batch_size=math.ceil(len(catalogue) / blocks), compute=ray.data.ActorPoolStrategy(
                size=workers), num_cpus=1,
            num_gpus=gpus_per_worker,
            fn_constructor_kwargs={"config": encoder.config(), "id_field": id_field, "text_field": text_field,
                                   "scratch": str(work), "threads": threads_per_worker}).to_pandas()
        timings["encode_s"] = time.perf_counter() - clock
        rows = np.fromiter((catalogue.position(label_id) for label_id in placed["id"].tolist()), dtype=np.int64,
                           count=len(placed))
        if len(rows) != len(catalogue) or len(np.unique(rows)) != len(catalogue):
            raise XMRError(f"Ray Data encoded {len(rows)} labels ({len(np.unique(rows))} distinct) of "
                           f"{len(catalogue)}")
        parts = {name: (np.asarray(group["offset"]), rows[group.index.to_numpy()])
                 for name, group in placed.groupby("part", sort=True)}

        clock = time.perf_counter()
        chosen = faiss_ops.training_rows(len(catalogue), train_size)
        sample_rows = np.arange(len(catalogue)) if chosen is None else chosen
        sample = np.empty((len(sample_rows), spec["dim"]), dtype=np.float32)
        for name, (offsets, part_rows) in parts.items():
            wanted = np.isin(part_rows, sample_rows)
            if wanted.any():
                sample[np.searchsorted(sample_rows, part_rows[wanted])] = np.load(work / name, mmap_mode="r")[
                    offsets[wanted]]
        trained_on = faiss_ops.train(trained, sample, train_size=len(sample))
        del sample
        timings["train_s"] = time.perf_counter() - clock

        clock = time.perf_counter()
        payload = ray.put(faiss.serialize_index(trained).tobytes())
        names = sorted(parts)
        groups = [names[start::workers] for start in range(min(workers, len(names)))]
        add = ray.remote(num_cpus=1)(_add_shard)
        shards = ray.get([add.remote(payload, [(str(work / name), *parts[name]) for name in group],
                                     str(work / f"shard-{number:03d}.index")) for number, group in enumerate(groups)])
        timings["add_s"] = time.perf_counter() - clock

        clock = time.perf_counter()
        from faiss.contrib.ondisk import merge_ondisk

        merged = faiss.deserialize_index(faiss.serialize_index(trained))
        merge_ondisk(merged, [str(work / shard["file"]) for shard in shards], str(work / "merged.ivfdata"))
        candidates = FaissOnDiskStage(merged, resolved.factory, resolved.build, trained_on)
        knobs = {**resolved.search, **(search_params or {})}
        if knobs:
            candidates.set_knobs(knobs)
        rerankers = []
        if resolved.rerank:
            vectors = np.lib.format.open_memmap(work / "vectors.npy", "w+", np.float32, (len(catalogue), spec["dim"]))
            for name, (offsets, part_rows) in parts.items():
                vectors[part_rows] = np.load(work / name, mmap_mode="r")[offsets]
            vectors.flush()
            rerankers = [ExactDenseRerank(vectors, resolved.rerank)]
        manifest = new_manifest(catalogue, encoder, spec, resolved)
        manifest["build"] = {"engine": "ray", "ray_version": ray.__version__, "workers": workers,
                             "gpus_per_worker": gpus_per_worker, "catalogue_files": [str(file) for file in files],
                             "embedding_shards": len(parts), "encoder_processes": int(placed["pid"].nunique()),
                             # first block's start to last block's end: encoding without the actors' start-up
                             "encoding_wall_s": round(float(placed["ended"].max() - placed["started"].min()), 2),
                             "add_shards": shards,
                             "seconds": {key: round(value, 2) for key, value in timings.items()}}
        index = LabelIndex(catalogue, np.arange(len(catalogue), dtype=np.int64), candidates, rerankers, manifest,
                           encoder=encoder)
        index.save(out)
        timings["merge_and_save_s"] = time.perf_counter() - clock
    finally:
        if started_here:
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return load_index(out, encoder=encoder, verify=False)
