// The ferlib web page: photos and webcam frames go to POST /predictions/<model> of the page's own
// server (python -m ferlib web), which forwards them to the model server. Plain JavaScript, no library.
"use strict";

(() => {
  const EMOTION_COLOURS = {
    neutral: "#90a4ae", happiness: "#f9b800", surprise: "#ff7a1a", sadness: "#1e88e5",
    anger: "#e53935", disgust: "#43a047", fear: "#8e24aa", contempt: "#00897b",
  };
  const WEBCAM_WIDTH = 640;        // frames are shrunk to this width before they are sent
  const JPEG_QUALITY = 0.8;
  const TIMELINE_SECONDS = 10;
  const FPS_WINDOW_MS = 3000;      // frames per second: answers of the last 3 s
  const PHOTO_TIMEOUT_MS = 60000;
  const FRAME_TIMEOUT_MS = 15000;
  const RECHECK_MS = 5000;         // while the model server is down, ask again this often

  const $ = (id) => document.getElementById(id);
  const els = {
    status: $("status"), file: $("file"), webcam: $("webcam"), stage: $("stage"), photo: $("photo"),
    video: $("video"), overlay: $("overlay"), faces: $("faces"), live: $("live"), stats: $("stats"),
    timeline: $("timeline"), legend: $("legend"), model: $("model-name"), backend: $("backend"),
  };

  const settings = {
    model: "fer", backend: "the model server", max_bytes: 20 * 1024 * 1024,
    emotions: Object.keys(EMOTION_COLOURS),
  };
  // What is shown: "empty", "photo" or "webcam", with the last answer's faces and image size.
  const view = { mode: "empty", faces: [], size: null, mirrored: false };
  let photoRequest = 0;            // number of the latest photo: older answers are dropped
  let photoUrl = null;
  let cam = null;                  // the running webcam session
  let recheckTimer = null;
  let actions = 0;                 // photos, refusals, webcam starts: the server check then stays quiet

  // -- small helpers ------------------------------------------------------------------------------

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const colour = (emotion) => EMOTION_COLOURS[emotion] || "#2457c5";
  const percent = (p) => `${Math.round(100 * p)}%`;
  const megabytes = (bytes) => `${(bytes / (1024 * 1024)).toFixed(1)} MB`;

  function textColourOn(hex) {
    const n = parseInt(hex.slice(1), 16);
    const luminance = 0.299 * (n >> 16) + 0.587 * ((n >> 8) & 255) + 0.114 * (n & 255);
    return luminance > 150 ? "#111" : "#fff";
  }

  function setStatus(message, kind = "info") {
    if (els.status.textContent !== message) els.status.textContent = message;
    els.status.className = kind;
  }

  function topProbability(face) {
    return face.probabilities[face.emotion] ?? Math.max(...Object.values(face.probabilities));
  }

  // -- talking to the server ----------------------------------------------------------------------

  function explain(status, body) {
    const said = body && typeof body.message === "string" ? body.message.trim() : "";
    const start = "Start it with: python -m ferlib serve";
    switch (status) {
      case 502:
        return `The model server is not answering (${settings.backend}). ${start}, then try again.`;
      case 404:
        if (/model not found/i.test(said) || (body && /ModelNotFound/.test(body.type || ""))) {
          return `The model "${settings.model}" is not loaded on the model server (${settings.backend}). `
            + `${start}, or restart this page with --model and the name it serves.`;
        }
        return `The model server answered "not found": ${said || "no details"}.`;
      case 503:
        return `The model "${settings.model}" is not ready (${said || "no worker answers yet"}). Try again in a moment.`;
      case 413:
        return `The image is too large for the model server: ${said || "over its limit"}. Choose a smaller photo.`;
      case 400: case 415: case 422:
        return `The model server could not read this image: ${said || "not an image it knows"}.`;
      case 408:
        return `The upload stopped half-way: ${said || "try again"}.`;
      default:
        return `The model server failed (${status}): ${said || "no details"}. Try again.`;
    }
  }

  // POST an image; resolves to {ok, body, latency} or {ok: false, status, message}; never throws.
  async function predict(blob, timeoutMs) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), timeoutMs);
    const started = performance.now();
    let reply;
    let body = null;
    try {
      reply = await fetch(`/predictions/${encodeURIComponent(settings.model)}`, {
        method: "POST", body: blob, signal: abort.signal, cache: "no-store",
        headers: { "Content-Type": "application/octet-stream" },
      });
      try { body = await reply.json(); } catch (_) { body = null; }
    } catch (err) {
      return {
        ok: false, status: 0,
        message: abort.signal.aborted
          ? `The model server took more than ${Math.round(timeoutMs / 1000)} s to answer. Try again.`
          : "This page's own server is not answering: is python -m ferlib web still running? "
            + "Start it again, then reload the page.",
      };
    } finally {
      clearTimeout(timer);
    }
    const latency = performance.now() - started;
    if (reply.ok && body && Array.isArray(body.faces)) return { ok: true, body, latency };
    return { ok: false, status: reply.status, message: explain(reply.status, body), latency };
  }

  // Is the model server up, with the model loaded? An empty request reaches the model's handler,
  // which answers 400 "empty request body"; no model gives 404, a server that is down 502.
  async function checkServer() {
    clearTimeout(recheckTimer);
    const before = actions;
    let status = 0;
    let body = null;
    try {
      const reply = await fetch(`/predictions/${encodeURIComponent(settings.model)}`,
        { method: "POST", body: new Uint8Array(0), cache: "no-store" });
      status = reply.status;
      try { body = await reply.json(); } catch (_) { body = null; }
    } catch (_) {
      status = 0;
    }
    if (actions !== before || cam) return;      // the reader has started: their own answers tell
    if (status === 400 || status === 200) {
      setStatus("Ready: choose a photo, drop or paste one, or start the webcam.", "ok");
    } else {
      const message = status === 0
        ? "This page's own server is not answering: is python -m ferlib web still running?"
        : explain(status, body);
      setStatus(`${message} (This page checks again every ${RECHECK_MS / 1000} s.)`, "error");
      recheckTimer = setTimeout(checkServer, RECHECK_MS);
    }
  }

  // -- drawing ------------------------------------------------------------------------------------

  function mediaElement() {
    return view.mode === "webcam" ? els.video : view.mode === "photo" ? els.photo : null;
  }

  function drawOverlay() {
    const canvas = els.overlay;
    const media = mediaElement();
    const ctx = canvas.getContext("2d");
    if (!media || !view.size || !media.clientWidth) {
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      return;
    }
    const ratio = window.devicePixelRatio || 1;
    const width = media.clientWidth;
    const height = media.clientHeight;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const sx = width / view.size[0];
    const sy = height / view.size[1];
    const font = Math.max(12, Math.min(18, Math.round(width / 32)));
    ctx.font = `600 ${font}px system-ui, sans-serif`;
    ctx.textBaseline = "top";
    const boxes = view.faces.map((face) => {
      const [bx, by, bw, bh] = face.box;
      return { x: view.mirrored ? width - (bx + bw) * sx : bx * sx, y: by * sy, w: bw * sx, h: bh * sy };
    });
    ctx.lineWidth = Math.max(2, Math.round(width / 250));
    boxes.forEach((box, i) => {
      ctx.strokeStyle = colour(view.faces[i].emotion);
      ctx.strokeRect(box.x, box.y, box.w, box.h);
    });
    // Labels after all boxes, largest face first: above its box, else below, else inside its top;
    // the first place that stays in the picture and covers no label already drawn.
    const placed = [];
    const overlaps = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
    const th = font + 8;
    boxes.forEach((box, i) => {
      const face = view.faces[i];
      let label = `${i + 1} ${face.emotion} ${percent(topProbability(face))}`;
      if (ctx.measureText(label).width > 1.2 * box.w) label = `${i + 1} ${face.emotion}`;  // a small face
      const tw = ctx.measureText(label).width + 10;
      const tx = Math.max(0, Math.min(box.x, width - tw));
      const spots = [box.y - th, box.y + box.h, box.y]
        .filter((ty) => ty >= 0 && ty + th <= height)
        .map((ty) => ({ x: tx, y: ty, w: tw, h: th }));
      const spot = spots.find((s) => !placed.some((p) => overlaps(s, p))) || spots[0]
        || { x: tx, y: Math.max(0, box.y), w: tw, h: th };
      placed.push(spot);
      const c = colour(face.emotion);
      ctx.fillStyle = c;
      ctx.fillRect(spot.x, spot.y, spot.w, spot.h);
      ctx.fillStyle = textColourOn(c);
      ctx.fillText(label, spot.x + 5, spot.y + 4);
    });
  }

  function faceCard(face, index) {
    const card = document.createElement("article");
    card.className = "face";
    card.style.setProperty("--face-colour", colour(face.emotion));
    const title = document.createElement("h2");
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = String(index + 1);
    const top = document.createElement("span");
    top.className = "top";
    top.textContent = face.emotion;
    const value = document.createElement("span");
    value.className = "percent";
    value.textContent = percent(topProbability(face));
    title.append(badge, top, value);
    const bars = document.createElement("ul");
    bars.className = "bars";
    for (const emotion of settings.emotions) {
      const p = face.probabilities[emotion] ?? 0;
      const row = document.createElement("li");
      if (emotion === face.emotion) row.className = "best";
      const name = document.createElement("span");
      name.textContent = emotion;
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = `${(100 * p).toFixed(1)}%`;
      fill.style.background = colour(emotion);
      track.append(fill);
      const number = document.createElement("span");
      number.className = "value";
      number.textContent = percent(p);
      row.append(name, track, number);
      bars.append(row);
    }
    card.append(title, bars);
    return card;
  }

  function renderFaces(note) {
    const cards = view.faces.map(faceCard);
    if (note) {
      const p = document.createElement("p");
      p.className = "note";
      p.textContent = note;
      cards.push(p);
    }
    els.faces.replaceChildren(...cards);
  }

  function drawLegend() {
    els.legend.replaceChildren(...settings.emotions.map((emotion) => {
      const item = document.createElement("span");
      const chip = document.createElement("i");
      chip.style.background = colour(emotion);
      item.append(chip, emotion);
      return item;
    }));
  }

  function drawTimeline(samples, now) {
    const canvas = els.timeline;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width) return;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const start = now - TIMELINE_SECONDS * 1000;
    const xAt = (t) => ((t - start) / (TIMELINE_SECONDS * 1000)) * width;
    // Each answer is a column until the next one: the 8 probabilities stacked, 0% at the bottom.
    samples.forEach((sample, i) => {
      if (!sample.probabilities) return;
      const x0 = Math.max(0, xAt(sample.t));
      const x1 = i + 1 < samples.length ? xAt(samples[i + 1].t) : xAt(now);
      if (x1 <= 0) return;
      let bottom = height;
      for (const emotion of settings.emotions) {
        const h = (sample.probabilities[emotion] ?? 0) * height;
        ctx.fillStyle = colour(emotion);
        ctx.fillRect(x0, bottom - h, Math.max(1, x1 - x0 + 0.5), h);
        bottom -= h;
      }
    });
    ctx.strokeStyle = "rgba(0,0,0,0.15)";
    ctx.lineWidth = 1;
    for (let s = 1; s < TIMELINE_SECONDS; s += 1) {
      const x = Math.round(xAt(now - s * 1000)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, 0);
      ctx.lineTo(x, height);
      ctx.stroke();
    }
  }

  // -- photos -------------------------------------------------------------------------------------

  function showEmpty() {
    view.mode = "empty";
    view.faces = [];
    view.size = null;
    els.stage.className = "stage empty";
    els.photo.removeAttribute("src");
    if (photoUrl) URL.revokeObjectURL(photoUrl);
    photoUrl = null;
    els.faces.replaceChildren();
    drawOverlay();
  }

  function refuse(message) {
    actions += 1;
    clearTimeout(recheckTimer);
    photoRequest += 1;               // an answer still on its way is for a photo no longer shown
    showEmpty();
    setStatus(message, "error");
  }

  async function handleFile(file) {
    actions += 1;
    stopWebcam();
    clearTimeout(recheckTimer);
    if (!file) {
      refuse("No file came with that: choose a photo (JPEG, PNG, WebP, GIF, BMP or TIFF).");
      return;
    }
    const name = file.name ? `"${file.name}"` : "the pasted image";
    const Name = name.charAt(0).toUpperCase() + name.slice(1);
    if (file.type && !file.type.startsWith("image/")) {
      refuse(`${Name} is not an image (${file.type}): choose a photo (JPEG, PNG, WebP, GIF, BMP or TIFF).`);
      return;
    }
    if (file.size === 0) {
      refuse(`${Name} is empty: choose a photo (JPEG, PNG, WebP, GIF, BMP or TIFF).`);
      return;
    }
    if (file.size > settings.max_bytes) {
      refuse(`${Name} is too large: ${megabytes(file.size)}, and the limit is ${megabytes(settings.max_bytes)}. `
        + "Choose a smaller photo, or shrink this one first.");
      return;
    }
    const number = ++photoRequest;
    if (photoUrl) URL.revokeObjectURL(photoUrl);
    photoUrl = URL.createObjectURL(file);
    view.mode = "photo";
    view.mirrored = false;
    view.faces = [];
    view.size = null;
    els.stage.className = "stage photo";
    els.photo.src = photoUrl;
    els.faces.replaceChildren();
    drawOverlay();
    setStatus(`Looking for faces in ${name}…`, "busy");
    const result = await predict(file, PHOTO_TIMEOUT_MS);
    if (number !== photoRequest) return;
    if (!result.ok) {
      showEmpty();
      setStatus(result.message, "error");
      return;
    }
    const answer = result.body;
    view.faces = answer.faces;
    view.size = answer.image_size;
    const unseen = els.photo.complete && !els.photo.naturalWidth
      ? " Your browser cannot show this image format, so only the faces are listed." : "";
    if (!answer.faces.length) {
      renderFaces("No face found. The detector looks for upright faces seen from the front, at least about "
        + "30 pixels wide: try another photo, or one taken closer.");
      setStatus(`No face found in ${name}.${unseen}`, "error");
    } else {
      const n = answer.faces.length;
      const dropped = answer.faces_dropped ? ` (${answer.faces_dropped} smaller faces left out)` : "";
      renderFaces();
      setStatus(`${n} face${n === 1 ? "" : "s"} found${dropped}, in ${Math.round(result.latency)} ms. `
        + `Largest: ${answer.faces[0].emotion} ${percent(topProbability(answer.faces[0]))}.${unseen}`, "ok");
    }
    drawOverlay();
  }

  // -- the webcam ---------------------------------------------------------------------------------

  function cameraProblem(err) {
    switch (err && err.name) {
      case "NotAllowedError": case "SecurityError": case "PermissionDeniedError":
        return "Camera permission was denied. Allow the camera for this page (the camera icon in the "
          + "address bar or the site settings) and press Start webcam again, or choose a photo.";
      case "NotFoundError": case "OverconstrainedError": case "DevicesNotFoundError":
        return "No camera was found on this device: choose a photo instead.";
      case "NotReadableError": case "AbortError": case "TrackStartError":
        return "The camera could not start: another program may be using it. Close it and try again.";
      default:
        return `The camera could not start (${err ? `${err.name}: ${err.message}` : "unknown reason"}).`;
    }
  }

  async function startWebcam() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setStatus(window.isSecureContext
        ? "This browser gives no access to a camera: choose a photo instead."
        : "Browsers give the camera only to https pages and to pages of this machine: open the page as "
          + "http://127.0.0.1 (or localhost) on the computer that runs it.", "error");
      return;
    }
    actions += 1;
    clearTimeout(recheckTimer);
    photoRequest += 1;
    els.webcam.disabled = true;
    setStatus("Asking for the camera…", "busy");
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: false, video: { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: "user" },
      });
    } catch (err) {
      els.webcam.disabled = false;
      setStatus(cameraProblem(err), "error");
      return;
    }
    els.webcam.disabled = false;
    showEmpty();
    view.mode = "webcam";
    view.mirrored = true;
    els.stage.className = "stage webcam";
    els.live.hidden = false;
    els.webcam.textContent = "Stop webcam";
    els.webcam.setAttribute("aria-pressed", "true");
    els.video.srcObject = stream;
    try {
      await els.video.play();
    } catch (_) { /* muted video plays; the loop waits for frames anyway */ }
    cam = { stream, running: true, answered: [], latencies: [], samples: [], frames: 0, failures: 0 };
    stream.getVideoTracks().forEach((track) => track.addEventListener("ended", () => {
      stopWebcam();
      setStatus("The camera stopped (unplugged, or taken by another program).", "error");
    }));
    setStatus("Webcam on: sending frames…", "busy");
    webcamLoop(cam);
  }

  function stopWebcam() {
    if (!cam) return;
    cam.running = false;
    cam.stream.getTracks().forEach((track) => track.stop());
    cam = null;
    els.video.srcObject = null;
    els.live.hidden = true;
    els.webcam.textContent = "Start webcam";
    els.webcam.setAttribute("aria-pressed", "false");
    showEmpty();
  }

  function grabFrame(canvas) {
    const video = els.video;
    const width = Math.min(WEBCAM_WIDTH, video.videoWidth);
    const height = Math.round((video.videoHeight * width) / video.videoWidth);
    if (canvas.width !== width) canvas.width = width;
    if (canvas.height !== height) canvas.height = height;
    canvas.getContext("2d").drawImage(video, 0, 0, width, height);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
  }

  function updateStats(session, now) {
    session.answered = session.answered.filter((t) => now - t <= FPS_WINDOW_MS);
    const times = session.answered;
    const fps = times.length > 1 ? ((times.length - 1) * 1000) / (times[times.length - 1] - times[0]) : 0;
    const recent = session.latencies.slice(-10).sort((a, b) => a - b);
    const latency = recent.length ? recent[Math.floor(recent.length / 2)] : 0;
    els.stats.dataset.fps = fps.toFixed(2);
    els.stats.dataset.latencyMs = latency.toFixed(0);
    els.stats.dataset.frames = String(session.frames);
    els.stats.textContent = `${fps.toFixed(1)} frames/s · ${Math.round(latency)} ms latency (median of the last `
      + `${recent.length}) · ${session.frames} frames`;
  }

  // One frame at a time: the next is grabbed when the answer to this one has come (never two in flight).
  async function webcamLoop(session) {
    const canvas = document.createElement("canvas");
    while (session.running) {
      if (els.video.readyState < 2 || !els.video.videoWidth) {
        await sleep(50);
        continue;
      }
      const blob = await grabFrame(canvas);
      if (!session.running) break;
      if (!blob) {
        await sleep(100);
        continue;
      }
      const result = await predict(blob, FRAME_TIMEOUT_MS);
      if (!session.running) break;
      const now = performance.now();
      if (result.ok) {
        session.failures = 0;
        session.frames += 1;
        session.answered.push(now);
        session.latencies.push(result.latency);
        if (session.latencies.length > 50) session.latencies.shift();
        const answer = result.body;
        view.faces = answer.faces;
        view.size = answer.image_size;
        session.samples.push({ t: now, probabilities: answer.faces.length ? answer.faces[0].probabilities : null });
        renderFaces(answer.faces.length ? "" : "No face in view: face the camera, in good light.");
        const n = answer.faces.length;
        setStatus(n ? `Webcam: ${n} face${n === 1 ? "" : "s"} in view.` : "Webcam: no face found in view.",
          n ? "ok" : "info");
      } else {
        session.failures += 1;
        view.faces = [];
        session.samples.push({ t: now, probabilities: null });
        renderFaces();
        setStatus(`${result.message} (The webcam keeps trying.)`, "error");
      }
      session.samples = session.samples.filter((s) => now - s.t <= TIMELINE_SECONDS * 1000 + 1000);
      updateStats(session, now);
      drawOverlay();
      drawTimeline(session.samples, now);
      if (!result.ok) await sleep(Math.min(5000, 250 * 2 ** session.failures));
    }
  }

  // -- wiring -------------------------------------------------------------------------------------

  els.file.addEventListener("change", () => {
    const [file] = els.file.files;
    if (file) handleFile(file);
    els.file.value = "";             // choosing the same file again is a change too
  });

  els.webcam.addEventListener("click", () => {
    if (cam) {
      stopWebcam();
      setStatus("Webcam off: choose a photo, or start the webcam again.", "info");
    } else {
      startWebcam();
    }
  });

  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) document.body.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    document.body.classList.remove("dragging");
    const files = event.dataTransfer ? event.dataTransfer.files : null;
    if (files && files.length) {
      handleFile(files[0]);
    } else {
      refuse("That was not a file (a link or text?): save the picture first, then drop the file.");
    }
  });

  document.addEventListener("paste", (event) => {
    const items = event.clipboardData ? [...event.clipboardData.items] : [];
    const item = items.find((it) => it.kind === "file");
    if (item) {
      handleFile(item.getAsFile());
    } else {
      refuse("The clipboard holds no image: copy a picture (not its link), then paste again.");
    }
  });

  els.photo.addEventListener("load", drawOverlay);
  els.photo.addEventListener("error", () => {
    if (view.mode === "photo" && view.faces.length) drawOverlay();
  });
  els.video.addEventListener("loadedmetadata", drawOverlay);
  if (window.ResizeObserver) new ResizeObserver(() => drawOverlay()).observe(els.stage);
  window.addEventListener("resize", drawOverlay);

  async function start() {
    try {
      const reply = await fetch("/settings.json", { cache: "no-store" });
      Object.assign(settings, await reply.json());
    } catch (_) { /* the defaults above */ }
    els.model.textContent = settings.model;
    els.backend.textContent = settings.backend;
    drawLegend();
    setStatus("Asking the model server…", "busy");
    checkServer();
  }

  // For the tests and the curious: the live figures of the webcam.
  window.ferlibPage = { settings, view, stats: () => ({ ...els.stats.dataset }) };
  start();
})();
