// chatq playground: chat with the models through chatq's public API only.
//
//   GET  v1/models                 fill the model list
//   POST v1/jobs                   one job per message (Prefer: respond-async), continuing
//                                  the conversation with the first job's conversation_id
//   GET  v1/jobs/{id}              the queue position while the job waits
//   GET  v1/jobs/{id}/events       its tokens as Server-Sent Events, read with fetch():
//                                  EventSource cannot send an Authorization header
//   POST v1/jobs/{id}/cancel       the Stop button
//
// The API key stays in this tab (sessionStorage). Model output is shown as text, never
// as HTML. URLs are relative to the page, so chatq may sit behind a path prefix.

const KEY_STORAGE = "chatq.apiKey";
const POSITION_POLL_MS = 700;
const MAX_RECONNECTS = 5; // consecutive stream drops without news before giving up

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const state = {
  conversationId: null,
  job: null, // {id, bubble} while a job runs
  modelsRequest: 0, // only the latest model list request updates the page
};

// ---- the API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || `http_${status}`;
    this.details = error.details;
  }
}

function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

async function api(path, { method = "GET", body, extraHeaders = {} } = {}) {
  const init = { method, headers: headers(extraHeaders), cache: "no-store" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    throw new ApiError(response.status, await response.json().catch(() => null));
  }
  return response;
}

const apiJson = async (path, options) => (await api(path, options)).json();

// ---- Server-Sent Events over fetch() ---------------------------------------------------

function parseEvent(block) {
  let event = "message";
  let id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // blank, or a keep-alive comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  return data.length ? { event, id, data: JSON.parse(data.join("\n")) } : null;
}

/** Read a text/event-stream response to its end, calling onEvent for each event. */
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = parseEvent(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (event) onEvent(event);
    }
  }
}

// ---- the page --------------------------------------------------------------------------

