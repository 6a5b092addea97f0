// The daemon's web page: live view with labels, live enrollment, classes with quality figures,
// the latest samples collected for the server.
// Plain JavaScript, no build step. User-provided text is only ever set as textContent.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
};
const tokenKey = "edgessl-token";
const UNDO_S = 10; // how long the page offers to undo a deletion (the daemon keeps it enrollment.undo_s)
let cameras = [];

function token() { return localStorage.getItem(tokenKey) || ""; }

// "1 class", "2 classes", "1 exemplar", "0 shots"
function plural(n, word, many = null) { return `${n} ${n === 1 ? word : (many || `${word}s`)}`; }
const pct = (x) => `${Math.round(x * 100)}%`;

// Everything but the page and /health needs the token (what the cameras see is as private as
// the right to change things), so every request carries it, images and events included.
function authHeaders(extra = {}) {
  return token() ? Object.assign({ Authorization: `Bearer ${token()}` }, extra) : Object.assign({}, extra);
}

async function api(path, options = {}) {
  const headers = authHeaders(options.headers || {});
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

function explain(err, what) {
  return err.status === 401 ? "enter the API token first (top right)" : `${what}: ${err.message}`;
}

// -- token -------------------------------------------------------------------------------------
function showTokenState() { $("#token-state").textContent = token() ? "saved" : "not set"; }
$("#token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  localStorage.setItem(tokenKey, $("#token").value.trim());
  $("#token").value = "";
  showTokenState();
  if (!cameras.length) loadCameras(); // the first token: now the cameras can be shown
  if (!eventsOpen) { clearTimeout(eventsRetry); listenEvents(); } // and the events, without waiting
});

// An <img> whose picture is fetched with the token (an <img src> cannot send it).
function authImg(props) {
  const { src, ...rest } = props;
  const img = el("img", rest);
  img.dataset.src = src; // what it shows, for a person reading the page's HTML
  fetch(src, { headers: authHeaders(), cache: "no-store" }).then(async (r) => {
    if (!r.ok) return;
    img.src = URL.createObjectURL(await r.blob());
    img.onload = () => URL.revokeObjectURL(img.src);
  }).catch(() => {});
  return img;
}

// -- live view ---------------------------------------------------------------------------------
// The picture and the text under it come from one answer: the snapshot carries the region
// states drawn on it (X-Region-States), and the text is set from those when the picture shows.
function showStates(card, states) {
  for (const s of states) {
    const item = $(`.region[data-region="${CSS.escape(s.region)}"]`, card);
    if (!item) continue;
    item.dataset.frame = s.frame;
    const label = $(".label", item);
    label.textContent = s.label === null ? "…" : s.label;
    label.classList.toggle("unknown", s.label === "unknown" || s.label === null);
    const near = s.label === "unknown" && s.nearest ? `nearest ${s.nearest} · ` : "";
    $(".score", item).textContent = s.label === null ? "" :
      `${near}${s.score.toFixed(2)}${s.latency_ms !== null ? ` · ${s.latency_ms} ms` : ""}`;
  }
}

// The objects drawn on the snapshot (boxes with track ids and labels), listed under it.
function showObjects(card, objects) {
  const list = $(".objects", card);
  list.replaceChildren(...objects.map((o) => {
    const label = o.label === null ? "…" : o.label;
    const near = o.label === "unknown" && o.nearest ? ` (nearest ${o.nearest})` : "";
    const where = o.zones.length ? ` · in ${o.zones.join(", ")}` : "";
    const item = el("li", { className: "object" }, el("span", { className: "id", textContent: `#${o.id}` }),
      el("span", { className: `label ${o.label === null ? "pending" : o.label === "unknown" ? "unknown" : ""}`, textContent: label }),
      el("span", { className: "muted", textContent: `${o.score.toFixed(2)}${near} · ${o.state}${where}` }));
    item.dataset.track = o.id;
    return item;
  }));
}

