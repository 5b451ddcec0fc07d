"""The search page at `/`, driven in a real headless Chromium (the system's, through
Playwright) against real `retrieve serve` subprocesses on free loopback ports.

Two servers run for the whole module, started side by side:

* ``served``: the packaged all-MiniLM-L6-v2 (meaning matters here: "jogging" must find the
  running shoes) on torch, without a key, holding the sample catalog and a document whose text is
  an HTML injection attempt;
* ``keyed``: the test encoder (hash-384) with ``RETRIEVE_API_KEY`` set, for the key prompt.

Every check of results compares the page with what the API answers for the same
request. One browser serves every test; each test gets a fresh context (its own
sessionStorage and cookies). The browser tests are skipped, saying why, only where
Chromium or Playwright is missing; the checks of the headers and the shipped files run
everywhere.

``RETRIEVAL_WRITE_SCREENSHOT=1`` makes the hybrid-mode test write the README's screenshot,
docs/search-page.png, from its real run (otherwise it goes to a temporary folder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import HASH, REAL, REPO
from tests.fixtures.server import ServeProcess

KEY = "page-test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
JOGGING = "What are good shoes for jogging?"
SHOES = "p002"
XSS_TEXT = "<img src=x onerror=alert(1)>"
XSS_DOCS = [{"id": "xss", "text": XSS_TEXT, "metadata": {"note": "<b>bold</b>", "category": "test"}}]
SAMPLE = [json.loads(line) for line in (REPO / "retrieval" / "sample" / "products.jsonl").read_text().splitlines() if line]
STATIC = REPO / "retrieval" / "http" / "static"
SCREENSHOT = REPO / "docs" / "search-page.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


class Server(ServeProcess):
    """`retrieve serve` in a subprocess on a store of its own, with the page's API calls."""

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers=self.headers, timeout=60, **kwargs)

    def search(self, **body: Any) -> list[dict[str, Any]]:
        response = self.api("POST", "/v1/search", json=body)
        assert response.status_code == 200, response.text
        return list(response.json()["results"])


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    cache = tmp_path_factory.getbasetemp() / "xdg-cache"
    # torch fp32, the reference encoder: it starts without the ONNX export that a fresh
    # session's first default-encoder process pays for (the page does not care which runs).
    served = Server(tmp_path_factory.mktemp("page-served"), model=REAL, cache=cache, backend="torch",
                    precision="fp32")
    keyed = Server(tmp_path_factory.mktemp("page-keyed"), model=HASH, api_key=KEY, cache=cache)
    try:
        for srv in (served, keyed):
            srv.launch()
        for srv, docs in ((served, SAMPLE + XSS_DOCS), (keyed, SAMPLE)):
            srv.wait_ready()
            seeded = srv.api("POST", "/v1/documents", json={"documents": docs})
            assert seeded.status_code == 200, seeded.text
        yield served, keyed
    finally:
        for srv in (served, keyed):
            srv.stop()


@pytest.fixture(scope="module")
def served(servers: tuple[Server, Server]) -> Server:
    return servers[0]


@pytest.fixture(scope="module")
def keyed(servers: tuple[Server, Server]) -> Server:
    return servers[1]


# -- the page and its assets over plain HTTP (no browser needed) ---------------------------