function showError(error) {
  const box = $("error");
  if (error instanceof ApiError) {
    box.textContent = `${error.status} ${error.code}: ${error.message}`;
  } else {
    box.textContent = `${error.message || error} (is chatq reachable?)`;
  }
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function addMessage(role, text, label = role) {
  const item = document.createElement("li");
  item.className = `msg ${role}`;
  const head = document.createElement("div");
  head.className = "role";
  head.textContent = label;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  item.append(head, body);
  if (role === "assistant") {
    const status = document.createElement("div");
    status.className = "status";
    item.append(status);
    item.dataset.tokenEvents = "0";
  }
  $("messages").append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("new-chat").disabled = busy;
  $("model").disabled = busy;
}

function showConversation() {
  $("conversation-id").textContent = state.conversationId || "new";
}

const ms = (value) => (value < 1000 ? `${Math.round(value)} ms` : `${(value / 1000).toFixed(1)} s`);

function summary(job) {
  const parts = [job.status];
  if (job.finish_reason) parts.push(`finish: ${job.finish_reason}`);
  if (job.usage) {
    parts.push(`${job.usage.prompt_tokens} prompt + ${job.usage.completion_tokens} completion tokens`);
  }
  const t = job.timings || {};
  if (t.queue_wait_ms != null) parts.push(`queued ${ms(t.queue_wait_ms)}`);
  if (t.ttft_ms != null) parts.push(`first token ${ms(t.ttft_ms)}`);
  if (t.duration_ms != null) parts.push(`took ${ms(t.duration_ms)}`);
  if (t.tokens_per_s != null) parts.push(`${t.tokens_per_s.toFixed(1)} tokens/s`);
  if (job.history_messages) parts.push(`${job.history_messages} earlier messages in the prompt`);
  if (job.error) parts.push(`error ${job.error.code}: ${job.error.message}`);
  return parts.join(" · ");
}

function setStatus(bubble, status, text) {
  bubble.dataset.status = status;
  bubble.querySelector(".status").textContent = text;
}

function showQueued(bubble, job) {
  const ahead = job.position == null ? "" : ` · position ${job.position}`;
  bubble.dataset.position = job.position ?? "";
  setStatus(bubble, "queued", `queued${ahead}`);
}

function showJob(bubble, job) {
  if (job.status === "queued") showQueued(bubble, job);
  else if (job.status === "running") setStatus(bubble, "running", "running…");
  else setStatus(bubble, job.status, summary(job));
}

// ---- a job -----------------------------------------------------------------------------

/** Poll the job while it is queued, to show its position. */
async function watchQueue(jobId, bubble) {
  while (state.job?.id === jobId && bubble.dataset.status === "queued") {
    await sleep(POSITION_POLL_MS);
    if (state.job?.id !== jobId || bubble.dataset.status !== "queued") return;
    try {
      const job = await apiJson(`v1/jobs/${jobId}`);
      if (bubble.dataset.status === "queued" && job.status === "queued") showQueued(bubble, job);
    } catch {
      return; // the event stream reports what matters
    }
  }
}

/** Follow the job's event stream to its end; reconnects with Last-Event-ID. The final job. */
async function follow(jobId, bubble) {
  const text = bubble.querySelector(".text");
  let lastSeq = null;
  let final = null;
  let drops = 0;
  const onEvent = ({ event, data }) => {
    drops = 0;
    if (event === "token") {
      lastSeq = data.seq;
      text.textContent += data.text;
      bubble.dataset.tokenEvents = String(Number(bubble.dataset.tokenEvents) + 1);
      if (bubble.dataset.status !== "running") setStatus(bubble, "running", "running…");
    } else if (event === "status" && data.status === "running") {
      setStatus(bubble, "running", "running…");
    } else if (event === "done") {
      final = data;
    } else if (event === "error") {
      final = data.job;
    }
  };
  while (final === null) {
    const extraHeaders = lastSeq === null ? {} : { "Last-Event-ID": String(lastSeq) };
    try {
      await readEvents(await api(`v1/jobs/${jobId}/events`, { extraHeaders }), onEvent);
    } catch (error) {
      if (error instanceof ApiError) throw error;
    }
    if (final === null && ++drops > MAX_RECONNECTS) {
      throw new Error("lost the job's event stream");
    }
    if (final === null) await sleep(500 * drops);
  }
  return final;
}

async function send(content) {
  const body = { messages: [{ role: "user", content }] };
  if ($("model").value) body.model = $("model").value;
  if ($("max-tokens").value) body.max_tokens = Number($("max-tokens").value);
  if ($("temperature").value) body.temperature = Number($("temperature").value);
  if (state.conversationId) body.conversation_id = state.conversationId;

  clearError();
  setBusy(true);
  const question = addMessage("user", content, "you");
  const bubble = addMessage("assistant", "", body.model || "assistant");
  try {
    const job = await apiJson("v1/jobs", {
      method: "POST", body, extraHeaders: { Prefer: "respond-async" },
    });
    state.job = { id: job.id, bubble };
    state.conversationId = job.conversation_id;
    showConversation();
    bubble.dataset.jobId = job.id;
    bubble.querySelector(".role").textContent = job.model;
    showJob(bubble, job);
    watchQueue(job.id, bubble);
    showJob(bubble, await follow(job.id, bubble));
  } catch (error) {
    showError(error);
    if (bubble.dataset.jobId) {
      setStatus(bubble, "failed", `${error.message || error}`);
    } else { // not submitted: give the text back to try again
      bubble.remove();
      question.classList.add("not-sent");
      question.querySelector(".role").textContent = "you (not sent)";
      if (!$("message").value) $("message").value = content;
    }
  } finally {
    state.job = null;
    setBusy(false);
  }
}

async function stop() {
  const job = state.job;
  if (!job) return;
  $("stop").disabled = true;
  job.bubble.querySelector(".status").textContent = "stopping…";
  try {
    await api(`v1/jobs/${job.id}/cancel`, { method: "POST" });
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 409)) showError(error); // 409: done
  }
}

async function loadModels() {
  const select = $("model");
  const request = ++state.modelsRequest;
  select.dataset.state = "loading";
  try {
    const { data } = await apiJson("v1/models");
    if (request !== state.modelsRequest) return;
    const previous = select.value;
    select.replaceChildren(...data.map((m) => new Option(`${m.id} (queue ${m.queue})`, m.id)));
    const chosen = data.find((m) => m.id === previous) || data.find((m) => m.default) || data[0];
    if (chosen) select.value = chosen.id;
    select.dataset.state = "ready";
    clearError();
  } catch (error) {
    if (request !== state.modelsRequest) return;
    select.replaceChildren();
    select.dataset.state = "error";
    showError(error);
  }
}

function init() {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("change", () => {
    if (key.value.trim()) sessionStorage.setItem(KEY_STORAGE, key.value.trim());
    else sessionStorage.removeItem(KEY_STORAGE);
    loadModels();
  });
  $("settings").addEventListener("submit", (event) => event.preventDefault());
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const content = $("message").value.trim();
    if (!content || state.job || $("send").disabled) return;
    $("message").value = "";
    send(content);
  });
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", () => {
    state.conversationId = null;
    showConversation();
    $("messages").replaceChildren();
    clearError();
  });
  loadModels();
}

init();
