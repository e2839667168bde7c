"""The index folder on disk: atomic writes, ``manifest.json`` with SHA-256 checksums, and verification on load.

A folder is written into a hidden temporary sibling and renamed into place only when complete, so an
interrupted build never leaves a half-written index and never destroys the previous one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from xmr.errors import IndexFolderError

FORMAT = "xmr-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_index_folder(out: Path, write_files: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Write a complete folder atomically.

    ``write_files(tmp)`` writes the data files into ``tmp`` and returns the manifest body; this function adds
    format, timestamps and checksums, writes ``manifest.json``, then swaps the folder into ``out``.
    """
    out = Path(out)
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise IndexFolderError(f"{out}: exists and is not an xmr index folder; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        body = write_files(tmp)
        files = {
            path.name: {"sha256": sha256_file(path), "bytes": path.stat().st_size}
            for path in sorted(tmp.iterdir())
            if path.is_file()
        }
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **body,
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        _fsync_folder(tmp)
        swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _fsync_folder(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and deleted only after the swap."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of an index folder, checked for format and version."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise IndexFolderError(f"{folder}: not an xmr index folder (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise IndexFolderError(f"{path}: corrupted manifest (line {error.lineno}: {error.msg})") from None
    if manifest.get("format") != FORMAT:
        raise IndexFolderError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexFolderError(
            f"{path}: format version {manifest.get('format_version')} is not supported "
            f"(this xmr reads version {FORMAT_VERSION}); rebuild the index"
        )
    return manifest


def verify_files(folder: Path, manifest: dict[str, Any], checksums: bool = True) -> None:
    """Refuse a folder whose files are missing, resized or (``checksums``) changed since the manifest was written."""
    folder = Path(folder)
    for name, expected in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            raise IndexFolderError(f"{path}: missing (listed in {MANIFEST})")
        if path.stat().st_size != expected["bytes"]:
            raise IndexFolderError(f"{path}: size {path.stat().st_size} != {expected['bytes']} in {MANIFEST}")
        if checksums and sha256_file(path) != expected["sha256"]:
            raise IndexFolderError(f"{path}: checksum mismatch, the file is corrupted or was modified")
