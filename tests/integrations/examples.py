"""What the integration tests share: the runnable example of a docs page, and which
framework modules a plain import of the package loads."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.conftest import REPO


def docs_example(page: str, containing: str) -> str:
    """The first Python block of ``docs/PAGE`` that holds ``containing``."""
    text = (REPO / "docs" / page).read_text()
    return next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if containing in b)


def promised(code: str) -> list[str]:
    """What an example says it prints: the ``# ...`` comment after each ``print(...)``."""
    return re.findall(r"print\(.*\)  # (.*)", code)


def imported_by_plain_use(prefix: str) -> list[str]:
    """The modules named ``prefix...`` that importing the package, the Retriever and the
    search command loads, in a fresh interpreter: an optional framework must be none."""
    code = ("import json, sys, retrieval, retrieval.retriever, retrieval.cli.search, retrieval.integrations; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefix!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout))
