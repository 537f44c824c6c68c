// rerankq console, the embedding map. Items (lines of text, references or JSON; dropped files, uploaded through
// POST /v1/media; a JSONL file's lines) → POST /v1/embeddings (base64 vectors) → POST /v1/map (t-SNE or PCA, and
// a query's neighbours) → points on a canvas coloured by label or modality, thumbnails on hover, PNG and CSV.
// Uses app.js's helpers: $, api, failure, upload, asItem, kindOf, mediaElement, refKind, isRef, download, csvCell.
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"];  // matplotlib's tab10, as `rerankq map` draws
const NO_LABEL = "(no label)";
const MODALITIES = ["text", "image", "video"];
const JSONL_NAME = /\.(jsonl|ndjson|json|txt)$/i;
// items: what was embedded; kept: those with a vector; layout: /v1/map's answer; screen: kept points on the canvas
// query: the last query's {text, vector, k}, kept so that another layout method keeps its neighbours
const mapState = { files: [], items: [], kept: [], vectors: [], layout: null, model: "", screen: [], previews: new Map(),
  query: null, hover: -1 };

function mapStatus(text, isError) {
  const el = $("#map-status");
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

// --- items --------------------------------------------------------------------------------------------------
function jsonItem(line, number) {
  let data;
  try { data = JSON.parse(line); } catch (e) { throw new Error(`line ${number}: not JSON (${e.message})`); }
  if (typeof data === "string") return { side: { text: data }, label: null, line: number };
  if (!data || typeof data !== "object" || Array.isArray(data)) {
    throw new Error(`line ${number}: expected a string or an object with any of text, image, video, label`);
  }
  const side = {};
  for (const [key, value] of Object.entries(data)) {
    if (key === "label") continue;
    if (!MODALITIES.includes(key)) throw new Error(`line ${number}, field ${key}: unknown field (allowed: text, image, video, label)`);
    side[key] = value;
  }
  if (!Object.keys(side).length) throw new Error(`line ${number}: needs at least one of text, image, video`);
  return { side: side, label: data.label === undefined || data.label === null ? null : String(data.label), line: number };
}

function lineItem(line, number) {
  if (line.startsWith("{") || line.startsWith('"')) return jsonItem(line, number);
  if (isRef(line)) return { side: { [refKind(line)]: line }, label: null, line: number };
  return { side: { text: line }, label: null, line: number };
}

function typedItems() {
  const items = [];
  $("#map-items").value.split("\n").forEach((raw, i) => { const line = raw.trim(); if (line) items.push(lineItem(line, i + 1)); });
  return items;
}

async function allItems() {
  const items = typedItems();
  for (const file of mapState.files) {
    const uri = await upload(file);
    items.push({ side: { [file.kind]: uri }, label: null, line: null, file: file });
  }
  return items;
}

function modality(side) { return MODALITIES.filter((m) => side[m] !== undefined).join("+"); }

function firstRef(side) {
  for (const kind of ["image", "video"]) {
    const refs = side[kind];
    if (refs) return { kind: kind, ref: Array.isArray(refs) ? refs[0] : refs, more: Array.isArray(refs) ? refs.length - 1 : 0 };
  }
  return null;
}

function describeItem(item) {
  const first = firstRef(item.side);
  if (!first) return String(item.side.text || "");
  return first.ref + (first.more ? ` (+${first.more})` : "");
}

function renderMapFiles() {
  $("#map-preview").replaceChildren(...mapState.files.map((item, i) => thumb(item, () => { mapState.files.splice(i, 1); renderMapFiles(); })));
}

async function addMapFiles(files) {
  for (const file of Array.from(files)) {
    if (JSONL_NAME.test(file.name) || /json|text\/plain/.test(file.type)) {
      const text = (await file.text()).trim();
      const box = $("#map-items");
      box.value = (box.value.trim() ? box.value.trimEnd() + "\n" : "") + text;
    } else if (/^(image|video)\//.test(file.type) || VIDEO_EXT.test(file.name) || !file.type) {
      mapState.files.push(asItem(file));
    }
  }
  renderMapFiles();
}

// --- embedding and layout -----------------------------------------------------------------------------------
async function postJson(path, body) {
  const response = await api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  if (!response.ok) throw await failure(response);
  return response.json();
}

async function embedSides(sides) {
  const body = { input: sides, encoding_format: "base64" };
  if ($("#map-model").value) body.model = $("#map-model").value;
  const answer = await postJson("/v1/embeddings", body);
  const vectors = new Array(sides.length).fill(null);
  for (const d of answer.data) vectors[d.index] = d.embedding || null;
  return { vectors: vectors, model: answer.model || "" };
}

async function layOut() {
  const body = { vectors: mapState.vectors, method: $("#map-method").value };
  if (mapState.query) Object.assign(body, { query: mapState.query.vector, neighbours: mapState.query.k });
  const layout = await postJson("/v1/map", body);
  layout.query_text = mapState.query ? mapState.query.text : "";
  return layout;
}

async function relayout() {
  if (!mapState.layout) return;
  try {
    mapStatus("laying out…");
    mapState.layout = await layOut();
    renderMap();
    mapStatus(summary());
  } catch (err) {
    mapStatus(String(err.message || err), true);
  }
}

async function runMap() {
  $("#map-run").disabled = true;
  try {
    let items = typedItems();  // a bad line stops here, before any upload
    if (!items.length && !mapState.files.length) throw new Error("Add at least one item: a line of text, a reference, or a file.");
    mapStatus(mapState.files.length ? "uploading media…" : "embedding…");
    items = await allItems();
    mapStatus(`embedding ${items.length} items…`);
    const embedded = await embedSides(items.map((i) => i.side));
    await showMap(items, embedded.vectors, embedded.model);
  } catch (err) {
    mapStatus(String(err.message || err), true);
  } finally {
    $("#map-run").disabled = false;
  }
}

// Lay out and draw `items` with their `vectors` (null for one that was not embedded: left off the map).
async function showMap(items, vectors, model) {
  items.forEach((item, i) => { item.error = vectors[i] ? "" : "not embedded"; });
  mapState.items = items;
  mapState.kept = items.filter((item, i) => vectors[i]);
  mapState.vectors = vectors.filter(Boolean);
  mapState.model = model;
  mapState.query = null;
  if (!mapState.kept.length) throw new Error("no item could be embedded");
  mapStatus(`laying out ${mapState.kept.length} items…`);
  mapState.layout = await layOut();
  renderMap();
  $("#map-find").disabled = $("#map-png").disabled = $("#map-csv").disabled = false;
  mapStatus(summary());
}

function summary() {
  const l = mapState.layout;
  const how = l.method === "tsne" ? `t-SNE, perplexity ${Number(l.perplexity.toPrecision(3))}` : "PCA";
  const left = mapState.items.length - mapState.kept.length;
  const near = l.neighbours ? `; the ${l.neighbours.length} nearest "${l.query_text}" ringed` : "";
  return `${mapState.kept.length} items laid out (${how}), ${mapState.model}` + (left ? `; ${left} not embedded` : "") + near;
}

async function findNeighbours() {
  const text = $("#map-query").value.trim();
  if (!mapState.layout) { mapStatus("Embed and lay out some items first.", true); return; }
  if (!text) { mapStatus("Type a query.", true); $("#map-query").focus(); return; }
  $("#map-find").disabled = true;
  try {
    mapStatus("embedding the query…");
    const query = (await embedSides([{ text: text }])).vectors[0];
    if (!query) throw new Error("the query could not be embedded");
    await showQuery(text, query, Math.max(1, parseInt($("#map-k").value, 10) || 5));
  } catch (err) {
    mapStatus(String(err.message || err), true);
  } finally {
    $("#map-find").disabled = false;
  }
}

// Lay the map out again with the query's `vector` among the items, its `k` nearest ringed.
async function showQuery(text, vector, k) {
  mapState.query = { text: text, vector: vector, k: k };
  mapState.layout = await layOut();
  renderMap();
  mapStatus(summary());
}

// --- drawing ------------------------------------------------------------------------------------------------
function colourKeys() {
  const byLabel = $("#map-colour").value === "label";
  return mapState.kept.map((item) => (byLabel ? (item.label === null ? NO_LABEL : item.label) : modality(item.side)));
}

function paletteOf(keys) {
  const colours = new Map();
  for (const key of keys) if (!colours.has(key)) colours.set(key, PALETTE[colours.size % PALETTE.length]);
  return colours;
}

// Canvas positions of the layout's points (and the query's) in a w × h box, same scale on both axes.
function placements(w, h, pad) {
  const l = mapState.layout;
  const all = l.query_point ? l.points.concat([l.query_point]) : l.points;
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const scale = Math.min((w - 2 * pad) / Math.max(x1 - x0, 1e-9), (h - 2 * pad) / Math.max(y1 - y0, 1e-9));
  const at = (p) => [w / 2 + (p[0] - (x0 + x1) / 2) * scale, h / 2 - (p[1] - (y0 + y1) / 2) * scale];
  return { points: l.points.map(at), query: l.query_point ? at(l.query_point) : null };
}

function star(ctx, x, y, r) {
  ctx.beginPath();
  for (let i = 0; i < 10; i++) {
    const a = -Math.PI / 2 + (i * Math.PI) / 5, rr = i % 2 ? r * 0.45 : r;
    ctx.lineTo(x + rr * Math.cos(a), y + rr * Math.sin(a));
  }
  ctx.closePath();
  ctx.fill();
}

function paintLegend(ctx, colours, x, y) {
  ctx.font = "12px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  let row = 0;
  for (const [key, colour] of colours) {
    ctx.fillStyle = colour;
    ctx.beginPath();
    ctx.arc(x + 6, y + 10 + row * 18, 5, 0, 2 * Math.PI);
    ctx.fill();
    ctx.fillStyle = "#1d2330";
    ctx.fillText(key, x + 16, y + 10 + row * 18);
    row++;
  }
}

// The map in a w × h box of ctx; with `legend`, a legend strip on the right and a title (the exported PNG).
function paintMap(ctx, w, h, legend) {
  const keys = colourKeys(), colours = paletteOf(keys), l = mapState.layout;
  const strip = legend ? 200 : 0;
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, w, h);
  const place = placements(w - strip, h, 28);
  const ranked = new Map((l.neighbours || []).map((n, r) => [n.index, r + 1]));
  if (place.query) {
    ctx.strokeStyle = "rgba(0,0,0,.45)";
    ctx.setLineDash([2, 3]);
    for (const i of ranked.keys()) { ctx.beginPath(); ctx.moveTo(...place.query); ctx.lineTo(...place.points[i]); ctx.stroke(); }
    ctx.setLineDash([]);
  }
  place.points.forEach(([x, y], i) => {
    ctx.fillStyle = colours.get(keys[i]);
    ctx.beginPath();
    ctx.arc(x, y, 5, 0, 2 * Math.PI);
    ctx.fill();
  });
  ctx.font = "bold 11px system-ui, sans-serif";
  ctx.textBaseline = "bottom";
  for (const [i, rank] of ranked) {
    const [x, y] = place.points[i];
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(x, y, 10, 0, 2 * Math.PI);
    ctx.stroke();
    ctx.lineWidth = 1;
    ctx.fillStyle = "#000";
    ctx.fillText(String(rank), x + 9, y - 7);
  }
  if (place.query) { ctx.fillStyle = "#000"; star(ctx, place.query[0], place.query[1], 11); }
  if (legend) {
    ctx.fillStyle = "#1d2330";
    ctx.font = "13px system-ui, sans-serif";
    ctx.textBaseline = "top";
    ctx.fillText(summary(), 10, 8);
    paintLegend(ctx, colours, w - strip + 10, 30);
  }
  return place;
}

