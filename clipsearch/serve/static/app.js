// clipsearch gallery: plain JavaScript, no build step, no third-party code.
// Everything from the server is put into the page as text (textContent), never as HTML.
"use strict";

const CSRF = document.querySelector('meta[name="csrf"]').content;
const PAGE = 60;
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) node.append(c);
  return node;
}

async function api(url, options = {}) {
  const opts = { credentials: "same-origin", ...options };
  if (opts.method && opts.method !== "GET") opts.headers = { "X-CSRF-Token": CSRF, ...(opts.headers || {}) };
  const res = await fetch(url, opts);
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) throw new Error((body && body.error) || `${res.status} ${res.statusText}`);
  return body;
}

function toast(text) {
  const t = $("toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 3500);
}

function humanBytes(n) {
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function shortDate(iso) { return iso ? iso.slice(0, 16).replace("T", " ") : ""; }

function tile(r) {
  return el("a", { class: "tile", href: `#/photo/${r.id}`, "data-id": r.id, title: r.path },
    el("div", { class: "thumb" }, el("img", { src: `/api/photo/${r.id}/thumb`, alt: r.name, loading: "lazy" })),
    el("div", { class: "cap" }, el("span", { class: "name", text: r.name }),
      el("span", { class: "score", text: r.score === null ? shortDate(r.date).slice(0, 10) : r.score.toFixed(3) })));
}

// --- routing -------------------------------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, qs] = hash.split("?");
  const params = new URLSearchParams(qs || "");
  const parts = path.split("/").filter(Boolean);
  const view = parts[0] || "search";
  for (const s of document.querySelectorAll(".view")) s.hidden = true;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === view);
  if (view === "photo") { $("view-photo").hidden = false; showPhoto(parts[1]); }
  else if (view === "tags") { $("view-tags").hidden = false; showTags(); }
  else if (view === "duplicates") { $("view-duplicates").hidden = false; showDuplicates(); }
  else if (view === "status") { $("view-status").hidden = false; showStatus(); }
  else { $("view-search").hidden = false; fromParams(params); runSearch(); }
}
window.addEventListener("hashchange", route);

// --- search --------------------------------------------------------------------------------------

const search = { seq: 0, offset: 0, more: false, loading: false, example: null, controller: null, page: PAGE,
  all: false };
const FILTERS = { folder: "f-folder", after: "f-after", before: "f-before", type: "f-type", tag: "f-tag",
  min_width: "f-width", sort: "f-sort" };

function fromParams(params) {
  search.page = Math.min(200, Math.max(1, Number(params.get("limit")) || PAGE));
  search.all = params.get("all") === "1";  // every photo in score order, relevant or not (--min-score -1)
  $("q").value = params.get("q") || "";
  for (const [key, id] of Object.entries(FILTERS)) $(id).value = params.get(key) || (key === "sort" ? "score" : "");
}

function currentParams() {
  const p = new URLSearchParams();
  const q = $("q").value.trim();
  if (q) p.set("q", q);
  if (search.all) p.set("all", "1");
  for (const [key, id] of Object.entries(FILTERS)) {
    const v = $(id).value.trim();
    if (v && !(key === "sort" && v === "score")) p.set(key, v);
  }
  return p;
}

function syncHash() {
  const p = currentParams();
  if (search.page !== PAGE) p.set("limit", String(search.page));
  const qs = p.toString();
  history.replaceState(null, "", qs ? `#/?${qs}` : "#/");
}

let typingTimer = null;
function scheduleSearch() {
  search.all = false;  // a new query or filter starts from the relevant photos again
  clearTimeout(typingTimer);
  typingTimer = setTimeout(() => { syncHash(); runSearch(); }, 120);
}

async function runSearch(append = false) {
  if (!append) {
    search.offset = 0;
    search.more = false;
    if (search.controller) search.controller.abort();
  }
  const seq = ++search.seq;
  const p = currentParams();
  p.set("offset", String(search.offset));
  p.set("limit", String(search.page));
  if (search.example) p.set("example", search.example);
  search.controller = new AbortController();
  search.loading = true;
  $("more").textContent = "loading…";
  let body;
  try {
    body = await api(`/api/search?${p}`, { signal: search.controller.signal });
  } catch (e) {
    if (e.name === "AbortError" || seq !== search.seq) return;
    $("relevance").textContent = e.message;
    $("relevance").classList.add("error");
    if (!append) $("grid").replaceChildren();
    $("more").textContent = "";
    search.loading = false;
    return;
  }
  if (seq !== search.seq) return;
  showResults(body, append);
}