async function refreshSnapshot(card, cameraId) {
  const img = $("img", card);
  try {
    const r = await fetch(`/v1/cameras/${encodeURIComponent(cameraId)}/snapshot.jpg?t=${Date.now()}`, { cache: "no-store", headers: authHeaders() });
    if (r.ok) {
      const states = JSON.parse(r.headers.get("X-Region-States") || "[]");
      const objects = JSON.parse(r.headers.get("X-Objects") || "[]");
      const url = URL.createObjectURL(await r.blob());
      await new Promise((resolve) => {
        img.onload = img.onerror = resolve;
        img.src = url;
      });
      if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
      img.dataset.url = url;
      card.classList.add("has-frame");
      showStates(card, states);
      showObjects(card, objects);
    }
  } catch (err) { /* the daemon restarts or the network blinks: try again */ }
  setTimeout(() => refreshSnapshot(card, cameraId), card.classList.contains("has-frame") ? 250 : 1000);
}

function showCameraState(card, cam) {
  const badge = $(".state", card);
  badge.textContent = cam.state.replace("_", " ");
  badge.className = `state ${cam.state}`;
  const reason = $(".reason", card);
  reason.textContent = cam.reason || "";
  reason.hidden = !cam.reason;
  card.classList.toggle("down", cam.state !== "streaming");
  $(".placeholder", card).textContent = cam.reason || "waiting for the first frame…";
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
    const card = el("div", { className: "camera" },
      el("div", { className: "title" }, el("strong", { textContent: cam.id }), el("span", { className: "state" })),
      el("p", { className: "reason", hidden: true }),
      el("div", { className: "frame" }, el("img", { alt: `camera ${cam.id}` }), el("div", { className: "placeholder" })),
      regions, el("ul", { className: "objects" }));
    card.dataset.camera = cam.id;
    root.append(card);
    showCameraState(card, cam);
    refreshSnapshot(card, cam.id);
  }
  const select = $("#enroll-camera");
  select.replaceChildren(...cameras.filter((c) => c.regions.length).map((c) => el("option", { value: c.id, textContent: c.id })));
  fillRegions();
  if (cameras.some((c) => c.objects)) { $("#tracks-section").hidden = false; loadTracks(); }
}

function fillRegions() {
  const cam = cameras.find((c) => c.id === $("#enroll-camera").value);
  $("#enroll-region").replaceChildren(...(cam ? cam.regions : []).map((r) => el("option", { value: r.name, textContent: r.name })));
}
$("#enroll-camera").addEventListener("change", fillRegions);

function showHealth(health) {
  $("#device").textContent = health.device;
  if (health.model) showModel(health.model);
  for (const [id, cam] of Object.entries(health.cameras || {})) {
    const card = document.querySelector(`.camera[data-camera="${CSS.escape(id)}"]`);
    // without the token /health names each camera's state only
    if (card) showCameraState(card, typeof cam === "string" ? { state: cam, reason: null } : cam);
  }
  showSamples(health.samples); // only in the full report (with the token)
  const problems = (health.storage && health.storage.problems) || [];
  const banner = $("#banner");
  banner.hidden = !problems.length;
  banner.replaceChildren(...(problems.length ? [el("strong", { textContent: "Storage: " }),
    ...problems.map((p) => el("span", { className: "problem", textContent: p }))] : []));
}

async function pollHealth() {
  try { showHealth(await api("/health")); } catch (err) {
    if (err.body && err.body.cameras) showHealth(err.body); // 503: the inference loop is down, the rest still says why
  }
  setTimeout(pollHealth, 2000);
}

// -- enrollment --------------------------------------------------------------------------------
function syncMode() {
  const stable = $("#enroll-until").value === "stable";
  $("#enroll-frames-label").textContent = stable ? "At most" : "Shots";
  if (stable && $("#enroll-negative").checked) $("#enroll-negative").checked = false;
}
$("#enroll-until").addEventListener("change", syncMode);
$("#enroll-negative").addEventListener("change", () => {
  if ($("#enroll-negative").checked) { $("#enroll-until").value = "count"; syncMode(); }
});

function qualityText(q) {
  const parts = [plural(q.exemplars, "exemplar")];
  if (q.negatives) parts.push(plural(q.negatives, "negative"));
  if (q.loo_accuracy !== null) parts.push(`leave-one-out ${pct(q.loo_accuracy)}`);
  if (q.margin !== null && q.nearest_class) parts.push(`margin ${q.margin.toFixed(2)} to ${q.nearest_class}`);
  return parts.join(" · ");
}

