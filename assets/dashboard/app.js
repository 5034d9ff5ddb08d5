// simpleloggers dashboard: polls api/v1/cluster every second (with back-off while the node is
// unreachable, e.g. a restarted port-forward) and follows this node's log through EventSource
// on api/v1/log/stream, which reconnects by itself and resumes with Last-Event-ID. Replication
// (HW, ISR with each member's lag, election case, refused writes and truncations) comes from
// the members' own reports in the same view, so a follower's page shows it too.
// A node started with --read-token answers 401 without it: the page takes the token from
// `?token=` (then drops it from the address bar) or asks once, keeps it in sessionStorage (this
// tab only), sends it as `Authorization: Bearer` and, for EventSource (which cannot set headers),
// as the `access_token` query parameter.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;
const MAX_BACKOFF_MS = 5000;
const RATE_POINTS = 120;
const TAIL_LINES = 50;

const TOKEN_KEY = "simpleloggers-read-token";
(function takeTokenFromUrl() {
  const url = new URL(window.location.href);
  const token = url.searchParams.get("token");
  if (token !== null) {
    sessionStorage.setItem(TOKEN_KEY, token);
    url.searchParams.delete("token");
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
})();

function readToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

let asked = false;
// Asks for the token once per 401 streak (not on every poll); an empty answer keeps the old one.
function askToken() {
  if (asked) return;
  asked = true;
  const token = window.prompt("This node requires a read token (its --read-token):");
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
}

// fetch() with the read token; a 401 asks for the token and retries once.
async function apiFetch(path) {
  const call = () => {
    const token = readToken();
    const headers = token ? { Authorization: "Bearer " + token } : {};
    return fetch(path, { cache: "no-store", headers });
  };
  let resp = await call();
  if (resp.status === 401) {
    askToken();
    resp = await call();
  } else {
    asked = false;
  }
  return resp;
}

function withToken(path) {
  const token = readToken();
  if (!token) return path;
  return path + (path.includes("?") ? "&" : "?") + "access_token=" + encodeURIComponent(token);
}

let pollOk = false;
let streamOk = false;
let lastLeaderKey = null;
const rates = [];          // messages/s, newest last
let lastSample = null;     // {leader, end, at}

function text(value) {
  return value === null || value === undefined ? "-" : String(value);
}

function setBadge(el, ok, okText) {
  el.textContent = ok ? okText : "reconnecting…";
  el.className = "badge " + (ok ? "badge-ok" : "badge-wait");
}

function showConnection() {
  setBadge($("conn"), pollOk, "live");
  setBadge($("tail-state"), streamOk, "streaming");
}

function ago(rfc3339) {
  const t = Date.parse(rfc3339);
  if (Number.isNaN(t)) return text(rfc3339);
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  const rel = s < 60 ? s + "s" : s < 3600 ? Math.floor(s / 60) + "m" + (s % 60) + "s" : Math.floor(s / 3600) + "h" + Math.floor((s % 3600) / 60) + "m";
  return new Date(t).toLocaleTimeString() + " (" + rel + " ago)";
}

function cell(row, value, cls) {
  const td = document.createElement("td");
  td.textContent = text(value);
  if (cls) td.className = cls;
  row.appendChild(td);
}

// Milliseconds as people read them: 12ms, 3.2s, 2m5s.
function shortMs(ms) {
  if (ms < 1000) return ms + "ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + "s";
  return Math.floor(ms / 60000) + "m" + Math.floor((ms % 60000) / 1000) + "s";
}

// An election case's name: "normal", or the tag of a case with details, in either JSON spelling
// ({"state_loss_waiting": {...}} or {"case": "state_loss_waiting", ...}).
function caseName(c) {
  if (c === null || c === undefined) return null;
  if (typeof c === "string") return c;
  if (typeof c !== "object") return null;
  for (const k of ["case", "kind", "type"]) if (typeof c[k] === "string") return c[k];
  const keys = Object.keys(c);
  return keys.length === 1 ? keys[0] : null;
}

// The details of a case that has some, in words ("2 reported, missing n2"), else null.
function caseDetail(c) {
  if (c === null || typeof c !== "object") return null;
  const keys = Object.keys(c);
  const details = keys.length === 1 && c[keys[0]] && typeof c[keys[0]] === "object" && !Array.isArray(c[keys[0]]) ? c[keys[0]] : c;
  const rank = (k) => { const i = ["reported", "missing"].indexOf(k); return i < 0 ? 2 : i; };
  const parts = Object.keys(details)
    .filter((k) => !["case", "kind", "type"].includes(k))
    .sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0))
    .map((k) => {
      const v = details[k];
      if (Array.isArray(v)) return k + " " + (v.length ? v.join(",") : "none");
      return typeof v === "number" ? v + " " + k : k + " " + v;
    });
  return parts.length ? parts.join(", ") : null;
}

function caseText(c) {
  const name = caseName(c);
  const detail = caseDetail(c);
  return name === null ? null : detail ? name + " (" + detail + ")" : name;
}

