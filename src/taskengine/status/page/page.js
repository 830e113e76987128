// The status page: reads the server's JSON API and renders it with textContent only (task ids,
// data and errors are shown as text, never as markup). State lives in the URL's fragment
// (#task=ID&exec=ID-or-INDEX), so a view can be bookmarked and reloaded.
"use strict";

const REFRESH_MS = 3000;
const PAGE = 50;
let taskCursor = [null];     // the "after" of each task page seen, for "first page"
let execAfter = null;        // the "after" of the executions page shown (null: newest)
let execNext = null;

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function when(t) {
  return t === null || t === undefined ? "-" : new Date(t * 1000).toISOString().replace("T", " ").slice(0, 23);
}

function took(ex) {
  if (ex.started_at == null || ex.finished_at == null) return "-";
  return ((ex.finished_at - ex.started_at) * 1000).toFixed(1) + " ms";
}

function state() {
  const p = new URLSearchParams(location.hash.slice(1));
  return { task: p.get("task"), exec: p.get("exec") };
}

function link(params, text) {
  const a = el("a", text);
  a.href = "#" + new URLSearchParams(params).toString();
  return a;
}

async function api(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(`${response.status}: ${body.error || response.statusText}`);
  return body;
}

function enc(s) { return encodeURIComponent(s); }

function problem(err) {
  const p = $("problem");
  if (err) { p.textContent = String(err.message || err); p.hidden = false; } else { p.hidden = true; }
}

async function showStats() {
  const body = await api("/api/stats");
  $("where").textContent = `${body.path} (taskengine ${body.version})`;
  const dl = $("stats");
  dl.replaceChildren();
  for (const [name, value] of Object.entries(body.stats)) {
    const box = el("div");
    const shown = value === null ? "-" : typeof value === "object" ? JSON.stringify(value) : value;
    box.append(el("dt", name.replaceAll("_", " ")), el("dd", shown));
    dl.append(box);
  }
}

async function showTasks() {
  const after = taskCursor[taskCursor.length - 1];
  const body = await api(`/api/tasks?limit=${PAGE}` + (after === null ? "" : `&after=${enc(after)}`));
  const rows = $("task-rows");
  rows.replaceChildren();
  for (const t of body.items) {
    const tr = el("tr");
    const name = el("td");
    name.append(link({ task: t.id }, t.id));
    tr.append(name, el("td", t.job), el("td", t.status), el("td", t.execution_count, "num"), el("td", when(t.created_at)));
    rows.append(tr);
  }
  if (!body.items.length) {
    const tr = el("tr");
    const td = el("td", after === null ? "no tasks yet" : "no more tasks");
    td.colSpan = 5;
    tr.append(td);
    rows.append(tr);
  }
  $("tasks-next").disabled = body.next === null;
  $("tasks-next").onclick = () => { taskCursor.push(body.next); refresh(); };
  $("tasks-first").disabled = taskCursor.length === 1;
  $("tasks-first").onclick = () => { taskCursor = [null]; refresh(); };
}

async function showExecutions(taskId) {
  const section = $("executions");
  if (!taskId) { section.hidden = true; return; }
  const task = await api(`/api/tasks/${enc(taskId)}`);
  $("exec-task").textContent = taskId;
  const pruned = task.prune_mark ? `, indexes below ${task.prune_mark} pruned` : "";
  $("exec-task-info").textContent =
    `job ${task.job}, ${task.execution_count} execution(s)${pruned}, next index ${task.execution_count}`;
  const body = await api(`/api/tasks/${enc(taskId)}/executions?order=newest&limit=${PAGE}` +
    (execAfter === null ? "" : `&after=${execAfter}`));
  const rows = $("exec-rows");
  rows.replaceChildren();
  for (const ex of body.items) {
    const tr = el("tr");
    const idx = el("td", null, "num");
    idx.append(link({ task: taskId, exec: String(ex.index) }, ex.index));
    const id = el("td");
    id.append(link({ task: taskId, exec: ex.id }, ex.id));
    tr.append(idx, el("td", ex.status, `st st-${ex.status}`), el("td", ex.blocking ? "blocking" : "non-blocking"),
      el("td", when(ex.created_at), "time"), el("td", took(ex), "took"), el("td", ex.error || ""), id);
    rows.append(tr);
  }
  execNext = body.next;
  $("exec-older").disabled = execNext === null;
  $("exec-newest").disabled = execAfter === null;
  section.hidden = false;
}

async function showExecution(taskId, ref) {
  const section = $("execution");
  if (!taskId || !ref) { section.hidden = true; return; }
  const ex = await api(`/api/tasks/${enc(taskId)}/executions/${enc(ref)}`);
  $("one-title").textContent = `${ex.index === null ? "(no index yet)" : "#" + ex.index} of ${taskId}`;
  const dl = $("one");
  dl.replaceChildren();
  const fields = [
    ["id", ex.id], ["index", ex.index], ["status", ex.status], ["kind", ex.blocking ? "blocking" : "non-blocking"],
    ["created", when(ex.created_at)], ["started", when(ex.started_at)], ["finished", when(ex.finished_at)],
    ["took", took(ex)], ["idempotency key", ex.idempotency_key], ["data", JSON.stringify(ex.data)],
    ["result", JSON.stringify(ex.result)], ["error", ex.error],
  ];
  for (const [name, value] of fields) {
    if (value === null || value === undefined) continue;
    dl.append(el("dt", name), el("dd", value));
  }
  const tb = ex.traceback || null;
  $("traceback").textContent = tb || "";
  $("traceback").hidden = !tb;
  $("traceback-title").hidden = !tb;
  section.hidden = false;
}

let running = false;
async function refresh() {
  if (running) return;
  running = true;
  const { task, exec } = state();
  try {
    await Promise.all([showStats(), showTasks(), showExecutions(task), showExecution(task, exec)]);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = "yes";
    problem(null);
  } catch (err) {
    problem(err);
  } finally {
    running = false;
  }
}

$("exec-older").addEventListener("click", () => { if (execNext !== null) { execAfter = execNext; refresh(); } });
$("exec-newest").addEventListener("click", () => { execAfter = null; refresh(); });
window.addEventListener("hashchange", () => { execAfter = null; refresh(); });
refresh();
setInterval(refresh, REFRESH_MS);
