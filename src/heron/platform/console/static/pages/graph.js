// Behaviour graph: search nodes, view a node's neighbourhood (click a node to recentre).
import { api } from "../api.js";
import { cell, el, filterForm, fmtTime, link, row, section, table, text } from "../dom.js";
import { drawGraph, nodeLabel } from "../graph.js";

const KINDS = ["", "host", "container", "image", "cluster", "user", "endpoint", "fileclass", "package"];

export async function render(root, ctx) {
  const p = ctx.params;
  const results = table("graph-nodes", ["Kind", "Label", "Key", "Count", "First seen", "Last seen"]);
  const box = el("div", { id: "graph-view", className: "graphbox" });
  const title = el("h3", { id: "graph-center" });
  const edges = table("graph-edges", ["Edge", "From", "To", "Count", "Baseline", "Hosts", "Last seen"]);
  const { form, values } = filterForm([
    { name: "q", label: "Search", placeholder: "label or key", value: p.get("q") },
    { name: "kind", label: "Kind", options: KINDS, value: p.get("kind") },
    { name: "host", label: "Host", placeholder: "hostname", value: p.get("host") },
  ], () => ctx.guard(search));

  async function show(nodeId) {
    const hood = await api("graph/neighbourhood", { node: nodeId, limit: 60 });
    if (!ctx.current()) return;
    const byId = new Map((hood.nodes || []).map((n) => [n.id, n]));
    const center = byId.get(hood.center);
    title.textContent = text(center ? center.kind + ": " + nodeLabel(center) : "node " + nodeId);
    edges.table.hidden = false;
    drawGraph(box, hood, (n) => ctx.guard(() => show(n.id)));
    edges.tbody.replaceChildren();
    for (const e of hood.edges || []) {
      edges.tbody.appendChild(row([cell(e.kind), cell(nodeLabel(byId.get(e.src) || { id: e.src })),
        cell(nodeLabel(byId.get(e.dst) || { id: e.dst })), cell(e.count), cell(e.baseline, e.baseline === "new" ? "warn" : ""),
        cell((e.hosts || []).join(" ")), cell(fmtTime(e.last_seen), "time")], e.baseline === "new" ? "new-edge" : ""));
    }
    const q = new URLSearchParams(Object.assign(values(), { node: nodeId })).toString();
    history.replaceState(null, "", "#/graph?" + q);
  }
  async function search() {
    const body = await api("graph/nodes", Object.assign({ limit: 100 }, values()));
    if (!ctx.current()) return;
    results.tbody.replaceChildren();
    for (const n of body.nodes) {
      const open = link("#/graph?node=" + Number(n.id), nodeLabel(n), { onclick: (e) => {
        e.preventDefault();
        ctx.guard(() => show(n.id));
      } });
      results.tbody.appendChild(row([cell(n.kind), cell(open), cell(n.key, "argv"), cell(n.count),
        cell(fmtTime(n.first_seen), "time"), cell(fmtTime(n.last_seen), "time")]));
    }
  }
  edges.table.hidden = true;  // until a node is chosen
  root.append(section("Graph", form, results.table), el("section", {}, title, box, edges.table));
  await search();
  if (p.get("node")) await show(Number(p.get("node")));
}
