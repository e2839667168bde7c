"""The ``xmr`` command line: build, query, info, eval, train, demo; each a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from xmr.errors import XMRError

# search flag -> (knob name, smallest value it takes)
SEARCH_FLAGS = {"ef_search": ("efSearch", 1), "nprobe": ("nprobe", 1), "rerank": ("rerank", 0)}


def _search_params(args: argparse.Namespace) -> dict[str, int]:
    params = {}
    for flag, (knob, smallest) in SEARCH_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None and value < smallest:
            raise XMRError(f"--{flag.replace('_', '-')} must be at least {smallest}, got {value}")
        if value is not None:
            params[knob] = value
    return params


def _add_search_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ef-search", type=int, help="HNSW efSearch (recall/speed knob)")
    parser.add_argument("--nprobe", type=int, help="IVF lists probed per query (recall/speed knob)")


def _add_query_options(parser: argparse.ArgumentParser) -> None:
    _add_search_options(parser)
    parser.add_argument("--rerank", type=int, help="re-score this many candidates exactly (0: off; recipes with "
                                                   "stored vectors)")
    parser.add_argument("--mmap", action="store_true", help="memory-map the index (fast open, shared pages)")
    parser.add_argument("--search-device", help="search on a GPU, e.g. cuda (faiss-gpu, or exact torch search)")
    parser.add_argument("--fast-queries", action="store_true",
                        help="encode queries with the index's fast query encoder (made by xmr fast-queries)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow an encoder whose config sets trust_remote_code to run its model folder's Python "
                             "code, for this run only (an index folder cannot allow it by itself)")


def _open_predictor(args: argparse.Namespace, verify: bool = True) -> Any:
    """Any predictor folder (label index, sharded index, ...), on a search device if asked."""
    from xmr.predictor import load_predictor, use_fast_queries

    predictor = load_predictor(args.index, verify=verify, mmap=args.mmap, trust_remote_code=args.trust_remote_code)
    if args.search_device:
        if not hasattr(predictor, "to_device"):
            raise XMRError(f"--search-device: a {predictor.kind} predictor does not search on a device")
        predictor.to_device(args.search_device)
    if args.fast_queries:
        use_fast_queries(predictor)
    return predictor


# xmr build flags that set encoder options, and the option each encoder type calls them by
ENCODER_FLAGS = {"query_prompt": "--query-prompt", "label_prompt": "--label-prompt",
                 "max_seq_length": "--max-seq-length", "device": "--device", "batch_size": "--batch-size",
                 "normalize": "--no-normalize"}
OPTION_NAMES = {"decoder-llm": {"max_seq_length": "max_length"}}


def _encoder_options(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """The encoder options the build flags ask for, under the names the encoder type takes; a flag the type has no
    option for is an error naming the flag and the type (never silently passed on)."""
    import inspect

    from xmr.encoders import encoder_class, encoder_config

    asked = {name: getattr(args, name) for name in ENCODER_FLAGS if name != "normalize"}
    asked = {name: value for name, value in asked.items() if value is not None}
    if args.no_normalize:
        asked["normalize"] = False
    type_name = encoder_config(spec).get("type")
    accepted = set(inspect.signature(encoder_class(type_name).__init__).parameters)
    renamed = OPTION_NAMES.get(type_name, {})
    options = {}
    for name, value in asked.items():
        option = renamed.get(name, name)
        if option not in accepted:
            raise XMRError(f"{ENCODER_FLAGS[name]} does not apply to {type_name!r} encoders; set their own options "
                           "in an encoder config (.json) instead")
        options[option] = value
    return options


def cmd_build(args: argparse.Namespace) -> None:
    from xmr.catalogue import LabelCatalogue
    from xmr.encoders import load_encoder
    from xmr.index import build_index

    catalogue = None if args.engine == "ray" else LabelCatalogue.from_file(  # ray reads its Parquet shards itself
        args.labels, id_field=args.id_field, text_field=args.text_field, image_field=args.image_field,
        image_roots=args.image_root or (),
    )
    if args.recipe and args.factory:
        raise XMRError("give --recipe or --factory, not both")
    encoder = load_encoder(args.encoder, **_encoder_options(args.encoder, args))
    if args.engine == "ray":
        from xmr.index.ray_build import build_index_ray

        index = build_index_ray(args.labels, encoder, args.out, factory=args.factory, recipe=args.recipe,
                                search_params=_search_params(args), train_size=args.train_size, workers=args.workers,
                                address=args.ray_address, gpus_per_worker=args.gpus_per_worker,
                                id_field=args.id_field, text_field=args.text_field)
    else:
        index = build_index(catalogue, encoder, args.out, factory=args.factory or "Flat",
                            search_params=_search_params(args), train_size=args.train_size, recipe=args.recipe,
                            max_memory=args.max_memory, target_recall=args.target_recall)
    spec = index.representation
    print(f"built {args.out}: {len(index)} labels, {spec['kind']} {index.dim}-{'bit' if 'bits' in spec else 'd'}, "
          f"{index.describe()['structure']} ({index.candidates.structure}), search {index.knobs() or 'exact'}")
    if index.manifest["recipe"].get("reason"):
        print(f"recipe: {index.manifest['recipe']['reason']}")


def _read_queries(args: argparse.Namespace) -> list[str | dict]:
    """Texts from the command line (the first one with ``--image`` if given) and from ``--file``.

    A ``.jsonl`` file holds ``{"text", "image"|"images"}`` objects (image paths relative to the file); any other
    file holds one query text per line.
    """
    from xmr.catalogue import image_paths
    from xmr.io.readers import iter_jsonl

    queries: list[str | dict] = list(args.queries)
    if args.image and not Path(args.image).is_file():
        raise XMRError(f"--image {args.image}: no such image file")
    if args.image:
        first = queries.pop(0) if queries else None
        queries.insert(0, {"text": first, "images": [args.image]} if first else {"images": [args.image]})
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise XMRError(f"{path}: no such query file")
        if path.suffix == ".jsonl":
            for where, record in iter_jsonl(path):
                images = image_paths(record, "image", where, path.parent, args.image_root or ())
                if not record.get("text") and not images:
                    raise XMRError(f"{where}: a query needs 'text', 'image' or 'images'")
                queries.append({"text": record.get("text", ""), "images": images} if images else record["text"])
        else:
            from xmr.io.readers import text_lines

            lines = [line.strip() for _, line in text_lines(path) if line.strip()]
            if not lines:
                raise XMRError(f"{path}: no queries in the file (only blank lines)")
            queries += lines
    if not queries:
        raise XMRError("no queries: give query texts, --image IMAGE or --file FILE")
    return queries


def _describe_query(query: str | dict) -> str:
    if isinstance(query, str):
        return query
    return " + ".join(part for part in (query.get("text"), *(f"[image {p}]" for p in query["images"])) if part)


def cmd_query(args: argparse.Namespace) -> None:

    queries = _read_queries(args)
    predictor = _open_predictor(args, verify=not args.no_verify)
    encoder = getattr(predictor, "encoder", None)
    if encoder is not None and "image" not in encoder.modalities and any(isinstance(q, dict) for q in queries):
        raise XMRError(f"{args.index}: its encoder ({encoder.type_name}) reads text only; a query image would be "
                       "ignored, so it is refused (use an index built with an image-aware encoder)")
    result = predictor.predict(queries, k=args.k, **_search_params(args))
    for number, (query, hits) in enumerate(zip(queries, result.to_records(), strict=True)):
        if args.json:
            print(json.dumps({"query": query, "hits": hits}, ensure_ascii=False))
            continue
        print(("\n" if number else "") + _describe_query(query))
        for rank, hit in enumerate(hits, start=1):
            print(f"  {rank:>3}. {hit['score']:.4f}  [{hit['id']}] {hit['text']}")


def cmd_info(args: argparse.Namespace) -> None:
    from xmr.predictor import load_predictor

    predictor = load_predictor(args.index, verify=not args.no_verify)
    if args.json:
        info = predictor.info() if hasattr(predictor, "info") else predictor.describe()
        print(json.dumps(info, indent=2, ensure_ascii=False, default=str))
        return
    described = predictor.describe()
    manifest = getattr(predictor, "manifest", {})
    encoder = described["encoder"] or {}
    spec = described["representation"]
    print(f"{described['kind']:<12} {described['path']}")
    print(f"labels       {described['labels']}" + (f" (ids: {manifest['labels']['id_type']}, from "
                                                    f"{manifest['labels']['source']})" if "labels" in manifest else ""))
    print(f"encoder      {encoder.get('type')}: {encoder.get('model', '')}")
    from xmr.index.label_index import asks_for_remote_code

    print("remote code  " + ("the encoder config sets trust_remote_code: loading it runs code from the model folder "
                             "and needs --trust-remote-code" if asks_for_remote_code(encoder) else "not asked for"))
    print(f"represents   {spec['kind']}, {spec['metric']}, " + ", ".join(
        f"{key} {spec[key]}" for key in ("dim", "bits", "normalized") if key in spec))
    print(f"pipeline     {described['structure']}, search parameters {described['params'] or '{}'}")
    for stage in manifest.get("stages", []):
        print(f"stage        {stage['role']}: {stage['type']} " + ", ".join(
            f"{key} {value}" for key, value in stage.items() if key not in ("role", "type", "files")))
    if manifest.get("created_at"):
        print(f"created      {manifest['created_at']} with xmr {manifest.get('xmr_version')}")
    for name, entry in manifest.get("files", {}).items():
        print(f"file         {name}: {entry['bytes'] / 1e6:.2f} MB, sha256 {entry['sha256'][:16]}...")


def cmd_eval(args: argparse.Namespace) -> None:
    from xmr.report import compare_runs, render_report, write_run

    if args.compare:
        print(compare_runs(args.compare))
        return
    if not args.index or not args.test:
        raise XMRError("xmr eval needs INDEX and --test FILE (or --compare RUN [RUN ...])")
    from xmr.evaluation import evaluate
    from xmr.metrics import PROPENSITY_PRESETS

    propensity = tuple(args.propensity) if args.propensity else PROPENSITY_PRESETS[args.propensity_preset]
    result = evaluate(_open_predictor(args), args.test, ks=args.k, propensity=propensity, train=args.train,
                      filter_labels=args.filter, group_by=args.group_by, batch_size=args.batch_size,
                      modality=args.modality, **_search_params(args))
    if args.out:
        folder = write_run(result, args.out)
        print(f"wrote {folder}/metrics.json, report.md, p_at_k.png, p_by_decile.png")
    print(render_report(result, Path(args.out).name if args.out else Path(args.index).name).split("\n## P@")[0])


def cmd_fast_queries(args: argparse.Namespace) -> None:
    """Make a fast query encoder from the index's encoder and record it in the index: static embeddings distilled
    and fitted on --corpus, the encoder on ONNX Runtime int8 (--method onnx-int8), or a layer-reduced student
    distilled on --corpus and run on ONNX int8 (--method student)."""
    import tempfile
    import time

    from xmr.index import load_index
    from xmr.index.fast_queries import onnx_int8_queries
    from xmr.io.readers import corpus_texts

    index = load_index(args.index, trust_remote_code=args.trust_remote_code)
    started = time.perf_counter()
    if args.method != "student" and args.layers:
        raise XMRError("--layers: the transformer layers a student keeps (it is for --method student)")
    if args.method == "onnx-int8" and args.corpus:
        raise XMRError("--corpus: onnx-int8 fast queries are not fitted (the corpus is for --method static or "
                       "student)")
    if args.method == "static" and args.max_seq_length:
        raise XMRError("--max-seq-length: static fast queries read up to 512 tokens at no cost (it is for "
                       "--method onnx-int8 or student)")
    if args.method == "student" and not args.corpus:
        raise XMRError("--corpus: a student is distilled on query-like texts; name them with --corpus FILE")
    texts = [text for path in args.corpus or () for text in corpus_texts(Path(path), args.text_field)]
    texts = texts[:args.corpus_limit] if args.corpus_limit else texts
    with tempfile.TemporaryDirectory(prefix=".xmr-fast-queries-") as folder:
        if args.method == "onnx-int8":
            encoder = onnx_int8_queries(index.encoder, args.max_seq_length)
            made = f"{index.encoder.type_name} on ONNX Runtime int8, {encoder.max_seq_length} tokens per query"
        elif args.method == "student":
            from xmr.encoders.student import distill_student

            student = distill_student(index.encoder, folder, texts, layers=args.layers,
                                      max_seq_length=args.max_seq_length, epochs=args.max_epochs or 10)
            encoder = onnx_int8_queries(student)
            made = (f"a {len(student.layers)}-layer student (layers {student.layers}) of {index.encoder.type_name} "
                    f"on ONNX Runtime int8, {encoder.max_seq_length} tokens per query, trained on {len(texts)} "
                    f"corpus texts (MSE by epoch {student.distillation['loss_by_epoch']})")
        else:
            from xmr.encoders.distill import distill_static

            encoder = distill_static(index.encoder, folder, texts, max_epochs=args.max_epochs or 30)
            made = (f"static {encoder.dim}-d embeddings of {len(encoder.model.tokens)} tokens distilled from "
                    f"{index.encoder.type_name}, fitted on {len(texts)} corpus texts")
        index.attach_fast_queries(encoder)
        index.save(args.out or args.index)
    print(f"fast queries for {args.out or args.index}: {made}, in {time.perf_counter() - started:.0f} s; query "
          "with --fast-queries")


def _override(text: str) -> tuple[str, Any]:
    """``field.path=value`` with the value read as YAML (numbers, booleans, lists)."""
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set needs FIELD=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key, yaml.safe_load(value)


def cmd_train(args: argparse.Namespace) -> None:
    try:
        from xmr.train import load_recipe, train
    except ImportError as error:
        raise XMRError(f"training needs the train extra (pip install 'xmr[train]'): {error}") from None
    if args.auto:
        from xmr.train.auto import auto_train

        labels, train_split = args.auto
        name = args.name or f"{Path(labels).resolve().parent.name}-auto"
        print(json.dumps(auto_train(labels, train_split, Path("runs") / name, args.budget,
                                    fine_tune=args.fine_tune, learn=args.learned), indent=2))
        return
    if args.recipe is None:
        raise XMRError("train needs a recipe, or --auto LABELS TRAIN")
    from xmr.train.auto import auto_recipe, auto_train

    settings = auto_recipe(args.recipe)
    if settings is not None:  # a recipe with method: auto
        print(json.dumps(auto_train(settings["labels"], settings["train"], Path("runs") / settings["name"],
                                    settings["budget"], settings["seed"], fine_tune=settings["fine_tune"],
                                    learn=settings["learned"]),
                         indent=2))
        return
    recipe = load_recipe(args.recipe, dict(args.set or []))
    summary = train(recipe, resume=args.resume, restart=args.restart)
    print(json.dumps(summary, indent=2))


def cmd_serve(args: argparse.Namespace) -> None:
    try:
        from xmr.serve.app import Limits
        from xmr.serve.run import serve
    except ImportError as error:
        raise XMRError(f"xmr serve needs the serve extra (pip install 'xmr[serve]'): {error}") from None
    for name in ("max_queries", "max_k", "timeout", "batch_queries"):
        if getattr(args, name) <= 0:
            raise XMRError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    serve(args.index, host=args.host, port=args.port, workers=args.workers, threads=args.threads,
          limits=Limits(max_queries=args.max_queries, max_k=args.max_k, timeout_s=args.timeout),
          batch_queries=args.batch_queries, fast_queries=args.fast_queries)


def cmd_demo(args: argparse.Namespace) -> None:
    from xmr.demo import run_demo

    run_demo(Path(args.out), rebuild=args.rebuild, k=args.k)


class OneLineParser(argparse.ArgumentParser):
    """argparse with xmr's error format: one line on stderr and exit code 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("xmr").strip()
        self.exit(2, f"xmr: error: {command + ': ' if command else ''}{message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from xmr.demo import DEMO_INDEX
    from xmr.encoders import DEFAULT_TEXT_MODEL

    parser = OneLineParser(prog="xmr", description="Extreme multi-label retrieval: build, query, inspect.")
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="encode a label catalogue and write an index folder")
    build.add_argument("--labels", required=True, help="catalogue file: .jsonl, .csv or .parquet")
    build.add_argument("--encoder", default=DEFAULT_TEXT_MODEL,
                       help="model name, local folder, or encoder config .json (default: bundled MiniLM)")
    build.add_argument("--factory", help="FAISS index_factory string: Flat (default), HNSW32, IVF1024,PQ48 ...")
    build.add_argument("--recipe", help="index recipe: flat, hnsw32, hnsw64, ivf-sq8, ivf-pq, opq-ivf-pq, auto, "
                                        "or a YAML file (see indexes/)")
    build.add_argument("--max-memory", help="memory budget for --recipe auto, e.g. 4GB")
    build.add_argument("--target-recall", type=float, default=0.95, help="recall@10 --recipe auto calibrates for")
    build.add_argument("--out", required=True, help="index folder to write (replaced atomically)")
    build.add_argument("--id-field", default="id", help="id column; @row numbers labels by row (XMC lbl files)")
    build.add_argument("--text-field", default="text")
    build.add_argument("--image-field", default="image")
    build.add_argument("--image-root", action="append", metavar="DIR",
                       help="also allow image paths under DIR (default: only inside the catalogue's folder)")
    build.add_argument("--query-prompt")
    build.add_argument("--label-prompt")
    build.add_argument("--max-seq-length", type=int)
    build.add_argument("--batch-size", type=int, help="encoder batch size (default: the encoder's own)")
    build.add_argument("--device", help="cpu, cuda, ... (default: automatic)")
    build.add_argument("--no-normalize", action="store_true", help="raw inner product instead of cosine")
    build.add_argument("--train-size", type=int, default=200_000, help="vectors sampled to train IVF/PQ/SQ")
    build.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="ray: Ray Data + an encoder actor pool over Parquet shards, IVF lists merged on disk")
    build.add_argument("--workers", type=int, default=2, help="--engine ray: encoder actors and add tasks")
    build.add_argument("--ray-address", help="--engine ray: a running cluster (auto, ray://HOST:10001); "
                                             "default: start a local one")
    build.add_argument("--gpus-per-worker", type=float, default=0, help="--engine ray: GPUs each encoder actor takes")
    _add_search_options(build)
    build.set_defaults(run=cmd_build)

    query = commands.add_parser("query", help="top-k labels for query texts")
    query.add_argument("index", help="index folder")
    query.add_argument("queries", nargs="*", help="query texts")
    query.add_argument("-k", type=int, default=10)
    query.add_argument("--file", help="one query text per line, or .jsonl with text/image/images per line")
    query.add_argument("--image", help="image for the first query text (or an image-only query); fused encoders")
    query.add_argument("--image-root", action="append", metavar="DIR",
                       help="also allow image paths of a .jsonl --file under DIR (default: only inside its folder)")
    query.add_argument("--json", action="store_true", help="one JSON object per query")
    query.add_argument("--no-verify", action="store_true", help="skip checksum verification")
    _add_query_options(query)
    query.set_defaults(run=cmd_query)

    info = commands.add_parser("info", help="manifest, sizes and encoder of an index folder")
    info.add_argument("index")
    info.add_argument("--json", action="store_true")
    info.add_argument("--no-verify", action="store_true")
    info.set_defaults(run=cmd_info)

    evaluation = commands.add_parser("eval", help="P@k, PSP@k, nDCG@k, R@k ... of an index on labelled queries")
    evaluation.add_argument("index", nargs="?", help="index folder")
    evaluation.add_argument("--test", help="labelled queries: xmr JSONL, XMC LF raw (tst.json.gz), HF datasets")
    evaluation.add_argument("--train", help="training split (any format, incl. sparse BoW .txt) for propensities")
    evaluation.add_argument("--filter", help="reciprocal-pair filter file (query_row label_id per line)")
    evaluation.add_argument("-k", type=int, nargs="+", default=[1, 3, 5, 10])
    evaluation.add_argument("--propensity", type=float, nargs=2, metavar=("A", "B"))
    evaluation.add_argument("--propensity-preset", choices=["default", "amazon", "wikipedia"], default="default")
    evaluation.add_argument("--group-by", help="record field to report per group (e.g. subset)")
    evaluation.add_argument("--batch-size", type=int, default=1024, help="queries encoded and searched at once")
    evaluation.add_argument("--modality", choices=["all", "text", "image"], default="all",
                            help="for queries with images: text+image, text only, or image only")
    evaluation.add_argument("--out", help="run folder for metrics.json, report.md and plots")
    evaluation.add_argument("--compare", nargs="+", metavar="RUN", help="print run folders side by side")
    _add_query_options(evaluation)
    evaluation.set_defaults(run=cmd_eval)

    fast = commands.add_parser("fast-queries", help="make a fast query encoder from the index's encoder (static "
                               "embeddings, ONNX int8, or a distilled student) and record it in the index (xmr "
                               "query/eval --fast-queries)")
    fast.add_argument("index", help="index folder built with a sentence-transformers encoder")
    fast.add_argument("--corpus", nargs="+", metavar="FILE",
                      help="query-like texts to fit to the encoder's vectors (JSONL/CSV/Parquet records with a "
                           "text field, or one text per line), e.g. the training queries")
    fast.add_argument("--text-field", default="text", help="record field holding the text (default: text)")
    fast.add_argument("--corpus-limit", type=int, help="fit on the first N corpus texts only (the encoder's vectors "
                      "of the corpus are the cost)")
    fast.add_argument("--method", choices=("static", "onnx-int8", "student"), default="static",
                      help="static: model2vec token embeddings fitted on --corpus (no transformer at query time); "
                           "onnx-int8: the encoder itself on ONNX Runtime with int8 weights; student: some of the "
                           "encoder's layers trained on --corpus to give its vectors, on ONNX int8 (default: static)")
    fast.add_argument("--max-seq-length", type=int,
                      help="onnx-int8, student: read at most this many tokens per query")
    fast.add_argument("--layers", type=int, nargs="+", help="student: the encoder's transformer layers it keeps "
                      "(0-based; default every other one: 0 2 4 ...)")
    fast.add_argument("--max-epochs", type=int, help="static: fitting epochs at most, early stopping (default 30); "
                      "student: training epochs (default 10)")
    fast.add_argument("--out", help="write the index with fast queries here instead of in place")
    fast.add_argument("--trust-remote-code", action="store_true", help="as for xmr query")
    fast.set_defaults(run=cmd_fast_queries)

    training = commands.add_parser("train", help="fine-tune an encoder from a recipe (training/*.yaml) into runs/NAME")
    training.add_argument("recipe", nargs="?", help="YAML recipe")
    training.add_argument("--auto", nargs=2, metavar=("LABELS", "TRAIN"),
                          help="no recipe: choose encoder budget, channels, knobs and fusion weights from the data")
    training.add_argument("--budget", default="20m", help="wall-clock budget of --auto (20m, 90s, 1h)")
    training.add_argument("--no-fine-tune", dest="fine_tune", action="store_false",
                          help="--auto: keep the encoder frozen (no fine-tuning stage)")
    training.add_argument("--no-learned", dest="learned", action="store_false",
                          help="--auto: leave out the learned label-vector channel")
    training.add_argument("--name", help="run folder name of --auto (runs/NAME; default: the data folder + -auto)")
    start = training.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    start.add_argument("--restart", action="store_true", help="delete the run folder and start again")
    training.add_argument("--set", action="append", type=_override, metavar="FIELD=VALUE",
                          help="override one recipe field, e.g. --set schedule.max_steps=10 (repeatable)")
    training.set_defaults(run=cmd_train)

    service = commands.add_parser("serve", help="HTTP query service (POST /search, GET /health, /info, page at /)")
    service.add_argument("index", help="index folder (any predictor folder)")
    service.add_argument("--host", default="127.0.0.1")
    service.add_argument("--port", type=int, default=8000)
    service.add_argument("--workers", type=int, default=1, help="processes sharing the memory-mapped index")
    service.add_argument("--threads", type=int, help="torch threads per worker (default: torch's own)")
    service.add_argument("--max-queries", type=int, default=64, help="queries per request")
    service.add_argument("--max-k", type=int, default=1000)
    service.add_argument("--timeout", type=float, default=30.0, help="seconds a search may take (then 504)")
    service.add_argument("--batch-queries", type=int, default=64,
                         help="queries one search may answer for requests that waited together (1: no batching)")
    service.add_argument("--fast-queries", action="store_true",
                         help="encode queries with the index's fast query encoder (made by xmr fast-queries)")
    service.set_defaults(run=cmd_serve)

    demo = commands.add_parser("demo", help="index ESCO skills, run example queries, evaluate on ESCO if present")
    demo.add_argument("--out", default=str(DEMO_INDEX))
    demo.add_argument("--rebuild", action="store_true")
    demo.add_argument("-k", type=int, default=5)
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `xmr query INDEX -k 3 TEXT`: query texts may come after the options too
        if args.command != "query" or any(value.startswith("-") for value in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.queries += extra
    try:
        args.run(args)
    except XMRError as error:
        print(f"xmr: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped (e.g. `| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
