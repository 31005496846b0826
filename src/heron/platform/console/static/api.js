// Talking to /api/v1: bearer-token mode (a token in sessionStorage, from "#token=" or the token form)
// or session mode (an HttpOnly cookie set by POST /api/v1/session; changes send X-Heron-CSRF).

export const TOKEN_KEY = "heron.token";

export const auth = {
  token: null,   // bearer token (token mode)
  csrf: null,    // session mode: sent back on POST/PATCH/DELETE
  user: null,    // {username, role}; role null when a token does not say
};

export class AuthError extends Error {}

export function isAdmin() {
  return !auth.user || auth.user.role === "admin" || auth.user.role === null || auth.user.role === undefined;
}

function url(path, params) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== null && v !== undefined && v !== "") query.set(k, String(v));
  }
  return "/api/v1/" + path + (query.toString() ? "?" + query : "");
}

// The raw response (callers that handle statuses themselves).
export async function request(method, path, params, body) {
  const headers = {};
  if (auth.token) headers.Authorization = "Bearer " + auth.token;
  if (method !== "GET" && auth.csrf) headers["X-Heron-CSRF"] = auth.csrf;
  const init = { method, headers, cache: "no-store", credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  return fetch(url(path, params), init);
}

async function errorText(resp) {
  try { return (await resp.json()).error || resp.statusText; } catch (e) { return resp.statusText; }
}

// JSON of a successful call; 401 (and 403 on reads) raise AuthError: the caller signs out.
export async function api(path, params, method, body) {
  const verb = method || "GET";
  const resp = await request(verb, path, params, body);
  if (resp.status === 401 || (resp.status === 403 && verb === "GET")) {
    throw new AuthError((auth.token ? "token refused" : "signed out") + " (" + resp.status + ")");
  }
  if (!resp.ok) throw new Error(resp.status + ": " + await errorText(resp));
  const type = resp.headers.get("content-type") || "";
  return type.includes("json") ? resp.json() : {};
}

// -- signing in and out ---------------------------------------------------------------------------

// The caller's identity for a bearer token: the token list (admins only) tells an admin token from a
// reader one. (Not GET /api/v1/session: it answers for the session cookie, which may belong to someone
// else.) If the probe does not say, the role stays unknown: actions show, and the platform refuses
// them with 403 if not allowed.
async function tokenIdentity() {
  try {
    const probe = await request("GET", "tokens", { limit: 1 });
    if (probe.ok) return { username: "API token", role: "admin" };
    if (probe.status === 403) return { username: "API token", role: "reader" };
  } catch (e) { /* fall through */ }
  return { username: "API token", role: null };
}

// Who is signed in before a "#token=" link is followed: a description, or null for nobody.
async function signedInAs() {
  if (sessionStorage.getItem(TOKEN_KEY)) return "an API token";
  try {
    const resp = await request("GET", "session");  // auth.token is not set yet: the cookie answers
    if (resp.ok) {
      const body = await resp.json();
      return body && body.user ? body.user.username + " (" + body.user.role + ")" : "a session";
    }
  } catch (e) { /* nobody, as far as we can tell */ }
  return null;
}

// A "#token=" link signs in silently only when nobody is signed in (the link `heron up` prints).
// Otherwise a crafted link would swap the user's own session for the attacker's token (login CSRF),
// so the user is asked first.
async function acceptLinkToken(token) {
  if (sessionStorage.getItem(TOKEN_KEY) === token) return true;
  const current = await signedInAs();
  if (current === null) return true;
  return window.confirm("This link signs the console in with an API token instead of " + current +
                        ". Only accept if you made this link (e.g. heron up printed it).\n\nUse the link's token?");
}

// Resume a session: a token from the fragment or sessionStorage, else the session cookie.
export async function resume() {
  const params = new URLSearchParams(location.hash.slice(1));
  const fromFragment = params.get("token");
  if (fromFragment) {
    // Do not leave the token in the address bar or the history, whatever is decided below.
    history.replaceState(null, "", location.pathname + location.search + "#/overview");
    if (await acceptLinkToken(fromFragment)) sessionStorage.setItem(TOKEN_KEY, fromFragment);
  }
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) {
    auth.token = token;
    auth.user = await tokenIdentity();
    return true;
  }
  const resp = await request("GET", "session");
  if (!resp.ok) return false;
  const body = await resp.json();
  auth.user = body.user;
  auth.csrf = body.csrf;
  return true;
}

export async function useToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  auth.token = token;
  auth.csrf = null;
  auth.user = await tokenIdentity();
}

// POST /api/v1/session; returns an error message, or null when signed in.
export async function signIn(username, password) {
  const resp = await request("POST", "session", null, { username, password });
  if (resp.status === 401 || resp.status === 403) return "wrong user name or password";
  if (resp.status === 404 || resp.status === 405) return "password sign-in is not available here: use a token";
  if (!resp.ok) return resp.status + ": " + await errorText(resp);
  const body = await resp.json();
  auth.token = null;
  auth.user = body.user;
  auth.csrf = body.csrf;
  return null;
}

export async function signOut() {
  if (!auth.token && auth.csrf) {
    try { await request("DELETE", "session"); } catch (e) { /* the cookie expires anyway */ }
  }
  sessionStorage.removeItem(TOKEN_KEY);
  auth.token = null;
  auth.csrf = null;
  auth.user = null;
}