class _Markup(HTMLParser):
    """Collects what a CSP without 'unsafe-inline' would refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "style" or "style" in names or any(name.startswith("on") for name in names):
            self.inline.append(tag)
        if tag == "script":
            self._in_script = True
            self.scripts.append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("script")


def test_page_and_assets_are_open_with_a_strict_csp_while_the_api_needs_the_key(keyed: Server) -> None:
    page = httpx.get(keyed.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert httpx.get(keyed.url + "/v1/status").status_code == 401
    assert httpx.post(keyed.url + "/v1/search", json={"query": "shoes"}).status_code == 401
    csp = {d.split()[0]: d.split()[1:] for d in page.headers["content-security-policy"].split("; ")}
    assert csp["default-src"] == ["'none'"] and csp["frame-ancestors"] == ["'none'"]
    for directive in ("script-src", "style-src", "connect-src"):
        assert csp[directive] == ["'self'"], directive  # no 'unsafe-inline', no 'unsafe-eval', no other origin
    assert csp["require-trusted-types-for"] == ["'script'"]
    markup = _Markup()
    markup.feed(page.text)
    assert markup.inline == [] and markup.scripts == ["ui/app.js"]
    for path, kind in (("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css"), ("/ui/favicon.svg", "image/svg+xml")):
        asset = httpx.get(keyed.url + path)
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind), path
        assert asset.headers["content-security-policy"] == page.headers["content-security-policy"]
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert asset.content == (STATIC / path.rsplit("/", 1)[1]).read_bytes()
        again = httpx.get(keyed.url + path, headers={"If-None-Match": asset.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
    assert httpx.head(keyed.url + "/").status_code == 200
    assert httpx.get(keyed.url + "/ui/nope.js").status_code == 404
    assert "/" not in httpx.get(keyed.url + "/openapi.json", headers=AUTH).json()["paths"]


def test_the_script_never_parses_strings_as_html() -> None:
    script = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "DOMParser", "createContextualFragment", "document.cookie", "localStorage"):
        assert sink not in script, sink


def test_the_page_files_are_package_data() -> None:
    import tomllib
    from importlib import resources

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["retrieval"]
    assert "http/static/*" in data
    shipped = resources.files("retrieval.http") / "static"
    assert {p.name for p in STATIC.iterdir()} == {p.name for p in shipped.iterdir()} >= {"index.html", "app.js", "app.css"}


# -- in the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (it is in the test extra: pip install -e '.[test]')")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Tab:
    """A page in a fresh context, with what it logged, the dialogs it opened and the
    requests it made."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.page = context.new_page()
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[Any] = []
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("request", lambda r: self.requests.append(r))

    def ids(self) -> Any:
        return self.page.locator("#results .result .doc-id")


@pytest.fixture
def tab(browser: Any) -> Iterator[Tab]:
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)  # a slow machine's first search; never a measurement
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    t = Tab(context)
    yield t
    context.close()
    assert t.page_errors == [], t.page_errors  # no exception in the page's script, in any test
    assert t.dialogs == [], t.dialogs


def _ids(results: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in results]


def test_typing_a_question_shows_the_running_shoes_first(served: Server, tab: Tab) -> None:
    from playwright.sync_api import expect

    page = tab.page
    page.goto(served.url + "/")
    page.locator("#q").press_sequentially(JOGGING, delay=15)  # as a person types: searched as they go
    expected = served.search(query=JOGGING, k=5)
    assert expected[0]["id"] == SHOES
    expect(tab.ids()).to_have_text(_ids(expected))
    expect(page.locator("#results .score")).to_have_text([f"{r['score']:.4f}" for r in expected])
    first = page.locator("#results .result").first
    expect(first.locator(".text")).to_have_text(expected[0]["text"])
    expect(first.locator(".chip-key")).to_have_text(list(expected[0]["metadata"]))
    expect(first.locator(".chip-value").first).to_have_text(expected[0]["metadata"]["category"])
    expect(page.locator("#summary")).to_contain_text("5 results in")
    assert page.url == served.url + "/?q=What+are+good+shoes+for+jogging%3F"

    # The status panel: what GET /v1/status says.
    status = served.api("GET", "/v1/status").json()
    panel = page.locator("#status-body")
    expect(panel).to_contain_text(f"{status['documents']} ({status['indexed']} indexed)")
    expect(panel).to_contain_text(f"{status['backend']} {status['precision']}")
    expect(panel.locator("dt:text-is('Worker') + dd")).to_have_text("running")
    expect(panel.locator("tbody td:nth-child(2)")).to_have_text([s["type"] for s in status["segments"]])

    # The keyboard: arrows through the results, Enter opens one, Escape closes it, then clears.
    active = "document.activeElement.closest('.result')?.dataset.id ?? document.activeElement.id"
    page.locator("#q").press("ArrowDown")
    assert page.evaluate(active) == expected[0]["id"]
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    assert page.evaluate(active) == expected[2]["id"]
    page.keyboard.press("ArrowUp")
    assert page.evaluate(active) == expected[1]["id"]
    page.keyboard.press("Enter")
    expect(page.locator("#doc-dialog")).to_be_visible()
    expect(page.locator("#doc-title")).to_have_text(expected[1]["id"])
    page.keyboard.press("Escape")
    expect(page.locator("#doc-dialog")).to_be_hidden()
    page.keyboard.press("Escape")
    expect(page.locator("#q")).to_have_value("")
    expect(page.locator("#results .result")).to_have_count(0)
    assert page.url == served.url + "/"
    assert tab.console_errors == []  # CSP violations are reported here too


