// Map page of cvm-geoloc: upload an image, draw the top-k tiles at their footprints, inspect one.
// No external library: an equirectangular projection around the candidates' mean latitude is
// accurate to well under a pixel over the few kilometres a result spans.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const VIEW_W = 800;
const VIEW_H = 600;
const PAD = 40;
const M_PER_DEG_LAT = 110540;
const M_PER_DEG_LON = 111320;

const $ = (id) => document.getElementById(id);

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (parent) parent.appendChild(el);
  return el;
}

// lon/lat degrees -> local metres (x east, y north) around (lon0, lat0).
function makeProjection(candidates) {
  const lat0 = candidates.reduce((s, c) => s + c.lat, 0) / candidates.length;
  const lon0 = candidates.reduce((s, c) => s + c.lon, 0) / candidates.length;
  const kx = M_PER_DEG_LON * Math.cos((lat0 * Math.PI) / 180);
  const toMetres = (lon, lat) => [(lon - lon0) * kx, (lat - lat0) * M_PER_DEG_LAT];
  let [minX, minY, maxX, maxY] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const c of candidates) {
    const [w, s, e, n] = c.bbox;
    for (const [x, y] of [toMetres(w, s), toMetres(e, n)]) {
      minX = Math.min(minX, x); maxX = Math.max(maxX, x);
      minY = Math.min(minY, y); maxY = Math.max(maxY, y);
    }
  }
  // Footprints have a size, so both extents are > 0; the 1 m floor only guards bad data.
  const scale = Math.min((VIEW_W - 2 * PAD) / Math.max(maxX - minX, 1),
                         (VIEW_H - 2 * PAD) / Math.max(maxY - minY, 1));
  const cx = (minX + maxX) / 2;
  const cy = (minY + maxY) / 2;
  const project = (lon, lat) => {
    const [x, y] = toMetres(lon, lat);
    return [VIEW_W / 2 + (x - cx) * scale, VIEW_H / 2 - (y - cy) * scale];
  };
  return { project, pxPerMetre: scale };
}

function drawScaleBar(map, pxPerMetre) {
  const target = 150 / pxPerMetre;
  const nice = [1, 2, 5].flatMap((m) => [1, 10, 100, 1000, 10000].map((p) => m * p))
    .sort((a, b) => a - b).filter((v) => v <= target).pop() || target;
  const len = nice * pxPerMetre;
  svg("line", { class: "scale", x1: 20, y1: VIEW_H - 20, x2: 20 + len, y2: VIEW_H - 20 }, map);
  const label = nice >= 1000 ? `${nice / 1000} km` : `${Math.round(nice)} m`;
  svg("text", { class: "scale-text", x: 20, y: VIEW_H - 28 }, map).textContent = label;
}

function drawMap(candidates) {
  const map = $("map");
  map.replaceChildren();
  if (candidates.length === 0) return;
  const { project, pxPerMetre } = makeProjection(candidates);
  // Lowest rank last, so the best candidate is drawn on top.
  for (const c of [...candidates].reverse()) {
    const [w, s, e, n] = c.bbox;
    const [x0, y0] = project(w, n);
    const [x1, y1] = project(e, s);
    const g = svg("g", { class: "candidate", "data-tile-id": c.tile_id, tabindex: 0 }, map);
    const width = Math.max(x1 - x0, 1);
    const height = Math.max(y1 - y0, 1);
    svg("image", { href: `/tiles/${c.tile_id}/image`, x: x0, y: y0, width, height,
                   preserveAspectRatio: "none" }, g);
    svg("rect", { class: "footprint", x: x0, y: y0, width, height }, g);
    const [mx, my] = project(c.lon, c.lat);
    svg("circle", { class: "marker", cx: mx, cy: my, r: 9 }, g);
    svg("text", { class: "label", x: mx, y: my }, g).textContent = String(c.rank);
    svg("title", {}, g).textContent = `#${c.rank} tile ${c.tile_id} score ${c.score.toFixed(3)}`;
    g.addEventListener("click", () => selectTile(c.tile_id));
  }
  drawScaleBar(map, pxPerMetre);
}

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
    li.addEventListener("click", () => selectTile(c.tile_id));
    list.appendChild(li);
  }
}

function markSelected(tileId) {
  for (const el of document.querySelectorAll("[data-tile-id]")) {
    el.classList.toggle("selected", el.dataset.tileId === String(tileId));
  }
}

async function selectTile(tileId) {
  markSelected(tileId);
  const resp = await fetch(`/tiles/${tileId}`);
  const body = await resp.json();
  if (!resp.ok) { setStatus(`tile ${tileId}: ${body.detail}`, true); return; }
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

async function localize(file) {
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("drop-text").textContent = file.name;
  setStatus("Localising...");
  const form = new FormData();
  form.append("image", file, file.name);
  const params = new URLSearchParams({ k: $("k").value || "5" });
  if ($("kind").value) params.set("kind", $("kind").value);
  let resp;
  try {
    resp = await fetch(`/localize?${params}`, { method: "POST", body: form });
  } catch (err) {
    setStatus(`request failed: ${err}`, true);
    return;
  }
  const body = await resp.json();
  if (!resp.ok) { setStatus(`${resp.status}: ${body.detail}`, true); return; }
  setStatus(`${body.candidates.length} candidates (build ${body.build_id}, ${body.kind})`);
  const t = body.timings_ms;
  $("timings").textContent = Object.entries(t).map(([k, v]) => `${k} ${v.toFixed(1)} ms`).join(" | ");
  drawList(body.candidates);
  drawMap(body.candidates);
  if (body.candidates.length) selectTile(body.candidates[0].tile_id);
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (ev) => {
    if (ev.target.files.length) localize(ev.target.files[0]);
  });
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    if (ev.dataTransfer.files.length) localize(ev.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter") $("file").click(); });
}

setUp();