// "5 (12ms)": records behind the leader's log end, and time since it was last caught up.
function lagText(p) {
  if (!p || p.lag_records === null || p.lag_records === undefined) return null;
  return p.caught_up_ms_ago === null || p.caught_up_ms_ago === undefined
    ? String(p.lag_records)
    : p.lag_records + " (" + shortMs(p.caught_up_ms_ago) + ")";
}

// The member whose replication report speaks for the cluster: the lock holder's, else a
// leader's, else the node this page is viewed through, else any that reports one.
function authority(view) {
  const reporting = view.members.filter((m) => m.replication);
  return reporting.find((m) => m.holds_lock)
    || reporting.find((m) => m.role === "leader")
    || reporting.find((m) => m.name === view.observed_by)
    || reporting[0]
    || null;
}

function setText(id, value, cls) {
  const el = $(id);
  el.textContent = text(value);
  el.className = cls || "";
}

function renderReplication(view) {
  const source = authority(view);
  const isr = $("repl-isr");
  const alerts = $("repl-alerts");
  isr.replaceChildren();
  alerts.replaceChildren();
  if (!source) {
    $("repl-source").textContent = "(no node reports replication)";
    for (const id of ["repl-hw", "repl-case", "repl-writes", "repl-replicas", "repl-min-insync", "repl-acks"]) setText(id, null);
    return;
  }
  const r = source.replication;
  $("repl-source").textContent = "(as " + source.name + " reports)";
  setText("repl-hw", r.high_watermark);
  setText("repl-case", caseText(r.case), caseName(r.case) === "normal" ? "ok" : "warn");
  setText("repl-writes", r.writes_refused ? "refused: " + r.writes_refused : "accepted", r.writes_refused ? "bad" : "ok");
  setText("repl-replicas", r.replicas);
  setText("repl-min-insync", r.min_insync);
  setText("repl-acks", r.acks);
  const names = Array.isArray(r.isr) ? r.isr : [];
  const byName = new Map(view.members.map((m) => [m.name, m]));
  const line = (name, inIsr) => {
    const m = byName.get(name);
    const li = document.createElement("li");
    li.dataset.name = name;
    const parts = inIsr ? [] : ["out of the ISR"];
    if (name === r.leader) parts.push("leader");
    else if (m && lagText(m.follower_progress) !== null) parts.push("lag " + lagText(m.follower_progress));
    if (m && !m.reachable) parts.push("unreachable");
    li.textContent = parts.length ? name + " " + parts.join(", ") : name;
    li.className = inIsr ? "ok" : "bad";
    isr.appendChild(li);
  };
  for (const name of names) line(name, true);
  for (const m of view.members) if (!names.includes(m.name)) line(m.name, false);
  for (const m of view.members) {
    const mr = m.replication;
    if (!mr) continue;
    const alert = (words) => {
      const li = document.createElement("li");
      li.dataset.name = m.name;
      li.textContent = m.name + ": " + words;
      alerts.appendChild(li);
    };
    const w = m.writes;
    // The machine-readable reason (consul_unreachable, lease_expired, ...) says exactly why;
    // a follower refusing because it follows is not news.
    if (w && !w.accepting && w.reason !== "not_leader") alert("writes refused (" + w.reason + "): " + w.detail);
    else if (mr.writes_refused) alert("writes refused: " + mr.writes_refused);
    if (mr.follower_error) alert("cannot replicate: " + mr.follower_error);
    const t = mr.truncation_refused;
    if (t) alert("truncation refused: diverged at " + text(t.divergence) + ", below the high watermark " + text(t.high_watermark) + (t.reason ? ": " + t.reason : ""));
    if (caseDetail(mr.case)) alert("election case " + caseText(mr.case));
  }
}

function renderMembers(view) {
  const body = $("members-body");
  body.replaceChildren();
  if (view.members.length === 0) {
    const tr = document.createElement("tr");
    cell(tr, "no instances registered in Consul", "muted");
    tr.firstChild.colSpan = 12;
    body.appendChild(tr);
  }
  for (const m of view.members) {
    const tr = document.createElement("tr");
    tr.dataset.name = m.name;
    const role = m.role || "unreachable";
    cell(tr, m.name);
    cell(tr, role, "role-" + role.split(" ")[0]);
    cell(tr, m.ready, m.ready ? "ok" : "");
    cell(tr, m.term);
    cell(tr, m.log_end_offset);
    cell(tr, m.replication ? m.replication.high_watermark : null);
    cell(tr, lagText(m.follower_progress));
    cell(tr, m.in_isr === null || m.in_isr === undefined ? null : m.in_isr ? "yes" : "no", m.in_isr === false ? "bad" : "");
    const c = m.replication ? caseName(m.replication.case) : null;
    cell(tr, c, c && c !== "normal" ? "warn" : "");
    cell(tr, m.consul_check, "check-" + m.consul_check);
    cell(tr, m.session ? m.session.slice(0, 8) + (m.holds_lock ? " (lock)" : "") : null);
    cell(tr, m.address);
    if (m.error) tr.title = m.error;
    body.appendChild(tr);
  }
}

