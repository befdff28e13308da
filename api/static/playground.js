// The playground: plain JavaScript over the public API (no build step). Every call goes through api(), which sends
// the API key kept in localStorage; the event stream is read with fetch (EventSource cannot send a key).
// What the server sends (ids, labels, names, messages, URLs) is only ever text or a property: never HTML. The page is
// served under a strict CSP (api/browser.py): no inline script, handler or style.
"use strict";

const $ = (id) => document.getElementById(id);

// an element with properties set (never markup), and its children appended
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else node[k] = v;
  }
  node.append(...children);
  return node;
}

function options(select, items) { select.replaceChildren(...items.map(([value, text]) => new Option(text, value))); }
const state = { models: [], job: null, abort: null, imageBlob: null };

function key() { return localStorage.getItem("diffuserve.apiKey") || ""; }

function headers(extra = {}) {
  const h = { ...extra };
  if (key()) h.Authorization = `Bearer ${key()}`;
  return h;
}

async function api(method, path, body) {
  const opts = { method, headers: headers() };
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = data.error || {};
    throw new Error(`${e.code || r.status}: ${e.message || r.statusText}${e.field ? ` (field: ${e.field})` : ""}`);
  }
  return data;
}

// 1. models, schedulers, ControlNets ---------------------------------------------------------------------------
async function loadModels() {
  $("error").textContent = "";
  try {
    const models = await api("GET", "/v1/models");
    state.models = models.filter((m) => m.kind !== "controlnet");
    options($("model"), state.models.map((m) => [m.id, `${m.id} (${m.kind})`]));
    options($("controlnet"), models.filter((m) => m.kind === "controlnet").map((m) => [m.id, m.id]));
    onModel();
  } catch (e) { $("error").textContent = e.message; }
}

function currentModel() { return state.models.find((m) => m.id === $("model").value); }

function onModel() {
  const m = currentModel();
  if (!m) return;
  for (const [side, native, top] of [["width", m.width, m.max_width], ["height", m.height, m.max_height]]) {
    const input = $(side);  // the model's size rule (GET /v1/models): a multiple of its step, up to its largest
    input.step = input.min = String(m.size_multiple || 8);
    if (top) input.max = String(top); else input.removeAttribute("max");
    input.placeholder = native ? `${native} (native)` : "model's";
  }
  for (const opt of $("task").options) opt.disabled = !m.tasks.includes(opt.value);
  if (!m.tasks.includes($("task").value)) $("task").value = m.tasks[0];
  $("prompt").placeholder = m.labels ? `a label: ${m.labels.slice(0, 10).join(", ")}` : "a prompt";
  // the step caches this model takes, each with its default knob (GET /v1/models cache_methods)
  options($("cache"), [["", "off"], ...(m.cache_methods || []).map((c) =>
    [c.method, `${c.method} (${c.interval != null ? `interval ${c.interval}` : `threshold ${c.threshold}`})`])]);
  onTask();
}

function onTask() {
  const task = $("task").value;
  const m = currentModel();
  if (m) {  // the schedulers this model runs for this task (a flow model's img2img: euler only)
    const kept = $("scheduler").value;
    const names = (m.schedulers_by_task || {})[task] || m.schedulers || [];
    options($("scheduler"), [["", `default (${m.default_scheduler || "model's"})`],
      ...names.filter((s) => s !== "default").map((s) => [s, s])]);
    if (names.includes(kept)) $("scheduler").value = kept;
  }
  $("image-inputs").hidden = !["img2img", "inpaint", "controlnet"].includes(task);
  for (const el of document.querySelectorAll("[data-for]")) el.hidden = !el.dataset.for.split(" ").includes(task);
}

// 2. image input, drag and drop, mask brush ---------------------------------------------------------------------
function setImage(blob) {
  state.imageBlob = blob;
  const img = new Image();
  img.onload = () => {
    const [c, m] = [$("image-canvas"), $("mask-canvas")];
    c.width = m.width = img.naturalWidth;
    c.height = m.height = img.naturalHeight;
    c.getContext("2d").drawImage(img, 0, 0);
    clearMask();
    $("canvas-wrap").hidden = false;
  };
  img.src = URL.createObjectURL(blob);
}

function clearMask() {
  const m = $("mask-canvas");
  const g = m.getContext("2d");
  g.fillStyle = "#000";
  g.fillRect(0, 0, m.width, m.height);
}

function paint(ev) {
  if (!(ev.buttons & 1) || $("task").value !== "inpaint") return;
  const m = $("mask-canvas");
  const r = m.getBoundingClientRect();
  const g = m.getContext("2d");
  g.fillStyle = "#fff";
  g.beginPath();
  g.arc((ev.clientX - r.left) * (m.width / r.width), (ev.clientY - r.top) * (m.height / r.height),
    (+$("brush").value / 2) * (m.width / r.width), 0, 2 * Math.PI);
  g.fill();
}

function canvasBlob(canvas) { return new Promise((ok) => canvas.toBlob(ok, "image/png")); }

async function upload(blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  return (await api("POST", "/v1/uploads", form)).id;
}

// 3. the request ---------------------------------------------------------------------------------------------
function num(id) { const v = $(id).value; return v === "" ? undefined : Number(v); }

