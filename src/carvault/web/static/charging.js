/* The Charging page's charts (web/templates/charging.html): a session's power against time and against state of
   charge, and the battery's estimated usable capacity by month. Data come from the page's JSON block; every chart is
   also a table on the page, so nothing here is the only way to read a figure. */
(function () {
  "use strict";

  function num(v, digits) {
    return v == null ? "—" : (Math.round(v * Math.pow(10, digits)) / Math.pow(10, digits)).toString();
  }

  function axis(label) {
    return { label: label, stroke: "#5c6b80", size: 56, labelSize: 20, splits: CarVaultTicks.numbers(50, 24),
             grid: { stroke: "#eef2f7" }, ticks: { stroke: "#dfe5ee" } };
  }

  function widthOf(el) {
    // The figure's width (the card's when the figure has none yet), never wider than the card.
    var box = el.closest("section") || el.parentNode;
    return Math.max(260, Math.min(el.clientWidth || box.clientWidth, box.clientWidth - 8));
  }

  function plot(el, opts, data) {
    if (!el) return null;
    opts.width = widthOf(el);
    var u = new uPlot(opts, data, el);
    el.uplot = u;  // for the page's tests
    window.addEventListener("resize", function () {
      u.setSize({ width: widthOf(el), height: u.height });
    });
    return u;
  }

  function start() {
    var block = document.getElementById("charging-data");
    if (!block || typeof uPlot === "undefined") return;
    var data = JSON.parse(block.textContent);
    var L = data.labels;
    var curve = data.curve;
    if (curve && curve.t_s.length > 1) {
      var minutes = curve.t_s.map(function (s) { return s / 60; });
      plot(document.getElementById("chart-curve-time"), {
        height: 220,
        scales: { x: { time: false, range: function (u, lo, hi) { return [0, Math.max(1, Math.ceil(hi / 5) * 5)]; } } },
        series: [
          { label: L.time + " (min)", value: function (u, v) { return num(v, 0) + " min"; } },
          { label: L.power + " (kW)", stroke: "#0b6e4f", width: 1.6, fill: "#0b6e4f14", spanGaps: true,
            value: function (u, v) { return num(v, 1) + " kW"; } }
        ],
        axes: [Object.assign(axis(L.time + " (min)"), { values: function (u, s) { return s.map(function (x) { return num(x, 0); }); } }),
               axis(L.power + " (kW)")]
      }, [minutes, curve.power_kw]);
      // Power against SOC: x must rise, so points are ordered by SOC (charging only ever raises it).
      var pts = curve.soc.map(function (s, i) { return [s, curve.power_kw[i]]; })
        .filter(function (p) { return p[0] != null; })
        .sort(function (a, b) { return a[0] - b[0]; });
      if (pts.length > 1) {
        plot(document.getElementById("chart-curve-soc"), {
          height: 220,
          // Whole tens of percent at the ends, so even a phone-wide chart has ticks at both ends.
          scales: { x: { time: false, range: function (u, lo, hi) {
            return [Math.floor(lo / 10) * 10, Math.max(Math.ceil(hi / 10) * 10, Math.floor(lo / 10) * 10 + 10)];
          } } },
          series: [
            { label: L.soc + " (%)", value: function (u, v) { return num(v, 1) + " %"; } },
            { label: L.power + " (kW)", stroke: "#1d4ed8", width: 1.6, spanGaps: true,
              value: function (u, v) { return num(v, 1) + " kW"; } }
          ],
          axes: [axis(L.soc + " (%)"), axis(L.power + " (kW)")]
        }, [pts.map(function (p) { return p[0]; }), pts.map(function (p) { return p[1]; })]);
      }
    }
    var months = data.health;
    if (months && months.length) {
      var xs = months.map(function (m) {
        var parts = m.month.split("-");
        return Date.UTC(+parts[0], +parts[1] - 1, 15) / 1000;
      });
      var caps = months.map(function (m) { return m.capacity_kwh; });
      var series = [
        { label: L.time, value: function (u, v) { return v == null ? "—" : new Date(v * 1000).toISOString().slice(0, 7); } },
        { label: L.capacity + " (kWh)", stroke: "#0e7490", width: 2, points: { show: true, size: 7 },
          value: function (u, v) { return num(v, 1) + " kWh"; } }
      ];
      var cols = [xs, caps];
      if (data.nominal) {
        series.push({ label: "100 % (kWh)", stroke: "#94a3b8", width: 1, dash: [6, 4],
                      value: function (u, v) { return num(v, 1) + " kWh"; } });
        cols.push(xs.map(function () { return data.nominal; }));
      }
      var lo = Math.min.apply(null, caps.concat(data.nominal ? [data.nominal] : []));
      var hi = Math.max.apply(null, caps.concat(data.nominal ? [data.nominal] : []));
      var pad = Math.max(1, (hi - lo) * 0.2);
      var pad_x = 31 * 86400;
      plot(document.getElementById("chart-health"), {
        height: 220,
        scales: { x: { time: true, range: [xs[0] - pad_x, xs[xs.length - 1] + pad_x] },
                  y: { range: [Math.max(0, lo - pad), hi + pad] } },
        series: series,
        // A tick in the middle of every month shown (where its point sits), thinned when they would crowd; the range
        // reaches into the months either side, so one month measured still has an axis to read it against.
        axes: [Object.assign(axis(L.time), { splits: function (u, i, min, max, foundIncr, foundSpace) {
                 var step = Math.max(1, Math.ceil(64 / (30 * 86400 * foundSpace / foundIncr)));
                 var d = new Date(min * 1000), out = [];
                 for (var m = d.getUTCFullYear() * 12 + d.getUTCMonth(), k = 0; k < 1200; m++, k++) {
                   var x = Date.UTC(Math.floor(m / 12), m % 12, 15) / 1000;
                   if (x > max) break;
                   if (x >= min) out.push(x);
                 }
                 return out.filter(function (x, n) { return n % step === 0; });
               }, values: function (u, s) {
                 return s.map(function (x) { return new Date(x * 1000).toISOString().slice(0, 7); });
               } }),
               axis(L.capacity + " (kWh)")]
      }, cols);
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
