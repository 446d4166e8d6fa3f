// The avatar studio page: pickers built from /api/attributes, pictures from the /api/*.png
// endpoints (plain <img> GETs), and /api/model polled so the page always names the version that
// draws. No framework and no build step; the state lives in the URL hash, so a link keeps a look.
"use strict";

const MODEL_POLL_MS = 5000;
const GRID_SEEDS = 8;
const COMPARE_SEEDS = 4;
const GAP = 2; // px between tiles of the server's grids (moepipe.studio.drawing.GAP)

const state = {
  seed: 0, truncation: 1, single: {}, multi: {}, varyGroup: null, seedB: 1, steps: 8,
  meta: null, model: null, version: null,
};
const $ = (id) => document.getElementById(id);

function randomSeed() {
  return Math.floor(Math.random() * 2 ** 31);
}

async function getJSON(path) {
  const reply = await fetch(path, { cache: "no-store" });
  const body = await reply.json();
  if (!reply.ok) throw new Error(body.detail || `${path}: HTTP ${reply.status}`);
  return body;
}

// -- the request ----------------------------------------------------------------------------
function tags() {
  const chosen = [];
  for (const group of state.meta.groups) {
    if (group.multi) chosen.push(...group.tags.filter((t) => state.multi[group.name].has(t)));
    else if (state.single[group.name]) chosen.push(state.single[group.name]);
  }
  return chosen;
}

function apiURL(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") query.set(key, String(value));
  }
  query.set("v", state.version === null ? "file" : String(state.version)); // a new version, new pictures
  return `${path}?${query}`;
}

function common(extra = {}) {
  return { seed: state.seed, attributes: tags().join(","), truncation: state.truncation, ...extra };
}

// -- pictures -------------------------------------------------------------------------------
function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

function setImage(img, src) {
  if (img.getAttribute("src") === src) return;
  img.classList.add("loading");
  img.setAttribute("src", src);
}

function watchImage(img) {
  img.addEventListener("load", () => img.classList.remove("loading"));
  img.addEventListener("error", async () => {
    img.classList.remove("loading");
    try {
      const reply = await fetch(img.getAttribute("src"), { cache: "no-store" });
      const body = await reply.json();
      showError(body.detail || `HTTP ${reply.status}`);
    } catch (error) {
      showError(`the studio did not answer (${error.message})`);
    }
  });
}

async function drawHero() {
  const src = apiURL("/api/avatar.png", common());
  setImage($("avatar"), src);
  $("download-png").href = apiURL("/api/avatar.png", common({ download: 1 }));
  $("download-png").download = `avatar-${state.version === null ? "" : `v${state.version}-`}seed${state.seed}.png`;
  try { // what the groups left at "any" were drawn as (the same request; the server keeps the row)
    const reply = await fetch(src, { method: "GET", cache: "no-store" });
    if (reply.ok && $("avatar").getAttribute("src") === src) { // not overtaken by a newer request
      const drawn = decodeURIComponent(reply.headers.get("X-Moepipe-Drawn-Attributes") || "");
      $("drawn").textContent = drawn ? `drawn: ${drawn.split(",").join(", ")}` : "drawn: no attributes";
    }
  } catch (error) {
    $("drawn").textContent = "";
  }
}

function drawAll() {
  showError("");
  writeHash();
  $("seed").value = state.seed;
  $("seed-b").value = state.seedB;
  $("steps").value = state.steps;
  $("truncation").value = state.truncation;
  $("truncation-value").textContent = Number(state.truncation).toFixed(2);
  drawHero();
  setImage($("grid"), apiURL("/api/grid.png", common({ n: GRID_SEEDS, columns: GRID_SEEDS })));
  drawVary();
  const path = common({ seed_b: state.seedB, steps: state.steps });
  setImage($("interpolation"), apiURL("/api/interpolate.png", path));
  setImage($("interpolation-gif"), apiURL("/api/interpolate.gif", path));
  $("download-gif").href = apiURL("/api/interpolate.gif", { ...path, download: 1 });
  $("download-gif").download = `avatar-${state.seed}-to-${state.seedB}.gif`;
  drawCompare();
}

