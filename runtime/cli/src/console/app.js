// weir's console: reads the JSON API and draws it. Everything that came
// from a client (payloads, headers, reasons, names) is set as text, never
// as HTML. Polls the visible page's data once a second at most.

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2457c5", "#e04f16", "#067647", "#7a2ecc", "#c11574", "#0e9384", "#b54708", "#475467"];

const state = {
  token: sessionStorage.getItem("weir-token") || "",
  tab: "pipeline",
  pipeline: null, // the last /v1/pipeline
  dlqSelected: null, // [partition, offset]
  hex: false,
};

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.setAttribute("class", v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== undefined && c !== null) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

const fmt = (n) => (n === undefined || n === null ? "–" : Math.round(n).toLocaleString("en-US"));
const pct = (x) => `${Math.round(x * 100)}%`;
const bytes = (n) => (n < 1024 ? `${n} B` : n < 1 << 20 ? `${(n / 1024).toFixed(1)} KiB` : n < 1 << 30 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${(n / (1 << 30)).toFixed(2)} GiB`);

class AuthError extends Error {}

async function api(path) {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  const r = await fetch(path, { headers, cache: "no-store" });
  const body = await r.json().catch(() => ({}));
  if (r.status === 401 || r.status === 403) {
    showLogin(r.status === 401 ? "This weir needs a token (one with the read scope)." : body.error || "This token may not read this.");
    throw new AuthError(body.error);
  }
  if (!r.ok) {
    const e = new Error(body.error || r.statusText);
    e.status = r.status;
    throw e;
  }
  return body;
}

function showLogin(why) {
  $("login-why").textContent = why;
  $("login").hidden = false;
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = $("token").value.trim();
  sessionStorage.setItem("weir-token", state.token);
  $("login").hidden = true;
  refresh();
});

function status(text, down = false) {
  $("status").textContent = text;
  $("status").classList.toggle("down", down);
}

// ---- Pipeline ---------------------------------------------------------

function nowRates(history) {
  const last = new Map();
  for (const p of history.points) last.set(p.stage, p);
  return last;
}

function renderSummary(p) {
  const r = p.report;
  $("title").textContent = `pipeline ${p.name}`;
  $("summary").replaceChildren(
    ...[
      ["in", fmt(r.source.received)],
      ["out", fmt(r.sink.written)],
      ["dead-lettered", fmt(r.sink.dead_lettered)],
      ["running for", `${Math.round(r.elapsed_s)} s`],
      ["end to end p99", `${fmt(r.sink.end_to_end.p99_us)} µs`],
    ].map(([k, v]) => el("div", { "data-summary": k }, el("b", {}, v), k)),
  );
}

function box(g, x, y, w, h, lines, attrs = {}) {
  const group = el("svg:g", { transform: `translate(${x},${y})`, ...attrs });
  group.append(el("svg:rect", { width: w, height: h, rx: 6 }));
  lines.forEach(([text, cls], i) => group.append(el("svg:text", { x: 10, y: 18 + i * 15, class: cls }, text)));
  g.append(group);
  return group;
}

function arrow(g, x1, y1, x2, y2, cls) {
  const mx = (x1 + x2) / 2;
  g.append(el("svg:path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, class: cls }));
}

function renderGraph(p, now) {
  const svg = $("graph");
  const { graph, report } = p;
  const W = 190, H = 112, GAP = 46, TOP = 16;
  const routed = graph.sinks.filter((s) => s.from);
  const main = graph.sinks.filter((s) => !s.from);
  const right = [...main, ...routed];
  const cols = graph.stages.length + 2;
  const rows = Math.max(1, right.length);
  const width = 20 + cols * (W + GAP);
  const height = TOP + Math.max(rows * (H * 0.62 + 14), H) + H * 0.62 + 50;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.style.height = `${height}px`;
  svg.style.maxWidth = `${width}px`;
  const defs = el("svg:defs", {}, el("svg:marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, el("svg:path", { d: "M0,0 L10,5 L0,10 z", fill: "#98a2b3", stroke: "none" })));
  const g = el("svg:g");
  const y0 = TOP;
  const x = (i) => 10 + i * (W + GAP);
  const src = report.source;
  const lag = src.lag.length ? src.lag.reduce((a, b) => a + b, 0) : null;
  box(g, x(0), y0, W, H, [
    [graph.source.name, "name"],
    [`${graph.source.kind} source`, "muted"],
    [`received ${fmt(src.received)}`],
    [`in flight ${fmt(src.in_flight)}`],
    [lag === null ? "" : `lag ${fmt(lag)} (${src.lag.length} partition${src.lag.length === 1 ? "" : "s"})`],
  ], { "data-source": graph.source.name });
  graph.stages.forEach((s, i) => {
    const r = report.stages[i];
    const errs = Object.entries(r.errors).map(([k, v]) => `${k} ${v}`).join(", ");
    const rate = now.get(s.name);
    const cls = report.bottleneck === s.name ? "stage bottleneck" : "stage";
    box(g, x(i + 1), y0, W, H, [
      [s.name, "name"],
      [`${fmt(rate ? rate.msgs_per_s : 0)} msg/s now · busy ${pct(r.busy_share)}`],
      [`p50 ${fmt(r.per_message.p50_us)} µs · p99 ${fmt(r.per_message.p99_us)} µs`],
      [`received ${fmt(r.received)} · dead ${fmt(r.dead_lettered)}`],
      [errs ? `errors: ${errs}` : "no errors", errs ? "bad" : "muted"],
      [`${r.instances} instance${r.instances === 1 ? "" : "s"}${r.instances_replaced ? ` · ${r.instances_replaced} replaced` : ""}`, "muted"],
    ], { class: cls, "data-stage": s.name });
    arrow(g, x(i) + W, y0 + H / 2, x(i + 1), y0 + H / 2);
  });
  const last = graph.stages.length;
  const sh = H * 0.62;
  right.forEach((s, j) => {
    const y = y0 + j * (sh + 14);
    const label = s.kind === "stdout" ? "stdout" : `${s.kind} ${s.target}`;
    box(g, x(last + 1), y, W, sh, [[s.name, "name"], [label, "muted"], [s.from ? `routed from ${s.from}` : "the last stage's outputs", "muted"]], { "data-sink": s.name });
    arrow(g, x(last) + W, y0 + H / 2, x(last + 1), y + sh / 2);
  });
  const dy = y0 + Math.max(rows * (sh + 14), H) + 20;
  const dx = x(Math.max(1, Math.ceil(last / 2)));
  box(g, dx, dy, W, sh, [["dead letters", "name"], [`${graph.dead_letter.kind} ${graph.dead_letter.target}`, "muted"], [`${fmt(report.sink.dead_lettered)} so far`]], { class: "dead", "data-dead": graph.dead_letter.target });
  graph.stages.forEach((s, i) => arrow(g, x(i + 1) + W / 2, y0 + H, dx + W / 2, dy, "dead"));
  svg.replaceChildren(defs, g);
}

function renderStages(p, now) {
  const cols = ["stage", "received", "ok", "retried", "dead", "errors", "busy msg/s", "now msg/s", "p50 µs", "p99 µs", "busy", "instances", "replaced", "recycled", "version", "upgrades"];
  const rows = p.report.stages.map((r) => {
    const rate = now.get(r.name);
    const errs = Object.entries(r.errors).map(([k, v]) => `${k}=${v}`).join(" ");
    const cell = (field, text, cls) => el("td", { "data-field": field, class: cls }, text);
    return el("tr", { "data-stage-row": r.name, class: p.report.bottleneck === r.name ? "bottleneck" : undefined },
      el("td", {}, r.name),
      cell("received", fmt(r.received)),
      cell("ok", fmt(r.ok)),
      cell("retried", fmt(r.retried)),
      cell("dead_lettered", fmt(r.dead_lettered), r.dead_lettered ? "bad" : undefined),
      cell("errors", errs || "0", errs ? "bad" : undefined),
      cell("busy_msgs_per_s", fmt(r.busy_msgs_per_s)),
      cell("now_msgs_per_s", fmt(rate ? rate.msgs_per_s : 0)),
      cell("p50_us", fmt(r.per_message.p50_us)),
      cell("p99_us", fmt(r.per_message.p99_us)),
      cell("busy_share", pct(r.busy_share)),
      cell("instances", fmt(r.instances)),
      cell("instances_replaced", fmt(r.instances_replaced)),
      cell("instances_recycled", fmt(r.instances_recycled)),
      el("td", { "data-field": "module", title: r.module }, r.module.slice(0, 12)),
      cell("upgrades", fmt(r.upgrades)),
    );
  });
  $("stages").replaceChildren(el("tr", {}, cols.map((c) => el("th", {}, c))), ...rows);
  const s = p.report.source;
  $("source").replaceChildren(
    el("tr", {}, ["received", "redelivered", "acknowledged", "retried", "in flight", "lag by partition"].map((c) => el("th", {}, c))),
    el("tr", {},
      el("td", { "data-field": "received" }, fmt(s.received)),
      el("td", {}, fmt(s.redelivered)),
      el("td", {}, fmt(s.acked)),
      el("td", {}, fmt(s.retried)),
      el("td", { "data-field": "in_flight" }, fmt(s.in_flight)),
      el("td", { "data-field": "lag" }, s.lag.length ? s.lag.map(fmt).join(" · ") : "–"),
    ),
  );
}

function chart(svg, history, value, stages) {
  const w = 560, h = 200, left = 54, bottom = 20;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const pts = history.points;
  const tmax = pts.length ? pts[pts.length - 1].t : 0;
  const tmin = Math.max(0, tmax - 300);
  const vmax = Math.max(1, ...pts.map(value)) * 1.1;
  const X = (t) => left + ((t - tmin) / Math.max(1, tmax - tmin)) * (w - left - 8);
  const Y = (v) => h - bottom - (v / vmax) * (h - bottom - 8);
  const parts = [
    el("svg:line", { x1: left, y1: h - bottom, x2: w - 8, y2: h - bottom, stroke: "#d0d5dd" }),
    el("svg:text", { x: left - 4, y: 12, "text-anchor": "end" }, fmt(vmax)),
    el("svg:text", { x: left - 4, y: h - bottom, "text-anchor": "end" }, "0"),
    el("svg:text", { x: w - 8, y: h - 4, "text-anchor": "end" }, "now"),
    el("svg:text", { x: left, y: h - 4 }, `${Math.round(tmax - tmin)} s ago`),
  ];
  stages.forEach((name, i) => {
    const mine = pts.filter((p) => p.stage === name && p.t >= tmin);
    parts.push(el("svg:polyline", { points: mine.map((p) => `${X(p.t).toFixed(1)},${Y(value(p)).toFixed(1)}`).join(" "), stroke: COLORS[i % COLORS.length], "data-series": name }));
    parts.push(el("svg:text", { x: left + 8 + i * 110, y: 14, fill: COLORS[i % COLORS.length] }, name));
  });
  svg.replaceChildren(...parts);
}

async function refreshPipeline() {
  let p;
  try {
    p = await api("/v1/pipeline");
  } catch (e) {
    if (e.status === 404) {
      $("no-pipeline").hidden = false;
      $("title").textContent = "weir serve";
      return;
    }
    throw e;
  }
  const history = await api("/v1/pipeline/history");
  state.pipeline = p;
  const now = nowRates(history);
  renderSummary(p);
  renderGraph(p, now);
  renderStages(p, now);
  const names = p.graph.stages.map((s) => s.name);
  chart($("chart-rate"), history, (pt) => pt.msgs_per_s, names);
  chart($("chart-p99"), history, (pt) => pt.p99_us, names);
}

// ---- Topics -----------------------------------------------------------

async function refreshTopics() {
  const { topics } = await api("/v1/topics");
  const head = ["topic", "partitions", "messages", "bytes", "offsets (start–end)", "fsync", "retention", "groups (lag)"];
  const rows = topics.map((t) =>
    el("tr", { "data-topic": t.name },
      el("td", {}, t.name),
      el("td", {}, t.partitions),
      el("td", { "data-field": "messages" }, fmt(t.messages)),
      el("td", {}, bytes(t.bytes)),
      el("td", {}, t.offsets.map((o) => `${o.start}–${o.end}`).join(" · ")),
      el("td", {}, t.fsync === "interval" ? `interval ${t.fsync_interval_ms} ms` : t.fsync),
      el("td", {}, [t.max_age_ms ? `${t.max_age_ms / 1000} s` : null, t.max_bytes ? bytes(t.max_bytes) : null].filter(Boolean).join(", ") || "forever"),
      el("td", { class: "text" }, t.groups.map((g) => `${g.name} (${fmt(g.lag)})`).join(", ") || "–"),
    ),
  );
  $("topic-table").replaceChildren(el("tr", {}, head.map((c) => el("th", {}, c))), ...rows);
  return topics;
}

// ---- Dead letters -----------------------------------------------------

const header = (m, name) => (m.headers && name in m.headers ? (typeof m.headers[name] === "string" ? m.headers[name] : "(bytes)") : "");
const asBytes = (v) => (typeof v === "string" ? new TextEncoder().encode(v) : Uint8Array.from(v || []));

async function refreshDead() {
  const { topics } = await api("/v1/topics");
  const select = $("dlq-topic");
  const names = topics.map((t) => t.name);
  const preferred = state.pipeline?.graph.dead_letter.kind === "queue" ? state.pipeline.graph.dead_letter.target : names.find((n) => n.endsWith(".dlq"));
  if ([...select.options].map((o) => o.value).join() !== names.join()) {
    const keep = select.value || preferred || names[0];
    select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    if (keep) select.value = keep;
  }
  const topic = topics.find((t) => t.name === select.value);
  if (!topic) return;
  const pages = await Promise.all(topic.offsets.map((o) => api(`/v1/topics/${encodeURIComponent(topic.name)}/messages?partition=${o.partition}&limit=50`)));
  const msgs = pages.flatMap((p) => p.messages).sort((a, b) => b.timestamp_us - a.timestamp_us || b.offset - a.offset);
  $("dlq-count").textContent = ` ${fmt(topic.messages)} message${topic.messages === 1 ? "" : "s"}${msgs.length < topic.messages ? `, newest ${msgs.length} shown` : ""}`;
  const head = ["partition@offset", "time", "stage", "kind", "attempts", "from", "reason"];
  const rows = msgs.map((m) => {
    const id = `${m.partition}@${m.offset}`;
    const selected = state.dlqSelected === id;
    return el("tr", { class: `clickable${selected ? " selected" : ""}`, "data-dead-letter": id, onclick: () => { state.dlqSelected = id; showDead(m); refreshDead(); } },
      el("td", {}, id),
      el("td", {}, new Date(m.timestamp_ms).toLocaleTimeString()),
      el("td", { "data-field": "stage" }, header(m, "weir.stage")),
      el("td", { "data-field": "kind" }, header(m, "weir.error-kind")),
      el("td", {}, header(m, "weir.attempts")),
      el("td", {}, `${header(m, "weir.source.topic")} ${header(m, "weir.source.partition")}@${header(m, "weir.source.offset")}`),
      el("td", { class: "text", "data-field": "reason" }, header(m, "weir.reason").slice(0, 160)),
    );
  });
  $("dlq-table").replaceChildren(el("tr", {}, head.map((c) => el("th", {}, c))), ...rows);
}

function showDead(m) {
  state.shown = m;
  $("dlq-detail").hidden = false;
  $("dlq-title").textContent = `${m.topic} ${m.partition}@${m.offset}`;
  const rows = Object.entries(m.headers || {}).map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", { class: "text" }, typeof v === "string" ? v : `bytes: ${Array.from(v).join(" ")}`)));
  if (m.key !== null && m.key !== undefined) rows.unshift(el("tr", {}, el("td", {}, "key"), el("td", { class: "text" }, typeof m.key === "string" ? m.key : `bytes: ${m.key.join(" ")}`)));
  $("dlq-headers").replaceChildren(el("tr", {}, el("th", {}, "header"), el("th", {}, "value")), ...rows);
  renderPayload();
}

function renderPayload() {
  const m = state.shown;
  if (!m) return;
  const b = asBytes(m.payload);
  $("dlq-payload").textContent = state.hex
    ? Array.from({ length: Math.ceil(b.length / 16) }, (_, i) => {
        const row = b.slice(i * 16, i * 16 + 16);
        const hex = Array.from(row, (x) => x.toString(16).padStart(2, "0")).join(" ");
        const ascii = Array.from(row, (x) => (x >= 32 && x < 127 ? String.fromCharCode(x) : ".")).join("");
        return `${(i * 16).toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  ${ascii}`;
      }).join("\n")
    : new TextDecoder().decode(b);
  $("as-text").classList.toggle("on", !state.hex);
  $("as-hex").classList.toggle("on", state.hex);
}

$("as-text").addEventListener("click", () => { state.hex = false; renderPayload(); });
$("as-hex").addEventListener("click", () => { state.hex = true; renderPayload(); });
$("dlq-topic").addEventListener("change", () => { state.dlqSelected = null; $("dlq-detail").hidden = true; refreshDead(); });

// ---- Tabs and the loop --------------------------------------------------

function show(tab) {
  state.tab = ["pipeline", "topics", "dead"].includes(tab) ? tab : "pipeline";
  for (const s of document.querySelectorAll("[data-page]")) s.hidden = s.id !== state.tab;
  for (const a of document.querySelectorAll("[data-tab]")) a.classList.toggle("active", a.dataset.tab === state.tab);
  refresh();
}

let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  try {
    if (state.tab === "pipeline") await refreshPipeline();
    else if (state.tab === "topics") await refreshTopics();
    else await refreshDead();
    status(`live · ${new Date().toLocaleTimeString()}`);
  } catch (e) {
    if (!(e instanceof AuthError)) status(`cannot read from weir: ${e.message}`, true);
  } finally {
    busy = false;
  }
}

window.addEventListener("hashchange", () => show(location.hash.slice(1)));
show(location.hash.slice(1));
setInterval(() => { if (!document.hidden && $("login").hidden) refresh(); }, 1000);
// The dead-letter tab names the pipeline's dead-letter topic: know the pipeline from the start.
api("/v1/pipeline").then((p) => { state.pipeline = p; $("title").textContent = `pipeline ${p.name}`; }).catch(() => {});
