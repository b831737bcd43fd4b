// Ward console: a thin client of the gateway's /admin and /audit APIs.
// The session cookie is HttpOnly; this script only ever holds the CSRF token it is given.
// Views are drawn for the caller's roles; the API refuses whatever a role may not do anyway.
"use strict";

const state = { csrf: null, roles: [], team: null, subject: null, view: null, team_open: null };

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svgEl(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children.flat()) if (child) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

async function api(method, path, body) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["x-csrf-token"] = state.csrf;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (!response.ok) {
    const message = data && data.error ? data.error.message : response.statusText;
    if (response.status === 401 && state.csrf) { state.csrf = null; showSignIn(); }
    throw new ApiError(response.status, message);
  }
  return data;
}

function say(message, isError) {
  const status = document.getElementById("status");
  status.textContent = message || "";
  status.className = isError ? "error" : "";
}

async function attempt(action, done) {
  try {
    const result = await action();
    if (done) say(done);
    return result;
  } catch (error) {
    say(error.message || String(error), true);
    return undefined;
  }
}

const has = (role) => state.roles.includes(role);
const isPlatformAdmin = () => has("platform_admin");
const isAdmin = () => has("platform_admin") || has("team_admin");
const isAuditor = () => has("auditor");

function views() {
  const list = [];
  if (isAdmin()) list.push(["teams", "Teams and keys"], ["usage", "Usage"], ["models", "Models and workers"]);
  if (isAuditor() || isAdmin()) list.push(["audit", "Audit log"]);
  return list;
}

// ---- session ---------------------------------------------------------------------------------
async function loadSession() {
  const session = await api("GET", "/console/session");
  if (!session.signed_in) { showSignIn(session); return; }
  Object.assign(state, { csrf: session.csrf_token, roles: session.roles, team: session.team, subject: session.subject });
  document.getElementById("view-signin").hidden = true;
  document.getElementById("who").hidden = false;
  document.getElementById("who-text").textContent =
    `${session.subject} · team ${session.team} · ${session.roles.filter((r) => r !== "user").join(", ") || "user"}`;
  const teamSwitch = document.getElementById("team-switch");
  teamSwitch.hidden = !(session.teams && session.teams.length > 1);
  document.getElementById("team-choice").replaceChildren(...(session.teams || []).map((t) =>
    el("option", { value: t, selected: t === session.team }, t)));
  const nav = document.getElementById("nav");
  nav.replaceChildren(...views().map(([id, label]) =>
    el("button", { type: "button", "data-view": id, onclick: () => show(id) }, label)));
  nav.hidden = false;
  const available = views();
  if (!available.length) { say("This account has no console role (admin or auditor)."); return; }
  show(available[0][0]);
}

function showSignIn(session) {
  for (const section of document.querySelectorAll("main > section")) section.hidden = true;
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  document.getElementById("view-signin").hidden = false;
  document.getElementById("signin-sso").hidden = !(session && session.oidc);
  document.getElementById("signin-refused").hidden = location.hash !== "#signin-refused";
}

async function signInWithKey(event) {
  event.preventDefault();
  const input = document.getElementById("api-key");
  const ok = await attempt(() => api("POST", "/console/session", { api_key: input.value }));
  input.value = "";
  if (ok) { history.replaceState(null, "", "/console"); say(""); await loadSession(); }
}

async function chooseTeam(event) {
  const team = event.target.value;
  const done = await attempt(() => api("POST", "/console/session/team", { team }));
  if (done) { state.team_open = null; await loadSession(); say(`Working as team ${team}.`); }
}

async function signOut() {
  await attempt(() => api("POST", "/console/sign-out"));
  Object.assign(state, { csrf: null, roles: [], view: null });
  say("Signed out.");
  showSignIn(await api("GET", "/console/session"));
}

async function show(id) {
  state.view = id;
  for (const section of document.querySelectorAll("main > section")) section.hidden = section.id !== `view-${id}`;
  for (const button of document.querySelectorAll("#nav button")) {
    if (button.dataset.view === id) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  say("");
  await ({ teams: drawTeams, usage: drawUsage, models: drawModels, audit: drawAudit })[id]();
  const heading = document.getElementById(`${id}-title`);
  if (heading) heading.focus();  // keyboard and screen-reader users land on the view they opened
}

function field(id, label, input) {
  input.id = id;
  return el("div", {}, el("label", { for: id }, label), input);
}

function table(caption, headers, rows) {
  return el("table", {},
    el("caption", {}, caption),
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.length ? rows : [el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "None."))]));
}