function drawVary() {
  const group = state.meta.groups.find((g) => g.name === state.varyGroup);
  $("vary-panel").hidden = !group;
  if (!group) return;
  // The strip sweeps the group itself: what is picked for it is left out of this request.
  const others = tags().filter((t) => !group.tags.includes(t));
  setImage($("vary"), apiURL("/api/vary.png", common({ group: group.name, attributes: others.join(",") })));
  const labels = $("vary-labels");
  labels.replaceChildren(...group.values.map((value) => {
    const label = document.createElement("span");
    label.textContent = value.replaceAll("_", " ");
    return label;
  }));
  labels.style.gridTemplateColumns = `repeat(${group.values.length}, 1fr)`;
}

function drawCompare() {
  const compare = state.model && state.model.compare;
  $("compare-panel").hidden = !compare;
  if (!compare) return;
  for (const alias of ["champion", "challenger"]) {
    setImage($(`compare-${alias}`), apiURL("/api/grid.png", common({ n: COMPARE_SEEDS, columns: COMPARE_SEEDS, alias })));
    const metrics = compare[alias].metrics || {};
    const fd = metrics.fd === undefined ? "" : ` · fd ${Number(metrics.fd).toPrecision(3)}`;
    $(`compare-${alias}-label`).textContent = `${alias} v${compare[alias].version}${fd}`;
  }
}

// -- pickers --------------------------------------------------------------------------------
function chip(text, pressed, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "chip";
  button.textContent = text;
  button.setAttribute("aria-pressed", String(pressed));
  button.addEventListener("click", onClick);
  return button;
}

function buildPickers() {
  const box = $("pickers");
  box.replaceChildren();
  for (const group of state.meta.groups) {
    if (group.multi) state.multi[group.name] = state.multi[group.name] || new Set();
    else if (!(group.name in state.single)) state.single[group.name] = null;
    const fieldset = document.createElement("fieldset");
    fieldset.className = "group";
    fieldset.dataset.group = group.name;
    const legend = document.createElement("legend");
    legend.textContent = group.name.replaceAll("_", " ") + (group.multi ? " (toggles)" : "");
    fieldset.append(legend);
    if (group.multi) {
      const any = chip("any", state.multi[group.name].size === 0, () => {
        state.multi[group.name].clear();
        buildPickers();
        drawAll();
      });
      any.dataset.tag = "";
      fieldset.append(any);
      for (const tag of group.tags) {
        const button = chip(tag.replaceAll("_", " "), state.multi[group.name].has(tag), () => {
          const set = state.multi[group.name];
          if (set.has(tag)) set.delete(tag); else set.add(tag);
          buildPickers();
          drawAll();
        });
        button.dataset.tag = tag;
        fieldset.append(button);
      }
    } else {
      for (const tag of [null, ...group.tags]) {
        const button = chip(tag === null ? "any" : tag.replaceAll("_", " "), state.single[group.name] === tag, () => {
          state.single[group.name] = tag;
          buildPickers();
          drawAll();
        });
        button.dataset.tag = tag || "";
        fieldset.append(button);
      }
    }
    box.append(fieldset);
  }
  $("pickers-hint").hidden = state.meta.groups.length === 0;
  if (state.meta.groups.length === 0) box.textContent = "This model takes no attributes.";

  const select = $("vary-group");
  const sweepable = state.meta.groups.filter((g) => g.values.length > 0);
  select.replaceChildren(...sweepable.map((g) => new Option(g.name.replaceAll("_", " "), g.name)));
  if (!sweepable.some((g) => g.name === state.varyGroup)) {
    state.varyGroup = (sweepable.find((g) => g.name === "hairstyle") || sweepable[0] || {}).name || null;
  }
  select.value = state.varyGroup || "";
}

