"""BEIR-layout test collections: ``corpus.jsonl`` (``_id``, ``title``, ``text``),
``queries.jsonl`` (``_id``, ``text``) and ``qrels/<split>.tsv`` (``query-id``,
``corpus-id``, ``score`` with a header line; TREC qrels work too). Titles are joined to
texts with a space, as BEIR's own dense retrieval code does. Every problem is an
:class:`~retrieval.errors.EvalDataError` naming the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval.errors import EvalDataError

Qrels = dict[str, dict[str, int]]  # query id -> document id -> graded judgement
Run = dict[str, dict[str, float]]  # query id -> document id -> score


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError as exc:
        raise EvalDataError(f"{path} does not exist") from exc
    except OSError as exc:
        raise EvalDataError(f"cannot read {path}: {exc.strerror}") from exc
    with fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise EvalDataError(f"{path}:{number}: not valid JSON ({exc})") from exc
            if not isinstance(obj, dict):
                raise EvalDataError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
            yield number, obj


def _id_of(obj: Mapping[str, Any], path: Path, number: int) -> str:
    value = obj.get("_id", obj.get("id"))
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise EvalDataError(f"{path}:{number}: missing \"_id\" (BEIR layout: one {{\"_id\", \"text\"}} object per line)")
    return value


def _str_field(obj: Mapping[str, Any], name: str, path: Path, number: int) -> str:
    value = obj.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise EvalDataError(f"{path}:{number}: \"{name}\" must be a string, got {type(value).__name__}")
    return value


def join_title(title: str, text: str) -> str:
    """BEIR's document text: title and text joined by a space, empty parts left out."""
    return " ".join(part for part in (title.strip(), text.strip()) if part)


def load_corpus(path: str | Path) -> tuple[dict[str, str], list[str]]:
    """Read a BEIR ``corpus.jsonl``: ({doc id: title + " " + text}, ids of empty documents).

    Documents whose title and text are both empty cannot be embedded; they are left out
    and their ids returned so that callers can say how many were skipped.
    """
    path = Path(path)
    docs: dict[str, str] = {}
    empty: list[str] = []
    for number, obj in _jsonl(path):
        doc_id = _id_of(obj, path, number)
        text = join_title(_str_field(obj, "title", path, number), _str_field(obj, "text", path, number))
        if text:
            docs[doc_id] = text
        else:
            empty.append(doc_id)
    return docs, empty


def load_queries(path: str | Path) -> dict[str, str]:
    """Read a BEIR ``queries.jsonl``: {query id: text}. Empty queries are an error."""
    path = Path(path)
    queries: dict[str, str] = {}
    for number, obj in _jsonl(path):
        qid = _id_of(obj, path, number)
        text = _str_field(obj, "text", path, number).strip()
        if not text:
            raise EvalDataError(f"{path}:{number}: query {qid!r} has no text")
        queries[qid] = text
    if not queries:
        raise EvalDataError(f"{path} holds no queries")
    return queries


def load_qrels(path: str | Path) -> Qrels:
    """Read relevance judgements: {query id: {doc id: grade}}.

    Accepts BEIR's TSV (``query-id``, ``corpus-id``, ``score``, with or without the header
    line) and TREC qrels (``qid iter docid rel``, separated by tabs or spaces).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise EvalDataError(f"{path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalDataError(f"cannot read {path}: {exc}") from exc
    qrels: Qrels = {}
    header_seen = False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        parts = [p.strip() for p in parts]
        if len(parts) == 4:  # TREC: qid, iteration (ignored), docid, rel
            parts = [parts[0], parts[2], parts[3]]
        if len(parts) != 3:
            raise EvalDataError(
                f"{path}:{number}: expected query-id, corpus-id and score separated by tabs, got {len(parts)} fields"
            )
        qid, doc_id, grade = parts
        try:
            value = int(float(grade))
        except ValueError:
            if not qrels and not header_seen:
                header_seen = True  # BEIR's "query-id corpus-id score" line
                continue
            raise EvalDataError(f"{path}:{number}: the score {grade!r} is not a number") from None
        qrels.setdefault(qid, {})[doc_id] = value
    if not qrels:
        raise EvalDataError(f"{path} holds no judgements")
    return qrels


@dataclass
class BeirDataset:
    """A BEIR folder, read: corpus texts, query texts and judgements."""

    name: str
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: Qrels
    empty_documents: list[str] = field(default_factory=list)


def load_beir(folder: str | Path, split: str = "test") -> BeirDataset:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` from ``folder``."""
    root = Path(folder)
    if not root.is_dir():
        raise EvalDataError(f"{root} is not a folder (expected a BEIR folder with corpus.jsonl, queries.jsonl, qrels/)")
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        found = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        hint = f" (splits found: {', '.join(found)}; choose one with --split)" if found else ""
        raise EvalDataError(f"{qrels_path} does not exist{hint}")
    corpus, empty = load_corpus(root / "corpus.jsonl")
    return BeirDataset(root.name, corpus, load_queries(root / "queries.jsonl"), load_qrels(qrels_path), empty)
