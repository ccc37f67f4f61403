// factory browse: the page over a dataset or view. Live: every page of rows, count, histogram, map point and
// sample comes from the local server. Static (factory preview --html): the same page over the rows embedded in it.
// Text from the dataset only ever reaches the page as textContent or attribute values; never as HTML.
"use strict";
(function () {
  const cfg = JSON.parse(document.getElementById("config").textContent);
  const live = cfg.mode === "live";
  const meta = cfg.meta;
  const cols = meta.columns;
  const BOOKKEEPING = ["row", "shard", "tar_offset", "tar_size"];
  const state = { where: "", show: "accepted", sort: "row", desc: false, offset: 0, limit: 48, zoom: 132,
                  overlay: "mask", colour: "fg_ratio" in cols ? "fg_ratio" : "row", key: null, seq: 0,
                  page: null, marked: new Map(), hover: null, tool: "box", opacity: 0.6, method: "pca" };
  const fmtInt = new Intl.NumberFormat("en-US");
  const SHOWS = ["accepted", "rejected", "all"];
  const LIMITS = [24, 48, 96, 192];

  function el(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k === "testid") e.dataset.testid = v;
      else if (k === "style") Object.assign(e.style, v);  // CSSOM: the content policy allows no style attribute
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of kids) if (c !== null && c !== undefined && c !== false) e.append(c);
    return e;
  }
  function svg(tag, attrs, ...kids) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    for (const c of kids) e.append(c);
    return e;
  }
  function num(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number" && !Number.isInteger(v)) return v.toFixed(Math.abs(v) >= 100 ? 1 : 3);
    if (typeof v === "number") return fmtInt.format(v);
    return String(v);
  }
  function q(params) { return new URLSearchParams(params).toString(); }
  async function api(path, params) {
    const r = await fetch(path + "?" + q(params), { headers: { "Accept": "application/json" } });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  }
  async function post(path, obj) {
    const r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json",
      "X-Factory-Token": cfg.token }, body: JSON.stringify(obj) });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  }
  function bytesOf(b64) {
    const s = atob(b64), out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out.buffer;
  }
  function tileSrc(key, overlay) {
    if (!live) return (cfg.tiles[key] || {})[overlay] || cfg.tiles[key].none;
    return "/api/tile?" + q({ key: key, overlay: overlay });
  }
  function pictureSrc(key, which) {
    if (!live) return (cfg.pictures[key] || {})[which];
    return "/api/picture?" + q({ key: key, which: which });
  }
  function verdictText(r) {
    if (r.accepted) return "accepted";
    const by = r.rejected_by_view.map((n) => "view " + n).concat(r.rejected_by);
    return "rejected by " + (by.length ? by.join(", ") : "view");
  }
  function verdictShort(r) {  // a tile's badge: the filters' names only (the full text is its title)
    return r.accepted ? "accepted" : "✗ " + r.rejected_by_view.concat(r.rejected_by).join(", ");
  }

  // ------------------------------------------------------------------ the page's parts
  const whereInput = el("input", { id: "where", type: "text", spellcheck: "false", autocomplete: "off",
    testid: "where", placeholder: "fg_ratio < 0.5 and n_components <= 2   (#tag, #view, #selection)",
    "aria-label": "filter (factory filter --where)" });
  const whereError = el("div", { id: "where-error", class: "error", role: "alert" });
  const counts = el("div", { id: "counts", class: "counts", testid: "counts" });
  const show = el("select", { id: "show", "aria-label": "show" },
    el("option", { value: "accepted", text: "accepted" }), el("option", { value: "rejected", text: "rejected" }),
    el("option", { value: "all", text: "all candidates" }));
  const sort = el("select", { id: "sort", "aria-label": "sort by" },
    ...Object.keys(cols).map((c) => el("option", { value: c, text: c })));
  const order = el("button", { id: "order", type: "button", title: "ascending / descending", text: "↑ asc" });
  const overlayBox = el("div", { class: "seg", role: "group", "aria-label": "mask overlay" });
  const overlays = ["none", "mask"].concat(meta.relabelled ? ["teacher"] : []);
  for (const o of overlays) {
    overlayBox.append(el("button", { type: "button", id: "overlay-" + o, "data-overlay": o, text: o,
      onclick: () => { state.overlay = o; renderOverlayButtons(); refreshTiles(); saveHash(); } }));
  }
  const limitSel = el("select", { id: "limit", testid: "page-size", "aria-label": "samples per page" },
    ...LIMITS.map((n) => el("option", { value: n, text: n + " / page" })));
  const zoom = el("input", { id: "zoom", testid: "zoom", type: "range", min: 72, max: 320, step: 4,
    "aria-label": "tile size" });
  const prev = el("button", { id: "prev", testid: "page-prev", type: "button", text: "‹ prev" });
  const next = el("button", { id: "next", testid: "page-next", type: "button", text: "next ›" });
  const range = el("span", { id: "range", class: "range" });
  const viewName = el("input", { id: "view-name", type: "text", spellcheck: "false", placeholder: "view name",
    "aria-label": "view name", testid: "view-name" });
  const save = el("button", { id: "save", testid: "save", type: "button", class: "primary", text: "Save view" });
  const saveStatus = el("div", { id: "save-status", class: "status", role: "status" });
  const grid = el("div", { id: "grid", class: "grid", testid: "grid" });
  const histBox = el("div", { id: "hist", class: "hist" });
  const checkBox = el("div", { id: "checks", class: "checks" });
  const detail = el("section", { id: "detail", class: "detail", testid: "detail", hidden: true });
  // the latent map
  const mapCanvas = el("canvas", { id: "map", testid: "map", width: 356, height: 356,
    "aria-label": "latent map: drag to select" });
  const mapColour = el("select", { id: "map-colour", testid: "map-colour", "aria-label": "colour the map by" },
    ...Object.entries(cols).filter(([c]) => c !== "key").map(([c]) => el("option", { value: c, text: c })));
  const mapMethod = el("select", { id: "map-method", testid: "map-method", "aria-label": "projection" },
    ...(meta.map_methods || ["pca"]).map((m) => el("option", { value: m, text: m.toUpperCase() })));
  const toolBox = el("div", { class: "seg", role: "group", "aria-label": "selection tool" },
    el("button", { type: "button", testid: "box", "data-tool": "box", text: "box" }),
    el("button", { type: "button", testid: "lasso", "data-tool": "lasso", text: "lasso" }));
  const mapStatus = el("div", { id: "map-status", class: "hint", testid: "map-status" });
  // tags and views
  const tagName = el("input", { id: "tag-name", testid: "tag", type: "text", spellcheck: "false",
    placeholder: "tag, e.g. bad", "aria-label": "tag name" });
  const tagButton = el("button", { id: "tag-apply", testid: "tag-apply", type: "button", text: "Tag" });
  const untagButton = el("button", { id: "untag", testid: "untag", type: "button", text: "Untag" });
  const tagStatus = el("div", { id: "tag-status", class: "status", role: "status" });
  const tagList = el("ul", { id: "tags", class: "named", testid: "tags" });
  const viewList = el("ul", { id: "views", class: "named", testid: "views" });
  const cmpA = el("select", { id: "compare-a", testid: "compare-a", "aria-label": "first view" });
  const cmpB = el("select", { id: "compare-b", testid: "compare-b", "aria-label": "second view" });
  const cmpOut = el("div", { id: "compare", class: "compare", testid: "compare" });

  function header() {
    const ident = meta.kind === "view"
      ? [el("span", { class: "label", text: "view" }), el("code", { text: meta.view_id }),
         el("span", { class: "label", text: "of" }), el("code", { text: meta.dataset_id })]
      : [el("span", { class: "label", text: "dataset" }), el("code", { text: meta.dataset_id })];
    return el("header", { class: "top" },
      el("div", { class: "brand", text: live ? "factory browse" : "factory preview" }),
      el("div", { class: "ident" }, ...ident, el("span", { class: "url", text: meta.url })),
      el("div", { class: "size", text: fmtInt.format(meta.samples) + " samples · " + fmtInt.format(meta.shards) +
        " shards" + (meta.resolution ? " · " + meta.resolution + " px" : "") }));
  }

  function panel(title, ...kids) { return el("section", { class: "panel" }, el("h2", {}, ...[].concat(title)), ...kids); }

  function layout() {
    const filterBar = live
      ? el("form", { class: "filter", onsubmit: (e) => { e.preventDefault(); apply(); } },
          el("label", { for: "where", text: "where" }), whereInput,
          el("button", { type: "submit", id: "apply", class: "primary", text: "Filter" }))
      : el("p", { class: "hint", text: "A preview of " + cfg.rows.length + " samples. Filter, sort and page " +
          "through all of them with: factory browse " + meta.url });
    const controls = el("div", { class: "controls" },
      live ? el("label", {}, "show ", show) : null,
      el("label", {}, "sort ", sort), order,
      el("span", { class: "label", text: "overlay" }), overlayBox,
      live ? limitSel : null, el("label", {}, "zoom ", zoom),
      live ? el("span", { class: "pager" }, prev, range, next) : range,
      live ? el("span", { class: "save" }, viewName, save) : null);
    const side = [];
    if (live) {
      side.push(panel(["Latent map ", (meta.map_methods || []).length > 1 ? mapMethod : null, mapColour], mapCanvas,
        el("div", { class: "maptools" }, toolBox, mapStatus)));
      side.push(panel("Tags", el("div", { class: "tagbar" }, tagName, tagButton, untagButton), tagStatus,
        el("p", { class: "hint", text: "Shift-click tiles to mark them; t tags the marked, hovered or open " +
          "sample(s), u untags. #name filters by a tag or view." }), tagList));
      side.push(panel("Views", viewList, el("div", { class: "cmpbar" }, cmpA, cmpB,
        el("button", { type: "button", id: "compare-go", testid: "compare-go", text: "Compare", onclick: compare })),
        cmpOut));
    }
    side.push(panel("Columns", checkBox, histBox, el("div", { class: "legend" }, el("span", { class: "sw acc" }),
      "accepted ", el("span", { class: "sw rej" }), "rejected", live ? " · drag a histogram to filter" : "")));
    document.body.append(header(),
      el("section", { class: "bar" }, filterBar, whereError, counts, controls, saveStatus),
      el("main", { class: "body" }, el("div", { class: "left" }, detail, grid), el("aside", { class: "side" }, ...side)));
    renderOverlayButtons();
  }

  function renderOverlayButtons() {
    for (const b of overlayBox.querySelectorAll("button")) b.classList.toggle("on", b.dataset.overlay === state.overlay);
    for (const b of toolBox.querySelectorAll("button")) b.classList.toggle("on", b.dataset.tool === state.tool);
  }

  // ------------------------------------------------------------------ grid
  function tile(r) {
    const extra = state.sort !== "row" && state.sort !== "fg_ratio" && state.sort !== "n_components"
      ? " · " + state.sort + " " + num(r[state.sort]) : "";
    const img = el("img", { src: tileSrc(r.key, state.overlay), alt: "sample " + r.key, loading: "lazy",
      "data-key": r.key });
    const fig = el("figure", { class: "tile " + (r.accepted ? "acc" : "rej"), tabindex: "0", "data-key": r.key,
      "data-row": r.row, testid: "tile",
      onclick: (e) => { if (e.shiftKey && live) toggleMark(r, fig); else showSample(r.key); },
      onmouseenter: () => { state.hover = r; }, onmouseleave: () => { if (state.hover === r) state.hover = null; },
      onkeydown: (e) => { if (e.key === "Enter") showSample(r.key); } },
      img,
      el("figcaption", {},
        el("div", { class: "key", text: r.key }),
        el("div", { class: "stats", text: "fg " + num(r.fg_ratio) + " · comp " + num(r.n_components) + extra }),
        el("div", { class: "badge " + (r.accepted ? "ok" : "no"), text: verdictShort(r), title: verdictText(r) })));
    if (r.key === state.key) fig.classList.add("sel");
    if (state.marked.has(r.key)) fig.classList.add("marked");
    return fig;
  }

  function toggleMark(r, fig) {
    if (state.marked.has(r.key)) state.marked.delete(r.key); else state.marked.set(r.key, r.row);
    fig.classList.toggle("marked", state.marked.has(r.key));
    tagStatus.className = "status";
    tagStatus.textContent = state.marked.size ? state.marked.size + " marked" : "";
  }

  function renderRows(page) {
    state.page = page;
    grid.replaceChildren(...page.rows.map(tile));
    if (!page.rows.length) grid.append(el("p", { class: "hint", text: "No rows to show." }));
    const a = page.total ? page.offset + 1 : 0;
    range.textContent = fmtInt.format(a) + "–" + fmtInt.format(page.offset + page.rows.length) + " of " +
      fmtInt.format(page.total);
    prev.disabled = page.offset <= 0;
    next.disabled = page.offset + page.rows.length >= page.total;
  }

  function refreshTiles() {
    for (const img of grid.querySelectorAll("img[data-key]")) img.src = tileSrc(img.dataset.key, state.overlay);
    if (state.key) showSample(state.key);
  }

  function localPage() {
    const rows = cfg.rows.slice();
    const s = state.sort;
    rows.sort((x, y) => {
      const a = x[s], b = y[s];
      const c = a === b ? 0 : a === null ? 1 : b === null ? -1 : a < b ? -1 : 1;
      return (state.desc && a !== null && b !== null ? -c : c) || x.row - y.row;
    });
    return { rows: rows, total: rows.length, offset: 0 };
  }

  async function load() {
    const seq = ++state.seq;
    if (!live) { renderRows(localPage()); loadHists(); return; }
    document.body.classList.add("busy");
    saveHash();
    try {
      const page = await api("/api/rows", { where: state.where, show: state.show, sort: state.sort,
        order: state.desc ? "desc" : "asc", offset: state.offset, limit: state.limit });
      if (seq !== state.seq) return;
      whereError.textContent = "";
      whereInput.classList.remove("bad");
      counts.textContent = page.counts.line;
      renderRows(page);
    } catch (e) {
      if (seq !== state.seq) return;
      whereError.textContent = e.message;
      whereInput.classList.add("bad");
    } finally {
      if (seq === state.seq) document.body.classList.remove("busy");
    }
    loadHists();
    loadColours();
  }

  function saveHash() {
    if (!live) return;
    const h = { where: state.where, show: state.show, sort: state.sort, order: state.desc ? "desc" : "asc",
      offset: state.offset, overlay: state.overlay, limit: state.limit, zoom: state.zoom, colour: state.colour };
    if (state.key) h.key = state.key;
    history.replaceState(null, "", "#" + q(h));
  }

  function apply() {
    clearTimeout(typing);
    if (whereInput.value.trim() === state.where) return;
    state.where = whereInput.value.trim();
    state.offset = 0;
    load();
  }
  function setWhere(w) { whereInput.value = w; apply(); }

  // ------------------------------------------------------------------ histograms and checkboxes
  const histCols = Object.entries(cols).filter(([c, k]) => k === "number" && !BOOKKEEPING.includes(c)).map(([c]) => c);
  const checkCols = Object.entries(cols).filter(([c, k]) => k === "bool" || (k === "string" && c !== "key")).map(([c]) => c);
  const clauses = {};  // column -> the clause a brush or checkbox put into the filter box
  const brushed = {};  // column -> the bins brushed

  function setClause(col, clause) {
    let w = whereInput.value.trim();
    const old = clauses[col];
    if (old) {
      for (const s of [" and " + old, old + " and ", old]) { if (w.includes(s)) { w = w.replace(s, ""); break; } }
    }
    if (clause) w = w ? w + " and " + clause : clause;
    if (clause) clauses[col] = clause; else delete clauses[col];
    setWhere(w.trim());
  }
  function lit(v) { return String(Number(Number(v).toPrecision(5))); }

  async function loadHists() {
    const where = state.where;
    const all = histCols.concat(live ? checkCols : checkCols.filter((c) => cols[c] === "bool"));
    const got = await Promise.all(all.map(async (c) => {
      try { return live ? await api("/api/hist", { column: c, where: where }) : cfg.hists[c]; }
      catch (e) { return { column: c, error: e.message }; }
    }));
    if (where !== state.where) return;
    const hists = [], checks = [];
    for (const h of got) {
      if (!h) continue;
      if (h.error) hists.push(el("p", { class: "error", text: h.column + ": " + h.error }));
      else if (h.kind === "number") hists.push(drawHist(h));
      else checks.push(drawChecks(h));
    }
    histBox.replaceChildren(...hists);
    checkBox.replaceChildren(...checks);
  }

  function drawChecks(h) {
    const chosen = (clauses[h.column] || "");
    const box = el("div", { class: "check", testid: "check-" + h.column }, el("div", { class: "cname", text: h.column }));
    h.labels.forEach((label, i) => {
      const value = h.kind === "bool" ? label : JSON.stringify(label);
      const on = chosen && (h.kind === "bool" ? chosen === "(" + h.column + " == " + value + ")"
        : chosen.includes(value));
      const input = el("input", { type: "checkbox", value: label, checked: on || null, disabled: !live || null,
        testid: "check-" + h.column + "-" + label });
      input.addEventListener("change", () => {
        const picked = [...box.querySelectorAll("input:checked")].map((x) => x.value);
        if (!picked.length || picked.length === h.labels.length) setClause(h.column, null);
        else if (h.kind === "bool") setClause(h.column, "(" + h.column + " == " + picked[0] + ")");
        else setClause(h.column, "(" + h.column + " in (" + picked.map((p) => JSON.stringify(p)).join(", ") + "))");
      });
      box.append(el("label", {}, input, " " + label + " ",
        el("span", { class: "n", text: fmtInt.format(h.accepted[i]) + " / " + fmtInt.format(h.accepted[i] + h.rejected[i]) })));
    });
    return box;
  }

  function drawHist(h) {
    const W = 340, H = 64, pad = 6, top = 14;
    const n = h.accepted.length;
    const tot = h.accepted.map((a, i) => a + h.rejected[i]);
    const most = Math.max(1, ...tot);
    const bw = (W - 2 * pad) / n;
    const g = svg("svg", { viewBox: "0 0 " + W + " " + (H + 16), width: "100%", role: "img",
      "aria-label": "histogram of " + h.column });
    const t = (x, y, s, anchor) => { const e = svg("text", { x: x, y: y, "text-anchor": anchor }); e.textContent = s; return e; };
    g.append(t(pad, 10, h.column, "start"), t(W - pad, 10, "max " + fmtInt.format(most), "end"));
    g.append(svg("line", { x1: pad, y1: H, x2: W - pad, y2: H, class: "axis" }));
    for (let i = 0; i < n; i++) {  // bars fill the band below the labels: the top label never meets a bar
      const ha = (h.accepted[i] / most) * (H - top - 2), hr = (h.rejected[i] / most) * (H - top - 2);
      const x = pad + i * bw + 0.25, w = Math.max(1, bw - 0.5);
      const label = num(h.edges[i]) + " – " + num(h.edges[i + 1]);
      const tip = svg("title");
      tip.textContent = h.column + " " + label + ": " + fmtInt.format(h.accepted[i]) + " accepted, " +
        fmtInt.format(h.rejected[i]) + " rejected";
      g.append(svg("g", {}, tip, svg("rect", { x: x, y: H - ha, width: w, height: ha, class: "acc" }),
        svg("rect", { x: x, y: H - ha - hr, width: w, height: hr, class: "rej" })));
    }
    g.append(t(pad, H + 13, num(h.integer ? h.edges[0] + 0.5 : h.edges[0]), "start"));
    g.append(t(W - pad, H + 13, num(h.integer ? h.edges[n] - 0.5 : h.edges[n]), "end"));
    const brush = svg("rect", { class: "brush", x: 0, y: top, width: 0, height: H - top });
    g.append(brush);
    const kept = brushed[h.column];  // the range brushed before, while its clause is still in the filter
    if (kept && clauses[h.column] && state.where.includes(clauses[h.column]) && kept[1] < n) {
      brush.setAttribute("x", pad + kept[0] * bw);
      brush.setAttribute("width", (kept[1] - kept[0] + 1) * bw);
    }
    const box = el("div", { class: "h1", testid: "hist-" + h.column, "data-column": h.column }, g);
    if (!live) return box;
    const bin = (e) => {
      const r = g.getBoundingClientRect();
      const x = (e.clientX - r.left) * (W / r.width);
      return Math.min(n - 1, Math.max(0, Math.floor((x - pad) / bw)));
    };
    let start = null;
    g.addEventListener("mousedown", (e) => { e.preventDefault(); start = bin(e); paint(start, start); });
    g.addEventListener("mousemove", (e) => { if (start !== null) paint(start, bin(e)); });
    function paint(a, b) {
      const lo = Math.min(a, b), hi = Math.max(a, b);
      brush.setAttribute("x", pad + lo * bw);
      brush.setAttribute("width", (hi - lo + 1) * bw);
    }
    window.addEventListener("mouseup", (e) => {
      if (start === null) return;
      const a = Math.min(start, bin(e)), b = Math.max(start, bin(e));
      start = null;
      const c = h.column;
      brushed[c] = [a, b];
      let clause;
      if (h.integer) {
        const lo = h.edges[a] + 0.5, hi = h.edges[b + 1] - 0.5;
        clause = lo === hi ? "(" + c + " == " + lo + ")" : "(" + c + " >= " + lo + " and " + c + " <= " + hi + ")";
      } else {
        clause = "(" + c + " >= " + lit(h.edges[a]) + " and " + c + (b === n - 1 ? " <= " : " < ") +
          lit(h.edges[b + 1]) + ")";
      }
      setClause(c, clause);
    });
    return box;
  }

  // ------------------------------------------------------------------ the latent map
  const map = { rows: null, x: null, y: null, px: null, py: null, colour: null, accepted: null, selected: null,
                base: null, path: null };
  const ctx = mapCanvas.getContext("2d");
  const MW = mapCanvas.width, MH = mapCanvas.height, MP = 8;
  const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const CATS = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
    [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]];
  function ramp(t) {
    t = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
    const i = Math.min(STOPS.length - 2, Math.floor(t)), f = t - i, a = STOPS[i], b = STOPS[i + 1];
    return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
  }

  async function loadMap() {
    const t0 = performance.now();
    mapStatus.textContent = "projecting latents…";
    try {
      const m = await api("/api/map", { method: state.method });
      map.rows = new Int32Array(bytesOf(m.rows));
      map.x = new Float32Array(bytesOf(m.x));
      map.y = new Float32Array(bytesOf(m.y));
      let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
      for (let i = 0; i < map.x.length; i++) {
        x0 = Math.min(x0, map.x[i]); x1 = Math.max(x1, map.x[i]); y0 = Math.min(y0, map.y[i]); y1 = Math.max(y1, map.y[i]);
      }
      const sx = (MW - 2 * MP) / Math.max(1e-12, x1 - x0), sy = (MH - 2 * MP) / Math.max(1e-12, y1 - y0);
      map.px = new Uint16Array(map.x.length);
      map.py = new Uint16Array(map.x.length);
      for (let i = 0; i < map.x.length; i++) {
        map.px[i] = Math.round(MP + (map.x[i] - x0) * sx);
        map.py[i] = Math.round(MH - MP - (map.y[i] - y0) * sy);
      }
      map.selected = new Uint8Array(map.x.length);
      map.info = fmtInt.format(m.points) + (m.points < m.total ? " of " + fmtInt.format(m.total) : "") +
        " samples, " + m.method.toUpperCase();
      await loadColours();
      mapCanvas.dataset.ms = String(Math.round(performance.now() - t0));
      mapCanvas.dataset.points = String(m.points);
    } catch (e) {
      mapStatus.textContent = e.message;
    }
  }

  async function loadColours() {
    if (!live || !map.rows) return;
    const where = state.where, colour = state.colour;
    let c;
    try { c = await api("/api/mapcolour", { column: colour, where: where, method: state.method }); }
    catch (e) { return; }
    if (where !== state.where || colour !== state.colour) return;
    map.colour = c;
    map.values = new Float32Array(bytesOf(c.values));
    map.accepted = new Uint8Array(bytesOf(c.accepted));
    drawMap();
  }

  function drawMap() {
    const img = ctx.createImageData(MW, MH), d = img.data;
    d.fill(255);
    const n = map.px.length, c = map.colour, r0 = n < 5000 ? 3 : n < 20000 ? 2 : 1;
    const put = (i, rgb, r) => {
      const x = map.px[i] - (r >> 1), y = map.py[i] - (r >> 1);
      for (let dy = 0; dy < r; dy++) for (let dx = 0; dx < r; dx++) {
        if (x + dx < 0 || x + dx >= MW || y + dy < 0 || y + dy >= MH) continue;
        const o = ((y + dy) * MW + x + dx) * 4;
        d[o] = rgb[0]; d[o + 1] = rgb[1]; d[o + 2] = rgb[2];
      }
    };
    const acc = (i) => (map.accepted[i >> 3] >> (i & 7)) & 1;
    const grey = [208, 213, 221];
    const span = c.max > c.min ? c.max - c.min : 1;
    const colourOf = (i) => {
      const v = map.values[i];
      return Number.isNaN(v) ? [120, 120, 120] : c.kind === "category" ? CATS[v % CATS.length] : ramp((v - c.min) / span);
    };
    for (let i = 0; i < n; i++) if (!acc(i)) put(i, grey, r0);
    let nsel = 0;
    for (let i = 0; i < n; i++) if (acc(i) && !map.selected[i]) put(i, colourOf(i), r0);
    for (let i = 0; i < n; i++) if (map.selected[i]) { put(i, [30, 30, 30], r0 + 2); put(i, colourOf(i), r0); nsel++; }
    map.base = img;
    ctx.putImageData(img, 0, 0);
    if (nsel && map.lastPath) { map.path = map.lastPath; strokePath(false); map.path = null; }
    mapCanvas.dataset.selected = String(nsel);
    mapStatus.textContent = map.info + " · colour " + c.column + (c.kind === "category" ? "" :
      " " + num(c.min) + " → " + num(c.max)) + (nsel ? " · " + fmtInt.format(nsel) + " selected" : "");
  }

  function canvasXY(e) {
    const r = mapCanvas.getBoundingClientRect();
    return [(e.clientX - r.left) * (MW / r.width), (e.clientY - r.top) * (MH / r.height)];
  }
  function strokePath(restore) {
    if (restore !== false) ctx.putImageData(map.base, 0, 0);
    const p = map.path;
    if (!p || p.length < 1) return;
    ctx.strokeStyle = "#2f6fde"; ctx.lineWidth = 1.5; ctx.fillStyle = "rgba(47,111,222,.08)";
    ctx.beginPath();
    if (state.tool === "box") {
      const [a, b] = [p[0], p[p.length - 1]];
      ctx.rect(Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]));
    } else {
      ctx.moveTo(p[0][0], p[0][1]);
      for (const [x, y] of p) ctx.lineTo(x, y);
      ctx.closePath();
    }
    ctx.fill(); ctx.stroke();
  }
  function inside(poly, x, y) {  // even-odd rule
    let ok = false;
    for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
      const [xi, yi] = poly[i], [xj, yj] = poly[j];
      if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) ok = !ok;
    }
    return ok;
  }
  async function finishSelection() {
    const p = map.path;
    map.path = null;
    if (!p || p.length < 2 || (Math.abs(p[p.length - 1][0] - p[0][0]) < 3 && Math.abs(p[p.length - 1][1] - p[0][1]) < 3
        && p.length < 4)) {  // a click, not a drag: open the point's sample
      const i = p ? nearest(...p[0]) : -1;
      if (i >= 0) showSample(keyOf(map.rows[i]));
      drawMap();
      return;
    }
    map.lastPath = p;
    const n = map.px.length, rows = [];
    map.selected.fill(0);
    let test;
    if (state.tool === "box") {
      const [a, b] = [p[0], p[p.length - 1]];
      const x0 = Math.min(a[0], b[0]), x1 = Math.max(a[0], b[0]), y0 = Math.min(a[1], b[1]), y1 = Math.max(a[1], b[1]);
      test = (x, y) => x >= x0 && x <= x1 && y >= y0 && y <= y1;
    } else {
      test = (x, y) => inside(p, x, y);
    }
    for (let i = 0; i < n; i++) if (test(map.px[i], map.py[i])) { map.selected[i] = 1; rows.push(map.rows[i]); }
    mapCanvas.dataset.path = JSON.stringify(state.tool === "box" ? [p[0], p[p.length - 1]] : p);
    drawMap();
    try {
      await post("/api/select", { rows: rows });
      state.where = null;  // the selection changed: the same "#selection" filter is evaluated again
      setWhere("#selection");
    } catch (e) { mapStatus.textContent = e.message; }
  }
  mapCanvas.addEventListener("mousedown", (e) => {
    if (!map.base) return;
    e.preventDefault();
    map.path = [canvasXY(e)];
  });
  function nearest(x, y) {  // the drawn point within 5 px of (x, y), else -1
    let best = -1, bd = 26;
    for (let i = 0; i < map.px.length; i++) {
      const dx = map.px[i] - x, dy = map.py[i] - y, dd = dx * dx + dy * dy;
      if (dd < bd) { bd = dd; best = i; }
    }
    return best;
  }
  function keyOf(row) { return String(row).padStart(meta.key_width || 10, "0"); }
  mapCanvas.addEventListener("mousemove", (e) => {
    if (!map.path) {  // hovering a point: its key; t tags it, a click opens it
      if (!map.px) return;
      const i = nearest(...canvasXY(e));
      state.hover = i < 0 ? null : { key: keyOf(map.rows[i]), row: map.rows[i] };
      mapCanvas.title = i < 0 ? "" : "sample " + state.hover.key;
      return;
    }
    map.path.push(canvasXY(e));
    strokePath();
  });
  mapCanvas.addEventListener("mouseleave", () => { if (!map.path) state.hover = null; });
  window.addEventListener("mouseup", () => { if (map.path) finishSelection(); });

  // ------------------------------------------------------------------ tags and views
  function tagTargets(fromKey) {
    if (state.marked.size) return [...state.marked.values()];
    if (fromKey && state.hover) return [state.hover.row];
    if (map.selected && state.where.includes("#selection")) {  // the map's selection while the grid shows it
      const rows = [];
      for (let i = 0; i < map.selected.length; i++) if (map.selected[i]) rows.push(map.rows[i]);
      if (rows.length) return rows;
    }
    if (state.key && state.detailRow !== undefined) return [state.detailRow];
    return [];
  }
  async function tag(mode, fromKey) {
    const rows = tagTargets(fromKey);
    tagStatus.className = "status";
    if (!tagName.value.trim()) { tagStatus.className = "status error"; tagStatus.textContent = "name the tag first"; return; }
    if (!rows.length) { tagStatus.className = "status error"; tagStatus.textContent = "mark tiles (shift-click) or open a sample first"; return; }
    try {
      const r = await post("/api/tag", { name: tagName.value.trim(), rows: rows, mode: mode });
      tagStatus.className = "status ok";
      tagStatus.textContent = (mode === "add" ? "tagged " : "untagged ") + rows.length + " → " + r.name + ": " +
        fmtInt.format(r.samples) + " samples (" + r.path + ")";
      state.marked.clear();
      for (const f of grid.querySelectorAll("figure.marked")) f.classList.remove("marked");
      loadViews();
      if (state.where.includes("#")) { const w = state.where; state.where = null; setWhere(w); }
    } catch (e) {
      tagStatus.className = "status error";
      tagStatus.textContent = e.message;
    }
  }
  async function loadViews() {
    if (!live) return;
    let v;
    try { v = await api("/api/views", {}); } catch (e) { return; }
    const item = (x) => el("li", {}, el("button", { type: "button", class: "link", testid: "open-" + x.name,
      text: "#" + x.name, title: x.predicate || "a view of explicit rows", onclick: () => setWhere("#" + x.name) }),
      el("span", { class: "n", text: fmtInt.format(x.samples) }));
    tagList.replaceChildren(...v.views.filter((x) => x.tag).map(item));
    viewList.replaceChildren(...v.views.filter((x) => !x.tag).map(item));
    if (!v.views.length) viewList.append(el("li", { class: "hint", text: "no views in " + v.views_dir + " yet" }));
    const names = ["selection"].concat(v.views.map((x) => x.name));
    for (const [s, pick] of [[cmpA, 0], [cmpB, 1]]) {
      const keep = s.value;
      s.replaceChildren(...names.map((n) => el("option", { value: n, text: "#" + n })));
      s.value = names.includes(keep) ? keep : names[Math.min(pick, names.length - 1)];
    }
  }
  async function compare() {
    const a = cmpA.value, b = cmpB.value;
    try {
      const c = await api("/api/compare", { a: a, b: b });
      const go = (label, n, w) => el("button", { type: "button", class: "link", testid: "compare-" + label,
        text: label + " " + fmtInt.format(n), onclick: () => setWhere(w) });
      cmpOut.replaceChildren(go("both", c.both, "#" + a + " and #" + b), go("either", c.either, "#" + a + " or #" + b),
        go("only-a", c.only_a, "#" + a + " and not #" + b), go("only-b", c.only_b, "#" + b + " and not #" + a),
        go("neither", c.neither, "not #" + a + " and not #" + b));
    } catch (e) { cmpOut.replaceChildren(el("p", { class: "error", text: e.message })); }
  }

  // ------------------------------------------------------------------ one sample
  async function showSample(key) {
    state.key = key;
    saveHash();
    for (const f of grid.querySelectorAll("figure.tile")) f.classList.toggle("sel", f.dataset.key === key);
    let d;
    try {
      d = live ? await api("/api/sample", { key: key, where: state.where }) : cfg.details[key];
    } catch (e) {
      detail.hidden = false;
      detail.replaceChildren(el("p", { class: "error", text: e.message }));
      return;
    }
    if (state.key !== key) return;
    state.detailRow = d.index.row;
    const size = Math.max(256, meta.resolution || 0);
    const opacity = el("input", { type: "range", min: 0, max: 1, step: 0.05, value: state.opacity,
      testid: "opacity", "aria-label": "overlay opacity" });
    const top = el("img", { src: tileSrc(key, state.overlay === "none" ? "mask" : state.overlay), alt: "overlay",
      class: "over", style: { opacity: String(state.opacity) } });
    opacity.addEventListener("input", () => { state.opacity = Number(opacity.value); top.style.opacity = opacity.value; });
    const stack = el("figure", { class: "stack", style: { width: size + "px", height: size + "px" } },
      el("img", { src: pictureSrc(key, "image") || tileSrc(key, "none"), alt: "image" }), top);
    const pics = el("div", { class: "pics" },
      el("figure", {}, stack, el("figcaption", {}, "overlay ", opacity)));
    for (const w of d.pictures) {
      const src = pictureSrc(key, w);
      if (src) pics.append(el("figure", {}, el("img", { src: src, alt: w, style: { width: size + "px" } }),
        el("figcaption", { text: w })));
    }
    const z = d.latent;
    const rows = Object.entries(d.index).map(([k, v]) => el("tr", {}, el("th", { text: k }),
      el("td", { text: Array.isArray(v) ? v.map(num).join(" ") : num(v) })));
    detail.hidden = false;
    detail.replaceChildren(
      el("div", { class: "dhead" }, el("code", { class: "dkey", text: key }),
        el("span", { class: "badge " + (d.accepted ? "ok" : "no"), text: verdictText(d) }),
        el("span", { class: "dnav" },
          el("button", { type: "button", testid: "prev", text: "← prev", onclick: () => step(-1) }),
          el("button", { type: "button", testid: "next", text: "next →", onclick: () => step(1) }),
          el("button", { type: "button", testid: "close", text: "✕", title: "close (Esc)", onclick: closeSample }))),
      pics,
      el("p", { class: "latent", text: z ? "latent ‖z‖ = " + num(z.norm) + "  (" + z.shape.join("×") + " " +
        z.dtype + ")" : "no latent member" }),
      el("div", { class: "dcols" },
        el("details", { open: true }, el("summary", { text: "index row" }), el("table", { class: "kv" }, ...rows)),
        el("details", { open: true }, el("summary", { text: key + ".json" }),
          el("pre", { class: "json", text: JSON.stringify(d.meta, null, 1) }))),
      el("p", { class: "members", text: "members: " + Object.entries(d.members).map(([e, n]) =>
        "." + e + " " + fmtInt.format(n) + " B").join(", ") }));
  }
  function closeSample() {
    state.key = null;
    detail.hidden = true;
    for (const f of grid.querySelectorAll("figure.sel")) f.classList.remove("sel");
    saveHash();
  }
  async function step(d) {  // the next or previous sample of the grid's order, across pages
    const page = state.page;
    if (!page || !state.key) return;
    const i = page.rows.findIndex((r) => r.key === state.key);
    const j = i + d;
    if (i < 0) return page.rows.length ? showSample(page.rows[0].key) : undefined;  // opened from the map
    if (j >= 0 && j < page.rows.length) return showSample(page.rows[j].key);
    if (!live || (d > 0 && next.disabled) || (d < 0 && prev.disabled)) return;
    state.offset = Math.max(0, state.offset + d * state.limit);
    await load();
    const rows = state.page.rows;
    if (rows.length) showSample(d > 0 ? rows[0].key : rows[rows.length - 1].key);
  }

  // ------------------------------------------------------------------ saving the filter as a view
  async function saveView() {
    saveStatus.className = "status";
    saveStatus.textContent = "saving…";
    try {
      const body = await post("/api/save", { name: viewName.value, where: whereInput.value.trim() });
      saveStatus.className = "status ok";
      saveStatus.textContent = (body.written ? "saved " : "already saved ") + body.path + " (" + body.view_id + ", " +
        fmtInt.format(body.samples) + " samples)";
      loadViews();
    } catch (e) {
      saveStatus.className = "status error";
      saveStatus.textContent = e.message;
    }
  }

  // ------------------------------------------------------------------ wiring
  let typing = null;
  function readHash() {  // the page's state lives in its address: a reload or a shared link opens the same page
    const h = new URLSearchParams(location.hash.slice(1));
    state.where = h.get("where") || "";
    state.show = SHOWS.includes(h.get("show")) ? h.get("show") : "accepted";
    state.sort = h.get("sort") in cols ? h.get("sort") : "row";
    state.desc = h.get("order") === "desc";
    state.offset = Math.max(0, parseInt(h.get("offset") || "0", 10) || 0);
    state.limit = LIMITS.includes(Number(h.get("limit"))) ? Number(h.get("limit")) : 48;
    state.zoom = Math.min(320, Math.max(72, parseInt(h.get("zoom") || "132", 10) || 132));
    if (h.get("colour") in cols && h.get("colour") !== "key") state.colour = h.get("colour");
    if (overlays.includes(h.get("overlay"))) state.overlay = h.get("overlay");
    state.key = /^[0-9]{1,20}$/.test(h.get("key") || "") ? h.get("key") : null;
  }
  function syncControls() {
    whereInput.value = state.where;
    show.value = state.show;
    sort.value = state.sort;
    limitSel.value = String(state.limit);
    zoom.value = String(state.zoom);
    mapColour.value = state.colour;
    document.documentElement.style.setProperty("--tile", state.zoom + "px");
    order.textContent = state.desc ? "↓ desc" : "↑ asc";
    renderOverlayButtons();
  }
  if (live) readHash();
  layout();
  syncControls();
  window.addEventListener("hashchange", () => {
    if (!live) return;
    readHash(); syncControls(); load();
    if (state.key) showSample(state.key); else { detail.hidden = true; }
  });
  whereInput.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(apply, 600); });
  show.addEventListener("change", () => { state.show = show.value; state.offset = 0; load(); });
  sort.addEventListener("change", () => { state.sort = sort.value; state.offset = 0; load(); });
  order.addEventListener("click", () => {
    state.desc = !state.desc;
    order.textContent = state.desc ? "↓ desc" : "↑ asc";
    state.offset = 0;
    load();
  });
  limitSel.addEventListener("change", () => { state.limit = Number(limitSel.value); state.offset = 0; load(); });
  zoom.addEventListener("input", () => {
    state.zoom = Number(zoom.value);
    document.documentElement.style.setProperty("--tile", state.zoom + "px");
    saveHash();
  });
  prev.addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); load(); });
  next.addEventListener("click", () => { state.offset += state.limit; load(); });
  mapColour.addEventListener("change", () => { state.colour = mapColour.value; saveHash(); loadColours(); });
  mapMethod.addEventListener("change", () => { state.method = mapMethod.value; map.selected = null; loadMap(); });
  for (const b of toolBox.querySelectorAll("button")) {
    b.addEventListener("click", () => { state.tool = b.dataset.tool; renderOverlayButtons(); });
  }
  tagButton.addEventListener("click", () => tag("add", false));
  untagButton.addEventListener("click", () => tag("remove", false));
  tagName.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); tag("add", false); } });
  save.addEventListener("click", saveView);
  document.addEventListener("keydown", (e) => {  // "/" to the filter box; arrows step samples or pages
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement || !live) return;
    if (e.key === "/") { e.preventDefault(); whereInput.focus(); }
    else if (e.key === "Escape" && state.key) closeSample();
    else if (e.key === "ArrowRight" && state.key) step(1);
    else if (e.key === "ArrowLeft" && state.key) step(-1);
    else if (e.key === "ArrowRight" && !next.disabled) next.click();
    else if (e.key === "ArrowLeft" && !prev.disabled) prev.click();
    else if (e.key === "t") tag("add", true);
    else if (e.key === "u") tag("remove", true);
  });
  if (!live) counts.textContent = cfg.line;
  load().then(() => { if (state.key) showSample(state.key); });
  if (live) { loadMap(); loadViews(); }
})();
