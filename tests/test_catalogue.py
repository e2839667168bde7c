import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xmr import CatalogueError, LabelCatalogue


def write_jsonl(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_jsonl_keeps_metadata_and_int_ids(tmp_path):
    path = write_jsonl(tmp_path / "l.jsonl", [{"id": 7, "text": "python", "kind": "skill"},
                                               {"id": 3, "text": "sql", "kind": "skill", "level": 2}])
    catalogue = LabelCatalogue.from_file(path)
    assert catalogue.ids == [7, 3] and catalogue.texts == ["python", "sql"]
    assert catalogue.metadata.to_pylist() == [{"kind": "skill", "level": None}, {"kind": "skill", "level": 2}]
    assert catalogue.position(3) == 1 and 7 in catalogue and 8 not in catalogue


def test_gzipped_jsonl_and_string_ids(tmp_path):
    path = tmp_path / "l.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(json.dumps({"id": "a", "text": "x"}) + "\n\n" + json.dumps({"id": "b", "text": "y"}) + "\n")
    assert LabelCatalogue.from_file(path).ids == ["a", "b"]


def test_csv_with_other_text_column_converts_integer_ids(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text('id,description,extra\n10,"manage staff, music",x\n11,cook food,y\n')
    catalogue = LabelCatalogue.from_file(path, text_field="description")
    assert catalogue.ids == [10, 11]
    assert catalogue.texts[0] == "manage staff, music"
    assert catalogue.metadata.column("extra").to_pylist() == ["x", "y"]


def test_parquet_round_trip_with_images(tmp_path):
    (tmp_path / "img").mkdir()
    table = pa.table({"id": ["u1", "u2"], "text": ["red shoe", "blue hat"], "image": ["img/a.jpg", None],
                      "price": [1.5, 2.0]})
    pq.write_table(table, tmp_path / "l.parquet")
    catalogue = LabelCatalogue.from_file(tmp_path / "l.parquet")
    assert catalogue.images == [[str((tmp_path / "img/a.jpg").resolve())], []]
    assert catalogue.items()[0] == {"text": "red shoe", "images": catalogue.images[0]}
    assert catalogue.items()[1] == "blue hat"
    again = LabelCatalogue.from_arrow(catalogue.to_arrow(), source="x")
    assert again.ids == catalogue.ids and again.images == catalogue.images
    assert again.metadata.column("price").to_pylist() == [1.5, 2.0]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([{"id": 1, "text": "a"}, {"id": 1, "text": "b"}],
         r"l\.jsonl:2: duplicate id 1 \(first seen at .*l\.jsonl:1\)"),
        ([{"id": 1, "text": "a"}, {"id": 2, "text": "   "}], r"l\.jsonl:2: field 'text' is empty"),
        ([{"id": 1}], r"l\.jsonl:1: field 'text' is missing"),
        ([{"id": 1, "text": 5}], r"l\.jsonl:1: field 'text' is not a string"),
        ([{"text": "a"}], r"l\.jsonl:1: field 'id' is missing"),
        ([{"id": 1, "text": "a"}, '{"id": 2, "text": '], r"l\.jsonl:2: bad JSON"),
        (["[1, 2]"], r"l\.jsonl:1: expected a JSON object"),
        ([{"id": 1, "text": "a"}, {"id": "b", "text": "c"}], r"l\.jsonl:2: ids mix ints and strings"),
        ([], r"l\.jsonl: the catalogue is empty"),
    ],
)
def test_jsonl_validation_names_file_and_line(tmp_path, lines, message):
    path = write_jsonl(tmp_path / "l.jsonl", lines)
    with pytest.raises(CatalogueError, match=message):
        LabelCatalogue.from_file(path)


def test_csv_errors_name_line(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("id,text\n1,a\n2,\n")
    with pytest.raises(CatalogueError, match=r"l\.csv:3: field 'text' is empty"):
        LabelCatalogue.from_file(path)


def test_unknown_columns_are_refused(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("id,name\n1,a\n")
    with pytest.raises(CatalogueError, match=r"unknown column\(s\) \['text'\]"):
        LabelCatalogue.from_file(path)
    jsonl = write_jsonl(tmp_path / "l.jsonl", [{"id": 1, "text": "a", "kind": "x"}])
    with pytest.raises(CatalogueError, match=r"l\.jsonl:1: unknown field\(s\) \['colour'\]"):
        LabelCatalogue.from_file(jsonl, metadata_fields=["colour"])
    assert LabelCatalogue.from_file(jsonl, metadata_fields=["kind"]).metadata.column_names == ["kind"]


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(CatalogueError, match="no such catalogue file"):
        LabelCatalogue.from_file(tmp_path / "nope.jsonl")
    (tmp_path / "l.txt").write_text("x")
    with pytest.raises(CatalogueError, match="unknown file type '.txt'"):
        LabelCatalogue.from_file(tmp_path / "l.txt")


def test_images_lists_and_bad_image_fields(tmp_path):
    path = write_jsonl(tmp_path / "l.jsonl", [{"id": 1, "text": "a", "image": "x.jpg", "images": ["y.jpg"]},
                                               {"id": 2, "text": "b"}])
    catalogue = LabelCatalogue.from_file(path)
    assert catalogue.images == [[str(tmp_path / "x.jpg"), str(tmp_path / "y.jpg")], []]
    write_jsonl(path, [{"id": 1, "text": "a", "images": "y.jpg"}])
    with pytest.raises(CatalogueError, match=r"l\.jsonl:1: field 'images' must be a list"):
        LabelCatalogue.from_file(path)


def test_concat_refuses_existing_ids_and_take_selects_rows():
    base = LabelCatalogue.from_records([{"id": 1, "text": "a"}, {"id": 2, "text": "b", "k": 1}])
    with pytest.raises(CatalogueError, match="already in the catalogue"):
        base.concat(LabelCatalogue.from_records([{"id": 2, "text": "c"}]))
    merged = base.concat(LabelCatalogue.from_records([{"id": 3, "text": "c"}]))
    assert merged.ids == [1, 2, 3] and merged.metadata.num_rows == 3
    assert merged.take([2, 0]).texts == ["c", "a"]
