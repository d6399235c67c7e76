// Map page of cvm-geoloc (Leaflet, bundled in /static/vendor/leaflet; no network beyond this server).
//
// Layers, bottom to top: the build's overview image (the basemap, made at index time), the
// coverage outline, the score heat map of the last query (the best `heat` tiles of the same
// search, coloured by score), the candidates' footprints, the location estimate's circle, and the
// candidates' numbered markers, laid out so that none hides another.
"use strict";

const HEAT_RAMP = [[44, 123, 182], [171, 217, 233], [255, 255, 191], [253, 174, 97], [215, 25, 28]];
const HEAT_OPACITY = 0.65;
const COVERAGE_STYLE = { color: "#00e5ff", weight: 2, opacity: 1, fill: false, interactive: false };
const FOOTPRINT_STYLE = { color: "#ffb000", weight: 2, opacity: 1, fill: false };
const SELECTED_STYLE = { color: "#1f6feb", weight: 4 };
const ESTIMATE_STYLE = { color: "#d6007a", weight: 3, opacity: 1, dashArray: "8 6", fill: false };
const PRIOR_STYLE = { color: "#00c800", weight: 3, opacity: 1, fill: false, interactive: false };
const MARKER_PX = 24; // diameter of a candidate marker; centres closer than this are spread out
const M_PER_DEG_LAT = 110540;
const M_PER_DEG_LON = 111320;
const RETRY_MS = 5000;

const $ = (id) => document.getElementById(id);

// With CVM_API_KEY set on the server, API calls answer 401 until the key is given: it is asked
// for once and kept as a same-site cookie, which the API calls and the images then carry.
async function apiFetch(url, options) {
  let resp = await fetch(url, options);
  if (resp.status === 401) {
    const key = window.prompt("This service needs an API key (CVM_API_KEY):");
    if (key) {
      document.cookie = `cvm_api_key=${encodeURIComponent(key)}; path=/; SameSite=Strict`;
      resp = await fetch(url, options);
    }
  }
  return resp;
}

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

// --- the map -------------------------------------------------------------------------------------

const map = L.map("map", { zoomSnap: 0.25, minZoom: 1, maxZoom: 24, attributionControl: false });
map.setView([20, 0], 2);
for (const [name, z] of [["basemap", 250], ["coverage", 350], ["heat", 380], ["footprints", 420]]) {
  map.createPane(name).style.zIndex = String(z);
}
map.getPane("basemap").style.pointerEvents = "none";
map.getPane("heat").style.pointerEvents = "none";
L.control.scale({ imperial: false }).addTo(map);
window.cvmMap = map; // for the page test and the browser console
// The map keeps its view centred when its box changes size (the tile card appearing, a resize).
new ResizeObserver(() => map.invalidateSize({ pan: false })).observe(map.getContainer());

const layers = {
  basemap: L.layerGroup().addTo(map),
  coverage: L.layerGroup().addTo(map),
  heat: L.layerGroup().addTo(map),
  footprints: L.layerGroup().addTo(map),
  estimate: L.layerGroup().addTo(map),
  prior: L.layerGroup().addTo(map),
  markers: L.layerGroup().addTo(map),
};
L.control.layers(null, {
  imagery: layers.basemap,
  coverage: layers.coverage,
  "score heat map": layers.heat,
  "location estimate": layers.estimate,
  "search prior": layers.prior,
  candidates: layers.markers,
}, { position: "topright" }).addTo(map);
window.cvmLayers = layers;
const heatRenderer = L.canvas({ pane: "heat", padding: 0.2 });

const state = { build: null, candidates: [], footprints: new Map() };

// A button that zooms back out to the whole indexed area.
const WholeArea = L.Control.extend({
  options: { position: "topleft" },
  onAdd() {
    const button = L.DomUtil.create("button", "whole-area");
    button.type = "button";
    button.title = "Show the whole indexed area";
    button.textContent = "whole area";
    L.DomEvent.disableClickPropagation(button);
    button.addEventListener("click", showWholeArea);
    return button;
  },
});
new WholeArea().addTo(map);

