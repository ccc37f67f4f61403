// factory browse: the page over a dataset or view. Live: every page of rows, count, histogram and sample
// comes from the local server. Static (factory preview --html): the same page over the rows embedded in it.
// Text from the dataset only ever reaches the page as textContent or attribute values; never as HTML.
"use strict";
(function () {
  const cfg = JSON.parse(document.getElementById("config").textContent);
  const live = cfg.mode === "live";
  const meta = cfg.meta;
  const cols = meta.columns;
  const state = { where: "", show: "accepted", sort: "row", desc: false, offset: 0, limit: 48,
                  overlay: "mask", hist: "fg_ratio" in cols ? "fg_ratio" : "row", key: null, seq: 0 };
  const fmtInt = new Intl.NumberFormat("en-US");
  const SHOWS = ["accepted", "rejected", "all"];

  function el(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
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
    placeholder: "fg_ratio < 0.5 and n_components <= 2", "aria-label": "filter (factory filter --where)" });
  const whereError = el("div", { id: "where-error", class: "error", role: "alert" });
  const counts = el("div", { id: "counts", class: "counts" });
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
  const prev = el("button", { id: "prev", type: "button", text: "‹ prev" });
  const next = el("button", { id: "next", type: "button", text: "next ›" });
  const range = el("span", { id: "range", class: "range" });
  const viewName = el("input", { id: "view-name", type: "text", spellcheck: "false", placeholder: "view name",
    "aria-label": "view name" });
  const save = el("button", { id: "save", type: "button", class: "primary", text: "Save view" });
  const saveStatus = el("div", { id: "save-status", class: "status", role: "status" });
  const grid = el("div", { id: "grid", class: "grid" });
  const histSelect = el("select", { id: "hist-column", "aria-label": "histogram column" },
    ...Object.entries(cols).filter(([, k]) => k !== "string").map(([c]) => el("option", { value: c, text: c })));
  const histBox = el("div", { id: "hist", class: "hist" });
  const detail = el("div", { id: "detail", class: "detail" },
    el("p", { class: "hint", text: "Click a tile to see its sample." }));

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
      live ? el("span", { class: "pager" }, prev, range, next) : range,
      live ? el("span", { class: "save" }, viewName, save) : null);
    document.body.append(header(),
      el("section", { class: "bar" }, filterBar, whereError, counts, controls, saveStatus),
      el("main", { class: "body" }, grid,
        el("aside", { class: "side" },
          el("section", { class: "panel" }, el("h2", {}, "Histogram ", histSelect), histBox,
            el("div", { class: "legend" }, el("span", { class: "sw acc" }), "accepted ",
              el("span", { class: "sw rej" }), "rejected")),
          el("section", { class: "panel" }, el("h2", { text: "Sample" }), detail))));
    sort.value = state.sort;
    histSelect.value = state.hist;
    renderOverlayButtons();
  }

  function renderOverlayButtons() {
    for (const b of overlayBox.querySelectorAll("button")) b.classList.toggle("on", b.dataset.overlay === state.overlay);
  }

  // ------------------------------------------------------------------ grid
  function tile(r) {
    const extra = state.sort !== "row" && state.sort !== "fg_ratio" && state.sort !== "n_components"
      ? " · " + state.sort + " " + num(r[state.sort]) : "";
    const img = el("img", { src: tileSrc(r.key, state.overlay), alt: "sample " + r.key, loading: "lazy",
      "data-key": r.key });
    const fig = el("figure", { class: "tile " + (r.accepted ? "acc" : "rej"), tabindex: "0", "data-key": r.key,
      onclick: () => showSample(r.key), onkeydown: (e) => { if (e.key === "Enter") showSample(r.key); } },
      img,
      el("figcaption", {},
        el("div", { class: "key", text: r.key }),
        el("div", { class: "stats", text: "fg " + num(r.fg_ratio) + " · comp " + num(r.n_components) + extra }),
        el("div", { class: "badge " + (r.accepted ? "ok" : "no"), text: verdictShort(r), title: verdictText(r) })));
    if (r.key === state.key) fig.classList.add("sel");
    return fig;
  }

  function renderRows(page) {
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
    if (!live) { renderRows(localPage()); loadHist(); return; }
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
    loadHist();
  }

  function saveHash() {
    if (!live) return;
    history.replaceState(null, "", "#" + q({ where: state.where, show: state.show, sort: state.sort,
      order: state.desc ? "desc" : "asc", offset: state.offset, overlay: state.overlay }));
  }

  function apply() {
    clearTimeout(typing);
    if (whereInput.value.trim() === state.where) return;
    state.where = whereInput.value.trim();
    state.offset = 0;
    load();
  }

  // ------------------------------------------------------------------ histogram
  async function loadHist() {
    const col = state.hist;
    let h;
    try {
      h = live ? await api("/api/hist", { column: col, where: state.where }) : cfg.hists[col];
    } catch (e) {
      histBox.replaceChildren(el("p", { class: "error", text: e.message }));
      return;
    }
    if (!h || col !== state.hist) return;
    drawHist(h);
  }

  function drawHist(h) {
    const W = 320, H = 150, pad = 22;
    const n = h.accepted.length;
    const tot = h.accepted.map((a, i) => a + h.rejected[i]);
    const top = Math.max(1, ...tot);
    const bw = (W - 2 * pad) / n;
    const g = svg("svg", { viewBox: "0 0 " + W + " " + (H + 30), width: "100%", role: "img",
      "aria-label": "histogram of " + h.column });
    g.append(svg("line", { x1: pad, y1: H, x2: W - pad, y2: H, class: "axis" }));
    for (let i = 0; i < n; i++) {
      const ha = (h.accepted[i] / top) * (H - 10), hr = (h.rejected[i] / top) * (H - 10);
      const x = pad + i * bw + 0.5, w = Math.max(1, bw - 1);
      const label = h.kind === "bool" ? h.labels[i] : num(h.edges[i]) + " – " + num(h.edges[i + 1]);
      const tip = svg("title");
      tip.textContent = h.column + " " + label + ": " + fmtInt.format(h.accepted[i]) + " accepted, " +
        fmtInt.format(h.rejected[i]) + " rejected";
      const grp = svg("g", {}, tip);
      grp.append(svg("rect", { x: x, y: H - ha, width: w, height: ha, class: "acc" }));
      grp.append(svg("rect", { x: x, y: H - ha - hr, width: w, height: hr, class: "rej" }));
      g.append(grp);
    }
    const t = (x, y, s, anchor) => { const e = svg("text", { x: x, y: y, "text-anchor": anchor }); e.textContent = s; return e; };
    if (h.kind === "bool" || (h.integer && n <= 16)) {
      for (let i = 0; i < n; i++) {
        g.append(t(pad + (i + 0.5) * bw, H + 16, h.kind === "bool" ? h.labels[i] : num(h.edges[i] + 0.5), "middle"));
      }
    } else {
      g.append(t(pad, H + 16, num(h.edges[0]), "start"));
      g.append(t(W - pad, H + 16, num(h.edges[n]), "end"));
    }
    g.append(t(pad, 10, fmtInt.format(top), "start"));
    histBox.replaceChildren(g);
  }

  // ------------------------------------------------------------------ one sample
  async function showSample(key) {
    state.key = key;
    for (const f of grid.querySelectorAll("figure.tile")) f.classList.toggle("sel", f.dataset.key === key);
    let d;
    try {
      d = live ? await api("/api/sample", { key: key, where: state.where }) : cfg.details[key];
    } catch (e) {
      detail.replaceChildren(el("p", { class: "error", text: e.message }));
      return;
    }
    if (state.key !== key) return;
    const pics = el("div", { class: "pics" },
      el("figure", {}, el("img", { src: tileSrc(key, state.overlay), alt: "overlay" }),
        el("figcaption", { text: state.overlay === "none" ? "image" : state.overlay + " overlay" })));
    for (const w of d.pictures) {
      if (w === "image" && state.overlay === "none") continue;
      const src = pictureSrc(key, w);
      if (src) pics.append(el("figure", {}, el("img", { src: src, alt: w }), el("figcaption", { text: w })));
    }
    const z = d.latent;
    const rows = Object.entries(d.index).map(([k, v]) => el("tr", {}, el("th", { text: k }),
      el("td", { text: Array.isArray(v) ? v.map(num).join(" ") : num(v) })));
    detail.replaceChildren(
      el("div", { class: "dhead" }, el("code", { class: "dkey", text: key }),
        el("span", { class: "badge " + (d.accepted ? "ok" : "no"), text: verdictText(d) })),
      pics,
      el("p", { class: "latent", text: z ? "latent ‖z‖ = " + num(z.norm) + "  (" + z.shape.join("×") + " " +
        z.dtype + ")" : "no latent member" }),
      el("details", { open: true }, el("summary", { text: "index row" }), el("table", { class: "kv" }, ...rows)),
      el("details", { open: true }, el("summary", { text: key + ".json" }),
        el("pre", { class: "json", text: JSON.stringify(d.meta, null, 1) })),
      el("p", { class: "members", text: "members: " + Object.entries(d.members).map(([e, n]) =>
        "." + e + " " + fmtInt.format(n) + " B").join(", ") }));
  }

  // ------------------------------------------------------------------ saving the filter as a view
  async function saveView() {
    saveStatus.className = "status";
    saveStatus.textContent = "saving…";
    try {
      const r = await fetch("/api/save", { method: "POST", headers: { "Content-Type": "application/json",
        "X-Factory-Token": cfg.token }, body: JSON.stringify({ name: viewName.value, where: whereInput.value.trim() }) });
      const body = await r.json();
      if (!r.ok) throw new Error(body.error || r.statusText);
      saveStatus.className = "status ok";
      saveStatus.textContent = (body.written ? "saved " : "already saved ") + body.path + " (" + body.view_id + ", " +
        fmtInt.format(body.samples) + " samples)";
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
    if (overlays.includes(h.get("overlay"))) state.overlay = h.get("overlay");
  }
  function syncControls() {
    whereInput.value = state.where;
    show.value = state.show;
    sort.value = state.sort;
    order.textContent = state.desc ? "↓ desc" : "↑ asc";
    renderOverlayButtons();
  }
  if (live) readHash();
  layout();
  syncControls();
  window.addEventListener("hashchange", () => { if (live) { readHash(); syncControls(); load(); } });
  whereInput.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(apply, 600); });
  show.addEventListener("change", () => { state.show = show.value; state.offset = 0; load(); });
  sort.addEventListener("change", () => { state.sort = sort.value; state.offset = 0; load(); });
  order.addEventListener("click", () => {
    state.desc = !state.desc;
    order.textContent = state.desc ? "↓ desc" : "↑ asc";
    state.offset = 0;
    load();
  });
  prev.addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); load(); });
  next.addEventListener("click", () => { state.offset += state.limit; load(); });
  histSelect.addEventListener("change", () => { state.hist = histSelect.value; loadHist(); });
  save.addEventListener("click", saveView);
  document.addEventListener("keydown", (e) => {  // "/" to the filter box; arrows page when not typing
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement || !live) return;
    if (e.key === "/") { e.preventDefault(); whereInput.focus(); }
    else if (e.key === "ArrowRight" && !next.disabled) next.click();
    else if (e.key === "ArrowLeft" && !prev.disabled) prev.click();
  });
  if (!live) counts.textContent = cfg.line;
  load();
})();
