// rerankq console: plain JavaScript, same-origin requests only. Job flow: upload dropped files (POST /v1/media),
// submit the job (POST /v1/jobs), read progress from the SSE stream through fetch (so the key can be sent),
// then fetch and show the result. The queue view polls GET /v1/queue.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { key: sessionStorage.getItem("rerankq-key") || "", queryFile: null, files: [], last: null };
const VIDEO_EXT = /\.(mp4|mov|webm|mkv|avi|m4v)$/i;

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.key) h["Authorization"] = "Bearer " + state.key;
  return h;
}

function askKey() {
  return new Promise((resolve) => {
    const dialog = $("#key-dialog");
    $("#key-input").value = state.key;
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "save") {
        state.key = $("#key-input").value.trim();
        sessionStorage.setItem("rerankq-key", state.key);
      }
      resolve(dialog.returnValue === "save");
    }, { once: true });
    dialog.showModal();
    $("#key-input").focus();
  });
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  for (let attempt = 0; attempt < 3; attempt++) {
    opts.headers = headers((options || {}).headers);
    const response = await fetch(path, opts);
    if (response.status !== 401) return response;
    if (!(await askKey())) return response;
  }
  return fetch(path, Object.assign(opts, { headers: headers((options || {}).headers) }));
}

async function failure(response) {
  let message = response.status + " " + response.statusText;
  try { const body = await response.json(); message = body.message || message; } catch (e) { /* not JSON */ }
  return new Error(message);
}

// --- candidates and thumbnails ------------------------------------------------------------------------------
function kindOf(file) { return (file.type || "").startsWith("video/") || VIDEO_EXT.test(file.name) ? "video" : "image"; }

function mediaElement(kind, src) {
  const el = document.createElement(kind === "video" ? "video" : "img");
  el.src = src;
  if (kind === "video") { el.muted = true; el.preload = "metadata"; } else { el.alt = ""; }
  return el;
}

function thumb(item, onRemove) {
  const box = document.createElement("div");
  box.className = "thumb";
  box.appendChild(mediaElement(item.kind, item.url));
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = item.file.name;
  box.appendChild(name);
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "×";
  remove.setAttribute("aria-label", "remove " + item.file.name);
  remove.addEventListener("click", onRemove);
  box.appendChild(remove);
  return box;
}

function asItem(file) { return { file: file, kind: kindOf(file), url: URL.createObjectURL(file), uri: null }; }

function renderThumbs() {
  const q = $("#query-preview");
  q.replaceChildren();
  if (state.queryFile) q.appendChild(thumb(state.queryFile, () => { state.queryFile = null; $("#query-file").value = ""; renderThumbs(); }));
  const c = $("#cand-preview");
  c.replaceChildren(...state.files.map((item, i) => thumb(item, () => { state.files.splice(i, 1); renderThumbs(); })));
}

function addFiles(files, toQuery) {
  const list = Array.from(files).filter((f) => /^(image|video)\//.test(f.type) || VIDEO_EXT.test(f.name) || !f.type);
  if (toQuery) { if (list.length) state.queryFile = asItem(list[0]); } else { state.files.push(...list.map(asItem)); }
  renderThumbs();
}

function wireDrop(zone, input, toQuery) {
  input.addEventListener("change", () => { addFiles(input.files, toQuery); if (!toQuery) input.value = ""; });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); addFiles(e.dataTransfer.files, toQuery); });
}

function refKind(ref) { return VIDEO_EXT.test(ref) ? "video" : "image"; }
function isRef(line) { return /^(s3|https):\/\//.test(line); }

function candidates() {
  const lines = $("#candidates").value.split("\n").map((l) => l.trim()).filter(Boolean);
  const texts = lines.map((l) => (isRef(l) ? { kind: refKind(l), ref: l } : { kind: "text", text: l }));
  return texts.concat(state.files.map((item) => ({ kind: item.kind, item: item })));
}

async function upload(item) {
  if (item.uri) return item.uri;
  const form = new FormData();
  form.append("file", item.file, item.file.name);
  const response = await api("/v1/media", { method: "POST", body: form });
  if (!response.ok) throw await failure(response);
  item.uri = (await response.json()).uri;
  return item.uri;
}

async function side(c) {
  if (c.kind === "text") return { text: c.text };
  const ref = c.ref || (await upload(c.item));
  return c.kind === "video" ? { video: ref } : { image: ref };
}

// --- running a job ----------------------------------------------------------------------------------------
function setStatus(text, isError) {
  const el = $("#status");
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

async function buildJob(cands) {
  const query = {};
  const text = $("#query").value.trim();
  if (text) query.text = text;
  if (state.queryFile) query[state.queryFile.kind] = await upload(state.queryFile);
  const job = { query: query, documents: await Promise.all(cands.map(side)) };
  const topN = parseInt($("#top-n").value, 10);
  if (topN > 0) job.top_n = topN;
  const instruction = $("#instruction").value.trim();
  if (instruction) job.instruction = instruction;
  if ($("#model").value) job.model = $("#model").value;
  return job;
}

async function* sse(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      yield { name: name, data: JSON.parse(data) };
    }
  }
}

