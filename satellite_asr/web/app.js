// Browser microphone client for /v1/stream, and the live example of docs/protocol.md:
//   1. open v1/stream beside this page (ws: or wss: as the page) and send one `config` text message;
//   2. send binary frames: 100 ms of mono float32 little-endian PCM at 16 kHz (resampled here);
//   3. show `speech_start` / `partial` / `final` / `error` events as they arrive;
//   4. on Stop send the last audio, then `{"type":"end"}`, and wait for the server to close (1000)
//      after the last final.
// A lost connection is retried with backoff; each new connection is a new session, so its times
// start again at 0. A daemon with an API key (/health says `auth_required`) gets it as the WebSocket
// subprotocol `satellite-asr.key.KEY` beside `satellite-asr`, the one way a browser can send it.

const RATE = 16000;
const QUEUE_LIMIT = 20; // frames (2 s) kept while connecting, so the first words are not lost
const END_TIMEOUT_MS = 15000;
const HISTORY_LIMIT = 5000; // events kept in window.satelliteAsr.events, so a page left open stays small
const SENT_WINDOW_MS = 60000; // send times kept for the latency shown with each final (~600 frames)
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 10000;
const NO_RETRY = new Map([
  [1008, "the server rejected this client's settings or messages"],
  [1009, "a message was larger than the server accepts"],
]);
const INSECURE_CONTEXT =
  `Browsers only give a page the microphone in a secure context: open it as http://localhost${location.port ? ":" + location.port : ""}/ ` +
  "on the machine running the daemon, or over https:// (start the daemon with --tls-cert and --tls-key). " +
  "See docs/browser.md.";

const SUBPROTOCOL = "satellite-asr";
const KEY_SUBPROTOCOL_PREFIX = "satellite-asr.key.";
const KEY_STORAGE = "satellite-asr.api-key"; // sessionStorage: kept across reloads of this tab only
const TOKEN = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/; // what a subprotocol may hold (RFC 7230 token), as daemon keys do

const ui = {
  toggle: document.getElementById("toggle"),
  apiKey: document.getElementById("api-key"),
  status: document.getElementById("status"),
  level: document.getElementById("level"),
  server: document.getElementById("server"),
  language: document.getElementById("language"),
  languages: document.getElementById("languages"),
  context: document.getElementById("context"),
  silence: document.getElementById("silence"),
  processing: document.getElementById("processing"),
  messages: document.getElementById("messages"),
  transcript: document.getElementById("transcript"),
};

/**
 * Every server message with the session number and the audio seconds sent when it arrived; finals
 * also carry `arrived_after`, the latency shown with them (seconds, null beyond SENT_WINDOW_MS).
 */
const history = [];
window.satelliteAsr = { events: history };

/** Shows the key field (the daemon requires a key), filled with the key this tab used last. */
function askForKey() {
  for (const element of document.querySelectorAll(".key-setting")) element.hidden = false;
  if (!ui.apiKey.value) ui.apiKey.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
}

/** Subprotocols that carry the key, or none without one. */
function subprotocols() {
  const key = ui.apiKey.value.trim();
  return key ? [SUBPROTOCOL, KEY_SUBPROTOCOL_PREFIX + key] : [];
}

/**
 * Why the daemon refuses this page's WebSocket upgrade (a wrong key, another origin, too many
 * connections), or null. A browser only sees a refused upgrade as close code 1006, so the same URL
 * is asked again over plain HTTP. First a POST: a same-origin GET carries no Origin header, and the
 * daemon checks Host, Origin and key before its 405. Then a GET, which the connection caps answer
 * (503 when full, else 426).
 */
async function upgradeRefusal() {
  const key = ui.apiKey.value.trim();
  const headers = key ? { "X-API-Key": key } : {};
  try {
    let response = await fetch("v1/stream", { method: "POST", headers });
    if (response.status === 405) response = await fetch("v1/stream", { headers });
    if (response.ok || response.status === 426) return null;
    const error = await response.json();
    return error?.type === "error" ? { status: response.status, code: error.code, message: error.message } : null;
  } catch {
    return null; // no answer, or not the daemon's: an ordinary lost connection
  }
}

function describeRefusal(refusal) {
  const what = refusal.code === "missing_api_key" ? "requires an API key" : `refused the connection (${refusal.code})`;
  return `The daemon ${what}: ${refusal.message}`;
}

