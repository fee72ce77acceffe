// trafficcast dashboard: sensors on an SVG map coloured by forecast speed, and a chart per sensor.
// Everything comes from this service's own API; nothing is fetched from elsewhere.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const MAP_W = 800, MAP_H = 600, PAD = 24;
const state = { model: null, sensors: [], forecast: null, selected: null };

// Speed bands in the data's units (mph for METR-LA): congested to free-flowing.
const BANDS = [
  { max: 25, color: "#c92a2a", label: "< 25" },
  { max: 40, color: "#f76707", label: "25–40" },
  { max: 55, color: "#fcc419", label: "40–55" },
  { max: Infinity, color: "#2b8a3e", label: "≥ 55" },
];
const NO_DATA = "#adb5bd";
const BAND_LEVEL = 0.8;  // central coverage of the band drawn around the forecast

function colorFor(speed) {
  if (speed === null || speed === undefined || !Number.isFinite(speed)) return NO_DATA;
  return BANDS.find((b) => speed < b.max).color;
}

function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

async function getJSON(url) {
  const res = await fetch(url);
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = new Error(body.detail || `${url}: HTTP ${res.status}`);
    err.field = body.field;
    throw err;
  }
  return body;
}

function setStatus(text) { document.getElementById("status").textContent = text || ""; }

// Equirectangular projection scaled by cos(latitude): fine over a city.
function projector(points) {
  const lats = points.map((p) => p.latitude), lons = points.map((p) => p.longitude);
  const lat0 = (Math.min(...lats) + Math.max(...lats)) / 2;
  const kx = Math.cos((lat0 * Math.PI) / 180);
  const xs = lons.map((l) => l * kx);
  const minX = Math.min(...xs), maxX = Math.max(...xs);
  const minY = Math.min(...lats), maxY = Math.max(...lats);
  const scale = Math.min((MAP_W - 2 * PAD) / (maxX - minX || 1), (MAP_H - 2 * PAD) / (maxY - minY || 1));
  const offX = (MAP_W - (maxX - minX) * scale) / 2, offY = (MAP_H - (maxY - minY) * scale) / 2;
  return (p) => [offX + (p.longitude * kx - minX) * scale, MAP_H - (offY + (p.latitude - minY) * scale)];
}

function horizonStep() {
  const minutes = Number(document.getElementById("horizon").value);
  const freq = state.model ? state.model.freq_minutes : 5;
  const step = Math.round(minutes / freq);
  return Math.max(1, Math.min(step, state.model ? state.model.horizon : step));
}

function forecastAt(sensorId, step) {
  const f = state.forecast;
  if (!f) return null;
  const k = f.index.get(sensorId);
  return k === undefined ? null : f.forecast[step - 1][k];
}

function drawMap() {
  const svg = document.getElementById("map");
  svg.replaceChildren();
  const placed = state.sensors.filter((s) => s.latitude !== null && s.longitude !== null);
  if (!placed.length) { setStatus("no sensor coordinates known for this model"); return; }
  const project = projector(placed);
  const step = horizonStep();
  for (const s of placed) {
    const [x, y] = project(s);
    const speed = forecastAt(s.id, step);
    const c = el("circle", {
      cx: x.toFixed(1), cy: y.toFixed(1), r: 6, class: "sensor", fill: colorFor(speed),
      "data-sensor": s.id,
    }, svg);
    if (s.id === state.selected) c.classList.add("selected");
    const title = el("title", {}, c);
    title.textContent = `sensor ${s.id}: ${speed === null ? "no forecast" : speed.toFixed(1)}`;
    c.addEventListener("click", () => selectSensor(s.id));
  }
  drawLegend();
}

function drawLegend() {
  const legend = document.getElementById("legend");
  legend.replaceChildren();
  for (const b of [...BANDS, { color: NO_DATA, label: "no forecast" }]) {
    const span = document.createElement("span");
    const dot = document.createElement("i");
    dot.style.background = b.color;
    span.append(dot, b.label);
    legend.appendChild(span);
  }
}

