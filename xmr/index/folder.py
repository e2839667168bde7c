"""Predictor folders on disk: ``manifest.json`` with SHA-256 checksums, atomic writes, verification on load.

Format version 2 (written since the stage design)::

    format, format_version: 2, kind ("label-index", "sharded-index", ...), xmr_version, created_at, written_at
    encoder         the encoder identity (``{"type": "none"}`` for indexes of precomputed vectors)
    representation  {"kind", "metric", "dim" | "bits", "normalized"}: what the encoder emits and the stages hold
    labels          {"file", "source", "id_type", "count", "has_images", "next_internal_id"}
    stages          [{"role": "candidates", "type": "faiss", "files": [...], ...knobs}, {"role": "rerank", ...}]
    recipe          the index recipe that chose the stages, and why
    files           {name: {"sha256", "bytes"}} for every data file
    manifest_sha256 SHA-256 of the manifest itself without this key (canonical JSON): any edit of the manifest
                    (encoder settings, next internal id, a stage's knobs) is detected on load

Version-1 folders (one FAISS index, ``faiss`` section, optional ``vectors.npy``) are read through
:func:`upgrade_v1`, so they keep loading unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from xmr.errors import IndexFolderError
from xmr.io.atomic import recover, sha256_file, write_folder_atomically

FORMAT = "xmr-index"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"


def write_index_folder(out: Path, write_files: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Write a complete folder atomically.

    ``write_files(tmp)`` writes the data files into ``tmp`` and returns the manifest body; this function adds
    format, timestamps and checksums, writes ``manifest.json``, then swaps the folder into ``out``. An existing
    ``out`` that is not an xmr folder (non-empty, no manifest) is refused.
    """
    out = Path(out)
    refuse_foreign(out)

    return write_folder_atomically(out, lambda tmp: write_manifest(tmp, write_files(tmp)), fsync=True)


