"""Atomic folder writes: a folder is written into a hidden temporary sibling and swapped into place when complete.

Index folders, training checkpoints and encoder folders all go through :func:`write_folder_atomically`, so an
interrupted write never leaves a half-written folder and never destroys the previous one: on Linux the swap is one
atomic ``renameat2(RENAME_EXCHANGE)``; writers of the same parent folder take turns for the swap (``flock``), and
what a killed writer left behind is cleaned by the next writer or reader (:func:`clean_stale`, :func:`recover`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_folder(folder: Path) -> None:
    """Flush every file directly inside ``folder`` to disk."""
    for path in Path(folder).iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


_writing: set[Path] = set()  # temporaries this process is writing now
RENAME_EXCHANGE = 2  # renameat2 flag (Linux >= 3.15): swap two paths in one atomic step
AT_FDCWD = -100


def exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # no such call, or a file system without exchange
        return False
    raise OSError(code, os.strerror(code), str(second))


def fsync_directory(folder: Path) -> None:
    """Make renames inside ``folder`` durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def locked(path: Path, blocking: bool = True) -> Iterator[bool]:
    """``flock`` on an existing file or folder for the block; yields False (when not ``blocking``) if another
    process holds it. The lock dies with the process, so a kill never leaves one behind."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)


def clean_stale(out: Path) -> None:
    """Remove what interrupted writes of ``out`` left beside it (``.NAME.tmp-*``, ``.NAME.old-*``); a temporary
    whose writer is still alive (it holds its lock) is kept. If ``out`` itself was lost between the two renames of
    a system without atomic exchange, the previous folder is put back first. Call with the parent folder locked."""
    out = Path(out)
    olds = sorted(out.parent.glob(f".{out.name}.old-*"))
    if not out.exists() and olds:
        os.rename(olds[-1], out)
        olds = olds[:-1]
    for stale in [*out.parent.glob(f".{out.name}.tmp-*"), *olds]:
        with locked(stale, blocking=False) as free:
            if free:
                shutil.rmtree(stale, ignore_errors=True)


def recover(out: Path) -> None:
    """Best-effort :func:`clean_stale` for readers opening ``out`` (skipped where the folder is not writable)."""
    out = Path(out)
    if not os.access(out.parent, os.W_OK) or out.parent.resolve() in _writing:
        return
    try:
        with locked(out.parent):
            clean_stale(out)
    except OSError:
        pass


def swap_into_place(tmp: Path, out: Path) -> None:
    """Put the complete folder ``tmp`` at ``out``: one atomic exchange where the system has it (the old folder ends
    at ``tmp`` and is deleted), else two renames with the old folder kept aside until the second has happened (a
    kill in between is repaired by :func:`clean_stale`). The parent folder is fsynced."""
    if not out.exists():
        os.rename(tmp, out)
    elif exchange(tmp, out):
        fsync_directory(out.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    else:
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rmdir(old)
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_directory(out.parent)


def current_umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_folder_atomically(out: str | Path, write: Callable[[Path], T], fsync: bool = False) -> T:
    """Run ``write(tmp)`` into a temporary sibling of ``out``, then swap it into place; returns what ``write`` returned.

    On any failure (or interrupt) the temporary folder is removed and ``out`` is left as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    inside_own_temporary = out.parent.resolve() in _writing  # e.g. shards written inside a sharded folder's temporary
    # the temporary is made and marked alive (locked) while the parent is locked: another writer's clean_stale, which
    # runs under that lock, can never see it unmarked and remove it between the two steps
    with contextlib.ExitStack() as alive:
        with contextlib.nullcontext() if inside_own_temporary else locked(out.parent):
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
            alive.enter_context(locked(tmp))
        return _write_and_swap(out, tmp, write, fsync, inside_own_temporary)


def _write_and_swap(out: Path, tmp: Path, write: Callable[[Path], T], fsync: bool, inside_own_temporary: bool) -> T:
    """The body of :func:`write_folder_atomically`, with ``tmp`` made and locked alive by the caller."""
    _writing.add(tmp.resolve())
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; the folder gets the mode mkdir would give
        result = write(tmp)
        if fsync:
            fsync_folder(tmp)
        # one swap at a time per parent: concurrent writers take turns and the last one wins (nobody else writes
        # inside a temporary of this process, and locking it again would wait for its own alive-lock)
        with contextlib.nullcontext() if inside_own_temporary else locked(out.parent):
            clean_stale(out)
            swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _writing.discard(tmp.resolve())
    return result


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write a text file through a temporary sibling and ``os.replace``: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
