// The search page of `retrieve serve`: plain DOM, no framework, no build step.
//
// Everything that comes from the server (document text, ids, metadata, messages) is
// inserted as text: textContent and DOM nodes only, never an HTML string. The page's
// Content-Security-Policy requires Trusted Types, so the browser would refuse an HTML
// string anyway.
//
// Paths are relative, so the page also works behind a proxy that serves it under a prefix.
// The page state lives in the URL query (q, k, mode, where, min_score, like, doc) so a
// search can be linked; the API key never does: it stays in this tab's sessionStorage
// and goes out only as `Authorization: Bearer`.
"use strict";

(() => {
  const KEY_STORAGE = "retrieval.api_key";
  const DEBOUNCE_MS = 250;
  const PARAMS = ["q", "k", "mode", "where", "min_score", "like", "doc"];
  const DEFAULT_K = "5";
  const MODES = ["dense", "keyword", "hybrid"];

  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("search-form"), q: $("q"), k: $("k"), mode: $("mode"), minScore: $("min-score"), where: $("where"),
    whereMessage: $("where-message"), error: $("error"), summary: $("summary"), results: $("results"),
    back: $("back"), statusBody: $("status-body"), statusRefresh: $("status-refresh"), forgetKey: $("forget-key"),
    docDialog: $("doc-dialog"), docTitle: $("doc-title"), docText: $("doc-text"), docMetadata: $("doc-metadata"),
    docError: $("doc-error"), docSimilar: $("doc-similar"), docClose: $("doc-close"),
    keyDialog: $("key-dialog"), keyForm: $("key-form"), keyInput: $("key-input"), keyMessage: $("key-message"),
  };

  // -- small DOM helpers: text only ------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function show(node, text) {
    node.textContent = text || "";
    node.hidden = !text;
  }

  const display = (value) => (typeof value === "string" ? value : JSON.stringify(value));
  const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

  // -- the API key: sessionStorage only ---------------------------------------------------

  let memoryKey = null; // where sessionStorage is unavailable
  function getKey() {
    try { return window.sessionStorage.getItem(KEY_STORAGE); } catch (_e) { return memoryKey; }
  }
  function setKey(key) {
    memoryKey = key;
    try {
      if (key === null) window.sessionStorage.removeItem(KEY_STORAGE);
      else window.sessionStorage.setItem(KEY_STORAGE, key);
    } catch (_e) { /* memoryKey holds it */ }
    ui.forgetKey.hidden = key === null;
  }

  // One prompt at a time: every request that meets a 401 waits for the same answer.
  let pendingKey = null;
  function askForKey(message) {
    if (pendingKey) return pendingKey;
    pendingKey = new Promise((resolve, reject) => {
      show(ui.keyMessage, message);
      ui.keyInput.value = "";
      const done = (key) => {
        ui.keyForm.removeEventListener("submit", onSubmit);
        ui.keyDialog.removeEventListener("close", onClose);
        pendingKey = null;
        if (key) resolve(key);
        else reject(new ApiError("This server requires an API key. Search again or press Refresh to enter it."));
      };
      const onSubmit = (event) => {
        event.preventDefault();
        const key = ui.keyInput.value.trim();
        if (!key) { show(ui.keyMessage, "Enter the key."); return; }
        setKey(key);
        ui.keyInput.value = "";
        ui.keyDialog.close("ok");
        done(key);
      };
      const onClose = () => { if (ui.keyDialog.returnValue !== "ok") done(null); };
      ui.keyForm.addEventListener("submit", onSubmit);
      ui.keyDialog.addEventListener("close", onClose);
      ui.keyDialog.returnValue = "";
      ui.keyDialog.showModal();
      ui.keyInput.focus();
    });
    return pendingKey;
  }

  // -- calling the API --------------------------------------------------------------------

  class ApiError extends Error {
    constructor(message, code) { super(message); this.name = "ApiError"; this.code = code || null; }
  }

  function errorMessage(response, body) {
    if (body && typeof body.message === "string") {
      return body.request_id && response.status >= 500
        ? `${body.message} (request id ${body.request_id})` : body.message;
    }
    return `the server answered ${response.status} ${response.statusText || ""}`.trim();
  }

  async function api(path, { method = "GET", body, signal } = {}) {
    let refused = false;
    for (;;) {
      const headers = { Accept: "application/json" };
      if (body !== undefined) headers["Content-Type"] = "application/json";
      const key = getKey();
      if (key) headers.Authorization = `Bearer ${key}`;
      let response;
      try {
        response = await fetch(path, {
          method, headers, signal, credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer",
          body: body === undefined ? undefined : JSON.stringify(body),
        });
      } catch (err) {
        if (err.name === "AbortError") throw err;
        throw new ApiError(`Cannot reach the service: ${err.message}`);
      }
      if (response.status === 401) {
        if (key) { setKey(null); refused = true; }
        await askForKey(refused ? "That key was refused. Try again." : null);
        continue;
      }
      let data = null;
      try { data = await response.json(); } catch (_e) { data = null; }
      if (!response.ok) throw new ApiError(errorMessage(response, data), data && data.error);
      return data;
    }
  }

  // -- page state <-> URL -------------------------------------------------------------------

  function readState() {
    const mode = ui.mode.value;
    return {
      q: ui.q.value, k: ui.k.value.trim(), mode: MODES.includes(mode) ? mode : "dense", where: ui.where.value.trim(),
      min_score: ui.minScore.value.trim(), like: currentLike, doc: currentDoc,
    };
  }

  function writeUrl(push) {
    const state = readState();
    const params = new URLSearchParams();
    if (state.like) params.set("like", state.like);
    else if (state.q.trim()) params.set("q", state.q);
    if (state.k && state.k !== DEFAULT_K) params.set("k", state.k);
    if (state.mode !== "dense") params.set("mode", state.mode);
    if (state.where) params.set("where", state.where);
    if (state.min_score) params.set("min_score", state.min_score);
    if (state.doc) params.set("doc", state.doc);
    const query = params.toString();
    const url = window.location.pathname + (query ? `?${query}` : "");
    if (url === window.location.pathname + window.location.search) return;
    if (push) window.history.pushState(null, "", url);
    else window.history.replaceState(null, "", url);
  }

  function applyUrl() {
    const params = new URLSearchParams(window.location.search);
    ui.q.value = params.get("q") || "";
    ui.k.value = params.get("k") || DEFAULT_K;
    ui.mode.value = MODES.includes(params.get("mode")) ? params.get("mode") : "dense";
    ui.where.value = params.get("where") || "";
    ui.minScore.value = params.get("min_score") || "";
    currentLike = params.get("like") || null;
    currentDoc = params.get("doc") || null;
    // Anything else (a key someone pasted into a link, say) is dropped from the address.
    const unknown = [...params.keys()].filter((name) => !PARAMS.includes(name));
    if (unknown.length) writeUrl(false);
  }

  // -- reading the controls -----------------------------------------------------------------

  function parseFilter(text) {
    if (!text) return { where: null };
    let value;
    try {
      value = JSON.parse(text);
    } catch (err) {
      return { error: `Filter: not valid JSON (${err.message}).` };
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      return { error: 'Filter: must be a JSON object, for example {"category": "footwear"}.' };
    }
    return { where: value };
  }

  function setFilterMessage(text) {
    ui.whereMessage.textContent = text || "";
    if (text) ui.where.setAttribute("aria-invalid", "true");
    else ui.where.removeAttribute("aria-invalid");
  }

  function readNumber(input, name) {
    const text = input.value.trim();
    if (!text) return { value: null };
    const value = Number(text);
    if (!Number.isFinite(value)) return { error: `${name}: not a number.` };
    return { value };
  }

  // -- searching -------------------------------------------------------------------------------

  let currentLike = null;
  let currentDoc = null;
  let sequence = 0;
  let inflight = null;
  let debounceTimer = null;

  function clearResults() {
    ui.results.replaceChildren();
    show(ui.error, "");
    ui.summary.textContent = "";
    ui.back.hidden = true;
  }

  function scheduleSearch() {
    window.clearTimeout(debounceTimer);
    debounceTimer = window.setTimeout(() => runSearch(false), DEBOUNCE_MS);
  }

  async function runSearch(push) {
    window.clearTimeout(debounceTimer);
    const filter = parseFilter(ui.where.value.trim());
    setFilterMessage(filter.error);
    const k = readNumber(ui.k, "k");
    const minScore = readNumber(ui.minScore, "Minimum score");
    writeUrl(push);
    const query = ui.q.value.trim();
    const problem = filter.error || k.error || minScore.error;
    if (problem || (!query && !currentLike)) {
      if (inflight) inflight.abort();
      sequence += 1;
      clearResults();
      if (k.error || minScore.error) show(ui.error, k.error || minScore.error);
      return;
    }
    if (inflight) inflight.abort();
    const controller = new AbortController();
    inflight = controller;
    const mine = ++sequence;
    ui.results.setAttribute("aria-busy", "true");
    try {
      let data;
      let heading;
      if (currentLike) {
        const params = new URLSearchParams();
        if (k.value !== null) params.set("k", String(k.value));
        if (minScore.value !== null) params.set("min_score", String(minScore.value));
        if (filter.where) params.set("where", JSON.stringify(filter.where));
        const path = `v1/documents/${encodeURIComponent(currentLike)}/similar?${params}`;
        data = await api(path, { signal: controller.signal });
        heading = `like ${currentLike}`;
      } else {
        const body = { query, mode: ui.mode.value };
        if (k.value !== null) body.k = k.value;
        if (minScore.value !== null) body.min_score = minScore.value;
        if (filter.where) body.where = filter.where;
        data = await api("v1/search", { method: "POST", body, signal: controller.signal });
      }
      if (mine !== sequence) return;
      renderResults(data, heading);
    } catch (err) {
      if (err.name === "AbortError" || mine !== sequence) return;
      ui.results.replaceChildren();
      ui.summary.textContent = "";
      if (err.code === "invalid_filter") setFilterMessage(`Filter: ${err.message}`);
      else show(ui.error, err.message);
    } finally {
      if (mine === sequence) {
        ui.results.removeAttribute("aria-busy");
        inflight = null;
      }
    }
  }

  function scoreBar(score, top, mode) {
    // A cosine is its own scale; BM25 and fused scores only mean something relative to the best.
    let fraction = mode === "dense" ? score : (top > 0 ? score / top : 0);
    fraction = Math.max(0, Math.min(1, fraction));
    return el("meter", { class: "score-bar", min: "0", max: "1", value: fraction.toFixed(4),
                         "aria-label": `score ${score.toFixed(4)}` });
  }

  function highlighted(text, highlights) {
    // The API gives [start, end) offsets of the matched terms in the snippet.
    const node = el("p", { class: "text" });
    let at = 0;
    const spans = (highlights || []).filter((h) => Array.isArray(h) && h.length === 2).sort((a, b) => a[0] - b[0]);
    for (const [start, end] of spans) {
      if (start < at || end <= start) continue;
      node.append(document.createTextNode(text.slice(at, start)), el("mark", { text: text.slice(start, end) }));
      at = end;
    }
    node.append(document.createTextNode(text.slice(at)));
    return node;
  }

  function chips(metadata) {
    const entries = Object.entries(metadata || {});
    if (!entries.length) return null;
    const list = el("ul", { class: "chips", "aria-label": "Metadata" });
    for (const [name, value] of entries) {
      list.append(el("li", { class: "chip" }, el("span", { class: "chip-key", text: name }),
                     el("span", { class: "chip-value", text: display(value) })));
    }
    return list;
  }

  function renderResults(data, heading) {
    const results = data.results || [];
    show(ui.error, "");
    const took = typeof data.took_ms === "number" ? ` in ${data.took_ms.toFixed(1)} ms` : "";
    ui.summary.textContent = `${plural(results.length, "result", "results")}${heading ? " " + heading : ""}${took}`;
    ui.back.hidden = !currentLike;
    const top = results.length ? Math.max(...results.map((r) => r.score)) : 0;
    const items = results.map((hit, i) => {
      const mode = hit.mode || "dense";
      const ranks = mode === "hybrid"
        ? el("span", { class: "ranks", text: `dense #${hit.dense_rank ?? "–"} · keyword #${hit.keyword_rank ?? "–"}` })
        : null;
      const item = el("li", { class: "result", tabindex: "-1", "data-id": hit.id },
        el("div", { class: "result-head" },
          el("span", { class: "rank", text: `${i + 1}.` }),
          scoreBar(hit.score, top, mode),
          el("span", { class: "score", text: hit.score.toFixed(4) }),
          el("button", { type: "button", class: "doc-id link", "aria-label": `Open document ${hit.id}`, text: hit.id }),
          ranks,
          el("button", { type: "button", class: "similar small", "aria-label": `More like ${hit.id}`,
                         text: "More like this" })),
        hit.snippet ? highlighted(hit.snippet, hit.highlights) : hitText(hit),
        chips(hit.metadata));
      item.querySelector(".doc-id").addEventListener("click", () => openDocument(hit.id, true));
      item.querySelector(".similar").addEventListener("click", () => moreLikeThis(hit.id));
      return item;
    });
    ui.results.replaceChildren(...items);
  }

  // A long document's hit shows the passage that scored (labelled), not its opening.
  function hitText(hit) {
    const p = hit.passage;
    if (!p) return el("p", { class: "text", text: hit.text });
    return el("p", { class: "text passage" },
      el("mark", { class: "passage-label", text: `passage ${p.ordinal + 1} of ${p.of}` }), " ", p.text);
  }

  function moreLikeThis(id) {
    currentLike = id;
    if (ui.docDialog.open) closeDocument(false);
    currentDoc = null;
    runSearch(true);
  }

  function backToSearch() {
    currentLike = null;
    runSearch(true);
    ui.q.focus();
  }

  // -- the document view -------------------------------------------------------------------------

  async function openDocument(id, push) {
    currentDoc = id;
    if (push) writeUrl(true);
    ui.docTitle.textContent = id;
    ui.docText.textContent = "Loading…";
    ui.docMetadata.replaceChildren();
    show(ui.docError, "");
    if (!ui.docDialog.open) ui.docDialog.showModal();
    try {
      const doc = await api(`v1/documents/${encodeURIComponent(id)}`);
      if (currentDoc !== id) return;
      ui.docText.textContent = doc.text;
      const rows = Object.entries(doc.metadata || {}).flatMap(([name, value]) =>
        [el("dt", { text: name }), el("dd", { text: display(value) })]);
      ui.docMetadata.replaceChildren(...(rows.length ? rows : [el("dd", { class: "muted", text: "none" })]));
    } catch (err) {
      if (currentDoc !== id) return;
      ui.docText.textContent = "";
      show(ui.docError, err.message);
    }
  }

  function closeDocument(updateUrl) {
    currentDoc = null;
    if (ui.docDialog.open) ui.docDialog.close();
    if (updateUrl) writeUrl(true);
  }

  // -- the status panel --------------------------------------------------------------------------

  function fact(term, value) {
    return [el("dt", { text: term }), el("dd", { text: value })];
  }

  function renderStatus(st) {
    const sync = (st.server && st.server.sync) || {};
    const worker = sync.running ? (sync.standing_by ? "standing by (another worker syncs)" : "running") : "not running";
    const encoder = `${st.model}${st.language_model === false ? " (test encoder, not a language model)" : ""}, `
      + `${st.backend} ${st.precision}`;
    const facts = el("dl", { class: "facts" },
      ...fact("Documents", `${st.documents} (${st.indexed} indexed)`),
      ...fact("Pending changes", `${st.pending_changes}, lag ${Number(st.lag_seconds).toFixed(1)} s`),
      ...fact("Encoder", encoder),
      ...fact("Index", `${st.index_version || "none"}, type ${st.index_type}`),
      ...fact("Worker", worker + (sync.last_error ? `; last error: ${sync.last_error}` : "")));
    const parts = [facts];
    if (st.model_matches_index === false) {
      parts.push(el("p", { class: "error", text: "The index was built with another model: run retrieve reindex." }));
    }
    const segments = st.segments || [];
    const table = el("table", { class: "segments" },
      el("caption", { text: plural(segments.length, "index segment", "index segments") }),
      el("thead", {}, el("tr", {}, ...["Segment", "Type", "Docs", "Recall"].map((h) => el("th", { scope: "col", text: h })))));
    const body = el("tbody");
    for (const s of segments) {
      const recall = s.recall === null || s.recall === undefined ? (s.type === "flat" ? "exact" : "–") : Number(s.recall).toFixed(3);
      body.append(el("tr", {}, el("td", { class: "mono", text: s.name }), el("td", { text: s.type }),
                      el("td", { text: String(s.documents) }), el("td", { text: recall })));
    }
    table.append(body);
    parts.push(table);
    ui.statusBody.replaceChildren(...parts);
  }

  async function loadStatus() {
    try {
      renderStatus(await api("v1/status"));
    } catch (err) {
      ui.statusBody.replaceChildren(el("p", { class: "error", text: err.message }));
    }
  }

  // -- keyboard ------------------------------------------------------------------------------------

  function resultItems() { return [...ui.results.querySelectorAll(".result")]; }

  function moveFocus(step) {
    const items = resultItems();
    if (!items.length) return;
    const at = items.indexOf(document.activeElement.closest(".result"));
    if (at === -1) { if (step > 0) items[0].focus(); return; }
    const next = at + step;
    if (next < 0) ui.q.focus();
    else items[Math.min(next, items.length - 1)].focus();
  }

  function clearAll() {
    ui.q.value = "";
    currentLike = null;
    runSearch(false);
    ui.q.focus();
  }

  // -- wiring ----------------------------------------------------------------------------------------

  ui.form.addEventListener("submit", (event) => { event.preventDefault(); runSearch(true); });
  ui.q.addEventListener("input", () => { currentLike = null; scheduleSearch(); });
  ui.where.addEventListener("input", scheduleSearch);
  ui.k.addEventListener("input", scheduleSearch);
  ui.minScore.addEventListener("input", scheduleSearch);
  ui.mode.addEventListener("change", () => runSearch(false));
  ui.back.addEventListener("click", backToSearch);
  ui.statusRefresh.addEventListener("click", loadStatus);
  ui.forgetKey.addEventListener("click", () => { setKey(null); ui.statusBody.replaceChildren(); });
  ui.docClose.addEventListener("click", () => closeDocument(true));
  ui.docDialog.addEventListener("close", () => { if (currentDoc !== null) closeDocument(true); });
  ui.docSimilar.addEventListener("click", () => { if (currentDoc) moreLikeThis(currentDoc); });

  document.addEventListener("keydown", (event) => {
    if (ui.docDialog.open || ui.keyDialog.open) return; // Escape closes a dialog natively
    const inResults = document.activeElement && document.activeElement.closest(".result");
    if (event.key === "Escape") {
      event.preventDefault();
      clearAll();
    } else if (event.key === "ArrowDown" && (inResults || document.activeElement === ui.q)) {
      event.preventDefault();
      moveFocus(1);
    } else if (event.key === "ArrowUp" && inResults) {
      event.preventDefault();
      moveFocus(-1);
    } else if (event.key === "Enter" && inResults && document.activeElement.classList.contains("result")) {
      event.preventDefault();
      openDocument(document.activeElement.dataset.id, true);
    }
  });

  window.addEventListener("popstate", () => {
    applyUrl();
    if (currentDoc) openDocument(currentDoc, false);
    else if (ui.docDialog.open) { ui.docDialog.close(); }
    runSearch(false);
  });

  ui.forgetKey.hidden = getKey() === null;
  applyUrl();
  loadStatus().then(() => {
    if (currentDoc) openDocument(currentDoc, false);
  });
  if (ui.q.value.trim() || currentLike) runSearch(false);
})();