def refuse_foreign(out: Path) -> None:
    """Refuse to replace ``out`` unless it is absent (and can be made: no file on its path), an empty folder, or an xmr
    folder (its manifest says so)."""
    if not out.exists():
        blocking = next((parent for parent in Path(out).absolute().parents if parent.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise IndexFolderError(f"{out}: cannot be made, {blocking} is a file, not a folder")
        return
    if not out.is_dir():
        raise IndexFolderError(f"{out}: exists and is not a folder; refusing to replace it")
    if not any(out.iterdir()):
        return
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFolderError(f"{out}: exists and is not an xmr index folder; refusing to replace it")


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest's canonical JSON without ``manifest_sha256``."""
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(folder: Path, body: dict[str, Any]) -> dict[str, Any]:
    """Add format, timestamp, the checksums of every file directly in ``folder`` and the manifest's own digest to
    ``body``; write it as ``folder/manifest.json`` and return it."""
    files = {path.name: {"sha256": sha256_file(path), "bytes": path.stat().st_size}
             for path in sorted(Path(folder).iterdir()) if path.is_file()}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **body,
                "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "files": files}
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a predictor folder, checked for format and version; version 1 is upgraded in memory."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise IndexFolderError(f"{folder}: not an xmr index folder (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise IndexFolderError(f"{path}: corrupted manifest (line {error.lineno}: {error.msg})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise IndexFolderError(f"{path}: format is {found!r}, expected {FORMAT!r}")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise IndexFolderError(
            f"{path}: format version {manifest.get('format_version')} is not supported "
            f"(this xmr reads versions {', '.join(map(str, READABLE_VERSIONS))}); rebuild the index"
        )
    check_fields(manifest, path)
    holds_files = manifest.get("kind", "label-index") == "label-index"  # sharded folders hold folders, not files
    if holds_files and (not isinstance(manifest.get("files"), dict) or not manifest["files"]):
        raise IndexFolderError(f"{path}: the manifest lists no files with checksums; refusing an unverifiable folder")
    if manifest["format_version"] == 1:
        return upgrade_v1(manifest)
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise IndexFolderError(f"{path}: the manifest was modified after it was written (its manifest_sha256 does "
                               "not match); rebuild the index or restore the original manifest")
    return manifest


# the fields each layout needs, with their JSON types, so a hand-made or truncated manifest is refused by name
REQUIRED = {
    (1, "label-index"): {"encoder": dict, "dim": int, "metric": str, "faiss": dict, "labels": dict,
                         "next_internal_id": int, "files": dict},
    (2, "label-index"): {"encoder": dict, "representation": dict, "labels": dict, "stages": list, "files": dict},
    (2, "sharded-index"): {"encoder": dict, "representation": dict, "shards": list},
}


def check_fields(manifest: dict[str, Any], path: Path) -> None:
    """Refuse a manifest that lacks a field its layout needs, or whose files entries lack sha256/bytes."""
    layout = (manifest["format_version"], manifest.get("kind", "label-index"))
    for name, kind in REQUIRED.get(layout, {}).items():
        if not isinstance(manifest.get(name), kind):
            found = "missing" if name not in manifest else f"a {type(manifest[name]).__name__}"
            raise IndexFolderError(f"{path}: field {name!r} is {found}; a version-{layout[0]} {layout[1]} manifest "
                                   f"needs it as a JSON {'object' if kind is dict else kind.__name__}")
    for name, entry in (manifest.get("files") or {}).items():
        if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise IndexFolderError(f"{path}: files[{name!r}] is not a file name inside the folder; refusing it")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not isinstance(
                entry.get("bytes"), int):
            raise IndexFolderError(f"{path}: files[{name!r}] needs 'sha256' and 'bytes'")


def upgrade_v1(manifest: dict[str, Any]) -> dict[str, Any]:
    """A version-1 manifest in the version-2 layout (same files, same meaning)."""
    faiss_section = manifest["faiss"]
    stages = [{"role": "candidates", "type": "faiss", "files": ["index.faiss"],
               **{key: faiss_section[key] for key in ("factory", "structure", "search_params", "trained_on",
                                                       "faiss_version") if key in faiss_section},
               "build": faiss_section.get("recipe", {}).get("build", {})}]
    if faiss_section.get("rerank") and "vectors.npy" in manifest.get("files", {}):
        stages.append({"role": "rerank", "type": "exact-dense", "files": ["vectors.npy"],
                       "depth": int(faiss_section["rerank"])})
    return {
        "format": FORMAT,
        "format_version": 1,
        "kind": "label-index",
        "xmr_version": manifest.get("xmr_version"),
        "created_at": manifest.get("created_at"),
        "written_at": manifest.get("written_at"),
        "encoder": manifest["encoder"],
        "representation": {"kind": manifest.get("output", "dense"), "metric": manifest["metric"],
                           "dim": manifest["dim"], "normalized": bool(manifest.get("normalized", False))},
        "labels": {"file": "labels.parquet", **manifest["labels"], "next_internal_id": manifest["next_internal_id"]},
        "stages": stages,
        "recipe": {**faiss_section.get("recipe", {}), "factory": faiss_section.get("factory"),
                   "rerank": faiss_section.get("rerank", 0)},
        "files": manifest.get("files", {}),
    }


def verify_files(folder: Path, manifest: dict[str, Any], checksums: bool = True) -> None:
    """Refuse a folder whose files are missing, resized or (``checksums``) changed since the manifest was written,
    or whose stages use a file the manifest does not list."""
    folder = Path(folder)
    listed = manifest.get("files", {})
    used = [name for stage in manifest.get("stages", []) for name in stage.get("files", [])]
    if "labels" in manifest:
        used.append(manifest["labels"].get("file", "labels.parquet"))
    unlisted = sorted(set(used) - set(listed))
    if unlisted:
        raise IndexFolderError(f"{folder}: {MANIFEST} has no checksum for {unlisted}; refusing to use them")
    for name, expected in listed.items():
        path = folder / name
        if path.is_symlink():
            raise IndexFolderError(f"{path}: a symbolic link; an index folder holds regular files only")
        if not path.is_file():
            raise IndexFolderError(f"{path}: missing (listed in {MANIFEST})")
        if path.stat().st_size != expected["bytes"]:
            raise IndexFolderError(f"{path}: size {path.stat().st_size} != {expected['bytes']} in {MANIFEST}")
        if checksums and sha256_file(path) != expected["sha256"]:
            raise IndexFolderError(f"{path}: checksum mismatch, the file is corrupted or was modified")


def open_folder(path: Path, kind: str, verify: bool = True) -> dict[str, Any]:
    """The manifest of a folder of ``kind``, after finishing an interrupted swap and checking its files
    (checksums unless ``verify=False``); a folder of another kind is refused by name."""
    recover(path)
    manifest = read_manifest(path)
    if manifest.get("kind") != kind:
        raise IndexFolderError(f"{path}: a {manifest.get('kind')!r} folder, not a {kind}")
    verify_files(path, manifest, checksums=verify)
    return manifest
