// File changes (file.change events): path, action, writer, user, package manager.
import { api } from "../api.js";
import { cell, el, filterForm, fmtTime, row, section, table } from "../dom.js";
import { userOf } from "../format.js";

export async function render(root, ctx) {
  const p = ctx.params;
  const t = table("files", ["Time", "Host", "Action", "Path", "Writer", "User", "Package manager", "Rule", "SHA-256"]);
  const empty = el("p", { className: "muted", id: "files-empty", hidden: true }, "No file changes.");
  const { form, values } = filterForm([
    { name: "host", label: "Host", placeholder: "hostname", value: p.get("host") },
    { name: "q", label: "Text", placeholder: "path or writer", value: p.get("q") },
  ], () => ctx.guard(load));
  async function load() {
    const body = await api("events", Object.assign({ type: "file.change", limit: 500 }, values()));
    if (!ctx.current()) return;
    t.tbody.replaceChildren();
    for (const item of body.events) {
      const ev = item.event || {};
      const proc = ev.process || {};
      const writer = proc.exe ? (proc.pid || "") + " " + proc.exe : (ev.attribution === "unknown" ? "(unknown)" : "");
      const actions = (ev.actions || []).length > 1 ? ev.actions.join(",") : ev.action;
      t.tbody.appendChild(row([
        cell(fmtTime(ev.ts), "time"), cell(item.host), cell(actions),
        cell((ev.old_path ? ev.old_path + " → " : "") + ev.path, "argv"), cell(writer), cell(userOf(proc)),
        cell(ev.package_manager || "—", ev.package_manager ? "" : "muted"), cell(ev.rule || ""),
        cell(ev.sha256 ? String(ev.sha256).slice(0, 16) : ""),
      ], ev.package_manager ? "" : "unpackaged"));
    }
    empty.hidden = body.events.length > 0;
  }
  root.append(section("File changes", form, t.table, empty));
  await load();
}
