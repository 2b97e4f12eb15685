// Demo page for POST /landmarks. Plain browser JavaScript, no build step, no other hosts.
//
// Test hooks (tests/browser/test_demo_page.py): the file input is #image; after the overlay
// is drawn document.body.dataset.state is "done" ("error" on failure, with the message in
// #message) and window.lastResult holds the parsed response body.
"use strict";

// The same palette as service/pipeline/draw.py, so the page and /landmarks/render agree.
const GROUP_COLORS = {
  contour: "rgb(0, 200, 255)",
  brows: "rgb(255, 140, 0)",
  nose: "rgb(255, 0, 255)",
  eyes: "rgb(0, 255, 0)",
  mouth: "rgb(255, 0, 0)",
  pupils: "rgb(255, 255, 0)",
};
const UNGROUPED_COLOR = "rgb(0, 255, 128)";
const BOX_COLOR = "rgb(255, 255, 255)";
const DETECTOR_COLOR = "rgb(40, 90, 255)";
const HOVER_RADIUS_PX = 10; // how close (CSS pixels) the pointer must be to pick a point
const TIMING_ORDER = ["decode", "detect", "preprocess", "queue", "inference", "postprocess", "total"];

const els = {};
let file = null; // the photo the user chose
let photoUrl = null; // object URL of that photo, shown in #photo
let result = null; // the last successful /landmarks response
let modelInfo = null; // GET /model, for point names and groups
let targets = []; // drawn points in CSS pixels of the overlay, for hover
let serial = 0; // request counter: only the newest answer is shown

window.lastResult = null;

function setState(state, message) {
  document.body.dataset.state = state;
  els.message.textContent = message;
  els.message.className = state;
}

function groupOfName(name) {
  // Point names come from the server's WFLW schema (service/pipeline/keypoints.py):
  // "right_pupil", "left_brow_upper_2", "contour_07", "upper_lip_outer_center", ...
  if (!name) return null;
  if (name.includes("pupil")) return "pupils";
  if (name.includes("contour")) return "contour";
  if (name.includes("brow")) return "brows";
  if (name.includes("eye")) return "eyes";
  if (name.includes("nose")) return "nose";
  if (name.includes("lip") || name.includes("mouth")) return "mouth";
  return null;
}

// GET /model lists point sets as [{name, indices (WFLW), names}]; an object keyed by set
// name is accepted too. -> {indices, names} for one set, either may be null.
function pointSet(setName) {
  const sets = modelInfo && modelInfo.point_sets;
  let entry = null;
  if (Array.isArray(sets)) entry = sets.find((s) => s && s.name === setName) || null;
  else if (sets && sets[setName]) entry = Array.isArray(sets[setName]) ? { names: sets[setName] } : sets[setName];
  const indices = entry && Array.isArray(entry.indices) ? entry.indices : null;
  let names = entry && Array.isArray(entry.names) ? entry.names : null;
  if (!names && setName === "wflw98" && modelInfo) names = modelInfo.keypoint_names || null;
  return { indices, names };
}

function pointNames(setName, count) {
  const { names } = pointSet(setName);
  return names && names.length === count ? names : null;
}

function pointGroups(setName, names, count) {
  // Preferred: each point's WFLW index against the model's group ranges from /model.
  const { indices } = pointSet(setName);
  const wflw = indices && indices.length === count ? indices
    : setName === "wflw98" ? [...Array(count).keys()] : null;
  const ranges = modelInfo && Array.isArray(modelInfo.groups) ? modelInfo.groups : [];
  if (wflw && ranges.length) {
    return wflw.map((k) => {
      const g = ranges.find((r) => r.start <= k && k < r.stop);
      return g ? g.name : null;
    });
  }
  // Otherwise the point names say what they mark.
  if (names) return names.map(groupOfName);
  return new Array(count).fill(null);
}

function authHeaders() {
  const key = els.apiKey.value.trim();
  return key ? { "X-API-Key": key } : {};
}

async function loadModelInfo() {
  if (modelInfo) return;
  try {
    const response = await fetch("model", { headers: authHeaders() });
    if (response.ok) modelInfo = await response.json();
  } catch (err) {
    // Names and groups are a nicety: without them points are still drawn and hoverable.
  }
}

