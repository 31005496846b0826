// Events explorer: filters (host, type, process, text, time range), follow live (poll with after_id),
// a click on a row shows its JSON.
import { api } from "../api.js";
import { el, filterForm, jsonBlock, row, section, table } from "../dom.js";
import { EVENT_TYPES, eventCells } from "../format.js";

const PAGE = 200;          // events shown per query
const MAX_ROWS = 1000;     // rows kept while following
const FOLLOW_MS = 1000;

function toNs(local) {  // a datetime-local value (local time) as ns since the epoch
  const ms = new Date(local).getTime();
  return Number.isFinite(ms) ? String(ms) + "000000" : "";
}

export async function render(root, ctx) {
  const p = ctx.params;
  const t = table("events", ["Time", "Host", "Type", "PID", "User", "Exe", "Argv / what", "Container", "Exit"]);
  const empty = el("p", { className: "muted", id: "events-empty", hidden: true }, "No events match.");
  const detail = el("div", { id: "event-detail" });
  const follow = el("input", { type: "checkbox", id: "f-follow" });
  const { form, values } = filterForm([
    { name: "type", label: "Type", options: ["", ...EVENT_TYPES], value: p.get("type") },
    { name: "host", label: "Host", placeholder: "hostname", value: p.get("host") },
    { name: "pid", label: "PID", placeholder: "pid", value: p.get("pid") },
    { name: "exe", label: "Exe", placeholder: "/usr/bin/…", value: p.get("exe") },
    { name: "q", label: "Text", placeholder: "in exe or argv", value: p.get("q") },
    { name: "since", label: "From", type: "datetime-local", value: p.get("since") },
    { name: "until", label: "To", type: "datetime-local", value: p.get("until") },
  ], () => ctx.guard(load), [el("label", { className: "follow" }, follow, " Follow live")]);
  let lastId = 0;
  let timer = null;

  const query = () => {
    const v = values();
    const out = Object.assign({}, v);
    if (v.since) out.since = toNs(v.since);
    if (v.until) out.until = toNs(v.until);
    return out;
  };
  const addRow = (item, cls, atTop) => {
    const tr = row(eventCells(item), cls);
    tr.addEventListener("click", () => {
      detail.replaceChildren(el("h3", {}, "Event " + item.id), jsonBlock(item.event, "event-json"));
    });
    if (atTop) t.tbody.insertBefore(tr, t.tbody.firstChild); else t.tbody.appendChild(tr);
  };
  async function load() {
    const body = await api("events", Object.assign({ limit: PAGE }, query()));
    if (!ctx.current()) return;
    t.tbody.replaceChildren();
    for (const item of body.events) addRow(item);
    lastId = body.events.length ? body.events[0].id : 0;
    if (!body.events.length) {
      // Follow from the newest event of any kind so the first poll does not replay history.
      const newest = await api("events", { limit: 1 });
      lastId = newest.events.length ? newest.events[0].id : 0;
    }
    empty.hidden = body.events.length > 0;
    const q = new URLSearchParams(values()).toString();
    history.replaceState(null, "", "#/events" + (q ? "?" + q : ""));
  }
  async function poll() {
    const filters = query();
    delete filters.until;
    const body = await api("events", Object.assign(filters, { after_id: lastId, limit: 1000 }));
    if (!ctx.current() || !body.events.length) return;
    // Highlight only the rows of the latest poll.
    for (const tr of t.tbody.querySelectorAll("tr.new")) tr.classList.remove("new");
    for (const item of [...body.events].sort((a, b) => a.id - b.id)) {
      addRow(item, "new", true);
      lastId = Math.max(lastId, item.id);
    }
    while (t.tbody.rows.length > MAX_ROWS) t.tbody.deleteRow(t.tbody.rows.length - 1);
    empty.hidden = true;
  }
  const setFollow = (on) => {
    if (timer) { clearInterval(timer); timer = null; }
    if (on) timer = setInterval(() => ctx.guard(poll), FOLLOW_MS);
  };
  follow.addEventListener("change", () => setFollow(follow.checked));
  form.querySelector("#f-type").addEventListener("change", () => ctx.guard(load));
  ctx.onLeave(() => setFollow(false));
  root.append(section("Events", form, t.table, empty, detail));
  await load();
}
