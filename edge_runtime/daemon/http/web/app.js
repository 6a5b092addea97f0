// The daemon's web page: live view with labels, live enrollment, classes with quality figures.
// Plain JavaScript, no build step. User-provided text is only ever set as textContent.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
};
const tokenKey = "edgessl-token";
let cameras = [];

function token() { return localStorage.getItem(tokenKey) || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (options.method && options.method !== "GET") headers.Authorization = `Bearer ${token()}`;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : `${response.status} ${response.statusText}`;
    const error = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    error.status = response.status;
    error.body = body;
    throw error;
  }
  return body;
}

// -- token -------------------------------------------------------------------------------------
function showTokenState() { $("#token-state").textContent = token() ? "saved" : "not set"; }
$("#token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  localStorage.setItem(tokenKey, $("#token").value.trim());
  $("#token").value = "";
  showTokenState();
});

// -- live view ---------------------------------------------------------------------------------
function refreshImage(img, cameraId) {
  const next = () => setTimeout(() => { img.src = `/v1/cameras/${encodeURIComponent(cameraId)}/snapshot.jpg?t=${Date.now()}`; }, 250);
  img.onload = next;
  img.onerror = () => setTimeout(next, 750);
  next();
}

function buildCameras() {
  const root = $("#cameras");
  root.replaceChildren();
  for (const cam of cameras) {
    const regions = el("ul", { className: "regions" });
    for (const region of cam.regions) {
      const item = el("li", { className: "region" }, el("span", { className: "name muted", textContent: region.name }),
        el("span", { className: "label", textContent: "…" }), el("span", { className: "score muted" }));
      item.dataset.region = region.name;
      regions.append(item);
    }
    const img = el("img", { alt: `camera ${cam.id}` });
    const card = el("div", { className: "camera" },
      el("div", { className: "title" }, el("strong", { textContent: cam.id }), el("span", { className: `state ${cam.state}`, textContent: cam.state })),
      img, regions);
    card.dataset.camera = cam.id;
    root.append(card);
    refreshImage(img, cam.id);
  }
  const select = $("#enroll-camera");
  select.replaceChildren(...cameras.map((c) => el("option", { value: c.id, textContent: c.id })));
  fillRegions();
}

function fillRegions() {
  const cam = cameras.find((c) => c.id === $("#enroll-camera").value);
  $("#enroll-region").replaceChildren(...(cam ? cam.regions : []).map((r) => el("option", { value: r.name, textContent: r.name })));
}
$("#enroll-camera").addEventListener("change", fillRegions);

async function pollState() {
  try {
    for (const s of await api("/v1/state")) {
      const item = document.querySelector(`.camera[data-camera="${CSS.escape(s.camera)}"] .region[data-region="${CSS.escape(s.region)}"]`);
      if (!item) continue;
      const label = $(".label", item);
      label.textContent = s.label === null ? "…" : s.label;
      label.classList.toggle("unknown", s.label === "unknown" || s.label === null);
      $(".score", item).textContent = s.label === null ? "" : `${s.score.toFixed(2)}${s.latency_ms !== null ? ` · ${s.latency_ms} ms` : ""}`;
    }
  } catch (err) { /* the daemon restarts or the network blinks: try again */ }
  setTimeout(pollState, 500);
}

async function pollCameras() {
  try {
    const fresh = await api("/v1/cameras");
    for (const cam of fresh) {
      const badge = document.querySelector(`.camera[data-camera="${CSS.escape(cam.id)}"] .state`);
      if (badge) { badge.textContent = cam.state; badge.className = `state ${cam.state}`; }
    }
  } catch (err) { /* retry */ }
  setTimeout(pollCameras, 2000);
}

