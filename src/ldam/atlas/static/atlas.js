// The atlas's pages: the link into the live sampler, and the layer page's sortable grid of units.
// Data arrive as <script src> globals (window.ATLAS_LAYER), never by fetch: the pages open from disk.
"use strict";
(function () {
  // Served by `ldam serve --atlas` (under /atlas/), the live sampler is this server's "/"; opened
  // from disk (or from another server), it is the default local address of `ldam serve`.
  const SERVED = /^https?:$/.test(location.protocol) && location.pathname.startsWith("/atlas/");
  function liveHref(a) {
    const q = new URLSearchParams();
    q.set("model", a.dataset.model);
    if (a.dataset.layer !== undefined) q.set("layer", a.dataset.layer);
    if (a.dataset.unit !== undefined) q.set("unit", a.dataset.unit);
    return (SERVED ? "/" : a.dataset.origin + "/") + "?" + q.toString();
  }
  const live = document.getElementById("live");
  if (live && live.dataset.model) { live.href = liveHref(live); live.hidden = false; }
  if (document.body.dataset.page === "layer") layerPage(window.ATLAS_LAYER);

  function layerPage(L) {
    const grid = document.getElementById("grid"), sortSel = document.getElementById("sort");
    const reverse = document.getElementById("reverse"), go = document.getElementById("goto");
    const num = (v) => (typeof v === "number" && !Number.isNaN(v) ? v : null);
    const done = (r) => r.s === "done";
    // key: a number (smaller first when dir is 1) or null (missing: always last); ties by unit.
    const SORTS = {
      unit: { key: (r) => r.u, dir: 1 },
      activation: { key: (r) => num(r.a), dir: -1, show: "a" },
      rhat: { key: (r) => num(r.r), dir: -1, show: "r", label: "R̂ " },
      ess: { key: (r) => num(r.e), dir: 1, show: "e", label: "ESS " },
      data_max: { key: (r) => num(r.m), dir: -1, show: "m" },
      dead: { key: (r) => (done(r) ? (r.d ? 0 : 1) : null), dir: 1, show: "a" },
      not_converged: { key: (r) => (done(r) ? (r.n ? 0 : 1) : null), dir: 1, show: "r", label: "R̂ " },
    };
    const cards = L.rows.map(card);
    function badge(cls, text) { const b = document.createElement("span"); b.className = `badge ${cls}`; b.textContent = text; return b; }
    function card(r) {
      const el = document.createElement(done(r) ? "a" : "div");
      el.className = "card" + (done(r) ? "" : " pending") + (r.d ? " dead" : "") + (r.n ? " nc" : "");
      el.dataset.unit = r.u;
      if (done(r)) el.href = `${r.u}.html`;
      if (done(r) && r.t) {
        const img = document.createElement("img");
        img.loading = "lazy"; img.decoding = "async";  // set before src: only cards near the view load
        img.width = L.thumb; img.height = L.thumb; img.alt = `unit ${r.u}`;
        img.src = `img/${r.u}_thumb.png`;
        el.append(img);
      } else {
        const ph = document.createElement("div"); ph.className = "ph"; ph.textContent = done(r) ? "no samples" : "pending";
        el.append(ph);
      }
      const u = document.createElement("span"); u.className = "u"; u.textContent = r.u;
      const badges = document.createElement("span"); badges.className = "badges";
      if (!done(r)) badges.append(badge("pend", "pending"));
      if (r.d) badges.append(badge("dead", "dead"));
      if (r.n) badges.append(badge("nc", "unconv."));
      const v = document.createElement("span"); v.className = "v";
      el.append(u, badges, v);
      el.title = done(r) ? `unit ${r.u}` + (r.d ? " (dead)" : "") + (r.n ? " (not converged)" : "") : `unit ${r.u}: not computed yet`;
      return el;
    }
    function short(x) { return x === null ? "" : String(Number(x.toPrecision(4))); }
    function render() {
      const s = SORTS[sortSel.value] || SORTS.unit, dir = reverse.checked ? -s.dir : s.dir;
      const keys = L.rows.map(s.key);
      const order = L.rows.map((_, i) => i).sort((i, j) => {
        const a = keys[i], b = keys[j];
        if (a === null || b === null) return a === b ? L.rows[i].u - L.rows[j].u : (a === null ? 1 : -1);
        return a !== b ? dir * (a - b) : L.rows[i].u - L.rows[j].u;
      });
      for (let i = 0; i < cards.length; i++) {
        const r = L.rows[i];
        const v = s.show ? num(r[s.show]) : null;
        cards[i].lastChild.textContent = v === null ? "" : (s.label || "") + short(v);
      }
      const frag = document.createDocumentFragment();
      for (const i of order) frag.append(cards[i]);
      grid.replaceChildren(frag);
      try { history.replaceState(null, "", `#sort=${sortSel.value}${reverse.checked ? "&rev=1" : ""}`); } catch (e) { /* file:// may refuse */ }
      window.atlas = { sort: sortSel.value, reverse: reverse.checked, order: order.map((i) => L.rows[i].u) };
    }
    const h = new URLSearchParams(location.hash.slice(1));
    if (h.get("sort") in SORTS) sortSel.value = h.get("sort");
    reverse.checked = h.get("rev") === "1";
    sortSel.onchange = render; reverse.onchange = render;
    go.addEventListener("keydown", (ev) => {
      if (ev.key !== "Enter") return;
      const r = L.rows[Number(go.value)];
      if (r && done(r)) { location.href = `${r.u}.html`; return; }
      go.setCustomValidity(r ? `unit ${r.u} is not computed yet` : "no such unit");
      go.reportValidity();
      go.setCustomValidity("");
    });
    render();
    document.body.dataset.ready = "1";
  }
})();
