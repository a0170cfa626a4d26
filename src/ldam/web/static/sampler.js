// The live sampler page: pick a target, watch the chains, turn the knobs while they run.
"use strict";
// The sliders' ranges, log flags and starting values come from the server (the hello's knobs).
let SLIDERS = {};
const $ = (id) => document.getElementById(id);
// defaultChains: chains per target when the box is empty (the hello's defaults.chains).
const state = { models: [], paused: false, recording: false, frames: 0, last: null, trace: [], started: null, diverged: null,
                defaultChains: undefined };
window.ldam = state;  // for the tests and the curious

function toValue(spec, s) {
  if (spec.zeroAtMin && Number(s) === 0) return 0;
  let v = spec.log ? spec.lo * Math.pow(spec.hi / spec.lo, s / 1000) : spec.lo + (spec.hi - spec.lo) * s / 1000;
  return spec.int ? Math.round(v) : Number(v.toPrecision(3));
}
function toSlider(spec, v) {
  if (spec.zeroAtMin && v === 0) return 0;
  const f = spec.log ? Math.log(v / spec.lo) / Math.log(spec.hi / spec.lo) : (v - spec.lo) / (spec.hi - spec.lo);
  return Math.round(1000 * Math.min(1, Math.max(0, f)));
}
function fmt(v) { return v === 0 ? "0" : (Math.abs(v) >= 0.01 && Math.abs(v) < 1000 ? String(Number(v.toPrecision(3))) : v.toExponential(1)); }

const sock = openSocket(onMessage, (s) => { $("status").textContent = s; });

function currentModel() { return state.models.find((m) => m.name === $("model").value); }
function fillLayers(layer) {
  const m = currentModel();
  fillSelect($("layer"), m.layers.map((l) => [l.name, `${l.name}  [${l.shape.join("×")}]`]), layer || "output");
  fillUnits();
  $("disc_weight").disabled = !m.discriminator;
  $("disc_weight").title = m.discriminator ? "" : "no real images for this model on the server";
  showDataNote($("data-note"), m);
}
// Class names label the units of the output layer and of the layer that computes it.
function unitNames(m, l) { return m.classes && m.classes.length === l.units && (l.name === "output" || l.copies === "output") ? m.classes : null; }
function fillUnits(unit) {
  const m = currentModel();
  const l = m.layers.find((x) => x.name === $("layer").value);
  const search = $("unit-search"), names = unitNames(m, l);
  search.hidden = l.units <= 20;
  if (search.hidden) search.value = "";
  const q = search.value.trim().toLowerCase();
  const items = [];
  if (l.units <= 20) items.push(["all", `all ${l.units} units (one group each)`]);
  for (let i = 0; i < Math.min(l.units, 2048); i++) {
    const label = names ? `${i}: ${names[i]}` : String(i);
    if (!q || label.toLowerCase().includes(q)) items.push([String(i), label]);
  }
  const keep = unit !== undefined ? unit : (state.started && state.started.layer === l.name ? String(state.started.unit) : (l.units <= 20 ? "all" : "0"));
  fillSelect($("unit"), items, keep);
  $("unit").size = q ? Math.min(8, Math.max(2, items.length)) : 0;  // while filtering, a list to click in
  $("unit").disabled = items.length === 0;
  $("unit-search").title = q ? `${items.length} of ${l.units} units match` : "";
}
function start() {
  const unit = $("unit").value === "all" ? "all" : Number($("unit").value);
  state.trace = [];
  sock.send({ type: "start", model: $("model").value, layer: $("layer").value, unit, chains: Number($("chains").value) || state.defaultChains,
              parameterization: $("parameterization").value, transforms: $("transforms").checked, ack: true });
}
function sendSet(key, value) { sock.send({ type: "set", [key]: value }); }
function applyDefaults() {
  const d = currentModel().defaults || {};
  const changes = {};
  for (const [k, spec] of Object.entries(SLIDERS)) {
    const v = d[k] !== undefined ? d[k] : spec.init;
    $(k).value = toSlider(spec, v); $(`${k}-value`).textContent = fmt(v);
    if (k !== "steps_per_frame" && k !== "disc_weight") changes[k] = v;
  }
  if (d.chains) $("chains").value = d.chains;
  sock.send({ type: "set", ...changes });
}