async function buildRequest() {
  const task = $("task").value;
  const body = { model: $("model").value, prompt: $("prompt").value };
  const add = (k, v) => { if (v !== undefined && v !== "" && !Number.isNaN(v)) body[k] = v; };
  add("negative_prompt", $("negative_prompt").value || undefined);
  add("seed", num("seed"));
  add("num_inference_steps", num("steps"));
  add("guidance_scale", num("guidance"));
  add("scheduler", $("scheduler").value || undefined);
  add("width", num("width"));
  add("height", num("height"));
  add("preview_every", num("preview_every"));
  if ($("cache").value) body.cache = { method: $("cache").value };
  if (task !== "video") add("num_images", num("num_images"));
  else add("num_frames", num("num_frames"));
  const loras = $("loras").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (loras.length && task !== "video") {
    body.loras = loras.map((l) => { const [name, scale] = l.split(":"); return { name, scale: scale ? Number(scale) : 1 }; });
  }
  if (["img2img", "inpaint", "controlnet"].includes(task)) {
    if (!state.imageBlob) throw new Error("choose or drop an input image first");
    const id = await upload(state.imageBlob, "input.png");
    if (task === "controlnet") {
      body.control_image = id;
      body.controlnet = $("controlnet").value;
      body.preprocess = $("preprocess").value;
    } else {
      body.image = id;
      add("strength", num("strength"));
    }
    if (task === "inpaint") body.mask_image = await upload(await canvasBlob($("mask-canvas")), "mask.png");
  }
  return { task, body };
}

function curlOf(task, body) {
  const auth = key() ? ` -H 'Authorization: Bearer ${key()}'` : "";
  return `curl -sS ${location.origin}/v1/${task}${auth} -H 'Content-Type: application/json' -H 'Prefer: wait' \\\n  -d '${JSON.stringify(body)}'`;
}

// 4. submit, follow the event stream, show the result ---------------------------------------------------------
async function generate(ev) {
  ev.preventDefault();
  $("error").textContent = "";
  $("result").replaceChildren();
  $("preview").replaceChildren();
  $("progress").value = 0;
  try {
    const { task, body } = await buildRequest();
    $("curl").textContent = curlOf(task, body);
    const job = await api("POST", `/v1/${task}`, body);
    state.job = job;
    $("cancel").disabled = false;
    $("generate").disabled = true;
    setStatus(job);
    await follow(job.id);
    show(await api("GET", `/v1/jobs/${job.id}`));
  } catch (e) {
    $("error").textContent = e.message;
  } finally {
    $("generate").disabled = false;
    $("cancel").disabled = true;
  }
}

function setStatus(job) {
  $("status").textContent = `${job.id.slice(0, 16)}… ${job.status}`;
  $("job-json").textContent = JSON.stringify(job, null, 2);
}

async function follow(jobId) {
  state.abort = new AbortController();
  const r = await fetch(`/v1/jobs/${jobId}/events`, { headers: headers(), signal: state.abort.signal });
  if (!r.ok) throw new Error(`events: ${r.status}`);
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const event = (block.match(/^event: (.*)$/m) || [])[1];
      const data = (block.match(/^data: (.*)$/m) || [])[1];
      if (!event || !data) continue;
      const d = JSON.parse(data);
      if (event === "progress") { $("progress").max = d.total; $("progress").value = d.step; }
      if (event === "preview") {
        $("preview").replaceChildren(el("figure", {},
          el("img", { src: d.image, alt: `preview at step ${d.step}`, dataset: { testid: "preview-image" } }),
          el("figcaption", {}, `step ${d.step}/${d.total}`)));
      }
      if (event === "status") {
        $("status").textContent = `${jobId.slice(0, 16)}… ${d.status}`;
        if (["succeeded", "failed", "canceled"].includes(d.status)) { reader.cancel(); return; }
      }
    }
  }
}

function show(job) {
  setStatus(job);
  if (job.status !== "succeeded") {
    $("error").textContent = job.error ? `${job.error.code}: ${job.error.message}` : `job ${job.status}`;
    return;
  }
  $("result").replaceChildren(...job.output.map((o) => {
    const caption = o.role ? o.role.replace("_", " ") : `seed ${o.seed}`;
    const media = o.content_type.startsWith("video/")
      ? el("video", { src: o.url, controls: true, autoplay: true, loop: true, muted: true })
      : el("img", { src: o.url, alt: caption });
    return el("figure", {}, media, el("figcaption", {}, caption));
  }));
}

async function cancel() {
  if (!state.job) return;
  try { await api("POST", `/v1/jobs/${state.job.id}/cancel`); } catch (e) { $("error").textContent = e.message; }
}

// 5. wiring ----------------------------------------------------------------------------------------------------
$("api-key").value = key();
$("api-key").addEventListener("change", () => { localStorage.setItem("diffuserve.apiKey", $("api-key").value.trim()); loadModels(); });
$("model").addEventListener("change", onModel);
$("task").addEventListener("change", onTask);
$("form").addEventListener("submit", generate);
$("cancel").addEventListener("click", cancel);
$("clear-mask").addEventListener("click", clearMask);
$("image-file").addEventListener("change", (e) => e.target.files[0] && setImage(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) setImage(e.dataTransfer.files[0]);
});
$("mask-canvas").addEventListener("pointerdown", paint);
$("mask-canvas").addEventListener("pointermove", paint);
loadModels();
