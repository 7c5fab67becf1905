// The page: model and sampling controls, submitting jobs, and drawing each streamed frame as it arrives.
// window.fgm.log records what the stream delivered (the browser tests read it).
import { Editor } from "/static/editor.js";

const $ = (id) => document.getElementById(id);
const state = { models: [], limits: {}, job: null, source: null, inputs: null };
window.fgm = { log: [], state };

function showError(status, detail) {
  const box = $("error");
  const busy = status === 503 || status === 429;
  box.textContent = (busy ? "Busy, retry in a few seconds: " : `Error ${status}: `) + (detail || "request failed");
  box.hidden = false;
  box.dataset.status = status;
  $("status").textContent = busy ? "busy" : "error";
}
function clearError() { $("error").hidden = true; $("error").textContent = ""; }

const editor = new Editor(showError);

function currentModel() { return state.models.find((m) => m.name === $("model").value); }

function fillModel() {
  const m = currentModel();
  $("model-info").textContent = `${m.image_size}×${m.image_size}×${m.channels}, ` +
    `${m.levels.map((l) => `${l.kind.toUpperCase()} ${l.image_size}→${l.patch_size}`).join(", ")}, ` +
    `${m.parameters.toLocaleString()} parameters, likelihood ${m.exact_likelihood ? "exact" : "estimated"}`;
  const label = $("label");
  label.replaceChildren(new Option("none (unconditional)", ""));
  m.class_names.forEach((n, i) => label.append(new Option(`${i}: ${n}`, String(i))));
  const steps = $("steps");
  steps.replaceChildren();
  m.levels.forEach((l, i) => {
    const most = Math.min(l.tokens, state.limits.max_steps);
    const lab = document.createElement("label");
    lab.textContent = `steps, level ${i} (${l.kind}, ${l.tokens} tokens) `;
    const input = Object.assign(document.createElement("input"), { type: "number", min: 1, max: most,
                                value: Math.min(l.default_steps, most), id: `steps-${i}`, disabled: l.kind === "ar" });
    lab.append(input);
    steps.append(lab);
  });
  editor.setModel(m);
}

function params() {
  const m = currentModel(), num = (id) => Number($(id).value);
  const label = $("label").value;
  return { model: m.name, label: label === "" ? null : Number(label), cfg: num("cfg"),
           cfg_schedule: $("cfg-schedule").value, temperature: num("temperature"), seed: num("seed"),
           seeds: num("seeds"), num_images: num("num-images"),
           num_iter: m.levels.map((_, i) => num(`steps-${i}`)) };
}

async function submit(url, init, inputs) {
  clearError();
  stopWatching("cancelled: a new job replaced it");
  $("status").textContent = "sending…";
  let resp, body;
  try {
    resp = await fetch(url, init);
    body = await resp.json().catch(() => ({ detail: resp.statusText }));
  } catch (e) { showError(0, `the server cannot be reached (${e})`); return; }
  window.fgm.log.push({ type: "response", status: resp.status, t: performance.now() });
  if (!resp.ok) { showError(resp.status, typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)); return; }
  state.inputs = inputs;
  watch(body);
}

function watch(job) {
  state.job = { id: job.id, events: new EventSource(job.events), finished: false };
  window.fgm.log.push({ type: "job", id: job.id, t: performance.now() });
  const es = state.job.events, live = $("live");
  $("result").hidden = true; $("cancel").hidden = false;
  $("status").textContent = job.queued_before ? `queued (${job.queued_before} before)` : "starting…";
  es.addEventListener("queued", (e) => { $("status").textContent = `queued (${JSON.parse(e.data).before} before)`; });
  es.addEventListener("frame", (e) => {
    const d = JSON.parse(e.data);
    live.onload = () => { const k = Math.max(1, Math.min(12, Math.floor(560 / live.naturalWidth))); live.width = live.naturalWidth * k; };
    live.src = "data:image/png;base64," + d.png; live.hidden = false;
    $("status").textContent = d.level === "result" ? "scoring…" : "generating…";
    $("frames").textContent = `frame ${d.n}` + (d.level === null || d.level === "result" ? "" : ` (level ${d.level})`);
    window.fgm.log.push({ type: "frame", n: d.n, level: d.level, t: performance.now() });
  });
  const end = (kind) => (e) => {
    const d = JSON.parse(e.data);
    state.job.finished = true; es.close(); $("cancel").hidden = true;
    window.fgm.log.push({ type: kind, t: performance.now(), job: d });
    if (kind === "done") showResult(d);
    else if (kind === "failed") showError(400, d.message);
    else $("status").textContent = d.message || "cancelled";
  };
  es.addEventListener("done", end("done"));
  es.addEventListener("failed", end("failed"));
  es.addEventListener("cancelled", end("cancelled"));
  es.onerror = () => {
    if (state.job && !state.job.finished) { es.close(); showError(0, "the connection to the server was lost"); }
  };
}

