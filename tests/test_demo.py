from xmr.catalogue import LabelCatalogue
from xmr.demo.esco import esco_skills_csv, match_by_preferred_name


def test_benchmark_labels_match_package_skills_by_preferred_name():
    skills = LabelCatalogue.from_records([
        {"id": "u1", "text": "manage staff Manage staff of a shop."},
        {"id": "u2", "text": "manage staff of music direct musical staff Assign tasks."},
        {"id": "u3", "text": "Python (computer programming) Python 3K The techniques ..."},
    ])
    benchmark = LabelCatalogue.from_records([
        {"id": 0, "text": "manage staff"},
        {"id": 1, "text": "manage staff of music"},
        {"id": 2, "text": "python  (computer programming)"},
        {"id": 3, "text": "install radtors"},
    ])
    assert match_by_preferred_name(benchmark, skills) == {0: "u1", 1: "u2", 2: "u3"}


def test_demo_catalogue_ships_in_a_package():
    catalogue = LabelCatalogue.from_file(esco_skills_csv(), text_field="description")
    assert len(catalogue) == 13939 and catalogue.ids[0].startswith("http://data.europa.eu/esco/skill/")
