// The chatterbox-vllm playground: plain JavaScript, no build step, everything from this server.
// Controls come from /playground/config.json (the server's controls contract); the rest goes
// through the public API with the API key when the server has one.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "chatterbox-vllm-api-key";

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  config: null,
  languages: ["en"],
  run: null, // the speech request in flight: {controller, audio, ...}
  // What happened during the last Speak, for people and for the browser tests.
  log: [],
};

class KeyNeeded extends Error {}

// ------------------------------------------------------------------ the API

async function errorMessage(response) {
  // The server's own words: OpenAI-shaped {"error": {"message": ...}}.
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return text || `HTTP ${response.status} ${response.statusText}`;
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.key) headers.set("Authorization", `Bearer ${state.key}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    askForKey(await errorMessage(response));
    throw new KeyNeeded();
  }
  return response;
}

async function apiJson(path, options = {}) {
  const response = await api(path, options);
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

function askForKey(message) {
  $("key-box").hidden = false;
  $("key-error").textContent = state.key ? message : "";
  $("api-key").focus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.key = $("api-key").value.trim();
  sessionStorage.setItem(KEY_STORAGE, state.key);
  $("key-box").hidden = true;
  loadAll();
});

// ------------------------------------------------------------------ controls (from the server)

function controlStep(control) {
  if (control.kind === "int") return 1;
  const span = control.high - control.low;
  return span <= 2 ? 0.01 : 0.05;
}

function buildControls(config) {
  const box = $("controls");
  box.textContent = "";
  for (const control of config.controls) {
    const row = document.createElement("div");
    row.className = "control";
    row.title = control.description;
    const label = document.createElement("label");
    const name = document.createElement("span");
    name.textContent = control.name;
    label.append(name);
    let input;
    if (control.choices) {
      input = document.createElement("select");
      input.dataset.choices = "1";
    } else {
      input = document.createElement("input");
      input.type = "number";
      if (control.low !== null) input.min = control.low;
      if (control.high !== null) input.max = control.high;
      input.step = controlStep(control);
      input.placeholder = control.default === null ? "default" : String(control.default);
      if (control.default !== null) input.value = control.default;
    }
    input.id = `control-${control.name}`;
    input.dataset.control = control.name;
    input.dataset.kind = control.kind;
    label.append(input);
    row.append(label);
    const bounded = control.low !== null && control.high !== null;
    if (!control.choices && bounded && control.high - control.low <= 10) {
      const slider = document.createElement("input");
      slider.type = "range";
      slider.min = control.low;
      slider.max = control.high;
      slider.step = controlStep(control);
      slider.value = control.default === null ? control.low : control.default;
      slider.setAttribute("aria-label", control.name);
      slider.addEventListener("input", () => { input.value = slider.value; });
      input.addEventListener("input", () => { slider.value = input.value; });
      row.append(slider);
    }
    const help = document.createElement("small");
    help.textContent = control.description;
    row.append(help);
    box.append(row);
  }
  fillLanguages();
}

function fillLanguages() {
  const select = $("control-language");
  if (!select) return;
  select.textContent = "";
  select.append(new Option("default", ""));
  for (const language of state.languages) select.append(new Option(language, language));
}

function controlValues() {
  // Only the controls a user moved off their default: the server applies its own defaults.
  const values = {};
  for (const control of state.config.controls) {
    const input = $(`control-${control.name}`);
    const raw = input.value.trim();
    if (raw === "") continue;
    let value = raw;
    if (!control.choices) {
      value = control.kind === "int" ? Number.parseInt(raw, 10) : Number.parseFloat(raw);
      if (Number.isNaN(value)) value = raw; // the server words the error
      if (value === control.default) continue;
    }
    values[control.name] = value;
  }
  return values;
}

// ------------------------------------------------------------------ server, models, voices

async function loadAll() {
  try {
    state.config = await (await fetch("/playground/config.json")).json();
    buildControls(state.config);
    const formats = $("format");
    formats.textContent = "";
    for (const format of state.config.response_formats) formats.append(new Option(format, format));
    formats.value = state.config.response_formats.includes("wav") ? "wav" : formats.options[0].value;
    const health = await (await fetch("/health")).json();
    $("server-status").textContent = `${health.model || "?"} model · ${health.status}`;
    const models = await apiJson("/v1/models");
    const select = $("model");
    select.textContent = "";
    for (const model of models.data) select.append(new Option(model.id, model.id));
    state.languages = (models.data[0] && models.data[0].languages) || ["en"];
    fillLanguages();
    await loadVoices();
  } catch (error) {
    if (!(error instanceof KeyNeeded)) $("error").textContent = error.message;
  }
}

async function loadVoices(select) {
  const voices = await apiJson("/v1/voices");
  const list = $("voices");
  const picker = $("voice");
  const current = select || picker.value;
  list.textContent = "";
  picker.textContent = "";
  for (const { name } of voices.data) {
    picker.append(new Option(name, name));
    const item = document.createElement("li");
    item.dataset.voice = name;
    const label = document.createElement("span");
    label.textContent = name;
    item.append(label);
    if (name !== "default") {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Delete";
      remove.addEventListener("click", () => deleteVoice(name));
      item.append(remove);
    }
    list.append(item);
  }
  if ([...picker.options].some((option) => option.value === current)) picker.value = current;
}

async function deleteVoice(name) {
  try {
    await apiJson(`/v1/voices/${encodeURIComponent(name)}`, { method: "DELETE" });
    await loadVoices();
    $("voice-message").textContent = `deleted ${name}`;
  } catch (error) {
    if (!(error instanceof KeyNeeded)) $("voice-message").textContent = error.message;
  }
}

$("upload-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("voice-name").value.trim();
  const file = $("voice-file").files[0];
  const form = new FormData();
  form.append("name", name);
  if (file) form.append("file", file, file.name);
  $("voice-message").textContent = `uploading ${name}…`;
  try {
    const answer = await apiJson("/v1/voices", { method: "POST", body: form });
    await loadVoices(answer.name);
    $("voice-message").textContent = `${answer.replaced ? "replaced" : "uploaded"} ${answer.name}`;
  } catch (error) {
    if (!(error instanceof KeyNeeded)) $("voice-message").textContent = error.message;
  }
});

// ------------------------------------------------------------------ speaking

function note(type, extra = {}) {
  state.log.push({ type, t: performance.now(), bytes: state.run ? state.run.bytes : 0, ...extra });
}

function setState(text) {
  $("state").textContent = text;
}

class PcmPlayer {
  // 16-bit little-endian mono PCM into Web Audio, each piece scheduled right after the last.
  constructor(sampleRate) {
    this.sampleRate = sampleRate;
    this.context = new AudioContext({ sampleRate });
    this.playAt = 0;
    this.carry = null; // an odd trailing byte waiting for its pair
    this.pieces = [];
    this.samples = 0;
  }

  push(bytes) {
    if (this.carry !== null) {
      const joined = new Uint8Array(bytes.length + 1);
      joined[0] = this.carry;
      joined.set(bytes, 1);
      bytes = joined;
      this.carry = null;
    }
    if (bytes.length % 2) {
      this.carry = bytes[bytes.length - 1];
      bytes = bytes.subarray(0, bytes.length - 1);
    }
    if (!bytes.length) return;
    this.pieces.push(bytes);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const count = bytes.length / 2;
    const buffer = this.context.createBuffer(1, count, this.sampleRate);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < count; i++) channel[i] = view.getInt16(2 * i, true) / 32768;
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    const now = this.context.currentTime;
    if (this.playAt < now + 0.02) this.playAt = now + 0.05; // first piece, or ran dry: restart
    if (this.samples === 0) this.startedAt = this.playAt;
    source.start(this.playAt);
    this.playAt += buffer.duration;
    this.samples += count;
  }

  get seconds() {
    return this.samples / this.sampleRate;
  }

  wav() {
    // A WAV file of exactly what was played (16-bit PCM, mono).
    const dataBytes = this.samples * 2;
    const header = new DataView(new ArrayBuffer(44));
    const text = (offset, value) => [...value].forEach((c, i) => header.setUint8(offset + i, c.charCodeAt(0)));
    text(0, "RIFF"); header.setUint32(4, 36 + dataBytes, true); text(8, "WAVE");
    text(12, "fmt "); header.setUint32(16, 16, true); header.setUint16(20, 1, true);
    header.setUint16(22, 1, true); header.setUint32(24, this.sampleRate, true);
    header.setUint32(28, this.sampleRate * 2, true); header.setUint16(32, 2, true);
    header.setUint16(34, 16, true); text(36, "data"); header.setUint32(40, dataBytes, true);
    return new Blob([header.buffer, ...this.pieces], { type: "audio/wav" });
  }

  close() {
    this.context.close();
  }
}

function base64Bytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffered.indexOf("\n\n")) >= 0) {
      const block = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      const data = block.split("\n").filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart()).join("\n");
      if (data) yield JSON.parse(data);
    }
  }
}

function resetOutput() {
  $("error").textContent = "";
  $("bytes-received").textContent = "0";
  $("first-audio").textContent = "–";
  $("rtf").textContent = "–";
  $("audio-seconds").textContent = "–";
  $("download").hidden = true;
  $("download-note").textContent = "";
  wordTimings.reset();
  state.log = [];
}

async function speak() {
  if (state.run) stop();
  resetOutput();
  const format = $("format").value;
  const body = {
    model: $("model").value,
    input: $("text").value,
    voice: $("voice").value || "default",
    response_format: "pcm",
    stream_format: "sse",
    ...controlValues(),
  };
  // Word timings come from the multilingual model's alignment analyzer (the English one has none).
  if (state.config.model === "multilingual") body.timestamps = true;
  // A download in another format is generated again: a seed makes it the same audio.
  if (format !== "wav" && format !== "pcm" && body.seed === undefined) {
    body.seed = Math.floor(Math.random() * 2 ** 31);
  }
  const run = {
    controller: new AbortController(),
    player: new PcmPlayer(state.config.sample_rate),
    bytes: 0,
    started: performance.now(),
    firstAudio: null,
    body,
  };
  state.run = run;
  $("speak").disabled = true;
  $("stop").disabled = false;
  setState("waiting");
  note("request");
  try {
    const response = await api("/v1/audio/speech", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: run.controller.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    let finished = false;
    for await (const event of sseEvents(response)) {
      if (event.type === "speech.audio.delta") {
        const bytes = base64Bytes(event.audio);
        run.bytes += bytes.length;
        if (run.firstAudio === null) {
          run.firstAudio = performance.now() - run.started;
          $("first-audio").textContent = `${Math.round(run.firstAudio)} ms`;
          setState("streaming");
        }
        run.player.push(bytes);
        note("audio", { seconds: run.player.seconds });
        $("bytes-received").textContent = String(run.bytes);
        $("audio-seconds").textContent = `${run.player.seconds.toFixed(2)} s`;
      } else if (event.type === "speech.audio.done") {
        finished = true;
      } else if (event.type === "error") {
        throw new Error(event.error.message);
      } else if (wordTimings.accepts(event)) {
        wordTimings.add(event, run.player);
      }
    }
    if (!finished) throw new Error("the stream ended before the server said it was done");
    const wall = (performance.now() - run.started) / 1000;
    note("done", { seconds: run.player.seconds });
    $("rtf").textContent = run.player.seconds
      ? `${(wall / run.player.seconds).toFixed(2)} (${wall.toFixed(2)} s for ${run.player.seconds.toFixed(2)} s)`
      : "–";
    setState("done");
    await offerDownload(run, format);
  } catch (error) {
    if (error instanceof KeyNeeded) setState("needs API key");
    else if (error.name === "AbortError") setState("stopped");
    else {
      $("error").textContent = error.message;
      setState("failed");
      note("error", { message: error.message });
    }
  } finally {
    if (state.run === run) state.run = null;
    $("speak").disabled = false;
    $("stop").disabled = true;
  }
}

async function offerDownload(run, format) {
  let blob;
  if (format === "wav") {
    blob = run.player.wav();
    $("download-note").textContent = "the audio as played";
  } else if (format === "pcm") {
    blob = new Blob(run.player.pieces, { type: "application/octet-stream" });
    $("download-note").textContent = "16-bit mono PCM at 24 kHz, as played";
  } else {
    $("download-note").textContent = `encoding ${format} (generated again with seed ${run.body.seed})…`;
    const response = await api("/v1/audio/speech", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...run.body, response_format: format, stream_format: "audio" }),
      signal: run.controller.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    blob = await response.blob();
    $("download-note").textContent = `generated again with seed ${run.body.seed}`;
  }
  const link = $("download");
  if (link.href) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(blob);
  link.download = `speech.${format}`;
  link.textContent = `Download speech.${format} (${blob.size.toLocaleString()} bytes)`;
  link.hidden = false;
  note("download", { size: blob.size });
}

function stop() {
  const run = state.run;
  if (!run) return;
  run.controller.abort();
  run.player.close();
  state.run = null;
}

$("speak").addEventListener("click", speak);
$("stop").addEventListener("click", stop);

// ------------------------------------------------------------------ word timings (optional)
// With timestamps (multilingual model) the SSE stream carries a speech.word event per word
// ({word, start_time, end_time} in seconds of audio): each word is shown and highlighted as it
// plays. Without them no such event comes, and this does nothing.
const wordTimings = {
  timers: [],
  accepts(event) {
    return event.type === "speech.word" && typeof event.word === "string"
      && typeof event.start_time === "number";
  },
  add(event, player) {
    const span = document.createElement("span");
    span.textContent = event.word;
    $("words").append(span, " ");
    const base = player.startedAt === undefined ? player.context.currentTime : player.startedAt;
    const delay = Math.max(0, (base + event.start_time - player.context.currentTime) * 1000);
    this.timers.push(setTimeout(() => span.classList.add("spoken"), delay));
  },
  reset() {
    this.timers.forEach(clearTimeout);
    this.timers = [];
    $("words").textContent = "";
  },
};

window.playground = { state };
loadAll();