function showProgress(status) {
  const bar = $("#progress");
  bar.hidden = false;
  bar.max = Math.max(status.progress.pairs_total, 1);
  bar.value = status.progress.pairs_done;
  setStatus(`job ${status.job_id}: ${status.state}, ${status.progress.pairs_done}/${status.progress.pairs_total} pairs`);
}

function countEvent(name) {  // the page's own record of what the stream said (read by the browser test)
  const log = $("#results");
  log.dataset.events = (log.dataset.events ? log.dataset.events + "," : "") + name;
}

async function follow(jobId) {
  const response = await api(`/v1/jobs/${encodeURIComponent(jobId)}/events`);
  if (!response.ok) throw await failure(response);
  let end = null;
  for await (const event of sse(response)) {
    countEvent(event.name);
    showProgress(event.data);
    if (event.name === "end") { end = event.data; break; }
  }
  return end;
}

async function run() {
  const cands = candidates();
  if (!$("#query").value.trim() && !state.queryFile) { setStatus("Type a query or add a query image or video.", true); $("#query").focus(); return; }
  if (!cands.length) { setStatus("Add at least one candidate.", true); $("#candidates").focus(); return; }
  $("#run").disabled = true;
  $("#results").dataset.events = "";
  try {
    setStatus(state.files.length || state.queryFile ? "uploading media…" : "submitting…");
    const job = await buildJob(cands);
    const submitted = await api("/v1/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(job) });
    if (!submitted.ok) throw await failure(submitted);
    const jobId = (await submitted.json()).job_id;
    const end = await follow(jobId);
    if (!end || end.state !== "succeeded") throw new Error(`job ${jobId} ${end ? end.state : "lost"}: ${(end && end.error) || ""}`);
    const response = await api(`/v1/jobs/${encodeURIComponent(jobId)}/result`);
    if (!response.ok) throw await failure(response);
    const result = await response.json();
    state.last = { job: job, cands: cands, result: result };
    renderResults();
    setStatus(`job ${jobId}: ${result.results.length} ranked, ${result.errors.length} failed, ${result.usage.tokens} tokens`);
    refreshQueue();
  } catch (err) {
    setStatus(String(err.message || err), true);
  } finally {
    $("#run").disabled = false;
  }
}

// --- results and export -----------------------------------------------------------------------------------
function describe(c) {
  if (c.kind === "text") return c.text;
  return c.ref || (c.item && c.item.file.name) || "";
}

function candidateCell(c) {
  const td = document.createElement("td");
  if (c.kind === "text") { td.textContent = c.text; return td; }
  const wrap = document.createElement("div");
  wrap.className = "cell-media";
  if (c.item) wrap.appendChild(mediaElement(c.kind, c.item.url));
  const ref = document.createElement("span");
  ref.className = "ref";
  ref.textContent = c.ref || `${c.item.file.name} → ${c.item.uri}`;
  wrap.appendChild(ref);
  td.appendChild(wrap);
  return td;
}

function row(rank, score, c, error) {
  const tr = document.createElement("tr");
  const r = document.createElement("td");
  r.textContent = rank;
  const s = document.createElement("td");
  s.className = "score";
  if (error) { s.textContent = "error"; tr.className = "failed"; } else {
    s.textContent = score.toFixed(4);
    const meter = document.createElement("div");
    meter.className = "meter";
    const fill = document.createElement("span");
    fill.style.width = `${Math.round(score * 100)}%`;
    meter.appendChild(fill);
    s.appendChild(meter);
  }
  const cell = candidateCell(c);
  if (error) {  // the reference is shown already: keep the reason
    const e = document.createElement("div");
    const ref = c.ref || (c.item && c.item.uri) || "";
    e.textContent = ref && error.startsWith(ref + ": ") ? error.slice(ref.length + 2) : error;
    cell.appendChild(e);
  }
  tr.append(r, s, cell);
  return tr;
}

function rankedRows() {
  const { cands, result } = state.last;
  const rows = result.results.map((r, i) => ({ rank: i + 1, index: r.index, score: r.relevance_score, candidate: describe(cands[r.index]), error: "" }));
  return rows.concat(result.errors.map((e) => ({ rank: "", index: e.index, score: null, candidate: describe(cands[e.index]), error: e.error })));
}

function renderResults() {
  const { cands, result } = state.last;
  const body = $("#results tbody");
  body.replaceChildren(...result.results.map((r, i) => row(i + 1, r.relevance_score, cands[r.index], null)),
    ...result.errors.map((e) => row("–", null, cands[e.index], e.error)));
  $("#export-json").disabled = $("#export-csv").disabled = false;
}

function download(name, type, text) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type: type }));
  a.download = name;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

