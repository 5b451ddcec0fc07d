"""Stored vectors: read them, and embed (in committed chunks) only texts never embedded.

Vectors are keyed by (model key, content hash), so a text is embedded once per model,
whoever asks: a sync, a search scoring a document the index has not caught up with, or
an HTTP write embedding ahead of its commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.embed.base import Encoder
from retrieval.store.records import content_hash
from retrieval.store.repository import Store

if TYPE_CHECKING:
    from retrieval.executors import EmbedPool

# Texts embedded between two commits of their vectors: bounds the work a crash repeats.
EMBED_CHUNK = 4096


@dataclass
class EmbedStats:
    embedded: int = 0  # distinct texts sent to the encoder
    reused: int = 0  # documents whose vector was already stored
    seconds: float = 0.0  # time in the encoder and storing its vectors


def embed_missing(
    store: Store, encoder: Encoder, texts_by_hash: dict[str, str], stats: EmbedStats | None = None
) -> tuple[dict[str, np.ndarray], set[str]]:
    """Vectors for every content hash given, embedding (in committed chunks) only those
    the store has none of for this model. Returns (hash -> vector, hashes embedded now)."""
    stats = stats if stats is not None else EmbedStats()
    model_key = encoder.model_key
    with store.read() as snap:
        have = snap.embeddings(model_key, list(texts_by_hash))
    missing = [h for h in texts_by_hash if h not in have]
    t0 = time.perf_counter()
    for start in range(0, len(missing), EMBED_CHUNK):
        part = missing[start : start + EMBED_CHUNK]
        vecs = encoder.encode([texts_by_hash[h] for h in part])
        if vecs.shape[1] != encoder.dim:
            raise RuntimeError(f"encoder returned {vecs.shape[1]} dimensions, expected {encoder.dim}")
        store.add_embeddings(model_key, encoder.dim, list(zip(part, vecs)))
        have.update(zip(part, vecs))
        stats.embedded += len(part)
    stats.seconds += time.perf_counter() - t0
    return have, set(missing)


def vectors_of(store: Store, encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
    """One vector per text, in order: the stored vector of a text the store holds one of
    for this model, the encoder's for the others (each distinct text once). Nothing is
    written: a text that is no document's would only be collected again."""
    hashes = [content_hash(t) for t in texts]
    with store.read() as snap:
        have = snap.embeddings(encoder.model_key, list(dict.fromkeys(hashes)))
    missing = {h: t for h, t in zip(hashes, texts) if h not in have}
    if missing:
        have.update(zip(missing, encoder.encode(list(missing.values()))))
    if not texts:
        return np.empty((0, encoder.dim), np.float32)
    return np.stack([have[h] for h in hashes]).astype(np.float32, copy=False)


# -- bulk embedding of what is stored (`retrieve embed`) ------------------------------

# Documents read from the store per page, and texts per batch handed to a worker.
EMBED_PAGE = 4096
EMBED_BATCH = 256


@dataclass
class BulkEmbedReport:
    """What :func:`embed_stored` did. ``seconds`` runs from the first page read to the
    last commit; starting the workers (a Ray cluster, the model loads) is ``startup_seconds``."""

    model_key: str = ""
    executor: str = "local"
    workers: int = 1
    documents: int = 0  # documents that had no vector for the model when the run began
    embedded: int = 0  # distinct texts embedded and committed by this run
    shared: int = 0  # documents whose text another document of this run already carried
    commits: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0
    # Time the driver itself spent: reading pages and hashing, and committing vectors.
    read_seconds: float = 0.0
    write_seconds: float = 0.0
    workers_info: list[dict[str, Any]] = field(default_factory=list)

    @property
    def texts_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}
        out["texts_per_second"] = round(self.texts_per_second, 1)
        return out


# Splits a page of (id, text) documents whose content hashes are given: the passages
# (hash, text) of each document longer than one passage, by id, recorded in the store.
Split = Callable[[Sequence[tuple[int, str]], Sequence[str]], dict[int, list[tuple[str, str]]]]


