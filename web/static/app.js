// finsent live dashboard: plain JS, no dependencies, no CDN.
// Rule for safety: text from the stream (headlines, sources, tickers, comments) is only ever inserted with
// textContent / option.text, never as HTML; links are kept only for http(s) URLs. The server's CSP forbids
// inline script as a second line of defence.
"use strict";

const MAX_ROWS = 200;
const CHART_SERIES = 6;
const COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#bab0ac"];

const state = {
  config: null,
  items: new Map(),          // item id -> scored item (rows on screen)
  alerts: new Map(),         // alert id -> newest SurgeAlert of that surge
  seq: 0,
  source: null,
  chartFromSearch: false,   // the chart follows the ticker search until the search is cleared
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);   // strings become text nodes
  return node;
}

function safeUrl(url) {
  return typeof url === "string" && /^https?:\/\//i.test(url) ? url : null;
}

function fmtTime(iso) {
  const d = new Date(iso);
  return isNaN(d) ? "?" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

async function getJSON(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

// ---- filters ---------------------------------------------------------------------------------------

function filters() {
  return {
    topic: $("f-topic").value,
    sentiment: $("f-sentiment").value,
    ticker: $("f-ticker").value.trim().toUpperCase(),
    q: $("f-text").value.trim().toLowerCase(),
  };
}

function matches(s, f) {
  if (f.topic && s.topic !== f.topic) return false;
  if (f.sentiment && s.sentiment !== f.sentiment) return false;
  if (f.ticker && !(s.item.tickers || []).includes(f.ticker)) return false;
  if (f.q && !s.item.title.toLowerCase().includes(f.q)) return false;
  return true;
}

// ---- headline table --------------------------------------------------------------------------------

function badge(kind, value, title) {
  return el("span", { class: `badge ${kind}-${value.replace(/[^a-z]/gi, "-").toLowerCase()}`, title: title || "", text: value });
}

function rowFor(s) {
  const it = s.item;
  const url = safeUrl(it.url);
  const title = url ? el("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: it.title })
                    : el("span", { text: it.title });
  const p = s.sentiment_probs[s.sentiment];
  const button = el("button", { class: "correct-btn", type: "button", title: "correct this label", text: "Correct" });
  button.addEventListener("click", () => openCorrection(row, s));
  const row = el("tr", { "data-id": it.id, class: "item" },
    el("td", { class: "time", title: it.published, text: fmtTime(it.published) }),
    el("td", { class: "tickers", text: (it.tickers || []).join(" ") }),
    el("td", { class: "title" }, title),
    el("td", { class: "source", text: it.source }),
    el("td", {}, badge("topic", s.topic)),
    el("td", {}, badge("sent", s.sentiment, p !== undefined ? `p=${p.toFixed(2)}` : "")),
    el("td", {}, button));
  return row;
}

function addRow(s, atTop) {
  const body = $("items");
  const old = body.querySelector(`tr.item[data-id="${CSS.escape(s.item.id)}"]`);
  if (old) old.replaceWith(rowFor(s));
  else if (atTop) body.prepend(rowFor(s));
  else body.append(rowFor(s));
  state.items.set(s.item.id, s);
  const rows = body.querySelectorAll("tr.item");
  for (let i = rows.length - 1; i >= MAX_ROWS; i--) {
    const next = rows[i].nextElementSibling;
    if (next && next.classList.contains("correct-row")) next.remove();  // its open correction form goes too
    state.items.delete(rows[i].dataset.id);
    rows[i].remove();
  }
}

async function reloadItems() {
  const f = filters();
  const params = new URLSearchParams({ limit: "100" });
  if (f.topic) params.set("topic", f.topic);
  if (f.sentiment) params.set("sentiment", f.sentiment);
  if (f.ticker) params.set("ticker", f.ticker);
  if (f.q) params.set("q", f.q);
  try {
    const page = await getJSON(`/items?${params}`);
    $("items").replaceChildren();
    state.items.clear();
    for (const s of page.items) addRow(s, false);
    $("items-status").textContent = `${page.total} matching`;
    if (!state.source) connect(page.seq);
  } catch (err) {
    $("items-status").textContent = `could not load headlines: ${err.message}`;
  }
  if (f.ticker) { selectChartKey(`ticker:${f.ticker}`); state.chartFromSearch = true; }
  else if (state.chartFromSearch) { state.chartFromSearch = false; $("chart-key").value = ""; refreshChart(); }
}

// ---- correction (feedback) -------------------------------------------------------------------------

function openCorrection(row, s) {
  const next = row.nextElementSibling;
  if (next && next.classList.contains("correct-row")) { next.remove(); return; }
  const frag = $("correct-form").content.cloneNode(true);
  const form = frag.querySelector("form");
  for (const t of state.config.topics) form.topic.append(new Option(t, t));
  for (const t of state.config.sentiments) form.sentiment.append(new Option(t, t));
  form.querySelector(".cancel").addEventListener("click", () => form.closest("tr").remove());
  form.addEventListener("submit", (ev) => { ev.preventDefault(); sendCorrection(form, s); });
  row.after(frag);
}

async function sendCorrection(form, s) {
  const result = form.querySelector(".result");
  const who = $("who").value.trim();
  if (!who) { result.textContent = "enter your name (Analyst) first"; $("who").focus(); return; }
  const body = { item_id: s.item.id, who, comment: form.comment.value };
  if (form.topic.value) body.topic = form.topic.value;
  if (form.sentiment.value) body.sentiment = form.sentiment.value;
  if (!body.topic && !body.sentiment) { result.textContent = "choose the right topic or sentiment"; return; }
  const headers = { "Content-Type": "application/json" };
  const token = $("token").value;
  if (token) headers.Authorization = `Bearer ${token}`;
  result.textContent = "sending…";
  try {
    const r = await fetch("/feedback", { method: "POST", headers, body: JSON.stringify(body) });
    const answer = await r.json().catch(() => ({}));
    if (r.ok) {
      result.textContent = answer.published ? "saved, thank you" : "saved (the broker copy will follow)";
      form.closest("tr").previousElementSibling?.classList.add("corrected");
      refreshFeedbackStats();
    } else {
      const detail = Array.isArray(answer.detail) ? answer.detail.map((d) => d.msg).join("; ") : answer.detail;
      result.textContent = `not saved: ${detail || `HTTP ${r.status}`}`;
    }
  } catch (err) {
    result.textContent = `not saved: ${err.message}`;
  }
}

async function refreshFeedbackStats() {
  try {
    const st = await getJSON("/feedback/stats");
    $("fbstats").textContent = `corrections: ${st.corrections}`;
  } catch { /* shown on the next success */ }
}

// ---- alerts ----------------------------------------------------------------------------------------

// finsent.alerts is a changelog of transitions (alert id, state, severity): a newer record of a transition
// replaces it, and a retracted one withdraws it (an early, provisional firing the closed window did not confirm).
function applyAlert(a) {
  const prev = state.alerts.get(a.alert_id);
  if (a.retracted) {
    if (prev && prev.state === a.state && prev.severity === a.severity) state.alerts.delete(a.alert_id);
    return;
  }
  if (!prev || a.raised_at >= prev.raised_at) state.alerts.set(a.alert_id, a);
}

function addAlert(a) {
  applyAlert(a);
  renderAlerts();
  drawChart();
}

function renderAlerts() {
  const list = $("alerts");
  const firing = [...state.alerts.values()].filter((a) => a.state === "firing")
    .sort((a, b) => (b.raised_at > a.raised_at ? 1 : -1));
  $("alert-count").textContent = `${firing.length} firing`;
  if (!firing.length) { list.replaceChildren(el("li", { class: "muted", text: "no active surge" })); return; }
  list.replaceChildren(...firing.map((a) => {
    const evidence = el("ul", { class: "evidence" }, ...(a.evidence || []).map((e) => {
      const url = safeUrl(e.url);
      const title = url ? el("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: e.title }) : e.title;
      return el("li", {}, title, el("span", { class: "muted", text: ` · ${e.source} · p(neg)=${e.p_negative.toFixed(2)}` }));
    }));
    const head = el("div", { class: "alert-head" },
      badge("sev", a.severity), el("strong", { text: ` ${a.key} ` }),
      el("span", { class: "muted", text: `${Math.round(a.negative_share * 100)}% negative of ${a.count}, z=${a.zscore.toFixed(1)}, since ${fmtTime(a.window_start)}` }));
    const li = el("li", { class: `alert ${a.severity}` }, head, evidence);
    li.addEventListener("click", () => selectChartKey(a.key));
    return li;
  }));
}

async function loadAlerts() {
  try {
    const page = await getJSON("/alerts?limit=500");
    for (const a of page.alerts.reverse()) applyAlert(a);
    renderAlerts();
  } catch { /* the live stream fills it */ }
}

// ---- live stream (server-sent events) --------------------------------------------------------------

function connect(after) {
  const source = new EventSource(`/events?after=${after || 0}`);
  state.source = source;
  source.onopen = () => { state.retryMs = 0; $("conn").textContent = "live"; $("conn").className = "conn on"; };
  source.onerror = () => {
    $("conn").textContent = "reconnecting…"; $("conn").className = "conn off";
    // The browser retries a dropped stream by itself, but not one refused outright (503 when the API's
    // stream slots are full): that one is closed, so retry it ourselves, backing off up to 30 s.
    if (source.readyState === EventSource.CLOSED) {
      state.retryMs = Math.min((state.retryMs || 1000) * 2, 30000);
      setTimeout(() => connect(state.seq), state.retryMs);
    }
  };
  source.addEventListener("item", (ev) => {
    const s = JSON.parse(ev.data);
    state.seq = Number(ev.lastEventId) || state.seq;
    if (matches(s, filters())) addRow(s, true);
    $("counts").textContent = `last item #${state.seq}`;
  });
  source.addEventListener("alert", (ev) => addAlert(JSON.parse(ev.data)));
}

// ---- chart -----------------------------------------------------------------------------------------

const chart = { series: [], width: null };

function selectChartKey(key) {
  const sel = $("chart-key");
  if (![...sel.options].some((o) => o.value === key)) sel.append(new Option(key, key));
  sel.value = key;
  refreshChart();
}

async function refreshChart() {
  try {
    const { keys } = await getJSON("/windows/keys");
    const sel = $("chart-key");
    const known = new Set([...sel.options].map((o) => o.value));
    for (const k of keys) if (!known.has(k.key)) sel.append(new Option(k.key, k.key));
    const chosen = sel.value ? [sel.value] : keys.filter((k) => k.key.startsWith("topic:")).slice(0, CHART_SERIES).map((k) => k.key);
    const want = state.config.surge_window_s;
    const series = [];
    for (const key of chosen) {
      const info = keys.find((k) => k.key === key);
      if (!info) continue;
      const width = info.widths.includes(want) ? want : info.widths[0];
      const data = await getJSON(`/windows?${new URLSearchParams({ key, width: String(width), limit: "360" })}`);
      series.push({ key, width, points: data.series[String(width)] || [] });
    }
    chart.series = series;
    chart.width = series.length ? series[0].width : null;
    $("chart-width").textContent = chart.width ?? "?";
    drawChart();
  } catch (err) {
    $("legend").textContent = `chart unavailable: ${err.message}`;
  }
}

function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const cssW = canvas.clientWidth || 900, cssH = canvas.clientHeight || 300;
  canvas.width = cssW * ratio; canvas.height = cssH * ratio;
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, cssW, cssH);
  const pad = { l: 44, r: 12, t: 10, b: 26 };
  const pts = chart.series.flatMap((s) => s.points);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#888";
  if (!pts.length) { g.fillText("waiting for the first closed windows…", pad.l, cssH / 2); $("legend").replaceChildren(); return; }
  const t = (p) => Date.parse(p.end);
  const t0 = Math.min(...pts.map(t)), t1 = Math.max(...pts.map(t), t0 + 1000);
  const x = (ms) => pad.l + ((ms - t0) / (t1 - t0)) * (cssW - pad.l - pad.r);
  const y = (v) => cssH - pad.b - v * (cssH - pad.t - pad.b);
  g.strokeStyle = "#333"; g.lineWidth = 1;
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    g.beginPath(); g.moveTo(pad.l, y(v)); g.lineTo(cssW - pad.r, y(v)); g.stroke();
    g.fillText(`${v * 100}%`, 6, y(v) + 4);
  }
  for (let i = 0; i <= 4; i++) {
    const ms = t0 + ((t1 - t0) * i) / 4;
    g.fillText(new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }), x(ms) - 24, cssH - 8);
  }
  const legend = [];
  chart.series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    s.points.forEach((p, j) => {
      const share = p.count ? p.negative / p.count : 0;
      if (j === 0) g.moveTo(x(t(p)), y(share)); else g.lineTo(x(t(p)), y(share));
    });
    g.stroke();
    const byEnd = new Map(s.points.map((p) => [p.end, p]));
    for (const a of state.alerts.values()) {
      if (a.key !== s.key) continue;
      const at = Date.parse(a.window_end);
      if (at < t0 || at > t1) continue;
      const p = byEnd.get(a.window_end);
      const share = p && p.count ? p.negative / p.count : a.negative_share;
      g.fillStyle = a.severity === "critical" ? "#e15759" : "#f28e2b";
      g.beginPath(); g.moveTo(x(at), y(share) - 9); g.lineTo(x(at) - 6, y(share) + 2); g.lineTo(x(at) + 6, y(share) + 2); g.fill();
    }
    const last = s.points[s.points.length - 1];
    const swatch = el("i");
    swatch.style.background = color;  // CSSOM, not a style attribute: the CSP allows no inline styles
    legend.push(el("span", { class: "key" }, swatch,
      `${s.key}${last ? ` (${last.count} in last window)` : ""}`));
  });
  $("legend").replaceChildren(...legend);
}

// ---- start -----------------------------------------------------------------------------------------

async function start() {
  state.config = await getJSON("/dashboard/config");
  for (const t of state.config.topics) $("f-topic").append(new Option(t, t));
  for (const t of state.config.sentiments) $("f-sentiment").append(new Option(t, t));
  $("token-box").hidden = !state.config.feedback_needs_token;
  $("who").value = localStorage.getItem("finsent.who") || "";
  $("who").addEventListener("change", () => localStorage.setItem("finsent.who", $("who").value.trim()));
  let typing = null;
  for (const id of ["f-topic", "f-sentiment", "f-ticker", "f-text"]) {
    $(id).addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(reloadItems, 250); });
  }
  $("chart-key").addEventListener("change", refreshChart);
  window.addEventListener("resize", drawChart);
  getJSON("/readyz").then((r) => { $("model").textContent = r.model ? `model ${r.model}` : ""; }).catch(() => {});
  await Promise.all([reloadItems(), loadAlerts()]);
  refreshChart();
  refreshFeedbackStats();
  setInterval(refreshChart, 5000);
  setInterval(refreshFeedbackStats, 15000);
}

start().catch((err) => { $("conn").textContent = `failed to start: ${err.message}`; });