const enc = encodeURIComponent;
const when = (iso) => (iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", " UTC") : "");

// ---- teams, keys, quotas ---------------------------------------------------------------------
async function drawTeams(focusTeam = false) {
  const section = document.getElementById("view-teams");
  const teams = await attempt(() => api("GET", "/admin/teams"));
  const parts = [el("h1", { id: "teams-title", tabindex: "-1" }, "Teams and keys")];
  if (isPlatformAdmin()) {
    parts.push(el("form", { class: "card inline", id: "team-form", onsubmit: createTeam },
      el("h2", {}, "New team"),
      field("team-name", "Team name", el("input", { required: true, pattern: "[a-z0-9][a-z0-9._-]*", maxlength: 64 })),
      field("team-display", "Display name", el("input", { maxlength: 200 })),
      field("team-capture", "Capture level", el("select", {},
        ["full", "redacted", "metadata"].map((v) => el("option", { value: v }, v)))),
      el("button", { type: "submit" }, "Create team")));
  }
  const rows = (teams ? teams.data : []).map((t) => el("tr", {},
    el("td", {}, t.name), el("td", {}, t.display_name), el("td", {}, t.capture_level),
    el("td", {}, t.disabled ? "disabled" : "active"),
    el("td", {}, el("button", { type: "button", class: "quiet", onclick: () => openTeam(t.name),
      "aria-label": `Manage team ${t.name}` }, "Manage"))));
  parts.push(table("Teams", ["Name", "Display name", "Capture level", "State", ""], rows));
  parts.push(el("div", { id: "team-detail" }));
  section.replaceChildren(...parts);
  if (state.team_open) await openTeam(state.team_open, focusTeam);
}

async function createTeam(event) {
  event.preventDefault();
  const body = {
    name: document.getElementById("team-name").value.trim(),
    display_name: document.getElementById("team-display").value.trim(),
    capture_level: document.getElementById("team-capture").value,
  };
  const team = await attempt(() => api("POST", "/admin/teams", body), `Team ${body.name} created.`);
  if (team) { state.team_open = team.name; await drawTeams(true); say(`Team ${team.name} created.`); }
}

async function openTeam(name, focus = true) {
  state.team_open = name;
  const detail = document.getElementById("team-detail");
  const [keys, quotas, scheduling, models] = await Promise.all([
    attempt(() => api("GET", `/admin/teams/${enc(name)}/keys`)),
    attempt(() => api("GET", `/admin/teams/${enc(name)}/quotas`)),
    attempt(() => api("GET", `/admin/teams/${enc(name)}/scheduling`)),
    attempt(() => api("GET", `/admin/teams/${enc(name)}/models`)),
  ]);
  const heading = el("h2", { id: "team-detail-title", tabindex: "-1" }, `Team ${name}`);
  const keyRows = (keys ? keys.data : []).map((k) => el("tr", {},
    el("td", {}, k.id), el("td", {}, k.role), el("td", {}, k.description), el("td", {}, when(k.created_at)),
    el("td", {}, k.revoked_at ? `revoked ${when(k.revoked_at)}` : "active"),
    el("td", {}, k.revoked_at ? "" : el("button", { type: "button", class: "danger",
      "aria-label": `Revoke key ${k.id}`, onclick: () => revokeKey(k.id) }, "Revoke"))));
  const roles = ["user", "team_admin", ...(isPlatformAdmin() && name === "platform" ? ["platform_admin"] : [])];
  const keyForm = el("form", { class: "card inline", id: "key-create-form", onsubmit: (e) => createKey(e, name) },
    field("key-role", "Role", el("select", {}, roles.map((r) => el("option", { value: r }, r)))),
    field("key-description", "Description", el("input", { maxlength: 200 })),
    el("button", { type: "submit" }, "Create key"));
  const parts = [heading, el("div", { id: "new-key", "aria-live": "polite" }),
    table(`Keys of ${name}`, ["Key id", "Role", "Description", "Created", "State", ""], keyRows), keyForm];
  if (quotas) parts.push(quotaCard(name, quotas));
  if (scheduling) parts.push(schedulingCard(name, scheduling));
  if (models) parts.push(allowListCard(name, models));
  detail.replaceChildren(...parts);
  if (focus) heading.focus();
}

async function createKey(event, team) {
  event.preventDefault();
  const body = { role: document.getElementById("key-role").value,
    description: document.getElementById("key-description").value.trim() };
  const created = await attempt(() => api("POST", `/admin/teams/${enc(team)}/keys`, body));
  if (!created) return;
  await openTeam(team, false);
  const box = document.getElementById("new-key");
  box.replaceChildren(el("div", { class: "card" },
    el("p", {}, el("strong", {}, `New ${created.role} key ${created.id}`),
      " — shown only now; store it before leaving this page."),
    el("p", { class: "secret", id: "new-key-text", tabindex: "0", "aria-label": "The new API key" }, created.key)));
  say(`Key ${created.id} created.`);
  document.getElementById("new-key-text").focus();
}

async function revokeKey(id) {
  if (!window.confirm(`Revoke key ${id}? Requests with it are refused at once.`)) return;
  const done = await attempt(() => api("DELETE", `/admin/keys/${enc(id)}`), `Key ${id} revoked.`);
  if (done && state.team_open) { await openTeam(state.team_open, false); say(`Key ${id} revoked.`); }
}

const LIMITS = [["requests_per_minute", "Requests per minute"], ["tokens_per_minute", "Tokens per minute"],
  ["max_concurrent", "Concurrent requests"], ["tokens_per_day", "Tokens per day"], ["tokens_per_month", "Tokens per month"]];

function quotaCard(team, quotas) {
  const limits = quotas.limits || {};
  const card = el("form", { class: "card", id: "quota-form", onsubmit: (e) => saveQuotas(e, team) },
    el("h2", {}, "Quotas"), el("p", { class: "muted" }, `Source: ${quotas.source || "defaults"}. Empty: unlimited.`));
  const row = el("div", { class: "inline" });
  for (const [key, label] of LIMITS) {
    const input = el("input", { type: "number", min: 0, step: 1, value: limits[key] ?? "",
      readonly: !isPlatformAdmin() });
    row.append(field(`quota-${key}`, label, input));
  }
  card.append(row);
  if (isPlatformAdmin()) card.append(el("p", {}, el("button", { type: "submit" }, "Save quotas")));
  return card;
}

async function saveQuotas(event, team) {
  event.preventDefault();
  const body = {};
  for (const [key] of LIMITS) {
    const value = document.getElementById(`quota-${key}`).value.trim();
    body[key] = value === "" ? null : Number(value);
  }
  const saved = await attempt(() => api("PUT", `/admin/teams/${enc(team)}/quotas`, body), `Quotas of ${team} saved.`);
  if (saved) { await openTeam(team, false); say(`Quotas of ${team} saved.`); }
}

function schedulingCard(team, view) {
  const card = el("form", { class: "card", id: "scheduling-form", onsubmit: (e) => saveScheduling(e, team) },
    el("h2", {}, "Priority and weight"),
    el("p", { class: "muted" }, "A lower class is served first; within a class, teams share by weight."));
  card.append(el("div", { class: "inline" },
    field("sched-priority", "Priority class", el("input", { type: "number", step: 1, value: view.priority, readonly: !isPlatformAdmin() })),
    field("sched-weight", "Weight", el("input", { type: "number", step: "any", min: 0, value: view.weight, readonly: !isPlatformAdmin() }))));
  if (isPlatformAdmin()) card.append(el("p", {}, el("button", { type: "submit" }, "Save priority and weight")));
  return card;
}

async function saveScheduling(event, team) {
  event.preventDefault();
  const body = { priority: Number(document.getElementById("sched-priority").value),
    weight: Number(document.getElementById("sched-weight").value) };
  await attempt(() => api("PUT", `/admin/teams/${enc(team)}/scheduling`, body), `Priority and weight of ${team} saved.`);
}

function allowListCard(team, view) {
  const allowed = view.allowed_models;
  const card = el("form", { class: "card", id: "allow-form", onsubmit: (e) => saveAllowList(e, team) },
    el("h2", {}, "Models this team may use"),
    el("p", {}, `Allow-list: ${allowed === null ? "none (every approved model)" : allowed.join(", ") || "no model"}. `,
      `Usable now: ${view.usable_models.join(", ") || "none"}.`));
  if (isPlatformAdmin()) {
    card.append(field("allow-models", "Allow-list (comma-separated; empty: every approved model)",
      el("input", { value: allowed ? allowed.join(", ") : "" })),
    el("p", {}, el("button", { type: "submit" }, "Save allow-list")));
  }
  return card;
}

async function saveAllowList(event, team) {
  event.preventDefault();
  const text = document.getElementById("allow-models").value.trim();
  const models = text ? text.split(",").map((m) => m.trim()).filter(Boolean) : null;
  const path = `/admin/teams/${enc(team)}/models`;
  const done = await attempt(() => (models ? api("PUT", path, { allowed_models: models }) : api("DELETE", path)),
    `Allow-list of ${team} saved.`);
  if (done) { await openTeam(team, false); say(`Allow-list of ${team} saved.`); }
}

// ---- usage -----------------------------------------------------------------------------------
async function drawUsage() {
  const section = document.getElementById("view-usage");
  const teams = isPlatformAdmin() ? await attempt(() => api("GET", "/admin/teams")) : null;
  const teamSelect = el("select", {}, isPlatformAdmin() ? el("option", { value: "" }, "All teams") : null,
    (teams ? teams.data.map((t) => t.name) : [state.team]).map((n) => el("option", { value: n }, n)));
  const bucket = el("select", {}, el("option", { value: "hour" }, "Last 24 hours, by hour"),
    el("option", { value: "day" }, "Last 30 days, by day"));
  const form = el("form", { class: "card inline", id: "usage-form", onsubmit: (e) => { e.preventDefault(); loadUsage(); } },
    field("usage-team", "Team", teamSelect), field("usage-bucket", "Period", bucket),
    el("button", { type: "submit" }, "Show usage"));
  section.replaceChildren(el("h1", { id: "usage-title", tabindex: "-1" }, "Usage"), form, el("div", { id: "usage-charts" }));
  await loadUsage();
}

async function loadUsage() {
  const team = document.getElementById("usage-team").value;
  const bucket = document.getElementById("usage-bucket").value;
  const hours = bucket === "hour" ? 1 : 24;
  const count = bucket === "hour" ? 24 : 30;
  const end = new Date();
  end.setUTCMinutes(0, 0, 0);
  if (bucket === "day") end.setUTCHours(0);
  const until = new Date(end.getTime() + hours * 3600e3);
  const since = new Date(until.getTime() - count * hours * 3600e3);
  const query = new URLSearchParams({ bucket, since: since.toISOString(), until: until.toISOString() });
  if (team) query.set("team", team);
  const series = await attempt(() => api("GET", `/admin/usage/series?${query}`));
  if (!series) return;
  const starts = [];
  for (let i = 0; i < count; i++) starts.push(new Date(since.getTime() + i * hours * 3600e3));
  const sum = (metric) => starts.map((start) => {
    const rows = series.data.filter((r) => new Date(r.start).getTime() === start.getTime());
    if (metric === "latency") {
      const values = rows.map((r) => r.latency_ms_p50).filter((v) => v !== null);
      return values.length ? Math.max(...values) : 0;
    }
    if (metric === "tokens") return rows.reduce((a, r) => a + r.prompt_tokens + r.completion_tokens, 0);
    return rows.reduce((a, r) => a + r[metric], 0);
  });
  const label = (d) => (bucket === "hour" ? `${String(d.getUTCHours()).padStart(2, "0")}h` : `${d.getUTCMonth() + 1}/${d.getUTCDate()}`);
  const byModel = {};
  for (const r of series.data) {
    const key = `${r.team || "-"} / ${r.model || "-"}`;
    byModel[key] = byModel[key] || { requests: 0, tokens: 0, refusals: 0 };
    byModel[key].requests += r.requests; byModel[key].tokens += r.prompt_tokens + r.completion_tokens;
    byModel[key].refusals += r.refusals;
  }
  document.getElementById("usage-charts").replaceChildren(
    el("div", { class: "grid" },
      chart("Requests", starts.map(label), sum("requests")),
      chart("Tokens (prompt + completion)", starts.map(label), sum("tokens")),
      chart("Refusals", starts.map(label), sum("refusals"), "refused"),
      chart("Latency, median (ms)", starts.map(label), sum("latency"))),
    table("Totals per team and model", ["Team / model", "Requests", "Tokens", "Refusals"],
      Object.entries(byModel).map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, v.requests),
        el("td", {}, v.tokens), el("td", {}, v.refusals)))));
}

