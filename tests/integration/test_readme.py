"""The README and the pages under docs/ are true: their Python examples run and print what
they say, the test command is the one CI runs, the README's links lead somewhere, and the
documentation site builds with no broken link or anchor."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
TEST_COMMAND = "bash scripts/setup.sh && .venv/bin/python -m pytest -q"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _run_example(code: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run an example as a reader would, in an empty folder, and return what it printed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETRIEVE_PROGRESS", "false")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, name, "exec"), {})
    return out.getvalue()


def _docs_examples() -> list[tuple[str, str]]:
    """Every self-contained Python example under docs/ (one that imports the package
    itself); the other blocks are fragments that continue such an example."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for i, code in enumerate(_python_blocks(page.read_text())):
            if re.match(r"(from retrieval(\.\w+)* import|import retrieval)\b", code):
                found.append((f"docs/{page.name}#{i + 1}", code))
    return found


DOCS_EXAMPLES = _docs_examples()


def test_python_example_runs_and_prints_the_documented_score(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoder) -> None:
    code = _python_blocks(README.read_text())[0]
    assert len(code.strip().splitlines()) <= 10
    doc, score, text = _run_example(code, "README.md", tmp_path, monkeypatch).split(" ", 2)
    # The score the README shows (0.6649 in fp32; the last digit may differ by CPU and runtime).
    assert doc == "p2" and abs(float(score) - 0.6649) < 0.001 and text.startswith("High-performance running shoes")


def test_the_python_page_keeps_a_runnable_example() -> None:
    assert any(name.startswith("docs/python.md#") for name, _ in DOCS_EXAMPLES)


@pytest.mark.parametrize(("name", "code"), DOCS_EXAMPLES, ids=[name for name, _ in DOCS_EXAMPLES])
def test_the_docs_python_examples_run_and_print_what_they_say(
    name: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoder
) -> None:
    """Each `print(...)  # id score text ...` comment is what the example prints: the id and
    the text's start exactly, the score to within 0.001 (the last digit may differ by CPU)."""
    said = [m.group(1).removesuffix("...").strip() for m in re.finditer(r"print\(.*\)\s+#\s*(.+)", code)]
    printed = _run_example(code, name, tmp_path, monkeypatch).splitlines()
    assert len(printed) == len(said), (printed, said)
    for line, expected in zip(printed, said):
        doc, score, text = line.split(" ", 2)
        want_doc, want_score, want_text = expected.split(" ", 2)
        assert doc == want_doc and abs(float(score) - float(want_score)) < 0.001 and text.startswith(want_text), (line, expected)


def test_ci_runs_the_readme_test_command() -> None:
    assert TEST_COMMAND in README.read_text()
    assert TEST_COMMAND in (DOCS / "index.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert TEST_COMMAND in ci


def _github_slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_in_the_readme_leads_to_a_file_that_exists() -> None:
    text = README.read_text()
    prose = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose)
    relative = [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]
    assert any(t.startswith("docs/") for t in relative), "the README links to no docs page"
    for target in relative:
        path, _, anchor = target.partition("#")
        file = (README.parent / path) if path else README
        assert file.exists(), f"README.md links to {target!r}, which does not exist"
        if anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", file.read_text(), flags=re.S), re.M)
            assert anchor in {_github_slug(h) for h in headings}, f"README.md links to {target!r}: no such heading"


def test_the_docs_build_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict` fails on a broken link, a missing page or an unknown anchor."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("MkDocs and the Material theme are not installed (pip install -e '.[docs]')")
    site = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"), "--site-dir", str(site)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    assert "WARNING" not in built.stderr, built.stderr
    assert (site / "index.html").exists() and (site / "search-page.png").exists()


def test_the_readmes_filter_example_finds_something_on_the_sample(store_env) -> None:
    """It once filtered for footwear under 100 on a sample whose only footwear costs 129."""
    import json
    import shlex

    from click.testing import CliRunner

    from retrieval.cli import cli

    line = next(x for x in README.read_text().splitlines() if x.startswith("retrieve search") and "--where" in x)
    args = shlex.split(line.split("#")[0])[1:]
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", "--sample"]).exit_code == 0
    found = runner.invoke(cli, [*args, "--json"])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)["results"]
    assert hits and all(h["metadata"]["category"] == "clothing" and h["metadata"]["price"] < 50 for h in hits)


def test_the_openai_page_example_runs_against_a_real_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    """docs/openai.md's example, run with the official client against `retrieve serve` on
    the real model (torch fp32: it starts without an ONNX export), prints what the page says;
    the error the page quotes is the one the server gives."""
    from tests.conftest import REAL
    from tests.fixtures.server import ServeProcess

    page = (DOCS / "openai.md").read_text()
    [code] = _python_blocks(page)
    key = "docs-key-0123456789abcdef"
    server = ServeProcess(tmp_path / "served", model=REAL, api_key=key, backend="torch", precision="fp32",
                          cache=tmp_path_factory.getbasetemp() / "xdg-cache")
    (tmp_path / "served").mkdir()
    server.start()
    try:
        assert 'base_url="http://127.0.0.1:8000/v1", api_key="YOUR-RETRIEVE-API-KEY"' in code
        code = code.replace("http://127.0.0.1:8000", server.url).replace("YOUR-RETRIEVE-API-KEY", key)
        out = _run_example(code, "docs/openai.md", tmp_path, monkeypatch)
        assert out.strip() == "384 dimensions; closest: running shoes"
        assert "prints `384 dimensions; closest: running shoes`" in page

        import openai

        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        words = " ".join(["rain"] * 300)
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            client.embeddings.create(model=REAL, input=["fine", words])
        quoted = re.search(r"`(Error code: 422 - .*?)`", page, re.S)
        assert quoted and str(caught.value) == " ".join(quoted.group(1).split())
    finally:
        server.stop()
