(function () {
  "use strict";
  var svg = document.querySelector("#diagram svg");
  if (!svg) { return; }
  var view = document.getElementById("viewport");
  var box = document.getElementById("diagram");
  var nodes = Array.prototype.slice.call(svg.querySelectorAll(".node"));
  var edges = Array.prototype.slice.call(svg.querySelectorAll(".edge"));
  var byId = new Map();
  var incident = new Map();
  nodes.forEach(function (n) {
    byId.set(n.dataset.id, n);
    incident.set(n.dataset.id, []);
  });
  edges.forEach(function (e) {
    incident.get(e.dataset.source).push(e);
    incident.get(e.dataset.target).push(e);
  });
  var targets = (view.dataset.targets || "").split(" ").filter(function (t) { return byId.has(t); });
  var tip = document.getElementById("tooltip");
  var panel = document.getElementById("panel");
  var contentW = parseFloat(svg.dataset.width), contentH = parseFloat(svg.dataset.height);

  // ---------------------------------------------------------------- zoom and pan
  var MIN_K = 0.01, MAX_K = 8, MAX_FIT = 1.5, FAR_K = 0.35, READABLE_K = 0.6;
  var t = { k: 1, x: 0, y: 0 };
  var far = null;
  function apply() {
    view.setAttribute("transform", "translate(" + t.x.toFixed(2) + "," + t.y.toFixed(2) + ") scale(" + t.k.toFixed(5) + ")");
    // labels smaller than about 4 px cannot be read: not drawing them keeps big graphs fast
    if ((t.k < FAR_K) !== far) { far = t.k < FAR_K; svg.classList.toggle("far", far); }
  }
  function size() { return [box.clientWidth, box.clientHeight]; }
  function zoomAt(factor, px, py) {
    var k = Math.min(MAX_K, Math.max(MIN_K, t.k * factor));
    t.x = px - (px - t.x) * k / t.k;
    t.y = py - (py - t.y) * k / t.k;
    t.k = k;
    apply();
  }
  function centreOn(x, y, k) {
    var s = size();
    if (k) { t.k = k; }
    t.x = s[0] / 2 - x * t.k;
    t.y = s[1] / 2 - y * t.k;
    apply();
  }
  function visible(x, y, margin) {
    var s = size(), sx = t.x + x * t.k, sy = t.y + y * t.k;
    return sx >= margin && sy >= margin && sx <= s[0] - margin && sy <= s[1] - margin;
  }
  // fitted to the window (the shown nodes and their labels when the sliders hide some,
  // else the whole drawing; small drawings enlarged at most 1.5x), then every target is
  // brought inside the window if it is not
  function fit() {
    var s = size(), pad = 12;
    var b = { x: 0, y: 0, width: contentW, height: contentH };
    if (shown.nodes < nodes.length) {
      var x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity, m = 16;  // + outlines
      nodes.forEach(function (n) {
        if (n.tier > shown.s) { return; }
        var r = n.getBBox();
        x0 = Math.min(x0, r.x); y0 = Math.min(y0, r.y);
        x1 = Math.max(x1, r.x + r.width); y1 = Math.max(y1, r.y + r.height);
      });
      if (x1 > x0) { b = { x: x0 - m, y: y0 - m, width: x1 - x0 + 2 * m, height: y1 - y0 + 2 * m }; }
    }
    t.k = Math.max(MIN_K, Math.min(MAX_FIT, (s[0] - 2 * pad) / b.width, (s[1] - 2 * pad) / b.height));
    t.x = (s[0] - b.width * t.k) / 2 - b.x * t.k;
    t.y = (s[1] - b.height * t.k) / 2 - b.y * t.k;
    apply();
    targets.forEach(function (id) {
      var n = byId.get(id), x = parseFloat(n.dataset.x), y = parseFloat(n.dataset.y);
      if (!visible(x, y, 4)) { centreOn(x, y); }
    });
  }
  box.addEventListener("wheel", function (evt) {
    evt.preventDefault();
    var r = box.getBoundingClientRect();
    zoomAt(Math.exp(-evt.deltaY * 0.0015), evt.clientX - r.left, evt.clientY - r.top);
  }, { passive: false });
  var drag = null, dragged = false;
  box.addEventListener("pointerdown", function (evt) {
    if (evt.button !== 0) { return; }
    drag = { x: evt.clientX, y: evt.clientY, tx: t.x, ty: t.y };
    dragged = false;
  });
  window.addEventListener("pointermove", function (evt) {
    if (!drag) { return; }
    var dx = evt.clientX - drag.x, dy = evt.clientY - drag.y;
    if (!dragged && Math.abs(dx) + Math.abs(dy) < 4) { return; }
    dragged = true;
    box.classList.add("panning");
    t.x = drag.tx + dx;
    t.y = drag.ty + dy;
    apply();
  });
  window.addEventListener("pointerup", function () { drag = null; box.classList.remove("panning"); });
  box.addEventListener("click", function (evt) {  // the click that ends a drag selects nothing
    if (dragged) { evt.stopPropagation(); evt.preventDefault(); dragged = false; }
  }, true);
  function zoomButton(factor) {
    var s = size();
    zoomAt(factor, s[0] / 2, s[1] / 2);
  }
  document.getElementById("zoom-in").addEventListener("click", function () { zoomButton(1.25); });
  document.getElementById("zoom-out").addEventListener("click", function () { zoomButton(0.8); });
  document.getElementById("fit").addEventListener("click", fit);
  document.addEventListener("keydown", function (evt) {
    if (evt.target && /^(INPUT|TEXTAREA)$/.test(evt.target.tagName)) { return; }
    if (evt.key === "+" || evt.key === "=") { zoomButton(1.25); }
    else if (evt.key === "-") { zoomButton(0.8); }
    else if (evt.key === "0") { fit(); }
  });
  window.addEventListener("resize", fit);

  // ---------------------------------------------------------------- hover card, panel
  function focus(node) {
    svg.classList.add("focus");
    node.classList.add("hl");
    incident.get(node.dataset.id).forEach(function (e) {
      if (!edgeShown(e)) { return; }
      e.classList.add("hl");
      byId.get(e.dataset.source).classList.add("hl");
      byId.get(e.dataset.target).classList.add("hl");
    });
  }
  function unfocus() {
    svg.classList.remove("focus");
    Array.prototype.forEach.call(svg.querySelectorAll(".hl"), function (x) { x.classList.remove("hl"); });
  }
  function moveTip(evt) {
    var w = tip.offsetWidth, h = tip.offsetHeight;
    var x = evt.clientX + 14, y = evt.clientY + 14;
    if (x + w > window.innerWidth - 4) { x = Math.max(4, evt.clientX - 14 - w); }
    if (y + h > window.innerHeight - 4) { y = Math.max(4, evt.clientY - 14 - h); }
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  function line(cls, text) {
    var div = document.createElement("div");
    div.className = cls;
    div.textContent = text;
    tip.appendChild(div);
    return div;
  }
  function list(json) {
    try { return JSON.parse(json || "[]"); } catch (err) { return []; }
  }
  function showTip(node, evt) {
    var d = node.dataset;
    tip.textContent = "";
    if (d.label) { line("card-label", d.label); }
    line("card-id", d.id);
    line("card-kind", d.kind + (d.site ? " at " + d.site : ""));
    line("card-effect", "effect " + d.effect + (d.activation !== "–" ? "   activation " + d.activation : ""));
    var contexts = list(d.contexts);
    if (contexts.length) {
      line("card-head", "top contexts");
      contexts.forEach(function (c) { line("card-context", c); });
    }
    var up = list(d.up), down = list(d.down);
    if (up.length) { line("card-logits", "promotes ↑ " + up.join("  ")); }
    if (down.length) { line("card-logits", "suppresses ↓ " + down.join("  ")); }
    tip.hidden = false;
    moveTip(evt);
  }
  function select(node) {
    nodes.forEach(function (m) { m.classList.toggle("selected", m === node); });
    document.getElementById("panel-title").textContent = node.dataset.id;
    Array.prototype.forEach.call(panel.querySelectorAll(".dashboard"), function (d) {
      d.hidden = d.id !== "dash-" + node.dataset.index;
    });
    panel.hidden = false;
  }
  nodes.forEach(function (n) {
    n.addEventListener("mouseenter", function (evt) { if (!drag) { focus(n); showTip(n, evt); } });
    n.addEventListener("mousemove", moveTip);
    n.addEventListener("mouseleave", function () { unfocus(); tip.hidden = true; });
    n.addEventListener("click", function () { select(n); });
    n.addEventListener("keydown", function (evt) {
      if (evt.key === "Enter" || evt.key === " ") { select(n); evt.preventDefault(); }
    });
  });
  document.getElementById("panel-close").addEventListener("click", function () {
    panel.hidden = true;
    nodes.forEach(function (m) { m.classList.remove("selected"); });
  });

  // ---------------------------------------------------------------- search
  var search = document.getElementById("search");
  var searchCount = document.getElementById("search-count");
  var matches = [], current = -1;
  function matchesQuery(n, q) {
    var d = n.dataset;
    if (/^#?\d+$/.test(q)) { return d.feature === q.replace("#", ""); }
    return d.id.toLowerCase().indexOf(q) >= 0 || d.label.toLowerCase().indexOf(q) >= 0;
  }
  function runSearch() {
    var q = search.value.trim().toLowerCase();
    matches.forEach(function (n) { n.classList.remove("match", "current"); });
    var all = q ? nodes.filter(function (n) { return matchesQuery(n, q); }) : [];
    matches = all.filter(function (n) { return n.tier <= shown.s; });  // pruned ones are hidden
    matches.forEach(function (n) { n.classList.add("match"); });
    svg.classList.toggle("searching", q.length > 0);
    searchCount.textContent = !q ? "" : matches.length + (matches.length === 1 ? " match" : " matches")
      + (all.length > matches.length ? " (" + (all.length - matches.length) + " more pruned away)" : "");
    current = -1;
    if (matches.length) { next(false); }
  }
  // mark the next match; Enter (always) or a first match off-screen or too small to read
  // centres it at a readable scale
  function next(always) {
    if (!matches.length) { return; }
    if (current >= 0) { matches[current].classList.remove("current"); }
    current = (current + 1) % matches.length;
    var n = matches[current], x = parseFloat(n.dataset.x), y = parseFloat(n.dataset.y);
    n.classList.add("current");
    if (always || t.k < READABLE_K || !visible(x, y, 20)) { centreOn(x, y, Math.max(t.k, 1)); }
  }
  search.addEventListener("input", runSearch);
  search.addEventListener("keydown", function (evt) {
    if (evt.key === "Enter") { next(true); evt.preventDefault(); }
    else if (evt.key === "Escape") { search.value = ""; runSearch(); }
  });

  // ---------------------------------------------------------------- pruning sliders
  // Python (featcircuits.render.shares) put every node and edge into tier groups: tier m
  // is shown at slider value v when m <= v * steps. A step only flips the class of the
  // groups that change; hiding is by `visibility` (inherited: a hidden group hides all it
  // holds, and nothing is laid out again)
  var nodeSlider = document.getElementById("node-share");
  var edgeSlider = document.getElementById("edge-share");
  var tiers = Array.prototype.slice.call(svg.querySelectorAll("g.tier")).map(function (g) {
    return { g: g, m: parseInt(g.dataset.tier, 10), nodes: g.querySelectorAll(".node").length };
  });
  var etiers = Array.prototype.slice.call(svg.querySelectorAll("g.etier")).map(function (g) {
    return { g: g, m: parseInt(g.dataset.etier, 10), parent: parseInt(g.parentNode.dataset.tier, 10),
             edges: g.childElementCount };
  });
  nodes.forEach(function (n) { n.tier = parseInt(n.parentNode.dataset.tier, 10); });
  edges.forEach(function (e) {
    e.etier = parseInt(e.parentNode.dataset.etier, 10);
    e.tier = parseInt(e.parentNode.parentNode.dataset.tier, 10);
  });
  var shown = { s: Infinity, e: Infinity, nodes: nodes.length, edges: edges.length };
  function level(slider) {  // the largest tier shown; everything at the slider's maximum
    var v = parseFloat(slider.value), steps = parseInt(slider.dataset.steps, 10);
    return v >= 1 ? Infinity : Math.round(v * steps);
  }
  function edgeShown(e) { return e.tier <= shown.s && e.etier <= shown.e; }
  function applyShares() {
    var s = level(nodeSlider), es = level(edgeSlider);
    if (s !== shown.s) {
      tiers.forEach(function (t) {
        var hide = t.m > s;
        if (hide !== t.g.classList.contains("cut")) { t.g.classList.toggle("cut", hide); }
      });
    }
    if (es !== shown.e) {
      etiers.forEach(function (t) {
        var hide = t.m > es;
        if (hide !== t.g.classList.contains("cut")) { t.g.classList.toggle("cut", hide); }
      });
    }
    shown.s = s;
    shown.e = es;
    shown.nodes = 0;
    shown.edges = 0;
    tiers.forEach(function (t) { if (t.m <= s) { shown.nodes += t.nodes; } });
    etiers.forEach(function (t) { if (t.m <= es && t.parent <= s) { shown.edges += t.edges; } });
    document.getElementById("node-share-value").textContent = Math.round(parseFloat(nodeSlider.value) * 100) + " %";
    document.getElementById("edge-share-value").textContent = (parseFloat(edgeSlider.value) * 100).toFixed(1) + " %";
    document.getElementById("shown-count").textContent =
      shown.nodes + " / " + nodes.length + " nodes, " + shown.edges + " / " + edges.length + " edges shown";
  }
  nodeSlider.addEventListener("input", applyShares);
  edgeSlider.addEventListener("input", applyShares);
  applyShares();
  fit();
  // a link can open the page with a search: page.html#find=<query>
  var found = /^#find=(.*)$/.exec(window.location.hash);
  if (found) { search.value = decodeURIComponent(found[1]); runSearch(); }
})();
