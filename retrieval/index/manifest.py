"""Manifest generations: which segments (and tombstone files) make up the index, the
change-log position it applied and the database it follows. A manifest is written once
and names every file it uses with its size and sha256; every publish makes the next one
with :meth:`Manifest.successor`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any

from retrieval.errors import IndexCorruptError
from retrieval.index.files import FileRef

FORMAT = 2


@dataclass(frozen=True)
class SegmentMeta:
    """One segment as a manifest lists it."""

    name: str
    kind: str  # flat | hnsw | ivf
    rows: int
    dead: int
    faiss: FileRef
    ids: FileRef
    tombstones: FileRef | None
    origin: str  # build | sync | merge | convert
    hnsw_m: int | None = None
    ef_search: int | None = None  # the efSearch that met the recall target
    recall: float | None = None  # measured recall@10 against exact search over the segment
    # A segment kept exact because the approximate one missed the recall target.
    exact_by_guard: bool = False
    created_at: float = 0.0
    # IVF segments (compressed codes in ``faiss``): the float vectors of every row, in row
    # order (raw float32, memory-mapped), that re-score each candidate exactly; the lists,
    # and the probes and re-scoring depth the recall guard chose.
    vectors: FileRef | None = None
    nlist: int | None = None
    nprobe: int | None = None
    rescore: int | None = None
    # Which queries set the search parameters: "queries:N" (recent real queries of the
    # store), "held-out:N" (vectors of documents outside the segment) or "midpoints:N".
    calibration: str | None = None

    @property
    def live(self) -> int:
        return self.rows - self.dead

    @property
    def tombstone_fraction(self) -> float:
        return self.dead / self.rows if self.rows else 0.0

    def as_json(self) -> dict[str, Any]:
        # By hand: dataclasses.asdict deep-copies, and a manifest is written per sync.
        out = {f: getattr(self, f) for f in self.__dataclass_fields__}
        for name in ("faiss", "ids", "tombstones", "vectors"):
            ref = out[name]
            out[name] = {"path": ref.path, "bytes": ref.bytes, "sha256": ref.sha256} if ref is not None else None
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SegmentMeta:
        d = dict(data)
        d["faiss"], d["ids"] = FileRef(**d["faiss"]), FileRef(**d["ids"])
        d["tombstones"] = FileRef(**d["tombstones"]) if d.get("tombstones") else None
        d["vectors"] = FileRef(**d["vectors"]) if d.get("vectors") else None
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Manifest:
    generation: int
    model_key: str
    dim: int
    index_type: str  # the setting it was written under: auto | flat | hnsw
    last_seq: int
    segments: tuple[SegmentMeta, ...]
    created_at: float
    last_merge: dict[str, Any] | None = None
    # Set by a full build (or a conversion) and kept by syncs and merges: a merge that
    # started before a rebuild must not publish its segment into the rebuilt index.
    lineage: str = ""
    metric: str = "inner_product"
    format: int = FORMAT
    # Which database this index follows, and where in its history (revision 0004): the
    # database's store_id, and the token of the change at last_seq. Manifests written
    # before them have store_id "" (followed by position only).
    store_id: str = ""
    anchor: str | None = None
    # How a row id packs (document, passage ordinal) (see retrieval.index.rows): 0 in
    # indexes written before passages, whose row ids are document ids.
    passage_bits: int = 0
    # How documents were split into passages (retrieval.sync.passages.Splitter.key): ""
    # before passages; an index split another way than the settings ask is rebuilt.
    splitter: str = ""

    def successor(self, generation: int, **changes: Any) -> Manifest:
        """The next generation of this index: the same model, dimension, lineage and
        database, with ``changes`` (segments, position, ...) and a new creation time.
        Every publish but a full build (which starts a lineage) makes its manifest here."""
        import time

        return replace(self, generation=generation, created_at=time.time(), **changes)

    @property
    def version(self) -> str:
        return f"g{self.generation:010d}"

    @property
    def filename(self) -> str:
        return f"{self.version}.json"

    @property
    def count(self) -> int:
        return sum(s.live for s in self.segments)

    def files(self) -> list[FileRef]:
        return [f for s in self.segments for f in (s.faiss, s.ids, s.vectors, s.tombstones) if f is not None]

    def to_bytes(self) -> bytes:
        body = {f: getattr(self, f) for f in self.__dataclass_fields__}
        body["segments"] = [s.as_json() for s in self.segments]
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        body["checksum"] = hashlib.sha256(canonical.encode()).hexdigest()
        return json.dumps(body, indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, name: str = "manifest") -> Manifest:
        try:
            body = json.loads(raw)
            checksum = body.pop("checksum")
            canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
            if hashlib.sha256(canonical.encode()).hexdigest() != checksum:
                raise IndexCorruptError(f"index manifest {name} does not match its checksum (corrupt)")
            body["segments"] = tuple(SegmentMeta.from_json(s) for s in body["segments"])
            known = set(cls.__dataclass_fields__)
            return cls(**{k: v for k, v in body.items() if k in known})
        except IndexCorruptError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise IndexCorruptError(f"index manifest {name} is unreadable ({exc.__class__.__name__}: {exc})") from exc