function renderLeader(view) {
  const l = view.leader;
  $("leader-name").textContent = l ? l.name : "none";
  $("leader-term").textContent = l ? l.term : "-";
  $("leader-since").textContent = l ? ago(l.since) : "-";
  $("leader-address").textContent = l ? l.address : "no node holds the election lock";
  const key = l ? l.name + "/" + l.term : "none";
  if (key !== lastLeaderKey) {
    const li = document.createElement("li");
    li.textContent = new Date().toLocaleTimeString() + "  " + (l ? l.name + " leads (term " + l.term + ")" : "no leader");
    $("timeline").prepend(li);
    lastLeaderKey = key;
  }
}

function sampleRate(view) {
  const l = view.leader;
  const member = l && view.members.find((m) => m.name === l.name);
  if (!member || member.log_end_offset === null || member.log_end_offset === undefined) return;
  const now = view.observed_at_ms;
  // Each node has its own log: a rate only makes sense between two samples of one leader.
  if (lastSample && lastSample.leader === l.name && now > lastSample.at) {
    const rate = Math.max(0, (member.log_end_offset - lastSample.end) * 1000 / (now - lastSample.at));
    rates.push(rate);
    if (rates.length > RATE_POINTS) rates.shift();
    $("rate").textContent = rate.toFixed(1);
  }
  if (!lastSample || lastSample.at !== now) {
    lastSample = { leader: l.name, end: member.log_end_offset, at: now };
  }
  drawChart();
}

function drawChart() {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width;
  const h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(10, ...rates) * 1.15;
  ctx.strokeStyle = "#26303a";
  ctx.fillStyle = "#7d8894";
  ctx.font = "12px sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = h - (h - 10) * i / 4;
    ctx.beginPath();
    ctx.moveTo(40, y);
    ctx.lineTo(w, y);
    ctx.stroke();
    ctx.fillText(Math.round(max * i / 4), 2, Math.max(12, y - 2));
  }
  if (rates.length < 2) return;
  const step = (w - 40) / (RATE_POINTS - 1);
  const x0 = w - step * (rates.length - 1);
  ctx.beginPath();
  rates.forEach((r, i) => {
    const x = x0 + i * step;
    const y = h - (h - 10) * r / max;
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.strokeStyle = "#58a6ff";
  ctx.lineWidth = 2;
  ctx.stroke();
}

async function poll() {
  let delay = POLL_MS;
  for (;;) {
    try {
      const resp = await apiFetch("api/v1/cluster");
      const view = await resp.json();
      if (!resp.ok) throw new Error(view.error || resp.status);
      $("observed-by").textContent = view.observed_by;
      $("service").textContent = "(Consul service " + view.service + ")";
      renderLeader(view);
      renderReplication(view);
      renderMembers(view);
      sampleRate(view);
      pollOk = true;
      delay = POLL_MS;
    } catch (err) {
      pollOk = false;
      delay = Math.min(delay * 2, MAX_BACKOFF_MS);
    }
    showConnection();
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
}

function addTail(entry) {
  const li = document.createElement("li");
  const off = document.createElement("span");
  off.className = "off";
  off.textContent = entry.offset + " t" + entry.term;
  li.appendChild(off);
  li.appendChild(document.createTextNode(entry.message !== undefined ? entry.message : "base64:" + entry.message_base64));
  const list = $("tail");
  list.prepend(li);
  while (list.children.length > TAIL_LINES) list.lastChild.remove();
}

let lastEventId = null;
let streamDelay = 1000;

function openStream(from) {
  const source = new EventSource(withToken(from === null ? "api/v1/log/stream" : "api/v1/log/stream?from=" + from));
  source.onopen = () => { streamOk = true; streamDelay = 1000; showConnection(); };
  source.onerror = () => {
    streamOk = false;
    showConnection();
    // EventSource retries by itself after a dropped connection, but gives up for good after an
    // error answer (e.g. a port-forward whose pod is gone): then reopen it ourselves, with back-off.
    if (source.readyState === EventSource.CLOSED) {
      const resume = lastEventId === null ? from : lastEventId + 1;
      setTimeout(() => openStream(resume), streamDelay);
      streamDelay = Math.min(streamDelay * 2, MAX_BACKOFF_MS);
    }
  };
  source.onmessage = (ev) => {
    streamOk = true;
    try {
      const entry = JSON.parse(ev.data);
      lastEventId = entry.offset;
      addTail(entry);
    } catch (e) { /* not an entry */ }
  };
}

function stream() {
  // Start a few messages back so the tail is not empty on a quiet cluster; on reconnect
  // EventSource resends the last id, which the node honours over `from`.
  apiFetch("api/v1/status")
    .then((r) => r.json())
    .then((s) => {
      $("tail-node").textContent = s.name;
      return Math.max(s.log_start_offset, s.log_end_offset - TAIL_LINES);
    })
    .catch(() => null)
    .then(openStream);
}

drawChart();
poll();
stream();