function csvCell(v) { const s = v === null || v === undefined ? "" : String(v); return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s; }

function exportJson() {
  const { job, result } = state.last;
  download(`rerank-${result.job_id}.json`, "application/json",
    JSON.stringify({ job_id: result.job_id, model: result.model, query: job.query,
      results: rankedRows().filter((r) => !r.error), errors: rankedRows().filter((r) => r.error) }, null, 2));
}

function exportCsv() {
  const lines = [["rank", "index", "relevance_score", "candidate", "error"].join(",")];
  for (const r of rankedRows()) lines.push([r.rank, r.index, r.score, r.candidate, r.error].map(csvCell).join(","));
  download(`rerank-${state.last.result.job_id}.csv`, "text/csv", lines.join("\n") + "\n");
}

// --- queue view -------------------------------------------------------------------------------------------
function li(text, stateName) {
  const item = document.createElement("li");
  item.textContent = text + " ";
  if (stateName) { const s = document.createElement("span"); s.className = `state ${stateName}`; s.textContent = stateName; item.appendChild(s); }
  return item;
}

function spark(series) {
  const svg = $("#spark");
  const max = Math.max(1e-9, ...series.map((p) => p.pairs_per_s));
  const step = series.length > 1 ? 300 / (series.length - 1) : 300;
  const points = series.map((p, i) => `${(i * step).toFixed(1)},${(58 - (p.pairs_per_s / max) * 54).toFixed(1)}`).join(" ");
  svg.innerHTML = `<polyline fill="none" stroke="#3b5bdb" stroke-width="2" points="${points}"/>`;
}

// A worker's weight quantization as the results name it: "" for full precision, " [int8]" otherwise.
const quantized = (q) => (q && q !== "none" ? ` [${q}]` : "");

function renderQueue(view) {
  const byModel = {};
  for (const q of view.queues) (byModel[q.model] = byModel[q.model] || {})[q.priority] = q.depth;
  $("#queue-depths tbody").replaceChildren(...Object.entries(byModel).map(([model, d]) => {
    const tr = document.createElement("tr");
    for (const v of [model.split("/").pop(), d.high, d.normal, d.low]) { const td = document.createElement("td"); td.textContent = v; tr.appendChild(td); }
    return tr;
  }));
  $("#pairs-rate").textContent = view.pairs_per_s.toFixed(view.pairs_per_s < 10 ? 2 : 0);
  spark(view.series);
  $("#queue-workers").replaceChildren(...(view.workers.length ? view.workers.map((w) => li(`${w.name} · ${String(w.model).split("/").pop()}${quantized(w.quantization)} · ${w.device}${w.shard === undefined ? "" : ` · shard ${w.shard}`}`)) : [li("no live worker")]));
  $("#recent").replaceChildren(...view.recent.slice(0, 10).map((j) => li(`${j.job_id.slice(0, 12)} ${j.pairs_done}/${j.pairs_total}`, j.state)));
}

async function refreshQueue() {
  try {
    const response = await api("/v1/queue");
    if (response.ok) renderQueue(await response.json());
  } catch (e) { /* the next poll retries */ }
}

async function loadModels() {
  const response = await api("/v1/models");
  if (!response.ok) return;
  const select = $("#model");
  const models = (await response.json()).data;
  document.dispatchEvent(new CustomEvent("rerankq:models", { detail: models }));  // the map's list (map.js)
  for (const m of models) {
    const o = document.createElement("option");
    o.value = m.id;
    o.textContent = `${m.id.split("/").pop()}${(m.quantization || []).map(quantized).join("")} (${m.devices.join(", ")})`;
    select.appendChild(o);
  }
}

function init() {
  wireDrop($("#query-drop"), $("#query-file"), true);
  wireDrop($("#cand-drop"), $("#candidate-files"), false);
  $("#run").addEventListener("click", run);
  $("#query").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); run(); } });
  $("#candidates").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); } });
  $("#clear").addEventListener("click", () => { $("#candidates").value = ""; state.files = []; renderThumbs(); });
  $("#export-json").addEventListener("click", exportJson);
  $("#export-csv").addEventListener("click", exportCsv);
  $("#key-button").addEventListener("click", () => askKey().then(() => { loadModels(); refreshQueue(); }));
  loadModels().then(refreshQueue);
  setInterval(refreshQueue, 2000);
}

init();
