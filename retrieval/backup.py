"""`retrieve backup` and `retrieve restore`: a consistent copy of a store, taken while it
is written, and put back so that it serves at once.

A backup folder holds::

    BACKUP.json       what it is: when, which store, which positions (written last)
    retrieval.db      the database, by SQLite's online backup API (SQLite only)
    index/            one index generation: CURRENT, its manifest and every file it names

The index generation is copied first (its files never change, so no lock is needed; one
that garbage collection removes meanwhile is copied again from a newer generation), then,
holding the store's sync lock so that no newer generation is published, the database: its
snapshot is at or past the generation's position and still holds the change the
generation applied last. Restored together they agree, and the restored index serves
without a rebuild (changes after its position are the usual backlog, which the next sync
applies).

On PostgreSQL the database is backed up with its own tools (``pg_dump``, taken after the
index); `retrieve backup` copies the index folder and says so. A restore then puts the
index back, and an index that does not follow the restored database (a dump older than
the index) is rebuilt from the stored vectors by the next sync or search, as after any
restore (:func:`retrieval.sync.follows`).

A restore refuses to run over a store that a worker (or `retrieve serve`) holds, and
holds the worker, sync and merge locks itself while it works.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval.errors import IndexCorruptError, RetrievalError, StoreError, WorkerBusyError
from retrieval.index.files import fsync_dir, write_durable
from retrieval.store import db

if TYPE_CHECKING:
    from retrieval.retriever import Retriever

BACKUP_FILE = "BACKUP.json"
FORMAT = 1
ATTEMPTS = 5  # index generations tried before one is copied whole under the sync lock


@dataclass
class BackupReport:
    path: str
    database: str  # sqlite | postgresql
    documents: int | None = None  # in the database copy (SQLite)
    index_version: str | None = None
    index_seq: int = 0  # the change the index copy applied last
    database_seq: int | None = None  # the database copy's last change (SQLite)
    bytes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def backup(r: Retriever, dest: str | os.PathLike[str]) -> BackupReport:
    """Copy the store (database and index) into the new folder ``dest``; see the module doc."""
    t0 = time.perf_counter()
    target = Path(dest)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise RetrievalError(f"{target} exists and is not an empty folder; back up into a new folder")
    sqlite = db.sqlite_path(r.settings.store.database_url)
    report = BackupReport(str(target), "sqlite" if sqlite else r.store.dialect)
    work = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    try:
        report.bytes += _copy_index_and_database(r, work, sqlite, report)
        info = {"format": FORMAT, "created_at": time.time(), "database": report.database,
                "store_id": _store_id(r), "index_version": report.index_version, "index_seq": report.index_seq,
                "database_seq": report.database_seq, "documents": report.documents, "model_key": _model_key(r)}
        write_durable(work / BACKUP_FILE, json.dumps(info, indent=1).encode())
        fsync_dir(work)
        if target.exists():
            target.rmdir()
        os.rename(work, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if not sqlite:
        report.notes.append(f"the database is on {db.describe_url(r.settings.store.database_url)}: back it up with "
                            "pg_dump now (after this index copy), and restore both together")
    report.seconds = time.perf_counter() - t0
    return report


def _copy_index_and_database(r: Retriever, work: Path, sqlite: str | None, report: BackupReport) -> int:
    copied = 0
    index_dir = work / "index"
    for attempt in range(ATTEMPTS + 1):
        last = attempt == ATTEMPTS
        lock = r.sync_lock()
        if last:
            lock.acquire()  # give up on lock-free copies: hold publishers off for the whole copy
        try:
            manifest = r.index_store.read_manifest()
            if manifest is not None:
                try:
                    copied += r.index_store.export(manifest, index_dir)
                except FileNotFoundError:
                    if last:
                        raise
                    continue  # collected meanwhile: a newer generation is current now
            if not last:
                lock.acquire()
            # No newer generation while this is held: the database copy is at or past the
            # index's position and still holds its last change (pruning stays below it).
            if r.index_store.current_name() != (manifest.filename if manifest else None):
                continue
            if manifest is not None:
                report.index_version, report.index_seq = manifest.version, manifest.last_seq
            if sqlite:
                db.sqlite_copy(sqlite, work / "retrieval.db", busy_timeout_ms=r.settings.store.busy_timeout_ms)
                facts = db.sqlite_facts(work / "retrieval.db")
                report.documents, report.database_seq = facts["documents"], facts["max_seq"]
                copied += (work / "retrieval.db").stat().st_size
            return copied
        finally:
            if lock.is_locked:
                lock.release()
    raise RetrievalError("the index changed during every attempt to copy it; try again")


@dataclass
class RestoreReport:
    path: str
    database: str
    documents: int | None = None
    index_version: str | None = None  # the generation it published here
    index_seq: int = 0
    rebuilt: bool = False  # the index did not follow the restored database (PostgreSQL: an older dump)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_backup(source: str | os.PathLike[str]) -> dict[str, Any]:
    """A backup folder's BACKUP.json, checked: one line naming what is wrong otherwise."""
    folder = Path(source)
    try:
        info = json.loads((folder / BACKUP_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RetrievalError(f"{folder} is not a backup (no {BACKUP_FILE}; a backup interrupted before it finished "
                             "has none)") from None
    except (OSError, ValueError) as exc:
        raise RetrievalError(f"{folder / BACKUP_FILE} is unreadable: {exc}") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise RetrievalError(f"{folder} is a backup of an unknown format")
    return info


def restore(r: Retriever, source: str | os.PathLike[str]) -> RestoreReport:
    """Replace the store's database (SQLite) and index by the backup in ``source``."""
    from retrieval.index.manifest import Manifest
    from retrieval.index.store import MERGE_LOCK
    from retrieval.sync.replay import follows
    from retrieval.sync.worker import LOCK_FILE

    t0 = time.perf_counter()
    folder = Path(source)
    info = read_backup(folder)
    sqlite = db.sqlite_path(r.settings.store.database_url)
    report = RestoreReport(str(folder), "sqlite" if sqlite else r.store.dialect)
    if (info["database"] == "sqlite") != bool(sqlite):
        raise RetrievalError(f"{folder} is a backup of a {info['database']} store; this store's database is "
                             f"{db.describe_url(r.settings.store.database_url)}")
    # Everything is checked before anything is replaced.
    index = folder / "index"
    manifest = None
    if (index / "CURRENT").is_file():
        name = (index / "CURRENT").read_text(encoding="utf-8").strip()
        try:
            manifest = Manifest.from_bytes((index / "manifests" / name).read_bytes(), name)
        except OSError as exc:
            raise IndexCorruptError(f"the backup's index manifest {name} is missing ({exc.strerror})") from exc
        for ref in manifest.files():
            path = index / ref.path
            if not path.is_file() or path.stat().st_size != ref.bytes:
                raise IndexCorruptError(f"the backup's index file {ref.path} is missing or truncated")
    if sqlite:
        facts = db.sqlite_facts(folder / "retrieval.db")
        if facts["integrity"] != "ok":
            raise StoreError(f"the backup's database fails its integrity check: {facts['integrity']}")
        if facts["revision"] is not None and facts["revision"] > db.HEAD_REVISION:
            raise StoreError(f"the backup's database is at schema revision {facts['revision']}, newer than this "
                             "version of retrieval knows")
        report.documents = facts["documents"]
        if manifest is not None and (facts["store_id"] != manifest.store_id or facts["max_seq"] < manifest.last_seq):
            raise RetrievalError(f"the backup's index does not match its database ({folder}): not a backup "
                                 "`retrieve backup` made")

    worker = _hold(r, Path(r.settings.store.index_dir) / LOCK_FILE, "a worker (`retrieve worker` or `retrieve serve`) "
                   "keeps this store in sync; stop it before restoring")
    try:
        merging = _hold(r, Path(r.settings.store.index_dir) / MERGE_LOCK,
                        "a merge is running on this store (`retrieve compact`?); try again when it ends")
        try:
            with r.sync_lock():
                if sqlite:
                    r.store.close()  # the pooled connections: the copy replaces every page under them
                    db.sqlite_copy(folder / "retrieval.db", sqlite, busy_timeout_ms=r.settings.store.busy_timeout_ms)
                    db.ensure_schema(r.store.engine)  # a backup made by an older version
                    r.store.matches.clear()
                if manifest is not None:
                    version = r.index_store.adopt(index)
                    report.index_version, report.index_seq = version.manifest.version, version.manifest.last_seq
                    with r.store.read() as snap:
                        diverged = follows(snap, version.manifest)
                    if diverged is not None:
                        report.rebuilt = True
                        report.notes.append(f"the restored index does not follow the database ({diverged}); "
                                            "rebuilding it from the stored vectors")
            if report.rebuilt or manifest is None:
                report.index_version = r.sync().version
        finally:
            merging.release()
    finally:
        worker.release()
    report.seconds = time.perf_counter() - t0
    return report


def _hold(r: Retriever, path: Path, busy: str) -> Any:
    """A file lock of the store taken without waiting; WorkerBusyError when another holds it."""
    from filelock import FileLock, Timeout

    r.sync_lock()  # the folder exists and this user can write it (a one-line error otherwise)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise WorkerBusyError(busy) from None
    return lock


def _store_id(r: Retriever) -> str:
    with r.store.read() as snap:
        return snap.store_id()


def _model_key(r: Retriever) -> str | None:
    manifest = r.index_store.read_manifest()
    return manifest.model_key if manifest else None
