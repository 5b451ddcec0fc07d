"""The index folder: reading and publishing manifest generations, the segments they name
(opened once and shared by generations), copies of a generation (backup, restore), and
garbage collection. Layout::

    CURRENT                         name of the manifest searches use (replaced atomically)
    manifests/g<generation>.json    the live segments, their tombstones, last_seq, model key
    segments/<segment>.faiss        a FAISS index over the segment's rows (flat, HNSW, or
                                    HNSW or IVF over 8-bit codes: compressed)
    segments/<segment>.ids          the row id of each row (int64, ascending)
    segments/<segment>.vec          compressed only: each row's float vector (float32, row order)
    tombstones/<segment>.g<gen>.del a bitmap of the segment's dead rows as of that generation

Only after a manifest is durable does ``CURRENT`` switch to it: a reader sees the old
generation or the new one, never half of one, and a crash anywhere leaves the previous
generation serving. Readers keep their open segments across generations and
memory-map segment files (``IO_FLAG_MMAP_IFC``), so opening a new generation reads its
manifest, its tombstones and its new segments only. Small files (manifest, ids,
tombstones) are checked in full when opened; a segment file for its size and FAISS
header when opened, and in full when written, before a merge reads it, and by
``retrieve verify``."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import IndexCorruptError, IndexWriteError
from retrieval.index import compressed, faisslib
from retrieval.index.build import RECALL_K, BuildOptions, Calibration, build_faiss, guard_queries
from retrieval.index.compressed import ArraySource, RowSource, VectorFile
from retrieval.index.files import FileRef, copy_checked, fsync_dir, sha256_file, write_durable, write_once, write_once_with
from retrieval.index.legacy import LegacyIndexFound, legacy_manifest
from retrieval.index.manifest import Manifest, SegmentMeta
from retrieval.index.segment import IndexVersion, OpenSegment, SegmentView, bits, unbits

log = logging.getLogger("retrieval.index")

# Segment kinds holding codes, with their float vectors in a file of their own.
COMPRESSED = ("hnsw_sq", "ivf")

# FAISS's file headers of the index types written here.
HEADERS = {"flat": b"IxFI", "hnsw": b"IHNf", "hnsw_sq": b"IHNs", "ivf": b"IwSq"}


class IndexStore:
    """Reads and publishes manifest generations in one folder; caches open segments."""

    def __init__(self, root: str | os.PathLike[str], *, keep: int = 2, hnsw_ef_search: int = 16) -> None:
        self.root = Path(root)
        self.keep = keep
        self.hnsw_ef_search = hnsw_ef_search
        self._open: dict[str, OpenSegment] = {}
        self._tombs: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        self._lock = threading.Lock()
        self.bytes_written = 0  # by this object, under root (for benchmarks and tests)

    # -- paths ------------------------------------------------------------------------

    @property
    def pointer(self) -> Path:
        return self.root / "CURRENT"

    @property
    def manifests_dir(self) -> Path:
        return self.root / "manifests"

    @property
    def segments_dir(self) -> Path:
        return self.root / "segments"

    @property
    def tombstones_dir(self) -> Path:
        return self.root / "tombstones"

    @property
    def legacy_dir(self) -> Path:
        return self.root / "versions"

    # -- reading ----------------------------------------------------------------------

    def current_name(self) -> str | None:
        try:
            name = self.pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return name or None

    def is_legacy(self) -> bool:
        """Whether CURRENT names a version of the single-file format (format 1)."""
        name = self.current_name()
        return name is not None and not name.endswith(".json") and (self.legacy_dir / name).is_dir()

    def read_manifest(self, name: str | None = None) -> Manifest | None:
        """The current manifest (or ``name``); None when there is none or it is unreadable."""
        name = name or self.current_name()
        if name is None or not name.endswith(".json"):
            return None
        try:
            return Manifest.from_bytes((self.manifests_dir / name).read_bytes(), name)
        except (OSError, IndexCorruptError):
            return None

    def model_key(self) -> str | None:
        manifest = self.read_manifest()
        if manifest is not None:
            return manifest.model_key
        if self.is_legacy():
            legacy = legacy_manifest(self.legacy_dir / str(self.current_name()))
            return legacy.get("model_key") if legacy else None
        return None

    def load(self) -> IndexVersion | None:
        """Open the current generation; None when there is none yet.

        Raises IndexCorruptError when the pointer, the manifest or a file it names is
        missing, truncated or does not match its checksum. Segments opened before are
        reused; only new segments and tombstone files are read.
        """
        for _attempt in range(5):
            name = self.current_name()
            if name is None:
                return None
            if not name.endswith(".json"):
                if self.is_legacy():
                    raise LegacyIndexFound(name)
                raise IndexCorruptError(f"the index pointer names {name!r}, which does not exist")
            try:
                raw = (self.manifests_dir / name).read_bytes()
            except FileNotFoundError:
                if self.current_name() != name:
                    continue
                raise IndexCorruptError(f"index manifest {name} is missing") from None
            manifest = Manifest.from_bytes(raw, name)
            try:
                return self.open_generation(manifest)
            except FileNotFoundError as exc:
                if self.current_name() != name:
                    continue  # a writer switched generations and collected this one meanwhile
                raise IndexCorruptError(f"index generation {manifest.version} is incomplete: "
                                        f"{Path(exc.filename).name} is missing") from exc
        raise IndexCorruptError("the index pointer kept changing while loading; try again")

    def open_generation(self, manifest: Manifest) -> IndexVersion:
        views = []
        for meta in manifest.segments:
            seg = self.open_segment(meta)
            dead, allowed = self._tombstones(meta)
            views.append(SegmentView(seg, meta, dead, allowed))
        with self._lock:
            names = {m.name for m in manifest.segments}
            # Forget segments no longer in use (their mappings go with the last view).
            for stale in [n for n in self._open if n not in names]:
                del self._open[stale]
            keep_tombs = {m.tombstones.path for m in manifest.segments if m.tombstones}
            for stale in [p for p in self._tombs if p not in keep_tombs]:
                del self._tombs[stale]
        return IndexVersion(manifest, views)

    def _read_small(self, ref: FileRef, what: str) -> bytes:
        data = (self.root / ref.path).read_bytes()
        if len(data) != ref.bytes or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise IndexCorruptError(f"index {what} {ref.path} does not match its manifest "
                                    f"({len(data)} bytes, expected {ref.bytes}; truncated or corrupt)")
        return data

    def _tombstones(self, meta: SegmentMeta) -> tuple[np.ndarray, np.ndarray | None]:
        """(dead rows, packed bitmap of live rows) of the segment as ``meta`` has it; the
        bitmap is None when no row is dead. Read once per tombstone file."""
        if meta.tombstones is None:
            return np.zeros(meta.rows, bool), None
        with self._lock:
            cached = self._tombs.get(meta.tombstones.path)
        if cached is not None:
            return cached
        packed = np.frombuffer(self._read_small(meta.tombstones, "tombstones"), np.uint8)
        dead = unbits(packed, meta.rows)
        if int(dead.sum()) != meta.dead:
            raise IndexCorruptError(f"index tombstones {meta.tombstones.path} mark {int(dead.sum())} rows, "
                                    f"the manifest says {meta.dead}")
        dead.setflags(write=False)
        entry = (dead, bits(~dead))
        with self._lock:
            self._tombs[meta.tombstones.path] = entry
        return entry

    def open_segment(self, meta: SegmentMeta) -> OpenSegment:
        with self._lock:
            seg = self._open.get(meta.name)
        if seg is not None:
            return seg
        faiss = faisslib.load()
        ids = np.frombuffer(self._read_small(meta.ids, "ids"), dtype="<i8").astype(np.int64, copy=False)
        path = self.root / meta.faiss.path
        size = path.stat().st_size
        if size != meta.faiss.bytes:
            raise IndexCorruptError(f"index segment {meta.faiss.path} has {size} bytes, the manifest says "
                                    f"{meta.faiss.bytes} (truncated or overwritten)")
        with open(path, "rb") as fh:
            header = fh.read(4)
        if header != HEADERS.get(meta.kind):
            raise IndexCorruptError(f"index segment {meta.faiss.path} is not a FAISS {meta.kind} index (bad header: corrupt)")
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
        except RuntimeError as exc:
            raise IndexCorruptError(f"index segment {meta.faiss.path}: FAISS cannot read it ({exc})") from exc
        if index.ntotal != meta.rows or len(ids) != meta.rows:
            raise IndexCorruptError(f"index segment {meta.name}: holds {index.ntotal} vectors and {len(ids)} ids, "
                                    f"the manifest says {meta.rows}")
        if meta.kind in ("hnsw", "hnsw_sq"):
            index.hnsw.efSearch = int(meta.ef_search or self.hnsw_ef_search)
        vectors = None
        if meta.kind in COMPRESSED:
            if meta.vectors is None:
                raise IndexCorruptError(f"index segment {meta.name} is {meta.kind} but names no vector file")
            vec_path = self.root / meta.vectors.path
            vec_size = vec_path.stat().st_size
            if vec_size != meta.vectors.bytes or vec_size != meta.rows * index.d * 4:
                raise IndexCorruptError(f"index vectors {meta.vectors.path} have {vec_size} bytes, the manifest says "
                                        f"{meta.vectors.bytes} for {meta.rows} rows (truncated or overwritten)")
            vectors = VectorFile(vec_path, meta.rows, index.d)
        seg = OpenSegment(meta, index, ids, vectors, path if meta.kind in ("flat", "hnsw") else None)
        with self._lock:
            self._open[meta.name] = seg
        return seg

    def check_segment_file(self, meta: SegmentMeta) -> None:
        """The full sha256 of a segment's files (before a merge reads them, and in verify)."""
        for ref in (meta.faiss, meta.vectors):
            if ref is not None and sha256_file(self.root / ref.path) != ref.sha256:
                raise IndexCorruptError(f"index segment {ref.path} does not match its checksum (corrupt)")

    # -- writing ----------------------------------------------------------------------

    def _write_file(self, folder: Path, filename: str, data: bytes) -> FileRef:
        ref = write_once(self.root, folder, filename, data)
        self.bytes_written += len(data)
        return ref

    def write_segment(self, ids: np.ndarray, vectors: np.ndarray, *, opts: BuildOptions, origin: str,
                      generation: int, kind: str | None = None, exact_by_guard: bool = False,
                      calibration: Calibration | None = None) -> SegmentMeta:
        """Build and write a segment over ``vectors`` under ``ids`` (sorted by id here); see
        :meth:`write_rows`."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[order])
        return self.write_rows(ids[order], ArraySource(x), opts=opts, origin=origin, generation=generation, kind=kind,
                               exact_by_guard=exact_by_guard, calibration=calibration)

    def write_rows(self, ids: np.ndarray, source: RowSource, *, opts: BuildOptions, origin: str, generation: int,
                   kind: str | None = None, exact_by_guard: bool = False,
                   calibration: Calibration | None = None) -> SegmentMeta:
        """Build and write a segment of the rows of ``source`` under ``ids`` (ascending).

        Its kind is ``kind``, or by its size (:meth:`BuildOptions.kind_for`). A compressed
        segment is built from ``source`` a block at a time (:mod:`retrieval.index.compressed`);
        flat and HNSW segments in memory. ``exact_by_guard`` builds it exact and marks it as kept exact by
        the recall guard (a merge of segments the guard already kept exact: HNSW recall only
        falls as a segment grows, so trying again would build a graph to throw it away).
        ``calibration``: the recall guard's queries (see :mod:`retrieval.index.build`)."""
        ids = np.asarray(ids, dtype=np.int64)
        kind = "flat" if exact_by_guard else (kind or opts.kind_for(len(ids)))
        name = f"s{generation:010d}-{uuid.uuid4().hex[:8]}"
        if kind in COMPRESSED:
            return self._write_compressed(kind, name, ids, source, opts=opts, origin=origin, generation=generation,
                                          calibration=calibration)
        faiss = faisslib.load()
        parts = list(source.blocks(compressed.BLOCK_ROWS))
        x = np.concatenate(parts) if parts else np.empty((0, source.dim), np.float32)
        del parts
        built = build_faiss(x, opts, kind, calibration)
        if exact_by_guard:
            built.exact_by_guard = True
        data = faiss.serialize_index(built.index).tobytes()
        faiss_ref = self._write_file(self.segments_dir, f"{name}.faiss", data)
        ids_ref = self._write_file(self.segments_dir, f"{name}.ids", ids.astype("<i8").tobytes())
        meta = SegmentMeta(
            name=name, kind=built.kind, rows=len(ids), dead=0, faiss=faiss_ref, ids=ids_ref, tombstones=None,
            origin=origin, hnsw_m=opts.hnsw_m if built.kind == "hnsw" else None, ef_search=built.ef_search,
            recall=built.recall, exact_by_guard=built.exact_by_guard, created_at=time.time(),
            calibration=built.calibration,
        )
        if built.recall_curve:
            log.info("segment %s (%d rows, %s): recall@10 by efSearch %s (%s)", name, len(ids), built.kind,
                     built.recall_curve, built.calibration)
        return meta

    def _write_compressed(self, kind: str, name: str, ids: np.ndarray, source: RowSource, *, opts: BuildOptions,
                          origin: str, generation: int, calibration: Calibration | None) -> SegmentMeta:
        """A compressed segment (:mod:`retrieval.index.compressed`), streamed: the vector
        file first (written once from ``source``), then the index trained and filled from
        it, the recall guard, and the index file."""
        faiss = faisslib.load()
        vec_ref = write_once_with(self.root, self.segments_dir, f"{name}.vec",
                                  lambda path: compressed.write_vectors(source, path))
        self.bytes_written += vec_ref.bytes
        vectors = VectorFile(self.root / vec_ref.path, len(ids), source.dim)
        try:
            index = compressed.build(kind, vectors, budget_bytes=opts.memory_bytes, hnsw_m=opts.hnsw_m,
                                     ef_construction=opts.ef_construction, threads=opts.threads)
            sample = compressed.sample_rows(vectors, min(len(ids), 2 * opts.recall_queries), seed=len(ids))
            queries, label, target = guard_queries(sample, opts, calibration)
            kth = compressed.exact_kth(vectors, queries, RECALL_K)
            guarded = compressed.guard(index, kind, vectors, queries, kth, target=target, start=opts.ef_search,
                                       max_ef=opts.max_ef_search, recall_k=RECALL_K)
            breadth, rescore = guarded.breadth, guarded.rescore
            if (breadth is None or rescore is None) and len(ids) <= opts.max_rows("flat", source.dim):
                # As an HNSW segment that misses the target: kept exact, built from the file.
                log.warning("a %s segment of %d vectors reached recall@10 %.3f at most (target %.3f, %s); keeping it "
                            "exact", kind, len(ids), guarded.recall or 0.0, target, label)
                flat = self.write_rows(ids, vectors, opts=opts, origin=origin, generation=generation,
                                       exact_by_guard=True)
                (self.root / vec_ref.path).unlink(missing_ok=True)
                return replace(flat, recall=1.0, calibration=label)
            if breadth is None or rescore is None:
                # The widest search and the deepest re-scoring: as near exact as the codes go.
                breadth = compressed.breadths(index, kind, opts.ef_search, opts.max_ef_search)[-1]
                rescore = compressed.RESCORE_STEPS[-1]
                log.warning("a %s segment of %d vectors reached recall@10 %.3f at most (target %.3f, %s); "
                            "searching it at its widest", kind, len(ids), guarded.recall or 0.0, target, label)
            faiss_ref = write_once_with(self.root, self.segments_dir, f"{name}.faiss",
                                        lambda path: faiss.write_index(index, str(path)))
        except BaseException:
            (self.root / vec_ref.path).unlink(missing_ok=True)
            raise
        self.bytes_written += faiss_ref.bytes
        ids_ref = self._write_file(self.segments_dir, f"{name}.ids", ids.astype("<i8").tobytes())
        log.info("segment %s (%d rows, %s): recall@10 by breadth/rescore %s (%s)", name, len(ids), kind,
                 guarded.curve, label)
        graph = kind == "hnsw_sq"
        return SegmentMeta(
            name=name, kind=kind, rows=len(ids), dead=0, faiss=faiss_ref, ids=ids_ref, tombstones=None, origin=origin,
            hnsw_m=opts.hnsw_m if graph else None, ef_search=breadth if graph else None, recall=guarded.recall,
            created_at=time.time(), vectors=vec_ref, nlist=None if graph else int(index.nlist),
            nprobe=None if graph else breadth, rescore=rescore, calibration=label,
        )

    def with_dead(self, meta: SegmentMeta, dead: np.ndarray, generation: int) -> SegmentMeta:
        """``meta`` with a new tombstone file marking ``dead`` rows (written once)."""
        n_dead = int(dead.sum())
        if n_dead == meta.dead:
            return meta
        ref = self._write_file(self.tombstones_dir, f"{meta.name}.g{generation:010d}.del", bits(dead).tobytes())
        return replace(meta, dead=n_dead, tombstones=ref)

    def commit(self, manifest: Manifest) -> IndexVersion:
        """Write ``manifest`` and switch ``CURRENT`` to it, atomically; then collect garbage."""
        self.manifests_dir.mkdir(parents=True, exist_ok=True)
        ref = self._write_file(self.manifests_dir, manifest.filename, manifest.to_bytes())
        try:
            pointer_tmp = self.root / f".CURRENT.{uuid.uuid4().hex[:8]}.tmp"
            write_durable(pointer_tmp, (manifest.filename + "\n").encode())
            os.replace(pointer_tmp, self.pointer)
            fsync_dir(self.root)
        except OSError as exc:
            raise IndexWriteError(
                f"cannot switch the index to {ref.path}: {exc.strerror or exc}; the previous generation keeps serving"
            ) from exc
        self.bytes_written += len(manifest.filename) + 1
        version = self.open_generation(manifest)
        self.collect_garbage()
        return version

    def next_generation(self) -> int:
        current = self.read_manifest()
        highest = current.generation if current else 0
        if self.manifests_dir.is_dir():
            for p in self.manifests_dir.glob("g*.json"):
                try:
                    highest = max(highest, int(p.stem[1:]))
                except ValueError:
                    pass
        return highest + 1

    # -- copies (backup and restore) --------------------------------------------------

    def export(self, manifest: Manifest, dest: Path) -> int:
        """Copy the generation ``manifest`` into the folder ``dest`` (an index folder of its
        own: CURRENT, the manifest and every file it names), each file checked against
        the manifest as it is copied and fsynced. Returns the bytes copied.

        No lock is needed: files are never changed, only removed once no kept generation
        names them; a file removed meanwhile raises FileNotFoundError (take a newer
        generation and try again)."""
        copied = 0
        for ref in manifest.files():
            target = dest / ref.path
            if target.exists() and target.stat().st_size == ref.bytes:
                continue  # copied by an earlier attempt (its names are never reused)
            target.parent.mkdir(parents=True, exist_ok=True)
            copied += copy_checked(self.root / ref.path, target, ref)
        (dest / "manifests").mkdir(parents=True, exist_ok=True)
        write_durable(dest / "manifests" / manifest.filename, manifest.to_bytes())
        write_durable(dest / "CURRENT", (manifest.filename + "\n").encode())
        for folder in {dest, *(p.parent for p in dest.rglob("*") if p.is_file())}:
            fsync_dir(folder)
        return copied

    def adopt(self, source: Path, **changes: Any) -> IndexVersion:
        """Publish the current generation of the index folder ``source`` (a backup) here, as
        this folder's next generation with a new lineage (a merge that started before it
        does not publish into it) and ``changes`` applied; every file is checked against
        its manifest, copied in once and fsynced, and CURRENT switches last."""
        name = (source / "CURRENT").read_text(encoding="utf-8").strip()
        manifest = Manifest.from_bytes((source / "manifests" / name).read_bytes(), name)
        for ref in manifest.files():
            target = self.root / ref.path
            if target.exists() and sha256_file(target) == ref.sha256:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".tmp-{uuid.uuid4().hex[:8]}-{target.name}"
            try:
                copy_checked(source / ref.path, tmp, ref)
                os.rename(tmp, target)
                fsync_dir(target.parent)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise IndexWriteError(f"cannot write {ref.path} in {self.root}: {exc.strerror or exc}") from exc
            self.bytes_written += ref.bytes
        return self.commit(replace(manifest, generation=self.next_generation(), lineage=uuid.uuid4().hex, **changes))

    # -- space ------------------------------------------------------------------------

    def _kept_manifests(self, keep: int | None = None) -> list[Manifest]:
        if not self.manifests_dir.is_dir():
            return []
        names = sorted(p.name for p in self.manifests_dir.glob("g*.json"))
        current = self.current_name()
        n = self.keep if keep is None else keep
        kept = set(names[-n:]) | ({current} if current else set())
        out = []
        for name in sorted(kept):
            m = self.read_manifest(name)
            if m is not None:
                out.append(m)
        return out

    def collect_garbage(self, keep: int | None = None) -> int:
        """Remove manifests older than the newest ``keep`` (never the current one), files no
        kept manifest names, legacy versions, and temporary files left by crashed writers.
        Returns bytes freed.

        A reader holds its open segments mapped, so removing their files is safe; a reader
        that loses a race with removal retries from ``CURRENT``.
        """
        if self.is_legacy() or not self.manifests_dir.is_dir():
            return 0
        kept = self._kept_manifests(keep)
        if not kept:
            return 0
        kept_names = {m.filename for m in kept}
        used = {f.path for m in kept for f in m.files()}
        now = time.time()
        freed = 0
        merging = _merge_active(self.root)
        for folder in (self.manifests_dir, self.segments_dir, self.tombstones_dir):
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                age = now - p.stat().st_mtime
                if p.name.startswith(".tmp-"):
                    stale = age > 3600
                elif folder == self.manifests_dir:
                    stale = p.name not in kept_names
                elif str(p.relative_to(self.root)) in used:
                    stale = False
                else:
                    # A merge writes its segment before it takes the sync lock to switch
                    # the manifest: leave unnamed segments alone while one runs.
                    stale = folder != self.segments_dir or not merging or age > 86_400
                if stale:
                    freed += p.stat().st_size
                    p.unlink(missing_ok=True)
        if self.legacy_dir.is_dir():
            freed += sum(f.stat().st_size for f in self.legacy_dir.rglob("*") if f.is_file())
            shutil.rmtree(self.legacy_dir, ignore_errors=True)
        for p in self.root.glob(".CURRENT.*.tmp"):
            if now - p.stat().st_mtime > 3600:
                p.unlink(missing_ok=True)
        return freed

    def applied_floor(self) -> int:
        """The lowest last_seq among the manifests kept on disk: change-log rows at or below
        it are applied everywhere and no reader needs them any more."""
        seqs = [m.last_seq for m in self._kept_manifests()]
        return min(seqs) if seqs else 0

    def old_version_bytes(self) -> int:
        """Bytes of files under the index folder that the current generation does not use."""
        current = self.read_manifest()
        used = {f.path for f in current.files()} if current else set()
        total = 0
        for folder in (self.segments_dir, self.tombstones_dir, self.legacy_dir):
            if folder.is_dir():
                total += sum(f.stat().st_size for f in folder.rglob("*")
                             if f.is_file() and str(f.relative_to(self.root)) not in used)
        return total

    def disk_usage(self) -> int:
        if not self.root.exists():
            return 0
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())



def lock_held(path: Path) -> bool | None:
    """Whether another holder has the file lock at ``path`` now (probes without waiting);
    None when this process cannot tell (it cannot open the lock file: a read-only folder)."""
    from filelock import FileLock, Timeout

    if not path.exists():
        return False
    probe = FileLock(str(path))
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:
        return None
    probe.release()
    return False


def _merge_active(root: Path) -> bool:
    """Whether a merge may be writing segment files now (its lock file is held)."""
    return lock_held(root / MERGE_LOCK) is not False


MERGE_LOCK = ".merge.lock"
SYNC_LOCK = ".sync.lock"