function chart(title, labels, values, kind) {
  const width = 480, height = 180, left = 44, bottom = 22, top = 10;
  const max = Math.max(1, ...values);
  const step = (width - left - 8) / values.length;
  const bars = values.map((v, i) => {
    const h = ((height - top - bottom) * v) / max;
    return svgEl("rect", { class: `bar ${kind || ""}`, x: left + i * step + 1, y: height - bottom - h,
      width: Math.max(1, step - 2), height: h }, svgEl("title", {}, `${labels[i]}: ${v}`));
  });
  const ticks = labels.map((l, i) => (i % Math.ceil(labels.length / 8) === 0
    ? svgEl("text", { x: left + i * step, y: height - 6 }, l) : null));
  const total = values.reduce((a, b) => a + b, 0);
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${title}: ${total} in total, at most ${max} in one period` },
  svgEl("line", { class: "axis", x1: left, y1: height - bottom, x2: width - 4, y2: height - bottom }),
  svgEl("line", { class: "axis", x1: left, y1: top, x2: left, y2: height - bottom }),
  svgEl("text", { x: 2, y: top + 10 }, String(Math.round(max))), svgEl("text", { x: 2, y: height - bottom }, "0"),
  bars, ticks);
  return el("figure", { class: "chart" }, el("figcaption", {}, el("strong", {}, title)), svg);
}

// ---- models and workers ----------------------------------------------------------------------
async function drawModels() {
  const section = document.getElementById("view-models");
  const [models, ready] = await Promise.all([
    attempt(() => api("GET", "/admin/models")),
    fetch("/readyz", { credentials: "omit" }).then((r) => r.json()).catch(() => null),
  ]);
  const rows = (models ? models.data : []).map((m, i) => {
    const cells = [el("td", {}, m.model), el("td", {}, m.status), el("td", {}, m.note || ""),
      el("td", {}, m.served ? "yes" : "no")];
    if (isPlatformAdmin()) {
      const select = el("select", { id: `model-status-${i}`, "aria-label": `New status of ${m.model}` },
        ["approved", "pilot", "retired"].map((s) => el("option", { value: s, selected: s === m.status }, s)));
      const note = el("input", { id: `model-note-${i}`, "aria-label": `Note for ${m.model}`, value: m.note || "" });
      cells.push(el("td", {}, select, " ", note, " ",
        el("button", { type: "button", onclick: () => setModelStatus(m.model, select.value, note.value) }, "Set")));
    }
    return el("tr", {}, cells);
  });
  const headers = ["Model", "Status", "Note", "Served", ...(isPlatformAdmin() ? ["Change"] : [])];
  const workers = ready ? Object.entries(ready.models).map(([name, m]) => el("tr", {},
    el("td", {}, name), el("td", { class: m.ready ? "ok" : "error" }, m.ready ? "ready" : "not ready"),
    el("td", {}, `${m.ready_workers} of ${m.workers}`))) : [];
  section.replaceChildren(el("h1", { id: "models-title", tabindex: "-1" }, "Models and workers"),
    table("Model approvals", headers, rows),
    el("h2", {}, "Workers"),
    ready ? el("p", {}, `Gateway ${ready.ready ? "ready" : "not ready"}${ready.draining ? ", draining" : ""}.`) : null,
    table("Workers per model", ["Model", "State", "Ready workers"], workers));
}

async function setModelStatus(model, status, note) {
  const done = await attempt(() => api("PUT", `/admin/models/${enc(model)}`, { status, note }), `${model}: ${status}.`);
  if (done) { await drawModels(); say(`${model}: ${status}.`); }
}

// ---- audit log -------------------------------------------------------------------------------
const AUDIT_FIELDS = [["team", "Team"], ["subject", "User (subject)"], ["model", "Model"]];

async function drawAudit() {
  const section = document.getElementById("view-audit");
  const status = el("select", {}, ["", "ok", "error", "cancelled", "rejected", "incomplete", "denied"]
    .map((s) => el("option", { value: s }, s || "any")));
  const kind = el("select", {}, ["", "request", "admin", "access", "purge"].map((s) => el("option", { value: s }, s || "any")));
  const form = el("form", { class: "card", id: "audit-form", onsubmit: (e) => { e.preventDefault(); searchAudit(); } },
    el("h2", {}, "Search records"),
    el("div", { class: "inline" },
      AUDIT_FIELDS.map(([key, label]) => field(`audit-${key}`, label, el("input", { maxlength: 256 }))),
      field("audit-since", "From (UTC)", el("input", { type: "datetime-local" })),
      field("audit-until", "Until (UTC)", el("input", { type: "datetime-local" })),
      field("audit-status", "Status", status), field("audit-kind", "Kind", kind),
      isAuditor() ? field("audit-text", "Text in prompts and answers", el("input", { maxlength: 200 })) : null),
    el("p", {}, el("button", { type: "submit" }, "Search"), " ",
      el("button", { type: "button", class: "quiet", onclick: exportAudit }, isAuditor() ? "Export this range, signed (JSON lines)" : "Export this range (JSON lines)"), " ",
      isAuditor() ? el("a", { class: "button quiet-link", href: "/audit/checkpoints", download: "" },
        "Download the signed checkpoints") : null));
  const parts = [el("h1", { id: "audit-title", tabindex: "-1" }, "Audit log"), form, el("div", { id: "audit-results" }),
    el("div", { id: "audit-record" })];
  if (isAuditor()) {
    parts.splice(1, 0, el("div", { class: "card", id: "verification" },
      el("h2", {}, "Verification"), el("p", { id: "verification-result" }, "…"),
      el("button", { type: "button", onclick: runVerification }, "Verify the log now")));
  }
  section.replaceChildren(...parts);
  if (isAuditor()) {
    const last = await attempt(() => api("GET", "/audit/verification"));
    if (last) showVerification(last.last);
  }
  await searchAudit();
}

function auditQuery() {
  const query = new URLSearchParams();
  for (const [key] of AUDIT_FIELDS) {
    const value = document.getElementById(`audit-${key}`).value.trim();
    if (value) query.set(key, value);
  }
  for (const key of ["since", "until"]) {
    const value = document.getElementById(`audit-${key}`).value;
    if (value) query.set(key, `${value}:00+00:00`);
  }
  for (const key of ["status", "kind", "text"]) {
    const box = document.getElementById(`audit-${key}`);
    const value = box ? box.value.trim() : "";
    if (value) query.set(key, value);
  }
  return query;
}

async function searchAudit() {
  const query = auditQuery();
  query.set("limit", "100");
  const page = await attempt(() => api("GET", `/audit/records?${query}`));
  if (!page) return;
  const records = page.data;
  const rows = records.map((r) => el("tr", {},
    el("td", {}, when(r.received_at || r.occurred_at || (r.entries && r.entries[0].recorded_at))),
    el("td", {}, r.kind || ""), el("td", {}, r.team || ""), el("td", {}, r.subject || ""),
    el("td", {}, r.model || ""), el("td", {}, r.status || r.action || ""),
    el("td", {}, el("button", { type: "button", class: "quiet", "aria-label": `Open record ${r.id}`,
      onclick: () => openRecord(r.id) }, "Open"))));
  document.getElementById("audit-results").replaceChildren(
    table(`${records.length} record(s)${page.next_cursor ? " (first 100)" : ""}`,
      ["Time", "Kind", "Team", "User", "Model", "Status / action", ""], rows));
}

async function openRecord(id) {
  const record = await attempt(() => api("GET", `/audit/records/${enc(id)}`));
  if (!record) return;
  const chain = (record.entries || []).map((e) => el("tr", {}, el("td", {}, e.seq), el("td", {}, e.kind),
    el("td", {}, e.entry_hash), el("td", {}, when(e.recorded_at))));
  const heading = el("h2", { tabindex: "-1" }, `Record ${id}`);
  document.getElementById("audit-record").replaceChildren(heading,
    table("Position in the chain", ["Sequence", "Entry", "Entry hash", "Recorded"], chain),
    el("pre", { tabindex: "0", "aria-label": "The record" }, JSON.stringify(record, null, 2)));
  heading.focus();
}

function showVerification(report) {
  const box = document.getElementById("verification-result");
  if (!report) { box.textContent = "Not verified from this gateway yet."; box.className = "muted"; return; }
  box.className = report.ok ? "ok" : "error";
  box.textContent = report.ok
    ? `Intact: ${report.entries} entries (seq ${report.first_seq}…${report.last_seq}), ${report.checkpoints_checked} signed checkpoints, head ${report.head_signed ? "signed" : "not verified"}; checked ${when(report.finished_at)} by ${report.by}.`
    : `FAILED: ${report.first_problem} (${report.problems} problem(s)); checked ${when(report.finished_at)} by ${report.by}.`;
}

async function runVerification() {
  say("Verifying…");
  const report = await attempt(() => api("POST", "/audit/verification"), "Verification finished.");
  if (report) showVerification(report);
}

function exportAudit() {
  const query = auditQuery();
  query.set("format", "jsonl");
  if (isAuditor()) query.set("signed", "true");
  window.location.assign(`/audit/export?${query}`);
}

// ---- start -----------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("key-form").addEventListener("submit", signInWithKey);
  document.getElementById("sign-out").addEventListener("click", signOut);
  document.getElementById("team-choice").addEventListener("change", chooseTeam);
  loadSession().catch((error) => say(error.message, true));
});