/** Relative to the page, as every other URL here, so a proxy serving the daemon under a path prefix works. */
function streamUrl() {
  const url = new URL("v1/stream", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

/**
 * The `config` message. Context and silence go only when set, so the daemon's defaults apply.
 * Language always goes: the code typed, or null for an empty field, which asks the daemon to detect
 * it (leaving `language` out would mean the daemon's default language instead).
 */
function configMessage() {
  const config = { type: "config", sample_rate: RATE, encoding: "f32le", partials: true };
  const language = ui.language.value.trim();
  config.language = language || null;
  const context = ui.context.value.trim();
  if (context) config.context = context;
  if (ui.silence.value !== "") config.vad = { silence_ms: Number(ui.silence.value) };
  return config;
}

/** Messages above the transcript, one per topic (microphone, connection, server), newest kept. */
function notify(topic, kind, text) {
  let element = ui.messages.querySelector(`[data-topic="${topic}"]`);
  if (!text) {
    element?.remove();
    return;
  }
  if (!element) {
    element = document.createElement("p");
    element.dataset.topic = topic;
    ui.messages.append(element);
  }
  element.className = kind;
  element.textContent = text;
}

function describeMicError(error) {
  switch (error?.name) {
    case "InsecureContext":
      return INSECURE_CONTEXT;
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone permission was denied. Allow the microphone for this site (the icon beside the address) and press Start again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone was found. Plug one in and press Start again.";
    case "NotReadableError":
      return "The microphone could not be opened: another program may be using it.";
    default:
      return `The microphone could not be started: ${error?.message ?? error}`;
  }
}

/** Microphone -> AudioWorklet (mono, 16 kHz, 100 ms frames) -> `onFrame`. */
class Microphone {
  constructor(onFrame, onEnded) {
    this.onFrame = onFrame;
    this.onEnded = onEnded;
    this.flushed = null;
  }

  async open(processing) {
    if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
      throw new DOMException(INSECURE_CONTEXT, "InsecureContext");
    }
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: processing, noiseSuppression: processing, autoGainControl: processing },
    });
    this.stream.getAudioTracks()[0].addEventListener("ended", () => this.onEnded());
    this.context = new AudioContext();
    // Two modules in one worklet scope rather than an import, which not every browser allows there.
    await this.context.audioWorklet.addModule("static/resampler.js");
    await this.context.audioWorklet.addModule("static/audio-worklet.js");
    this.node = new AudioWorkletNode(this.context, "satellite-asr-capture", { numberOfInputs: 1, numberOfOutputs: 0 });
    this.node.port.onmessage = ({ data }) => {
      if (data.type === "frame") this.onFrame(data.samples, data.peak);
      else if (data.type === "flushed") this.flushed?.();
    };
    this.context.createMediaStreamSource(this.stream).connect(this.node);
    await this.context.resume();
    return this.context.sampleRate;
  }

  /** Hands over the audio still in the worklet, then releases the device. */
  async close() {
    if (this.node) {
      await Promise.race([
        new Promise((resolve) => {
          this.flushed = resolve;
          this.node.port.postMessage("flush");
        }),
        new Promise((resolve) => setTimeout(resolve, 1000)), // a closed context never answers
      ]);
    }
    this.release();
  }

  release() {
    this.stream?.getTracks().forEach((track) => track.stop());
    if (this.context && this.context.state !== "closed") this.context.close();
  }
}

class Transcript {
  constructor(list) {
    this.list = list;
    // Utterance id -> its item, shown lighter until its final. More than one can be open: the next
    // command may start while the previous one's final is still being decoded.
    this.open = new Map();
  }

  openItem(utteranceId) {
    if (!this.open.has(utteranceId)) this.open.set(utteranceId, this.item("partial", "…", "speaking"));
    return this.open.get(utteranceId);
  }

  partial(message) {
    this.openItem(message.utterance_id).querySelector(".text").textContent = message.text || "…";
  }

  /** `arrivedAfter`: seconds from sending the end of speech to this final, null if not known. */
  final(message, arrivedAfter) {
    const after = arrivedAfter === null ? `over ${SENT_WINDOW_MS / 1000}` : arrivedAfter.toFixed(2);
    const meta = [
      `#${message.utterance_id}`,
      `${message.start.toFixed(2)}–${message.end.toFixed(2)} s`,
      `arrived ${after} s after the end of speech`,
    ];
    if (!message.is_speech_final) meta.push("ended by stop, flush or the length cap");
    if (message.language) meta.push(message.language);
    const item = this.openItem(message.utterance_id);
    this.open.delete(message.utterance_id);
    item.className = message.text ? "final" : "final empty";
    item.querySelector(".text").textContent = message.text || "(no words recognised)";
    item.querySelector(".meta").textContent = meta.join(" · ");
  }

  /** The session ended with utterances still open: they will get no final. */
  abandon(reason) {
    for (const item of this.open.values()) item.querySelector(".meta").textContent = reason;
    this.open.clear();
  }

