// The page of `accelframe serve`: one WebSocket per session (protocol: docs/serve.md).
// Output frames are a 4-byte frame number and a JPEG; they are shown at the session's fps from a
// small buffer, so chunks that arrive together play smoothly. No build step, no other host.
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
let ws = null, started = null, paused = false, queue = [], shown = 0, lastShow = 0, capture = null;
window.accelframe = { frames: 0, messages: [], started: null, closed: null };  // read by browser tests

function status(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function setRunning(running) {
  $("start").disabled = running;
  for (const id of ["switch", "pause", "stop"]) $(id).disabled = !running;
}

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

function start() {
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (token) url.searchParams.set("token", token);
  ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  queue = []; shown = 0; paused = false;
  window.accelframe.frames = 0; window.accelframe.closed = null;
  ws.onopen = () => {
    const m = mode();
    ws.send(JSON.stringify({ type: "start", prompt: $("prompt").value, seed: Number($("seed").value) || 0,
                             mode: m === "text" ? "text" : "video" }));
    status("Starting...");
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") return onMessage(JSON.parse(ev.data));
    const view = new DataView(ev.data);
    queue.push({ index: view.getUint32(0), blob: new Blob([ev.data.slice(4)], { type: "image/jpeg" }) });
    if (queue.length > 64) queue.splice(0, queue.length - 64);  // far behind: skip ahead
  };
  ws.onclose = (ev) => {
    window.accelframe.closed = { code: ev.code, reason: ev.reason };
    stopCapture();
    setRunning(false);
    status(`Closed (${ev.code}${ev.reason ? ": " + ev.reason : ""}).`, ev.code !== 1000);
  };
  setRunning(true);
}

function onMessage(msg) {
  window.accelframe.messages.push(msg);
  if (msg.type === "started") {
    started = msg;
    window.accelframe.started = msg;
    $("screen").width = msg.size[1];
    $("screen").height = msg.size[0];
    status(`Session ${msg.session}: ${msg.mode} at ${msg.fps} fps.`);
    if (msg.mode === "video") startCapture(msg);
  } else if (msg.type === "metrics") {
    showMetrics(msg);
  } else if (msg.type === "error") {
    status(msg.message, true);
  } else if (msg.type === "prompt") {
    status(`Prompt switched after frame ${msg.after_frame}: ${msg.prompt}`);
  } else if (msg.type === "ended") {
    status(`Session ended: ${msg.frames} frames.`);
  }
}

function row(name, value) {
  return `<tr><td>${name}</td><td>${value}</td></tr>`;
}

function fmt(x, digits, unit) {
  return x === null || x === undefined ? "-" : `${Number(x).toFixed(digits)}${unit || ""}`;
}

function head(title) {
  return `<tr><th colspan="2">${title}</th></tr>`;
}

function calls(d) {
  const t = d.calls.target;
  return `${t.computed} / ${t.cached} / ${t.predicted}`;
}

function showMetrics(m) {
  const s = m.server;
  $("metrics").innerHTML = head("this session") +
    row("frames", m.frames) + row("fps", fmt(m.fps, 1)) + row("first frame after", fmt(m.ttff_s, 2, " s")) +
    row("latency p50 / p95", `${fmt(m.latency_p50_ms, 0)} / ${fmt(m.latency_p95_ms, 0)} ms`) +
    row("deadline misses", `${m.deadline_misses} (${fmt(100 * m.deadline_miss_rate, 1)} %)`) +
    row("frames dropped for this page", m.dropped_frames) +
    (m.decisions ? row("step calls: computed / cached / predicted", calls(m.decisions)) +
                   row("blocks: accepted / regenerated",
                       `${m.decisions.blocks.accepted} / ${m.decisions.blocks.regenerated}`) : "") +
    row("streams per batch", fmt(m.batch_streams, 2)) +
    head(`all sessions (${m.sessions} of ${m.max_sessions})`) +
    row("step calls: computed / cached / predicted", `${s.step.computed} / ${s.step.cached} / ${s.step.predicted}`) +
    row("blocks: accepted / regenerated", `${s.block.accepted} / ${s.block.regenerated}`) +
    row("streams per batch", fmt(s.batch.mean_streams, 2)) +
    row("batch latency", fmt(s.batch.mean_latency_ms, 0, " ms"));
}

async function present(now) {
  // one frame every 1 / fps from the buffer
  if (started && queue.length && now - lastShow >= 1000 / started.fps - 2) {
    const f = queue.shift();
    lastShow = now;
    const bitmap = await createImageBitmap(f.blob);
    $("screen").getContext("2d").drawImage(bitmap, 0, 0, $("screen").width, $("screen").height);
    shown += 1;
    window.accelframe.frames = shown;
  }
  requestAnimationFrame(present);
}
requestAnimationFrame(present);

async function startCapture(msg) {
  const video = $("input");
  try {
    if (mode() === "webcam") {
      video.srcObject = await navigator.mediaDevices.getUserMedia({ video: true });
    } else {
      const file = $("file").files[0];
      if (!file) { status("Choose a video file first.", true); ws.close(); return; }
      video.src = URL.createObjectURL(file);
      video.loop = true;
    }
    await video.play();
  } catch (err) {
    status(`No video input: ${err}`, true);
    ws.close();
    return;
  }
  const grab = document.createElement("canvas");
  grab.width = msg.size[1];
  grab.height = msg.size[0];
  capture = setInterval(() => {
    if (!ws || ws.readyState !== WebSocket.OPEN || ws.bufferedAmount > 1 << 20) return;
    grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
    grab.toBlob((blob) => blob && ws.readyState === WebSocket.OPEN && ws.send(blob), "image/jpeg", 0.9);
  }, 1000 / msg.fps);
}

function stopCapture() {
  if (capture) clearInterval(capture);
  capture = null;
  const video = $("input");
  if (video.srcObject) video.srcObject.getTracks().forEach((t) => t.stop());
  video.srcObject = null;
}

$("start").onclick = start;
$("stop").onclick = () => ws && ws.send(JSON.stringify({ type: "stop" }));
$("switch").onclick = () => ws && ws.send(JSON.stringify({ type: "prompt", prompt: $("prompt").value }));
$("pause").onclick = () => {
  if (!ws) return;
  paused = !paused;
  ws.send(JSON.stringify({ type: paused ? "pause" : "resume" }));
  $("pause").textContent = paused ? "Resume" : "Pause";
};
