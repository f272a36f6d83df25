/* Statistics page: draws each chart of #stats-data with uPlot (vendored). The same data is on the page as tables. */
(function () {
  "use strict";

  function fmt(v, digits) {
    if (v == null || isNaN(v)) return "—";
    var f = Math.pow(10, digits);
    return String(Math.round(v * f) / f);
  }

  function build(spec, data, el) {
    var lang = data.lang || document.documentElement.lang || "en";
    var isTime = !!spec.time, isBars = spec.kind === "bars", isPoints = spec.kind === "points";
    var dateFmt = new Intl.DateTimeFormat(lang, { timeZone: data.tz, month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
    var yUnit = spec.y_label || "";
    var xs = spec.x.slice();
    var cols = [xs].concat(spec.series.map(function (s) { return s.values; }));
    var xAxis = { label: spec.x_label + (spec.x_unit ? " (" + spec.x_unit + ")" : ""), stroke: "#334155",
      grid: { stroke: "#eef2f7" }, ticks: { stroke: "#dfe5ee" }, labelSize: 22, space: 60 };
    if (isTime) {
      // Day over time of day: two short lines fit three ticks even on a phone.
      var dayFmt = new Intl.DateTimeFormat(lang, { timeZone: data.tz, month: "2-digit", day: "2-digit" });
      var hmFmt = new Intl.DateTimeFormat(lang, { timeZone: data.tz, hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
      xAxis.values = function (u, splits) {
        return splits.map(function (s) { var d = new Date(s * 1e3); return dayFmt.format(d) + "\n" + hmFmt.format(d); });
      };
      xAxis.splits = CarVaultTicks.times(90, 48, data.tz);
      xAxis.size = 64;
    } else if (spec.labels) {
      xAxis.splits = function () { return xs; };
      xAxis.values = function (u, splits) { return splits.map(function (i) { return spec.labels[i] == null ? "" : spec.labels[i]; }); };
    } else {
      xAxis.splits = CarVaultTicks.numbers(60, 32);
    }
    var opts = {
      width: Math.max(280, el.clientWidth), height: 220,
      tzDate: isTime ? function (ts) { return uPlot.tzDate(new Date(ts * 1e3), data.tz); } : undefined,
      scales: {
        x: isTime ? { time: true } : { time: false, range: isBars ? function () { return [-0.5, xs.length - 0.5]; } : undefined },
        // Bars start at zero: a bar's length is its value (a cut axis would make 174 look half of 177).
        y: isBars ? { range: function (u, lo, hi) { return [Math.min(0, lo), hi > 0 ? hi * 1.1 : 1]; } } : {}
      },
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      series: [{ label: spec.x_label, value: function (u, v) {
        if (v == null) return "—";
        if (isTime) return dateFmt.format(new Date(v * 1e3));
        if (spec.labels) return spec.labels[Math.round(v)] || "—";
        return fmt(v, 1) + (spec.x_unit ? " " + spec.x_unit : "");
      } }].concat(spec.series.map(function (s) {
        var o = { label: s.label + " (" + s.unit + ")", stroke: s.color, width: 1.6, spanGaps: !isPoints,
          value: function (u, v) { return v == null ? "—" : fmt(v, 2) + " " + s.unit; } };
        if (isBars) { o.paths = uPlot.paths.bars({ size: [0.6, 80] }); o.fill = s.color + "cc"; o.points = { show: false }; }
        if (isPoints) { o.paths = function () { return null; }; o.points = { show: true, size: 5, fill: s.color }; }
        return o;
      })),
      axes: [xAxis, { label: yUnit, stroke: "#334155", size: 56, labelSize: 22, grid: { stroke: "#eef2f7" },
        ticks: { stroke: "#dfe5ee" }, splits: CarVaultTicks.numbers(30, 16),
        values: function (u, splits) { return splits.map(function (v) { return fmt(v, 1); }); } }]
    };
    return new uPlot(opts, cols, el);
  }

  function init() {
    var block = document.getElementById("stats-data");
    if (!block || typeof uPlot === "undefined") return;
    var data = JSON.parse(block.textContent);
    var plots = [];
    data.charts.forEach(function (spec) {
      var el = document.getElementById("chart-" + spec.id);
      if (!el) return;
      var u = build(spec, data, el);
      el.uplot = u;  // for tests: axes, ticks
      plots.push([el, u]);
    });
    window.addEventListener("resize", function () {
      plots.forEach(function (p) { p[1].setSize({ width: Math.max(280, p[0].clientWidth), height: p[1].height }); });
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
