"""The scratch store a chaos run works in: its settings and config file, and the texts it
writes (catalog descriptions, or generated ones)."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from retrieval.config import Settings, load_settings

# Where the sample texts come from: <repo>/../shared/data/catalog (generated texts when absent).
CATALOG = Path(__file__).resolve().parents[3] / "shared" / "data" / "catalog" / "catalog-100k.jsonl"
POOL_SIZE = 20_000  # catalog lines read: enough distinct texts for hundreds of iterations
# Merge settings of the scratch store: small tiers, and no merges inline in syncs, so that
# `retrieve compact` (the merge operation) and the worker always have merges to run.
# One text in LONG_EVERY is long: LONG_PARTS short ones as paragraphs, longer than the
# model's window (hash-384's 256 tokens; all-MiniLM-L6-v2's 254), so kills land while
# documents are split into passages and their passages written too.
LONG_EVERY = 8
LONG_PARTS = 40
MERGE_SETTINGS = {"merge_segments_per_tier": 3, "merge_max_at_once": 3, "merge_floor_docs": 20, "merge_inline_max_docs": 0}


def text_pool(rng: random.Random) -> list[str]:
    """Short distinct texts: catalog descriptions, or generated ones when it is absent."""
    texts: list[str] = []
    seen: set[str] = set()
    try:
        with open(CATALOG, encoding="utf-8") as fh:
            for line in fh:
                text = " ".join(str(json.loads(line).get("text") or "").split())
                if 8 <= len(text) <= 300 and text not in seen:
                    seen.add(text)
                    texts.append(text)
                if len(texts) >= POOL_SIZE:
                    break
    except OSError:
        pass
    if len(texts) < 1000:
        words = ("fast small secure open async python client library tool parser server cache json http "
                 "image audio text data model test cloud file stream queue graph table search index").split()
        local = random.Random(0)
        while len(texts) < 5000:
            text = " ".join(local.choice(words) for _ in range(local.randint(4, 9))).capitalize()
            if text not in seen:
                seen.add(text)
                texts.append(text)
    rng.shuffle(texts)
    texts += ["\n\n".join(rng.sample(texts, LONG_PARTS)) for _ in range(len(texts) // (LONG_EVERY - 1))]
    rng.shuffle(texts)
    return texts


def write_config(path: Path, settings: Settings) -> None:
    """The settings as a config file children read (paths absolute, progress off)."""
    import yaml

    values = settings.as_nested()
    values["ingest"]["progress"] = False
    values["serve"]["api_key"] = None  # a secret, and the children serve nothing
    model_path = Path(values["encoder"]["model"]).expanduser()
    if model_path.exists():  # a local model folder given relative to the user's directory
        values["encoder"]["model"] = str(model_path.resolve())
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")


def scratch_settings(store_dir: str | os.PathLike[str], base: Settings | None = None, **overrides: Any) -> Settings:
    """``base`` (default: built-in defaults) pointed at a scratch store in ``store_dir``."""
    folder = Path(store_dir).resolve()
    base = base or load_settings(environ={}, cwd=folder)
    values: dict[str, Any] = {"database_url": f"sqlite:///{folder / 'retrieval.db'}", "index_dir": str(folder / "index"),
                              "progress": False, **MERGE_SETTINGS}
    values.update(overrides)
    return base.with_overrides("chaos", **values)


def worker_available() -> bool:
    """Whether this version of retrieval has the `retrieve worker` command."""
    import importlib.util

    return importlib.util.find_spec("retrieval.sync.worker") is not None


def remove_scratch(store_dir: str | os.PathLike[str]) -> None:
    """Delete a scratch store made by :func:`run_chaos`."""
    shutil.rmtree(store_dir, ignore_errors=True)
