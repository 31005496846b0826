// heron console: plain JS modules, no build step, hash routing (#/page/arg?filters).
// Event data is hostile: it only reaches the page through textContent (see dom.js).
import { AuthError, auth, isAdmin, resume, signIn, signOut, useToken } from "./api.js";
import { $, text } from "./dom.js";
import * as alert from "./pages/alert.js";
import * as alerts from "./pages/alerts.js";
import * as events from "./pages/events.js";
import * as files from "./pages/files.js";
import * as flows from "./pages/flows.js";
import * as graph from "./pages/graph.js";
import * as hosts from "./pages/hosts.js";
import * as overview from "./pages/overview.js";
import * as vulns from "./pages/vulns.js";

const PAGES = { overview, hosts, alerts, events, flows, files, vulns, graph };
let cleanup = null;  // the current page's teardown (timers)
let generation = 0;  // a page load that finishes after the user moved on must not draw

function setStatus(message, isError) {
  $("status").textContent = message;
  $("status").className = isError ? "error" : "muted";
}

// Runs fn, reporting its outcome in the header; an AuthError signs out.
export async function guard(fn) {
  try {
    await fn();
    setStatus("updated " + new Date().toLocaleTimeString(), false);
  } catch (e) {
    if (e instanceof AuthError) { await leave(e.message); return; }
    setStatus(String(e.message || e), true);
  }
}

function parseRoute() {
  const hash = location.hash.startsWith("#/") ? location.hash.slice(2) : "overview";
  const [path, query] = hash.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { name: parts[0] || "overview", args: parts.slice(1), params: new URLSearchParams(query || "") };
}

function route() {
  if (!auth.user) return;
  if (new URLSearchParams(location.hash.slice(1)).has("token")) {
    // A "#token=" link opened in this tab after sign-in: the page reload path (resume) decides about
    // tokens; here it is only kept out of the address bar and the history.
    history.replaceState(null, "", location.pathname + location.search + "#/overview");
  }
  if (cleanup) { cleanup(); cleanup = null; }
  const { name, args, params } = parseRoute();
  let page = PAGES[name];
  if (name === "alerts" && args.length) page = alert;
  const main = $("main");
  main.replaceChildren();
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === name);
  if (!page) { main.textContent = "No such page."; return; }
  const mine = ++generation;
  const ctx = {
    args, params, admin: isAdmin(), guard,
    current: () => mine === generation,
    onLeave: (fn) => { cleanup = fn; },
  };
  main.dataset.page = page === alert ? "alert" : name;
  guard(() => page.render(main, ctx));
}

function showLogin(message) {
  $("main").hidden = true;
  $("nav").hidden = true;
  $("signout").hidden = true;
  $("whoami").textContent = "";
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

async function leave(message) {
  if (cleanup) { cleanup(); cleanup = null; }
  generation++;
  await signOut();
  showLogin(message);
}

function enter() {
  $("login").hidden = true;
  $("main").hidden = false;
  $("nav").hidden = false;
  $("signout").hidden = false;
  const role = auth.user.role ? auth.user.role : "role unknown";
  $("whoami").textContent = text(auth.user.username + " (" + role + ")");
  document.body.classList.toggle("reader", !isAdmin());
  route();
}

document.addEventListener("DOMContentLoaded", async () => {
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const error = await signIn($("username").value.trim(), $("password").value);
    $("password").value = "";
    if (error) { $("login-error").textContent = error; return; }
    enter();
  });
  $("token-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    await useToken($("token").value.trim());
    $("token").value = "";
    enter();
  });
  $("signout").addEventListener("click", () => leave(""));
  window.addEventListener("hashchange", route);
  let resumed = false;
  try { resumed = await resume(); } catch (e) { resumed = false; }
  if (resumed) enter(); else showLogin("");
});