function onMessage(msg) {
  if (msg.type === "hello") {
    state.models = msg.models;
    state.defaultChains = msg.defaults.chains;
    setupSliders(msg.knobs);
    for (const m of msg.methods) { METHOD_NAMES[m.value] = m.name; if (m.bound) BOUNDS[m.value] = m.bound; }
    fillSelect($("method"), msg.methods.map((m) => [m.value, m.label]), $("method").value || "sgld");
    $("chains").max = msg.limits.chains;
    fillSelect($("model"), msg.models.map((m) => [m.name, m.name]), params.get("model"));
    fillLayers(params.get("layer"));
    if (params.get("unit") !== null) fillUnits(params.get("unit"));
    applyDefaults();
    start();
  } else if (msg.type === "started") {
    state.started = msg; state.diverged = null; showError("");
    for (const id of ["pause", "reset", "snapshot", "record"]) $(id).disabled = false;
    const m = currentModel();
    $("top9-box").hidden = true;
    if (msg.unit !== "all" && m && m.dataset_examples) sock.send({ type: "top9", model: msg.model, layer: msg.layer, unit: Number(msg.unit) });
  } else if (msg.type === "top9") {
    $("top9").src = "data:image/png;base64," + msg.png; $("top9-box").hidden = false;
    $("top9-caption").textContent = `Top-9 test images of ${msg.layer}:${msg.unit}, beside its samples`;
  } else if (msg.type === "frame") {
    state.frames += 1; state.last = msg;
    $("grid").src = "data:image/png;base64," + msg.grid;
    $("means").src = "data:image/png;base64," + msg.means;
    state.trace.push(msg.stats.activation); if (state.trace.length > 600) state.trace.shift();
    drawTrace(); showNumbers(msg); showStability();
    sock.send({ type: "ack", seq: msg.seq });  // ready for the next (newest) frame
  } else if (msg.type === "paused") {
    state.paused = msg.paused; $("pause").textContent = msg.paused ? "Resume" : "Pause";
  } else if (msg.type === "snapshot") {
    download(`ldam-${state.started ? state.started.targets.replace(/[^\w.-]+/g, "_") : "snapshot"}.png`, "data:image/png;base64," + msg.png);
    const blob = new Blob([JSON.stringify(msg.config, null, 2)], { type: "application/json" });
    download("ldam-config.json", URL.createObjectURL(blob));
  } else if (msg.type === "recording") {
    state.recording = msg.on; $("record").textContent = msg.on ? "Stop recording" : "Record GIF";
    if (msg.capped) showError(msg.message);  // the recording is full: say so where people look
  } else if (msg.type === "gif") {
    state.recording = false; $("record").textContent = "Record GIF";
    download("ldam-chains.gif", "data:image/gif;base64," + msg.data);
  } else if (msg.type === "error") {
    showError(msg.message);
    if (/diverged|NaN or Inf/.test(msg.message)) { state.diverged = msg.message; showStability(); }
  }
}
function showNumbers(f) {
  const s = f.stats, p = f.params;
  const parts = [`step <b>${f.t}</b>`, `mean activation <b>${s.activation.toFixed(3)}</b>`, `jitter <b>${s.jitter.toFixed(3)}</b>`,
    `T <b>${fmt(p.temperature)}</b>`, `ε <b>${fmt(p.step_size)}</b>`];
  if (s.acceptance !== undefined && s.acceptance !== null) parts.push(`acceptance <b id="acceptance">${s.acceptance.toFixed(3)}</b>`);
  if (s.adapted_step) parts.push(`${s.adapting ? '<span class="badge" id="adapting">adapting ε</span>' : "adapted"} ε <b id="adapted-step">${fmt(s.adapted_step[0])}</b>`);
  if (s.d_real !== undefined) parts.push(`D(real) <b>${s.d_real.toFixed(2)}</b> D(fake) <b>${s.d_fake.toFixed(2)}</b>`);
  $("numbers").innerHTML = parts.join(" · ");
}
// Where each method's bound comes from (ldam.samplers: stable_step), for the note under the step slider.
const BOUNDS = {}, METHOD_NAMES = {};  // filled from the hello message (the server's one list)
function showStability() {
  const el = $("stability"), f = state.last;
  el.className = "note";
  if (state.diverged) {
    el.className = "note bad";
    el.textContent = `Diverged, so the chains are paused: ${state.diverged.replace(/ \(paused:.*$/, "")}. Lower the step size, then Reset chains.`;
    return;
  }
  if (!f) { el.textContent = ""; return; }
  const s = f.stats, p = f.params, name = METHOD_NAMES[p.method] || p.method;
  const eps = toValue(SLIDERS.step_size, Number($("step_size").value));
  if (s.adapted_step) {
    el.textContent = s.adapting
      ? `${name} is adapting its step towards ${s.target_accept ?? 0.574} acceptance (now ε·scale ≈ ${fmt(s.adapted_step[0])}); it adapts again after a knob changes.`
      : `${name} adapted its step: ε·scale ≈ ${fmt(s.adapted_step[0])} (chains ${fmt(s.adapted_step[1])} … ${fmt(s.adapted_step[2])}).`;
    return;
  }
  if (s.stable_step === null || s.stable_step === undefined) {
    el.textContent = p.method === "ascent" ? "" : `${name}: no stability bound at L2 weight 0.`;
    return;
  }
  const b = s.stable_step, why = `${BOUNDS[p.method] || "its bound"} = ${fmt(b)} at T ${fmt(p.temperature)}, λ ${fmt(p.l2)}`;
  if (eps >= b) {
    el.className = "note bad";
    el.innerHTML = "";
    const strong = document.createElement("b"); strong.id = "unstable"; strong.textContent = "Unstable: ";
    el.append(strong, `step ${fmt(eps)} ≥ ${name}'s bound ${why}. The chains overshoot and fill the pixel range. ` +
      `Lower the step below ${fmt(b)}, raise the temperature, lower the L2 weight, or use MALA.`);
  } else {
    el.className = eps > 0.5 * b ? "note warn" : "note";
    el.textContent = `${name} is stable for step < ${why}.`;
  }
}
function drawTrace() {
  const c = $("trace"), g = c.getContext("2d"), d = state.trace;
  g.clearRect(0, 0, c.width, c.height);
  if (d.length < 2) return;
  let lo = Math.min(...d), hi = Math.max(...d); if (hi - lo < 1e-9) { hi += 1; lo -= 1; }
  g.strokeStyle = "#6cb6ff"; g.lineWidth = 1.5; g.beginPath();
  d.forEach((v, i) => { const x = (i / (d.length - 1)) * (c.width - 10) + 5, y = c.height - 5 - ((v - lo) / (hi - lo)) * (c.height - 20);
    i ? g.lineTo(x, y) : g.moveTo(x, y); });
  g.stroke(); g.fillStyle = "#9aa0aa"; g.fillText(`mean activation  ${fmt(hi)} … ${fmt(lo)}`, 8, 12);
}

