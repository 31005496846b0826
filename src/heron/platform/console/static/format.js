// How each event type reads in a table row (the events explorer, alert timelines).
import { bytes, cell, fmtTime } from "./dom.js";

export const EVENT_TYPES = ["process.exec", "process.exit", "net.flow", "net.listen", "net.dns", "file.change",
  "agent.health", "package.inventory", "package.activity"];

export function lossCounters(health) {
  const counters = (health && health.counters) || {};
  return Object.keys(counters).sort()
    .filter((k) => counters[k] && /drop|lost|error/.test(k))
    .map((k) => k + "=" + counters[k]).join(" ");
}

export function endpoint(addr, port) {
  const a = String(addr || "");
  return (a.includes(":") ? "[" + a + "]" : a) + ":" + (port || "*");
}

export function describe(ev) {
  if (ev.type === "net.flow") {
    const remote = (ev.domain ? ev.domain + " " : "") + ev.remote_addr + ":" + (ev.remote_port || "*");
    const local = ev.local_addr + ":" + (ev.local_port || "*");
    const dir = ev.direction === "in" ? remote + " → " + local : local + " → " + remote;
    return ev.protocol + " " + dir + (ev.remote_class ? " [" + ev.remote_class + "]" : "") +
      "  " + (ev.connections || 0) + " conn, ↑" + bytes(ev.bytes_out) + " ↓" + bytes(ev.bytes_in);
  }
  if (ev.type === "net.listen") return ev.protocol + " " + ev.addr + ":" + ev.port + " " + (ev.state || "open");
  if (ev.type === "net.dns") {
    return ev.qtype + " " + ev.query + " → " + ((ev.answers || []).join(", ") || ev.rcode) +
      (ev.count > 1 ? "  (×" + ev.count + ")" : "");
  }
  if (ev.type === "file.change") {
    let text = ev.action + " " + (ev.old_path ? ev.old_path + " → " : "") + ev.path;
    if (ev.package_manager) text += "  [" + ev.package_manager + "]";
    if (ev.sha256) text += "  sha256:" + ev.sha256.slice(0, 12);
    return text;
  }
  if (ev.type === "package.inventory") {
    return (ev.full ? "full " : "") + (ev.added || []).length + " added, " + (ev.removed || []).length + " removed" +
      (ev.distro ? " (" + ev.distro + ")" : "") + " scope " + ev.scope;
  }
  if (ev.type === "package.activity") return (ev.active || []).length + " packages in use, scope " + ev.scope;
  return "";
}

export function userOf(p) {
  return p.user || (p.uid !== undefined && p.uid !== null && p.uid >= 0 ? p.uid : "");
}

// The columns of one stored event: time, host, type, pid, user, exe, argv / what, container, exit.
export function eventCells(item) {
  const ev = item.event || {};
  const p = ev.process || {};
  let pid = "", user = "", exe = "", argv = "", container = "", exit = "";
  const type = String(ev.type || "");
  if (type === "process.exec") {
    pid = p.pid;
    user = userOf(p);
    exe = p.exe;
    argv = (p.argv || []).join(" ") + (p.argv_truncated ? " …" : "");
    if (ev.count > 1) argv += "  (×" + ev.count + ")";
    container = p.container_id ? String(p.container_id).slice(0, 12) : "";
  } else if (type === "process.exit") {
    pid = ev.pid;
    exe = ev.exe || ev.comm;
    container = ev.container_id ? String(ev.container_id).slice(0, 12) : "";
    exit = ev.signal !== undefined && ev.signal !== null ? "signal " + ev.signal :
      (ev.exit_code !== undefined && ev.exit_code !== null ? ev.exit_code : "");
  } else if (type === "agent.health") {
    exe = "agent " + (ev.agent_version || "");
    argv = lossCounters(ev) || "no losses";
  } else {
    // Network, file and package events: the process behind them, and what they did.
    pid = p.pid || "";
    user = userOf(p);
    exe = p.exe || (ev.attribution === "unknown" ? "(writer unknown)" : "");
    container = p.container_id ? String(p.container_id).slice(0, 12) : "";
    argv = describe(ev);
  }
  return [cell(fmtTime(ev.ts), "time"), cell(item.host), cell(type), cell(pid), cell(user), cell(exe),
    cell(argv, "argv"), cell(container), cell(exit)];
}