$("#enroll-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const result = $("#enroll-result");
  const button = $("#enroll-button");
  const camera = $("#enroll-camera").value;
  const until = $("#enroll-until").value;
  const n = Number($("#enroll-frames").value) || (until === "stable" ? 12 : 5);
  const body = {
    label: $("#enroll-label").value.trim(),
    region: $("#enroll-region").value || null,
    negative: $("#enroll-negative").checked,
    until,
  };
  if (until === "stable") body.max_frames = n; else body.frames = n;
  result.className = "";
  result.textContent = until === "stable"
    ? `capturing shots of ${camera}/${body.region} until "${body.label}" has enough (at most ${n})…`
    : `capturing ${plural(n, "shot")} of ${camera}/${body.region}…`;
  button.disabled = true;
  try {
    const r = await api(`/v1/cameras/${encodeURIComponent(camera)}/enroll`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const why = Object.entries(r.reasons).map(([k, v]) => `${k} ×${v}`).join(", ");
    const q = r.quality && r.quality[0];
    result.replaceChildren(
      el("div", { className: "done", textContent: `enrolled ${plural(r.added, "shot")} as "${r.label}"` +
        `${r.rejected ? `; rejected ${r.rejected} (${why})` : ""}` }),
      el("div", { className: "stopped muted", textContent: `stopped: ${r.stop_reason}` }),
      ...(q ? [el("div", { className: "quality", textContent: `${qualityText(q)} · threshold ${q.threshold.toFixed(2)}` }),
        el("div", { className: `recommendation ${q.recommendation === "enough" ? "ok" : "todo"}`, textContent: `next: ${q.recommendation}` })] : []));
    loadClasses();
  } catch (err) {
    result.className = "error";
    result.textContent = explain(err, "not enrolled");
  } finally {
    button.disabled = false;
  }
});

$("#background-button").addEventListener("click", async () => {
  const result = $("#enroll-result");
  const camera = $("#enroll-camera").value;
  const region = $("#enroll-region").value || null;
  result.className = "";
  result.textContent = `sampling the background of ${camera}/${region} (keep enrolled things out of view)…`;
  try {
    const r = await api(`/v1/cameras/${encodeURIComponent(camera)}/background`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ region }),
    });
    result.textContent = `stored ${plural(r.frames, "background frame")} of ${r.camera}/${r.region}: the thresholds now sit above what it sees when nothing enrolled is there`;
    loadClasses();
  } catch (err) {
    result.className = "error";
    result.textContent = explain(err, "background not stored");
  }
});

// -- recent objects: enroll from a track ("that is X") or reject it ("not X") -----------------
function trackCard(t) {
  const label = t.label === null ? "…" : t.label;
  const near = t.label === "unknown" && t.nearest ? ` (nearest ${t.nearest})` : "";
  const result = el("div", { className: "result muted" });
  const name = el("input", { placeholder: "name it", maxLength: 64, required: true });
  const form = el("form", {}, name, el("button", { type: "submit", className: "enroll-track", textContent: "Enroll" }));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    result.className = "result muted";
    result.textContent = "enrolling…";
    try {
      const r = await api(`/v1/tracks/${t.id}/enroll`, { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ label: name.value.trim() }) });
      result.textContent = `enrolled ${plural(r.added, "crop")} as "${r.label}"`;
      loadClasses();
    } catch (err) { result.className = "result error"; result.textContent = explain(err, "not enrolled"); }
  });
  const children = [authImg({ src: `/v1/tracks/${t.id}/best.jpg`, alt: `track ${t.id}` }),
    el("div", {}, el("span", { className: "muted", textContent: `#${t.id} ` }),
      el("span", { className: `label ${t.label === "unknown" ? "unknown" : ""}`, textContent: label }),
      el("span", { className: "muted", textContent: near })),
    el("div", { className: "muted", textContent: `${t.camera} · ${t.live ? t.state : "left"} · ${t.duration_s.toFixed(1)} s` +
      (t.zones.length ? ` · ${t.zones.join(", ")}` : "") }), form];
  const wrong = t.label && t.label !== "unknown" ? t.label : null;
  if (wrong) {
    const reject = el("button", { type: "button", className: "secondary reject-track", textContent: `Not ${wrong}` });
    reject.addEventListener("click", async () => {
      try {
        const r = await api(`/v1/tracks/${t.id}/reject`, { method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ label: wrong }) });
        result.className = "result muted";
        result.textContent = `added ${plural(r.added, "negative")} of "${r.label}"`;
        loadClasses();
      } catch (err) { result.className = "result error"; result.textContent = explain(err, "not rejected"); }
    });
    children.push(reject);
  }
  children.push(result);
  const card = el("div", { className: `track${t.live ? " live" : ""}` }, ...children);
  card.dataset.track = t.id;
  return card;
}