  item(kind, text, meta) {
    const item = document.createElement("li");
    item.className = kind;
    const textSpan = document.createElement("span");
    textSpan.className = "text";
    textSpan.textContent = text;
    const metaSpan = document.createElement("span");
    metaSpan.className = "meta";
    metaSpan.textContent = meta;
    item.append(textSpan, metaSpan);
    this.list.append(item);
    item.scrollIntoView({ block: "nearest" });
    return item;
  }
}

class StreamClient {
  constructor() {
    this.state = "idle";
    this.transcript = new Transcript(ui.transcript);
    this.session = 0; // connections made, so history entries can be told apart
    this.run = 0; // Starts pressed: an answer that arrives after Stop and Start is about an earlier run
    this.attempt = 0;
    this.queue = [];
    this.ws = null;
    this.mic = null;
  }

  setState(state, status) {
    this.state = state;
    document.body.dataset.state = state;
    ui.status.textContent = status;
    ui.toggle.textContent = state === "idle" || state === "starting" ? "Start" : "Stop";
    ui.toggle.disabled = state === "starting" || state === "stopping";
    for (const input of [ui.apiKey, ui.language, ui.context, ui.silence, ui.processing]) input.disabled = state !== "idle";
  }

  async start() {
    notify("mic", null);
    notify("server", null);
    notify("connection", null);
    const key = ui.apiKey.value.trim();
    if (!ui.apiKey.hidden && !key) {
      notify("connection", "error", "This daemon requires an API key: enter it in the settings, then press Start.");
      ui.apiKey.focus();
      return;
    }
    if (key && !TOKEN.test(key)) {
      notify("connection", "error", "An API key holds only letters, digits and !#$%&'*+-.^_`|~ (no spaces): enter the key alone.");
      ui.apiKey.focus();
      return;
    }
    this.run += 1;
    this.setState("starting", "Opening the microphone…");
    this.mic = new Microphone(
      (samples, peak) => this.onFrame(samples, peak),
      () => {
        notify("mic", "error", "The microphone stopped delivering audio (unplugged, or taken by the system).");
        this.stop();
      },
    );
    let inputRate;
    try {
      inputRate = await this.mic.open(ui.processing.checked);
    } catch (error) {
      this.mic.release();
      this.mic = null;
      notify("mic", "error", describeMicError(error));
      this.setState("idle", "Idle");
      return;
    }
    this.inputRate = inputRate;
    this.attempt = 0;
    this.connect();
  }