// -- the model and its lineage --------------------------------------------------------------
function text(tag, content, attributes = {}) {
  const element = document.createElement(tag);
  if (content !== undefined && content !== null) element.textContent = content;
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

function row(list, term, value) {
  if (value === undefined || value === null || value === "") return;
  list.append(text("dt", term));
  const dd = text("dd");
  if (value instanceof Node) dd.append(value); else dd.textContent = String(value);
  list.append(dd);
}

function short(hash, length = 12) {
  const code = text("code", String(hash).slice(0, length), { title: String(hash) });
  return code;
}

function formatMetric(value) {
  return Math.abs(value) >= 100 || Number.isInteger(value) ? String(value) : Number(value).toPrecision(3);
}

function renderLineage(model) {
  const answering = model.answering || {};
  const body = $("lineage-body");
  body.replaceChildren();
  if (!answering.registered) {
    const note = text("p", "Not a registered model: drawn from ", { class: "note", id: "lineage-source" });
    note.append(text("code", answering.model), document.createTextNode(". " + (answering.note || "")));
    note.dataset.source = answering.source;
    body.append(note);
    const list = text("dl");
    row(list, "generator sha256", answering.generator_sha256 ? short(answering.generator_sha256) : "");
    row(list, "architecture", `${answering.arch}, ${answering.resolution} px, step ${answering.step}`);
    body.append(list);
    return;
  }
  const title = text("p", "", { class: "version", id: "lineage-version" });
  title.append(text("strong", `${answering.name} v${answering.version}`));
  for (const alias of answering.aliases || []) title.append(text("span", alias, { class: `alias ${alias}` }));
  body.append(title);
  if (answering.reasons) body.append(text("p", `${answering.decision}: ${answering.reasons}`, { class: "note" }));
  const list = text("dl");
  row(list, "run", answering.run_id ? short(answering.run_id, 16) : "");
  if (answering.git_commit) {
    const commit = text("span");
    commit.append(short(answering.git_commit));
    if (answering.git_dirty === "true") commit.append(" (uncommitted changes)");
    row(list, "code (git)", commit);
  }
  row(list, "generator", `${answering.arch}, ${answering.resolution} px, step ${answering.step}`);
  row(list, "generator sha256", answering.generator_sha256 ? short(answering.generator_sha256) : "");
  body.append(list);

  // The data version: the DVC md5 of each data and model path in the dvc.lock it was trained from.
  const data = Object.entries(answering.data_version || {});
  body.append(text("h3", "training data (DVC md5)"));
  if (data.length) {
    const table = text("table", null, { class: "metrics", id: "lineage-data" });
    for (const [path, md5] of data) {
      const tr = text("tr");
      const cell = text("td");
      cell.append(short(md5));
      tr.append(text("th", path), cell);
      table.append(tr);
    }
    body.append(table);
  } else {
    body.append(text("p", "no DVC hashes recorded with this run", { class: "note" }));
  }

  const metrics = Object.entries(answering.metrics || {});
  if (metrics.length) {
    const main = metrics.filter(([name]) => !name.includes("."));
    const detail = metrics.filter(([name]) => name.includes("."));
    const table = text("table", null, { class: "metrics" });
    for (const [name, value] of main) {
      const tr = text("tr");
      tr.append(text("th", name), text("td", formatMetric(value)));
      table.append(tr);
    }
    body.append(text("h3", "metrics"), table);
    if (detail.length) {
      const more = text("details");
      more.append(text("summary", `${detail.length} more (per group)`));
      const extra = text("table", null, { class: "metrics" });
      for (const [name, value] of detail) {
        const tr = text("tr");
        tr.append(text("th", name), text("td", formatMetric(value)));
        extra.append(tr);
      }
      more.append(extra);
      body.append(more);
    }
  }
  const links = answering.links || {};
  if (Object.keys(links).length) {
    const nav = text("p", null, { class: "links" });
    const names = { run: "MLflow run", model_version: "model version", model_card: "model card" };
    for (const [key, href] of Object.entries(links)) {
      nav.append(text("a", names[key] || key, { href, target: "_blank", rel: "noopener" }), " ");
    }
    body.append(nav);
  }
  const polling = model.polling || {};
  const when = polling.last ? new Date(polling.last * 1000).toLocaleTimeString() : "not yet";
  body.append(text("p", `follows ${model.model} every ${polling.seconds} s; last checked ${when}`, { class: "hint" }));
  if (polling.error) body.append(text("p", polling.error, { class: "note warn" }));
}

function renderModel(model) {
  state.model = model;
  const answering = model.answering || {};
  const badge = $("model-badge");
  badge.textContent = model.version === null
    ? `file: ${answering.model}`
    : `${model.name} v${model.version}${(answering.aliases || []).length ? " · " + answering.aliases.join(", ") : ""}`;
  renderLineage(model);
}

async function pollModel() {
  let model;
  try {
    model = await getJSON("/api/model");
  } catch (error) {
    showError(`the studio did not answer: ${error.message}`);
    return;
  }
  const before = state.version;
  if (model.version !== before) {
    state.version = model.version;
    state.meta = await getJSON("/api/attributes");
    const banner = $("model-change");
    banner.textContent = `Now answering: ${model.name} v${model.version} (was v${before}).`;
    banner.hidden = false;
    renderModel(model);
    buildPickers();
    drawAll();
    return;
  }
  const comparing = JSON.stringify(model.compare);
  const changed = comparing !== JSON.stringify(state.model && state.model.compare);
  renderModel(model);
  if (changed) drawCompare();
}

// -- the URL hash -----------------------------------------------------------------------------
function writeHash() {
  const query = new URLSearchParams({ seed: state.seed, t: state.truncation, a: tags().join(","),
    vary: state.varyGroup || "", b: state.seedB, steps: state.steps });
  history.replaceState(null, "", `#${query}`);
}

function readHash() {
  const query = new URLSearchParams(location.hash.slice(1));
  const number = (key, fallback) => {
    const value = Number(query.get(key));
    return query.has(key) && Number.isFinite(value) ? value : fallback;
  };
  state.seed = Math.max(0, Math.floor(number("seed", randomSeed())));
  state.truncation = number("t", state.meta.truncation.default);
  state.seedB = Math.max(0, Math.floor(number("b", state.seed + 1)));
  state.steps = Math.min(state.meta.limits.steps, Math.max(2, Math.floor(number("steps", 8))));
  if (query.get("vary")) state.varyGroup = query.get("vary");
  const asked = new Set((query.get("a") || "").split(",").filter(Boolean));
  for (const group of state.meta.groups) {
    if (group.multi) state.multi[group.name] = new Set(group.tags.filter((t) => asked.has(t)));
    else state.single[group.name] = group.tags.find((t) => asked.has(t)) || null;
  }
}

// -- wiring ---------------------------------------------------------------------------------
function debounce(action, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => action(...args), ms);
  };
}