function boundsOf(bbox) {
  const [w, s, e, n] = bbox;
  return L.latLngBounds([s, w], [n, e]);
}

function showWholeArea() {
  if (state.build) map.fitBounds(boundsOf(state.build.bbox), { padding: [16, 16], animate: false });
}

// The served build: overview image and coverage outline. Retried while no build is served.
async function loadBuild() {
  let resp, body;
  try {
    resp = await apiFetch("/builds/active");
    body = await resp.json();
  } catch (err) {
    setStatus(`The service cannot be reached (${err.message}); retrying.`, true);
    setTimeout(loadBuild, RETRY_MS);
    return;
  }
  if (!resp.ok) {
    $("build-info").textContent = `No index served: ${body.detail}`;
    setTimeout(loadBuild, RETRY_MS);
    return;
  }
  state.build = body;
  layers.basemap.clearLayers();
  layers.coverage.clearLayers();
  const tiles = body.n_tiles.toLocaleString("en");
  $("build-info").textContent = `Build ${body.build_id}: ${tiles} tiles` +
    (body.overview ? "" : " (no overview image: tile outlines only)");
  if (body.overview) {
    L.imageOverlay(body.overview.url, boundsOf(body.overview.bounds), {
      pane: "basemap", interactive: false, className: "overview",
    }).addTo(layers.basemap);
  }
  showWholeArea();
  try {
    const cov = await apiFetch(body.coverage_url);
    if (cov.ok) {
      L.geoJSON(await cov.json(), { pane: "coverage", style: () => COVERAGE_STYLE }).addTo(layers.coverage);
    }
  } catch (err) {
    // The outline is decoration: the page works without it.
  }
  document.body.dataset.build = String(body.build_id);
}

// --- the heat map --------------------------------------------------------------------------------