async function selectSensor(id) {
  state.selected = id;
  document.querySelectorAll("#map circle.selected").forEach((c) => c.classList.remove("selected"));
  const circle = document.querySelector(`#map circle[data-sensor="${CSS.escape(id)}"]`);
  if (circle) circle.classList.add("selected");
  const panel = document.getElementById("detail");
  panel.hidden = false;
  document.getElementById("detail-title").textContent = `sensor ${id}`;
  let history;
  try {
    history = await getJSON(`/v1/history?sensor=${encodeURIComponent(id)}&steps=36`);
  } catch (err) {
    document.getElementById("detail-summary").textContent = err.message;
    document.getElementById("chart").replaceChildren();
    return;
  }
  const f = state.forecast;
  const k = f ? f.index.get(id) : undefined;
  const future = f && k !== undefined
    ? f.timestamps.map((t, i) => ({
      t: Date.parse(t), v: f.forecast[i][k],
      lo: f.lower ? f.lower[i][k] : null, hi: f.upper ? f.upper[i][k] : null,
    }))
    : [];
  const past = history.timestamps.map((t, i) => ({ t: Date.parse(t), v: history.speeds[i] }));
  drawChart(past, future);
  const step = horizonStep();
  const ahead = forecastAt(id, step);
  const band = future[step - 1] && future[step - 1].lo !== null
    ? ` (${Math.round(BAND_LEVEL * 100)} %: ${future[step - 1].lo.toFixed(1)}–${future[step - 1].hi.toFixed(1)})`
    : "";
  document.getElementById("detail-summary").textContent =
    `last data ${history.timestamps[history.timestamps.length - 1].replace("T", " ")}; ` +
    (ahead === null ? "no forecast" : `${(step * state.model.freq_minutes)} min ahead: ${ahead.toFixed(1)}${band}`);
}

