// shadowtap dashboard: polls /v1/dashboard and redraws. No framework, nothing from elsewhere.
// Every text from the API goes through textContent (resource ids come from traffic: a Host
// header is attacker-controlled), never innerHTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const POLL_MS = 1500;
let selected = null;

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(v, digits) {
  if (v === null || v === undefined) return "–";
  return Number(v).toFixed(digits === undefined ? 1 : digits);
}

function fmtUs(v) {
  if (v === null || v === undefined) return "–";
  return v >= 1000 ? (v / 1000).toFixed(1) + " ms" : v + " µs";
}

function fmtTime(ms) {
  return new Date(ms).toISOString().slice(11, 19);
}

function renderResources(resources) {
  const body = document.getElementById("resources");
  body.replaceChildren();
  for (const r of resources) {
    const row = el("tr", { "data-testid": "resource-row", "data-resource-id": r.id });
    if (r.id === selected) row.classList.add("selected");
    row.append(
      el("td", { "data-testid": "resource-name" }, r.id),
      el("td", { "data-testid": "resource-rate" }, fmt(r.rate_per_sec, 2)),
      el("td", { "data-testid": "resource-error-rate" }, r.error_rate === null ? "–" : (100 * r.error_rate).toFixed(1) + "%"),
      el("td", {}, fmtUs(r.latency_us_p50)),
      el("td", {}, fmtUs(r.latency_us_p99)),
      el("td", { "data-testid": "resource-current" }, fmt(r.current_instances, 0)),
      el("td", { "data-testid": "resource-desired" }, fmt(r.desired_instances, 0)),
    );
    row.addEventListener("click", () => { selected = r.id; poll(); });
    body.append(row);
  }
}