def test_mode_filter_and_min_score_change_results_as_the_api_does(served: Server, tab: Tab, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = tab.page
    page.goto(served.url + "/")
    page.locator("#q").fill(JOGGING)
    page.locator("#q").press("Enter")
    expect(tab.ids()).to_have_text(_ids(served.search(query=JOGGING, k=5)))

    page.locator("#mode").select_option("hybrid")
    hybrid = served.search(query=JOGGING, k=5, mode="hybrid")
    expect(tab.ids()).to_have_text(_ids(hybrid))
    # The matched terms the API marked in its snippet, and nothing else.
    top = hybrid[0]
    marks = [top["snippet"][start:end] for start, end in top["highlights"]]
    expect(page.locator("#results .result").first.locator("mark")).to_have_text(marks)
    expect(page.locator("#results .result").first.locator(".ranks")).to_have_text(
        f"dense #{top['dense_rank']} · keyword #{top['keyword_rank']}")
    shot = SCREENSHOT if os.environ.get("RETRIEVAL_WRITE_SCREENSHOT") == "1" else tmp_path / "search-page.png"
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    where = {"category": "electronics", "price": {"$lt": 100}}
    page.locator("#mode").select_option("keyword")
    page.locator("#q").fill("rechargeable battery")
    page.locator("#where").fill(json.dumps(where))
    page.locator("#k").fill("3")
    page.locator("#q").press("Enter")
    keyword = served.search(query="rechargeable battery", k=3, mode="keyword", where=where)
    unfiltered = served.search(query="rechargeable battery", k=3, mode="keyword")
    assert keyword and _ids(keyword) != _ids(unfiltered)  # the filter matters for this query
    expect(tab.ids()).to_have_text(_ids(keyword))
    expect(page.locator("#results .chip-value", has_text="electronics")).to_have_count(len(keyword))

    page.locator("#mode").select_option("dense")
    page.locator("#where").fill("")
    page.locator("#min-score").fill("0.45")
    page.locator("#q").press("Enter")
    dense = served.search(query="rechargeable battery", k=3, min_score=0.45)
    assert 0 < len(dense) < len(served.search(query="rechargeable battery", k=3))  # min_score matters here
    expect(tab.ids()).to_have_text(_ids(dense))

    # Deep link: the state is in the address, and a link opens the same search.
    link = page.url
    assert link == served.url + "/?q=rechargeable+battery&k=3&min_score=0.45"
    where = {"category": "outdoor", "price": {"$lt": 100}}
    page.goto(served.url + "/?" + str(httpx.QueryParams({"q": "a bottle for camping", "k": "4", "mode": "hybrid",
                                                       "where": json.dumps(where)})))
    expect(page.locator("#mode")).to_have_value("hybrid")
    expect(page.locator("#k")).to_have_value("4")
    expect(page.locator("#where")).to_have_value(json.dumps(where))
    linked = served.search(query="a bottle for camping", k=4, mode="hybrid", where=where)
    assert linked and all(r["metadata"]["category"] == "outdoor" for r in linked)
    expect(tab.ids()).to_have_text(_ids(linked))
    assert tab.console_errors == []


def test_more_like_this_and_the_document_view(served: Server, tab: Tab) -> None:
    from playwright.sync_api import expect

    page = tab.page
    page.goto(served.url + "/?q=" + JOGGING.replace(" ", "+").replace("?", "%3F"))
    expect(tab.ids().first).to_have_text(SHOES)
    similar = served.api("GET", f"/v1/documents/{SHOES}/similar", params={"k": 5}).json()["results"]
    assert SHOES not in _ids(similar)
    page.locator(f"#results .result[data-id='{SHOES}'] .similar").click()
    expect(tab.ids()).to_have_text(_ids(similar))
    expect(page.locator("#summary")).to_contain_text(f"like {SHOES}")
    assert f"like={SHOES}" in page.url and "q=" not in page.url
    page.locator("#back").click()
    expect(tab.ids().first).to_have_text(SHOES)

    # The document view, and more like this from it.
    doc = served.api("GET", "/v1/documents/p004").json()
    page.locator("#results .result[data-id='p004'] .doc-id").click()
    dialog = page.locator("#doc-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#doc-text")).to_have_text(doc["text"])
    expect(dialog.locator("dt")).to_have_text(list(doc["metadata"]))
    assert "doc=p004" in page.url
    dialog.locator("#doc-similar").click()
    expect(dialog).to_be_hidden()
    expect(tab.ids()).to_have_text(_ids(served.api("GET", "/v1/documents/p004/similar", params={"k": 5}).json()["results"]))

    # A link to a document opens its view.
    page.goto(served.url + f"/?doc={SHOES}")
    expect(dialog.locator("#doc-text")).to_have_text(served.api("GET", f"/v1/documents/{SHOES}").json()["text"])
    page.goto(served.url + "/?doc=no-such-id")
    expect(page.locator("#doc-error")).to_have_text(served.api("GET", "/v1/documents/no-such-id").json()["message"])


