import gzip
import json

import pytest

from xmr.catalogue import LabelCatalogue
from xmr.datasets import (
    read_bow_labels,
    read_filter_pairs,
    read_hf_dataset,
    read_instances,
    read_label_lists,
    read_xmc_lf_labels,
)
from xmr.errors import CatalogueError


def write_gz_jsonl(path, records):
    with gzip.open(path, "wt") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    return path


def test_xmr_jsonl_keeps_extra_fields(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text('{"id": "q1", "text": "python", "labels": [3, 4], "subset": "tech"}\n')
    instances = read_instances(path)
    assert instances.texts == ["python"] and instances.labels == [[3, 4]] and instances.extra == [{"subset": "tech"}]
    path.write_text('{"id": "q1", "text": "python", "labels": 3}\n')
    with pytest.raises(CatalogueError, match=r"test.jsonl:1: field 'labels' must be a list"):
        read_instances(path)


def test_xmc_lf_raw_split_and_label_file(tmp_path):
    tst = write_gz_jsonl(tmp_path / "tst.json.gz", [
        {"uid": "B01", "title": "red running shoe", "content": "light", "target_ind": [1], "target_rel": [1.0]},
        {"uid": "B02", "title": "wool hat", "content": "", "target_ind": [0, 1], "target_rel": [1.0, 1.0]},
    ])
    lbl = write_gz_jsonl(tmp_path / "lbl.json.gz", [{"uid": "L0", "title": "hats", "content": ""},
                                                     {"uid": "L1", "title": "shoes", "content": ""}])
    instances = read_instances(tst)
    assert instances.ids == ["B01", "B02"] and instances.texts[0] == "red running shoe"
    assert instances.labels == [[1], [0, 1]]
    catalogue = read_xmc_lf_labels(lbl)
    assert catalogue.ids == [0, 1] and catalogue.texts == ["hats", "shoes"]
    assert LabelCatalogue.from_file(lbl, id_field="@row", text_field="title").ids == [0, 1]


def test_sparse_bow_labels(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("3 5 4\n0,2 1:0.5 3:1.0\n 2:1.0\n3 0:1\n")
    matrix = read_bow_labels(path)
    assert matrix.shape == (3, 4)
    assert read_label_lists(path) == [[0, 2], [], [3]]
    with pytest.raises(CatalogueError, match="a sparse BoW file has labels but no query text"):
        read_instances(path)
    path.write_text("2 5 4\n0,9 1:0.5\n")
    with pytest.raises(CatalogueError, match=r"train.txt:2: label id outside 0..3"):
        read_bow_labels(path)
    path.write_text("bad header\n")
    with pytest.raises(CatalogueError, match=r"train.txt:1: expected the header"):
        read_bow_labels(path)


def test_filter_pairs(tmp_path):
    path = tmp_path / "filter_labels_test.txt"
    path.write_text("0 5\n0 6\n2 1\n\n")
    assert read_filter_pairs(path) == {0: {5, 6}, 2: {1}}
    path.write_text("0 5 7\n")
    with pytest.raises(CatalogueError, match="filter_labels_test.txt:1: expected 'query_row label_id'"):
        read_filter_pairs(path)


def test_hugging_face_datasets_from_local_files(tmp_path):
    datasets = pytest.importorskip("datasets")
    table = datasets.Dataset.from_dict({"text": ["python", "cook"], "labels": [[1], [2, 3]]})
    table.save_to_disk(str(tmp_path / "saved"))
    table.to_parquet(str(tmp_path / "test.parquet"))
    for source in (tmp_path / "saved", tmp_path / "test.parquet"):
        instances = read_instances(source)
        assert instances.texts == ["python", "cook"] and instances.labels == [[1], [2, 3]]
    with pytest.raises(CatalogueError, match=r"unknown column\(s\) \['sentence'\]"):
        read_hf_dataset(tmp_path / "saved", text_field="sentence")