  connect() {
    this.session += 1;
    this.sent = 0;
    this.sentFrames = []; // {from: first sample, at: performance.now()} of the frames sent lately
    this.setState(this.attempt ? "reconnecting" : "streaming", "Connecting…");
    let ws;
    try {
      ws = new WebSocket(streamUrl(), subprotocols());
    } catch (error) {
      // A throw (a key Start did not check) would leave the page "Connecting…" with the microphone open.
      notify("connection", "error", `The connection could not be opened: ${error.message}`);
      this.stopMicrophone();
      this.finish("Stopped");
      return;
    }
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      ws.opened = true;
      ws.send(JSON.stringify(configMessage()));
      for (const samples of this.queue.splice(0)) this.send(samples);
    };
    ws.onmessage = (event) => {
      if (typeof event.data === "string") this.onMessage(JSON.parse(event.data));
    };
    ws.onclose = (event) => this.onClose(ws, event);
    this.ws = ws;
  }

  send(samples) {
    this.ws.send(samples.buffer); // Float32Array is little-endian on every platform browsers run on
    const now = performance.now();
    this.sentFrames.push({ from: this.sent, at: now });
    while (now - this.sentFrames[0].at > SENT_WINDOW_MS) this.sentFrames.shift();
    this.sent += samples.length;
  }

  /**
   * Wall-clock seconds since the frame holding session second `t` was sent, or null when that was
   * longer ago than SENT_WINDOW_MS. Measured in time rather than in audio sent since, because after
   * Stop no audio follows: a final forced by `end` would otherwise show about 0 s.
   */
  secondsSinceSent(t) {
    const frame = this.sentFrames.findLast((sent) => sent.from <= t * RATE);
    return frame ? (performance.now() - frame.at) / 1000 : null;
  }

  onFrame(samples, peak) {
    ui.level.value = Math.sqrt(peak);
    if (this.ws?.readyState === WebSocket.OPEN) {
      this.send(samples);
    } else if (this.state !== "idle") {
      this.queue.push(samples);
      if (this.queue.length > QUEUE_LIMIT) this.queue.shift();
    }
  }

  onMessage(message) {
    const entry = { ...message, session: this.session, audio_sent: this.sent / RATE };
    if (message.type === "final") entry.arrived_after = this.secondsSinceSent(message.end);
    history.push(entry);
    if (history.length > HISTORY_LIMIT) history.splice(0, history.length - HISTORY_LIMIT);
    switch (message.type) {
      case "session_created":
        this.attempt = 0;
        if (ui.apiKey.value.trim()) sessionStorage.setItem(KEY_STORAGE, ui.apiKey.value.trim());
        notify("connection", null);
        if (this.state !== "stopping") {
          this.setState("streaming", `Listening (${this.inputRate} Hz → ${RATE} Hz) · session ${message.session_id}`);
        }
        break;
      case "speech_start":
        this.transcript.openItem(message.utterance_id);
        break;
      case "partial":
        this.transcript.partial(message);
        break;
      case "final":
        this.transcript.final(message, entry.arrived_after);
        break;
      case "error":
        notify(
          "server",
          "error",
          message.code === "invalid_config"
            ? `The server rejected the settings: ${message.message}`
            : `Server error (${message.code}): ${message.message}`,
        );
        break;
      default:
        break; // a newer daemon may send more event types: skip what this page does not know
    }
  }

  async onClose(ws, event) {
    if (ws !== this.ws) return;
    this.ws = null;
    clearTimeout(this.endTimer);
    this.transcript.abandon("connection closed before this utterance's final");
    const run = this.run;
    const refusal = ws.opened ? null : await upgradeRefusal();
    if (run !== this.run) return; // Stop and Start while asking: this socket's run is over
    if (refusal?.status === 401) {
      askForKey();
      sessionStorage.removeItem(KEY_STORAGE);
    }
    if (refusal && refusal.status < 500) {
      // A wrong key, another origin or host: retrying would not change it (a 503 is retried below).
      notify("connection", "error", describeRefusal(refusal));
      this.stopMicrophone();
      this.finish("Stopped");
    } else if (this.state === "stopping" || this.state === "idle") {
      this.finish(event.code === 1000 ? "Stopped" : `Stopped (connection closed: ${event.code})`);
    } else if (event.code === 1001 && event.reason === "idle_timeout") {
      // The daemon ends a session that hears no speech for its idle_timeout_s: reconnecting would undo that.
      this.stopMicrophone();
      this.finish("Stopped: no speech for a while");
    } else if (NO_RETRY.has(event.code)) {
      notify("connection", "error", `The server closed the connection: ${NO_RETRY.get(event.code)} (${event.code} ${event.reason}).`);
      this.stopMicrophone();
      this.finish("Stopped");
    } else {
      // Up to 25% less, so that pages do not retry in step, and never over BACKOFF_MAX_MS.
      const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt) * (0.75 + 0.25 * Math.random());
      this.attempt += 1;
      const why = event.code === 1006 ? "no answer from the daemon" : `code ${event.code} ${event.reason}`.trim();
      const lost = refusal ? describeRefusal(refusal) : `Connection lost (${why})`;
      notify("connection", "warning", `${lost}. Reconnecting in ${(delay / 1000).toFixed(1)} s (attempt ${this.attempt})…`);
      this.setState("reconnecting", "Reconnecting…");
      this.reconnectTimer = setTimeout(() => this.connect(), delay);
    }
  }

  async stop() {
    if (this.state === "idle" || this.state === "stopping") return;
    clearTimeout(this.reconnectTimer);
    this.setState("stopping", "Finishing: waiting for the last final…");
    await this.stopMicrophone();
    const ws = this.ws;
    if (ws?.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "end" }));
      this.endTimer = setTimeout(() => ws.close(), END_TIMEOUT_MS);
    } else {
      ws?.close();
      this.ws = null;
      this.finish("Stopped");
    }
  }

  async stopMicrophone() {
    const mic = this.mic;
    this.mic = null;
    await mic?.close();
  }

  finish(status) {
    this.queue = [];
    ui.level.value = 0;
    this.setState("idle", status);
  }
}

async function describeServer() {
  try {
    const response = await fetch("health");
    const health = await response.json();
    ui.server.textContent = `${health.engine} · ${health.model} · ${health.ready ? "ready" : health.status}`;
    ui.languages.replaceChildren(...(health.languages ?? []).map((code) => new Option(code)));
    if (health.auth_required) askForKey();
    if (!health.ready && health.status !== "failed") setTimeout(describeServer, 2000);
  } catch {
    ui.server.textContent = "The daemon does not answer.";
    setTimeout(describeServer, 5000);
  }
}

const client = new StreamClient();
ui.toggle.addEventListener("click", () => (client.state === "idle" ? client.start() : client.stop()));
client.setState("idle", "Idle");
if (!window.isSecureContext) {
  notify("mic", "error", INSECURE_CONTEXT);
  ui.toggle.disabled = true;
}
describeServer();