async function loadTracks() {
  const root = $("#tracks");
  // A card someone is typing a name into is kept as it is.
  const busy = root.contains(document.activeElement) ? document.activeElement.closest(".track") : null;
  try {
    const tracks = await api("/v1/tracks?limit=24");
    if (!tracks.length) root.replaceChildren(el("p", { className: "muted", textContent: "no objects yet: they appear when something moves in view" }));
    else root.replaceChildren(...tracks.map((t) => (busy && busy.dataset.track === String(t.id) ? busy : trackCard(t))));
  } catch (err) { /* the daemon restarts: try again */ }
  setTimeout(loadTracks, 3000);
}

// -- samples: the latest crops kept for the server (hidden while no camera samples) -------------
const REASONS = { unknown: "unknown", low_margin: "hesitant", novel: "novel" };
let samplesShown = null; // what the strip shows: "<newest id>/<stored>"

function sampleCard(s) {
  const card = el("figure", { className: "sample" },
    authImg({ src: `/v1/samples/${s.id}.jpg`, alt: `sample ${s.id}`, title: `#${s.id} ${s.time}` +
      (s.nearest ? ` · nearest ${s.nearest} ${s.score.toFixed(2)}` : "") }),
    el("figcaption", {}, el("span", { className: `reason ${s.reason}`, textContent: REASONS[s.reason] || s.reason }),
      el("span", { className: "muted", textContent: ` ${s.camera}` })));
  card.dataset.sample = s.id;
  return card;
}

async function showSamples(status) {
  const on = Boolean(status && status.enabled && status.store);
  $("#samples-section").hidden = !on;
  if (!on) return;
  const store = status.store;
  const key = `${store.newest_id}/${store.stored}`;
  if (key === samplesShown) return; // nothing new since the last poll
  samplesShown = key;
  $("#samples-count").textContent = `(${plural(store.stored, "sample")} waiting for the server, ` +
    `${Math.round(store.bytes / 1024)} of ${Math.round(store.quota_bytes / 1048576)} MiB)`;
  try {
    // ids only grow: the newest dozen are among the last ids given
    const page = await api(`/v1/samples?after=${Math.max(0, store.newest_id - 100)}&limit=100`);
    const latest = page.samples.slice(-12).reverse();
    $("#samples").replaceChildren(...(latest.length ? latest.map(sampleCard) :
      [el("p", { className: "muted", textContent: "nothing collected yet: crops the model is unsure of appear here" })]));
  } catch (err) { samplesShown = null; /* the daemon restarts: try again at the next poll */ }
}

// -- toast with undo ---------------------------------------------------------------------------
let toastTimer = null;
function toast(text, undo = null, seconds = 5) {
  const box = $("#toast");
  const button = $("#toast-undo");
  clearTimeout(toastTimer);
  $("#toast-text").textContent = text;
  button.hidden = !undo;
  button.onclick = undo ? async () => { button.disabled = true; clearTimeout(toastTimer); await undo(); button.disabled = false; } : null;
  box.hidden = false;
  toastTimer = setTimeout(() => { box.hidden = true; }, seconds * 1000);
}

async function deleteClass(c) {
  const what = plural(c.exemplars, "exemplar") + (c.negatives ? ` and ${plural(c.negatives, "negative")}` : "");
  if (!window.confirm(`Delete "${c.label}" and its ${what}?`)) return;
  let r;
  try {
    r = await api(`/v1/classes/${encodeURIComponent(c.label)}`, { method: "DELETE" });
  } catch (err) {
    toast(explain(err, "not deleted"));
    return;
  }
  loadClasses();
  if (!r.restore) { toast(`Deleted "${r.label}".`); return; }
  const seconds = Math.min(UNDO_S, r.undo_s);
  toast(`Deleted "${r.label}" (${plural(r.removed, "exemplar")}).`, async () => {
    try {
      const back = await api(r.restore, { method: "POST" });
      toast(`Restored "${back.label}" (${plural(back.restored, "exemplar")}).`);
    } catch (err) { toast(explain(err, "not restored")); }
    loadClasses();
  }, seconds);
}

