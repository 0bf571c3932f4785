"use strict";
// Every string from the server or the user goes into the page through textContent (never innerHTML).
(function () {
  const $ = (id) => document.getElementById(id);
  let limitBytes = null;
  let classes = null; // the run's classes in their order (/v1/model): a class's colour is its position
  // vidcls.predict.bands.PALETTE: the same colour for a class here and in vidcls predict --timeline
  const PALETTE = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"];

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function headers() {
    const key = $("api-key").value;
    return key ? { "X-API-Key": key } : {};
  }

  function status(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "";
  }

  async function loadModel() {
    try {
      const r = await fetch("/v1/model", { headers: headers() });
      if (r.status === 401) {
        $("key-row").hidden = false;
        $("model").textContent = "this server needs an API key";
        return;
      }
      const m = await r.json();
      limitBytes = m.limits ? m.limits.max_upload_mb * 1048576 : null;
      classes = Array.isArray(m.classes) ? m.classes.map(String) : null;
      const acc = m.metrics && m.metrics.test ? ", test accuracy " + m.metrics.test.accuracy.toFixed(3) : "";
      const cal = m.calibration ? "" : "; not calibrated: every verdict is unknown (run vidcls calibrate RUN_DIR)";
      const task = m.task === "multilabel" ? "multi-label, " : "";
      $("model").textContent = m.classes.length + " classes (" + task + m.classes.join(", ") + "), members " +
        m.members.join(", ") + acc + cal;
    } catch (e) {
      $("model").textContent = "cannot reach the server";
    }
  }

  function pct(p) { return (100 * p).toFixed(1) + " %"; }

  // a multi-label record's label set: [{label, probability}], most probable first; else null
  function labelSet(record) {
    return record.task === "multilabel" && Array.isArray(record.labels) ? record.labels : null;
  }

  function renderLabels(record) {
    const set = labelSet(record);
    const box = $("labels");
    box.replaceChildren();
    $("labels-head").hidden = box.hidden = set === null;
    if (set === null) return;
    if (set.length === 0) box.appendChild(el("li", "label-none", "(none): no class reaches its threshold"));
    set.forEach((item) => box.appendChild(el("li", "label-item", item.label + " " + pct(item.probability))));
    $("labels-head").textContent = "Labels (probability at or above the class threshold, thresholds from " +
      (record.thresholds_source || "?") + ")";
  }

  function renderBars(record) {
    const box = $("bars");
    box.replaceChildren();
    const set = labelSet(record);
    const chosen = new Set((set || []).map((item) => item.label));
    const entries = Object.entries(record.probabilities).sort((a, b) => b[1] - a[1]);
    entries.forEach(([name, p], i) => {
      const mark = set === null ? (i === 0 ? " top" : "") : (chosen.has(name) ? " top" : "");
      const row = el("div", "bar-row" + mark);
      const name_ = el("span", "bar-name", name);
      name_.title = name;
      const track = el("div", "bar-track");
      const fill = el("div", "bar-fill");
      fill.style.width = Math.max(0, Math.min(100, 100 * p)) + "%";
      track.appendChild(fill);
      row.append(name_, track, el("span", "bar-value", pct(p)));
      box.appendChild(row);
    });
  }

  // ---- segments: the spans of a record classified window by window, as coloured bands -------------
  function spansOf(record) {
    return Array.isArray(record.spans) && record.spans.length ? record.spans : null;
  }

  // {class: colour}: the run's class order (else the record's), then any span label not in it
  function classColors(record) {
    const order = (classes || Object.keys(record.probabilities || {})).slice();
    (record.spans || []).forEach((s) => { if (!order.includes(s.label)) order.push(s.label); });
    const colors = new Map();
    order.forEach((name, i) => colors.set(name, PALETTE[i % PALETTE.length]));
    return { order: order, colors: colors };
  }

  // the band rows: [null] (one row: single-label spans partition the video), else one per class present
  function lanesOf(record, order) {
    if (record.task !== "multilabel") return [null];
    const present = new Set(record.spans.map((s) => s.label));
    return order.filter((name) => present.has(name));
  }

  function spanText(s) {
    const at = (a, b) => (typeof a === "number" && typeof b === "number")
      ? a.toFixed(1) + "-" + b.toFixed(1) + " s" : "frames " + s.start_frame + "-" + s.end_frame;
    return s.label + " " + at(s.start_s, s.end_s) + ", " + pct(s.probability);
  }

  function spanAt(spans, lane, index) {
    return spans.find((s) => (lane === null || s.label === lane) && s.start_frame <= index &&
      index < s.end_frame) || null;
  }

  function renderSpans(record) {
    const spans = spansOf(record);
    $("spans-box").hidden = spans === null;
    const lanesBox = $("span-lanes");
    lanesBox.replaceChildren();
    $("span-legend").replaceChildren();
    if (spans === null) return;
    const { order, colors } = classColors(record);
    const lanes = lanesOf(record, order);
    const ends = spans.concat(record.segments || []);
    const n = Math.max(1, ...ends.map((s) => s.end_frame));
    const last = ends.find((s) => s.end_frame === n);
    lanes.forEach((lane) => {
      if (lane !== null) lanesBox.appendChild(el("div", "lane-name", lane));
      const row = el("div", "lane");
      row.dataset.lane = lane === null ? "" : lane;
      spans.filter((s) => lane === null || s.label === lane).forEach((s) => {
        const band = el("div", "span");
        band.style.left = (100 * s.start_frame / n) + "%";
        band.style.width = (100 * (s.end_frame - s.start_frame) / n) + "%";
        band.style.backgroundColor = colors.get(s.label);
        band.dataset.label = s.label;
        band.title = spanText(s);
        row.appendChild(band);
      });
      lanesBox.appendChild(row);
    });
    const seconds = last && typeof last.end_s === "number";
    $("span-start").textContent = seconds ? "0 s" : "frame 0";
    $("span-end").textContent = seconds ? last.end_s.toFixed(1) + " s" : "frame " + n;
    const w = record.window || {};
    const size = typeof w.seconds === "number" ? w.seconds + " s (" + w.frames + " frames)" : w.frames + " frames";
    const step = typeof w.stride_s === "number" ? w.stride_s + " s" : w.stride_frames + " frames";
    const count = (k, what) => k + " " + what + (k === 1 ? "" : "s");
    $("spans-note").textContent = count((record.segments || []).length, "window") + " of " + size + " every " +
      step + "; " + count(spans.length, "span");
    const shown = new Set(spans.map((s) => s.label));
    order.filter((name) => shown.has(name)).forEach((name) => {
      const item = el("li", "legend-item");
      const swatch = el("span", "swatch");
      swatch.style.backgroundColor = colors.get(name);
      item.append(swatch, el("span", "legend-name", name));
      $("span-legend").appendChild(item);
    });
  }

  // the spans over one frame of the timeline: one band per lane, the colour of the span covering it
  function frameBands(record, f) {
    const spans = spansOf(record);
    if (spans === null) return null;
    const { order, colors } = classColors(record);
    const box = el("div", "frame-bands");
    lanesOf(record, order).forEach((lane) => {
      const band = el("div", "frame-band");
      const s = spanAt(spans, lane, f.index);
      if (s !== null) {
        band.style.backgroundColor = colors.get(s.label);
        band.dataset.label = s.label;
        band.title = spanText(s);
      }
      box.appendChild(band);
    });
    return box;
  }

  function renderTimeline(record) {
    const box = $("timeline");
    box.replaceChildren();
    const frames = record.frames || [];
    const thumbs = record.thumbnails || [];
    const peak = Math.max(1e-12, ...frames.map((f) => f.attention));
    frames.forEach((f, i) => {
      const cell = el("div", "frame");
      const bands = frameBands(record, f);
      if (bands !== null) cell.appendChild(bands);
      const uri = thumbs[i];
      if (typeof uri === "string" && uri.startsWith("data:image/")) {
        const img = el("img");
        img.src = uri;
        img.alt = "frame " + f.index;
        cell.appendChild(img);
      }
      const track = el("div", "att-track");
      const fill = el("div", "att-fill");
      fill.style.height = Math.round(100 * f.attention / peak) + "%";
      track.appendChild(fill);
      track.title = "attention " + f.attention.toFixed(3);
      const t = f.timestamp_ms === null || f.timestamp_ms === undefined ? "#" + f.index
        : (f.timestamp_ms / 1000).toFixed(1) + " s";
      cell.append(track, el("span", "att-time", t), el("span", "att-value", f.attention.toFixed(2)));
      box.appendChild(cell);
    });
  }

  // record.trusted: true, false, or null: unknown (the run is not calibrated, nothing was checked)
  function renderVerdict(record) {
    const v = $("verdict");
    const known = record.trusted === true || record.trusted === false;
    v.className = !known ? "unknown" : (record.trusted ? "trusted" : "untrusted");
    v.textContent = (!known ? "unknown: " : (record.trusted ? "trusted: " : "not trusted: ")) +
      (record.trust_reason || "");
    // every OOD score the verdict checked against its threshold: {name: {score, threshold, pass}}
    const box = $("ood");
    box.replaceChildren();
    const checks = record.ood && typeof record.ood === "object" ? Object.entries(record.ood) : [];
    checks.forEach(([name, c]) => {
      const t = typeof c.threshold === "number" ? c.threshold.toFixed(3) : "?";
      const s = typeof c.score === "number" ? c.score.toFixed(3) : "not a finite number";
      const item = el("li", c.pass ? "ood-pass" : "ood-fail",
        name + " score " + s + " (threshold " + t + "): " + (c.pass ? "pass" : "FAIL"));
      box.appendChild(item);
    });
    box.hidden = checks.length === 0;
  }

  function render(record) {
    $("filename").textContent = record.input;
    const set = labelSet(record);
    $("label").textContent = set === null ? record.label
      : (set.length ? set.map((item) => item.label).join(" | ") : "(none)");
    renderVerdict(record);
    renderLabels(record);
    renderBars(record);
    renderSpans(record);
    renderTimeline(record);
    const t = record.timings || {};
    $("timings").textContent = "decode " + (t.decode_s || 0).toFixed(2) + " s, features " +
      (t.features_s || 0).toFixed(2) + " s, model " + (t.model_s || 0).toFixed(2) + " s";
    $("result").hidden = false;
  }

  async function submit(event) {
    event.preventDefault();
    const file = $("file").files[0];
    if (!file) { status("choose a video first", true); return; }
    if (limitBytes !== null && file.size > limitBytes) {
      status("the file is larger than the server's limit of " + (limitBytes / 1048576) + " MB", true);
      return;
    }
    const body = new FormData();
    body.append("file", file, file.name);
    status("uploading and classifying ...", false);
    $("submit").disabled = true;
    try {
      const query = new URLSearchParams({ thumbnails: "1" });
      const segments = $("segments").value.trim(), stride = $("stride").value.trim();
      if (segments) query.set("segments", segments);
      if (stride) query.set("stride", stride);
      const r = await fetch("/v1/predict?" + query, { method: "POST", body: body, headers: headers() });
      let data = null;
      try { data = await r.json(); } catch (e) { data = null; }
      if (!r.ok) {
        if (r.status === 401) $("key-row").hidden = false;
        const wait = r.headers.get("Retry-After");
        status("error " + r.status + ": " + ((data && data.error) || r.statusText) +
               (wait ? " (retry in " + wait + " s)" : ""), true);
        return;
      }
      render(data);
      status("done", false);
    } catch (e) {
      status("the request failed: " + e, true);
    } finally {
      $("submit").disabled = false;
    }
  }

  $("upload").addEventListener("submit", submit);
  $("api-key").addEventListener("change", loadModel);
  loadModel();
})();