function describeError(status, body, text) {
  if (body && typeof body === "object" && body.code) {
    const id = body.request_id ? ` (request ${body.request_id})` : "";
    return `${status} ${body.code}: ${body.detail}${id}`;
  }
  return `${status}: ${(text || "no response body").slice(0, 200)}`;
}

function fail(message) {
  targets = [];
  clearOverlay();
  setState("error", message);
}

function choose(chosen) {
  if (!chosen) return;
  file = chosen;
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = URL.createObjectURL(file);
  els.photo.src = photoUrl;
  els.viewer.hidden = false;
  els.run.disabled = false;
  run();
}

async function run() {
  if (!file) return;
  const mine = ++serial;
  result = null;
  els.download.disabled = true;
  clearOverlay();
  setState("loading", `Sending ${file.name} (${Math.round(file.size / 1024)} KB)…`);

  const form = new FormData();
  form.append("image", file, file.name);
  form.append("detect", els.detect.checked ? "true" : "false");
  form.append("flip_test", els.flipTest.checked ? "true" : "false");
  form.append("points", els.points.value);

  let response;
  let text;
  try {
    response = await fetch("landmarks", { method: "POST", body: form, headers: authHeaders() });
    text = await response.text();
  } catch (err) {
    if (mine === serial) fail(`The request failed: ${err.message}`);
    return;
  }
  if (mine !== serial) return;
  let body = null;
  try {
    body = JSON.parse(text);
  } catch (err) {
    body = null;
  }
  window.lastResult = body;
  if (!response.ok) {
    if (response.status === 401) {
      els.auth.classList.add("needed");
      els.apiKey.focus();
      fail(`${describeError(response.status, body, text)}. This server needs an API key: ` +
           "enter it above and press Run again.");
    } else {
      fail(describeError(response.status, body, text));
    }
    return;
  }
  if (!body || !Array.isArray(body.faces) || !body.image) {
    fail("The server answered 200 without a landmarks result.");
    return;
  }
  els.auth.classList.remove("needed");
  result = body;
  await loadModelInfo();
  if (mine !== serial) return;
  await photoReady();
  if (mine !== serial) return;
  showDetails();
  draw();
  els.download.disabled = false;
  const faces = result.faces.length;
  setState("done", faces
    ? `${faces} face${faces === 1 ? "" : "s"}, ${result.points} points, ${fmt((result.timings_ms || {}).total)} ms on the server.`
    : "No faces found (see the warnings).");
}

async function photoReady() {
  try {
    await els.photo.decode();
  } catch (err) {
    // A format the server reads but this browser cannot show: results are still listed.
  }
}

function clearOverlay() {
  const ctx = els.overlay.getContext("2d");
  ctx.clearRect(0, 0, els.overlay.width, els.overlay.height);
  els.tooltip.hidden = true;
}

