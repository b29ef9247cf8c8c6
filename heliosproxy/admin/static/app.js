/* HeliosProxy dashboard: polls /api/overview and /api/anomalies every second and renders them; no framework,
 * no build step.
 * Every value shown comes from the proxy; what the proxy does not measure is labelled "not available".
 * Text is always set with textContent (never innerHTML), so statement texts and names cannot inject markup. */
"use strict";

const POLL_MS = 1000;
const ANOMALIES = 50; // newest plugin events shown
const HISTORY = 90; // samples kept for charts and sparklines
const TOKEN_KEY = "heliosproxy.admin.token";

const state = {
  tokenRequired: false,
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  timer: null,
  prevStats: null,
  series: { t: [], qps: [], eps: [], p50: [], p95: [], p99: [] },
  lag: new Map(), // node -> [lag bytes]
  nodesSeen: new Map(), // node -> "role/state/write"
  failovers: null,
  events: [],
  lastOk: 0,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

const NA = () => el("span", { class: "na", text: "not available" });
const fmtInt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const fmtMs = (n) => (n === null || n === undefined ? "–" : Number(n) < 10 ? Number(n).toFixed(2) : Number(n).toFixed(1));

function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n), i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
}

function headers() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

function showMessage(text, bad) {
  const m = $("message");
  m.textContent = text;
  m.className = "message" + (bad ? " bad" : "");
  m.hidden = false;
}

function setStatus(text, kind) {
  const s = $("status");
  s.textContent = text;
  s.className = "pill pill-" + kind;
}

// ---------------------------------------------------------------- start-up and token
async function init() {
  let ui;
  try {
    const r = await fetch("/ui.json", { cache: "no-store" });
    ui = await r.json();
  } catch (e) {
    setStatus("proxy unreachable", "bad");
    setTimeout(init, 2000);
    return;
  }
  state.tokenRequired = !!ui.token_required;
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (!t) return;
    state.token = t;
    sessionStorage.setItem(TOKEN_KEY, t);
    $("token").value = "";
    $("login-error").hidden = true;
    start();
  });
  $("forget").addEventListener("click", () => lock("Token forgotten."));
  $("reload").addEventListener("click", () =>
    action("Reload the configuration file now?", "/api/reload", (d) => d.message || "reloaded"));
  $("switchover").addEventListener("click", () =>
    action("Switch the primary over to a standby now? New statements pause until the standby is promoted; " +
           "the old primary is fenced (disabled) until an operator re-enables it.", "/api/switchover",
           (d) => "switched over: " + d.old_primary + " -> " + d.new_primary + " (pause " + d.pause_ms + " ms, " +
                  d.replayed + " replayed)"));
  $("client-filter").addEventListener("input", () => renderClients(state.lastClients || [], state.lastClientsTotal));
  if (!state.tokenRequired) {
    state.token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    $("readonly-note").hidden = false;
    start();
  } else if (state.token) {
    start();
  } else {
    lock();
  }
}

function lock(reason) {
  stop();
  state.token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  $("views").hidden = true;
  $("actions-bar").hidden = true;
  $("login").hidden = false;
  if (reason) {
    $("login-error").textContent = reason;
    $("login-error").hidden = false;
  }
  setStatus("token needed", "wait");
  $("token").focus();
}

function start() {
  $("login").hidden = true;
  $("views").hidden = false;
  $("actions-bar").hidden = !state.tokenRequired; // actions exist only when the proxy has a token
  stop();
  poll();
}

function stop() {
  if (state.timer) clearTimeout(state.timer);
  state.timer = null;
}