function seedFrom(input, fallback) {
  const value = Number(input.value);
  return Number.isInteger(value) && value >= 0 && value <= state.meta.limits.seed ? value : fallback;
}

function wire() {
  for (const id of ["avatar", "grid", "vary", "interpolation", "interpolation-gif", "compare-champion",
    "compare-challenger"]) watchImage($(id));
  $("reroll").addEventListener("click", () => { state.seed = randomSeed(); drawAll(); });
  $("reroll-b").addEventListener("click", () => { state.seedB = randomSeed(); drawAll(); });
  $("seed").addEventListener("change", () => { state.seed = seedFrom($("seed"), state.seed); drawAll(); });
  $("seed-b").addEventListener("change", () => { state.seedB = seedFrom($("seed-b"), state.seedB); drawAll(); });
  $("steps").addEventListener("change", () => {
    const steps = Math.floor(Number($("steps").value));
    if (steps >= 2 && steps <= state.meta.limits.steps) state.steps = steps;
    drawAll();
  });
  const redraw = debounce(drawAll, 120);
  $("truncation").addEventListener("input", () => {
    state.truncation = Number($("truncation").value);
    $("truncation-value").textContent = state.truncation.toFixed(2);
    redraw();
  });
  $("vary-group").addEventListener("change", () => { state.varyGroup = $("vary-group").value; drawAll(); });
  $("grid").addEventListener("click", (event) => {
    const img = $("grid");
    const scale = img.clientWidth / img.naturalWidth;
    const tile = Math.floor(event.offsetX / scale / (state.meta.resolution + GAP));
    if (tile >= 0 && tile < GRID_SEEDS) { state.seed += tile; drawAll(); }
  });
}

async function start() {
  try {
    const model = await getJSON("/api/model");
    state.version = model.version;
    state.meta = await getJSON("/api/attributes");
    const slider = $("truncation");
    slider.min = state.meta.truncation.min;
    slider.max = state.meta.truncation.max;
    readHash();
    renderModel(model);
    buildPickers();
    wire();
    drawAll();
    setInterval(pollModel, MODEL_POLL_MS);
    document.body.dataset.ready = "true";
  } catch (error) {
    showError(`cannot start: ${error.message}`);
  }
}

start();
