(function () {
  "use strict";
  var svg = document.querySelector("#diagram svg");
  var nodes = Array.prototype.slice.call(svg.querySelectorAll(".node"));
  var edges = Array.prototype.slice.call(svg.querySelectorAll(".edge"));
  var byId = new Map();
  var incident = new Map();
  nodes.forEach(function (n) { byId.set(n.dataset.id, n); incident.set(n.dataset.id, []); });
  edges.forEach(function (e) {
    incident.get(e.dataset.source).push(e);
    incident.get(e.dataset.target).push(e);
  });
  var tip = document.getElementById("tooltip");
  var panel = document.getElementById("panel");

  function focus(node) {
    svg.classList.add("focus");
    node.classList.add("hl");
    incident.get(node.dataset.id).forEach(function (e) {
      if (e.classList.contains("filtered")) { return; }
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
    tip.style.left = (evt.clientX + 14) + "px";
    tip.style.top = (evt.clientY + 14) + "px";
  }
  function showTip(node, evt) {
    var d = node.dataset;
    var lines = [d.id, d.kind + (d.site ? " at " + d.site : ""), "effect: " + d.effect,
                 "activation: " + d.activation];
    if (d.label) { lines.push(d.label); }
    tip.textContent = lines.join("\n");
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
    n.addEventListener("mouseenter", function (evt) { focus(n); showTip(n, evt); });
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

  var slider = document.getElementById("threshold");
  var shownOut = document.getElementById("threshold-value");
  var countOut = document.getElementById("edge-count");
  function applyThreshold() {
    var threshold = parseFloat(slider.value);
    var shown = 0;
    edges.forEach(function (e) {
      var hide = Math.abs(parseFloat(e.dataset.weight)) < threshold;
      e.classList.toggle("filtered", hide);
      if (!hide) { shown += 1; }
    });
    shownOut.textContent = threshold.toPrecision(3);
    countOut.textContent = shown + " / " + edges.length + " edges shown";
  }
  slider.addEventListener("input", applyThreshold);
  applyThreshold();
})();
