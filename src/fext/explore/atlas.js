// FeXT atlas: the map of a collection, drawn on a canvas from data embedded in this page.
// Everything (data, thumbnails) is in the page; the only other files it may open are the
// original images, by relative path, when one is clicked.
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("atlas-data").textContent);
  const N = D.n, K = D.neighbours;

  function bytes(b64) {
    const s = atob(b64), out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out.buffer;
  }
  const X = new Float32Array(bytes(D.x)), Y = new Float32Array(bytes(D.y));
  const CL = new Int16Array(bytes(D.cluster)), SCORE = new Float32Array(bytes(D.score));
  const WHY = new Map(D.outliers.map((r, i) => [r, D.why[i]]));  // the top outliers: why each is unusual
  const NB = new Int32Array(bytes(D.nbr)), NS = new Float32Array(bytes(D.nsim));
  const PRESENT = new Uint8Array(bytes(D.present));
  const PATHS = D.paths;

  // Colours: clusters by golden-angle hues; outlier score by rank on a dark-to-hot ramp.
  function hsl(h, s, l) {
    s /= 100; l /= 100;
    const f = (n) => { const k = (n + h / 30) % 12; return l - s * Math.min(l, 1 - l) * Math.max(-1, Math.min(k - 3, 9 - k, 1)); };
    return [f(0) * 255, f(8) * 255, f(4) * 255].map(Math.round);
  }
  const PALETTE = []; for (let c = 0; c < Math.max(1, D.k); c++) PALETTE.push(hsl((c * 137.508) % 360, 70, 58));
  const RAMP = [[49, 54, 149], [69, 117, 180], [116, 173, 209], [254, 224, 144], [244, 109, 67], [215, 48, 39], [255, 255, 255]];
  const rank = new Float32Array(N);
  Array.from({ length: N }, (_, i) => i).sort((a, b) => SCORE[a] - SCORE[b]).forEach((r, i) => { rank[r] = N > 1 ? i / (N - 1) : 1; });
  function ramp(t) {
    t = Math.pow(t, 4) * (RAMP.length - 1);  // most images are ordinary: spend the colours on the top
    const i = Math.min(RAMP.length - 2, Math.floor(t)), f = t - i;
    return RAMP[i].map((v, j) => Math.round(v + (RAMP[i + 1][j] - v) * f));
  }
  const packed = (c) => (255 << 24) | (c[2] << 16) | (c[1] << 8) | c[0];  // little-endian RGBA
  const colourBy = { cluster: new Uint32Array(N), score: new Uint32Array(N) };
  for (let i = 0; i < N; i++) { colourBy.cluster[i] = packed(PALETTE[CL[i]] || [200, 200, 200]); colourBy.score[i] = packed(ramp(rank[i])); }

  // Thumbnails: sprite sheets decoded once; tiles copied onto small canvases on demand.
  const sheets = D.sheets.map((uri) => { const im = new Image(); im.src = uri; return im; });
  const sheetsReady = Promise.all(sheets.map((im) => im.decode().catch(() => null)));
  let sheetsLoaded = false;
  function tileOf(i) {  // [sheet, x, y] of row i's thumbnail in the sprite sheets
    const per = D.columns * D.columns, cell = i % per;
    return [sheets[Math.floor(i / per)], (cell % D.columns) * D.tile, Math.floor(cell / D.columns) * D.tile];
  }
  function thumb(i, size) {
    const c = document.createElement("canvas");
    c.width = c.height = size || D.tile; c.className = "thumb"; c.dataset.row = i; c.title = PATHS[i];
    if (!PRESENT[i] || !sheets.length) { c.classList.add("missing"); return c; }
    const [sheet, sx, sy] = tileOf(i);
    sheetsReady.then(() => { c.getContext("2d").drawImage(sheet, sx, sy, D.tile, D.tile, 0, 0, c.width, c.height); c.dataset.drawn = "1"; });
    return c;
  }

  // Spatial grid over [0,1]^2 for hover and click look-ups.
  const G = 256, cellOf = (v) => Math.min(G - 1, Math.max(0, Math.floor(v * G)));
  const start = new Int32Array(G * G + 1), items = new Int32Array(N);
  for (let i = 0; i < N; i++) start[cellOf(Y[i]) * G + cellOf(X[i]) + 1]++;
  for (let c = 0; c < G * G; c++) start[c + 1] += start[c];
  const fill = start.slice(0, G * G);
  for (let i = 0; i < N; i++) items[fill[cellOf(Y[i]) * G + cellOf(X[i])]++] = i;

  // The typical map distance between an image and its nearest other one (median over up to 2,000):
  // once zoomed in so that it spans a thumbnail, the points become their thumbnails and hardly overlap.
  function nearestGap(i) {
    const cx = cellOf(X[i]), cy = cellOf(Y[i]);
    let best = Infinity;
    for (let ring = 0; ring < G && (ring - 1) / G <= Math.sqrt(best); ring++) {
      for (let y = cy - ring; y <= cy + ring; y++) for (let x = cx - ring; x <= cx + ring; x++) {
        if (Math.max(Math.abs(x - cx), Math.abs(y - cy)) !== ring || x < 0 || y < 0 || x >= G || y >= G) continue;
        for (let k = start[y * G + x]; k < start[y * G + x + 1]; k++) {
          const j = items[k], d = (X[j] - X[i]) ** 2 + (Y[j] - Y[i]) ** 2;
          if (j !== i && d > 0 && d < best) best = d;
        }
      }
    }
    return Math.sqrt(best);
  }
  const GAP = (() => {
    const step = Math.max(1, Math.floor(N / 2000)), gaps = [];
    for (let i = 0; i < N; i += step) { const g = nearestGap(i); if (isFinite(g)) gaps.push(g); }
    gaps.sort((a, b) => a - b);
    return gaps.length ? gaps[Math.floor(gaps.length / 2)] : 1;
  })();
  const THUMB_MIN = 28, THUMB_MAX = 96;  // CSS pixels: smaller thumbnails say nothing, larger hide the map

  // Highlight: duplicate groups and the top outliers: those listed below the map whose score reaches
  // 3.5, the modified z-score above which Iglewicz and Hoaglin call a value an outlier.
  const OUTLIER_Z = 3.5;
  const MARK = new Uint8Array(N);  // 1: in a duplicate group; 2: a top outlier
  for (const g of D.duplicates) for (const r of g.rows) MARK[r] = 1;
  for (const r of D.outliers) if (SCORE[r] >= OUTLIER_Z) MARK[r] = 2;
  const MARK_COLOUR = [0, 0xffffd24a, 0xff2850ff];  // (little-endian) cyan-ish for duplicates, red for outliers
  const MARK_CSS = ["", "#4ad2ff", "#ff5028"];

  const canvas = document.getElementById("map"), ctx = canvas.getContext("2d");
  const view = { scale: 1, ox: 0, oy: 0 };  // screen = (data * size) * scale + offset
  let W = 0, H = 0, dpr = 1, side = 1, image = null, hovered = -1, focused = -1;
  let mode = "pan", colour = "cluster", drag = null, lasso = null, highlight = false, thumbsDrawn = 0;
  const base = document.createElement("canvas"), baseCtx = base.getContext("2d");  // the map without the pointer's marks
  let match = null;  // Uint8Array of search matches, or null
  const selected = new Uint8Array(N);
  for (const r of D.selection || []) selected[r] = 1;  // a loaded `fext select` file starts selected

  function resize() {
    dpr = window.devicePixelRatio || 1;
    const r = canvas.getBoundingClientRect();
    W = Math.max(1, Math.round(r.width * dpr)); H = Math.max(1, Math.round(r.height * dpr));
    canvas.width = W; canvas.height = H; base.width = W; base.height = H; side = Math.min(W, H) * 0.94;
    view.ox = (W - side * view.scale) / 2; view.oy = (H - side * view.scale) / 2;
    render();
  }
  const sx = (i) => X[i] * side * view.scale + view.ox, sy = (i) => Y[i] * side * view.scale + view.oy;
  const toData = (px, py) => [(px - view.ox) / (side * view.scale), (py - view.oy) / (side * view.scale)];

  function render() {
    image = ctx.createImageData(W, H);
    const buf = new Uint32Array(image.data.buffer), cols = colourBy[colour];
    buf.fill(0xff1c1a17);
    const r = (N < 2000 ? 2 : 1) + (view.scale > 6 ? 1 : 0);  // dot radius in device pixels: larger for few points
    const plot = (i, c, rad) => {
      const x = Math.round(sx(i)), y = Math.round(sy(i));
      for (let dy = -rad; dy <= rad; dy++) for (let dx = -rad; dx <= rad; dx++) {
        const px = x + dx, py = y + dy;
        if (px >= 0 && py >= 0 && px < W && py < H) buf[py * W + px] = c;
      }
    };
    const dim = 0xff3a3632, shown = (i) => !match || match[i];
    for (let i = 0; i < N; i++) if (!shown(i) || (highlight && !MARK[i])) plot(i, dim, highlight && shown(i) ? r - 1 : 0);
    for (let i = 0; i < N; i++) if (shown(i) && !highlight) plot(i, cols[i], r);
    for (let i = 0; i < N; i++) if (shown(i) && highlight && MARK[i]) plot(i, MARK_COLOUR[MARK[i]], r + 1);
    for (let i = 0; i < N; i++) if (selected[i]) plot(i, 0xffffffff, r + 1);
    baseCtx.putImageData(image, 0, 0);
    drawThumbnails(shown);
    overlay();
  }

  // Zoomed in far enough, each point is drawn as its thumbnail, framed white when selected and in
  // the highlight colour when highlighted.
  const thumbnailSide = () => Math.min(GAP * side * view.scale * 0.9, THUMB_MAX * dpr);  // device pixels
  function drawThumbnails(shown) {
    thumbsDrawn = 0;
    const t = thumbnailSide();
    if (!sheetsLoaded || !sheets.length || t < THUMB_MIN * dpr) return;
    baseCtx.lineWidth = 2 * dpr;
    for (let i = 0; i < N; i++) {
      const x = sx(i) - t / 2, y = sy(i) - t / 2;
      if (!PRESENT[i] || !shown(i) || x > W || y > H || x + t < 0 || y + t < 0) continue;
      const [sheet, tx, ty] = tileOf(i);
      baseCtx.globalAlpha = highlight && !MARK[i] ? 0.35 : 1;
      baseCtx.drawImage(sheet, tx, ty, D.tile, D.tile, x, y, t, t);
      baseCtx.globalAlpha = 1;
      const frame = selected[i] ? "#fff" : highlight && MARK[i] ? MARK_CSS[MARK[i]] : "";
      if (frame) { baseCtx.strokeStyle = frame; baseCtx.strokeRect(x, y, t, t); }
      thumbsDrawn++;
    }
  }

  function overlay() {
    ctx.drawImage(base, 0, 0);
    ctx.lineWidth = 1.5 * dpr;
    if (focused >= 0) { ctx.strokeStyle = "#fff"; ring(focused, 7); }
    if (hovered >= 0) { ctx.strokeStyle = "#ffd54a"; ring(hovered, 5); }
    if (drag && mode === "box") {
      ctx.strokeStyle = "#fff"; ctx.setLineDash([4 * dpr, 3 * dpr]);
      ctx.strokeRect(drag.x0, drag.y0, drag.x1 - drag.x0, drag.y1 - drag.y0); ctx.setLineDash([]);
    }
    if (lasso && lasso.length > 1) {
      ctx.strokeStyle = "#fff"; ctx.beginPath(); ctx.moveTo(lasso[0][0], lasso[0][1]);
      for (const p of lasso) ctx.lineTo(p[0], p[1]);
      ctx.closePath(); ctx.stroke();
    }
  }
  function ring(i, rad) { ctx.beginPath(); ctx.arc(sx(i), sy(i), rad * dpr, 0, 2 * Math.PI); ctx.stroke(); }

  function nearest(px, py, radius) {
    const [dx, dy] = toData(px, py), rd = radius / (side * view.scale);
    let best = -1, bestD = rd * rd;
    for (let cy = cellOf(dy - rd); cy <= cellOf(dy + rd); cy++) for (let cx = cellOf(dx - rd); cx <= cellOf(dx + rd); cx++) {
      const c = cy * G + cx;
      for (let k = start[c]; k < start[c + 1]; k++) {
        const i = items[k];
        if (match && !match[i]) continue;
        const d = (X[i] - dx) ** 2 + (Y[i] - dy) ** 2;
        if (d < bestD) { bestD = d; best = i; }
      }
    }
    return best;
  }
  const pointer = (e) => { const r = canvas.getBoundingClientRect(); return [(e.clientX - r.left) * dpr, (e.clientY - r.top) * dpr]; };

  const tip = document.getElementById("tip");
  function showTip(i, e) {
    if (i < 0) { tip.hidden = true; tip.dataset.row = ""; return; }
    if (tip.dataset.row !== String(i)) {
      tip.replaceChildren(thumb(i, Math.max(96, D.tile * 2)), Object.assign(document.createElement("div"), { textContent: PATHS[i] }));
      tip.dataset.row = String(i);
    }
    tip.hidden = false;
    tip.style.left = Math.min(window.innerWidth - 240, e.clientX + 14) + "px";
    tip.style.top = Math.min(window.innerHeight - 160, e.clientY + 14) + "px";
  }

  canvas.addEventListener("mousedown", (e) => {
    const [x, y] = pointer(e);
    drag = { x0: x, y0: y, x1: x, y1: y, ox: view.ox, oy: view.oy, moved: false };
    if (mode === "lasso") lasso = [[x, y]];
  });
  window.addEventListener("mousemove", (e) => {
    const [x, y] = pointer(e);
    if (drag) {
      drag.moved = drag.moved || Math.abs(x - drag.x0) + Math.abs(y - drag.y0) > 3 * dpr;
      drag.x1 = x; drag.y1 = y;
      if (mode === "pan") { view.ox = drag.ox + x - drag.x0; view.oy = drag.oy + y - drag.y0; render(); return; }
      if (mode === "lasso") lasso.push([x, y]);
      overlay(); return;
    }
    if (e.target !== canvas) { if (hovered >= 0) { hovered = -1; showTip(-1); overlay(); } return; }
    const h = nearest(x, y, 8 * dpr);
    if (h !== hovered) { hovered = h; overlay(); }
    showTip(h, e);
  });
  window.addEventListener("mouseup", (e) => {
    if (!drag) return;
    const d = drag; drag = null;
    if (!d.moved) { const [x, y] = pointer(e); const i = nearest(x, y, 8 * dpr); if (i >= 0) focus(i); lasso = null; overlay(); return; }
    if (mode === "box") selectWhere((i) => within(sx(i), d.x0, d.x1) && within(sy(i), d.y0, d.y1), e.shiftKey);
    if (mode === "lasso" && lasso) { const poly = lasso; lasso = null; selectWhere((i) => inside(sx(i), sy(i), poly), e.shiftKey); }
    render();
  });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const [x, y] = pointer(e), f = Math.exp(-e.deltaY * 0.0015);
    const s = Math.min(400, Math.max(0.5, view.scale * f)), g = s / view.scale;
    view.ox = x - (x - view.ox) * g; view.oy = y - (y - view.oy) * g; view.scale = s; render();
  }, { passive: false });
  const within = (v, a, b) => v >= Math.min(a, b) && v <= Math.max(a, b);
  function inside(x, y, poly) {
    let c = false;
    for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
      const [xi, yi] = poly[i], [xj, yj] = poly[j];
      if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) c = !c;
    }
    return c;
  }
  function selectWhere(test, add) {
    if (!add) selected.fill(0);
    for (let i = 0; i < N; i++) if ((!match || match[i]) && test(i)) selected[i] = 1;
    updateSelection();
  }
  function updateSelection() {
    let n = 0; for (let i = 0; i < N; i++) n += selected[i];
    document.getElementById("selected-count").textContent = n;
    document.getElementById("download").disabled = n === 0;
  }

  function focus(i) {
    focused = i; overlay();
    const panel = document.getElementById("detail");
    const big = document.createElement("img");
    big.alt = PATHS[i]; big.className = "large";
    const fallback = thumb(i, 256); fallback.className = "large";
    if (D.image_base !== null) {
      big.onerror = () => big.replaceWith(fallback);
      big.src = D.image_base + PATHS[i].split("/").map(encodeURIComponent).join("/");
    }
    const list = document.createElement("ol"); list.id = "neighbours";
    for (let k = 0; k < K; k++) {
      const j = NB[i * K + k]; if (j < 0) continue;
      const li = document.createElement("li"); li.dataset.row = j;
      li.append(thumb(j, 48), Object.assign(document.createElement("span"), { className: "sim", textContent: NS[i * K + k].toFixed(3) }),
        ...(D.bands ? [Object.assign(document.createElement("span"), { className: "band", textContent: bandOf(NS[i * K + k]) })] : []),
        Object.assign(document.createElement("span"), { className: "path", textContent: PATHS[j] }));
      li.onclick = () => focus(j);
      list.append(li);
    }
    const info = document.createElement("p");
    info.textContent = `cluster ${CL[i]} · outlier score ${SCORE[i].toFixed(2)}` + (WHY.has(i) ? ` (${WHY.get(i)})` : "");
    panel.replaceChildren(D.image_base !== null ? big : fallback,
      Object.assign(document.createElement("h3"), { textContent: PATHS[i] }), info,
      Object.assign(document.createElement("h4"), { textContent: `${K} nearest neighbours (cosine similarity)` }), list);
  }

  // What a score means in this collection: the bands fext encode measured on edited copies of its images
  // (fext.similarity.band_of: the first band whose lower edge the score reaches; the last has none).
  const bandOf = (score) => D.bands.find(([, edge]) => edge === null || score >= edge)[0];

  document.getElementById("colour").addEventListener("change", (e) => { colour = e.target.value; render(); });
  document.getElementById("highlight").addEventListener("change", (e) => { highlight = e.target.checked; render(); });
  sheetsReady.then(() => { sheetsLoaded = true; render(); });
  document.querySelectorAll("input[name=mode]").forEach((el) => el.addEventListener("change", (e) => { mode = e.target.value; }));
  document.getElementById("search").addEventListener("input", (e) => {
    const q = e.target.value.trim().toLowerCase();
    let n = 0;
    if (!q) match = null;
    else { match = new Uint8Array(N); for (let i = 0; i < N; i++) if (PATHS[i].toLowerCase().includes(q)) { match[i] = 1; n++; } }
    document.getElementById("match-count").textContent = q ? `${n} match${n === 1 ? "" : "es"}` : "";
    render();
  });
  document.getElementById("clear").onclick = () => { selected.fill(0); updateSelection(); render(); };
  document.getElementById("reset").onclick = () => { view.scale = 1; resize(); };
  document.getElementById("download").onclick = () => {
    const q = (s) => (/[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);
    const lines = ["path,cluster,outlier_score"];
    for (let i = 0; i < N; i++) if (selected[i]) lines.push(`${q(PATHS[i])},${CL[i]},${SCORE[i].toFixed(4)}`);
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
    a.download = "selection.csv"; a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  };

  function gallery(rows, size, caption) {
    const div = document.createElement("div"); div.className = "strip";
    for (const r of rows) {
      const fig = document.createElement("figure"); fig.append(thumb(r, size));
      if (caption) fig.append(Object.assign(document.createElement("figcaption"), { textContent: caption(r) }));
      fig.onclick = () => { focus(r); document.getElementById("map").scrollIntoView({ behavior: "smooth" }); };
      div.append(fig);
    }
    return div;
  }
  const clusterRows = document.getElementById("cluster-rows");
  for (const c of D.clusters) {
    const tr = document.createElement("tr"), sw = document.createElement("span");
    sw.className = "swatch"; sw.style.background = `rgb(${PALETTE[c.cluster].join(",")})`;
    const cells = [[sw, ` ${c.cluster}`], [c.size], [c.spread.toFixed(3)], [gallery([c.medoid], 64, (r) => PATHS[r])], [gallery(c.typical, 48)]];
    for (const parts of cells) { const td = document.createElement("td"); td.append(...parts); tr.append(td); }
    clusterRows.append(tr);
  }
  document.getElementById("outlier-strip").append(gallery(D.outliers, 64, (r) => `${SCORE[r].toFixed(2)} · ${WHY.get(r)}`));
  if ((D.selection || []).length) {
    document.getElementById("selection-section").hidden = false;
    document.getElementById("selection-strip").append(gallery(D.selection, 64, (r) => `${D.selection.indexOf(r) + 1}. ${PATHS[r]}`));
  }
  const KIND = { exact: "byte-identical files", perceptual: "same picture (perceptual hash)", feature: "similar feature vectors" };
  const dups = document.getElementById("duplicate-groups");
  for (const g of D.duplicates) {
    const div = gallery(g.rows, 64, (r) => PATHS[r]);
    div.prepend(Object.assign(document.createElement("span"), { className: "group", textContent: `${g.rows.length} images, ${KIND[g.kind]}, similarity ≥ ${g.min.toFixed(3)}` }));
    dups.append(div);
  }

  window.addEventListener("resize", resize);
  updateSelection();
  resize();
  // A small handle for scripted checks (and the curious): where point i is on screen, in CSS pixels.
  window.atlas = {
    n: N, focus, ready: sheetsReady,
    screenOf: (i) => { const r = canvas.getBoundingClientRect(); return [r.left + sx(i) / dpr, r.top + sy(i) / dpr]; },
    selectedRows: () => { const out = []; for (let i = 0; i < N; i++) if (selected[i]) out.push(i); return out; },
    // Zoom by a factor around the centre of the map (as the wheel does around the pointer).
    zoom: (f) => { const g = Math.min(400, Math.max(0.5, view.scale * f)) / view.scale; view.ox = W / 2 - (W / 2 - view.ox) * g; view.oy = H / 2 - (H / 2 - view.oy) * g; view.scale *= g; render(); },
    thumbnailsDrawn: () => thumbsDrawn, thumbnailSide: () => thumbnailSide() / dpr, smallestThumbnail: THUMB_MIN,
  };
  document.body.dataset.ready = "1";
})();