async function poll() {
  state.timer = null;
  try {
    const r = await fetch("/api/overview", { cache: "no-store", headers: headers() });
    if (r.status === 401) {
      lock("That token was refused (401). Enter the proxy's admin.token.");
      return;
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    const data = await r.json();
    const a = await fetch(`/api/anomalies?limit=${ANOMALIES}`, { cache: "no-store", headers: headers() });
    if (a.status === 401) {
      lock("That token was refused (401). Enter the proxy's admin.token.");
      return;
    }
    data.anomalies = a.ok ? (await a.json()).events : null;
    state.lastOk = Date.now();
    render(data);
    setStatus("live", "ok");
  } catch (e) {
    setStatus("no answer from the proxy", "bad");
  }
  if (!$("views").hidden) state.timer = setTimeout(poll, POLL_MS);
}

async function action(question, url, describe) {
  if (!state.token) return;
  if (!window.confirm(question)) return;
  try {
    const r = await fetch(url, { method: "POST", headers: headers(), cache: "no-store" });
    let d = {};
    try { d = await r.json(); } catch (e) { d = {}; }
    if (r.ok) showMessage(describe(d), false);
    else showMessage("Refused (" + r.status + "): " + (d.error || r.statusText), true);
  } catch (e) {
    showMessage("The proxy did not answer: " + e.message, true);
  }
  stop();
  poll();
}

function actionButton(label, question, url, describe) {
  if (!state.tokenRequired || !state.token) return null;
  return el("button", { type: "button", class: "small", text: label, onclick: () => action(question, url, describe) });
}

// ---------------------------------------------------------------- rendering
function render(d) {
  renderNodes(d.nodes || []);
  renderStats(d.stats);
  renderPools(d.pools || []);
  state.lastClients = d.clients || [];
  state.lastClientsTotal = d.clients_total;
  renderClients(state.lastClients, d.clients_total);
  renderQueries(d.queries || []);
  renderPlugins(d.plugins || []);
  renderEvents(d);
  renderAnomalies(d.anomalies);
  $("version").textContent = d.workers > 1 ? `${d.version} · showing worker 0 of ${d.workers}` : d.version;
}

function fillBody(table, rows) {
  const body = $(table).tBodies[0];
  body.replaceChildren(...rows);
}

function sparkline(values) {
  const svg = svgEl("svg", { class: "spark", viewBox: "0 0 100 24", preserveAspectRatio: "none" });
  if (values.length > 1) {
    const max = Math.max(1, ...values);
    const pts = values.map((v, i) => `${(i / (HISTORY - 1)) * 100},${22 - (v / max) * 20}`);
    svg.append(svgEl("polyline", { points: pts.join(" ") }));
  }
  return svg;
}

function renderNodes(nodes) {
  const rows = nodes.map((n) => {
    const hist = state.lag.get(n.name) || [];
    hist.push(n.state === "down" ? 0 : n.lag_bytes || 0);
    while (hist.length > HISTORY) hist.shift();
    state.lag.set(n.name, hist);
    const shown = n.disabled ? "disabled" : n.state;
    const act = n.disabled
      ? actionButton("enable", `Enable node ${n.name}?`, `/api/nodes/${encodeURIComponent(n.name)}/enable`, () => `enabled ${n.name}`)
      : actionButton("disable", `Disable node ${n.name}? It gets no new statements.`,
        `/api/nodes/${encodeURIComponent(n.name)}/disable`, () => `disabled ${n.name}`);
    return el("tr", { "data-node": n.name, "data-state": n.state, "data-role": n.role },
      el("td", {}, el("strong", { text: n.name }), el("div", { class: "muted", text: `${n.host}:${n.port}` })),
      el("td", { text: n.role }),
      el("td", {}, el("span", { class: "state state-" + shown, "data-field": "state", text: shown })),
      el("td", { text: n.write_target ? "yes" : "" }),
      el("td", { class: "num", text: n.role === "standby" && n.state !== "down" ? fmtBytes(n.lag_bytes) : "–" }),
      el("td", { class: "num", text: n.role === "standby" && n.state !== "down" && n.lag_ms !== null ? fmtMs(n.lag_ms) + " ms" : "–" }),
      el("td", {}, breakerCell(n.breaker)),
      el("td", {}, sparkline(hist)),
      el("td", { class: "num", text: fmtInt(n.active_connections) }),
      el("td", { class: "err", text: n.last_error || "" }),
      el("td", { class: "act-col" }, act));
  });
  fillBody("nodes", rows);
  for (const n of nodes) {
    const now = { health: n.disabled ? "disabled" : n.state, role: n.role, writes: n.write_target };
    const before = state.nodesSeen.get(n.name);
    if (before !== undefined) {
      if (before.health !== now.health) logEvent(`${n.name}: ${before.health} → ${now.health}`);
      if (before.role !== now.role) logEvent(`${n.name}: role ${before.role} → ${now.role}`);
      if (!before.writes && now.writes) logEvent(`writes now go to ${n.name}`);
    }
    state.nodesSeen.set(n.name, now);
  }
}

// Circuit breaker state per node (closed | open | half_open) when the proxy reports one, else "n/a".
function breakerCell(breaker) {
  if (breaker === undefined || breaker === null) return el("span", { class: "na", "data-field": "breaker", text: "n/a" });
  const cls = breaker === "closed" ? "up" : breaker === "open" ? "down" : "lagging";
  return el("span", { class: "state state-" + cls, "data-field": "breaker", text: String(breaker).replace("_", "-") });
}

function quantile(deltas, bounds, q) {
  const total = deltas[deltas.length - 1];
  if (!total) return null;
  const target = q * total;
  let prevBound = 0, prevCum = 0;
  for (let i = 0; i < deltas.length; i++) {
    const cum = deltas[i];
    const bound = bounds[i];
    if (cum >= target) {
      if (bound === Infinity) return prevBound * 1000; // beyond the last bucket: its lower edge
      const inBucket = cum - prevCum;
      const frac = inBucket > 0 ? (target - prevCum) / inBucket : 1;
      return (prevBound + (bound - prevBound) * frac) * 1000;
    }
    prevBound = bound === Infinity ? prevBound : bound;
    prevCum = cum;
  }
  return null;
}

function renderStats(s) {
  if (!s) return;
  const prev = state.prevStats;
  state.prevStats = s;
  $("counters").textContent =
    `statements ${fmtInt(s.queries)} · errors ${fmtInt(s.errors)} · failovers ${fmtInt(s.failovers)} · ` +
    `reloads ${fmtInt(s.reloads_ok)} ok / ${fmtInt(s.reloads_failed)} failed · logins failed ${fmtInt(s.login_failures)} · ` +
    `paused: ${s.paused && s.paused.length ? s.paused.join(", ") : "none"}`;
  $("counters").setAttribute("data-reloads-ok", String(s.reloads_ok));
  if (state.failovers !== null && s.failovers > state.failovers) logEvent(`failover: the write target changed (total ${s.failovers})`);
  state.failovers = s.failovers;
  if (!prev) return;
  const dt = Math.max(0.001, s.time - prev.time);
  const qps = Math.max(0, (s.queries - prev.queries) / dt);
  const eps = Math.max(0, (s.errors - prev.errors) / dt);
  const bounds = s.duration_buckets.map(([b]) => (b === "+Inf" ? Infinity : Number(b)));
  const deltas = s.duration_buckets.map(([, n], i) => n - ((prev.duration_buckets[i] || [0, 0])[1]));
  const ser = state.series;
  ser.t.push(s.time); ser.qps.push(qps); ser.eps.push(eps);
  ser.p50.push(quantile(deltas, bounds, 0.5)); ser.p95.push(quantile(deltas, bounds, 0.95));
  ser.p99.push(quantile(deltas, bounds, 0.99));
  for (const k of Object.keys(ser)) while (ser[k].length > HISTORY) ser[k].shift();
  $("qps-now").textContent = `${qps.toFixed(1)}/s`;
  const last = (a) => a[a.length - 1];
  $("lat-now").textContent = last(ser.p99) === null ? "idle" :
    `p50 ${fmtMs(last(ser.p50))} · p95 ${fmtMs(last(ser.p95))} · p99 ${fmtMs(last(ser.p99))} ms`;
  chart("qps-chart", [[ser.qps, "l-a"], [ser.eps, "l-e"]]);
  chart("lat-chart", [[ser.p50, "l-a"], [ser.p95, "l-b"], [ser.p99, "l-e"]]);
}

function chart(id, lines) {
  const svg = $(id);
  const W = 300, H = 90;
  const all = lines.flatMap(([v]) => v.filter((x) => x !== null));
  const max = Math.max(1e-9, ...all) * 1.1;
  const kids = [1, 2, 3].map((i) => svgEl("line", { class: "grid", x1: 0, x2: W, y1: (H * i) / 4, y2: (H * i) / 4 }));
  for (const [values, cls] of lines) {
    const pts = [];
    values.forEach((v, i) => {
      if (v === null) return;
      const x = values.length > 1 ? (i + HISTORY - values.length) * (W / (HISTORY - 1)) : W;
      pts.push(`${x.toFixed(1)},${(H - 2 - (v / max) * (H - 6)).toFixed(1)}`);
    });
    if (pts.length) kids.push(svgEl("polyline", { class: cls, points: pts.join(" ") }));
  }
  svg.replaceChildren(...kids);
  const scale = $(id + "-scale");
  if (scale) scale.textContent = `scale 0–${all.length && max > 1e-6 ? Number((max / 1.1).toPrecision(3)) : 0}, last ${HISTORY} s`;
}

function renderPools(pools) {
  const rows = pools.map((p) => {
    const key = `${p.database}/${p.user}/${p.node}`;
    return el("tr", { "data-pool": key, "data-database": p.database },
      el("td", { text: p.database }), el("td", { text: p.user }), el("td", { text: p.node }), el("td", { text: p.mode }),
      el("td", { class: "num", "data-field": "active", text: String(p.active) }),
      el("td", { class: "num", "data-field": "idle", text: String(p.idle) }),
      el("td", { class: "num", "data-field": "waiting", text: String(p.waiting) }),
      el("td", { class: "num", text: String(p.size) }),
      el("td", { class: "num", text: fmtMs(p.avg_wait_ms) + " ms" }),
      el("td", { class: "num", text: fmtInt(p.timeouts) }),
      el("td", { class: "act-col" },
        actionButton("pause", `Pause database ${p.database}? New statements wait until resumed.`,
          `/api/databases/${encodeURIComponent(p.database)}/pause`, (d) => `paused: ${d.paused.join(", ")}`),
        " ",
        actionButton("resume", `Resume database ${p.database}?`,
          `/api/databases/${encodeURIComponent(p.database)}/resume`, () => `resumed ${p.database}`)));
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 11, class: "muted", text: "no pools yet (no client has run a statement)" })));
  fillBody("pools", rows);
}