// -- classes -----------------------------------------------------------------------------------
async function loadClasses() {
  let classes;
  try { classes = await api("/v1/classes"); } catch (err) { return; }
  $("#class-count").textContent = `(${plural(classes.length, "class", "classes")})`;
  const root = $("#classes");
  if (!classes.length) { root.replaceChildren(el("p", { className: "muted", textContent: "no classes enrolled yet" })); return; }
  root.replaceChildren(...classes.map((c) => {
    const thumbs = el("div", { className: "thumbs" });
    for (const id of c.exemplar_ids.slice(-12)) thumbs.append(authImg({ src: `/v1/exemplars/${id}.jpg`, alt: c.label, title: `exemplar ${id}` }));
    for (const id of c.negative_ids.slice(-6)) thumbs.append(authImg({ src: `/v1/exemplars/${id}.jpg`, alt: `not ${c.label}`, className: "negative", title: `negative ${id}` }));
    const remove = el("button", { className: "delete", textContent: "Delete", title: `forget ${c.label}` });
    remove.addEventListener("click", () => deleteClass(c));
    const threshold = c.threshold === null ? "—" : c.threshold.toFixed(2);
    const row = el("div", { className: "class" },
      el("div", {}, el("strong", { className: "name", textContent: c.label }),
        el("div", { className: "figures muted", textContent: qualityText(c) }),
        el("div", { className: "threshold figures muted", title: c.threshold_reason || "",
          textContent: `threshold ${threshold} (${c.threshold_calibrated ? "calibrated" : "global"})` }),
        el("div", { className: `recommendation figures ${c.recommendation === "enough" ? "ok" : "todo"}`, textContent: c.recommendation })),
      thumbs, remove);
    row.dataset.label = c.label;
    row.dataset.threshold = threshold;
    return row;
  }));
}

// -- events ------------------------------------------------------------------------------------
// Server-sent events read with fetch (EventSource cannot send the token), reconnecting after 2 s.
const handlers = {
  event(e) {
    const near = e.label === "unknown" && e.nearest ? `, nearest ${e.nearest}` : "";
    showEvent(`${e.decision_time} ${e.camera}/${e.region}: ${e.previous ?? "—"} → ${e.label} (${e.score.toFixed(2)}${near}, ${e.latency_ms} ms)`);
  },
  object(e) {
    const what = { entered: "entered", label: `is ${e.label}`, changed: `${e.previous} → ${e.label}`,
      left: `left after ${e.duration_s.toFixed(1)} s (${e.label ?? "unnamed"})` }[e.event];
    const where = e.zones.length ? ` in ${e.zones.join(", ")}` : "";
    showEvent(`${e.decision_time} ${e.camera} #${e.track}${where}: ${what}`);
  },
  drift(e) {
    showEvent(`${e.time} ${e.camera}: drift ${e.score.toFixed(2)} ≥ ${e.threshold} (looks different from when model ${e.model} was installed)`);
  },
  model(e) {
    showEvent(`model switched to ${e.model.name} v${e.model.version}`);
    showModel(e.model);
    loadClasses();
  },
};

function showEvent(text) {
  const list = $("#events");
  list.prepend(el("li", { textContent: text }));
  while (list.children.length > 50) list.lastChild.remove();
}

let eventsOpen = false, eventsRetry = null;
async function listenEvents() {
  try {
    const r = await fetch("/v1/events", { headers: authHeaders(), cache: "no-store" });
    if (r.ok && r.body) {
      eventsOpen = true;
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let kind = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) kind = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data && handlers[kind]) handlers[kind](JSON.parse(data));
        }
      }
    }
  } catch (err) { /* the daemon restarts or the network blinks */ }
  eventsOpen = false;
  eventsRetry = setTimeout(listenEvents, token() ? 2000 : 5000);
}

function showModel(m) { $("#model").textContent = `model ${m.name} v${m.version}`; }

async function loadCameras() {
  try { cameras = await api("/v1/cameras"); } catch (err) {
    cameras = [];
    if (err.status === 401) {
      $("#cameras").replaceChildren(el("p", { className: "muted need-token", textContent: "Enter the API token (top right) to see the cameras." }));
      return;
    }
  }
  buildCameras();
  loadClasses();
}

async function main() {
  showTokenState();
  syncMode();
  // The cameras first, so that their snapshots are requested at once (no blank cards).
  await loadCameras();
  pollHealth();
  setInterval(loadClasses, 10000);
  listenEvents();
}
main();