function showResults(body, append) {
  search.loading = false;
  const rel = $("relevance");
  rel.classList.remove("error");
  const text = body.results.length || append ? body.relevance : (body.nothing || body.relevance);
  // The CLI's hint names its option; the page offers the same as a link.
  const hint = /[;,]?\s*\(?--min-score -1 shows (them|more)\)?/;
  rel.textContent = text.replace(hint, "");
  if (hint.test(text) && !search.all) {
    const all = document.createElement("a");
    all.href = "#";
    all.className = "show-all";
    all.textContent = " · show them all";
    all.addEventListener("click", (ev) => { ev.preventDefault(); search.all = true; syncHash(); runSearch(); });
    rel.append(all);
  }
  const grid = $("grid");
  const tiles = body.results.map(tile);
  if (append) grid.append(...tiles); else grid.replaceChildren(...tiles);
  search.offset = body.offset + body.results.length;
  search.more = body.more;
  $("more").textContent = "";
  maybeMore();
}

const moreObserver = new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) maybeMore();
}, { rootMargin: "600px" });

function maybeMore() {
  if (!search.more || search.loading || $("view-search").hidden) return;
  const box = $("more").getBoundingClientRect();
  if (box.top < window.innerHeight + 600) runSearch(true);
}

// --- search by example (drop or paste) -----------------------------------------------------------

async function searchByImage(file) {
  if (!file || !file.type.startsWith("image/")) { toast("that is not an image"); return; }
  if ($("view-search").hidden) location.hash = "#/";
  $("relevance").textContent = "looking at your photo… (the first time loads the model)";
  const p = currentParams();
  p.set("limit", String(search.page));
  try {
    const body = await api(`/api/search/image?${p}`, { method: "POST", body: file,
      headers: { "Content-Type": file.type } });
    search.example = body.example;
    $("example-img").src = URL.createObjectURL(file);
    $("example").hidden = false;
    search.seq++;
    showResults(body, false);
  } catch (e) {
    $("relevance").textContent = e.message;
    $("relevance").classList.add("error");
  }
}

function clearExample() {
  search.example = null;
  $("example").hidden = true;
  runSearch();
}

let dragDepth = 0;
window.addEventListener("dragenter", (e) => {
  if (e.dataTransfer && [...e.dataTransfer.types].includes("Files")) { dragDepth++; $("dropzone").hidden = false; }
});
window.addEventListener("dragleave", () => { dragDepth = Math.max(0, dragDepth - 1); if (!dragDepth) $("dropzone").hidden = true; });
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => {
  e.preventDefault();
  dragDepth = 0;
  $("dropzone").hidden = true;
  const file = e.dataTransfer && e.dataTransfer.files[0];
  if (file) searchByImage(file);
});
window.addEventListener("paste", (e) => {
  const items = e.clipboardData ? [...e.clipboardData.items] : [];
  const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/"));
  if (item) { e.preventDefault(); searchByImage(item.getAsFile()); }
});

// --- one photo -----------------------------------------------------------------------------------

async function showPhoto(id) {
  const img = $("photo-img");
  img.removeAttribute("src");
  $("photo-name").textContent = "";
  $("photo-meta").replaceChildren();
  $("photo-tags").replaceChildren();
  $("similar-grid").replaceChildren();
  $("similar-relevance").textContent = "";
  $("photo-note").textContent = "";
  let info;
  try { info = await api(`/api/photo/${encodeURIComponent(id)}`); } catch (e) {
    $("photo-name").textContent = e.message;
    return;
  }
  img.src = `/api/photo/${info.id}/view`;
  img.alt = info.name;
  $("photo-name").textContent = info.name;
  const rows = [["Date", shortDate(info.taken_at || info.modified) + (info.taken_at ? "" : " (file time)")],
    ["Size", `${info.width || "?"} × ${info.height || "?"} px · ${humanBytes(info.size)}`],
    ["Format", info.format || "?"]];
  if (info.camera) rows.push(["Camera", info.camera]);
  if (info.place) rows.push(["Place", `${info.place.lat.toFixed(5)}, ${info.place.lon.toFixed(5)}`]);
  rows.push(["Folder", info.folder]);
  $("photo-meta").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  $("photo-tags").replaceChildren(...info.tags.map((t) =>
    el("a", { class: "chip", href: `#/?tag=${encodeURIComponent(t.label)}`, title: `${t.source}, score ${t.score}` },
      t.label)));
  $("photo-path").textContent = info.path;
  $("photo-path").dataset.path = info.path;
  $("reveal").hidden = !info.can_reveal;
  $("reveal").dataset.id = info.id;
  // A video's moment opens the video at that time (a media fragment browsers honour).
  $("original").href = `/api/photo/${info.id}/original` + (info.time != null ? `#t=${info.time}` : "");
  if (!info.available) $("photo-note").textContent = "The file is gone or changed since it was indexed; run the index again.";
  try {
    const similar = await api(`/api/search?similar=${info.id}&limit=24`);
    if (!location.hash.startsWith(`#/photo/${id}`)) return;
    $("similar-relevance").textContent = similar.relevance || similar.nothing || "";
    $("similar-grid").replaceChildren(...similar.results.map(tile));
  } catch (e) {
    $("similar-relevance").textContent = e.message;
  }
}

