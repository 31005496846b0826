// A node's neighbourhood as SVG: the centre node in the middle, its neighbours on a circle grouped by
// the kind of edge that joins them, labels as SVG text (textContent), new edges highlighted.
import { text } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
const MAX_NODES = 60;  // more neighbours than this are listed, not drawn

function svg(tag, attrs, label) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (label !== undefined) node.textContent = text(label);
  return node;
}

function short(value, n) {
  const s = text(value);
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}

export function nodeLabel(node) {
  return node.label || node.key || String(node.id);
}

function pickCenter(data) {
  if (data.center !== undefined && data.center !== null) return data.center;
  const degree = new Map();
  for (const e of data.edges || []) {
    degree.set(e.src, (degree.get(e.src) || 0) + 1);
    degree.set(e.dst, (degree.get(e.dst) || 0) + 1);
  }
  let best = null;
  for (const [id, d] of degree) if (best === null || d > degree.get(best)) best = id;
  return best !== null ? best : ((data.nodes || [])[0] || {}).id;
}

// Draws into container (replacing its content); onSelect(node) is called when a node is clicked.
export function drawGraph(container, data, onSelect, opts) {
  const width = (opts && opts.width) || 900;
  const height = (opts && opts.height) || 520;
  const nodes = new Map((data.nodes || []).map((n) => [n.id, n]));
  const centerId = pickCenter(data);
  const edges = data.edges || [];
  // Group neighbours by the kind of their (first) edge to the centre; others at the end.
  const groupOf = new Map();
  for (const e of edges) {
    const other = e.src === centerId ? e.dst : (e.dst === centerId ? e.src : null);
    if (other !== null && !groupOf.has(other)) groupOf.set(other, e.kind);
  }
  const others = [...nodes.keys()].filter((id) => id !== centerId);
  others.sort((a, b) => String(groupOf.get(a) || "~").localeCompare(String(groupOf.get(b) || "~")) ||
    nodeLabel(nodes.get(a)).localeCompare(nodeLabel(nodes.get(b))));
  const shown = others.slice(0, MAX_NODES);
  const pos = new Map([[centerId, { x: width / 2, y: height / 2 }]]);
  const rx = width / 2 - 150, ry = height / 2 - 50;
  shown.forEach((id, i) => {
    const angle = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(1, shown.length);
    pos.set(id, { x: width / 2 + rx * Math.cos(angle), y: height / 2 + ry * Math.sin(angle) });
  });

  const root = svg("svg", { viewBox: "0 0 " + width + " " + height, width, height, class: "graph",
    role: "img", "aria-label": "graph neighbourhood" });
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 22, refY: 5, markerWidth: 7,
    markerHeight: 7, orient: "auto-start-reverse" });
  marker.appendChild(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }));
  defs.appendChild(marker);
  root.appendChild(defs);
  const edgeLayer = svg("g", { class: "edges" });
  const nodeLayer = svg("g", { class: "nodes" });
  root.append(edgeLayer, nodeLayer);
  for (const e of edges) {
    const a = pos.get(e.src), b = pos.get(e.dst);
    if (!a || !b) continue;
    const g = svg("g", { class: "edge kind-" + String(e.kind).replace(/[^a-z_]/g, "") +
      (e.baseline === "new" ? " new" : ""), "data-edge": e.id });
    g.appendChild(svg("line", { x1: a.x, y1: a.y, x2: b.x, y2: b.y, "marker-end": "url(#arrow)" }));
    const title = svg("title", {}, e.kind + " (" + (e.count || 0) + "×, " + (e.baseline || "") + ")");
    g.appendChild(title);
    if (e.src === centerId || e.dst === centerId) {
      g.appendChild(svg("text", { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 - 3, class: "edge-label" },
        e.kind + (e.baseline === "new" ? " (new)" : "")));
    }
    edgeLayer.appendChild(g);
  }
  for (const [id, p] of pos) {
    const n = nodes.get(id) || { id, kind: "?", label: String(id) };
    const g = svg("g", { class: "node kind-" + String(n.kind).replace(/[^a-z_]/g, "") +
      (id === centerId ? " center" : ""), "data-node": id, transform: "translate(" + p.x + "," + p.y + ")" });
    g.appendChild(svg("circle", { r: id === centerId ? 14 : 9 }));
    g.appendChild(svg("title", {}, n.kind + ": " + nodeLabel(n)));
    const below = p.y >= height / 2;
    g.appendChild(svg("text", { y: below ? 24 : -16, class: "node-label" }, short(nodeLabel(n), 34)));
    g.appendChild(svg("text", { y: below ? 36 : -28, class: "node-kind" }, n.kind));
    if (onSelect) g.addEventListener("click", () => onSelect(n));
    nodeLayer.appendChild(g);
  }
  container.replaceChildren(root);
  if (others.length > shown.length) {
    const note = document.createElement("p");
    note.className = "muted";
    note.textContent = (others.length - shown.length) + " more neighbours not drawn";
    container.appendChild(note);
  }
  return root;
}
