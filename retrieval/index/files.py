"""Files of the index folder: written once under a temporary name, fsynced, read back and
checked, renamed into place, and named by a manifest with their size and sha256. Nothing
here is ever edited in place."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import IndexCorruptError, IndexWriteError


@dataclass(frozen=True)
class FileRef:
    path: str  # relative to index_dir
    bytes: int
    sha256: str


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def copy_checked(source: Path, target: Path, ref: FileRef) -> int:
    """Copy ``source`` to ``target`` (fsynced), checking size and sha256 against ``ref``."""
    h = hashlib.sha256()
    size = 0
    with open(source, "rb") as src, open(target, "wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            h.update(block)
            dst.write(block)
            size += len(block)
        dst.flush()
        os.fsync(dst.fileno())
    if size != ref.bytes or h.hexdigest() != ref.sha256:
        target.unlink(missing_ok=True)
        raise IndexCorruptError(f"index file {ref.path} does not match its manifest ({size} bytes, expected "
                                f"{ref.bytes}; truncated or corrupt)")
    return size


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()




def write_once(root: Path, folder: Path, filename: str, data: bytes) -> FileRef:
    """Write ``data`` once as ``folder/filename`` (under the index folder ``root``): a
    temporary name, fsync, read back and check, rename, fsync the folder. A failure
    (disk full, permissions) leaves nothing behind and says that the previous generation
    keeps serving."""
    return write_once_with(root, folder, filename, lambda tmp: write_durable(tmp, data),
                           expect=hashlib.sha256(data).hexdigest())


def write_once_with(root: Path, folder: Path, filename: str, write: Callable[[Path], None], *,
                    expect: str | None = None) -> FileRef:
    """:func:`write_once` for a file too large to hold in memory: ``write`` writes it at
    the temporary path it is given (in blocks, or FAISS's own writer); it is then fsynced,
    hashed by reading it back (and checked against ``expect``, the sha256 of what was
    meant to be written), renamed into place and named by its size and sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{uuid.uuid4().hex[:8]}-{filename}"
    final = folder / filename
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        digest = sha256_file(tmp)
        if expect is not None and digest != expect:
            raise OSError(f"{tmp.name} reads back differently from what was written")
        size = tmp.stat().st_size
        os.rename(tmp, final)
        fsync_dir(folder)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise IndexWriteError(
            f"cannot write {final.relative_to(root)} in {root}: {exc.strerror or exc}; "
            "the previous index generation keeps serving (free some space and run `retrieve sync`)"
        ) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return FileRef(str(final.relative_to(root)), size, digest)
