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
  transitions: new Map(),    // "alert id|state|severity" -> its newest record (the alert timeline)
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
  result.textContent = "sending…";
  try {
    const r = await fetch("/feedback", { method: "POST", headers: authHeaders(), body: JSON.stringify(body) });
    const answer = await r.json().catch(() => ({}));
    if (r.ok) {
      result.textContent = answer.published ? "saved, thank you"
        : "saved for training (not sent to finsent.feedback: the broker did not answer)";
      form.closest("tr").previousElementSibling?.classList.add("corrected");
      refreshFeedbackStats();
    } else {
      result.textContent = `not saved: ${errorText(answer, r)}`;
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
  const tkey = `${a.alert_id}|${a.state}|${a.severity}`;
  if (a.retracted) state.transitions.delete(tkey);
  else state.transitions.set(tkey, a);
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
  drawTimeline();
  clearTimeout(state.casesSoon);  // the receiver opens or updates a case shortly after a transition
  state.casesSoon = setTimeout(loadCases, 1500);
}

// The headlines behind a surge (a SurgeAlert's, or a case's newest firing's): links to the story when it has one.
function evidenceList(evidence) {
  return el("ul", { class: "evidence" }, ...(evidence || []).map((e) => {
    const url = safeUrl(e.url);
    const title = url ? el("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: e.title }) : e.title;
    return el("li", {}, title, el("span", { class: "muted", text: ` · ${e.source} · p(neg)=${e.p_negative.toFixed(2)}` }));
  }));
}

function renderAlerts() {
  const list = $("alerts");
  const firing = [...state.alerts.values()].filter((a) => a.state === "firing")
    .sort((a, b) => (b.raised_at > a.raised_at ? 1 : -1));
  $("alert-count").textContent = `${firing.length} firing`;
  if (!firing.length) { list.replaceChildren(el("li", { class: "muted", text: "no active surge" })); return; }
  list.replaceChildren(...firing.map((a) => {
    const evidence = evidenceList(a.evidence);
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

// ---- open alerts (cases, through the compliance receiver) ------------------------------------------

function authHeaders() {
  const headers = { "Content-Type": "application/json" };
  const token = $("token").value;
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

function errorText(answer, r) {
  const detail = Array.isArray(answer.detail) ? answer.detail.map((d) => d.msg).join("; ") : answer.detail;
  return detail || `HTTP ${r.status}`;
}

function caseItem(c) {
  const meta = [`opened ${fmtTime(c.opened_at)}`, `${c.notifications} notification${c.notifications === 1 ? "" : "s"}`,
    `alert ${c.alert_status}`];
  if (c.acknowledged_by) meta.push(`seen by ${c.acknowledged_by}`);
  if (c.assignee) meta.push(`assigned to ${c.assignee}`);
  if (c.closed_by) meta.push(`closed by ${c.closed_by} as ${c.disposition.replace("_", " ")}`);
  const notes = c.events.filter((e) => e.note).slice(-3).map((e) =>
    el("li", {}, el("span", { class: "muted", text: `${e.who} · ${fmtTime(e.at)}: ` }), e.note));
  // what to act on, even after the surge resolved: its headlines, its chart here, the Grafana dashboard, the runbook
  const links = [];
  if (c.key) {
    const chart = el("a", { href: "#chart", text: "chart" });
    chart.addEventListener("click", () => selectChartKey(c.key));
    links.push(chart);
  }
  const dashboard = safeUrl(c.links?.dashboard);
  if (dashboard) links.push(el("a", { href: dashboard, target: "_blank", rel: "noopener noreferrer", text: "Grafana" }));
  const runbook = c.links?.runbook;
  if (runbook) {
    const url = safeUrl(runbook);
    links.push(url ? el("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: "runbook" })
      : el("span", { class: "muted", text: `runbook: ${runbook}` }));
  }
  const li = el("li", { class: `case ${c.severity || ""} ${c.state}`, "data-case": String(c.case_id) },
    el("div", { class: "alert-head" }, badge("sev", c.severity || "warning"), el("strong", { text: ` ${c.key || c.alertname} ` }),
      badge("state", c.state), el("span", { class: "muted", text: ` #${c.case_id}` })),
    el("div", { class: "case-meta muted", text: meta.join(" · ") }),
    evidenceList(c.evidence),
    el("div", { class: "case-links" }, ...links.flatMap((a, i) => (i ? [" · ", a] : [a]))),
    el("ul", { class: "evidence notes" }, ...notes));
  if (c.state !== "closed") {
    const actions = $("case-actions").content.cloneNode(true).firstElementChild;
    for (const b of actions.querySelectorAll("button[data-action]")) {
      b.addEventListener("click", () => caseAction(c, b.dataset.action, actions));
    }
    li.append(actions);
  }
  return li;
}

async function caseAction(c, action, box) {
  const result = box.querySelector(".result");
  const who = $("who").value.trim();
  if (!who) { result.textContent = "enter your name (Analyst) first"; $("who").focus(); return; }
  const body = { who };
  if (action === "assign") {
    body.assignee = box.querySelector("[name=assignee]").value.trim();
    if (!body.assignee) { result.textContent = "whom to assign?"; return; }
  }
  if (action === "note" || action === "close") {
    const note = box.querySelector("[name=note]").value.trim();
    if (note) body.note = note;
    else if (action === "note") { result.textContent = "write the note first"; return; }
  }
  if (action === "close") {
    body.disposition = box.querySelector("[name=disposition]").value;
    if (!body.disposition) { result.textContent = "choose how to close it"; return; }
  }
  result.textContent = "saving…";
  state.caseSaving = true;
  let saved = false;
  try {
    const r = await fetch(`/cases/${c.case_id}/${action}`, { method: "POST", headers: authHeaders(), body: JSON.stringify(body) });
    const answer = await r.json().catch(() => ({}));
    if (!r.ok) result.textContent = `not saved: ${errorText(answer, r)}`;
    else saved = true;
  } catch (err) {
    result.textContent = `not saved: ${err.message}`;
  } finally {
    state.caseSaving = false;
  }
  if (saved) {
    for (const f of box.querySelectorAll("input, select")) f.value = "";  // sent: the redraw starts it afresh
    await loadCases(true);
  } else setTimeout(() => { result.textContent = ""; }, 10000);  // read it, then the list refreshes again
}

// What the analyst typed into each case's fields and has not sent, by "case id/field name".
function typedInCases(list) {
  const typed = new Map();
  for (const li of list.querySelectorAll("li.case")) {
    for (const f of li.querySelectorAll(".case-actions input, .case-actions select")) {
      if (f.value) typed.set(`${li.dataset.case}/${f.name}`, f.value);
    }
  }
  return typed;
}

// Not under the analyst's hands: a save in flight, a refusal still to read, text typed but not sent.
function casesBusy(list) {
  return state.caseSaving || typedInCases(list).size > 0 ||
    [...list.querySelectorAll(".case-actions .result")].some((result) => result.textContent);
}

async function loadCases(force = false) {
  const list = $("cases");
  if (!force && casesBusy(list)) return;
  const wanted = $("cases-closed").checked ? "all" : "open";
  const seq = (state.casesSeq = (state.casesSeq || 0) + 1);
  try {
    const r = await fetch(`/cases?state=${wanted}`, { headers: { ...authHeaders(), Accept: "application/json" } });
    const page = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(errorText(page, r));
    // The list may have changed hands while this was fetched: a newer load answers instead, and a routine
    // refresh never redraws under text the analyst began typing meanwhile.
    if (seq !== state.casesSeq || (!force && casesBusy(list))) return;
    const open = page.cases.filter((c) => c.state !== "closed").length;
    $("case-count").textContent = `${open} open`;
    const typed = typedInCases(list);  // a forced redraw (after a save, a new token) keeps what was typed
    list.replaceChildren(...(page.cases.length ? page.cases.map(caseItem) : [el("li", { class: "muted", text: "no open alerts" })]));
    for (const [key, value] of typed) {
      const [id, name] = key.split("/");
      const field = list.querySelector(`li.case[data-case="${id}"] .case-actions [name="${name}"]`);
      if (field) field.value = value;
    }
  } catch (err) {
    if (seq !== state.casesSeq) return;
    $("case-count").textContent = "";
    list.replaceChildren(el("li", { class: "muted", text: `alert cases unavailable: ${err.message}` }));
  }
}

// ---- review queue ----------------------------------------------------------------------------------

function reviewRow(q) {
  const why = q.behind_alert ? badge("sev", "behind alert", "evidence of a firing surge") : el("span", { class: "muted", text: "uncertain" });
  const p = q.sentiment_probs[q.sentiment];
  const answer = el("td", { class: "answer" });
  const row = el("tr", { "data-id": q.item.id },
    el("td", {}, why),
    el("td", { class: "margin", title: `entropy ${q.entropy.toFixed(2)} bits`, text: q.margin.toFixed(2) }),
    el("td", { class: "title", text: q.item.title }),
    el("td", {}, badge("sent", q.sentiment, p !== undefined ? `p=${p.toFixed(2)}` : "")),
    answer);
  for (const label of state.config.sentiments) {
    const b = el("button", { type: "button", "data-label": label, text: label === q.sentiment ? `${label} ✓` : label });
    b.addEventListener("click", () => sendReview(row, q, label));
    answer.append(b);
  }
  answer.append(el("span", { class: "result muted", role: "status" }));
  return row;
}

async function sendReview(row, q, label) {
  const result = row.querySelector(".result");
  const who = $("who").value.trim();
  if (!who) { result.textContent = "enter your name (Analyst) first"; $("who").focus(); return; }
  result.textContent = "saving…";
  state.reviewSaving = (state.reviewSaving || 0) + 1;  // the queue is not redrawn under a save in flight
  try {
    const r = await fetch("/feedback", { method: "POST", headers: authHeaders(),
      body: JSON.stringify({ item_id: q.item.id, sentiment: label, who, comment: "review queue" }) });
    const answer = await r.json().catch(() => ({}));
    if (!r.ok) { result.textContent = `not saved: ${errorText(answer, r)}`; return; }
    result.textContent = "";
    row.classList.add("done");
    for (const b of row.querySelectorAll("button")) b.disabled = true;
    refreshFeedbackStats();
  } catch (err) {
    result.textContent = `not saved: ${err.message}`;
  } finally {
    state.reviewSaving -= 1;
  }
}

async function loadReview() {
  if (state.reviewSaving) return;  // a save in flight: its row keeps its answer
  const seq = (state.reviewSeq = (state.reviewSeq || 0) + 1);
  try {
    const page = await getJSON("/review?limit=12");
    if (state.reviewSaving || seq !== state.reviewSeq) return;  // a save began meanwhile, or a newer load answers
    $("review").replaceChildren(...page.items.map(reviewRow));
    $("review-status").textContent = page.items.length ? "" : "nothing to review yet";
  } catch (err) {
    $("review-status").textContent = `review queue unavailable: ${err.message}`;
  }
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
  const { g, w: cssW, h: cssH } = canvasContext($("chart"));
  const pad = { l: 44, r: 12, t: 10, b: 26 };
  const pts = chart.series.flatMap((s) => s.points);
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

// ---- heatmap: topic × time -------------------------------------------------------------------------

function canvasContext(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 900, h = canvas.clientHeight || 300;
  canvas.width = w * ratio; canvas.height = h * ratio;
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  g.font = "11px system-ui, sans-serif";
  return { g, w, h };
}

function shareColor(share, alpha) {
  // grey (0 % negative) to red (100 %)
  const r = Math.round(60 + share * (225 - 60)), gr = Math.round(66 + share * (87 - 66)), b = Math.round(76 + share * (89 - 76));
  return `rgba(${r},${gr},${b},${alpha})`;
}

let heat = null;

async function refreshHeatmap() {
  try {
    heat = await getJSON("/windows/heatmap?columns=60");
    $("heatmap-note").textContent = heat.rows.length ? `${heat.width} s windows, ${heat.ends.length} shown` : "";
  } catch (err) {
    $("heatmap-note").textContent = `heatmap unavailable: ${err.message}`;
  }
  drawHeatmap();
}

function drawHeatmap() {
  const { g, w, h } = canvasContext($("heatmap"));
  g.fillStyle = "#888";
  if (!heat || !heat.rows.length) { g.fillText("waiting for the first closed windows…", 12, h / 2); return; }
  const rows = heat.rows.slice(0, 14), cols = heat.ends.length;
  const pad = { l: 170, r: 8, t: 34, b: 20 };
  const cw = (w - pad.l - pad.r) / cols, ch = (h - pad.t - pad.b) / rows.length;
  const colTotals = heat.ends.map((_, i) => rows.reduce((n, r) => n + (r.cells[i] ? r.cells[i][1] : 0), 0));
  const maxCol = Math.max(...colTotals, 1), maxCell = Math.max(...rows.flatMap((r) => r.cells.map((c) => (c ? c[1] : 0))), 1);
  colTotals.forEach((n, i) => {  // volume bars above the grid
    const bh = (n / maxCol) * (pad.t - 8);
    g.fillStyle = "#4e79a7"; g.fillRect(pad.l + i * cw + 1, pad.t - 4 - bh, Math.max(cw - 2, 1), bh);
  });
  rows.forEach((r, j) => {
    g.fillStyle = "#c9d1d9";
    const label = r.key.replace(/^topic:/, "");
    g.fillText(label.length > 26 ? `${label.slice(0, 25)}…` : label, 6, pad.t + j * ch + ch / 2 + 4);
    r.cells.forEach((c, i) => {
      if (!c) return;
      g.fillStyle = shareColor(c[0], 0.25 + 0.75 * Math.sqrt(c[1] / maxCell));
      g.fillRect(pad.l + i * cw + 1, pad.t + j * ch + 1, Math.max(cw - 2, 1), Math.max(ch - 2, 1));
    });
  });
  g.fillStyle = "#888";
  for (const i of [0, Math.floor(cols / 2), cols - 1]) {
    if (i < 0 || i >= cols) continue;
    g.fillText(fmtTime(heat.ends[i]), Math.min(pad.l + i * cw, w - 85), h - 5);
  }
}

// ---- alert timeline --------------------------------------------------------------------------------

function surges() {
  const by = new Map();
  for (const a of state.transitions.values()) {
    const s = by.get(a.alert_id) || { key: a.key, severity: "warning", start: null, end: null, last: null };
    if (a.state === "firing") {
      const t = Date.parse(a.window_start);
      s.start = s.start === null ? t : Math.min(s.start, t);
      if (a.severity === "critical") s.severity = "critical";
    } else s.end = Date.parse(a.window_end);
    s.last = Math.max(s.last || 0, Date.parse(a.window_end));
    by.set(a.alert_id, s);
  }
  return [...by.values()].filter((s) => s.start !== null);
}

function drawTimeline() {
  const { g, w, h } = canvasContext($("timeline"));
  const all = surges();
  g.fillStyle = "#888";
  if (!all.length) { g.fillText("no surge yet", 12, h / 2); return; }
  const t0 = Math.min(...all.map((s) => s.start)), t1 = Math.max(...all.map((s) => s.end || s.last), t0 + 60000);
  const keys = [...new Set(all.sort((a, b) => b.start - a.start).map((s) => s.key))].slice(0, 6);
  const pad = { l: 170, r: 10, t: 6, b: 20 };
  const lane = (h - pad.t - pad.b) / Math.max(keys.length, 1);
  const x = (ms) => pad.l + ((ms - t0) / (t1 - t0)) * (w - pad.l - pad.r);
  keys.forEach((key, j) => {
    g.fillStyle = "#c9d1d9";
    g.fillText(key.length > 26 ? `${key.slice(0, 25)}…` : key, 6, pad.t + j * lane + lane / 2 + 4);
    for (const s of all.filter((s) => s.key === key)) {
      const end = s.end || t1;
      g.fillStyle = s.severity === "critical" ? "#e15759" : "#f28e2b";
      g.globalAlpha = s.end ? 0.6 : 1;
      g.fillRect(x(s.start), pad.t + j * lane + 3, Math.max(x(end) - x(s.start), 3), Math.max(lane - 6, 2));
      g.globalAlpha = 1;
    }
  });
  g.fillStyle = "#888";
  for (let i = 0; i <= 4; i++) {
    const ms = t0 + ((t1 - t0) * i) / 4;
    g.fillText(fmtTime(new Date(ms).toISOString()), Math.min(x(ms) - 20, w - 85), h - 5);
  }
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
  $("cases-closed").addEventListener("change", () => loadCases(true));
  $("token").addEventListener("change", () => loadCases(true));
  window.addEventListener("resize", () => { drawChart(); drawHeatmap(); drawTimeline(); });
  getJSON("/readyz").then((r) => { $("model").textContent = r.model ? `model ${r.model}` : ""; }).catch(() => {});
  await Promise.all([reloadItems(), loadAlerts()]);
  drawTimeline();
  refreshChart();
  refreshHeatmap();
  refreshFeedbackStats();
  loadCases();
  loadReview();
  setInterval(refreshChart, 5000);
  setInterval(refreshHeatmap, 5000);
  setInterval(loadCases, 5000);
  setInterval(loadReview, 10000);
  setInterval(refreshFeedbackStats, 15000);
}

start().catch((err) => { $("conn").textContent = `failed to start: ${err.message}`; });