function renderClients(clients, total) {
  const f = $("client-filter").value.trim().toLowerCase();
  const shown = clients.filter((c) => !f ||
    [c.client_id, c.user, c.database, c.application_name, c.addr, c.state, c.backend_node]
      .some((v) => v !== null && v !== undefined && String(v).toLowerCase().includes(f)));
  const rows = shown.slice(0, 200).map((c) =>
    el("tr", { "data-client": c.client_id },
      el("td", { text: c.client_id }), el("td", { text: c.user || "" }), el("td", { text: c.database || "" }),
      el("td", { text: c.application_name || "" }), el("td", { text: c.addr || "" }), el("td", { text: c.state }),
      el("td", { text: c.backend_node || "" }), el("td", { text: c.mode || "" }),
      el("td", { class: "num", text: fmtInt(c.queries) })));
  fillBody("clients", rows);
  $("clients-count").textContent = `${shown.length} shown of ${total === undefined ? clients.length : total}`;
}

function renderQueries(queries) {
  const rows = queries.map((q) =>
    el("tr", {},
      el("td", { class: "sql", text: q.query }), el("td", { class: "num", text: fmtInt(q.calls) }),
      el("td", { class: "num", text: fmtMs(q.total_ms) }), el("td", { class: "num", text: fmtMs(q.mean_ms) }),
      el("td", { class: "num" }, q.p99_ms === undefined || q.p99_ms === null ? NA() : fmtMs(q.p99_ms)),
      el("td", { class: "num", text: fmtInt(q.errors) })));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "no statements yet" })));
  fillBody("queries", rows);
}