function stopWatching(reason) {
  const job = state.job;
  if (job && !job.finished) { job.events.close(); job.finished = true; navigator.sendBeacon(`/api/jobs/${job.id}/cancel`); }
}

async function showResult(job) {
  const r = job.result;
  $("status").textContent = "done";
  const se = r.bpd_stderr === null ? "" : ` ± ${r.bpd_stderr.toFixed(3)}`;
  $("bpd").textContent = `bits/dim: ${r.bpd_mean.toFixed(3)}${se} (${r.likelihood}, ${r.conditional ? "class-conditional" : "unconditional"}; ` +
                         `per image ${r.bpd.map((v) => v.toFixed(2)).join(", ")})`;
  $("notes").textContent = r.notes.join(" ");
  $("download-png").href = `/api/jobs/${job.id}/result.png?scale=4`;
  $("download-gif").href = `/api/jobs/${job.id}/animation.gif`;
  $("known").textContent = "";
  $("input-figure").hidden = !state.inputs;
  if (state.inputs) $("input-preview").src = `/api/jobs/${job.id}/input.png`;
  $("result").hidden = false;
  if (state.inputs) $("known").textContent = await checkKnown(job);
}

async function pixels(url) {
  const img = new Image();
  img.src = url;
  await img.decode();
  const c = Object.assign(document.createElement("canvas"), { width: img.width, height: img.height });
  const cx = c.getContext("2d");
  cx.drawImage(img, 0, 0);
  return { data: cx.getImageData(0, 0, img.width, img.height).data, width: img.width };
}

// Check in the page that every known pixel of every completion equals the input's.
async function checkKnown(job) {
  const { image_size: S, channels: C } = currentModel(), pad = 2, { nrow, by_column } = job.result.grid;
  const [result, input, mask] = await Promise.all([pixels(`/api/jobs/${job.id}/result.png`),
    pixels(`/api/jobs/${job.id}/input.png`), pixels(`/api/jobs/${job.id}/mask.png`)]);
  let known = 0, changed = 0;
  for (let b = 0; b < job.result.images; b++) {
    const [r, c] = by_column ? [b % nrow, Math.floor(b / nrow)] : [Math.floor(b / nrow), b % nrow];
    const y0 = pad + r * (S + pad), x0 = pad + c * (S + pad);
    for (let y = 0; y < S; y++) for (let x = 0; x < S; x++) {
      const m = (y * S + x) * 4;
      if (mask.data[m] >= 128) continue;  // white: generated
      const g = ((y0 + y) * result.width + x0 + x) * 4;
      for (let ch = 0; ch < C; ch++) { known += 1; if (result.data[g + ch] !== input.data[m + ch]) changed += 1; }
    }
  }
  window.fgm.known = { known, changed };
  return changed === 0 ? `known pixels unchanged: ✓ (${known} values checked in the page)`
                       : `known pixels CHANGED: ${changed} of ${known}`;
}

$("generate").addEventListener("click", () => submit("/api/generate",
  { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(params()) }, null));

$("inpaint").addEventListener("click", async () => {
  const src = editor.source;
  if (!src) { showError(400, "choose a test-set image or upload one first"); return; }
  if (!editor.generatedCount()) { showError(400, "draw the region to generate (red) or pick a preset"); return; }
  const form = new FormData();
  form.append("params", JSON.stringify({ ...params(), source: src.kind, index: src.kind === "testset" ? src.index : null }));
  if (src.kind === "upload") form.append("image", src.file);
  form.append("mask", await editor.maskBlob(), "mask.png");
  submit("/api/inpaint", { method: "POST", body: form }, true);
});

$("cancel").addEventListener("click", () => {
  if (state.job && !state.job.finished) fetch(`/api/jobs/${state.job.id}/cancel`, { method: "POST" });
});

document.querySelectorAll("[data-tab]").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll("[data-tab]").forEach((t) => t.setAttribute("aria-selected", String(t === b)));
  $("pane-generate").hidden = b.dataset.tab !== "generate";
  $("pane-edit").hidden = b.dataset.tab !== "edit";
}));

window.addEventListener("pagehide", () => stopWatching("page closed"));

async function init() {
  const resp = await fetch("/api/models");
  const body = await resp.json();
  state.models = body.models; state.limits = body.limits;
  for (const m of state.models) $("model").append(new Option(m.name, m.name));
  $("model").addEventListener("change", fillModel);
  fillModel();
  document.body.dataset.ready = "true";
}
init().catch((e) => showError(0, `cannot load the model list (${e})`));
