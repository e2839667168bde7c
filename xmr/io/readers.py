"""Readers of the record files xmr takes: JSONL (optionally gzipped), CSV and Parquet.

Each reader yields ``(location, record)`` pairs, the location being ``file:line`` (or ``file: row N`` for Parquet),
so every validation error downstream can name where the bad record is.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from xmr.errors import CatalogueError

KINDS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line of a UTF-8 (optionally gzipped) file, decoded line by line so that bytes
    that are not UTF-8 and a broken gzip stream are errors naming their exact line, not a block's first one."""
    line_number = 0
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                try:
                    text = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
                except UnicodeDecodeError as error:
                    raise CatalogueError(f"{path}:{line_number}: not UTF-8 text ({error.reason} at column "
                                         f"{error.start + 1}); re-save the file as UTF-8") from None
                yield line_number, text
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise CatalogueError(f"{path}:{line_number + 1}: broken gzip stream ({error})") from None
    except IsADirectoryError:
        raise CatalogueError(f"{path}: is a folder, not a file") from None


def iter_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield (``file:line``, object) for each non-blank line of a JSONL file."""
    for line_number, line in text_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CatalogueError(f"{where}: bad JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(record, dict):
            raise CatalogueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield where, record


def iter_csv(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield (``file:line``, row) for each CSV row (the header names the fields). Read strictly: an unterminated
    quote is an error naming the line it starts on, not the rest of the file swallowed into one field."""
    line = 0
    reader = csv.DictReader((text for _, text in text_lines(path)), strict=True)
    try:
        if reader.fieldnames is None:
            return
        line = reader.line_num
        for row in reader:
            if None in row:
                raise CatalogueError(f"{path}:{reader.line_num}: more fields than the header has")
            yield f"{path}:{reader.line_num}", row
            line = reader.line_num
    except csv.Error as error:
        raise CatalogueError(f"{path}:{line + 1}: malformed CSV ({error}; an unterminated quote?)") from None


def iter_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield (``file: row N``, row) for each Parquet row, N counted from 1."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise CatalogueError(f"{path}: not a readable Parquet file ({error})") from None
    for row_number, row in enumerate(table.to_pylist(), start=1):
        yield f"{path}: row {row_number}", row


def file_kind(path: Path) -> str:
    """'jsonl', 'csv' or 'parquet', from the file name (a trailing .gz is allowed for text formats)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last not in KINDS:
        raise CatalogueError(f"{path}: unknown file type {last or '(none)'!r}; use .jsonl, .csv or .parquet")
    return KINDS[last]


def iter_records(path: Path) -> Iterator[tuple[str, dict]]:
    """Records of any supported file, chosen by :func:`file_kind`."""
    return {"jsonl": iter_jsonl, "csv": iter_csv, "parquet": iter_parquet}[file_kind(path)](path)


def file_columns(path: Path) -> list[str] | None:
    """Column names known before reading rows (CSV header, Parquet schema); None for JSONL."""
    kind = file_kind(path)
    if kind == "parquet":
        try:
            return pq.read_schema(path).names
        except (pa.ArrowException, OSError) as error:
            raise CatalogueError(f"{path}: not a readable Parquet file ({error})") from None
    if kind == "csv":
        return next(csv.reader(text for _, text in text_lines(path)), [])
    return None


def corpus_texts(path: Path, text_field: str = "text") -> list[str]:
    """The texts of a corpus file: ``text_field`` of each record of a JSONL/CSV/Parquet file, else (any other file
    name) each non-blank line. A record without that text is an error naming its line."""
    if not path.is_file():
        raise CatalogueError(f"{path}: no such corpus file")
    try:
        file_kind(path)
    except CatalogueError:
        return [line.strip() for _, line in text_lines(path) if line.strip()]
    texts = []
    for where, record in iter_records(path):
        text = record.get(text_field)
        if not isinstance(text, str):
            raise CatalogueError(f"{where}: no text field {text_field!r}")
        texts.append(text)
    return texts
