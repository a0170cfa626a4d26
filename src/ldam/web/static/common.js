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
// Pictures stay hidden until one has loaded (never a broken-image icon), and are enlarged by a
// whole factor that fits in roomW x roomH pixels, without smoothing.
function enlarge(img, roomW, roomH) {
  img.onload = () => {
    const k = Math.max(1, Math.floor(Math.min(roomW / img.naturalWidth, roomH / img.naturalHeight)));
    img.style.width = `${img.naturalWidth * k}px`; img.hidden = false;
  };
  img.onerror = () => { img.hidden = true; };
}
// What a model lacks of its dataset, and the command that brings it, said on the page.
function showDataNote(el, m) {
  const d = m.data || {};
  el.hidden = !d.note; el.textContent = "";
  if (!d.note) return;
  const at = d.command ? d.note.indexOf(d.command) : -1;
  if (at < 0) { el.textContent = d.note; return; }
  const code = document.createElement("code"); code.textContent = d.command;
  el.append(d.note.slice(0, at), code, d.note.slice(at + d.command.length));
}