function renderMap() {
  if (!mapState.layout) return;
  const canvas = $("#map-canvas"), ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = Math.round(w * ratio);
  canvas.height = Math.round(h * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  const place = paintMap(ctx, w, h, false);
  mapState.screen = place.points;
  const colours = paletteOf(colourKeys());
  $("#map-legend").replaceChildren(...Array.from(colours, ([key, colour]) => {
    const li = document.createElement("li");
    const dot = document.createElement("span");
    dot.className = "swatch";
    dot.style.background = colour;
    li.append(dot, key);
    return li;
  }));
  renderNeighbours();
}

function renderNeighbours() {
  const l = mapState.layout;
  $("#map-neighbours").replaceChildren(...(l.neighbours || []).map((n) => {
    const li = document.createElement("li");
    li.textContent = `${n.similarity.toFixed(3)} · ${describeItem(mapState.kept[n.index])}`;
    return li;
  }));
}

// --- hover: thumbnails --------------------------------------------------------------------------------------
async function previewUrl(ref) {  // an upload through GET /v1/media; https:// as it is; anything else: none
  if (mapState.previews.has(ref)) return mapState.previews.get(ref);
  let url = null;
  if (ref.startsWith("https://")) url = ref;
  else if (ref.startsWith("s3://")) {
    const response = await api(`/v1/media?uri=${encodeURIComponent(ref)}`);
    if (response.ok) url = URL.createObjectURL(await response.blob());
  }
  mapState.previews.set(ref, url);
  return url;
}

async function showTip(index, x, y) {
  const tip = $("#map-tip"), item = mapState.kept[index];
  const head = document.createElement("div");
  head.className = "tag";
  head.textContent = [item.label, modality(item.side)].filter(Boolean).join(" · ");
  const body = [head];
  const first = firstRef(item.side);
  if (first) {
    const url = item.file ? item.file.url : await previewUrl(first.ref);
    if (url) body.unshift(mediaElement(first.kind, url));
  }
  const text = document.createElement("div");
  text.textContent = item.file ? item.file.file.name : (item.side.text || describeItem(item)).slice(0, 300);
  body.push(text);
  if (mapState.hover !== index) return;  // the pointer moved on while the preview loaded
  tip.replaceChildren(...body);
  tip.style.left = `${Math.min(x + 14, $("#map-canvas").clientWidth - 200)}px`;
  tip.style.top = `${y + 14}px`;
  tip.hidden = false;
  tip.dataset.index = String(index);
}

function hover(event) {
  const rect = event.target.getBoundingClientRect();
  const x = event.clientX - rect.left, y = event.clientY - rect.top;
  let best = -1, bestD = 12 * 12;
  mapState.screen.forEach(([px, py], i) => { const d = (px - x) ** 2 + (py - y) ** 2; if (d < bestD) { best = i; bestD = d; } });
  if (best === mapState.hover) return;
  mapState.hover = best;
  if (best < 0) { $("#map-tip").hidden = true; return; }
  showTip(best, x, y);
}

// --- export -------------------------------------------------------------------------------------------------
function exportMapPng() {
  const canvas = document.createElement("canvas");
  canvas.width = 1200;
  canvas.height = 760;
  paintMap(canvas.getContext("2d"), canvas.width, canvas.height, true);
  canvas.toBlob((blob) => download("embedding-map.png", "image/png", blob), "image/png");
}

function exportMapCsv() {
  const l = mapState.layout;
  const ranked = new Map((l.neighbours || []).map((n, r) => [n.index, [r + 1, n.similarity]]));
  const lines = [["index", "line", "label", "modality", "x", "y", "ref", "neighbour_rank", "similarity", "error"].join(",")];
  let at = 0;
  mapState.items.forEach((item, index) => {
    const laid = !item.error, p = laid ? l.points[at] : null, near = laid ? ranked.get(at) : null;
    const ref = item.file ? `${item.file.file.name} → ${describeItem(item)}` : describeItem(item);
    lines.push([index, item.line, item.label, modality(item.side), p ? p[0] : "", p ? p[1] : "", ref,
      near ? near[0] : "", near ? near[1] : "", item.error].map(csvCell).join(","));
    if (laid) at++;
  });
  if (l.query_point) lines.push(["query", "", "", "text", l.query_point[0], l.query_point[1], l.query_text, "", "", ""].map(csvCell).join(","));
  download("embedding-map.csv", "text/csv", lines.join("\n") + "\n");
}

// --- set-up -------------------------------------------------------------------------------------------------
function listMapModels(models) {  // app.js's model list, as it loads it (one request, one key prompt)
  const select = $("#map-model"), chosen = select.value;
  while (select.options.length > 1) select.remove(1);
  for (const m of models.filter((m) => m.task === "embed")) {
    const o = document.createElement("option");
    o.value = m.id;
    o.textContent = `${m.id.split("/").pop()} (${m.devices.join(", ")})`;
    select.appendChild(o);
  }
  select.value = chosen;
  if (select.options.length > 1 && !select.value) select.selectedIndex = 1;  // an embedding model, not the default reranker
}

function initMap() {
  const zone = $("#map-drop");
  for (const input of [$("#map-files"), $("#map-jsonl")]) input.addEventListener("change", () => { addMapFiles(input.files); input.value = ""; });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); addMapFiles(e.dataTransfer.files); });
  $("#map-run").addEventListener("click", runMap);
  $("#map-clear").addEventListener("click", () => { $("#map-items").value = ""; mapState.files = []; renderMapFiles(); });
  $("#map-find").addEventListener("click", findNeighbours);
  $("#map-query").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); findNeighbours(); } });
  $("#map-colour").addEventListener("change", renderMap);
  $("#map-method").addEventListener("change", relayout);
  $("#map-png").addEventListener("click", exportMapPng);
  $("#map-csv").addEventListener("click", exportMapCsv);
  const canvas = $("#map-canvas");
  canvas.addEventListener("mousemove", hover);
  canvas.addEventListener("mouseleave", () => { mapState.hover = -1; $("#map-tip").hidden = true; });
  window.addEventListener("resize", renderMap);
  document.addEventListener("rerankq:models", (e) => listMapModels(e.detail));
}

initMap();
