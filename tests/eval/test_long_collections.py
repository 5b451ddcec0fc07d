"""The long collections of issue 24 (``scripts/long_collections.py``): Cranfield's and
Medline's abstracts grouped 4 to 12 per document, built the same way every time.

No model: these check the files the evaluation reads (grouping, paragraphs, judgements),
on a small hand-made collection and on the real Cranfield when ../shared/data has it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from retrieval.beir import join_title, load_beir, load_corpus, load_qrels
from tests.conftest import REPO, SHARED_DATA

CRANFIELD = SHARED_DATA / "cranfield"
needs_cranfield = pytest.mark.skipif(not (CRANFIELD / "corpus.jsonl").is_file(), reason="../shared/data/cranfield is absent")


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("long_collections", REPO / "scripts" / "long_collections.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("long_collections", module)
    spec.loader.exec_module(module)
    return module


lc = load_script()


def read_map(folder: Path) -> dict[str, list[str]]:
    lines = (folder / "map.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "corpus-id\toriginal-ids"
    return {long_id: originals.split(" ") for long_id, originals in (line.split("\t") for line in lines[1:])}


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_group_sizes_cover_everything_within_4_to_12() -> None:
    for seed in range(30):
        rng = np.random.default_rng(seed)
        for n in range(4, 160):
            sizes = lc.group_sizes(n, rng)
            assert sum(sizes) == n
            assert all(4 <= s <= 12 for s in sizes), (seed, n, sizes)
    # The remainder rule, by hand: 13 to 15 left and a draw that would leave 1 to 3 -> leave exactly 4.
    class Draws:
        def __init__(self, *values: int) -> None:
            self.values = list(values)

        def integers(self, low: int, high: int) -> int:
            return self.values.pop(0)

    assert lc.group_sizes(14, Draws(12, 9)) == [10, 4]  # 12 would leave 2: this group leaves 4
    assert lc.group_sizes(9, Draws(7)) == [9]  # 7 would leave 2, and 9 fit in one group
    assert lc.group_sizes(20, Draws(8, 9)) == [8, 12]  # 9 would leave 3 of the last 12: all of them
    with pytest.raises(ValueError):
        lc.group_sizes(3, np.random.default_rng(0))


def test_small_collection_by_hand(tmp_path: Path) -> None:
    """Five originals with text (fewer than 8: always one group) and one empty one."""
    source = tmp_path / "tiny"
    (source / "qrels").mkdir(parents=True)
    rows = [("a", "Alpha", "first text."), ("b", "", "second text."), ("c", "Gamma", ""), ("d", "", ""),
            ("e", "Epsilon", "fifth text."), ("f", "Zeta", "sixth text.")]
    (source / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in rows))
    (source / "queries.jsonl").write_text('{"_id": "1", "text": "one"}\n{"_id": "2", "text": "two"}\n{"_id": "3", "text": "three"}\n')
    (source / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\ta\t1\n1\tc\t3\n1\te\t2\n2\td\t1\n3\tb\t1\n")

    built = lc.build_long_collection(source, tmp_path / "out", "tiny-long")
    assert (built.documents, built.originals, built.left_out, built.queries, built.judged_pairs) == (1, 5, ["d"], 3, 2)
    data = load_beir(tmp_path / "out")
    groups = read_map(tmp_path / "out")
    assert list(groups) == ["L0001"] and sorted(groups["L0001"]) == ["a", "b", "c", "e", "f"]
    paragraphs = {"a": "Alpha first text.", "b": "second text.", "c": "Gamma", "e": "Epsilon fifth text.", "f": "Zeta sixth text."}
    assert data.corpus["L0001"] == "\n\n".join(paragraphs[o] for o in groups["L0001"])
    # Query 1: the highest grade held (c's 3); query 2 judged only the empty d: no judgement left.
    assert data.qrels == {"1": {"L0001": 3}, "3": {"L0001": 1}}
    assert (tmp_path / "out" / "queries.jsonl").read_bytes() == (source / "queries.jsonl").read_bytes()


@needs_cranfield
def test_cranfield_long_is_deterministic_and_complete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert lc.main(["cranfield-long", "--out", str(tmp_path / "first"), "--data", str(SHARED_DATA)]) == 0
    printed = capsys.readouterr().out
    assert "cranfield-long: " in printed and "documents" in printed and "median" in printed and "judged pairs" in printed
    lc.build_long_collection(CRANFIELD, tmp_path / "second", "cranfield-long")
    first = files_of(tmp_path / "first")
    assert sorted(first) == ["SOURCE.md", "corpus.jsonl", "map.tsv", "qrels/test.tsv", "queries.jsonl"]
    assert first == files_of(tmp_path / "second")

    folder = tmp_path / "first"
    originals, empty = load_corpus(CRANFIELD / "corpus.jsonl")
    assert empty == ["471", "995"]
    groups = read_map(folder)
    data = load_beir(folder)
    assert list(groups) == [f"L{n:04d}" for n in range(1, len(groups) + 1)] == list(data.corpus)
    held = [o for group in groups.values() for o in group]
    assert sorted(held) == sorted(originals) and len(held) == len(set(held)) == 1398  # each exactly once
    assert all(4 <= len(group) <= 12 for group in groups.values())
    assert held != list(originals)  # shuffled, not in corpus order

    rows = [json.loads(line) for line in (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(row["title"] == "" for row in rows)
    for row in rows:
        paragraphs = row["text"].split("\n\n")
        assert paragraphs == [originals[o] for o in groups[row["_id"]]]
        assert all(p and p == p.strip() and "\n" not in p for p in paragraphs)
    raw = {json.loads(line)["_id"]: json.loads(line) for line in (CRANFIELD / "corpus.jsonl").read_text(encoding="utf-8").splitlines()}
    assert originals["1"] == join_title(raw["1"]["title"], raw["1"]["text"])

    # Judgements: each long document gets the highest grade of the originals it holds.
    source = load_qrels(CRANFIELD / "qrels" / "test.tsv")
    holder = {o: long_id for long_id, group in groups.items() for o in group}
    expected: dict[str, dict[str, int]] = {}
    for qid, judged in source.items():
        for orig, grade in judged.items():
            if orig in holder:
                expected.setdefault(qid, {})[holder[orig]] = max(grade, expected.get(qid, {}).get(holder[orig], 0))
    assert data.qrels == expected
    # By hand: query 1 judges 184 at 3 and 15 at 1; query 23 judges 902 at 4 and 1256 at 3.
    assert data.qrels["1"][holder["184"]] == 3 and data.qrels["1"][holder["15"]] >= 1
    assert data.qrels["23"][holder["902"]] == 4
    # Query 125 judges the empty 995 (2): that judgement is dropped; its other 16 originals remain.
    assert set(data.qrels["125"]) == {holder[o] for o in source["125"] if o != "995"}
    assert len(source["125"]) == 17
