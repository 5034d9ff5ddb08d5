// simpleloggers dashboard: polls api/v1/cluster every second (with back-off while the node is
// unreachable, e.g. a restarted port-forward) and follows this node's log through EventSource
// on api/v1/log/stream, which reconnects by itself and resumes with Last-Event-ID.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;
const MAX_BACKOFF_MS = 5000;
const RATE_POINTS = 120;
const TAIL_LINES = 50;

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

function renderMembers(view) {
  const body = $("members-body");
  body.replaceChildren();
  if (view.members.length === 0) {
    const tr = document.createElement("tr");
    cell(tr, "no instances registered in Consul", "muted");
    tr.firstChild.colSpan = 8;
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
      const resp = await fetch("api/v1/cluster", { cache: "no-store" });
      const view = await resp.json();
      if (!resp.ok) throw new Error(view.error || resp.status);
      $("observed-by").textContent = view.observed_by;
      $("service").textContent = "(Consul service " + view.service + ")";
      renderLeader(view);
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
  const source = new EventSource(from === null ? "api/v1/log/stream" : "api/v1/log/stream?from=" + from);
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
  fetch("api/v1/status", { cache: "no-store" })
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
