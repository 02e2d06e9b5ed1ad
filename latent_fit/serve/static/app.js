// latent-fit serve: the page. Plain JS, no build step. Device work runs as server jobs; the
// page long-polls each job for its progress and result, and ignores answers a newer request
// of the same kind has made stale (the server cancels those runs too).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const PAGE = (window.crypto && crypto.randomUUID) ? crypto.randomUUID()
    : Math.random().toString(36).slice(2) + Date.now().toString(36);
  const MAX_UPLOAD = 25 * 1024 * 1024;
  const SVG = "http://www.w3.org/2000/svg";
  const canvas = $("paint");
  const ctx = canvas.getContext("2d");

  let source = null;        // what was projected last: {file}, {sample} or {face} of the page's photo
  let faces = 0;            // faces of the page's photo (0: no photo)
  let projected = false;
  let applied = false;      // Apply was pressed: changing w_r runs the edit again
  let strokes = 0;          // bumped at every stroke and clear
  let lastEditKey = null;   // w_r and strokes of the last edit started
  let active = 0;           // jobs the page waits for
  const latest = {};        // kind -> number of its newest request

  // --- messages and progress ---------------------------------------------------------------
  function say(text, isError) {
    $("message").textContent = text;
    $("status").classList.toggle("error", !!isError);
  }
  function showProgress(label, job) {
    const bar = $("progress");
    bar.hidden = false;
    if (job.total) { bar.max = job.total; bar.value = job.done; } else { bar.removeAttribute("value"); }
    const queued = job.state === "queued" ? " (waiting for the device)" : "";
    say(`${label}${queued}${job.total ? ` ${job.done}/${job.total} steps` : " …"}`);
  }
  const fmt = (v) => String(Number(Number(v).toPrecision(2)));
  const fixed = (v, n) => (v === null || v === undefined) ? "–" : Number(v).toFixed(n);

  // --- the server --------------------------------------------------------------------------
  async function post(path, body, type) {
    const res = await fetch(path, {
      method: "POST", headers: {"Content-Type": type || "application/json"},
      body: type ? body : JSON.stringify(body),
    });
    let data;
    try { data = await res.json(); } catch (e) { data = {error: `the server answered ${res.status}`}; }
    if (!res.ok || data.error) throw new Error(data.error || `the server answered ${res.status}`);
    return data;
  }

  // Run a device job; resolves with its result, or null when a newer request made it stale.
  // accepted(answer): called once the server has taken the request (so a refused one changes nothing).
  async function run(kind, path, body, type, label, accepted) {
    const mine = (latest[kind] = (latest[kind] || 0) + 1);
    active += 1;
    try {
      const answer = await post(path, body, type), job = answer.job;
      if (accepted) accepted(answer);
      let since = -1;
      for (;;) {
        const res = await fetch(`/api/job?id=${encodeURIComponent(job)}&since=${since}`);
        const s = await res.json();
        if (!res.ok) throw new Error(s.error || `the server answered ${res.status}`);
        if (mine !== latest[kind] || s.state === "cancelled") return null;
        if (s.state === "done") return s.result;
        if (s.state === "error") throw new Error(s.error);
        since = s.version;
        if (label) showProgress(label, s);
      }
    } finally {
      active -= 1;
      if (!active) $("progress").hidden = true;
    }
  }
  function staleAll(kinds) { kinds.forEach((k) => { latest[k] = (latest[k] || 0) + 1; }); }

  function enable(on) {
    ["apply", "pca", "direction-file", "reset-directions", "sweep", "save"].forEach((id) => { $(id).disabled = !on; });
  }

  // --- projection --------------------------------------------------------------------------
  async function project(src) {
    let path = "/api/project", body, type = null;
    const space = $("space").value, cls = $("class").value;
    if (src.file) {
      if (src.file.size > MAX_UPLOAD) {
        say(`${src.file.name}: ${(src.file.size / 2 ** 20).toFixed(1)} MiB is larger than the 25 MiB limit; use a smaller image`, true);
        return;
      }
      path += `?page=${PAGE}&space=${encodeURIComponent(space)}&class=${encodeURIComponent(cls)}` +
        `&name=${encodeURIComponent(src.file.name)}`;
      body = src.file;
      type = "application/octet-stream";
    } else if (src.face !== undefined) {
      body = {page: PAGE, space, class: cls, face: src.face};
    } else {
      body = {page: PAGE, space, class: cls, sample: src.sample};
    }
    const reset = (answer) => {   // the server took the new image: everything from the old one goes
      source = src;
      if (src.face === undefined) {   // a new image: its photo and faces, if any
        showPhoto(answer.photo);
        $("note").textContent = answer.note || "";
        if (answer.photo) source = {face: 0};
      }
      chooseFace(source.face);
      $("photo-result").removeAttribute("src");
      staleAll(["edit", "render", "directions", "sweep"]);
      projected = applied = false;
      lastEditKey = null;
      enable(false);
      clearPaint();
      ["target", "projection", "result", "paint-under"].forEach((id) => $(id).removeAttribute("src"));
      ["projection-info", "result-info", "sweep-info", "saved"].forEach((id) => { $(id).textContent = ""; });
      $("sliders").replaceChildren();
      $("chart").replaceChildren();
    };
    say("Sending the image …");
    try {
      const r = await run("project", path, body, type, "Projecting", reset);
      if (!r) return;
      $("target").src = r.target;
      $("projection").src = r.projection;
      $("paint-under").src = r.projection;
      $("projection-info").textContent = `PSNR ${r.psnr.toFixed(1)} dB · ${r.seconds} s · space ${r.space}` +
        (r.class === null ? "" : ` · class ${r.class}`);
      if (r.photo) $("photo-result").src = r.photo;
      $("stem").value = r.stem;
      projected = true;
      enable(true);
      say(`Projected ${r.stem}. Paint on the projection where it should change, then Apply.` +
          (faces > 1 ? " Click another box on the photo to work on that face." : ""));
    } catch (e) {
      say(e.message, true);
    }
  }

  // --- a whole photo: its faces ------------------------------------------------------------
  function showPhoto(p) {   // the photo with a box on each face, or nothing (no photo)
    faces = p ? p.boxes.length : 0;
    $("photos").hidden = !p;
    $("boxes").replaceChildren();
    if (!p) { $("photo").removeAttribute("src"); return; }
    $("photo").src = p.url;
    $("photo-info").textContent = `${p.width}×${p.height} px · ${faces} face${faces > 1 ? "s" : ""}` +
      (faces > 1 ? ": click one to project it" : "");
    const pc = (v, n) => `${(100 * v / n).toFixed(3)}%`;
    p.boxes.forEach(([l, t, r, b], k) => {
      const box = Object.assign(document.createElement("button"), {type: "button", textContent: String(k + 1),
                                                                   title: `face ${k + 1}`});
      box.dataset.testid = `face-${k}`;
      Object.assign(box.style, {left: pc(l, p.width), top: pc(t, p.height),
                                width: pc(r - l, p.width), height: pc(b - t, p.height)});
      box.addEventListener("click", () => { if (source.face !== k) project({face: k}); });
      $("boxes").append(box);
    });
  }
  function chooseFace(k) {
    $("boxes").querySelectorAll("button").forEach((b, i) => b.classList.toggle("chosen", i === k));
  }

  $("upload").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) { $("sample").value = ""; project({file}); }
  });
  $("sample").addEventListener("change", (e) => { if (e.target.value) project({sample: e.target.value}); });
  $("space").addEventListener("change", () => { if (source) project(source); });
  $("class").addEventListener("change", () => { if (source) project(source); });   // the class is the projection's

  // --- painting ----------------------------------------------------------------------------
  let drawing = false, last = null;
  function at(e) {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
  }
  function stroke(from, to) {
    const scale = canvas.width / canvas.getBoundingClientRect().width;
    ctx.globalCompositeOperation = $("eraser").checked ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = $("colour").value;
    ctx.lineWidth = Number($("brush").value) * scale;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    if (from[0] === to[0] && from[1] === to[1]) {
      ctx.arc(from[0], from[1], ctx.lineWidth / 2, 0, 2 * Math.PI);
      ctx.fill();
    } else {
      ctx.moveTo(from[0], from[1]);
      ctx.lineTo(to[0], to[1]);
      ctx.stroke();
    }
  }
  canvas.addEventListener("pointerdown", (e) => {
    if (!projected) { say("Project an image first, then paint on it.", true); return; }
    drawing = true;
    canvas.setPointerCapture(e.pointerId);
    last = at(e);
    stroke(last, last);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!drawing) return;
    const p = at(e);
    stroke(last, p);
    last = p;
  });
  ["pointerup", "pointercancel"].forEach((t) => canvas.addEventListener(t, () => {
    if (drawing) { drawing = false; strokes += 1; }
  }));
  function clearPaint() { ctx.clearRect(0, 0, canvas.width, canvas.height); strokes += 1; }
  $("clear").addEventListener("click", clearPaint);
  function painted() {
    const a = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 3; i < a.length; i += 4) if (a[i]) return true;
    return false;
  }

  // --- w_r and the edit --------------------------------------------------------------------
  let wrRange = [1e-4, 1], wrUnits = "raw";   // from /api/info: the w_r range of the server's units
  const wrHint = () => `w_r (${wrUnits} units): type a number from 0 to ${fmt(wrRange[1])} (for example ${fmt(wrRange[0] * 100)})`;
  function wrValue() {
    const text = $("wr").value.trim(), v = Number(text);
    return text !== "" && Number.isFinite(v) && v >= 0 && v <= wrRange[1] ? v : null;
  }
  const editKey = () => `${wrValue()}|${strokes}`;
  let wrTimer = null;
  function wrChanged(now) {
    clearTimeout(wrTimer);
    if (!applied) return;
    if (now) maybeEdit(); else wrTimer = setTimeout(maybeEdit, 250);
  }
  function maybeEdit() { clearTimeout(wrTimer); if (editKey() !== lastEditKey) edit(); }
  function typedWr(now) {
    const v = wrValue();
    if (v === null) { say(wrHint(), true); return; }
    $("wr-slider").value = Math.log10(Math.max(v, wrRange[0]));
    wrChanged(now);
  }
  $("wr").addEventListener("input", () => typedWr(false));
  $("wr").addEventListener("change", () => typedWr(true));
  $("wr-slider").addEventListener("input", () => { $("wr").value = fmt(10 ** Number($("wr-slider").value)); wrChanged(false); });
  $("wr-slider").addEventListener("change", () => wrChanged(true));
  $("apply").addEventListener("click", () => { applied = true; edit(); });

  async function edit() {
    if (!projected) return;
    const wr = wrValue();
    if (wr === null) { say(wrHint(), true); return; }
    if (!painted()) { say("Paint on the projection first: the strokes are the request, their footprint the mask.", true); return; }
    lastEditKey = editKey();
    try {
      const r = await run("edit", "/api/edit", {page: PAGE, wr, request: canvas.toDataURL("image/png")},
                          null, `Editing at w_r = ${fmt(wr)}:`);
      if (!r) return;
      const m = r.metrics;
      showResult(r);
      const raw = wrUnits === "raw" ? "" : ` (raw ${fmt(m.wr_effective)})`;
      $("result-info").textContent = `w_r ${fmt(m.wr)}${raw} · error in the paint ${fixed(m.mask_mse_before, 3)} → ` +
        `${fixed(m.mask_mse_after, 3)} · change outside ${fixed(m.outside_change, 3)} · ‖Δz‖ ${fixed(m.dz_norm, 2)}`;
      say(`Edited at w_r = ${fmt(wr)}. Change w_r to run it again.`);
    } catch (e) {
      say(e.message, true);
    }
  }

  function showResult(r) {   // the result, and the photo it is pasted back into
    $("result").src = r.result;
    if (r.photo) $("photo-result").src = r.photo;
  }

  // --- directions --------------------------------------------------------------------------
  async function loadDirections(path, body, type, label) {
    try {
      const r = await run("directions", path, body, type, label);
      if (!r) return;
      const box = $("sliders");
      box.replaceChildren();
      r.names.forEach((name, k) => {
        const row = document.createElement("label");
        const input = Object.assign(document.createElement("input"),
                                    {type: "range", min: -3, max: 3, step: 0.1, value: 0});
        input.dataset.testid = `direction-${k}`;
        const shown = document.createElement("span");
        shown.textContent = "0";
        input.addEventListener("input", () => { shown.textContent = input.value; render(); });
        const title = document.createElement("span");
        title.textContent = name;
        title.title = `prior std ${r.std[k]}; the slider moves in prior standard deviations`;
        row.append(title, input, shown);
        box.append(row);
      });
      showResult(r);
      say(`${r.names.length} direction(s): the sliders move the latent in prior standard deviations.`);
    } catch (e) {
      say(e.message, true);
    }
  }
  $("pca").addEventListener("click", () => loadDirections("/api/directions", {page: PAGE}, null,
                                                          "Finding principal directions"));
  $("direction-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (!file) return;
    loadDirections(`/api/directions?page=${PAGE}&name=${encodeURIComponent(file.name)}`, file,
                   "application/octet-stream", "Loading the direction file");
    e.target.value = "";
  });
  $("reset-directions").addEventListener("click", () => {
    const sliders = $("sliders").querySelectorAll("input");
    sliders.forEach((s) => { s.value = 0; s.nextElementSibling.textContent = "0"; });
    if (sliders.length) render();
  });

  let rendering = false, renderAgain = false;
  async function render() {   // one render in flight; the newest slider values follow it
    if (rendering) { renderAgain = true; return; }
    rendering = true;
    try {
      do {
        renderAgain = false;
        const strengths = Array.from($("sliders").querySelectorAll("input"), (s) => Number(s.value));
        const r = await run("render", "/api/render", {page: PAGE, strengths});
        if (r) showResult(r);
      } while (renderAgain);
    } catch (e) {
      say(e.message, true);
    } finally {
      rendering = false;
    }
  }

  // --- trade-off ---------------------------------------------------------------------------
  $("sweep").addEventListener("click", async () => {
    const body = {page: PAGE};
    if (painted()) body.request = canvas.toDataURL("image/png");
    try {
      const r = await run("sweep", "/api/sweep", body, null, "Sweeping w_r");
      if (!r) return;
      chart(r);
      $("sweep-info").textContent = `Suggested: ${r.reason}`;
      say("Sweep done: click a point to use its w_r.");
    } catch (e) {
      say(e.message, true);
    }
  });

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function chart(r) {
    const svg = $("chart"), W = 420, H = 240, L = 46, R = 14, T = 14, B = 38;
    svg.replaceChildren();
    const rows = r.rows.filter((p) => Number.isFinite(p.psnr) && Number.isFinite(p.dz_norm));
    if (!rows.length) return;
    const xs = rows.map((p) => p.dz_norm), ys = rows.map((p) => p.psnr);
    const span = (v, floor) => {
      const lo = Math.min(...v), hi = Math.max(...v), pad = (hi - lo) * 0.08 || 1;
      return [Math.max(lo - pad, floor), hi + pad];
    };
    const [x0, x1] = span(xs, 0), [y0, y1] = span(ys, -Infinity);
    const X = (v) => L + (v - x0) / (x1 - x0) * (W - L - R), Y = (v) => H - B - (v - y0) / (y1 - y0) * (H - T - B);
    svg.append(el("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#888"}),
               el("line", {x1: L, y1: T, x2: L, y2: H - B, stroke: "#888"}));
    for (let i = 0; i <= 3; i++) {
      const xv = x0 + (x1 - x0) * i / 3, yv = y0 + (y1 - y0) * i / 3;
      svg.append(el("text", {x: X(xv), y: H - B + 12, "text-anchor": "middle"}, xv.toPrecision(2)),
                 el("text", {x: L - 4, y: Y(yv) + 3, "text-anchor": "end"}, yv.toFixed(1)));
    }
    const from = r.kind === "edit" ? "the projection" : "the start";
    svg.append(el("text", {x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle"}, `‖Δz‖ from ${from} (lower: more realistic)`),
               el("text", {x: 10, y: (T + H - B) / 2, transform: `rotate(-90 10 ${(T + H - B) / 2})`, "text-anchor": "middle"},
                  r.kind === "edit" ? "PSNR in the paint (dB)" : "PSNR (dB)"),
               el("polyline", {points: rows.map((p) => `${X(p.dz_norm)},${Y(p.psnr)}`).join(" "), fill: "none", stroke: "#2b5fb3"}));
    rows.forEach((p) => {
      const best = p.wr === r.suggested;
      const dot = el("circle", {cx: X(p.dz_norm), cy: Y(p.psnr), r: best ? 7 : 5, fill: best ? "#c0392b" : "#2b5fb3", class: "pt"});
      dot.append(el("title", {}, `w_r ${fmt(p.wr)}: PSNR ${p.psnr.toFixed(1)} dB, ‖Δz‖ ${p.dz_norm.toFixed(2)}`));
      dot.addEventListener("click", () => {
        $("wr").value = fmt(p.wr);
        $("wr-slider").value = Math.log10(Math.max(p.wr, wrRange[0]));
        wrChanged(true);
      });
      const right = X(p.dz_norm) > W * 0.7;   // labels near the right edge go to the left of their point
      svg.append(dot, el("text", {x: X(p.dz_norm) + (right ? -8 : 8), y: Y(p.psnr) - 6,
                                  "text-anchor": right ? "end" : "start"}, `w_r ${fmt(p.wr)}${best ? " ★" : ""}`));
    });
  }

  // --- saving ------------------------------------------------------------------------------
  $("save").addEventListener("click", async () => {
    try {
      const r = await post("/api/save", {page: PAGE, stem: $("stem").value});
      $("stem").value = r.renamed_from || r.stem;
      const files = r.files.length > 2 ? `${r.files.slice(0, -1).join(", ")} and ${r.files.at(-1)}`
        : r.files.join(" and ");
      $("saved").textContent = `saved ${files} in ${r.out} at ${r.saved_at}` +
        (r.note ? ` (${r.note})` : "");
      say(`Saved ${r.stem}.`);
    } catch (e) {
      say(e.message, true);
    }
  });

  // --- start -------------------------------------------------------------------------------
  fetch("/api/info").then((res) => res.json()).then((info) => {
    $("generator").textContent = `${info.generator} · ${info.resolution}px · ${info.steps} steps`;
    info.spaces.forEach((s) => $("space").append(new Option(s, s, s === info.space, s === info.space)));
    info.samples.forEach((s) => $("sample").append(new Option(s, s)));
    for (let k = 0; k < info.classes; k++) $("class").append(new Option(String(k), String(k)));
    $("class-picker").hidden = !info.classes;
    wrUnits = info.wr_units;
    wrRange = [info.sweep_wrs[0], info.sweep_wrs[info.sweep_wrs.length - 1]];
    Object.assign($("wr-slider"), {min: Math.log10(wrRange[0]), max: Math.log10(wrRange[1])});
    $("wr-slider").value = Math.log10(info.wr);
    Object.assign($("wr"), {max: wrRange[1], value: fmt(info.wr)});
    $("wr-units").textContent = wrUnits === "raw" ? "" : ` (${wrUnits})`;
    document.body.dataset.ready = "1";
  }).catch((e) => say(`cannot reach the server: ${e.message}`, true));
})();