async function copyPath() {
  const text = $("photo-path").dataset.path || "";
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) {
    const area = el("textarea", {}, text);
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  toast("path copied");
}

// --- tags ----------------------------------------------------------------------------------------

async function showTags() {
  const list = $("tag-cloud");
  try {
    const body = await api("/api/tags");
    if (!body.tags.length) {
      list.replaceChildren(el("li", { class: "note", text: "No tags yet: run `clipsearch tag`, or the button above." }));
      return;
    }
    list.replaceChildren(...body.tags.map((t) => el("li", {},
      el("a", { href: `#/?tag=${encodeURIComponent(t.label)}`, title: t.source },
        el("span", { text: t.label }), el("span", { class: "n", text: String(t.count) })))));
  } catch (e) {
    list.replaceChildren(el("li", { class: "note", text: e.message }));
  }
}

async function loadTagList() {
  try {
    const body = await api("/api/tags");
    const seen = new Set();
    $("tag-list").replaceChildren(...body.tags.filter((t) => !seen.has(t.label) && seen.add(t.label))
      .map((t) => el("option", { value: t.label })));
  } catch (e) { /* the filter still works as free text */ }
}

// --- duplicates ----------------------------------------------------------------------------------

const chosen = new Set();

async function showDuplicates() {
  const box = $("dup-groups");
  chosen.clear();
  updateChosen();
  box.replaceChildren(el("p", { class: "note", text: "looking for copies…" }));
  let body;
  try { body = await api(`/api/duplicates?similar=${$("dup-similar").checked ? 1 : 0}`); } catch (e) {
    box.replaceChildren(el("p", { class: "note", text: e.message }));
    return;
  }
  if (!body.groups.length) { box.replaceChildren(el("p", { class: "note", text: "No duplicates found." })); return; }
  box.replaceChildren(...body.groups.map((g, n) => {
    const members = g.members.map((m) => {
      const box = el("input", { type: "checkbox", "data-id": m.id });
      const card = el("div", { class: "member" + (m.keep ? " keep" : ""), "data-id": m.id },
        el("a", { href: `#/photo/${m.id}` }, el("img", { src: `/api/photo/${m.id}/thumb`, alt: m.name, loading: "lazy" })),
        m.keep ? el("span", { class: "badge", text: "keep" }) : "",
        el("div", { class: "meta", text: `${m.width || "?"}×${m.height || "?"} · ${humanBytes(m.size)} · ${shortDate(m.date).slice(0, 10)}` }),
        el("div", { class: "path", text: m.path }),
        el("label", {}, box, m.keep ? "remove (this is the suggested keeper)" : "remove"));
      box.addEventListener("change", () => {
        if (box.checked) chosen.add(m.id); else chosen.delete(m.id);
        card.classList.toggle("chosen", box.checked);
        updateChosen();
      });
      if (!m.keep) { box.checked = true; chosen.add(m.id); card.classList.add("chosen"); }
      return card;
    });
    return el("div", { class: "group" }, el("h3", { text: `${g.tier} copies · group ${n + 1}` }),
      el("div", { class: "members" }, ...members));
  }));
  updateChosen();
}

function updateChosen() {
  const n = chosen.size;
  $("dup-count").textContent = n ? `${n} photo${n === 1 ? "" : "s"} chosen` : "nothing chosen";
  $("dup-trash").disabled = !n;
}

function confirmDialog(title, text, ok) {
  return new Promise((resolve) => {
    $("modal-title").textContent = title;
    $("modal-text").textContent = text;
    $("modal-ok").textContent = ok;
    $("modal").hidden = false;
    const done = (answer) => {
      $("modal").hidden = true;
      $("modal-ok").removeEventListener("click", yes);
      $("modal-cancel").removeEventListener("click", no);
      resolve(answer);
    };
    const yes = () => done(true);
    const no = () => done(false);
    $("modal-ok").addEventListener("click", yes);
    $("modal-cancel").addEventListener("click", no);
    $("modal-cancel").focus();
  });
}

async function trashChosen() {
  const ids = [...chosen];
  const keepers = [...document.querySelectorAll(".member.keep.chosen")].length;
  const warn = keepers ? ` ${keepers} of them ${keepers === 1 ? "is a suggested keeper" : "are suggested keepers"}.` : "";
  const ok = await confirmDialog(`Move ${ids.length} photo${ids.length === 1 ? "" : "s"} to the trash?`,
    `They go to the system trash, where you can restore them, and leave the index.${warn}`, "Move to trash");
  if (!ok) return;
  try {
    const body = await api("/api/trash", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ids, confirm: true }) });
    toast(`${body.trashed.length} moved to the trash` + (body.failed.length ? `, ${body.failed.length} failed` : ""));
  } catch (e) {
    toast(e.message);
  }
  showDuplicates();
}

