"use strict";
// climastream operator console. Every panel is replaced by the server's latest snapshot, so
// nothing on the page grows with time: the only history kept here is a per-panel message
// count for the last STATS_SECONDS seconds (used by the load test and the header).

const STATS_SECONDS = 120;
const BAND_COLOURS = {
  good: "#50f0e6", fair: "#50ccaa", moderate: "#f0e641", poor: "#ff5050",
  very_poor: "#960032", extremely_poor: "#7d2181", neutral: "#9aa5b1",
};
const SVG_NS = "http://www.w3.org/2000/svg";

const cs = {
  me: null,
  counts: {},        // panel -> {epochSecond: messages}
  total: {},         // panel -> messages since load
  last: {},          // panel -> latest snapshot
  lastJson: {},      // panel -> JSON text last rendered (skip identical re-renders)
  renderErrors: 0,
};
window.__climastream = cs;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

function fmt(value, digits) {
  if (value === null || value === undefined) return "–";
  const d = digits === undefined ? (Math.abs(value) >= 100 ? 0 : 1) : digits;
  return Number(value).toFixed(d);
}

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return `${s.toFixed(0)} s ago`;
  if (s < 5400) return `${(s / 60).toFixed(0)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

// A relative time that stays true: a panel is re-rendered only when its snapshot changes,
// so "since 30 s ago" on a quiet alert would otherwise stay frozen for as long as it fires.
// Every node made here carries its time and is rewritten by refreshAgo() every few seconds.
const AGO_REFRESH_MS = 5000;

function agoText(node) {
  return (node.getAttribute("data-prefix") || "") + ago(node.getAttribute("data-since")) + (node.getAttribute("data-suffix") || "");
}

function agoNode(iso, prefix, suffix) {
  const node = el("span", { class: "ago", "data-since": iso || "", "data-prefix": prefix || "", "data-suffix": suffix || "" });
  node.textContent = agoText(node);
  return node;
}

function refreshAgo() {
  for (const node of document.querySelectorAll("[data-since]")) node.textContent = agoText(node);
}

function bandColour(band) { return BAND_COLOURS[band] || BAND_COLOURS.neutral; }

function countMessage(panel) {
  const second = Math.floor(Date.now() / 1000);
  const perSecond = cs.counts[panel] || (cs.counts[panel] = {});
  perSecond[second] = (perSecond[second] || 0) + 1;
  cs.total[panel] = (cs.total[panel] || 0) + 1;
  for (const key of Object.keys(perSecond)) {
    if (Number(key) < second - STATS_SECONDS) delete perSecond[key];
  }
}

function toast(text, isError) {
  const node = document.getElementById("toast");
  node.textContent = text;
  node.className = isError ? "toast error" : "toast";
  node.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { node.hidden = true; }, 5000);
}

// ------------------------------------------------------------------ map

function convexHull(points) {
  const pts = points.slice().sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  if (pts.length < 3) return pts;
  const cross = (o, a, b) => (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
  const lower = [];
  for (const p of pts) {
    while (lower.length >= 2 && cross(lower[lower.length - 2], lower[lower.length - 1], p) <= 0) lower.pop();
    lower.push(p);
  }
  const upper = [];
  for (let i = pts.length - 1; i >= 0; i--) {
    const p = pts[i];
    while (upper.length >= 2 && cross(upper[upper.length - 2], upper[upper.length - 1], p) <= 0) upper.pop();
    upper.push(p);
  }
  upper.pop(); lower.pop();
  return lower.concat(upper);
}

function zoneColour(zone, mode) {
  if (!zone) return BAND_COLOURS.neutral;
  const entry = mode === "uhi" ? zone.uhi : zone.eaqi;
  return entry ? bandColour(entry.band) : BAND_COLOURS.neutral;
}

function renderMap(snapshot) {
  const mode = document.getElementById("map-mode").value;
  const map = document.getElementById("map");
  const W = 1000, H = 640, M = 60;
  const devices = snapshot.devices;
  map.replaceChildren();
  if (!devices.length) {
    const t = svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "dim" });
    t.textContent = "no positioned devices yet";
    map.append(t);
    return;
  }
  let minLat = Infinity, maxLat = -Infinity, minLon = Infinity, maxLon = -Infinity;
  for (const d of devices) {
    minLat = Math.min(minLat, d.lat); maxLat = Math.max(maxLat, d.lat);
    minLon = Math.min(minLon, d.lon); maxLon = Math.max(maxLon, d.lon);
  }
  // equirectangular projection scaled by cos(latitude): fine at city scale, no tiles needed
  const kx = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
  const spanX = Math.max((maxLon - minLon) * kx, 1e-4), spanY = Math.max(maxLat - minLat, 1e-4);
  const scale = Math.min((W - 2 * M) / spanX, (H - 2 * M) / spanY);
  const ox = (W - spanX * scale) / 2, oy = (H - spanY * scale) / 2;
  const project = (d) => [ox + (d.lon - minLon) * kx * scale, H - (oy + (d.lat - minLat) * scale)];
  const byZone = {};
  for (const d of devices) (byZone[d.zone || ""] = byZone[d.zone || ""] || []).push(project(d));
  const zones = svg("g", { class: "zones" });
  const labels = svg("g", { class: "zone-labels" });
  for (const [name, points] of Object.entries(byZone)) {
    if (!name) continue;
    const colour = zoneColour(snapshot.zones[name], mode);
    const hull = convexHull(points);
    const shape = hull.length >= 3
      ? svg("polygon", { points: hull.map((p) => p.join(",")).join(" ") })
      : svg("polyline", { points: hull.map((p) => p.join(",")).join(" ") });
    // a wide round stroke pads the hull, so a zone of one or two sensors still has an area
    shape.setAttribute("fill", colour);
    shape.setAttribute("stroke", colour);
    shape.setAttribute("class", "zone");
    shape.setAttribute("data-zone", name);
    zones.append(shape);
    const cx = points.reduce((s, p) => s + p[0], 0) / points.length;
    const cy = Math.min(...points.map((p) => p[1])) - 34;
    const zone = snapshot.zones[name] || {};
    const entry = mode === "uhi" ? zone.uhi : zone.eaqi;
    let detail = "no data";
    if (entry && mode === "uhi") detail = `UHI ${entry.value >= 0 ? "+" : ""}${fmt(entry.value)} °C`;
    if (entry && mode === "eaqi") detail = `EAQI ${entry.band.replace("_", " ")}${entry.dominant ? " (" + entry.dominant + ")" : ""}`;
    if (entry && entry.source === "readings") detail += " *";
    const label = svg("text", { x: cx, y: cy, "text-anchor": "middle", class: "zone-label" });
    label.textContent = `${name}: ${detail}`;
    labels.append(label);
  }
  map.append(zones);
  const dots = svg("g", { class: "devices" });
  for (const d of devices) {
    const [x, y] = project(d);
    const circle = svg("circle", {
      cx: x, cy: y, r: 7, class: d.stale ? "device stale" : "device", "data-device": d.id,
    });
    circle.setAttribute("fill", d.stale ? "#ffffff" : zoneColour(snapshot.zones[d.zone], mode));
    const values = Object.entries(d.values).map(([q, v]) => `${q}=${v}`).join(", ");
    const title = svg("title", { "data-since": d.last_seen || "", "data-prefix": `${d.id} (${d.zone || "no zone"}, ${d.gateway || "?"}) ${values} · ` });
    title.textContent = agoText(title);
    circle.append(title);
    dots.append(circle);
  }
  map.append(dots, labels);
  const legend = document.getElementById("legend");
  const names = mode === "uhi"
    ? [["good", "<1 °C"], ["fair", "1–2"], ["moderate", "2–4"], ["poor", "4–6"], ["very_poor", "6–9"], ["extremely_poor", "≥9 °C"]]
    : [["good", "good"], ["fair", "fair"], ["moderate", "moderate"], ["poor", "poor"], ["very_poor", "very poor"], ["extremely_poor", "extremely poor"]];
  legend.replaceChildren(
    ...names.map(([band, text]) => {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = bandColour(band);
      return el("span", { class: "legend-item" }, swatch, text);
    }),
    el("span", { class: "dim" }, "  * provisional, from live readings (no KPI yet) · hollow: stale sensor"),
  );
}

// ------------------------------------------------------------------ KPI tiles

const TILES = [
  ["eaqi", "EAQI", (t) => t.band.replace("_", " "), (t) => t.dominant ? `dominant ${t.dominant}` : ""],
  ["uhi", "UHI intensity", (t) => `${t.value >= 0 ? "+" : ""}${fmt(t.value)} °C`, (t) => t.reference ? `vs ${t.reference}` : ""],
  ["heat_index", "Heat index", (t) => `${fmt(t.value)} °C`, () => ""],
  ["noise", "Noise LAeq", (t) => `${fmt(t.value)} dB(A)`, () => ""],
  ["traffic", "Traffic", (t) => `${fmt(t.value, 0)} ${t.unit === "count" ? "vehicles" : t.unit}`, () => ""],
  ["completeness", "Completeness", (t) => `${fmt(t.value * 100, 0)} %`, (t) => t.kpis ? `over ${t.kpis} KPIs` : ""],
];

function renderKpis(snapshot) {
  const root = document.getElementById("kpis");
  const rows = [];
  for (const [zone, tiles] of Object.entries(snapshot.zones)) {
    const cells = TILES.map(([key, title, main, sub]) => {
      const tile = tiles[key];
      const node = el("div", { class: tile ? "tile" : "tile empty", "data-kpi": key, "data-zone": zone },
        el("div", { class: "tile-title", text: title }),
        el("div", { class: "tile-value", text: tile ? main(tile) : "–" }),
        el("div", { class: "tile-sub", text: tile ? (sub(tile) + (tile.source === "readings" ? " · provisional" : "")) : "no KPI yet" }));
      if (tile) node.style.borderLeftColor = bandColour(tile.band);
      return node;
    });
    rows.push(el("div", { class: "kpi-row" }, el("div", { class: "kpi-zone", text: zone }), ...cells));
  }
  root.replaceChildren(...rows);
}

// ------------------------------------------------------------------ streams

function sparkline(points, width, height) {
  const node = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "spark" });
  if (points.length < 2) return node;
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = (x) => ((x - x0) / Math.max(x1 - x0, 1e-9)) * (width - 2) + 1;
  const sy = (y) => height - 2 - ((y - y0) / Math.max(y1 - y0, 1e-9)) * (height - 4);
  node.append(svg("polyline", { points: points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ") }));
  return node;
}

// the zone and device filter is applied by the console, before its row limit: a change
// reopens the live stream with it (?zone=&device=)
function streamsQuery() {
  const params = new URLSearchParams();
  const zone = document.getElementById("stream-zone").value;
  const device = document.getElementById("stream-device").value.trim();
  if (zone) params.set("zone", zone);
  if (device) params.set("device", device);
  const query = params.toString();
  return query ? `?${query}` : "";
}

function refilterStreams() {
  if (cs.source) cs.source.close();
  delete cs.lastJson.streams;
  connect();
}

function renderStreams(snapshot) {
  const select = document.getElementById("stream-zone");
  const zones = snapshot.zones || [];
  const chosen = select.value;
  // keep a chosen zone listed while it has no series, so the choice is not lost
  const shown = chosen && !zones.includes(chosen) ? [...zones, chosen].sort() : zones;
  const listed = [...select.options].slice(1).map((o) => o.value);
  if (listed.join("\n") !== shown.join("\n")) {  // rebuilt only on a change: an open list stays open
    select.replaceChildren(el("option", { value: "", text: "all" }), ...shown.map((z) => el("option", { value: z, text: z })));
    select.value = chosen;
  }
  const rows = snapshot.rows.map((r) =>
    el("tr", { class: r.scope === "zone" ? "zone-row" : "", "data-series": `${r.scope}:${r.id}:${r.quantity}` },
      el("td", { text: r.zone || "–" }),
      el("td", { text: r.scope === "zone" ? "zone mean" : r.id }),
      el("td", { text: r.quantity }),
      el("td", {}, sparkline(r.points, 220, 28)),
      el("td", { class: "num live-value", text: `${fmt(r.latest, 2)} ${r.unit}` })));
  document.querySelector("#streams tbody").replaceChildren(...rows);
  document.getElementById("stream-note").textContent =
    `buckets of ${snapshot.bucket_s} s` + (snapshot.omitted ? ` · ${snapshot.omitted} more series: choose a zone or a device` : "");
}

// ------------------------------------------------------------------ alerts

async function act(fingerprint, action, minutes) {
  const body = { action, comment: `from console by ${cs.me.name}` };
  if (minutes) body.minutes = minutes;
  const response = await fetch(`/api/alerts/${fingerprint}/actions`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": cs.me.csrf || "" },
    body: JSON.stringify(body),
  });
  let detail = "";
  try { detail = (await response.json()).error || ""; } catch (e) { detail = ""; }
  if (response.status === 202) toast(`${action} sent for ${fingerprint.slice(0, 12)}; waiting for the alert engine`);
  else toast(`${action} refused (${response.status}) ${detail}`, true);
  return response.status;
}
window.__climastreamAct = act;

function alertCard(a, actionable) {
  const evidence = a.evidence.length
    ? el("table", { class: "evidence" },
        el("tr", {}, el("th", { text: "time" }), el("th", { text: "device" }), el("th", { text: "value" })),
        ...a.evidence.slice(-5).map((p) => el("tr", {},
          el("td", { text: new Date(p.time).toLocaleTimeString() }),
          el("td", { text: p.device_id || "–" }),
          el("td", { class: "num", text: `${fmt(p.value, 2)} ${p.quantity || ""}` }))))
    : el("p", { class: "dim", text: "no evidence points" });
  const where = [a.zone && `zone ${a.zone}`, a.device_id && `device ${a.device_id}`, a.gateway_id && `gateway ${a.gateway_id}`].filter(Boolean).join(" · ");
  const value = a.value !== null && a.value !== undefined
    ? `${fmt(a.value, 2)}${a.unit ? " " + a.unit : ""}` + (a.threshold !== null && a.threshold !== undefined ? ` (threshold ${fmt(a.threshold, 2)})` : "")
    : "";
  const buttons = [];
  if (actionable && (a.state === "firing" || a.state === "pending")) {
    buttons.push(el("button", { type: "button", class: "ack", "data-action": "acknowledge", onclick: () => act(a.fingerprint, "acknowledge") }, "Acknowledge"));
  }
  if (actionable && a.state !== "silenced") {
    buttons.push(el("button", { type: "button", class: "silence", "data-action": "silence", onclick: () => act(a.fingerprint, "silence", 60) }, "Silence 1 h"));
  }
  if (actionable && a.state === "silenced") {
    buttons.push(el("button", { type: "button", class: "unsilence", "data-action": "unsilence", onclick: () => act(a.fingerprint, "unsilence") }, "Unsilence"));
  }
  return el("article", { class: `alert ${a.state} ${a.severity}`, "data-fingerprint": a.fingerprint, "data-state": a.state },
    el("div", { class: "alert-head" },
      el("span", { class: `state ${a.state}`, text: a.state }),
      el("span", { class: `severity ${a.severity}`, text: a.severity }),
      el("strong", { text: a.summary })),
    el("div", { class: "alert-meta dim" }, agoNode(a.started_at, `${where} · ${a.rule_id} · since `)),
    value ? el("div", { class: "alert-value", text: value + (a.completeness !== null && a.completeness !== undefined ? ` · completeness ${fmt(a.completeness * 100, 0)} %` : "") }) : null,
    a.description ? el("div", { class: "alert-desc", text: a.description }) : null,
    evidence,
    buttons.length ? el("div", { class: "alert-actions" }, ...buttons) : null);
}

function renderAlerts(snapshot) {
  const actionable = cs.me && cs.me.can_act;
  document.getElementById("alerts").replaceChildren(
    ...(snapshot.active.length ? snapshot.active.map((a) => alertCard(a, actionable)) : [el("p", { class: "dim", text: "No active alerts." })]));
  document.getElementById("resolved").replaceChildren(
    ...snapshot.resolved.slice(0, 5).map((a) => el("div", { class: "resolved dim" }, agoNode(a.updated_at, `${a.summary} · resolved `))));
  const open = snapshot.active.filter((a) => a.state === "firing" || a.state === "pending").length;
  const badge = document.getElementById("alert-count");
  badge.textContent = String(open);
  badge.className = open ? "badge hot" : "badge";
}

// ------------------------------------------------------------------ gateways

function renderGateways(snapshot) {
  const rows = snapshot.gateways.map((g) => {
    const use = g.buffer_capacity_bytes ? (100 * g.buffer_bytes / g.buffer_capacity_bytes) : null;
    const drops = Object.entries(g.dropped).map(([k, v]) => `${k}: ${v}`).join(", ");
    const sources = Object.entries(g.sources).map(([k, v]) => `${k}: ${v}`).join(", ");
    // frames and payloads the gateway could not decode, by reason (bad CRC, unknown device)
    const errors = Object.entries(g.decode_errors || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
    return el("tr", { class: g.stale ? "stale" : "", "data-gateway": g.gateway_id },
      el("td", { text: g.gateway_id }),
      // a gateway back from a power cut runs on fake-hwclock's time until NTP syncs: its
      // last_seen is when the console heard it, and the row says why
      el("td", { title: `reported ${g.reported_time} on the gateway's clock, up ${fmt(g.uptime_s)} s` },
        agoNode(g.last_seen, g.clock_synchronized === false ? "clock not synced · " : "", g.stale ? " (stale)" : "")),
      el("td", { class: "num", text: String(g.buffer_depth) }),
      el("td", { class: "num", text: g.buffer_oldest_age_s === null || g.buffer_oldest_age_s === undefined ? "–" : `${fmt(g.buffer_oldest_age_s)} s` }),
      el("td", { class: "num", text: use === null ? "–" : `${fmt(use, 1)} %` }),
      el("td", { class: g.dropped_total ? "num hot" : "num", text: g.dropped_total ? `${g.dropped_total} (${drops})` : "0" }),
      el("td", { class: g.decode_errors_total ? "num warm" : "num", text: g.decode_errors_total ? `${g.decode_errors_total} (${errors})` : "0" }),
      el("td", { class: "num", text: g.outage_capacity_hours === null || g.outage_capacity_hours === undefined ? "–" : `${fmt(g.outage_capacity_hours)} h` }),
      el("td", { text: sources || "–" }));
  });
  document.querySelector("#gateways tbody").replaceChildren(
    ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 9, class: "dim", text: "no gateway has reported yet" }))]));
}