// The demand chart: history, forecast point line, prediction band, capacity line.
function renderChart(r) {
  const svg = document.getElementById("demand-chart");
  svg.replaceChildren();
  const W = 800, H = 260, L = 50, R = 10, T = 10, B = 25;
  const stepMs = Math.max(1, (r.demand_step_secs || 1) * 1000);
  const xs = r.demand.map(p => p[0]).concat(r.forecast.map(p => p.start_ms));
  if (xs.length === 0) {
    svg.append(el("svg:text", { x: W / 2, y: H / 2, "text-anchor": "middle", "data-testid": "chart-empty" }, "no demand yet"));
    return;
  }
  const x0 = Math.min(...xs), x1 = Math.max(...xs) + stepMs;
  const ys = r.demand.map(p => p[1]).concat(r.forecast.map(p => p.upper));
  if (r.capacity !== null) ys.push(r.capacity);
  const yMax = Math.max(1, ...ys) * 1.1;
  const sx = t => L + (W - L - R) * (t - x0) / Math.max(1, x1 - x0);
  const sy = v => H - B - (H - T - B) * Math.max(0, v) / yMax;
  const line = pts => pts.map((p, i) => (i ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join("");
  for (let i = 0; i <= 4; i++) {
    const v = yMax * i / 4;
    svg.append(el("svg:line", { x1: L, x2: W - R, y1: sy(v), y2: sy(v), stroke: "#eef0f4" }));
    svg.append(el("svg:text", { x: L - 4, y: sy(v) + 4, "text-anchor": "end", "font-size": 10 }, v.toFixed(v < 10 ? 1 : 0)));
  }
  svg.append(el("svg:text", { x: L, y: H - 6, "font-size": 10 }, fmtTime(x0)));
  svg.append(el("svg:text", { x: W - R, y: H - 6, "font-size": 10, "text-anchor": "end" }, fmtTime(x1)));
  if (r.forecast.length > 0) {
    const upper = r.forecast.map(p => [p.start_ms, p.upper]);
    const lower = r.forecast.map(p => [p.start_ms, p.lower]).reverse();
    const d = line(upper) + lower.map(p => "L" + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join("") + "Z";
    svg.append(el("svg:path", { d, fill: "#a9c1f5", "fill-opacity": 0.6, stroke: "none", "data-testid": "forecast-band" }));
    svg.append(el("svg:path", { d: line(r.forecast.map(p => [p.start_ms, p.point])), fill: "none", stroke: "#2457c5", "stroke-width": 2, "stroke-dasharray": "5 3", "data-testid": "forecast-line" }));
  }
  if (r.demand.length > 0) {
    svg.append(el("svg:path", { d: line(r.demand), fill: "none", stroke: "#1d2330", "stroke-width": 1.5, "data-testid": "demand-line" }));
  }
  if (r.capacity !== null) {
    svg.append(el("svg:line", { x1: L, x2: W - R, y1: sy(r.capacity), y2: sy(r.capacity), stroke: "#b3261e", "stroke-width": 1.5, "data-testid": "capacity-line" }));
  }
}

function renderDecisions(r) {
  const list = document.getElementById("decisions");
  list.replaceChildren();
  for (const d of r.decisions.slice().reverse()) {
    const item = el("li", { "data-testid": "decision", class: d.action, "data-action": d.action });
    item.append(
      el("strong", {}, fmtTime(d.at_ms) + " " + d.action.replace("_", " ") + " " + d.current_instances + "→" + d.desired_instances),
      el("span", { "data-testid": "decision-reason" }, " · " + d.reason.replaceAll("_", " ")),
      el("span", { "data-testid": "decision-stage" }, d.stage ? " · stage: " + d.stage.replaceAll("_", " ") : ""),
      el("div", { class: "hold" }, d.summary),
    );
    list.append(item);
  }
  if (r.decisions.length === 0) list.append(el("li", { class: "hold" }, "no decision yet (cold start, or no in-process collector)"));
}

function renderEndpoints(r) {
  const body = document.getElementById("endpoints");
  body.replaceChildren();
  const total = r.endpoints.reduce((s, e) => s + e[1], 0) || 1;
  for (const [name, n] of r.endpoints) {
    const row = el("tr", { "data-testid": "endpoint" });
    row.append(el("td", {}, name), el("td", {}, String(n)), el("td", {}, (100 * n / total).toFixed(1) + "%"));
    body.append(row);
  }
}

function renderHourOfWeek(r) {
  const svg = document.getElementById("hour-of-week");
  svg.replaceChildren();
  const hours = r.hour_of_week;
  const max = Math.max(1, ...hours);
  hours.forEach((v, h) => {
    const height = 130 * v / max;
    svg.append(el("svg:rect", { x: h * 2, y: 135 - height, width: 2, height, fill: "#2457c5", "data-testid": "hour-bar" }));
  });
  ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"].forEach((day, i) => {
    svg.append(el("svg:text", { x: i * 48 + 2, y: 148, "font-size": 10 }, day));
  });
}

function renderLosses(losses) {
  const dl = document.getElementById("losses");
  dl.replaceChildren();
  for (const [name, v] of Object.entries(losses)) {
    dl.append(el("dt", {}, name.replaceAll("_", " ")), el("dd", { "data-testid": "loss-" + name }, v === null ? "n/a" : String(v)));
  }
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const res = await fetch("/v1/dashboard", { cache: "no-store" });
    if (!res.ok) throw new Error(res.status + " " + res.statusText);
    const doc = await res.json();
    document.getElementById("source").textContent = doc.source;
    if (!doc.resources.some(r => r.id === selected)) {
      // Prefer a resource with a decision, then the busiest.
      const ranked = doc.resources.slice().sort((a, b) =>
        (b.decisions.length > 0) - (a.decisions.length > 0) || (b.rate_per_sec || 0) - (a.rate_per_sec || 0));
      selected = ranked.length ? ranked[0].id : null;
    }
    renderResources(doc.resources);
    const r = doc.resources.find(x => x.id === selected);
    document.getElementById("detail-id").textContent = r ? r.id : "—";
    if (r) { renderChart(r); renderDecisions(r); renderEndpoints(r); renderHourOfWeek(r); }
    renderLosses(doc.losses);
    status.textContent = "updated " + fmtTime(doc.generated_ms) + " UTC";
    status.dataset.updated = String(doc.generated_ms);
  } catch (e) {
    status.textContent = "API unreachable: " + e.message;
  }
}

poll();
setInterval(poll, POLL_MS);
