// frugalvision explore: the map (WebGL, our own), selection, gallery, neighbours and review. No dependencies.
"use strict";
(() => {
  const token = document.querySelector('meta[name="explore-token"]').content;
  const $ = (id) => document.getElementById(id);
  // what tests and benchmarks read: point count, timings (ms since navigation start), view helpers
  const E = (window.explorer = { ready: false, pointCount: 0, timings: {}, selection: null, galleryVersion: 0 });
  const PALETTE = [
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
    [227, 119, 194], [188, 189, 34], [23, 190, 207], [174, 199, 232], [255, 187, 120], [152, 223, 138],
    [255, 152, 150], [197, 176, 213], [196, 156, 148], [247, 182, 210], [219, 219, 141], [158, 218, 229],
  ];
  let meta = null, xy = null, values = null, colors = null, gl = null, prog = null, bufPos = null, bufCol = null;
  const view = { cx: 0, cy: 0, zoom: 1 };
  let mode = "pan", gallery = { offset: 0, limit: 60, total: 0 }, classes = [];

  async function api(path, body, isForm) {
    const opts = body === undefined ? {} : {
      method: "POST",
      headers: isForm ? { "X-Explore-Token": token } : { "X-Explore-Token": token, "Content-Type": "application/json" },
      body: isForm ? body : JSON.stringify(body),
    };
    const r = await fetch(path, opts);
    if (!r.ok) {
      let msg = r.statusText;
      try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    return r;
  }
  const status = (text) => { $("status").textContent = text; };
  const fail = (err) => status("error: " + err.message);

  // ------------------------------------------------------------------------------------------- WebGL map
  const VS = `attribute vec2 p; attribute vec4 c; uniform vec2 s; uniform vec2 o; uniform float z; varying vec4 v;
    void main() { gl_Position = vec4(p * s + o, 0.0, 1.0); gl_PointSize = z; v = c; }`;
  const FS = `precision mediump float; varying vec4 v;
    void main() { vec2 d = gl_PointCoord - 0.5; if (dot(d, d) > 0.25) discard; gl_FragColor = v; }`;

  function initGL() {
    const canvas = $("map");
    gl = canvas.getContext("webgl", { antialias: false, preserveDrawingBuffer: true });
    if (!gl) throw new Error("WebGL is not available in this browser");
    const sh = (type, src) => {
      const s = gl.createShader(type); gl.shaderSource(s, src); gl.compileShader(s);
      if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
      return s;
    };
    prog = gl.createProgram();
    gl.attachShader(prog, sh(gl.VERTEX_SHADER, VS)); gl.attachShader(prog, sh(gl.FRAGMENT_SHADER, FS));
    gl.linkProgram(prog); gl.useProgram(prog);
    bufPos = gl.createBuffer(); bufCol = gl.createBuffer();
    gl.enable(gl.BLEND); gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA);
  }

  function size() {
    const c = $("map"), r = c.getBoundingClientRect(), d = window.devicePixelRatio || 1;
    return { w: r.width, h: r.height, d };
  }
  function scaleOf() {
    const { w, h } = size(), k = 0.95 * Math.min(w, h) / 2 * view.zoom;
    return { sx: k / (w / 2), sy: k / (h / 2), k, w, h };
  }
  // map position of point i in CSS pixels of the canvas
  E.toScreen = (i) => {
    const { k, w, h } = scaleOf();
    return { x: w / 2 + (xy[2 * i] - view.cx) * k, y: h / 2 - (xy[2 * i + 1] - view.cy) * k };
  };
  function toWorld(px, py) {
    const { k, w, h } = scaleOf();
    return { x: (px - w / 2) / k + view.cx, y: -(py - h / 2) / k + view.cy };
  }

  function draw() {
    const c = $("map"), { w, h, d } = size();
    if (c.width !== Math.round(w * d) || c.height !== Math.round(h * d)) {
      c.width = Math.round(w * d); c.height = Math.round(h * d);
      const o = $("overlay"); o.width = c.width; o.height = c.height;
    }
    gl.viewport(0, 0, c.width, c.height);
    gl.clearColor(0.067, 0.086, 0.102, 1); gl.clear(gl.COLOR_BUFFER_BIT);
    const { sx, sy } = scaleOf();
    gl.uniform2f(gl.getUniformLocation(prog, "s"), sx, sy);
    gl.uniform2f(gl.getUniformLocation(prog, "o"), -view.cx * sx, -view.cy * sy);
    const n = E.pointCount;
    gl.uniform1f(gl.getUniformLocation(prog, "z"), Math.max(2, Math.min(9, 3 * d * Math.sqrt(view.zoom) * (n > 20000 ? 0.7 : 1.3))));
    const pa = gl.getAttribLocation(prog, "p"), ca = gl.getAttribLocation(prog, "c");
    gl.bindBuffer(gl.ARRAY_BUFFER, bufPos); gl.enableVertexAttribArray(pa); gl.vertexAttribPointer(pa, 2, gl.FLOAT, false, 0, 0);
    gl.bindBuffer(gl.ARRAY_BUFFER, bufCol); gl.enableVertexAttribArray(ca); gl.vertexAttribPointer(ca, 4, gl.UNSIGNED_BYTE, true, 0, 0);
    gl.drawArrays(gl.POINTS, 0, n);
  }

  function colorOf(v, kind) {
    if (kind === "score") {
      if (!Number.isFinite(v)) return [90, 90, 90];
      const c = meta.colorings.ood, t = c.max > c.min ? (v - c.min) / (c.max - c.min) : 0.5;
      return [Math.round(40 + 215 * t), Math.round(60 + 140 * (1 - Math.abs(t - 0.5) * 2)), Math.round(200 * (1 - t))];
    }
    return v < 0 ? [110, 110, 110] : PALETTE[v % PALETTE.length];
  }

  function recolor() {
    const name = $("color-by").value, kind = meta.colorings[name].kind, n = E.pointCount;
    colors = new Uint8Array(4 * n);
    const sel = E.selection ? new Uint8Array(n) : null;
    if (sel) for (const i of E.selection) sel[i] = 1;
    for (let i = 0; i < n; i++) {
      const c = colorOf(values[i], kind);
      colors[4 * i] = c[0]; colors[4 * i + 1] = c[1]; colors[4 * i + 2] = c[2];
      colors[4 * i + 3] = sel && !sel[i] ? 40 : 220;
    }
    gl.bindBuffer(gl.ARRAY_BUFFER, bufCol); gl.bufferData(gl.ARRAY_BUFFER, colors, gl.STATIC_DRAW);
    const leg = $("legend");
    if (kind === "category") {
      const names = meta.colorings[name].names;
      leg.innerHTML = names.slice(0, 40).map((t, i) => `<div><i style="background:rgb(${colorOf(i, kind)})"></i>${esc(t)}</div>`).join("") +
        (names.length > 40 ? `<div>… ${names.length - 40} more</div>` : "");
    } else {
      const c = meta.colorings[name];
      leg.innerHTML = `<div>${esc(name)}: ${c.min.toFixed(3)} (blue) … ${c.max.toFixed(3)} (red)</div>`;
    }
    draw();
  }

  async function loadColor() {
    const r = await api("/api/color/" + encodeURIComponent($("color-by").value));
    values = new Float32Array(await r.arrayBuffer());
    recolor();
  }

  // ------------------------------------------------------------------------------------- interaction
  function nearest(px, py, radius) {
    let best = -1, bd = radius * radius;
    const { k, w, h } = scaleOf();
    for (let i = 0; i < E.pointCount; i++) {
      const dx = w / 2 + (xy[2 * i] - view.cx) * k - px, dy = h / 2 - (xy[2 * i + 1] - view.cy) * k - py;
      const d2 = dx * dx + dy * dy;
      if (d2 < bd) { bd = d2; best = i; }
    }
    return best;
  }

  function insidePolygon(poly) {  // poly: world coordinates; even-odd rule over a bounding-box prefilter
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const p of poly) { x0 = Math.min(x0, p.x); x1 = Math.max(x1, p.x); y0 = Math.min(y0, p.y); y1 = Math.max(y1, p.y); }
    const out = [], m = poly.length;
    for (let i = 0; i < E.pointCount; i++) {
      const x = xy[2 * i], y = xy[2 * i + 1];
      if (x < x0 || x > x1 || y < y0 || y > y1) continue;
      let inside = false;
      for (let a = 0, b = m - 1; a < m; b = a++) {
        const pa = poly[a], pb = poly[b];
        if ((pa.y > y) !== (pb.y > y) && x < (pb.x - pa.x) * (y - pa.y) / (pb.y - pa.y) + pa.x) inside = !inside;
      }
      if (inside) out.push(i);
    }
    return out;
  }

  function overlay(path, closed) {
    const o = $("overlay"), ctx = o.getContext("2d"), d = window.devicePixelRatio || 1;
    ctx.setTransform(d, 0, 0, d, 0, 0); ctx.clearRect(0, 0, o.width, o.height);
    if (!path || path.length < 2) return;
    ctx.strokeStyle = "#ffca28"; ctx.lineWidth = 1.5; ctx.fillStyle = "rgba(255,202,40,0.12)";
    ctx.beginPath(); ctx.moveTo(path[0].x, path[0].y);
    for (const p of path.slice(1)) ctx.lineTo(p.x, p.y);
    if (closed) { ctx.closePath(); ctx.fill(); }
    ctx.stroke();
  }

  E.select = (ids) => {  // a selection (row ids) from the map: dim the rest, fill the gallery with it
    E.selection = ids;
    recolor();
    $("info").textContent = ids ? `${ids.length} selected` : `${E.pointCount} images`;
    gallery.offset = 0;
    return loadGallery();
  };
  E.selectPolygon = (screenPoints) => E.select(insidePolygon(screenPoints.map((p) => toWorld(p.x, p.y))));

  function setupMouse() {
    const c = $("map");
    let down = null, path = null;
    c.addEventListener("mousedown", (e) => {
      const r = c.getBoundingClientRect();
      down = { x: e.clientX - r.left, y: e.clientY - r.top, cx: view.cx, cy: view.cy, moved: false };
      path = [{ x: down.x, y: down.y }];
    });
    window.addEventListener("mousemove", (e) => {
      if (!down) return;
      const r = c.getBoundingClientRect(), x = e.clientX - r.left, y = e.clientY - r.top;
      if (Math.abs(x - down.x) + Math.abs(y - down.y) > 4) down.moved = true;
      if (mode === "pan") {
        const { k } = scaleOf();
        view.cx = down.cx - (x - down.x) / k; view.cy = down.cy + (y - down.y) / k; draw();
      } else if (mode === "box") {
        path = [{ x: down.x, y: down.y }, { x, y: down.y }, { x, y }, { x: down.x, y }]; overlay(path, true);
      } else { path.push({ x, y }); overlay(path, false); }
    });
    window.addEventListener("mouseup", (e) => {
      if (!down) return;
      const r = c.getBoundingClientRect(), x = e.clientX - r.left, y = e.clientY - r.top, was = down;
      down = null;
      if (!was.moved) {
        overlay(null);
        const i = nearest(x, y, 10);
        if (i >= 0) showNeighbours(i).catch(fail);
        return;
      }
      if (mode !== "pan" && path.length >= 3) {
        E.timings.selectStart = performance.now();
        overlay(path, true);
        E.selectPolygon(path).catch(fail);
      }
    });
    c.addEventListener("wheel", (e) => {
      e.preventDefault();
      const r = c.getBoundingClientRect(), px = e.clientX - r.left, py = e.clientY - r.top;
      const before = toWorld(px, py);
      view.zoom = Math.min(500, Math.max(0.5, view.zoom * Math.exp(-e.deltaY * 0.0015)));
      const after = toWorld(px, py);
      view.cx += before.x - after.x; view.cy += before.y - after.y;
      overlay(null); draw();
    }, { passive: false });
    for (const m of ["pan", "box", "lasso"]) {
      $("mode-" + m).addEventListener("click", () => {
        mode = m;
        document.querySelectorAll("button.mode").forEach((b) => b.classList.toggle("active", b.id === "mode-" + m));
      });
    }
    $("reset-view").addEventListener("click", () => { view.cx = 0; view.cy = 0; view.zoom = 1; overlay(null); draw(); });
    $("clear-selection").addEventListener("click", () => { overlay(null); E.select(null).catch(fail); });
    window.addEventListener("resize", () => draw());
    $("upload").addEventListener("change", (e) => {
      if (e.target.files.length) uploadSearch(e.target.files[0]).catch(fail);
    });
    c.addEventListener("dragover", (e) => e.preventDefault());
    c.addEventListener("drop", (e) => {
      e.preventDefault();
      if (e.dataTransfer.files.length) uploadSearch(e.dataTransfer.files[0]).catch(fail);
    });
  }

  // ------------------------------------------------------------------------------------------- gallery
  function esc(s) {
    return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }
  function filters() {
    const num = (id) => { const v = $(id).value; return v === "" ? null : Number(v); };
    return { view: $("view").value, label: $("f-label").value || null, min_score: num("f-min"), max_score: num("f-max"), text: $("f-text").value };
  }

  function reviewControls(it) {
    if (!meta.review || !it.reviewable) return "";
    const opts = classes.map((c) => `<option value="${esc(c)}">${esc(c)}</option>`).join("");
    return `<div class="review"><button data-act="accept" title="accept">✓</button>` +
      `<button data-act="unknown" title="unknown">?</button>` +
      `<select data-act="correct" title="correct the label"><option value="">label…</option>${opts}</select></div>`;
  }

  function itemHtml(it) {
    const score = it.ood === null ? "" : ` · ood ${it.ood.toFixed(3)}`;
    const pred = it.prediction && it.prediction !== it.label ? ` (pred ${esc(it.prediction)})` : "";
    return `<div class="item ${esc(it.review || "")}" data-id="${it.id}" data-path="${esc(it.path)}" data-label="${esc(it.label)}">` +
      `<img src="/thumb/${it.id}" alt="">` +
      `<div class="cap" title="${esc(it.path)}"><b class="label">${esc(it.label || "—")}</b>${pred}${score}</div>` +
      `<div class="cap">${esc(it.path.split("/").pop())}${it.group !== null && it.group >= 0 ? " · group " + it.group : ""}</div>` +
      reviewControls(it) + "</div>";
  }

  async function loadGallery() {
    const body = { ...filters(), ids: E.selection, offset: gallery.offset, limit: gallery.limit };
    const res = await (await api("/api/items", body)).json();
    gallery.total = res.total;
    $("gallery").innerHTML = res.items.map(itemHtml).join("");
    $("page-info").textContent = res.total ? `${res.offset + 1}–${res.offset + res.items.length} of ${res.total}` : "nothing";
    E.galleryVersion += 1;
    E.timings.galleryFilled = performance.now();
    const imgs = [...$("gallery").querySelectorAll("img")];
    Promise.all(imgs.map((im) => (im.complete ? null : new Promise((ok) => { im.onload = ok; im.onerror = ok; }))))
      .then(() => { E.timings.galleryImages = performance.now(); });
    return res;
  }

  async function review(action, ids, label) {
    const res = await (await api("/api/review", { action, ids, label })).json();
    status(`${action}: ${res.changed} image(s) written to the manifest` + (res.skipped ? `, ${res.skipped} not in it` : ""));
    $("undo").disabled = !res.can_undo;
    await refreshAfterReview();
  }
  async function loadScatter() {
    const rows = await (await api("/api/scatter")).json();
    $("scatter").innerHTML = rows.length ? "scattered classes: " + rows.slice(0, 8).map((r) =>
      `<a data-label="${esc(r.label)}">${esc(r.label)} ${r.spread.toFixed(2)}</a>`).join("") : "";
  }
  async function refreshAfterReview() {
    meta = await (await api("/api/meta")).json();
    fillClasses();
    await loadScatter();
    if ($("color-by").value === "label") await loadColor();
    await loadGallery();
  }

  function setupGallery() {
    $("gallery").addEventListener("click", (e) => {
      const item = e.target.closest(".item");
      if (!item) return;
      const id = Number(item.dataset.id), act = e.target.dataset.act;
      if (e.target.tagName === "IMG") showNeighbours(id).catch(fail);
      else if (act === "accept" || act === "unknown") review(act, [id]).catch(fail);
    });
    $("gallery").addEventListener("change", (e) => {
      const item = e.target.closest(".item");
      if (item && e.target.dataset.act === "correct" && e.target.value) review("correct", [Number(item.dataset.id)], e.target.value).catch(fail);
    });
    const reload = () => { gallery.offset = 0; loadGallery().catch(fail); };
    $("scatter").addEventListener("click", (e) => {
      if (e.target.dataset.label === undefined) return;
      $("f-label").value = e.target.dataset.label;
      reload();
    });
    for (const id of ["view", "f-label", "f-min", "f-max"]) $(id).addEventListener("change", reload);
    $("f-text").addEventListener("input", reload);
    $("prev").addEventListener("click", () => { gallery.offset = Math.max(0, gallery.offset - gallery.limit); loadGallery().catch(fail); });
    $("next").addEventListener("click", () => {
      if (gallery.offset + gallery.limit < gallery.total) { gallery.offset += gallery.limit; loadGallery().catch(fail); }
    });
    const bulkIds = () => E.selection || [...$("gallery").querySelectorAll(".item")].map((x) => Number(x.dataset.id));
    $("bulk-accept").addEventListener("click", () => review("accept", bulkIds()).catch(fail));
    $("bulk-unknown").addEventListener("click", () => review("unknown", bulkIds()).catch(fail));
    $("bulk-correct").addEventListener("change", (e) => { if (e.target.value) review("correct", bulkIds(), e.target.value).catch(fail); e.target.value = ""; });
    $("undo").addEventListener("click", async () => {
      const res = await (await api("/api/undo", {})).json();
      status(res.undone === null ? "nothing to undo" : `undid change ${res.undone}`);
      $("undo").disabled = !res.can_undo;
      await refreshAfterReview();
    });
  }

  // ---------------------------------------------------------------------------------------- neighbours
  function showHits(title, hits) {
    const name = meta.metric === "ip" ? "similarity" : "sq. distance";
    $("neighbours").innerHTML = `<div class="query">${title}</div><div class="hits">` + hits.map((h) =>
      `<div class="hit" data-id="${h.id}" data-path="${esc(h.path)}" data-score="${h.score}">` +
      `<img src="/thumb/${h.id}" alt=""><div>${h.rank}. ${name} ${h.score.toFixed(4)}</div>` +
      `<div class="cap">${esc(h.label || "")} ${esc(h.path.split("/").pop())}</div></div>`).join("") + "</div>";
  }
  async function showNeighbours(id) {
    const res = await (await api(`/api/neighbours/${id}?k=10`)).json();
    const q = res.query;
    showHits(`<span class="query-path" data-id="${q.id}" data-path="${esc(q.path)}">neighbours of <b>${esc(q.path)}</b> [${esc(q.label)}]</span>`, res.results);
    E.timings.neighbours = performance.now();
  }
  async function uploadSearch(file) {
    status("searching " + file.name + "…");
    const form = new FormData();
    form.append("file", file);
    const res = await (await api("/api/search?k=10", form, true)).json();
    showHits(`<span class="query-path upload">neighbours of the uploaded photo <b>${esc(file.name)}</b></span>`, res.results);
    status("");
  }

  // ----------------------------------------------------------------------------------------------- start
  function fillClasses() {
    classes = (meta.colorings.label.names || []).slice();
    if (meta.colorings.prediction) for (const c of meta.colorings.prediction.names) if (!classes.includes(c)) classes.push(c);
    classes.sort();
    const keep = $("f-label").value;
    $("f-label").innerHTML = `<option value="">any label</option>` + classes.map((c) => `<option>${esc(c)}</option>`).join("");
    $("f-label").value = keep;
    $("bulk-correct").innerHTML = `<option value="">set label of all…</option>` + classes.map((c) => `<option>${esc(c)}</option>`).join("");
  }

  async function start() {
    initGL();
    const [m, p] = await Promise.all([api("/api/meta").then((r) => r.json()), api("/api/points").then((r) => r.arrayBuffer())]);
    meta = m; xy = new Float32Array(p); E.pointCount = xy.length / 2;
    gl.bindBuffer(gl.ARRAY_BUFFER, bufPos); gl.bufferData(gl.ARRAY_BUFFER, xy, gl.STATIC_DRAW);
    $("color-by").innerHTML = Object.keys(meta.colorings).map((k) => `<option>${k}</option>`).join("");
    for (const [v, t] of [["queue", "review queue (uncertain first)"], ["ood", "most out-of-distribution"], ["duplicates", "duplicate groups"]]) {
      if ((v === "queue" && meta.review) || (v === "ood" && meta.colorings.ood) || (v === "duplicates" && meta.colorings.duplicates)) {
        $("view").insertAdjacentHTML("beforeend", `<option value="${v}">${t}</option>`);
      }
    }
    $("score-filter").hidden = !meta.colorings.ood;
    $("bulk").hidden = !meta.review;
    $("undo").disabled = !meta.can_undo;
    fillClasses();
    await loadColor();
    loadScatter().catch(fail);
    E.timings.firstPaint = performance.now();
    $("info").textContent = `${E.pointCount} images · ${meta.layout}`;
    $("map").dataset.points = String(E.pointCount);
    setupMouse(); setupGallery();
    E.ready = true;
    await loadGallery();
  }
  start().catch(fail);
})();
