// ocpipe's LLM API tracer for OpenCode (installed by `ocpipe tracer install`).
// Wraps globalThis.fetch and writes each LLM call as JSONL records (kind request / response /
// error; id, timestamp, sessionID, method, url, headers, body | status, statusText | error),
// one file per session named `<time>-<title>.jsonl` in the trace directory: the `dir` option,
// else $OPENCODE_API_TRACER_DIR, else ~/opencode-api-tracer. Only LLM calls are recorded: a
// request with a session header, or a POST to /messages, /chat/completions or /responses.
// Credential headers are redacted here, at the source; files are 0600. A diagnostic log
// (metadata only, no bodies, no header values) goes to opencode-api-tracer.debug.jsonl in the
// same directory ($OPENCODE_API_TRACER_DEBUG_FILE moves it, OPENCODE_API_TRACER_DEBUG=0 turns
// it off). A failure here never breaks OpenCode.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const INSTALLED_DIR = null; // set by `ocpipe tracer install --dir`
const LLM_PATH = /\/(messages|chat\/completions|responses)(\?|$)/;
const SESSION_HEADERS = ["x-session-id", "x-opencode-session", "x-session-affinity"];
// Names of headers and query parameters whose values are credentials, and values that are.
const SECRET = /auth|key|token|secret|passw|cookie|credential|signature|^sig$|^code$/i;
const SECRET_VALUE = /^(bearer|basic)\s|^sk-|^xox[a-z]-|^gh[pousr]_|^AIza/i;
const KEEP = new Set(["x-session-id", "x-opencode-session", "x-session-affinity", "x-parent-session-id"]);

let dir = null;
let nextId = 0;
const files = new Map();
const counts = { seen: 0, traced: 0, skipped: 0, written: 0, errors: 0 };

function expandHome(p) {
  return p && p.startsWith("~/") ? path.join(os.homedir(), p.slice(2)) : p;
}

function debugFile() {
  if (process.env.OPENCODE_API_TRACER_DEBUG === "0") return null;
  if (process.env.OPENCODE_API_TRACER_DEBUG_FILE) return process.env.OPENCODE_API_TRACER_DEBUG_FILE;
  return dir ? path.join(dir, "opencode-api-tracer.debug.jsonl") : null;
}

function debug(event, fields = {}) {
  try {
    const file = debugFile();
    if (!file) return;
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    fs.appendFileSync(file, JSON.stringify({ time: new Date().toISOString(), event, pid: process.pid, ...fields }) + "\n", { mode: 0o600 });
  } catch {
    // diagnostics must never break OpenCode
  }
}

function secret(name, value) {
  return !KEEP.has(name.toLowerCase()) && (SECRET.test(name) || SECRET_VALUE.test(String(value)));
}

function redact(headers) {
  const out = {};
  for (const [k, v] of Object.entries(headers)) out[k] = secret(k, v) ? "[REDACTED]" : v;
  return out;
}

/// The URL without user:password and with credential-like query values redacted.
function redactUrl(url) {
  try {
    const u = new URL(url);
    if (u.username || u.password) {
      u.username = "";
      u.password = "";
    }
    for (const [k, v] of [...u.searchParams.entries()]) if (secret(k, v)) u.searchParams.set(k, "[REDACTED]");
    return u.toString();
  } catch {
    return url;
  }
}

/// The request body as text, without consuming what the caller sends.
async function bodyText(input, init) {
  const b = init.body;
  if (b == null) {
    if (input && typeof input === "object" && typeof input.clone === "function") return await input.clone().text();
    return "";
  }
  if (typeof b === "string") return b;
  if (b instanceof URLSearchParams) {
    const p = new URLSearchParams(b);
    for (const [k, v] of [...p.entries()]) if (secret(k, v)) p.set(k, "[REDACTED]");
    return p.toString();
  }
  if (b instanceof ArrayBuffer || ArrayBuffer.isView(b)) return new TextDecoder().decode(b);
  if (typeof Blob !== "undefined" && b instanceof Blob) return await b.text();
  if (typeof FormData !== "undefined" && b instanceof FormData) {
    return JSON.stringify(Object.fromEntries([...b.entries()].map(([k, v]) => [k, typeof v === "string" && !secret(k, v) ? v : "[not recorded]"])));
  }
  return "[stream: not recorded]";
}