// -- enrollment --------------------------------------------------------------------------------
$("#enroll-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const result = $("#enroll-result");
  const button = $("#enroll-button");
  const camera = $("#enroll-camera").value;
  const body = {
    label: $("#enroll-label").value.trim(),
    region: $("#enroll-region").value || null,
    frames: Number($("#enroll-frames").value) || 5,
    negative: $("#enroll-negative").checked,
  };
  result.className = "";
  result.textContent = `capturing ${body.frames} shots of ${camera}/${body.region}…`;
  button.disabled = true;
  try {
    const r = await api(`/v1/cameras/${encodeURIComponent(camera)}/enroll`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const why = Object.entries(r.reasons).map(([k, v]) => `${k} ×${v}`).join(", ");
    const q = r.quality && r.quality[0];
    result.textContent = `enrolled ${r.added} shot(s) as "${r.label}"${r.rejected ? `; rejected ${r.rejected} (${why})` : ""}` +
      (q ? ` — ${q.exemplars} examples, ${q.advice}` : "");
    loadClasses();
  } catch (err) {
    result.className = "error";
    result.textContent = err.status === 401 ? "enter the API token first (top right)" : `not enrolled: ${err.message}`;
  } finally {
    button.disabled = false;
  }
});

// -- classes -----------------------------------------------------------------------------------
async function loadClasses() {
  let classes;
  try { classes = await api("/v1/classes"); } catch (err) { return; }
  const root = $("#classes");
  if (!classes.length) { root.replaceChildren(el("p", { className: "muted", textContent: "no classes enrolled yet" })); return; }
  root.replaceChildren(...classes.map((c) => {
    const thumbs = el("div", { className: "thumbs" });
    for (const id of c.exemplar_ids.slice(-12)) thumbs.append(el("img", { src: `/v1/exemplars/${id}.jpg`, alt: c.label, title: `exemplar ${id}` }));
    for (const id of c.negative_ids.slice(-6)) thumbs.append(el("img", { src: `/v1/exemplars/${id}.jpg`, alt: `not ${c.label}`, className: "negative", title: `negative ${id}` }));
    const loo = c.loo_accuracy === null ? "—" : `${Math.round(c.loo_accuracy * 100)}%`;
    const near = c.nearest_class === null ? "" : ` · nearest ${c.nearest_class} (${c.nearest_similarity.toFixed(2)})`;
    const remove = el("button", { className: "delete", textContent: "Delete", title: `forget ${c.label}` });
    remove.addEventListener("click", async () => {
      try { await api(`/v1/classes/${encodeURIComponent(c.label)}`, { method: "DELETE" }); loadClasses(); }
      catch (err) { $("#enroll-result").className = "error"; $("#enroll-result").textContent = `not deleted: ${err.message}`; }
    });
    const row = el("div", { className: "class" },
      el("div", {}, el("strong", { className: "name", textContent: c.label }),
        el("div", { className: "figures muted", textContent: `${c.exemplars} examples${c.negatives ? `, ${c.negatives} negative` : ""} · leave-one-out ${loo}${near}` }),
        el("div", { className: "advice figures", textContent: c.advice })),
      thumbs, remove);
    row.dataset.label = c.label;
    return row;
  }));
}

// -- events ------------------------------------------------------------------------------------
function listenEvents() {
  const source = new EventSource("/v1/events");
  const list = $("#events");
  const show = (text) => {
    list.prepend(el("li", { textContent: text }));
    while (list.children.length > 50) list.lastChild.remove();
  };
  source.addEventListener("event", (msg) => {
    const e = JSON.parse(msg.data);
    show(`${e.decision_time} ${e.camera}/${e.region}: ${e.previous ?? "—"} → ${e.label} (${e.score.toFixed(2)}, ${e.latency_ms} ms)`);
  });
  source.addEventListener("model", (msg) => {
    const e = JSON.parse(msg.data);
    show(`model switched to ${e.model.name} v${e.model.version}`);
    showModel(e.model);
    loadClasses();
  });
}

function showModel(m) { $("#model").textContent = `model ${m.name} v${m.version}`; }

async function main() {
  showTokenState();
  try {
    const health = await api("/health");
    $("#device").textContent = health.device;
    if (health.model) showModel(health.model);
  } catch (err) { /* shown as empty */ }
  cameras = await api("/v1/cameras");
  buildCameras();
  pollState();
  pollCameras();
  loadClasses();
  setInterval(loadClasses, 10000);
  listenEvents();
}
main();
