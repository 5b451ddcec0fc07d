"""Long-document test collections built from short BEIR ones (issue 24, "Long documents").

``cranfield-long`` and ``medline-long`` group the abstracts of ``../shared/data/cranfield``
and ``../shared/data/medline`` into long documents, so that most of a relevant passage lies
far past the model's window (all-MiniLM-L6-v2 reads 256 word pieces, about 190 words):

* the originals with text, in corpus order, are shuffled by ``numpy.random.default_rng(SEED)``
  (``SEED`` = 24, the issue's number), then cut in that order into groups whose sizes are
  drawn from the same generator, uniformly from 4 to 12. When a drawn size would leave
  fewer than 4 documents for the next group, this group takes all the rest if the rest is
  at most 12, and otherwise leaves exactly 4 for a last group: every group holds 4 to 12;
* a long document's text is its originals' texts, each one paragraph, separated by a blank
  line (``"\\n\\n"``); a paragraph is the original's title and text joined as the BEIR
  loaders join them (:func:`retrieval.beir.join_title`: a space, empty parts left out).
  Long documents have no title. Their ids are ``L0001``, ``L0002``, ... in group order;
* a long document is relevant to a query when it holds an original judged for that query,
  with the highest grade of the originals it holds. Originals with neither title nor text
  (Cranfield 471 and 995) are left out, with their judgements: no text can find them;
* the queries are the source's ``queries.jsonl``, copied unchanged.

The output folder is a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``)
plus ``map.tsv`` (``corpus-id``, then the original ids in paragraph order, space-separated)
and ``SOURCE.md``. The same source and seed give byte-identical files::

    python scripts/long_collections.py                        # both, into bench/long/<name>/
    python scripts/long_collections.py cranfield-long --out /tmp/cranfield-long
    HF_HUB_OFFLINE=1 python scripts/eval_report.py --collections cranfield-long,medline-long
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
SEED = 24
MIN_GROUP = 4
MAX_GROUP = 12
PARAGRAPH_SEPARATOR = "\n\n"
# name of a long collection -> the short BEIR collection under --data it is built from
LONG_COLLECTIONS = {"cranfield-long": "cranfield", "medline-long": "medline"}

sys.path.insert(0, str(REPO))

from retrieval.beir import load_corpus, load_qrels  # noqa: E402


@dataclass(frozen=True)
class LongCollection:
    """What :func:`build_long_collection` wrote, and its counts."""

    name: str
    folder: Path
    documents: int
    originals: int
    left_out: list[str]  # originals without text
    median_words: float  # words (whitespace-separated) per long document
    queries: int
    judged_pairs: int  # (query, long document) judgements in qrels/test.tsv

    def summary(self) -> str:
        left = f"; left out {len(self.left_out)} empty originals ({', '.join(self.left_out)})" if self.left_out else ""
        return (f"{self.name}: {self.documents} documents from {self.originals} originals{left}; median "
                f"{self.median_words:g} words per document; {self.queries} queries; {self.judged_pairs} judged pairs "
                f"-> {self.folder}")


def group_sizes(n: int, rng: np.random.Generator, low: int = MIN_GROUP, high: int = MAX_GROUP) -> list[int]:
    """Sizes of consecutive groups covering ``n`` items, each in ``low..high``, drawn from ``rng``.

    A drawn size that would leave fewer than ``low`` items is replaced: by all the rest when
    the rest is at most ``high``, otherwise by the rest minus ``low`` (leaving exactly
    ``low`` for a last group). Needs ``high >= 2 * low - 1`` so that this always fits.
    """
    if n < low:
        raise ValueError(f"cannot group {n} documents into groups of {low} to {high}")
    if high < 2 * low - 1:
        raise ValueError(f"groups of {low} to {high} cannot always cover the rest")
    sizes: list[int] = []
    rest = n
    while rest:
        size = int(rng.integers(low, high + 1))
        if rest - size < low:  # too few would be left for another group
            size = rest if rest <= high else rest - low
        sizes.append(size)
        rest -= size
    return sizes


def build_long_collection(source: Path, out: Path, name: str | None = None, seed: int = SEED,
                          split: str = "test") -> LongCollection:
    """Build the long collection of the BEIR folder ``source`` into ``out`` (replacing its
    files); see the module docstring for the rules."""
    source, out = Path(source), Path(out)
    name = name or f"{source.name}-long"
    corpus, empty = load_corpus(source / "corpus.jsonl")
    qrels = load_qrels(source / "qrels" / f"{split}.tsv")
    ids = list(corpus)  # corpus order, empty originals already left out
    rng = np.random.default_rng(seed)
    order = [ids[i] for i in rng.permutation(len(ids))]
    groups: list[list[str]] = []
    start = 0
    for size in group_sizes(len(order), rng):
        groups.append(order[start:start + size])
        start += size

    long_ids = [f"L{n:04d}" for n in range(1, len(groups) + 1)]
    holder = {orig: long_id for long_id, group in zip(long_ids, groups) for orig in group}
    texts = [PARAGRAPH_SEPARATOR.join(corpus[orig] for orig in group) for group in groups]

    long_qrels: dict[str, dict[str, int]] = {}
    for qid, judged in qrels.items():  # file order of the source's qrels
        for orig, grade in judged.items():
            long_id = holder.get(orig)
            if long_id is None:
                continue  # an empty original: no long document holds it
            best = long_qrels.setdefault(qid, {})
            best[long_id] = max(grade, best.get(long_id, grade))

    if out.exists():
        for stale in ("corpus.jsonl", "queries.jsonl", "map.tsv", "SOURCE.md"):
            (out / stale).unlink(missing_ok=True)
        shutil.rmtree(out / "qrels", ignore_errors=True)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for long_id, text in zip(long_ids, texts):
            fh.write(json.dumps({"_id": long_id, "title": "", "text": text}, ensure_ascii=False) + "\n")
    shutil.copyfile(source / "queries.jsonl", out / "queries.jsonl")
    pairs = 0
    with open(out / "qrels" / f"{split}.tsv", "w", encoding="utf-8", newline="\n") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid, judged in long_qrels.items():
            for long_id in sorted(judged):
                fh.write(f"{qid}\t{long_id}\t{judged[long_id]}\n")
                pairs += 1
    with open(out / "map.tsv", "w", encoding="utf-8", newline="\n") as fh:
        fh.write("corpus-id\toriginal-ids\n")
        for long_id, group in zip(long_ids, groups):
            fh.write(f"{long_id}\t{' '.join(group)}\n")
    words = [len(text.split()) for text in texts]
    (out / "SOURCE.md").write_text(
        f"# {name}\n\nBuilt by `scripts/long_collections.py` from the BEIR folder `{source.name}` "
        f"(`corpus.jsonl`, `queries.jsonl`, `qrels/{split}.tsv`; see its SOURCE.md), seed {seed}: "
        f"{len(ids)} originals shuffled and grouped into {len(groups)} documents of {MIN_GROUP} to {MAX_GROUP} "
        f"paragraphs (median {float(np.median(words)):g} words), one original per paragraph, paragraphs separated "
        f"by a blank line. A document is judged for a query with the highest grade of the originals it holds. "
        f"`map.tsv` lists each document's originals in paragraph order."
        + (f" Left out, having no text: {', '.join(empty)}." if empty else "") + "\n",
        encoding="utf-8",
    )
    with open(source / "queries.jsonl", encoding="utf-8") as fh:
        n_queries = sum(1 for line in fh if line.strip())
    return LongCollection(name, out, len(groups), len(ids), empty, float(np.median(words)), n_queries, pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=list(LONG_COLLECTIONS),
                        help=f"long collections to build (default: all of {', '.join(LONG_COLLECTIONS)})")
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding the short BEIR collections")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (one name) or, with several names, the folder their folders go in "
                             "(default bench/long/<name>/)")
    parser.add_argument("--seed", type=int, default=SEED, help="the generator's seed (default %(default)s)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in LONG_COLLECTIONS]
    if unknown:
        parser.error(f"unknown collection {', '.join(unknown)}: choose from {', '.join(LONG_COLLECTIONS)}")
    for name in args.names:
        if args.out is None:
            out = REPO / "bench" / "long" / name
        else:
            out = args.out if len(args.names) == 1 else args.out / name
        built = build_long_collection(args.data / LONG_COLLECTIONS[name], out, name, seed=args.seed)
        print(built.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
