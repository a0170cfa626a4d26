// The activations page (Deep Visualization Toolbox style): every unit's map for one input.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { models: [], maps: null, upload: null, selected: null, received: 0 };
window.ldam = state;
const sock = openSocket(onMessage, (s) => { $("status").textContent = s; });
function currentModel() { return state.models.find((m) => m.name === $("model").value); }

// A new model starts on its first feature layer (not a padding or identity copy of the input) and
// on an input it has: a dataset example, else a sample photo, else an upload.
function fillLayers(first) {
  const m = currentModel();
  const layer = first && params.get("layer") ? params.get("layer") : (m.maps_layer || m.layers[0].name);
  fillSelect($("layer"), m.layers.map((l) => [l.name, `${l.name}  [${l.shape.join("×")}]`]), layer);
  $("source").querySelector("option[value=dataset]").disabled = !m.dataset_examples;
  $("source").querySelector("option[value=photo]").disabled = !m.photos;
  $("source").value = m.dataset_examples ? "dataset" : (m.photos ? "photo" : "upload");
  $("index").max = Math.max(0, m.dataset_examples - 1);
  if (Number($("index").value) > m.dataset_examples - 1) $("index").value = 0;
  state.upload = null; $("file").value = "";
  for (const id of ["maps", "top9"]) $(id).hidden = true;
  $("top9-box").hidden = true; $("open-unit").hidden = true; $("unit-info").textContent = "";
  $("preds").textContent = ""; state.maps = null;
  showDataNote($("data-note"), m);
  showSource();
}
function showSource() {
  for (const k of ["dataset", "photo", "upload"]) $(`src-${k}`).hidden = $("source").value !== k;
}
function request() {
  const src = $("source").value;
  let input;
  if (src === "dataset") input = { kind: "dataset", index: Number($("index").value) || 0 };
  else if (src === "photo") input = { kind: "photo", name: $("photo").value };
  else { if (!state.upload) return; input = { kind: "upload", data: state.upload }; }
  sock.send({ type: "activations", model: $("model").value, layer: $("layer").value, input });
}
function onMessage(msg) {
  if (msg.type === "hello") {
    state.models = msg.models;
    fillSelect($("model"), msg.models.map((m) => [m.name, m.name]), params.get("model"));
    fillLayers(true); request();
  } else if (msg.type === "activations") {
    state.maps = msg; state.received += 1; showError("");
    $("maps").src = "data:image/png;base64," + msg.png;
    const top9 = currentModel().dataset_examples ? "see its top-9 dataset images and " : "";
    $("maps-caption").textContent = `${msg.layer}: ${msg.units} of ${msg.total_units} units. Click a unit to ${top9}open it in the sampler.`;
    $("preds").innerHTML = "model's top-5: " + msg.predictions.map((p) => `<b>${p.name}</b> ${p.logit.toFixed(2)}`).join(", ");
  } else if (msg.type === "top9") {
    $("top9").src = "data:image/png;base64," + msg.png; $("top9-box").hidden = false;
    $("top9-caption").textContent = `Top-9 test images of ${msg.layer}:${msg.unit}`;
  } else if (msg.type === "error") {
    showError(msg.message);
  }
}
function selectUnit(unit) {
  const m = state.maps; if (!m || unit < 0 || unit >= m.units) return;
  state.selected = unit;
  const model = currentModel(), layer = model.layers.find((l) => l.name === m.layer);
  const named = model.classes && layer && model.classes.length === layer.units && (layer.name === "output" || layer.copies === "output");
  $("unit-info").innerHTML = "";
  const b = (t) => { const e = document.createElement("b"); e.textContent = t; return e; };
  $("unit-info").append("unit ", b(named ? `${unit}: ${model.classes[unit]}` : String(unit)), ", mean activation ", b(m.means[unit].toFixed(3)));
  const link = $("open-unit");
  link.href = withToken(`./?model=${encodeURIComponent($("model").value)}&layer=${encodeURIComponent(m.layer)}&unit=${unit}`);
  link.hidden = false;
  if (currentModel().dataset_examples) sock.send({ type: "top9", model: $("model").value, layer: m.layer, unit });
}
$("maps").addEventListener("click", (ev) => {
  const m = state.maps; if (!m) return;
  const img = $("maps"), sx = img.naturalWidth / img.clientWidth, sy = img.naturalHeight / img.clientHeight;
  const x = ev.offsetX * sx - m.pad, y = ev.offsetY * sy - m.pad;
  const col = Math.floor(x / (m.tile[0] + m.pad)), row = Math.floor(y / (m.tile[1] + m.pad));
  if (col >= 0 && col < m.cols && row >= 0) selectUnit(row * m.cols + col);
});
$("model").onchange = () => { fillLayers(false); request(); };
$("layer").onchange = request;
$("source").onchange = () => { showSource(); request(); };
$("index").onchange = request;
$("photo").onchange = request;
$("file").onchange = () => {
  const f = $("file").files[0]; if (!f) return;
  if (f.size > 2 * 1024 * 1024) { showError(`${f.name} is ${f.size} bytes; the limit is 2 MB`); return; }
  const reader = new FileReader();
  reader.onload = () => { state.upload = String(reader.result).split(",", 2)[1]; request(); };
  reader.readAsDataURL(f);
};
$("to-sampler").href = withToken("./");
// Maps and images come at 1:1; show them enlarged, without smoothing.
enlarge($("maps"), 640, 640); enlarge($("top9"), 260, 260);
