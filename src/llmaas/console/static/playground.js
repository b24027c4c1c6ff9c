// The playground: streams an answer from /console/playground/chat (OpenAI chunks over SSE) into the page.
// Every piece of user or model text goes in as textContent, never as HTML.
"use strict";
(function () {
  const form = document.getElementById("chat");
  if (!form) return;
  const csrf = document.querySelector("main").dataset.csrf;
  const list = document.getElementById("messages");
  const status = document.getElementById("status");
  const prompt = document.getElementById("prompt");
  const send = document.getElementById("send");
  let history = [];

  function add(role, text) {
    const li = document.createElement("li");
    li.className = role;
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    li.appendChild(body);
    list.appendChild(li);
    return li;
  }

  function meta(li, text) {
    const m = document.createElement("span");
    m.className = "meta";
    m.textContent = text;
    li.appendChild(m);
  }

  function request(model) {
    const messages = [];
    const system = form.system.value.trim();
    if (system) messages.push({role: "system", content: system});
    const body = {model: model, messages: messages.concat(history),
                  temperature: Number(form.temperature.value), max_tokens: Number(form.max_tokens.value)};
    const schema = form.schema.value.trim();
    if (schema) {
      body.response_format = {type: "json_schema", json_schema: {name: "answer", schema: JSON.parse(schema)}};
    }
    return body;
  }

  async function ask(event) {
    event.preventDefault();
    const text = prompt.value;
    if (!text.trim()) return;
    const option = form.model.selectedOptions[0];
    let body;
    history.push({role: "user", content: text});
    try {
      body = request(option.value);
    } catch (e) {
      history.pop();
      status.textContent = "The JSON schema is not valid JSON: " + e.message;
      return;
    }
    add("user", text);
    prompt.value = "";
    const li = add("assistant", "");
    const out = li.querySelector(".text");
    send.disabled = true;
    status.textContent = "…";
    const started = performance.now();
    let usage = null, first = null, failed = null, completionId = null;
    try {
      const r = await fetch("/console/playground/chat", {
        method: "POST", headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
        body: JSON.stringify(body)});
      if (!r.ok) {
        const err = await r.json().catch(() => ({error: {message: r.statusText}}));
        throw new Error(err.error ? err.error.message : r.statusText);
      }
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const frame = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          if (!frame.startsWith("data: ")) continue;
          const data = frame.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) { failed = chunk.error.message; continue; }
          if (chunk.usage) usage = chunk.usage;
          if (chunk.id) completionId = chunk.id;
          for (const c of chunk.choices || []) {
            if (c.delta && c.delta.content) {
              if (first === null) first = performance.now();
              out.textContent += c.delta.content;
            }
          }
        }
      }
      if (failed) throw new Error(failed);
      history.push({role: "assistant", content: out.textContent});
      const ttft = first === null ? "" : ` · first token ${Math.round(first - started)} ms`;
      if (usage) {
        const cost = (usage.prompt_tokens * Number(option.dataset.in) +
                      usage.completion_tokens * Number(option.dataset.out)) / 1e6;
        meta(li, `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens · $${cost.toFixed(6)}${ttft}`);
      }
      if (completionId) rating(li, completionId);
      status.textContent = "";
    } catch (e) {
      history.pop();
      li.className = "assistant failed";
      out.textContent = e.message;
      status.textContent = "";
    } finally {
      send.disabled = false;
    }
  }

  // 👍 / 👎 under an answer; 👎 opens a field for the answer it should have been.
  function rating(li, id) {
    const box = document.createElement("span");
    box.className = "rate";
    const done = document.createElement("span");
    done.className = "muted";
    async function send(value, correction) {
      const body = {completion_id: id, rating: value};
      if (correction) body.correction = correction;
      const r = await fetch("/console/feedback/rate", {method: "POST", body: JSON.stringify(body),
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}});
      box.replaceChildren(done);
      done.textContent = r.ok ? (value === 1 ? "rated 👍" : "rated 👎") : "the rating was not saved";
    }
    const up = document.createElement("button");
    up.type = "button"; up.className = "link"; up.textContent = "👍"; up.setAttribute("aria-label", "good answer");
    up.addEventListener("click", () => send(1));
    const down = document.createElement("button");
    down.type = "button"; down.className = "link"; down.textContent = "👎"; down.setAttribute("aria-label", "bad answer");
    down.addEventListener("click", () => {
      const fix = document.createElement("textarea");
      fix.className = "correction"; fix.rows = 2; fix.placeholder = "The answer it should have been (optional)";
      const ok = document.createElement("button");
      ok.type = "button"; ok.textContent = "Send the rating"; ok.className = "send-rating";
      ok.addEventListener("click", () => send(-1, fix.value.trim()));
      box.replaceChildren(fix, ok);
    });
    box.append(up, " ", down);
    li.appendChild(box);
  }

  form.addEventListener("submit", ask);
  document.getElementById("clear").addEventListener("click", function () {
    history = [];
    list.replaceChildren();
  });
  prompt.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
  });
})();