function drawChart(past, future) {
  const svg = document.getElementById("chart");
  svg.replaceChildren();
  const W = 520, H = 300, L = 44, R = 12, T = 12, B = 30;
  const banded = future.filter((p) => p.lo !== null && p.lo !== undefined);
  const all = [...past, ...future, ...banded.map((p) => ({ v: p.lo })), ...banded.map((p) => ({ v: p.hi }))]
    .filter((p) => p.v !== null && Number.isFinite(p.v));
  if (!all.length) { el("text", { x: L, y: H / 2 }, svg).textContent = "no readings"; return; }
  const t0 = Math.min(...past.concat(future).map((p) => p.t));
  const t1 = Math.max(...past.concat(future).map((p) => p.t));
  let v0 = Math.min(...all.map((p) => p.v)), v1 = Math.max(...all.map((p) => p.v));
  v0 = Math.max(0, Math.floor((v0 - 5) / 10) * 10); v1 = Math.ceil((v1 + 5) / 10) * 10;
  const x = (t) => L + ((t - t0) / (t1 - t0 || 1)) * (W - L - R);
  const y = (v) => T + (1 - (v - v0) / (v1 - v0 || 1)) * (H - T - B);
  for (let v = v0; v <= v1; v += 10) {
    el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }, svg);
    el("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, svg).textContent = v;
  }
  el("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }, svg);
  el("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }, svg);
  const fmt = (t) => new Date(t).toISOString().slice(11, 16);
  // Hour marks between the ends, plus the ends themselves anchored inside the plot.
  const hour = 3600e3;
  for (let t = Math.ceil(t0 / hour) * hour; t <= t1; t += hour) {
    if (t - t0 < hour / 3 || t1 - t < hour / 3) continue;
    el("text", { x: x(t), y: H - 10, "text-anchor": "middle" }, svg).textContent = fmt(t);
  }
  el("text", { x: x(t0), y: H - 10, "text-anchor": "start" }, svg).textContent = fmt(t0);
  el("text", { x: x(t1), y: H - 10, "text-anchor": "end" }, svg).textContent = fmt(t1);
  const pathOf = (points) => {
    let d = "", pen = false;
    for (const p of points) {
      if (p.v === null || !Number.isFinite(p.v)) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`;
      pen = true;
    }
    return d;
  };
  if (past.length) {
    const now = past[past.length - 1].t;
    el("line", { x1: x(now), x2: x(now), y1: T, y2: H - B, class: "now" }, svg);
    el("path", { d: pathOf(past), class: "history", id: "history-line" }, svg);
  }
  const last = [...past].reverse().find((p) => p.v !== null && Number.isFinite(p.v));
  if (banded.length) {
    // The band opens from the last observation: nothing is uncertain about the present.
    const start = last ? [{ t: last.t, lo: last.v, hi: last.v }] : [];
    const edge = [...start, ...banded];
    const d = edge.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.hi).toFixed(1)}`).join("") +
      [...edge].reverse().map((p) => `L${x(p.t).toFixed(1)},${y(p.lo).toFixed(1)}`).join("") + "Z";
    el("path", { d, class: "band", id: "forecast-band" }, svg);
  }
  if (future.length) {
    // Start the forecast at the last observation so the two lines join.
    el("path", { d: pathOf(last ? [last, ...future] : future), class: "forecast", id: "forecast-line" }, svg);
  }
}

async function loadForecast() {
  const url = `/v1/forecast?horizon=${state.model.horizon}`;
  try {
    // The band when the model is calibrated; a model without calibration refuses "interval".
    const f = await getJSON(`${url}&interval=${BAND_LEVEL}`).catch((err) => {
      if (err.field !== "interval") throw err;
      return getJSON(url);
    });
    document.getElementById("band-key").hidden = !f.lower;
    f.index = new Map(f.sensors.map((s, i) => [s, i]));
    state.forecast = f;
    setStatus("");
    document.getElementById("model-line").textContent =
      `model ${state.model.version} · ${state.model.sensors} sensors · forecast from ` +
      `${f.last_observation.replace("T", " ")}`;
  } catch (err) {
    state.forecast = null;
    setStatus(err.message);
  }
}

async function main() {
  try {
    state.model = await getJSON("/v1/model");
  } catch (err) {
    setStatus(`${err.message} — retrying`);
    setTimeout(main, 3000);
    return;
  }
  document.getElementById("model-line").textContent =
    `model ${state.model.version} · ${state.model.sensors} sensors`;
  document.getElementById("quantity-line").textContent =
    `forecasts ${state.model.quantity} in ${state.model.unit}`;
  state.sensors = (await getJSON("/v1/sensors")).sensors;
  await loadForecast();
  drawMap();
  document.body.dataset.ready = "true";
  document.getElementById("horizon").addEventListener("change", () => {
    drawMap();
    if (state.selected) selectSensor(state.selected);
  });
  // New observations arrive over time: refresh the colours every minute.
  setInterval(async () => { await loadForecast(); drawMap(); }, 60000);
}

main();

// ---- live accuracy panel: the recorded forecasts scored against later readings, beside the
// test-split figures the model shipped with (GET /v1/accuracy). Independent of the map above.
function fmtNumber(v, digits = 2) {
  return v === null || v === undefined || !Number.isFinite(v) ? "—" : v.toFixed(digits);
}

function drawAccuracy(acc) {
  const panel = document.getElementById("accuracy-panel");
  const tests = acc.test_metrics ? acc.test_metrics.dcrnn || Object.values(acc.test_metrics)[0] : null;
  const day = acc.windows["24h"], hour = acc.windows["1h"];
  const body = document.querySelector("#accuracy-table tbody");
  body.replaceChildren();
  for (const key of Object.keys(day.horizons)) {
    const d = day.horizons[key], h = hour.horizons[key];
    const tr = document.createElement("tr");
    tr.dataset.horizon = key;
    const cells = [
      key,
      fmtNumber(tests && tests[key] ? tests[key].mae : null),
      fmtNumber(h.mae),
      fmtNumber(d.mae),
      fmtNumber(d.rmse),
      d.coverage === null ? "—" : `${(100 * d.coverage).toFixed(1)}%`,
      String(d.scored),
    ];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  document.getElementById("accuracy-summary").textContent =
    `${acc.forecasts} forecasts of model ${acc.model_version} recorded` +
    (day.end ? `; windows end at the latest reading, ${day.end.replace("T", " ")}` : "") +
    (acc.pending ? `; ${acc.pending} steps still being scored` : "");
  panel.hidden = false;
}

async function loadAccuracy() {
  try {
    drawAccuracy(await getJSON("/v1/accuracy"));
    document.getElementById("accuracy-panel").dataset.ready = "true";
  } catch (err) {
    document.getElementById("accuracy-panel").hidden = true;  // off, or no model yet
  }
}

loadAccuracy();
setInterval(loadAccuracy, 60000);