function renderPlugins(plugins) {
  const rows = plugins.map((p) => {
    let calls = 0, errors = 0, us = 0;
    for (const s of Object.values(p.calls || {})) { calls += s.calls; errors += s.errors; us += s.total_us; }
    const act = p.disabled
      ? actionButton("enable", `Enable plugin ${p.name}?`, `/api/plugins/${encodeURIComponent(p.name)}/enable`, () => `enabled ${p.name}`)
      : actionButton("disable", `Disable plugin ${p.name}?`, `/api/plugins/${encodeURIComponent(p.name)}/disable`, () => `disabled ${p.name}`);
    return el("tr", { "data-plugin": p.name },
      el("td", {}, el("strong", { text: p.name }), el("div", { class: "muted", text: p.version })),
      el("td", {}, el("span", { class: "state state-" + (p.disabled ? "disabled" : "up"), text: p.state })),
      el("td", { class: "num", text: fmtInt(calls) }), el("td", { class: "num", text: fmtInt(errors) }),
      el("td", { class: "num", text: fmtMs(us / 1000) }), el("td", { class: "err", text: p.last_error || "" }),
      el("td", { class: "act-col" }, act));
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 7, class: "muted", text: "no plugins loaded" })));
  fillBody("plugins", rows);
}

function logEvent(text) {
  const t = new Date().toLocaleTimeString();
  state.events.unshift(`${t}  ${text}`);
  state.events.length = Math.min(state.events.length, 100);
}

function renderEvents() {
  const items = state.events.map((e) => el("li", { text: e }));
  if (!items.length) items.push(el("li", { class: "muted", text: "none since this page opened" }));
  $("events").replaceChildren(...items);
}

const SEVERITY_CLASS = { critical: "down", high: "down", medium: "lagging", low: "unknown", info: "unknown" };

function renderAnomalies(events) {
  if (events === null || events === undefined) {
    fillBody("anomalies", [el("tr", {}, el("td", { colspan: 6, class: "muted", text: "/api/anomalies did not answer" }))]);
    return;
  }
  const rows = events.map((e) =>
    el("tr", { "data-plugin": e.plugin, "data-kind": e.kind, "data-severity": e.severity },
      el("td", { text: new Date(e.at).toLocaleTimeString(), title: e.at }),
      el("td", {}, el("span", { class: "state state-" + (SEVERITY_CLASS[e.severity] || "unknown"), text: e.severity })),
      el("td", { text: e.plugin }), el("td", { text: e.kind }), el("td", { text: e.tenant || "" }),
      el("td", { class: "sql", text: e.detail })));
  if (!rows.length) {
    rows.push(el("tr", {}, el("td", { colspan: 6, class: "muted",
      text: "none reported (anomaly detection runs as plugins: sqli_guard, rate_spike, novel_query, auth_burst)" })));
  }
  fillBody("anomalies", rows);
  $("anomalies-count").textContent = events.length ? `newest ${events.length}` : "";
}

document.addEventListener("DOMContentLoaded", init);