function heatColour(t) {
  const x = Math.min(Math.max(t, 0), 1) * (HEAT_RAMP.length - 1);
  const i = Math.min(Math.floor(x), HEAT_RAMP.length - 2);
  const f = x - i;
  const c = HEAT_RAMP[i].map((v, j) => Math.round(v + (HEAT_RAMP[i + 1][j] - v) * f));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

function metresBetween(a, b) {
  const kx = M_PER_DEG_LON * Math.cos((a[1] * Math.PI) / 180);
  return Math.hypot((a[0] - b[0]) * kx, (a[1] - b[1]) * M_PER_DEG_LAT);
}

function median(values) {
  if (!values.length) return NaN;
  const v = [...values].sort((a, b) => a - b);
  return v[Math.floor(v.length / 2)];
}

// Each heat point is a disc of half the spacing of the points (at most half a tile), so that the
// discs of neighbouring tiles touch without covering each other's centres.
function heatRadius(points, candidates) {
  const tileM = median(candidates.map((c) => (c.bbox[3] - c.bbox[1]) * M_PER_DEG_LAT)) || 70;
  if (points.length < 2) return tileM / 2;
  const sample = points.slice(0, 400);
  const nearest = sample.map((p) => Math.min(...points.filter((q) => q !== p).map((q) => metresBetween(p, q))));
  return Math.max(Math.min(tileM / 2, median(nearest) / 2), 0.5);
}

function drawHeat(points, candidates) {
  layers.heat.clearLayers();
  $("heat-legend")?.remove();
  if (!points || !points.length) return;
  const scores = points.map((p) => p[2]);
  const lo = Math.min(...scores);
  const hi = Math.max(...scores);
  const radius = heatRadius(points, candidates);
  // Worst first, so that the best tiles are drawn on top.
  for (const [lon, lat, score] of [...points].reverse()) {
    const t = hi > lo ? (score - lo) / (hi - lo) : 1;
    L.circle([lat, lon], {
      radius, renderer: heatRenderer, stroke: false, fillColor: heatColour(t), fillOpacity: HEAT_OPACITY,
      interactive: false,
    }).addTo(layers.heat);
  }
  const legend = L.DomUtil.create("div", "heat-legend");
  legend.id = "heat-legend";
  const stops = HEAT_RAMP.map((c) => `rgb(${c.join(",")})`).join(", ");
  legend.innerHTML = `<div class="title"></div><div class="bar"></div><div class="ends"><span></span><span></span></div>`;
  legend.querySelector(".title").textContent = `score of the best ${points.length} tiles`;
  legend.querySelector(".bar").style.background = `linear-gradient(to right, ${stops})`;
  const [low, high] = legend.querySelectorAll(".ends span");
  low.textContent = lo.toFixed(3);
  high.textContent = hi.toFixed(3);
  map.getContainer().appendChild(legend);
}

// --- candidates ----------------------------------------------------------------------------------

function drawCandidates(candidates) {
  layers.footprints.clearLayers();
  layers.markers.clearLayers();
  state.footprints.clear();
  state.candidates = [];
  for (const c of [...candidates].reverse()) {
    const rect = L.rectangle(boundsOf(c.bbox), { ...FOOTPRINT_STYLE, pane: "footprints" })
      .bindTooltip(`#${c.rank} tile ${c.tile_id} score ${c.score.toFixed(3)}`)
      .on("click", () => selectTile(c.tile_id))
      .addTo(layers.footprints);
    state.footprints.set(c.tile_id, rect);
  }
  for (const c of candidates) {
    const at = L.latLng(c.lat, c.lon);
    const leader = L.polyline([], { color: "#1d2630", weight: 1.5, interactive: false }).addTo(layers.markers);
    const dot = L.circleMarker(at, { radius: 3, color: "#fff", weight: 1, fillColor: "#1d2630", fillOpacity: 1 })
      .addTo(layers.markers);
    const marker = L.marker(at, {
      icon: L.divIcon({
        className: "cand-marker",
        html: `<span>${c.rank}</span>`,
        iconSize: [MARKER_PX, MARKER_PX],
        iconAnchor: [MARKER_PX / 2, MARKER_PX / 2],
      }),
      title: `#${c.rank} tile ${c.tile_id} score ${c.score.toFixed(3)}`,
      riseOnHover: true,
    }).on("click", () => selectTile(c.tile_id)).addTo(layers.markers);
    const el = marker.getElement();
    el.dataset.rank = String(c.rank);
    el.dataset.tileId = String(c.tile_id);
    state.candidates.push({ c, at, marker, leader, dot });
  }
  layoutMarkers();
}

// Markers closer than their size are moved, best rank first, to the nearest free place on rings
// around their tile (a leader line joins a moved marker to its tile's centre, marked by a dot).
function layoutMarkers() {
  const placed = [];
  const free = (p) => placed.every((q) => q.distanceTo(p) >= MARKER_PX + 2);
  for (const item of state.candidates) {
    const home = map.latLngToLayerPoint(item.at);
    let pos = home;
    if (!free(home)) {
      search: for (let ring = 1; ring <= 8; ring++) {
        const n = 6 * ring;
        for (let i = 0; i < n; i++) {
          const a = (2 * Math.PI * i) / n - Math.PI / 2;
          const p = home.add(L.point(Math.cos(a), Math.sin(a)).multiplyBy((MARKER_PX + 4) * ring));
          if (free(p)) { pos = p; break search; }
        }
      }
    }
    placed.push(pos);
    const where = map.layerPointToLatLng(pos);
    item.marker.setLatLng(where);
    item.leader.setLatLngs(pos === home ? [] : [item.at, where]);
    item.marker.getElement().classList.toggle("moved", pos !== home);
  }
}
map.on("zoomend", layoutMarkers);

function drawList(candidates) {
  const list = $("candidates");
  list.replaceChildren();
  for (const c of candidates) {
    const li = document.createElement("li");
    li.className = "candidate-item";
    li.dataset.tileId = c.tile_id;
    li.innerHTML = `<span class="rank"></span><span class="where"></span><span class="score"></span>`;
    li.querySelector(".rank").textContent = `#${c.rank}`;
    li.querySelector(".where").textContent = `${c.lat.toFixed(6)}, ${c.lon.toFixed(6)}`;
    li.querySelector(".score").textContent = c.score.toFixed(3);
    li.addEventListener("click", () => {
      selectTile(c.tile_id);
      map.fitBounds(boundsOf(c.bbox), { padding: [40, 40] });
    });
    list.appendChild(li);
  }
}

function markSelected(tileId) {
  for (const el of document.querySelectorAll("[data-tile-id]")) {
    el.classList.toggle("selected", el.dataset.tileId === String(tileId));
  }
  for (const [id, rect] of state.footprints) {
    rect.setStyle(id === tileId ? SELECTED_STYLE : FOOTPRINT_STYLE);
    if (id === tileId) rect.bringToFront();
  }
}

async function selectTile(tileId) {
  markSelected(tileId);
  let resp, body;
  try {
    resp = await apiFetch(`/tiles/${tileId}`);
    body = await resp.json();
  } catch (err) {
    setStatus(`tile ${tileId}: the service cannot be reached (${err.message})`, true);
    return;
  }
  if (!resp.ok) { setStatus(`Tile ${tileId}: ${body.detail}`, true); return; }
  $("tile").hidden = false;
  $("tile-title").textContent = `Tile ${body.tile_id} (build ${body.build_id})`;
  $("tile-image").src = body.image_url;
  const rows = [
    ["centre (lat, lon)", `${body.lat.toFixed(6)}, ${body.lon.toFixed(6)}`],
    ["bbox [W, S, E, N]", body.bbox.map((v) => v.toFixed(6)).join(", ")],
    ["size", `${body.size_m} m`],
    ["GSD", body.gsd_m === null ? "n/a" : `${body.gsd_m.toFixed(3)} m/px`],
    ["CRS", body.crs ?? "n/a"],
    ["source", body.source],
    ["window", body.window ? body.window.map((v) => v.toFixed(1)).join(", ") : "pre-cut tile"],
  ];
  const table = $("tile-meta");
  table.replaceChildren();
  for (const [k, v] of rows) {
    const tr = table.insertRow();
    const th = document.createElement("th");
    th.textContent = k;
    tr.appendChild(th);
    tr.insertCell().textContent = v;
  }
}

// --- the location estimate -----------------------------------------------------------------------

function percent(confidence) {
  return `${Math.round((confidence <= 1 ? confidence * 100 : confidence))} %`;
}

// `estimate` is {lat, lon, radius_m, confidence, confident, note, reason}, or null / absent (a
// service that does not estimate): then nothing is drawn.
function drawEstimate(estimate) {
  layers.estimate.clearLayers();
  const box = $("estimate");
  box.replaceChildren();
  box.className = "";
  if (!estimate) { box.hidden = true; return; }
  box.hidden = false;
  const title = document.createElement("strong");
  const note = document.createElement("span");
  note.className = "note";
  note.textContent = estimate.note || "";
  if (!estimate.confident) {
    // The reason (e.g. the image is unlike the imagery the weights know) says why, when known.
    if (estimate.reason) note.textContent = `${note.textContent}: ${estimate.reason}`;
    box.className = "no-match";
    title.textContent = "No confident match";
    box.append(title, note);
    return;
  }
  box.className = "confident";
  const radius = Math.max(Number(estimate.radius_m) || 0, 1);
  title.textContent = `Estimate: ${estimate.lat.toFixed(6)}, ${estimate.lon.toFixed(6)} ` +
    `\u00b1 ${Math.round(radius)} m, confidence ${percent(estimate.confidence)}`;
  box.append(title, note);
  L.circle([estimate.lat, estimate.lon], { ...ESTIMATE_STYLE, radius, interactive: false }).addTo(layers.estimate);
  // The label sits above the circle's top, off the candidates' markers inside it.
  L.tooltip({ permanent: true, direction: "top", className: "estimate-label", interactive: false })
    .setLatLng([estimate.lat + radius / M_PER_DEG_LAT, estimate.lon])
    .setContent(`estimate \u00b1 ${Math.round(radius)} m (${percent(estimate.confidence)})`)
    .addTo(layers.estimate);
}

// --- a query -------------------------------------------------------------------------------------

// The search prior of the last query (`near` + `radius_m`): only tiles inside it were searched.
function drawPrior(prior) {
  layers.prior.clearLayers();
  if (prior) L.circle([prior.lat, prior.lon], { ...PRIOR_STYLE, radius: prior.radius }).addTo(layers.prior);
}

// `near` ("LAT,LON") and `radius` (m) from the form, or null when either is empty.
function priorOfForm() {
  const near = $("near").value.trim();
  const radius = $("radius").value.trim();
  if (!near || !radius) return null;
  const [lat, lon] = near.split(",").map(Number);
  return { near, lat, lon, radius: Number(radius) };
}

function clearResults() {
  drawPrior(null);
  $("candidates").replaceChildren();
  $("timings").textContent = "";
  drawEstimate(null);
  drawHeat([], []);
  drawCandidates([]);
}

function showPreview(file) {
  const preview = $("preview");
  preview.hidden = true;
  preview.removeAttribute("src");
  const url = URL.createObjectURL(file);
  const probe = new Image();
  // Shown only once the browser could decode it: a non-image never shows a broken-image icon.
  probe.onload = () => { preview.src = url; preview.hidden = false; };
  probe.onerror = () => URL.revokeObjectURL(url);
  probe.src = url;
}

async function localize(file) {
  showPreview(file);
  $("drop-text").textContent = file.name;
  setStatus("Localising...");
  const form = new FormData();
  form.append("image", file, file.name);
  const params = new URLSearchParams({ k: $("k").value || "5", heat: $("heat").value || "0" });
  if ($("kind").value) params.set("kind", $("kind").value);
  const prior = priorOfForm();
  if (prior) {
    params.set("near", prior.near);
    params.set("radius_m", String(prior.radius));
  }
  let resp, body;
  try {
    resp = await apiFetch(`/localize?${params}`, { method: "POST", body: form });
  } catch (err) {
    clearResults();
    setStatus(`The service cannot be reached (${err.message}).`, true);
    return;
  }
  try {
    body = await resp.json();
  } catch (err) {
    body = { detail: `unexpected answer (HTTP ${resp.status})` };
  }
  if (!resp.ok) {
    clearResults();
    setStatus(`${file.name} cannot be localised: ${body.detail}`, true);
    return;
  }
  if (!state.build || state.build.build_id !== body.build_id) await loadBuild();
  setStatus(`${body.candidates.length} candidates (build ${body.build_id}, ${body.kind})`);
  const t = body.timings_ms;
  $("timings").textContent = Object.entries(t).map(([k, v]) => `${k} ${v.toFixed(1)} ms`).join(" | ");
  drawList(body.candidates);
  drawHeat(body.heat, body.candidates);
  drawCandidates(body.candidates);
  drawEstimate(body.estimate);
  drawPrior(prior);
  document.body.dataset.answered = String(Number(document.body.dataset.answered || 0) + 1);
  if (body.candidates.length) selectTile(body.candidates[0].tile_id);
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (ev) => {
    if (ev.target.files.length) localize(ev.target.files[0]);
    ev.target.value = ""; // choosing the same file again is a new query
  });
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    if (ev.dataTransfer.files.length) localize(ev.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter") $("file").click(); });
  loadBuild();
}

setUp();