$("model").onchange = () => { fillLayers(); applyDefaults(); start(); };
$("layer").onchange = () => { $("unit-search").value = ""; fillUnits(); start(); };
$("unit").onchange = start;
$("unit-search").addEventListener("input", () => fillUnits());
$("unit-search").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !$("unit").disabled) { ev.preventDefault(); start(); }
});
$("start").onclick = start;
$("method").onchange = () => sendSet("method", $("method").value);
$("display").onchange = () => sendSet("display", $("display").value);
function setupSliders(knobs) {
  const fresh = Object.keys(knobs).filter((k) => !(k in SLIDERS));
  SLIDERS = knobs;
  for (const k of fresh) {
    $(k).addEventListener("input", () => { const v = toValue(SLIDERS[k], Number($(k).value)); $(`${k}-value`).textContent = fmt(v); sendSet(k, v); showStability(); });
  }
}
$("pause").onclick = () => { state.diverged = null; sock.send({ type: state.paused ? "resume" : "pause" }); };
$("reset").onclick = () => { state.trace = []; state.diverged = null; sock.send({ type: "reset" }); };
$("snapshot").onclick = () => sock.send({ type: "snapshot" });
$("record").onclick = () => sock.send({ type: "record", on: !state.recording });
$("to-activations").href = withToken("activations");
// Frames come at 1 pixel per input pixel; show them enlarged, without smoothing, within their room.
enlarge($("grid"), 600, 600); enlarge($("means"), 600, 300); enlarge($("top9"), 300, 300);