def test_an_invalid_filter_or_request_shows_a_readable_message(served: Server, tab: Tab) -> None:
    from playwright.sync_api import expect

    page = tab.page
    page.goto(served.url + "/?q=shoes")
    expect(tab.ids().first).to_be_visible()
    where, message = page.locator("#where"), page.locator("#where-message")
    where.fill('{"price": ')
    expect(message).to_contain_text("Filter: not valid JSON")
    expect(where).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#results .result")).to_have_count(0)
    where.fill("[1, 2]")
    expect(message).to_have_text('Filter: must be a JSON object, for example {"category": "footwear"}.')

    bad = {"price": {"$between": [1, 2]}}
    refused = served.api("POST", "/v1/search", json={"query": "shoes", "where": bad})
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_filter"
    where.fill(json.dumps(bad))
    expect(message).to_have_text("Filter: " + refused.json()["message"])

    where.fill('{"category": "footwear"}')
    expect(message).to_have_text("")
    expect(tab.ids()).to_have_text(_ids(served.search(query="shoes", k=5, where={"category": "footwear"})))

    # Any other error the server answers is shown as its message, never a blank page.
    too_many = served.api("POST", "/v1/search", json={"query": "shoes", "k": 100_000})
    assert too_many.status_code == 422
    page.locator("#k").fill("100000")
    expect(page.locator("#error")).to_have_text(too_many.json()["message"])
    expect(page.locator("#results .result")).to_have_count(0)


def test_document_text_is_inserted_as_text(served: Server, tab: Tab) -> None:
    from playwright.sync_api import expect

    page = tab.page
    # Keyword mode shows the API's snippet (with marks); dense mode the text itself.
    page.goto(served.url + "/?q=img+src+onerror+alert&mode=keyword")
    expect(tab.ids().first).to_have_text("xss")
    hit = page.locator("#results .result[data-id='xss']")
    expect(hit.locator(".text")).to_have_text(XSS_TEXT)
    expect(hit.locator(".chip-value").first).to_have_text("<b>bold</b>")
    page.goto(served.url + "/?q=img+src+onerror+alert&k=60")
    expect(hit.locator(".text")).to_have_text(XSS_TEXT)
    hit.locator(".doc-id").click()
    expect(page.locator("#doc-text")).to_have_text(XSS_TEXT)
    expect(page.locator("#doc-metadata dd").first).to_have_text("<b>bold</b>")
    assert page.locator("img").count() == 0 and page.locator("b").count() == 0
    assert page.evaluate("document.querySelectorAll('img, b, [onerror]').length") == 0
    assert tab.console_errors == []  # and no CSP or Trusted Types violation
    # The tab fixture checks that no dialog (alert) fired.