function renderStats(snapshot) {
  const rate = document.getElementById("rate");
  const feed = snapshot.feed;
  if (feed && !feed.connected) {
    // the page would otherwise look live and empty: say that no data is coming, and why
    rate.textContent = feed.error ? `no data from Kafka: ${feed.error}` : "connecting to Kafka…";
    rate.className = "rate conn down";
  } else {
    rate.textContent =
      `${fmt(snapshot.readings_per_s, 0)} readings/s · ${snapshot.devices} devices · ${snapshot.counts.readings} readings`;
    rate.className = "rate";
  }
  document.getElementById("clock").textContent = new Date(snapshot.now).toLocaleTimeString();
}

// ------------------------------------------------------------------ wiring

const RENDERERS = {
  map: renderMap, kpi: renderKpis, streams: renderStreams, alerts: renderAlerts,
  gateways: renderGateways, stats: renderStats,
};

function onPanel(panel, text) {
  countMessage(panel);
  if (cs.lastJson[panel] === text) return;
  cs.lastJson[panel] = text;
  const snapshot = JSON.parse(text);
  cs.last[panel] = snapshot;
  try { RENDERERS[panel](snapshot); } catch (err) { cs.renderErrors += 1; console.error(panel, err); }
}

function connect() {
  const source = new EventSource(`/api/events${streamsQuery()}`);
  const conn = document.getElementById("conn");
  source.onopen = () => { conn.textContent = "live"; conn.className = "conn up"; };
  source.onerror = () => { conn.textContent = "reconnecting…"; conn.className = "conn down"; };
  for (const panel of Object.keys(RENDERERS)) {
    source.addEventListener(panel, (event) => onPanel(panel, event.data));
  }
  // logged out elsewhere or the session expired: back to the login page, not "reconnecting"
  source.addEventListener("session-ended", () => { source.close(); window.location = "/login"; });
  cs.source = source;
}

async function start() {
  const response = await fetch("/api/me", { credentials: "same-origin" });
  if (response.status === 401) { window.location = "/login"; return; }
  cs.me = await response.json();
  document.getElementById("who").textContent = `${cs.me.name} (${cs.me.role})`;
  document.getElementById("alert-readonly").hidden = cs.me.can_act;
  document.body.dataset.role = cs.me.role;
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": cs.me.csrf || "" } });
    window.location = "/login";
  });
  document.getElementById("map-mode").addEventListener("change", () => { if (cs.last.map) renderMap(cs.last.map); });
  document.getElementById("stream-zone").addEventListener("change", refilterStreams);
  let typing = null;
  document.getElementById("stream-device").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(refilterStreams, 300);
  });
  connect();
  setInterval(refreshAgo, AGO_REFRESH_MS);
}

start();