// Landmarks are in the pixel grid of the image as the server decoded it, with its EXIF
// orientation already applied. Browsers also apply EXIF orientation to <img> by default
// (CSS image-orientation: from-image), so the displayed picture has the same orientation
// and the overlay only needs scaling from result.image's size to the displayed size.
function draw() {
  if (!result) return;
  const shownWidth = els.photo.clientWidth;
  const shownHeight = els.photo.clientHeight;
  const dpr = window.devicePixelRatio || 1;
  const canvas = els.overlay;
  canvas.width = Math.max(1, Math.round(shownWidth * dpr));
  canvas.height = Math.max(1, Math.round(shownHeight * dpr));
  canvas.style.width = `${shownWidth}px`;
  canvas.style.height = `${shownHeight}px`;
  const sx = canvas.width / result.image.width;
  const sy = canvas.height / result.image.height;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  targets = [];

  const show = els.show.value;
  const faces = result.faces;
  const count = faces.length ? faces[0].landmarks.length : 0;
  const names = pointNames(result.points, count);
  const groups = pointGroups(result.points, names, count);

  faces.forEach((face, f) => {
    const [x, y, w, h] = face.bbox;
    const faceSide = Math.max(1, Math.min(w * sx, h * sy));
    const radius = Math.min(6 * dpr, Math.max(2 * dpr, faceSide / 90));
    if (show !== "points") {
      // A dark halo under a white line stays visible on light and dark photos alike.
      ctx.lineWidth = 3 * dpr;
      ctx.strokeStyle = "rgba(0, 0, 0, 0.6)";
      ctx.strokeRect(x * sx, y * sy, w * sx, h * sy);
      ctx.lineWidth = 1.5 * dpr;
      ctx.strokeStyle = BOX_COLOR;
      ctx.strokeRect(x * sx, y * sy, w * sx, h * sy);
      // The detector's score is a probability; the landmark score (a heatmap peak) is not.
      const label = face.detection ? `#${f + 1} face ${face.detection.score.toFixed(2)}`
        : face.score == null ? `#${f + 1}` : `#${f + 1} landmarks ${face.score.toFixed(2)}`;
      ctx.font = `${12 * dpr}px sans-serif`;
      ctx.fillStyle = BOX_COLOR;
      ctx.fillText(label, x * sx + 2 * dpr, y * sy - 4 * dpr);
      if (face.detection && Array.isArray(face.detection.keypoints)) {
        ctx.strokeStyle = DETECTOR_COLOR;
        ctx.lineWidth = 1.5 * dpr;
        const arm = radius * 2.5;
        for (const [kx, ky] of face.detection.keypoints) {
          ctx.beginPath();
          ctx.moveTo(kx * sx - arm, ky * sy - arm);
          ctx.lineTo(kx * sx + arm, ky * sy + arm);
          ctx.moveTo(kx * sx - arm, ky * sy + arm);
          ctx.lineTo(kx * sx + arm, ky * sy - arm);
          ctx.stroke();
        }
      }
    }
    if (show !== "boxes") {
      face.landmarks.forEach(([px, py], k) => {
        if (!Number.isFinite(px) || !Number.isFinite(py)) return;
        ctx.fillStyle = GROUP_COLORS[groups[k]] || UNGROUPED_COLOR;
        ctx.beginPath();
        ctx.arc(px * sx, py * sy, radius, 0, 2 * Math.PI);
        ctx.fill();
        targets.push({ x: (px * sx) / dpr, y: (py * sy) / dpr, face: f, index: k,
                       name: names ? names[k] : null, score: face.scores ? face.scores[k] : null });
      });
    }
  });
}

function fmt(value) {
  return typeof value === "number" ? value.toFixed(1) : "–";
}

function addRow(parent, cells, tag = "td") {
  const row = document.createElement("tr");
  for (const cell of cells) {
    const el = document.createElement(tag);
    el.textContent = cell;
    row.appendChild(el);
  }
  parent.appendChild(row);
}

function addItem(list, text, className) {
  const item = document.createElement("li");
  item.textContent = text;
  if (className) item.className = className;
  list.appendChild(item);
}