def test_the_key_is_asked_once_and_kept_for_the_session_only(keyed: Server, tab: Tab) -> None:
    from playwright.sync_api import expect

    page = tab.page
    page.goto(keyed.url + "/?q=running+shoes")
    prompt = page.locator("#key-dialog")
    expect(prompt).to_be_visible()
    page.locator("#key-input").fill("wrong-key-0123456789abcdef")
    page.locator("#key-input").press("Enter")
    expect(page.locator("#key-message")).to_have_text("That key was refused. Try again.")
    expect(prompt).to_be_visible()
    page.locator("#key-input").fill(KEY)
    page.get_by_role("button", name="Use this key").click()
    expect(prompt).to_be_hidden()

    # Both calls the page had waiting (status and the linked search) went on with the key.
    expected = keyed.search(query="running shoes", k=5)
    expect(tab.ids()).to_have_text(_ids(expected))
    expect(page.locator("#status-body")).to_contain_text(f"{len(SAMPLE)} ({len(SAMPLE)} indexed)")
    page.locator("#q").fill("linen pants")
    expect(tab.ids()).to_have_text(_ids(keyed.search(query="linen pants", k=5)))

    # Kept in sessionStorage, never in a cookie or the address.
    assert page.evaluate("sessionStorage.getItem('retrieval.api_key')") == KEY
    assert page.evaluate("document.cookie") == "" and tab.context.cookies() == []
    api_calls = [r for r in tab.requests if "/v1/" in r.url]
    assert api_calls and all(KEY not in r.url for r in tab.requests)
    sent = [r.all_headers() for r in api_calls]
    assert {h.get("authorization") for h in sent} >= {f"Bearer {KEY}"}
    assert all("cookie" not in h for h in sent)
    assert KEY not in page.url

    # Asked once: a reload in the same tab uses the stored key; a new tab asks again.
    page.reload()
    expect(tab.ids()).to_have_text(_ids(keyed.search(query="linen pants", k=5)))
    expect(prompt).to_be_hidden()
    other = tab.context.new_page()
    other.goto(keyed.url + "/")
    expect(other.locator("#key-dialog")).to_be_visible()
    other.close()

    # A key pasted into a link is dropped from the address, and "forget" clears it.
    page.goto(keyed.url + f"/?q=shoes&key={KEY}")
    expect(tab.ids().first).to_be_visible()
    assert KEY not in page.url and "q=shoes" in page.url
    page.locator("#forget-key").click()
    assert page.evaluate("sessionStorage.length") == 0


def test_a_long_documents_hit_shows_the_passage_that_matched(served: Server, tab: Tab) -> None:
    from playwright.sync_api import expect

    garden = ("Roses need at least six hours of sun, well drained soil rich in compost, and deep watering once a "
              "week rather than a little every day. Mulch keeps the roots cool in summer. ") * 3
    ending = ("Finally, a word on the bicycle you ride to the allotment. To repair a broken chain, remove the "
              "damaged link with a chain tool, join the ends with a quick link, and oil it.")
    text = "\n\n".join([garden] * 10 + [ending])
    assert served.api("POST", "/v1/documents", json={"documents": [{"id": "garden", "text": text}]}).status_code == 200
    try:
        page = tab.page
        page.goto(served.url + "/?q=how+do+I+repair+a+broken+bicycle+chain&k=3")
        expect(tab.ids().first).to_have_text("garden")
        hit = page.locator("#results .result[data-id='garden'] .text")
        label = hit.locator(".passage-label")
        expect(label).to_have_text(re.compile(r"passage (\d+) of \1"))  # the last passage
        expect(hit).to_contain_text("chain tool")
        assert not hit.inner_text().lstrip().startswith("Roses")  # the passage, not the opening
        assert tab.console_errors == []
    finally:
        served.api("DELETE", "/v1/documents/garden")
