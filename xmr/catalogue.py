"""The label catalogue: what an index retrieves.

Each label has an ``id`` (int or str, unique), a non-empty ``text``, optional ``image``/``images`` paths and any
number of metadata fields. Catalogues are read from JSONL (optionally gzipped), CSV or Parquet; every validation error
names the file and the line (or Parquet row) it comes from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from xmr.errors import CatalogueError
from xmr.io.readers import file_columns, file_kind, iter_records

LabelId = int | str
ROW_ID = "@row"  # id_field value meaning "the row number is the id" (XMC repository label files)
_INT_TEXT = re.compile(r"-?\d+")


def _check_id(value: Any, where: str, field: str, from_text: bool) -> LabelId:
    if isinstance(value, bool) or value is None:
        raise CatalogueError(f"{where}: field {field!r} is missing or not an int/str id")
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise CatalogueError(f"{where}: field {field!r} is {value}, outside the int64 range ids are stored in")
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        value = value.strip() if from_text else value
        if not value:
            raise CatalogueError(f"{where}: field {field!r} is empty")
        return value
    raise CatalogueError(f"{where}: field {field!r} must be an int or a string, got {type(value).__name__}")


MAX_IMAGE_BYTES = 64 * 2**20  # an image file larger than this is refused (a video, a disk image, /dev/zero)


def image_paths(record: dict, image_field: str, where: str, image_root: Path | None,
                allowed_roots: Sequence[str | Path] = ()) -> list[str]:
    """``image`` (a path) and/or ``images`` (a list of paths) of one record, resolved against the file's folder.

    For records read from a file (``image_root`` given) a path must stay inside that folder or one of
    ``allowed_roots`` after symlinks are resolved (``../../etc/passwd`` and absolute paths elsewhere are refused), and
    an existing one must be a regular file of at most ``MAX_IMAGE_BYTES``; the error names the record's line. Missing
    files are left to the encoder (an error, or skipped with ``skip_missing_images``).
    """
    values = []
    single = record.get(image_field)
    if single not in (None, ""):
        values.append(single)
    many = record.get("images")
    if many is not None:
        if not isinstance(many, list):
            raise CatalogueError(f"{where}: field 'images' must be a list of paths")
        values.extend(many)
    paths = []
    for value in values:
        if not isinstance(value, str) or not value:
            raise CatalogueError(f"{where}: image paths must be non-empty strings, got {value!r}")
        if image_root is not None:
            value = str(_confined_image(value, image_root, allowed_roots, where))
        paths.append(value)
    return paths


def _confined_image(value: str, image_root: Path, allowed_roots: Sequence[str | Path], where: str) -> Path:
    path = (image_root / value).resolve()
    roots = [image_root.resolve(), *(Path(root).resolve() for root in allowed_roots)]
    if not any(path == root or root in path.parents for root in roots):
        raise CatalogueError(f"{where}: image {value!r} resolves outside {image_root.resolve()}; image paths stay "
                             "inside the file's folder unless that folder is allowed (image_roots / --image-root)")
    if path.exists():
        if not path.is_file():
            raise CatalogueError(f"{where}: image {value!r} is not a regular file")
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise CatalogueError(f"{where}: image {value!r} is {path.stat().st_size} bytes, more than the "
                                 f"{MAX_IMAGE_BYTES} an image may have")
    return path


def _rows_to_table(rows: list[dict], source: str) -> pa.Table:
    """Metadata rows to a table; a field absent from some rows is null there."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    try:
        return pa.table({name: [row.get(name) for row in rows] for name in names})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise CatalogueError(f"{source}: a metadata field has values of mixed types: {error}") from None


def _metadata_rows(catalogue: LabelCatalogue) -> list[dict]:
    if catalogue.metadata is None:
        return [{} for _ in range(len(catalogue))]
    return catalogue.metadata.to_pylist()


