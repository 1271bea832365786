// RiceBall playground: answers stream in as they are written, and can be stopped.
// Without this script the same forms post normally and the page shows each whole answer.
(() => {
  "use strict";

  function element(tag, className, text) {
    const node = document.createElement(tag);
    node.className = className;
    if (text !== undefined) node.textContent = text;  // text only: nothing the model writes is ever HTML
    return node;
  }

  function bubble(chat, role, text) {
    const message = element("div", `message message-${role}`);
    message.append(element("div", "message-role", role === "user" ? "You" : "Assistant"),
                   element("div", "message-text", text));
    if (role === "assistant") message.append(element("div", "message-meta", "…"));
    chat.append(message);
    return message;
  }

  function metaText(meta) {
    const parts = [];
    if (meta.prompt_tokens !== undefined) parts.push(`${meta.prompt_tokens} + ${meta.completion_tokens} tokens`);
    if (meta.latency_ms !== undefined) parts.push(`${Math.round(meta.latency_ms)} ms`);
    if (meta.cost_usd !== undefined) parts.push(`$${Number(meta.cost_usd).toFixed(6)}`);
    if (meta.model) parts.push(meta.model);
    if (meta.stopped) parts.push("stopped");
    return parts.join(" · ");
  }

  function finish(message, meta, state) {
    message.querySelector(".message-meta").textContent = metaText(meta);
    if (state) message.classList.add(`message-${state}`);
    if (meta.error) {  // said as an error, where the answer would have been
      const error = element("div", "message-error", `The answer failed: ${meta.error}`);
      error.setAttribute("role", "alert");
      message.querySelector(".message-text").after(error);
    }
  }

  // POST the message, and write the answer into `message` as its events arrive.
  async function send(url, fields, message, signal) {
    const text = message.querySelector(".message-text");
    let response;
    try {
      response = await fetch(url, {
        method: "POST", body: new URLSearchParams(fields), signal, credentials: "same-origin",
        headers: {"Accept": "text/event-stream", "X-CSRF-Token": fields.get("csrf_token")},
      });
    } catch (error) {
      finish(message, error.name === "AbortError" ? {stopped: true} : {error: "the gateway could not be reached"},
             error.name === "AbortError" ? "stopped" : "failed");
      return;
    }
    if (!response.ok || !(response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
      let error = `HTTP ${response.status}`;
      try { error = (await response.json()).error || error; } catch (ignored) { /* not JSON */ }
      finish(message, {error}, "failed");
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, {stream: true});
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const line = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (!line.startsWith("data: ")) continue;
          const event = JSON.parse(line.slice(6));
          if (event.delta) text.textContent += event.delta;
          if (event.done) finish(message, event.meta);
          if (event.error) finish(message, event.meta || {error: event.error}, "failed");
        }
      }
    } catch (error) {
      finish(message, error.name === "AbortError" ? {stopped: true} : {error: "the answer was cut short"},
             error.name === "AbortError" ? "stopped" : "failed");
    }
  }

  function busy(form, controller) {
    form.querySelector("[data-send]").disabled = Boolean(controller);
    const stop = form.querySelector("[data-stop]");
    stop.hidden = !controller;
    stop.onclick = controller ? () => controller.abort() : null;
  }

  // One conversation.
  const single = document.querySelector("form[data-playground]");
  if (single) {
    const chat = document.querySelector("[data-chat]");
    single.addEventListener("submit", async (event) => {
      event.preventDefault();
      const fields = new FormData(single);
      const content = String(fields.get("content") || "").trim();
      if (!content) return;
      bubble(chat, "user", content);
      const answer = bubble(chat, "assistant", "");
      single.querySelector("textarea").value = "";
      const controller = new AbortController();
      busy(single, controller);
      if ("newConversation" in single.dataset) {  // the first message: the conversation is made first
        let created;
        try {
          created = await fetch(single.action, {
            method: "POST", credentials: "same-origin",
            body: new URLSearchParams({csrf_token: fields.get("csrf_token")}),
            headers: {"Accept": "application/json", "X-CSRF-Token": fields.get("csrf_token")},
          });
        } catch (error) { created = {ok: false, status: "unreachable"}; }
        if (!created.ok) {
          finish(answer, {error: `the conversation could not be started (HTTP ${created.status})`}, "failed");
          busy(single, null);
          return;
        }
        const conversation = await created.json();
        single.action = conversation.send_url;
        delete single.dataset.newConversation;
        history.replaceState(null, "", conversation.url);  // a reload shows this conversation
      }
      await send(single.action, fields, answer, controller.signal);
      busy(single, null);
    });
  }

  // Two assistants side by side: each side a conversation of its own, both streaming at once.
  const compare = document.querySelector("form[data-compare]");
  if (compare) {
    const newUrl = compare.dataset.newUrl;
    const sendUrl = compare.dataset.sendUrl;
    for (const side of compare.querySelectorAll("[data-side]")) {
      side.querySelector("select").addEventListener("change", () => {  // another assistant: a new conversation
        side.querySelector("[data-conversation]").value = "";
        side.querySelector("[data-chat]").replaceChildren();
      });
    }
    compare.addEventListener("submit", async (event) => {
      event.preventDefault();
      const fields = new FormData(compare);
      const content = String(fields.get("content") || "").trim();
      if (!content) return;
      const controller = new AbortController();
      busy(compare, controller);
      compare.querySelector("textarea").value = "";
      await Promise.all([...compare.querySelectorAll("[data-side]")].map(async (side) => {
        const assistant = side.querySelector("select").value;
        const kept = side.querySelector("[data-conversation]");
        const chat = side.querySelector("[data-chat]");
        bubble(chat, "user", content);
        const answer = bubble(chat, "assistant", "");
        if (!kept.value) {
          const created = await fetch(newUrl.replace("ASSISTANT", assistant), {
            method: "POST", credentials: "same-origin",
            body: new URLSearchParams({csrf_token: fields.get("csrf_token")}),
            headers: {"Accept": "application/json", "X-CSRF-Token": fields.get("csrf_token")},
          });
          if (!created.ok) { finish(answer, {error: `HTTP ${created.status}`}, "failed"); return; }
          const conversation = await created.json();
          kept.value = conversation.id;
          const link = element("a", "", "Open this conversation");
          link.href = conversation.url;
          const note = element("p", "");
          note.append(link);
          chat.before(note);
        }
        const message = new URLSearchParams({csrf_token: fields.get("csrf_token"), content});
        await send(sendUrl.replace("CONVERSATION", kept.value), message, answer, controller.signal);
      }));
      busy(compare, null);
    });
  }
})();
