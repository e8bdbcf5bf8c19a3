// The run-watch page: the run list (fetch), one run followed live (EventSource), cancel, start.
//
// Authentication: a key typed into the page lives in sessionStorage and is sent as
// `Authorization: Bearer <key>` on every fetch. EventSource cannot send headers, so the page
// asks the server for a session cookie (`POST /v1/session`, with the header) that the stream
// requests then carry; a server without sessions answers 404 and needs none. Keys never go in
// a URL.
"use strict";

const KEY_STORE = "rayruns.apiKey";
const LIST_REFRESH_MS = 2000;
const $ = (id) => document.getElementById(id);

let apiKey = sessionStorage.getItem(KEY_STORE) || "";
let followed = null; // the RunView of the run on the right

class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

function authHeaders() {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

async function detailOf(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    return response.statusText || "error";
  }
}

async function api(method, path, body) {
  const init = { method, headers: authHeaders() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw new ApiError(response.status, await detailOf(response));
  return response.json();
}

const runPath = (id, action = "") => `/v1/runs/${encodeURIComponent(id)}${action}`;

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

function showError(node, error) {
  node.textContent = error ? String(error.message || error) : "";
  node.hidden = !error;
}

// ---- the API key ------------------------------------------------------------------------

async function useKey(key) {
  apiKey = key;
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
  $("key-state").textContent = key ? "key set" : "";
  if (!key) return;
  try {
    await api("POST", "/v1/session");
    $("key-state").textContent = "key set; streams authorised";
  } catch (error) {
    if (error.status === 404 || error.status === 405) return; // no sessions: keys are off
    $("key-state").textContent = `key refused (${error.detail})`;
  }
}

// ---- the run list -----------------------------------------------------------------------

function fmtTime(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "";
}

function fmtDuration(run) {
  const start = Date.parse(run.created_at);
  const end = run.completed_at ? Date.parse(run.completed_at) : Date.now();
  const seconds = (end - start) / 1000;
  return `${seconds.toFixed(1)} s${run.completed_at ? "" : " …"}`;
}

function runRow(run) {
  const follow = el("button", { type: "button", textContent: run.id, title: "follow this run" });
  follow.addEventListener("click", () => followRun(run.id));
  const row = el(
    "tr",
    {},
    el("td", {}, follow),
    el("td", {}, el("span", { className: `badge ${run.status}`, textContent: run.status })),
    el("td", { textContent: run.model }),
    el("td", { textContent: fmtTime(run.created_at), title: run.created_at }),
    el("td", { className: "num", textContent: fmtDuration(run) }),
    el("td", { className: "num", textContent: run.usage ? String(run.usage.total_tokens) : "" }),
  );
  row.dataset.runId = run.id;
  row.dataset.status = run.status;
  if (followed && followed.runId === run.id) row.classList.add("followed");
  return row;
}

let listing = null;
let listAgain = false;
async function loadRuns() {
  if (listing) {
    listAgain = true; // one list request at a time; the next one sees the latest filters
    return listing;
  }
  const params = new URLSearchParams({ limit: "100" });
  if ($("filter-status").value) params.set("status", $("filter-status").value);
  const conversation = $("filter-conversation").value.trim();
  if (conversation) params.set("conversation_id", conversation);
  listing = api("GET", `/v1/runs?${params}`)
    .then((runs) => {
      $("runs").tBodies[0].replaceChildren(...runs.map(runRow));
      showError($("runs-error"), null);
    })
    .catch((error) => showError($("runs-error"), error))
    .finally(() => {
      listing = null;
      if (listAgain) {
        listAgain = false;
        loadRuns();
      }
    });
  return listing;
}

// ---- one run, followed live -------------------------------------------------------------

// Frames are keyed on seq_id: one already shown is never shown twice, and a seq_id that skips
// is counted as a gap (the page asks for every message type, so seq_ids are consecutive).
class RunView {
  constructor(runId) {
    this.runId = runId;
    this.lastSeq = 0;
    this.gaps = 0;
    this.duplicates = 0;
    this.opens = 0;
    this.blocks = new Map(); // message id -> its element
    this.source = null;
    const view = $("run-view");
    Object.assign(view.dataset, { runId, lastSeq: "0", gaps: "0", duplicates: "0", reconnects: "0" });
    $("run-title").textContent = runId;
    $("run-hint").hidden = true;
    $("transcript").replaceChildren();
    $("run-end").hidden = true;
    $("stop-reason").textContent = "";
    $("usage").textContent = "";
    $("cancel-button").disabled = false;
    this.setState("connecting");
  }

  setState(state) {
    $("run-view").dataset.state = state;
    const badge = $("run-connection");
    badge.textContent = state === "reconnecting" ? `reconnecting (${this.opens})` : state;
    badge.className = `badge ${state}`;
  }

  open() {
    // Same origin: the session cookie, if any, goes with it. On a dropped connection the
    // browser reconnects by itself and sends Last-Event-ID, the last `id:` (= seq_id) it saw.
    this.source = new EventSource(runPath(this.runId, "/stream"));
    this.source.addEventListener("open", () => {
      this.opens += 1;
      $("run-view").dataset.reconnects = String(this.opens - 1);
      this.setState("live");
    });
    this.source.addEventListener("message", (event) => this.onData(event.data));
    // Both the server's `event: error` frames (MessageEvents with data) and the EventSource's
    // own connection errors arrive as "error".
    this.source.addEventListener("error", (event) => {
      if (event instanceof MessageEvent) this.onData(event.data);
      else this.onConnectionError();
    });
  }

  close() {
    if (this.source) this.source.close();
    this.source = null;
  }

  onConnectionError() {
    if (!this.source) return;
    if (this.source.readyState === EventSource.CONNECTING) {
      this.setState("reconnecting");
      return;
    }
    // Closed for good: the server refused the stream (e.g. 404). Say why.
    this.close();
    this.setState("closed");
    api("GET", runPath(this.runId)).catch((error) => this.showError(error.message));
  }

  onData(data) {
    if (data === "[DONE]") {
      this.close(); // otherwise EventSource would reconnect to a finished stream
      this.setState("done");
      $("cancel-button").disabled = true;
      loadRuns();
      return;
    }
    const frame = JSON.parse(data);
    if (frame.message_type === "ping") return;
    if (frame.seq_id <= this.lastSeq) {
      this.duplicates += 1;
      $("run-view").dataset.duplicates = String(this.duplicates);
      return;
    }
    if (frame.seq_id !== this.lastSeq + 1) {
      this.gaps += 1;
      $("run-view").dataset.gaps = String(this.gaps);
    }
    this.lastSeq = frame.seq_id;
    $("run-view").dataset.lastSeq = String(frame.seq_id);
    this.render(frame);
  }

  block(frame) {
    let node = this.blocks.get(frame.id);
    if (!node) {
      node = el("div", { className: `msg ${frame.message_type}` });
      node.dataset.messageId = frame.id;
      this.blocks.set(frame.id, node);
      $("transcript").append(node);
    }
    return node;
  }

  render(frame) {
    switch (frame.message_type) {
      case "assistant_message":
      case "reasoning_message":
        this.block(frame).append(frame.content);
        break;
      case "tool_call_message":
      case "approval_request_message": {
        const call = frame.tool_call;
        this.block(frame).textContent = `${call.name}(${call.arguments})  [${call.id}]`;
        break;
      }
      case "tool_return_message":
        this.block(frame).textContent = `${frame.status}: ${frame.content}  [${frame.tool_call_id}]`;
        break;
      case "error":
        this.showError(`${frame.error_type}: ${frame.message}`);
        break;
      case "stop_reason":
        $("stop-reason").textContent = frame.stop_reason;
        $("run-end").hidden = false;
        break;
      case "usage_statistics":
        $("usage").textContent =
          `${frame.prompt_tokens} prompt + ${frame.completion_tokens} completion tokens, ` +
          `${frame.step_count} step${frame.step_count === 1 ? "" : "s"}`;
        break;
      default:
        break; // a frame type this page does not know yet
    }
  }

  showError(message) {
    $("transcript").append(el("div", { className: "msg error", textContent: message }));
  }
}

function followRun(runId) {
  if (followed) followed.close();
  followed = new RunView(runId);
  followed.open();
  history.replaceState(null, "", `#run=${encodeURIComponent(runId)}`);
  for (const row of $("runs").tBodies[0].rows) {
    row.classList.toggle("followed", row.dataset.runId === runId);
  }
}

async function cancelFollowed() {
  if (!followed) return;
  $("cancel-button").disabled = true;
  try {
    await api("POST", runPath(followed.runId, "/cancel"));
  } catch (error) {
    followed.showError(error.message);
    $("cancel-button").disabled = false;
  }
  loadRuns();
}

// ---- starting a run ---------------------------------------------------------------------

// The POST streams the run; the page reads its X-Run-Id and then follows the run through
// EventSource like any other. A background run outlives its POST, so that is aborted at once.
// A foreground run lives as long as its POST: the page keeps reading (and dropping) that body
// until the run ends, and leaving the page cancels the run, as for any client.
async function startRun(event) {
  event.preventDefault();
  showError($("start-error"), null);
  let options = {};
  const rawOptions = $("start-options").value.trim();
  if (rawOptions) {
    try {
      options = JSON.parse(rawOptions);
    } catch {
      showError($("start-error"), "provider options: not valid JSON");
      return;
    }
  }
  const background = $("start-background").checked;
  const body = {
    model: $("start-model").value.trim(),
    messages: [{ role: "user", content: $("start-prompt").value }],
    stream: true,
    background,
    provider_options: options,
  };
  const controller = new AbortController();
  $("start-button").disabled = true;
  try {
    const response = await fetch("/v1/runs", {
      method: "POST",
      headers: { ...authHeaders(), "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw new ApiError(response.status, await detailOf(response));
    const runId = response.headers.get("X-Run-Id");
    if (background) controller.abort();
    else holdOpen(response.body);
    followRun(runId);
    loadRuns();
  } catch (error) {
    showError($("start-error"), error);
  } finally {
    $("start-button").disabled = false;
  }
}

async function holdOpen(body) {
  const reader = body.getReader();
  try {
    while (!(await reader.read()).done);
  } catch {
    // the connection dropped: the server has cancelled the foreground run
  }
}

// ---- wiring -----------------------------------------------------------------------------

function init() {
  $("api-key").value = apiKey;
  if (apiKey) useKey(apiKey);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    useKey($("api-key").value.trim()).then(loadRuns);
  });
  $("start-form").addEventListener("submit", startRun);
  $("filter-form").addEventListener("submit", (event) => event.preventDefault());
  $("filter-status").addEventListener("change", loadRuns);
  $("filter-conversation").addEventListener("input", loadRuns);
  $("cancel-button").addEventListener("click", cancelFollowed);
  const match = location.hash.match(/^#run=(.+)$/);
  if (match) followRun(decodeURIComponent(match[1]));
  loadRuns();
  setInterval(() => {
    if (!document.hidden) loadRuns();
  }, LIST_REFRESH_MS);
}

init();