class LabelCatalogue:
    """An ordered set of labels; row ``i`` is the label with internal (dense) id ``i`` at creation time."""

    def __init__(
        self,
        ids: Sequence[LabelId],
        texts: Sequence[str],
        images: Sequence[Sequence[str]] | None = None,
        metadata: pa.Table | None = None,
        source: str = "<catalogue>",
    ) -> None:
        if len(ids) != len(texts) or (images is not None and len(images) != len(ids)):
            raise CatalogueError(f"{source}: ids, texts and images must have the same length")
        if metadata is not None and metadata.num_rows != len(ids):
            raise CatalogueError(f"{source}: metadata has {metadata.num_rows} rows for {len(ids)} labels")
        self.ids: list[LabelId] = list(ids)
        self.texts: list[str] = list(texts)
        self.images: list[list[str]] | None = [list(row) for row in images] if images is not None else None
        self.metadata = metadata
        self.source = source
        self._position: dict[LabelId, int] | None = None

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_file(
        cls,
        path: str | Path,
        id_field: str = "id",
        text_field: str = "text",
        image_field: str = "image",
        metadata_fields: Sequence[str] | None = None,
        image_roots: Sequence[str | Path] = (),
    ) -> LabelCatalogue:
        """Read a catalogue from JSONL, CSV or Parquet.

        ``id_field="@row"`` numbers labels by row (0, 1, ...), as XMC repository files (``lbl.json.gz``) need.

        ``metadata_fields`` keeps only those extra fields (each must exist); ``None`` keeps every extra field.
        Relative image paths are resolved against the file's folder and must stay inside it (or inside one of
        ``image_roots``).
        """
        path = Path(path)
        if path.is_dir():
            raise CatalogueError(f"{path}: is a folder, not a catalogue file")
        if not path.is_file():
            raise CatalogueError(f"{path}: no such catalogue file")
        kind = file_kind(path)
        columns = file_columns(path)
        if columns is not None:
            wanted = [name for name in (id_field, text_field, *(metadata_fields or [])) if name != ROW_ID]
            missing = [name for name in wanted if name not in columns]
            if missing:
                raise CatalogueError(f"{path}: unknown column(s) {missing}; the file has {columns}")
        return cls.from_records(
            iter_records(path),
            id_field=id_field,
            text_field=text_field,
            image_field=image_field,
            metadata_fields=metadata_fields,
            source=str(path),
            image_root=path.parent,
            ids_from_text=kind == "csv",
            image_roots=image_roots,
        )

    @classmethod
    def from_records(
        cls,
        records: Iterable[dict] | Iterable[tuple[str, dict]],
        id_field: str = "id",
        text_field: str = "text",
        image_field: str = "image",
        metadata_fields: Sequence[str] | None = None,
        source: str = "<records>",
        image_root: Path | None = None,
        ids_from_text: bool = False,
        image_roots: Sequence[str | Path] = (),
    ) -> LabelCatalogue:
        """Build a catalogue from dicts (or ``(location, dict)`` pairs), validating every row."""
        ids: list[LabelId] = []
        texts: list[str] = []
        images: list[list[str]] = []
        extras: list[dict] = []
        seen: dict[LabelId, str] = {}
        reserved = {id_field, text_field, image_field, "images"}
        for number, item in enumerate(records):
            where, record = item if isinstance(item, tuple) else (f"{source}: record {number}", item)
            if id_field == ROW_ID:
                label_id: LabelId = number
            else:
                label_id = _check_id(record.get(id_field), where, id_field, ids_from_text)
            if label_id in seen:
                raise CatalogueError(f"{where}: duplicate id {label_id!r} (first seen at {seen[label_id]})")
            seen[label_id] = where
            text = record.get(text_field)
            if not isinstance(text, str) or not text.strip():
                state = "missing" if text is None else "empty" if isinstance(text, str) else "not a string"
                raise CatalogueError(f"{where}: field {text_field!r} is {state}")
            image_list = image_paths(record, image_field, where, image_root, image_roots)
            if metadata_fields is None:
                extra = {key: value for key, value in record.items() if key not in reserved}
            else:
                absent = [name for name in metadata_fields if name not in record]
                if absent:
                    raise CatalogueError(f"{where}: unknown field(s) {absent} requested as metadata")
                extra = {name: record[name] for name in metadata_fields}
            ids.append(label_id)
            texts.append(text)
            images.append(image_list)
            extras.append(extra)
        if not ids:
            raise CatalogueError(f"{source}: the catalogue is empty")
        if ids_from_text and all(isinstance(i, str) and _INT_TEXT.fullmatch(i) for i in ids):
            ids = [int(i) for i in ids]
        if len({type(i) for i in ids}) > 1:
            first_str = next(seen[i] for i in ids if isinstance(i, str))
            raise CatalogueError(f"{first_str}: ids mix ints and strings; use one type for every label")
        metadata = _rows_to_table(extras, source) if any(extras) else None
        has_images = any(images)
        return cls(ids, texts, images if has_images else None, metadata, source)

    # ---- access -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"LabelCatalogue({len(self)} labels from {self.source})"

    def items(self) -> list[str | dict]:
        """What an encoder encodes for each label: the text, or ``{"text", "images"}`` when it has images."""
        if self.images is None:
            return list(self.texts)
        return [
            {"text": text, "images": images} if images else text
            for text, images in zip(self.texts, self.images, strict=True)
        ]

    def position(self, label_id: LabelId) -> int:
        """Row of a label id; KeyError naming the id when it is not in the catalogue."""
        if self._position is None:
            self._position = {label_id: row for row, label_id in enumerate(self.ids)}
        try:
            return self._position[label_id]
        except KeyError:
            raise KeyError(f"label id {label_id!r} is not in {self.source}") from None

    def __contains__(self, label_id: object) -> bool:
        try:
            self.position(label_id)  # type: ignore[arg-type]
        except KeyError:
            return False
        return True

    # ---- combination --------------------------------------------------------------------------------------
    def concat(self, other: LabelCatalogue) -> LabelCatalogue:
        """A new catalogue with ``other``'s rows appended; refuses ids already present or of another type."""
        clash = [label_id for label_id in other.ids if label_id in self]
        if clash:
            raise CatalogueError(f"{other.source}: id(s) already in the catalogue: {clash[:5]}")
        if type(self.ids[0]) is not type(other.ids[0]):
            raise CatalogueError(f"{other.source}: ids are {type(other.ids[0]).__name__}, the catalogue's are "
                                 f"{type(self.ids[0]).__name__}")
        images = None
        if self.images is not None or other.images is not None:
            images = (self.images or [[] for _ in self.ids]) + (other.images or [[] for _ in other.ids])
        metadata = None
        if self.metadata is not None or other.metadata is not None:
            metadata = _rows_to_table(_metadata_rows(self) + _metadata_rows(other), other.source)
        return LabelCatalogue(self.ids + other.ids, self.texts + other.texts, images, metadata, self.source)

    def take(self, rows: Sequence[int]) -> LabelCatalogue:
        """A new catalogue with only the given rows, in that order."""
        images = [self.images[r] for r in rows] if self.images is not None else None
        metadata = self.metadata.take(pa.array(rows, type=pa.int64())) if self.metadata is not None else None
        return LabelCatalogue(
            [self.ids[r] for r in rows], [self.texts[r] for r in rows], images, metadata, self.source
        )

    # ---- storage ------------------------------------------------------------------------------------------
    def to_arrow(self) -> pa.Table:
        """Columns ``id``, ``text``, optional ``images`` (list of paths), then the metadata fields."""
        columns: dict[str, pa.Array] = {"id": pa.array(self.ids), "text": pa.array(self.texts, pa.string())}
        if self.images is not None:
            columns["images"] = pa.array(self.images, pa.list_(pa.string()))
        table = pa.table(columns)
        if self.metadata is not None:
            for name in self.metadata.column_names:
                if name in columns:
                    raise CatalogueError(f"{self.source}: metadata field {name!r} clashes with a core column")
                table = table.append_column(name, self.metadata.column(name))
        return table

    @classmethod
    def from_arrow(cls, table: pa.Table, source: str) -> LabelCatalogue:
        """Inverse of :meth:`to_arrow`."""
        core = {"id", "text", "images"}
        extra = [name for name in table.column_names if name not in core]
        images = table.column("images").to_pylist() if "images" in table.column_names else None
        metadata = table.select(extra) if extra else None
        return cls(table.column("id").to_pylist(), table.column("text").to_pylist(), images, metadata, source)
