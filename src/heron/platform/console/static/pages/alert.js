// One alert: header, actions (admins), timeline, detections, process tree and graph neighbourhood.
import { api } from "../api.js";
import { badge, cell, el, fmtTime, jsonBlock, row, section, table, text } from "../dom.js";
import { drawGraph } from "../graph.js";

function field(label, value) {
  return el("div", { className: "field" }, el("span", { className: "label" }, label),
    value instanceof Node ? value : el("span", {}, text(value)));
}

// The tree: entries linked by parent_key, indented, the flagged process highlighted.
export function processTree(entries) {
  const byKey = new Map(entries.map((e) => [e.key, e]));
  const children = new Map();
  const roots = [];
  for (const e of entries) {
    if (e.parent_key && byKey.has(e.parent_key) && e.parent_key !== e.key) {
      if (!children.has(e.parent_key)) children.set(e.parent_key, []);
      children.get(e.parent_key).push(e);
    } else roots.push(e);
  }
  const list = el("ul", { className: "tree", id: "alert-tree" });
  const seen = new Set();
  const add = (parent, e, depth) => {
    if (seen.has(e.key) || depth > 64) return;
    seen.add(e.key);
    const argv = Array.isArray(e.argv) ? e.argv.join(" ") : text(e.argv);
    const li = el("li", { className: e.flagged ? "flagged" : "" },
      el("span", { className: "pid" }, text(e.pid)), " ", el("span", { className: "exe" }, text(e.exe)),
      " ", el("span", { className: "argv" }, argv.length > 300 ? argv.slice(0, 300) + "…" : argv),
      e.user !== undefined && e.user !== null ? el("span", { className: "muted" }, "  " + e.user) : null);
    const kids = (children.get(e.key) || []).sort((a, b) => (a.ts || 0) - (b.ts || 0));
    if (kids.length) {
      const sub = el("ul");
      for (const k of kids) add(sub, k, depth + 1);
      li.appendChild(sub);
    }
    parent.appendChild(li);
  };
  for (const r of roots) add(list, r, 0);
  return list;
}

function actions(ctx, a, reload) {
  const note = el("input", { type: "text", id: "action-note", placeholder: "note (optional)" });
  const out = el("span", { className: "muted", id: "action-result" });
  const run = (label, path, body) => el("button", { type: "button", className: "action", dataset: { action: label },
    onclick: () => ctx.guard(async () => {
      const payload = Object.assign({ note: note.value.trim() }, body || {});
      await api(path, null, "POST", payload);
      out.textContent = label + ": done";
      await reload();
    }) }, label);
  const base = "alerts/" + Number(a.id);
  const buttons = [];
  if (a.state === "open") buttons.push(run("Acknowledge", base + "/state", { state: "acknowledged" }));
  if (a.state !== "closed") buttons.push(run("Close", base + "/state", { state: "closed" }));
  if (a.state === "closed") buttons.push(run("Reopen", base + "/state", { state: "open" }));
  if (a.kind === "anomaly" && a.state !== "closed") buttons.push(run("Mark expected", base + "/expected"));
  buttons.push(el("button", { type: "button", className: "action", dataset: { action: "Suppress similar" },
    onclick: () => ctx.guard(async () => {
      await api("suppressions", null, "POST", { name: "similar to alert " + a.id + ": " + (a.title || a.rule),
        rule: a.rule || "", hostname: exactGlob(a.host || ""), note: note.value.trim() });
      out.textContent = "Suppress similar: done";
    }) }, "Suppress similar"));
  return el("div", { className: "actions", id: "alert-actions" }, ...buttons, note, out);
}

// A suppression's hostname is a glob: this host only, so its * ? [ are matched literally ([*] [?] [[]).
export function exactGlob(name) {
  return name.replace(/[*?[]/g, (c) => "[" + c + "]");
}

export async function render(root, ctx) {
  const id = Number(ctx.args[0]);
  const body = await api("alerts/" + id);
  if (!ctx.current()) return;
  const a = body.alert;
  const reload = async () => { root.replaceChildren(); await render(root, ctx); };
  const header = el("div", { className: "alert-header", id: "alert-header" },
    el("h2", { id: "alert-title" }, badge(a.severity), " ", text(a.title)),
    el("div", { className: "fields" },
      field("rule / kind", (a.rule || "") + " (" + a.kind + ")"), field("severity", a.severity),
      field("state", el("span", { id: "alert-state", className: "state-" + a.state }, text(a.state))),
      field("host", a.host), field("process", text(a.pid) + " " + text(a.exe)),
      field("first", fmtTime(a.first_ts)), field("last", fmtTime(a.last_ts)), field("score", a.score),
      field("detections", a.n_detections), field("tags", (a.tags || []).join(" "))));
  root.append(el("p", {}, el("a", { href: "#/alerts" }, "← alerts")), header);
  if (ctx.admin) root.appendChild(actions(ctx, a, reload));

  const detail = el("div", { id: "timeline-json" });
  const tl = table("alert-timeline", ["Time", "Kind", "What"]);
  const entries = [...(body.timeline || [])].sort((x, y) => (x.ts || 0) - (y.ts || 0));
  for (const e of entries) {
    const tr = row([cell(fmtTime(e.ts), "time"), cell(e.kind), cell(e.summary, "argv")], e.event ? "clickable" : "");
    if (e.event) tr.addEventListener("click", () => detail.replaceChildren(jsonBlock(e.event)));
    tl.tbody.appendChild(tr);
  }
  root.appendChild(section("Timeline", tl.table, detail));

  const dt = table("alert-detections", ["Time", "Kind", "Name", "Severity", "Process", "Summary"]);
  for (const d of body.detections || []) {
    dt.tbody.appendChild(row([cell(fmtTime(d.ts), "time"), cell(d.kind), cell(d.name), cell(badge(d.severity)),
      cell(text(d.pid) + " " + text(d.exe)), cell(d.summary, "argv")]));
  }
  root.appendChild(section("Detections", dt.table));

  const tree = body.tree || [];
  root.appendChild(section("Process tree", tree.length ? processTree(tree)
    : el("p", { className: "muted" }, "No process tree.")));

  const box = el("div", { id: "alert-graph", className: "graphbox" });
  root.appendChild(section("Graph neighbourhood", box));
  const graph = body.graph || { nodes: [], edges: [] };
  const recentre = (node) => ctx.guard(async () => {
    const hood = await api("graph/neighbourhood", { node: node.id, limit: 60 });
    drawGraph(box, hood, recentre);
  });
  if ((graph.nodes || []).length) drawGraph(box, graph, recentre);
  else box.appendChild(el("p", { className: "muted" }, "No graph context."));

  const log = table("alert-log", ["Time", "Who", "Action", "Note"]);
  for (const l of body.log || []) log.tbody.appendChild(row([cell(fmtTime(l.ts), "time"), cell(l.actor), cell(l.action), cell(l.note)]));
  root.appendChild(section("History", log.table));
}