function showDetails() {
  els.details.hidden = false;
  const model = result.model || {};
  const dl = els.model;
  dl.replaceChildren();
  const trained = model.trained === true ? "yes"
    : model.trained === false ? "NO: random weights, the points mean nothing" : "unknown";
  const rows = [
    ["name", model.name], ["provider", model.provider], ["precision", model.precision],
    ["trained", trained], ["sha256", model.sha256 ? `${model.sha256.slice(0, 16)}…` : "–"],
    ["flip test", String(result.flip_test)], ["points", result.points],
    ["image", `${result.image.width} × ${result.image.height}`],
  ];
  for (const [term, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value == null ? "–" : value;
    if (term === "trained" && model.trained === false) dd.className = "bad";
    dl.append(dt, dd);
  }

  const tbody = els.timings.tBodies[0];
  tbody.replaceChildren();
  const timings = result.timings_ms || {};
  const keys = TIMING_ORDER.filter((k) => k in timings)
    .concat(Object.keys(timings).filter((k) => !TIMING_ORDER.includes(k)));
  for (const key of keys) addRow(tbody, [key, fmt(timings[key])]);

  els.faces.replaceChildren();
  result.faces.forEach((face) => {
    const box = face.bbox.map((v) => Math.round(v)).join(", ");
    const score = face.score == null ? "–" : face.score.toFixed(3);
    const detected = face.detection ? `, detector ${face.detection.score.toFixed(3)}` : ", your box";
    addItem(els.faces, `box [${box}], landmark score ${score}${detected}`);
  });
  if (!result.faces.length) addItem(els.faces, "none");

  els.warnings.replaceChildren();
  const warnings = result.warnings || [];
  for (const warning of warnings) addItem(els.warnings, warning, "bad");
  if (!warnings.length) addItem(els.warnings, "none");

  // Warn when the browser shows the photo in another shape than the server decoded it
  // (a browser that ignores EXIF orientation): the overlay would then be misplaced.
  const natural = [els.photo.naturalWidth, els.photo.naturalHeight];
  if (natural[0] && (natural[0] !== result.image.width || natural[1] !== result.image.height)) {
    addItem(els.warnings, `This browser shows the photo as ${natural[0]} × ${natural[1]}, the server ` +
      `decoded ${result.image.width} × ${result.image.height}; the overlay may be misplaced.`, "bad");
  }
}

function legend() {
  const entries = Object.entries(GROUP_COLORS).concat([["face box", BOX_COLOR],
    ["detector keypoints", DETECTOR_COLOR]]);
  for (const [name, color] of entries) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = color;
    item.append(swatch, document.createTextNode(name));
    els.legend.appendChild(item);
  }
}

function hover(event) {
  let best = null;
  let bestDistance = HOVER_RADIUS_PX;
  for (const t of targets) {
    const d = Math.hypot(t.x - event.offsetX, t.y - event.offsetY);
    if (d <= bestDistance) {
      best = t;
      bestDistance = d;
    }
  }
  if (!best) {
    els.tooltip.hidden = true;
    return;
  }
  const score = best.score == null ? "no score" : `score ${best.score.toFixed(3)}`;
  const name = best.name ? ` ${best.name}` : "";
  els.tooltip.textContent = `face ${best.face + 1}, point ${best.index}${name}: ${score}`;
  els.tooltip.style.left = `${best.x + 12}px`;
  els.tooltip.style.top = `${best.y + 12}px`;
  els.tooltip.hidden = false;
}

function download() {
  if (!result) return;
  const blob = new Blob([JSON.stringify(result, null, 2)], { type: "application/json" });
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = `${(file && file.name ? file.name : "photo").replace(/\.[^.]*$/, "")}.landmarks.json`;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function init() {
  for (const [key, id] of Object.entries({
    image: "image", drop: "drop", detect: "detect", flipTest: "flip_test", points: "points",
    show: "show", apiKey: "api_key", auth: "auth", run: "run", download: "download",
    message: "message", viewer: "viewer", photo: "photo", overlay: "overlay", tooltip: "tooltip",
    details: "details", model: "model", timings: "timings", faces: "faces", warnings: "warnings",
    legend: "legend",
  })) {
    els[key] = document.getElementById(id);
  }
  els.image.addEventListener("change", () => choose(els.image.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    els.drop.addEventListener(type, (event) => {
      event.preventDefault();
      els.drop.classList.add("over");
    });
  }
  els.drop.addEventListener("dragleave", () => els.drop.classList.remove("over"));
  els.drop.addEventListener("drop", (event) => {
    event.preventDefault();
    els.drop.classList.remove("over");
    choose(event.dataTransfer.files[0]);
  });
  // Options that change the answer ask again; the overlay choice only redraws.
  for (const el of [els.detect, els.flipTest, els.points]) el.addEventListener("change", run);
  els.show.addEventListener("change", draw);
  els.run.addEventListener("click", run);
  els.apiKey.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      run();
    }
  });
  els.download.addEventListener("click", download);
  els.overlay.addEventListener("mousemove", hover);
  els.overlay.addEventListener("mouseleave", () => { els.tooltip.hidden = true; });
  new ResizeObserver(() => draw()).observe(els.photo);
  legend();
}

document.addEventListener("DOMContentLoaded", init);