function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/// The first user prompt of a request body: the session file's title.
function titleOf(body) {
  const messages = (body && (body.messages || body.input)) || [];
  for (const m of Array.isArray(messages) ? messages : []) {
    if (m && m.role === "user") {
      const c = m.content;
      const text = typeof c === "string" ? c : Array.isArray(c) ? c.map((p) => p.text || "").join(" ") : "";
      if (text.trim()) return text;
    }
  }
  return "";
}

function fileFor(sessionID, body) {
  if (!files.has(sessionID)) {
    const now = new Date();
    const pad = (n) => String(n).padStart(2, "0");
    const stamp = `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}-${pad(now.getHours())}-${pad(now.getMinutes())}-${pad(now.getSeconds())}`;
    const title = (titleOf(body) || sessionID).replace(/[^\p{L}\p{N} _-]/gu, "").replace(/\s+/g, " ").trim().slice(0, 40) || sessionID;
    files.set(sessionID, path.join(dir, `${stamp}-${title}.jsonl`));
  }
  return files.get(sessionID);
}

function write(sessionID, body, record) {
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fs.appendFileSync(fileFor(sessionID, body), JSON.stringify(record) + "\n", { mode: 0o600 });
    counts.written++;
    debug("jsonl.write.success", { kind: record.kind, id: record.id });
  } catch (e) {
    counts.errors++;
    debug("jsonl.write.error", { kind: record.kind, id: record.id, error: String((e && e.code) || "write failed") });
  }
}

function install(options) {
  if (globalThis.fetch && globalThis.fetch.__ocpipeTracer) return;
  dir = expandHome((options && options.dir) || INSTALLED_DIR || process.env.OPENCODE_API_TRACER_DIR || "~/opencode-api-tracer");
  debug("install.start", { dir });
  const original = globalThis.fetch;
  const traced = async function tracedFetch(input, init = {}) {
    let url, method, headers, text;
    try {
      url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
      method = (init.method || (input && input.method) || "GET").toUpperCase();
      headers = Object.fromEntries(new Headers(init.headers || (input && input.headers) || {}).entries());
    } catch {
      return original(input, init);
    }
    counts.seen++;
    debug("fetch.seen", { method, host: (() => { try { return new URL(url).host; } catch { return "?"; } })() });
    const sessionHeader = SESSION_HEADERS.map((h) => headers[h]).find(Boolean);
    const llm = method === "POST" && LLM_PATH.test(new URL(url, "http://x").pathname);
    if (!sessionHeader && !llm) {
      counts.skipped++;
      debug("fetch.skipped", { reason: method !== "POST" ? "not a POST" : "not an LLM endpoint and no session header" });
      return original(input, init);
    }
    const id = ++nextId;
    const sessionID = sessionHeader || `run_${process.pid}_${id}`;
    try {
      text = await bodyText(input, init);
    } catch {
      text = "";
    }
    const body = parse(text);
    counts.traced++;
    debug("fetch.traced", { id, sessionID });
    const base = { id, sessionID, method, url: redactUrl(url) };
    write(sessionID, body, { kind: "request", ...base, timestamp: new Date().toISOString(), headers: redact(headers), body });
    let res;
    try {
      res = await original(input, init);
    } catch (e) {
      write(sessionID, body, { kind: "error", ...base, timestamp: new Date().toISOString(), error: String(e && e.message) });
      throw e;
    }
    // The caller gets its response whatever happens to the copy read here.
    try {
      res.clone().text().then(
        (text) =>
          write(sessionID, body, {
            kind: "response",
            ...base,
            timestamp: new Date().toISOString(),
            status: res.status,
            statusText: res.statusText,
            headers: redact(Object.fromEntries(res.headers.entries())),
            body: parse(text),
          }),
        (e) => write(sessionID, body, { kind: "error", ...base, timestamp: new Date().toISOString(), error: String(e && e.message) }),
      );
    } catch (e) {
      debug("response.unreadable", { id, error: String(e && e.name) });
    }
    return res;
  };
  traced.__ocpipeTracer = true;
  globalThis.fetch = traced;
  debug("install.patched", {});
  process.once("exit", () => debug("process.summary", { ...counts }));
}

export const OcpipeApiTracer = async (_ctx, options) => {
  try {
    install(options);
  } catch (e) {
    debug("install.error", { error: String(e && e.message) });
  }
  return {};
};