def embed_stored(store: Store, pool: EmbedPool, *, commit_every: int = EMBED_CHUNK, batch: int = EMBED_BATCH,
                 page: int = EMBED_PAGE, progress: bool = True, report: BulkEmbedReport | None = None,
                 split: Split | None = None) -> BulkEmbedReport:
    """Embed, on ``pool``, every stored text that has no vector for the pool's model:
    with ``split``, the passages of documents longer than the model's window instead of
    their whole (truncated) texts, as a sync would embed them.

    The driver (this function) pages through the documents without a vector in id order,
    hands each distinct text to the pool once (sorted by length within a page, so that a
    batch pads to about its own length), and commits the vectors it gets back in chunks
    of ``commit_every``, insert-or-ignore: a batch a worker redid after a crash, or a text
    another writer embedded meanwhile, is stored once. Killed at any point, a rerun
    embeds only what has no committed vector. Nothing is written to the index: the next
    sync publishes the documents from their stored vectors.
    """
    report = report if report is not None else BulkEmbedReport()
    report.model_key, report.workers, report.workers_info = pool.model_key, pool.workers, pool.workers_info
    key = pool.model_key
    t0 = time.perf_counter()
    with store.read() as snap:
        report.documents = snap.count_docs_without_vectors(key)
    report.read_seconds += time.perf_counter() - t0
    # Hash -> how many documents carry it, for every text handed out and not yet committed.
    pending: dict[str, int] = {}
    bar = None
    if progress and report.documents:
        from tqdm import tqdm

        bar = tqdm(total=report.documents, desc=f"Embedding ({report.executor}, {report.workers} worker"
                   f"{'s' if report.workers != 1 else ''})", unit="text", dynamic_ncols=True)

    def batches() -> Iterator[tuple[list[str], list[str]]]:
        after = 0
        while True:
            started = time.perf_counter()
            with store.read() as snap:
                rows = snap.docs_without_vectors(key, after, page)
            if not rows:
                report.read_seconds += time.perf_counter() - started
                return
            after = rows[-1][0]
            texts = _new_texts(store, key, rows, pending, report, split)
            report.read_seconds += time.perf_counter() - started
            ordered = sorted(texts, key=lambda h: len(texts[h]))
            for start in range(0, len(ordered), batch):
                hashes = ordered[start : start + batch]
                yield hashes, [texts[h] for h in hashes]

    done: list[tuple[str, np.ndarray]] = []

    def commit() -> None:
        started = time.perf_counter()
        store.add_embeddings(key, pool.dim, done)
        report.write_seconds += time.perf_counter() - started
        report.embedded += len(done)
        report.commits += 1
        finished = sum(pending.pop(h) for h, _ in done)
        done.clear()
        if bar is not None:
            bar.update(finished)

    try:
        for hashes, vectors in pool.map(batches()):
            if vectors.shape != (len(hashes), pool.dim):
                raise RuntimeError(f"a worker returned vectors of shape {vectors.shape} for {len(hashes)} texts")
            done.extend(zip(hashes, vectors))
            if bar is not None:
                # Shown as embedded now; documents that join one of these texts before
                # its commit are counted at the commit.
                bar.update(sum(pending[h] for h in hashes))
                pending.update(dict.fromkeys(hashes, 0))
            if len(done) >= commit_every:
                commit()
        if done:
            commit()
    finally:
        if bar is not None:
            bar.close()
    report.seconds = time.perf_counter() - t0
    return report


def _new_texts(store: Store, key: str, rows: Sequence[tuple[int, str, str | None]], pending: dict[str, int],
               report: BulkEmbedReport, split: Split | None = None) -> dict[str, str]:
    """The distinct texts of a page of documents that still need a vector: stale or
    missing hashes (rows other programs wrote) are recomputed and saved first, and
    texts already handed out in this run are counted, not handed out again. A document
    that ``split`` cuts into passages needs its passages' texts (those without a vector)."""
    hashes = [content_hash(text) for _, text, _ in rows]
    fixes = [(doc_id, h) for (doc_id, _, old), h in zip(rows, hashes) if old != h]
    if fixes:
        store.set_hashes(fixes)
    parts = split([(doc_id, text) for doc_id, text, _ in rows], hashes) if split is not None else {}
    wanted = {h for _, h in fixes} | {h for pieces in parts.values() for h, _ in pieces}
    have: set[str] = set()
    if wanted:
        with store.read() as snap:
            have = set(snap.embeddings(key, wanted))
    texts: dict[str, str] = {}
    for (doc_id, text, _), h in zip(rows, hashes):
        # Each document counts once (on its first text) for the progress bar.
        for n, (piece_hash, piece) in enumerate(parts.get(doc_id) or [(h, text)]):
            if piece_hash in have:
                continue
            if piece_hash in pending:
                report.shared += 1
            else:
                texts[piece_hash] = piece
            pending[piece_hash] = pending.get(piece_hash, 0) + (n == 0)
    return texts
