// Shared by both pages: the token, the socket, and small helpers.
"use strict";
const params = new URLSearchParams(location.search);
const TOKEN = params.get("token");
function withToken(path) { return TOKEN ? `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(TOKEN)}` : path; }
function openSocket(onMessage, onState) {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}${withToken("/ws")}`);
  ws.onmessage = (ev) => onMessage(JSON.parse(ev.data));
  ws.onopen = () => onState && onState("connected");
  ws.onclose = (ev) => onState && onState(`disconnected (${ev.code}${ev.reason ? ": " + ev.reason : ""})`);
  return { send: (msg) => ws.readyState === 1 && ws.send(JSON.stringify(msg)), raw: ws };
}
function showError(text) { document.getElementById("error").textContent = text || ""; }
function fillSelect(sel, items, value) {
  sel.innerHTML = "";
  for (const [v, label] of items) { const o = document.createElement("option"); o.value = v; o.textContent = label; sel.appendChild(o); }
  if (value !== undefined && items.some(([v]) => String(v) === String(value))) sel.value = String(value);
}
function download(name, href) { const a = document.createElement("a"); a.href = href; a.download = name; document.body.appendChild(a); a.click(); a.remove(); }
