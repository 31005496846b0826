// DOM helpers. Event data is hostile (argv, exe, paths, host names): it only ever reaches the page
// through textContent and attribute properties, never parsed as HTML.

export const $ = (id) => document.getElementById(id);

// el("td", {className: "x", title: "y"}, child, "text", ...): children are nodes or text.
export function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined) continue;
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "onclick") node.addEventListener("click", v);
    else node[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.appendChild(c instanceof Node ? c : document.createTextNode(text(c)));
  }
  return node;
}

// Control and bidirectional-override characters (an RTL override makes "exe.txt" read "txt.exe") are
// shown as visible escapes, so hostile text cannot disguise itself or the text around it.
const INVISIBLE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
export function visible(s) {
  return s.replace(INVISIBLE, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
}

export function text(value) {
  return value === null || value === undefined ? "" : visible(String(value));
}

export function cell(value, cls) {
  const td = document.createElement("td");
  if (value instanceof Node) td.appendChild(value);
  else if (cls === "argv") {
    // Long command lines (a JSON blob, an env dump) are clamped to three lines; a click shows all.
    const box = el("div", { className: "clamp", title: "click to show all" }, text(value));
    box.addEventListener("click", () => box.classList.toggle("open"));
    td.appendChild(box);
  } else td.textContent = text(value);
  if (cls) td.className = cls;
  return td;
}

export function row(cells, cls) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c instanceof Node ? c : cell(c));
  if (cls) tr.className = cls;
  return tr;
}

// A table with a header row; returns {table, tbody}.
export function table(id, headers) {
  const tbody = el("tbody");
  const t = el("table", { id }, el("thead", {}, row(headers.map((h) => el("th", {}, h)))), tbody);
  return { table: t, tbody };
}

export function link(href, label, props) {
  return el("a", Object.assign({ href }, props || {}), text(label));
}

const SEVERITIES = ["critical", "high", "medium", "low", "info"];
export { SEVERITIES };
export function badge(severity) {
  const s = text(severity);
  return el("span", { className: "badge sev-" + (SEVERITIES.includes(s) ? s : "other") }, s);
}

export function section(title, ...children) {
  return el("section", {}, el("h2", {}, title), ...children);
}

export function fmtTime(ns) {
  if (typeof ns !== "number" || !ns) return "";
  const d = new Date(ns / 1e6);
  const pad = (n, w) => String(n).padStart(w || 2, "0");
  return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
    pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." +
    pad(d.getMilliseconds(), 3);
}

export function ago(ns) {
  const s = Math.max(0, Math.round((Date.now() * 1e6 - ns) / 1e9));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.round(s / 60) + "m ago";
  if (s < 86400) return Math.round(s / 3600) + "h ago";
  return Math.round(s / 86400) + "d ago";
}

export function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

// A form of labelled inputs; fields: [{name, label, type?, options?, value?, placeholder?}].
// Returns {form, values()}; inputs get ids "f-" + name.
export function filterForm(fields, onSubmit, extra) {
  const form = el("form", { className: "filters", autocomplete: "off" });
  for (const f of fields) {
    let input;
    if (f.options) {
      input = el("select", { id: "f-" + f.name });
      for (const o of f.options) input.appendChild(el("option", { value: o }, o || "any"));
    } else {
      input = el("input", { id: "f-" + f.name, type: f.type || "text", placeholder: f.placeholder || "" });
    }
    if (f.value) input.value = f.value;
    form.appendChild(el("label", {}, f.label + " ", input));
  }
  form.appendChild(el("button", { type: "submit" }, "Apply"));
  for (const node of extra || []) form.appendChild(node);
  form.addEventListener("submit", (e) => { e.preventDefault(); onSubmit(); });
  const values = () => {
    const out = {};
    for (const f of fields) {
      const v = $("f-" + f.name).value.trim();
      if (v) out[f.name] = v;
    }
    return out;
  };
  return { form, values };
}

// A <pre> showing a value as indented JSON (text, never markup).
export function jsonBlock(value, id) {
  // JSON.stringify leaves U+202E and friends as they are: text() makes them visible.
  return el("pre", { className: "json", id: id || null }, JSON.stringify(value, null, 2));
}
