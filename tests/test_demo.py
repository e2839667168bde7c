"""The demo's ESCO pieces: matching benchmark labels to the package's skills, and the demo run end to end on a tiny
stand-in (tiny encoder, a dozen skills, a hand-made benchmark folder)."""

import csv
import json

import pytest

import xmr.demo as demo
from xmr.catalogue import LabelCatalogue
from xmr.demo.esco import esco_skills_csv, match_by_preferred_name

SKILL = "http://data.europa.eu/esco/skill/"


@pytest.fixture(scope="module")
def esco_skills():
    return LabelCatalogue.from_file(esco_skills_csv(), text_field="description")


def test_benchmark_labels_match_skills_by_preferred_name():
    skills = LabelCatalogue.from_records([
        {"id": "u1", "text": "manage staff Manage staff of a shop."},
        {"id": "u2", "text": "manage staff of music direct musical staff Assign tasks."},
        {"id": "u3", "text": "Python (computer programming) Python 3K The techniques ..."},
    ])
    benchmark = LabelCatalogue.from_records([
        {"id": 0, "text": "manage staff"},  # a prefix of u1 and u2: the skill at the nearest row wins
        {"id": 1, "text": "manage staff of music"},
        {"id": 2, "text": "python  (computer programming)"},  # case and spacing do not matter
        {"id": 3, "text": "install radtors"},  # no such skill: left out
    ])
    assert match_by_preferred_name(benchmark, skills) == {0: "u1", 1: "u2", 2: "u3"}


def test_known_esco_labels_map_to_their_skills_in_the_shipped_catalogue(esco_skills):
    assert len(esco_skills) == 13939
    # benchmark rows as in the ESCO benchmark (both lists follow ESCO's URI order); the rest is filler
    rows = {0: "manage musical staff", 205: "load cargo", 713: "gather data", 714: "operate forklift",
            715: "Python (computer programming)"}
    benchmark = LabelCatalogue.from_records([{"id": row, "text": rows.get(row, f"no such skill {row}")}
                                             for row in range(716)])
    matches = match_by_preferred_name(benchmark, esco_skills)
    assert matches == {
        0: SKILL + "0005c151-5b5a-4a66-8aac-60e734beb1ab",
        205: SKILL + "048affec-04db-4bd5-b7a6-c666d16c0fef",  # "load cargo", not "load cargo onto ships"
        713: SKILL + "0d6714c6-720e-4985-9791-5ab85d28da79",  # "gather data", not "gather data for forensic ..."
        714: SKILL + "28cb374e-6261-4133-8371-f9a5470145da",
        715: SKILL + "ccd0a1d9-afda-43d9-b901-96344886e14d",
    }
    for row, skill in matches.items():
        assert esco_skills.texts[esco_skills.position(skill)].lower().startswith(rows[row].lower())


SKILLS = [  # description: preferred name first, as in the package's skills.csv; words the tiny model knows
    "manage staff team plan project", "manage staff music teach children", "drive forklift truck operate machine",
    "cook food kitchen", "repair hydraulic system machine", "write code test software", "python sql data database",
    "account finance budget report", "customer service sales", "design graphic paint", "build house wall plan",
    "cloud network security",
]


@pytest.fixture
def tiny_demo(tmp_path, tiny_model, monkeypatch):
    """The demo wired to a dozen skills, the tiny encoder and a benchmark folder whose label ids are not skill ids."""
    skills = tmp_path / "skills.csv"
    with skills.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "description"])
        writer.writerows([f"{SKILL}s{row}", text] for row, text in enumerate(SKILLS))
    benchmark = tmp_path / "esco-skill-extraction"
    benchmark.mkdir()
    labels = ["manage staff", "manage staff music", "Drive Forklift", "bake bread", "repair hydraulic system"]
    (benchmark / "labels.jsonl").write_text("".join(json.dumps({"id": 100 + row, "text": text}) + "\n"
                                                    for row, text in enumerate(labels)))
    test = [(SKILLS[0], [100]), (SKILLS[1], [101]), (SKILLS[2], [102]), (SKILLS[4], [104, 103])]
    (benchmark / "test.jsonl").write_text("".join(json.dumps({"id": number, "text": text, "labels": labels}) + "\n"
                                                  for number, (text, labels) in enumerate(test)))
    monkeypatch.setattr(demo, "esco_skills_csv", lambda: skills)
    monkeypatch.setattr(demo, "benchmark_folder", lambda: benchmark)
    monkeypatch.setattr(demo, "DEMO_ENCODER", {"type": "sentence-transformers", "model": tiny_model})
    return tmp_path / "index"


def test_demo_scores_the_benchmark_through_the_matched_skills(tiny_demo):
    said = []
    report = demo.run_demo(tiny_demo, k=3, say=said.append)
    assert len(demo.load_index(tiny_demo)) == len(SKILLS)
    assert sum(line.startswith("  1. ") for line in said) == len(demo.DEMO_QUERIES)
    # every query is a skill's own text, so its top hit is that skill, which the matching maps its label to;
    # label 103 ("bake bread") matches no skill and stays in recall's denominator
    assert report["metrics"]["P@1"] == pytest.approx(1.0)
    assert report["true_labels_missing_from_index"] == 1
    assert report["metrics"]["R@10"] == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert any("matched to package skills by preferred name: 4" in line for line in said)
    again = []
    assert demo.run_demo(tiny_demo, k=3, say=again.append)["metrics"] == pytest.approx(report["metrics"])
    assert again[0].startswith(f"Using the demo index in {tiny_demo}")