// --- status --------------------------------------------------------------------------------------

async function showStatus() {
  let st;
  try { st = await api("/api/status"); } catch (e) {
    $("status-meta").replaceChildren(el("dd", { text: e.message }));
    return;
  }
  const skipped = Object.entries(st.skipped);
  const run = st.last_run || {};
  const rows = [["Index", st.index], ["Model", st.model_name || "none yet"], ["Photos", String(st.images)],
    ["Skipped", skipped.length ? skipped.map(([r, n]) => `${r}: ${n}`).join(", ") : "none"],
    ["Folders", st.roots.join("\n") || "none"], ["Watching", st.watching ? "yes, changes are indexed as they happen" : "no (start with --watch)"],
    ["Text queries", st.text_model ? "fast (no model loaded)" : "load the model"],
    ["Size on disk", humanBytes(st.bytes_on_disk)], ["Last run", st.last_run_at ? `${shortDate(st.last_run_at)}` +
      (run.new !== undefined ? ` · ${run.new} new, ${run.changed} changed, ${run.removed} removed` : "") : "never"]];
  $("status-meta").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }),
    el("dd", { text: v, class: "pre" })]));
  $("skipped").querySelector("tbody").replaceChildren(...(st.skipped_files.length ? st.skipped_files.map((s) =>
    el("tr", {}, el("td", { text: s.reason }), el("td", { text: s.path }), el("td", { text: s.detail }))) :
    [el("tr", {}, el("td", { colspan: 3, class: "note", text: "none" }))]));
}

// --- live progress -------------------------------------------------------------------------------

function listen() {
  const source = new EventSource("/api/events");
  const job = $("job");
  source.addEventListener("started", (e) => {
    const d = JSON.parse(e.data);
    job.hidden = false;
    $("job-text").textContent = `${d.job}…`;
    $("job-bar").removeAttribute("value");
  });
  source.addEventListener("progress", (e) => {
    const d = JSON.parse(e.data);
    job.hidden = false;
    $("job-text").textContent = `${d.job}: ${d.done}${d.total ? ` / ${d.total}` : ""}`;
    if (d.total) { $("job-bar").max = d.total; $("job-bar").value = d.done; }
  });
  source.addEventListener("external", (e) => {
    const d = JSON.parse(e.data);
    job.hidden = !d.busy;
    $("job-text").textContent = d.busy ? `the index is being updated by ${d.owner}…` : "";
    $("job-bar").removeAttribute("value");
  });
  source.addEventListener("changed", () => refreshView());
  source.addEventListener("finished", (e) => {
    const d = JSON.parse(e.data);
    job.hidden = true;
    if (!d.ok) toast(`${d.job} failed: ${d.error}`);
    else if (d.job === "index" && d.result && (d.result.new || d.result.changed || d.result.removed || d.result.moved))
      toast(`index updated: ${d.result.new} new, ${d.result.changed} changed, ${d.result.removed} removed`);
    else if (d.job === "tag") toast(`tagged ${d.result ? d.result.tagged : ""} photos`);
    refreshView();
  });
}

let refreshTimer = null;
function refreshView() {  // several events often come together: one refresh for all of them
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refreshNow, 300);
}

function refreshNow() {
  if (!$("view-search").hidden && !search.example) runSearch();
  else if (!$("view-status").hidden) showStatus();
  else if (!$("view-tags").hidden) showTags();
  loadTagList();
}

// --- wiring --------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); syncHash(); runSearch(); });
  $("q").addEventListener("input", scheduleSearch);
  for (const id of Object.values(FILTERS)) $(id).addEventListener("change", () => { syncHash(); runSearch(); });
  $("example-clear").addEventListener("click", clearExample);
  $("copy-path").addEventListener("click", copyPath);
  $("reveal").addEventListener("click", async () => {
    try { await api(`/api/photo/${$("reveal").dataset.id}/reveal`, { method: "POST" }); } catch (e) { toast(e.message); }
  });
  $("dup-similar").addEventListener("change", showDuplicates);
  $("dup-trash").addEventListener("click", trashChosen);
  $("run-index").addEventListener("click", async () => {
    try { await api("/api/index", { method: "POST" }); toast("updating the index…"); } catch (e) { toast(e.message); }
  });
  $("run-tag").addEventListener("click", async () => {
    try { await api("/api/tag", { method: "POST" }); toast("tagging…"); } catch (e) { toast(e.message); }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !$("modal").hidden) $("modal-cancel").click();
  });
  moreObserver.observe($("more"));
  window.addEventListener("scroll", maybeMore, { passive: true });  // the observer alone can miss a fast scroll
  loadTagList();
  listen();
  route();
});
