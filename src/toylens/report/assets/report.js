/* toylens report: draws the figures described in #toylens-data (line charts in SVG, heatmaps and
 * the attention viewer on canvas). No libraries, no network. Text from the data (run names,
 * tokens) is only ever set as textContent or drawn on a canvas, never parsed as HTML. */
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("toylens-data").textContent);
  var PALETTE = ["#2457a6", "#d1495b", "#2a9d5c", "#e08e0b", "#7b4bb7", "#00798c", "#8d6a4f", "#c2459b",
                 "#5b6475", "#9bb300"];
  var SVGNS = "http://www.w3.org/2000/svg";
  var DASHES = ["none", "6 3", "2 2", "7 3 2 3"];

  function color(i) { return PALETTE[((i % PALETTE.length) + PALETTE.length) % PALETTE.length]; }
  function el(tag, cls, parent) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (parent) parent.appendChild(e);
    return e;
  }
  function svg(tag, attrs, parent) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined) return "n/a";
    if (v === 0) return "0";
    var a = Math.abs(v);
    if (a >= 1e5 || a < 1e-3) return v.toExponential(2);
    return String(Number(v.toPrecision(4)));
  }

  /* ---- tooltip ------------------------------------------------------------------------ */
  var tip = el("div", null, document.body);
  tip.id = "tip";
  function showTip(evt, text) {
    tip.textContent = text;
    tip.style.display = "block";
    var x = evt.clientX + 14, y = evt.clientY + 12;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    if (x + w > window.innerWidth - 4) x = evt.clientX - w - 10;
    if (y + h > window.innerHeight - 4) y = evt.clientY - h - 10;
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  function hideTip() { tip.style.display = "none"; }

  /* ---- scales --------------------------------------------------------------------------- */
  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + 1; }
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
    var err = (n * step) / (hi - lo);
    if (err <= 0.15) step *= 10; else if (err <= 0.35) step *= 5; else if (err <= 0.75) step *= 2;
    var ticks = [];
    for (var t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
    return ticks;
  }
  /* Tick labels with just enough decimals to tell neighbouring ticks apart. */
  function tickFormatter(ticks, log) {
    if (log || ticks.length < 2) return fmt;
    var step = Math.abs(ticks[1] - ticks[0]), big = Math.max.apply(null, ticks.map(Math.abs));
    if (!(step > 0) || big >= 1e5 || step < 1e-4) return function (v) { return v === 0 ? "0" : v.toExponential(2); };
    var digits = Math.max(0, Math.ceil(-Math.log10(step) - 1e-9));
    return function (v) { return v.toFixed(digits); };
  }
  function logTicks(lo, hi) {
    var ticks = [];
    for (var e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      var t = Math.pow(10, e);
      if (t >= lo * 0.999 && t <= hi * 1.001) ticks.push(t);
    }
    return ticks.length >= 2 ? ticks : [lo, hi];
  }
  function scale(lo, hi, a, b, log) {
    if (log) { lo = Math.log10(lo); hi = Math.log10(hi); }
    var k = hi > lo ? (b - a) / (hi - lo) : 0;
    return function (v) { return a + ((log ? Math.log10(v) : v) - lo) * k; };
  }

  /* ---- line charts ------------------------------------------------------------------------ */
  function lineChart(root, fig) {
    var state = { logX: !!fig.log_x, logY: !!fig.log_y, hidden: {} };
    var head = el("div", "fig-title", root);
    head.appendChild(document.createTextNode(fig.title));
    var toggles = el("span", "toggles", head);
    (fig.x_ticks ? [["log y", "logY"]] : [["log x", "logX"], ["log y", "logY"]]).forEach(function (t) {
      var b = el("button", state[t[1]] ? "on" : "", toggles);
      b.type = "button";
      b.textContent = t[0];
      b.addEventListener("click", function () {
        state[t[1]] = !state[t[1]];
        b.className = state[t[1]] ? "on" : "";
        draw();
      });
    });
    if (fig.guide) el("p", "fig-guide", root).textContent = fig.guide;
    var holder = el("div", null, root);
    var legend = el("div", "legend", root);
    fig.series.forEach(function (s, i) {
      var item = el("span", null, legend);
      var sw = el("i", null, item);
      sw.style.background = s.dash ? "repeating-linear-gradient(90deg," + color(s.color) + " 0 " + [0, 4, 2, 5][s.dash % 4] +
        "px,transparent 0 6px)" : color(s.color);
      item.appendChild(document.createTextNode(s.name));
      item.addEventListener("click", function () {
        state.hidden[i] = !state.hidden[i];
        item.className = state.hidden[i] ? "off" : "";
        draw();
      });
    });
    function draw() {
      holder.textContent = "";
      var visible = fig.series.map(function (s, i) { return state.hidden[i] ? [] : seriesPoints(s, state); });
      var frame = chartFrame(fig, state, visible);
      if (!frame) { el("p", "fig-guide", holder).textContent = "(no values to show)"; return; }
      var plot = svg("svg", { width: frame.W, height: frame.H, viewBox: "0 0 " + frame.W + " " + frame.H, role: "img" }, holder);
      drawAxes(plot, frame, fig, state);
      drawMarks(plot, frame, fig, state);
      var drawn = [];
      fig.series.forEach(function (s, i) { drawn = drawn.concat(drawSeries(plot, frame, s, visible[i], state)); });
      attachHover(plot, frame, fig, drawn);
    }
    draw();
  }

  /* [x, y, err] of a series that can be drawn on the current axes. */
  function seriesPoints(s, state) {
    var out = [];
    for (var j = 0; j < s.x.length; j++) {
      var x = s.x[j], y = s.y[j], e = s.err ? s.err[j] || 0 : 0;
      if (y === null || x === null || (state.logX && x <= 0) || (state.logY && y <= 0)) continue;
      out.push([x, y, e]);
    }
    return out;
  }

  /* Size, value ranges and scales of a chart; null when nothing is visible. */
  function chartFrame(fig, state, visible) {
    var all = [];
    visible.forEach(function (p) { all = all.concat(p); });
    if (!all.length) return null;
    var f = { W: fig.small ? 360 : 560, H: fig.small ? 220 : 300, m: { l: 58, r: 12, t: 8, b: 38 } };
    var xs = all.map(function (p) { return p[0]; });
    f.x0 = Math.min.apply(null, xs); f.x1 = Math.max.apply(null, xs);
    f.y0 = Math.min.apply(null, all.map(function (p) { return p[1] - p[2]; }));
    f.y1 = Math.max.apply(null, all.map(function (p) { return p[1] + p[2]; }));
    if (state.logY) f.y0 = Math.max(f.y0, Math.min.apply(null, all.map(function (p) { return p[1]; })) / 2);
    if (fig.x_range && !(state.logX && fig.x_range[0] <= 0)) { f.x0 = fig.x_range[0]; f.x1 = fig.x_range[1]; }
    if (f.x1 === f.x0) { f.x0 -= 1; f.x1 += 1; }
    if (f.y1 === f.y0) { f.y0 -= Math.abs(f.y0) * 0.1 + 0.5; f.y1 += Math.abs(f.y1) * 0.1 + 0.5; }
    if (!state.logY) { var pad = (f.y1 - f.y0) * 0.05; f.y0 -= pad; f.y1 += pad; }
    f.sx = scale(f.x0, f.x1, f.m.l, f.W - f.m.r, state.logX);
    f.sy = scale(f.y0, f.y1, f.H - f.m.b, f.m.t, state.logY);
    return f;
  }

  function xName(fig, x) { return fig.x_ticks ? String(fig.x_ticks[x]) : fmt(x); }

  function drawAxes(plot, f, fig, state) {
    var m = f.m, W = f.W, H = f.H;
    var xt = fig.x_ticks ? fig.x_ticks.map(function (_, i) { return i; }) : state.logX ? logTicks(f.x0, f.x1) : niceTicks(f.x0, f.x1, 6);
    var yt = state.logY ? logTicks(f.y0, f.y1) : niceTicks(f.y0, f.y1, 5);
    var yName = tickFormatter(yt, state.logY), xTick = fig.x_ticks ? function (t) { return xName(fig, t); } : tickFormatter(xt, state.logX);
    var axis = svg("g", { "class": "axis" }, plot);
    yt.forEach(function (t) {
      svg("line", { x1: m.l, x2: W - m.r, y1: f.sy(t), y2: f.sy(t), "class": "gridline" }, axis);
      svg("text", { x: m.l - 5, y: f.sy(t) + 3.5, "text-anchor": "end" }, axis).textContent = yName(t);
    });
    xt.forEach(function (t) {
      svg("line", { x1: f.sx(t), x2: f.sx(t), y1: H - m.b, y2: H - m.b + 4 }, axis);
      svg("text", { x: f.sx(t), y: H - m.b + 15, "text-anchor": "middle" }, axis).textContent = xTick(t);
    });
    svg("path", { d: "M" + m.l + "," + m.t + "V" + (H - m.b) + "H" + (W - m.r), fill: "none" }, axis);
    svg("text", { x: (m.l + W - m.r) / 2, y: H - 4, "text-anchor": "middle" }, axis).textContent = fig.x_label;
    svg("text", { x: 12, y: (m.t + H - m.b) / 2, "text-anchor": "middle",
                  transform: "rotate(-90 12 " + (m.t + H - m.b) / 2 + ")" }, axis).textContent = fig.y_label;
  }

  /* Vertical dashed lines at fig.marks (stage boundaries), each with its label as a tooltip. */
  function drawMarks(plot, f, fig, state) {
    (fig.marks || []).forEach(function (mk) {
      if (mk.x < f.x0 || mk.x > f.x1 || (state.logX && mk.x <= 0)) return;
      var X = f.sx(mk.x);
      var line = svg("line", { x1: X, x2: X, y1: f.m.t, y2: f.H - f.m.b, stroke: color(mk.color), "stroke-width": 1,
                               "stroke-dasharray": "2,3", opacity: 0.8, "class": "mark" }, plot);
      svg("title", {}, line).textContent = mk.label;
    });
  }

  /* One series: error bars, the line, and dots when there are few points; returns its points in pixels. */
  function drawSeries(plot, f, s, p, state) {
    if (!p.length) return [];
    var c = color(s.color), g = svg("g", {}, plot);
    p.forEach(function (q) {
      if (!q[2]) return;
      var lo = state.logY ? Math.max(q[1] - q[2], f.y0) : q[1] - q[2], X = f.sx(q[0]);
      svg("path", { d: "M" + X + "," + f.sy(lo) + "V" + f.sy(q[1] + q[2]) + "M" + (X - 3) + "," + f.sy(lo) + "h6M" +
                    (X - 3) + "," + f.sy(q[1] + q[2]) + "h6", stroke: c, "stroke-width": 1, fill: "none", opacity: 0.7 }, g);
    });
    var d = p.map(function (q, j) { return (j ? "L" : "M") + f.sx(q[0]).toFixed(1) + "," + f.sy(q[1]).toFixed(1); }).join("");
    svg("path", { d: d, fill: "none", stroke: c, "stroke-width": 1.8, "stroke-dasharray": DASHES[s.dash % 4] }, g);
    if (p.length <= 40) p.forEach(function (q) { svg("circle", { cx: f.sx(q[0]), cy: f.sy(q[1]), r: 2.2, fill: c }, g); });
    return p.map(function (q) { return { X: f.sx(q[0]), Y: f.sy(q[1]), q: q, s: s }; });
  }

  /* Hovering shows the nearest point's series, x, and y (± its error bar). */
  function attachHover(plot, f, fig, drawn) {
    var dot = svg("circle", { r: 4.5, fill: "none", stroke: "#1d2330", "stroke-width": 1.5, visibility: "hidden" }, plot);
    var over = svg("rect", { x: f.m.l, y: f.m.t, width: f.W - f.m.l - f.m.r, height: f.H - f.m.t - f.m.b,
                             fill: "transparent" }, plot);
    over.addEventListener("mousemove", function (evt) {
      var box = plot.getBoundingClientRect(), mx = evt.clientX - box.left, my = evt.clientY - box.top;
      var best = null, bd = Infinity;
      drawn.forEach(function (d) { var dd = (d.X - mx) * (d.X - mx) + (d.Y - my) * (d.Y - my); if (dd < bd) { bd = dd; best = d; } });
      if (!best) return;
      dot.setAttribute("cx", best.X); dot.setAttribute("cy", best.Y); dot.setAttribute("visibility", "visible");
      var text = best.s.name + "\n" + fig.x_label + " = " + xName(fig, best.q[0]) + "\n" + fig.y_label + " = " + fmt(best.q[1]);
      if (best.q[2]) text += " ± " + fmt(best.q[2]);
      showTip(evt, text);
    });
    over.addEventListener("mouseleave", function () { dot.setAttribute("visibility", "hidden"); hideTip(); });
  }

  /* ---- heatmaps ---------------------------------------------------------------------------- */
  var BLUES = [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];
  var RDBU = [[33, 102, 172], [103, 169, 207], [247, 247, 247], [239, 138, 98], [178, 24, 43]];
  function ramp(stops, t) {
    t = Math.max(0, Math.min(1, t)) * (stops.length - 1);
    var i = Math.min(Math.floor(t), stops.length - 2), f = t - i, a = stops[i], b = stops[i + 1];
    return "rgb(" + Math.round(a[0] + (b[0] - a[0]) * f) + "," + Math.round(a[1] + (b[1] - a[1]) * f) + "," +
           Math.round(a[2] + (b[2] - a[2]) * f) + ")";
  }
  function colorScale(lo, hi, diverging) {
    var stops = diverging ? RDBU : BLUES;
    return function (v) { return v === null ? "#e3e3e3" : ramp(stops, hi > lo ? (v - lo) / (hi - lo) : 0.5); };
  }
  function range(z) {
    var lo = Infinity, hi = -Infinity;
    z.forEach(function (row) { row.forEach(function (v) { if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); } }); });
    return lo <= hi ? [lo, hi] : [0, 1];
  }

  /* Draw one heatmap panel on a canvas; returns the canvas. opts: lo, hi, diverging, label. */
  function heatmap(parent, panel, opts) {
    var rows = panel.z.length, cols = rows ? panel.z[0].length : 0;
    var cell = Math.max(2, Math.min(26, Math.floor(Math.min(440 / Math.max(cols, 1), 440 / Math.max(rows, 1)))));
    var ctx0 = document.createElement("canvas").getContext("2d");
    ctx0.font = "10px sans-serif";
    function labelWidth(labels) {
      var w = 0;
      labels.forEach(function (s) { w = Math.max(w, ctx0.measureText(String(s)).width); });
      return Math.min(110, Math.ceil(w) + 6);
    }
    var stride = Math.ceil(11 / cell);
    var ml = labelWidth(panel.y_labels) + (panel.y_title ? 14 : 0), mb = labelWidth(panel.x_labels) + (panel.x_title ? 14 : 0);
    var W = ml + cols * cell + 4, H = rows * cell + mb + 4, dpr = window.devicePixelRatio || 1;
    var canvas = el("canvas", null, parent);
    canvas.width = W * dpr; canvas.height = H * dpr;
    canvas.style.width = W + "px"; canvas.style.height = H + "px";
    var ctx = canvas.getContext("2d");
    ctx.scale(dpr, dpr);
    var cs = colorScale(opts.lo, opts.hi, opts.diverging);
    for (var r = 0; r < rows; r++) for (var c = 0; c < cols; c++) {
      ctx.fillStyle = cs(panel.z[r][c]);
      ctx.fillRect(ml + c * cell, r * cell, cell, cell);
    }
    ctx.fillStyle = "#5b6475"; ctx.font = "10px sans-serif"; ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (r = 0; r < rows; r += stride) ctx.fillText(clip(panel.y_labels[r]), ml - 4, r * cell + cell / 2);
    for (c = 0; c < cols; c += stride) {
      ctx.save(); ctx.translate(ml + c * cell + cell / 2, rows * cell + 4); ctx.rotate(-Math.PI / 2);
      ctx.fillText(clip(panel.x_labels[c]), 0, 0); ctx.restore();
    }
    ctx.textAlign = "center";
    if (panel.x_title) ctx.fillText(panel.x_title, ml + cols * cell / 2, H - 6);
    if (panel.y_title) { ctx.save(); ctx.translate(6, rows * cell / 2); ctx.rotate(-Math.PI / 2); ctx.fillText(panel.y_title, 0, 0); ctx.restore(); }
    canvas.addEventListener("mousemove", function (evt) {
      var box = canvas.getBoundingClientRect();
      var c = Math.floor((evt.clientX - box.left - ml) / cell), r = Math.floor((evt.clientY - box.top) / cell);
      if (c < 0 || r < 0 || c >= cols || r >= rows) { hideTip(); return; }
      var yt = panel.y_title ? panel.y_title + " " : "", xt = panel.x_title ? panel.x_title + " " : "";
      showTip(evt, yt + r + ": " + panel.y_labels[r] + "\n" + xt + c + ": " + panel.x_labels[c] + "\n" +
              opts.label + " = " + fmt(panel.z[r][c]));
    });
    canvas.addEventListener("mouseleave", hideTip);
    return canvas;
  }
  function clip(s) { s = String(s); return s.length > 16 ? s.slice(0, 15) + "…" : s; }

  function colorbar(parent, lo, hi, diverging, label) {
    var box = el("div", "cbar", parent);
    el("span", null, box).textContent = fmt(lo);
    var c = el("canvas", null, box);
    c.width = 120; c.height = 10;
    var ctx = c.getContext("2d"), cs = colorScale(0, 119, diverging);
    for (var i = 0; i < 120; i++) { ctx.fillStyle = cs(i); ctx.fillRect(i, 0, 1, 10); }
    el("span", null, box).textContent = fmt(hi) + "  " + label;
  }

  function heatmapFigure(root, fig) {
    el("div", "fig-title", root).textContent = fig.title;
    if (fig.guide) el("p", "fig-guide", root).textContent = fig.guide;
    var panels = el("div", "panels", root);
    fig.panels.forEach(function (p) {
      var box = el("div", "panel", panels);
      el("div", "ptitle", box).textContent = p.title;
      var lo = fig.zmin, hi = fig.zmax;
      if (!fig.shared_scale) {
        var rg = range(p.z);
        lo = rg[0]; hi = rg[1];
        if (fig.diverging) { hi = Math.max(Math.abs(lo), Math.abs(hi)); lo = -hi; }
      }
      heatmap(box, p, { lo: lo, hi: hi, diverging: fig.diverging, label: fig.value_label });
      if (!fig.shared_scale) colorbar(box, lo, hi, fig.diverging, fig.value_label);
    });
    if (fig.shared_scale) colorbar(root, fig.zmin, fig.zmax, fig.diverging, fig.value_label);
  }

  /* ---- attention viewer --------------------------------------------------------------------- */
  function attentionViewer(root, fig) {
    if (fig.title) el("div", "fig-title", root).textContent = fig.title;
    if (fig.guide) el("p", "fig-guide", root).textContent = fig.guide;
    var controls = el("div", "controls", root);
    var view = el("div", "attn-view", root);
    // Start on the first run's last checkpoint: the trained model, not the initialisation.
    var first = 0;
    fig.runs.forEach(function (r, i) { if (r.label === fig.runs[0].label) first = i; });
    var state = { run: first, layer: 0, head: 0, example: 0 };
    function select(parent, name, options) {
      var label = el("label", null, parent);
      label.appendChild(document.createTextNode(name + " "));
      var s = el("select", null, label);
      s.setAttribute("data-control", name);
      options.forEach(function (o, i) { var opt = el("option", null, s); opt.value = i; opt.textContent = o; });
      s.addEventListener("change", function () { state[name] = Number(s.value); if (name === "run") rebuild(); else draw(); });
      return s;
    }
    select(controls, "run", fig.runs.map(function (r) { return r.label + " · " + r.checkpoint; })).value = first;
    var dynamic = el("span", "controls", controls);
    function rebuild() {
      dynamic.textContent = "";
      var run = fig.runs[state.run], ex = run.examples[0];
      var L = ex.patterns.length, Hh = ex.patterns[0].length;
      state.layer = Math.min(state.layer, L - 1); state.head = Math.min(state.head, Hh - 1);
      state.example = Math.min(state.example, run.examples.length - 1);
      var parts = [["layer", L, "L"], ["head", Hh, "H"]];
      parts.forEach(function (p) {
        var names = [];
        for (var i = 0; i < p[1]; i++) names.push(p[2] + i);
        select(dynamic, p[0], names).value = state[p[0]];
      });
      select(dynamic, "example", run.examples.map(function (e, i) { return e.source || "#" + i; })).value = state.example;
      draw();
    }
    function draw() {
      view.textContent = "";
      var run = fig.runs[state.run], ex = run.examples[state.example];
      var z = ex.patterns[state.layer][state.head];
      var labels = ex.tokens.slice(0, z.length);
      var panel = { title: "", z: z, x_labels: labels.slice(0, z[0].length), y_labels: labels, x_title: "key", y_title: "query" };
      var canvas = heatmap(view, panel, { lo: 0, hi: 1, diverging: false, label: "attention" });
      canvas.setAttribute("data-attn", [state.run, state.layer, state.head, state.example].join(","));
      colorbar(view, 0, 1, false, "attention probability");
    }
    rebuild();
  }

  var DRAW = { lines: lineChart, heatmaps: heatmapFigure, attention: attentionViewer };
  document.querySelectorAll("[data-figure]").forEach(function (node) {
    var fig = DATA.figures[node.getAttribute("data-figure")];
    var draw = fig && DRAW[fig.kind];
    if (draw) draw(node, fig);
  });
  document.body.setAttribute("data-rendered", "true");
})();
