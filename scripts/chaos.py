#!/usr/bin/env python
"""Crash safety shown by real kills: `retrieve ingest`, `sync`, `worker`, `reindex` and
`compact` (segment merges) are started as processes on a scratch store and killed with
SIGKILL at random moments (kills while the child holds the merge lock are counted); after
each kill `retrieve sync` runs and the store is checked (nothing lost, no drift, the index
loads, searches find every stored document's latest text). Then the special cases: a
truncated or garbage index file, a disk full half-way through an index write, and a
database locked by another writer for longer than the busy timeout.

Prints a table to stderr and, as the last line on stdout, one JSON object with the
report. Exit status 0 when nothing was lost and no drift or other failure was found.

    HF_HUB_OFFLINE=1 python scripts/chaos.py                       # 50 kills, default settings
    HF_HUB_OFFLINE=1 python scripts/chaos.py --iterations 12 --seed 3 --operations ingest,sync
    HF_HUB_OFFLINE=1 python scripts/chaos.py --store /tmp/chaos --keep   # inspect the store afterwards

The scratch store uses the built-in default settings (``--config`` to start from a config
file instead: only its model and index settings matter; database and index always go to
the scratch folder). `retrieve selftest --crash` runs the same harness on a scratch copy
of the current configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    from retrieval.config import load_settings
    from retrieval.selftest import OPERATIONS, SPECIAL_CASES, remove_scratch, run_chaos

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=50, help="kills to make (default 50)")
    parser.add_argument("--seed", type=int, help="random seed (default: random, printed in the report)")
    parser.add_argument("--store", help="scratch folder (must be empty or absent; default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder afterwards")
    parser.add_argument("--operations", default=",".join(OPERATIONS), help="comma-separated subset of " + ", ".join(OPERATIONS))
    parser.add_argument("--special", default=",".join(SPECIAL_CASES),
                        help="comma-separated special cases to run after the kills ('' for none)")
    parser.add_argument("--restart", choices=["process", "in-process"], default="process",
                        help="run the `retrieve sync` after each kill as a process (default) or in this process")
    parser.add_argument("--config", help="config file whose model and index settings the scratch store uses")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)

    settings = load_settings(args.config, environ={}) if args.config else None
    store = Path(args.store) if args.store else Path(tempfile.mkdtemp(prefix="retrieve-chaos-"))
    echo = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        report = run_chaos(
            store,
            iterations=args.iterations,
            seed=args.seed,
            operations=[o for o in args.operations.split(",") if o],
            special_cases=[s for s in args.special.split(",") if s],
            settings=settings,
            restart=args.restart,
            echo=echo,
        )
    finally:
        if not args.keep:
            remove_scratch(store)
    print(report.table(), file=sys.stderr)
    if args.keep:
        print(f"scratch store kept in {store}", file=sys.stderr)
    print(json.dumps(report.as_dict()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
