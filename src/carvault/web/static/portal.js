/* CarVault owner portal: progressive enhancement only. Every page and form works without this file;
   it adds charts and zoom, live progress, confirmations and small conveniences. No inline scripts (CSP). */
(function () {
  "use strict";

  // --- display time zone: remember the browser's, so the server formats times in it --------------
  function rememberTimeZone() {
    var tz;
    try { tz = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) { return; }
    if (!tz || /(^|;\s*)carvault_tz=/.test(document.cookie)) return;
    document.cookie = "carvault_tz=" + encodeURIComponent(tz) + "; path=/; max-age=31536000; samesite=lax";
    var shown = document.body.getAttribute("data-tz");
    if (shown && shown !== tz && !sessionStorage.getItem("carvault_tz_reloaded")) {
      sessionStorage.setItem("carvault_tz_reloaded", "1");
      location.reload();
    }
  }

  // --- forms -----------------------------------------------------------------------------------------
  function enhanceForms() {
    document.querySelectorAll("form[data-autosubmit]").forEach(function (form) {
      form.querySelectorAll(".js-hide").forEach(function (b) { b.hidden = true; });
      form.querySelectorAll("select").forEach(function (s) {
        s.addEventListener("change", function () { form.submit(); });
      });
    });
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        if (!window.confirm(form.getAttribute("data-confirm"))) ev.preventDefault();
      });
    });
    // Blocks that only matter for one choice of a radio group: data-show-when="name=value".
    var blocks = document.querySelectorAll("[data-show-when]");
    blocks.forEach(function (block) {
      var rule = block.getAttribute("data-show-when").split("=");
      var form = block.closest("form");
      if (!form) return;
      function update() {
        var checked = form.querySelector('input[name="' + rule[0] + '"]:checked');
        block.hidden = !checked || checked.value !== rule[1];
      }
      form.querySelectorAll('input[name="' + rule[0] + '"]').forEach(function (r) { r.addEventListener("change", update); });
      update();
    });
  }

  // --- export jobs: live progress ----------------------------------------------------------------
  function formatBytes(n) {
    if (n == null) return "—";
    var units = ["B", "KB", "MB", "GB"], i = 0, v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
  }

  function watchJobs() {
    var labels = document.getElementById("job-labels");
    document.querySelectorAll("[data-job]").forEach(function (el) {
      var status = el.getAttribute("data-status");
      if (status !== "queued" && status !== "running") return;
      var id = el.getAttribute("data-job");
      var onList = el.tagName === "LI";
      function tick() {
        fetch("/api/v1/exports/" + id, { credentials: "same-origin", headers: { Accept: "application/json" } })
          .then(function (r) { return r.ok ? r.json() : null; })
          .then(function (job) {
            if (!job) return;
            var bar = el.querySelector("[data-job-progress]");
            if (bar) { bar.value = job.progress; bar.textContent = Math.round(job.progress * 100) + "%"; }
            var pct = el.querySelector("[data-job-percent]");
            if (pct) pct.textContent = Math.round(job.progress * 100) + "%";
            var rows = el.querySelector("[data-job-rows]");
            if (rows) rows.textContent = job.rows.toLocaleString();
            var badge = el.querySelector("[data-job-status]");
            if (badge && labels) {
              badge.textContent = labels.getAttribute("data-" + job.status) || job.status;
              badge.className = "badge badge-" + job.status;
            }
            if (job.status === "queued" || job.status === "running") { setTimeout(tick, 600); return; }
            el.setAttribute("data-status", job.status);
            if (onList) { location.reload(); return; }
            var size = el.querySelector("[data-job-size]");
            if (size) size.textContent = formatBytes(job.size);
            var link = document.getElementById("job-download");
            if (link && job.status === "done") { link.hidden = false; link.focus(); }
          })
          .catch(function () { setTimeout(tick, 2000); });
      }
      setTimeout(tick, 300);
    });
  }

  // --- drive page: charts, zoom, window downloads, route highlight ---------------------------------
  function localInput(ms, tz) {
    var parts = {};
    new Intl.DateTimeFormat("en-CA", { timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" })
      .formatToParts(new Date(ms)).forEach(function (p) { parts[p.type] = p.value; });
    return parts.year + "-" + parts.month + "-" + parts.day + "T" + parts.hour + ":" + parts.minute + ":" + parts.second;
  }

  function seriesValues(values, path) {
    if (!values) return [];
    if (path === "Vehicle.ADAS.ABS.IsEngaged") {
      return values.map(function (v) { return v == null ? null : (v ? 100 : 0); });
    }
    return values;
  }

  // --- charts and the route as tables, for screen readers and anyone who prefers numbers ------------------
  var TEXT = null;
  function text(key) {
    if (TEXT === null) {
      var el = document.getElementById("portal-text");
      try { TEXT = el ? JSON.parse(el.textContent) : {}; } catch (e) { TEXT = {}; }
    }
    return TEXT[key] || key;
  }

  function formatNumber(v, lang) {
    if (v == null) return "";
    var digits = Math.abs(v) >= 100 ? 0 : 1;
    return new Intl.NumberFormat(lang, { maximumFractionDigits: digits }).format(v);
  }

  // The unit a chart's y axis is in: the one its series share (the ABS lamp is drawn on the % scale, 0 or 100).
  function chartUnit(chart) {
    var units = [];
    chart.series.forEach(function (s) { if (s.unit && units.indexOf(s.unit) < 0) units.push(s.unit); });
    return units.join(" / ");
  }

  // A y range that always spans a few ticks: a battery that loses 1 % on a drive still gets a readable axis.
  function yRange(unit) {
    var least = { "%": 10, "km/h": 20, "bar": 10 }[unit] || 1;
    return function (u, lo, hi) {
      if (lo == null || hi == null) return [0, least];
      if (hi - lo < least) { var mid = (hi + lo) / 2; lo = mid - least / 2; hi = mid + least / 2; }
      if (unit === "%") {
        if (lo < 0) { hi -= lo; lo = 0; }
        if (hi > 100) { lo = Math.max(0, lo - (hi - 100)); hi = 100; }
      } else if (lo < 0 && hi - least / 2 >= 0) { hi -= lo; lo = 0; }
      var pad = (hi - lo) * 0.05;
      return [unit === "%" ? Math.max(0, lo - pad) : lo - pad, unit === "%" ? Math.min(100, hi + pad) : hi + pad];
    };
  }

  function cell(tag, content, scope) {
    var c = document.createElement(tag);
    c.textContent = content;
    if (scope) c.setAttribute("scope", scope);
    return c;
  }

  // A table beside a chart: one row per step (at most ~60 rows over the window), a column per series with its unit.
  function chartTable(chart, src, data, timeFormat) {
    var details = document.createElement("details");
    details.className = "more chart-data";
    details.appendChild(cell("summary", text("chart_table") + " · " + chart.title));
    var wrap = document.createElement("div");
    wrap.className = "table-wrap";
    wrap.setAttribute("tabindex", "0");  // it scrolls (portal.css): the keyboard scrolls it too
    wrap.setAttribute("role", "region");
    wrap.setAttribute("aria-label", chart.title);
    var table = document.createElement("table");
    table.className = "table";
    table.appendChild(cell("caption", chart.title));
    var head = document.createElement("tr");
    head.appendChild(cell("th", text("time"), "col"));
    chart.series.forEach(function (s) { head.appendChild(cell("th", s.label + (s.unit && s.path.indexOf("IsEngaged") < 0 ? " (" + s.unit + ")" : ""), "col")); });
    var thead = document.createElement("thead");
    thead.appendChild(head);
    table.appendChild(thead);
    var body = document.createElement("tbody");
    var n = src.t.length, step = Math.max(1, Math.ceil(n / 60));
    var lang = document.documentElement.lang || "en";
    for (var i = 0; i < n; i += step) {
      var row = document.createElement("tr");
      row.appendChild(cell("th", timeFormat.format(new Date(src.t[i])), "row"));
      var any = false;
      chart.series.forEach(function (s) {
        var values = src.signals[s.path] || [], v = null;
        for (var k = i; k < Math.min(n, i + step) && v == null; k++) v = values[k];  // the step's first sample
        if (v != null) any = true;
        var shown = v == null ? "—" : (s.path.indexOf("IsEngaged") >= 0 ? text(v ? "yes" : "no") : formatNumber(v, lang));
        row.appendChild(cell("td", shown));
      });
      if (any) body.appendChild(row);
    }
    table.appendChild(body);
    wrap.appendChild(table);
    details.appendChild(wrap);
    return details;
  }

  // The route's points (start, events, end) as a table after the drawing, from the drawing's own titles.
  function routeTable() {
    var svg = document.getElementById("route-svg");
    if (!svg) return;
    var rows = [];
    svg.querySelectorAll(".route-start, .route-mark, .route-end").forEach(function (el) {
      var title = el.querySelector("title");
      if (title) rows.push(title.textContent.split(" · "));
    });
    if (!rows.length) return;
    var details = document.createElement("details");
    details.className = "more chart-data";
    details.appendChild(cell("summary", text("route_table")));
    var table = document.createElement("table");
    table.className = "table";
    table.appendChild(cell("caption", text("route_table")));
    var head = document.createElement("tr");
    head.appendChild(cell("th", text("point"), "col"));
    head.appendChild(cell("th", text("time"), "col"));
    var thead = document.createElement("thead");
    thead.appendChild(head);
    table.appendChild(thead);
    var body = document.createElement("tbody");
    rows.forEach(function (r) {
      var row = document.createElement("tr");
      row.appendChild(cell("th", r[0], "row"));
      row.appendChild(cell("td", r[1] || "—"));
      body.appendChild(row);
    });
    table.appendChild(body);
    details.appendChild(table);
    svg.parentNode.insertBefore(details, svg.nextSibling);
  }

  // Scrolling table boxes take the keyboard focus (WCAG 2.1.1): a named region to scroll with the arrow keys.
  function focusableScrollers() {
    document.querySelectorAll(".table-wrap").forEach(function (w) {
      if (w.scrollWidth <= w.clientWidth + 1 || w.hasAttribute("tabindex")) return;
      var caption = w.querySelector("caption");
      var heading = w.closest("section") && w.closest("section").querySelector("h2, h3");
      w.setAttribute("tabindex", "0");
      w.setAttribute("role", "region");
      w.setAttribute("aria-label", (caption || heading || {}).textContent || text("table"));
    });
  }

  // On a narrow screen the nav and the tabs scroll sideways (portal.css): show the current page's entry.
  function currentIntoView() {
    document.querySelectorAll(".mainnav ul, .tabs ul").forEach(function (ul) {
      var cur = ul.querySelector('[aria-current="page"]');
      if (!cur || ul.scrollWidth <= ul.clientWidth) return;
      var delta = cur.getBoundingClientRect().left - ul.getBoundingClientRect().left;
      ul.scrollLeft += delta - (ul.clientWidth - cur.offsetWidth) / 2;
    });
  }

  function drivePage() {
    var block = document.getElementById("drive-data");
    if (!block || typeof uPlot === "undefined") return;
    var data = JSON.parse(block.textContent);
    var status = document.getElementById("chart-status");
    var resetBtn = document.getElementById("reset-zoom");
    var plots = [];
    var original = { t: data.t, signals: data.signals };
    var full = null;  // full-resolution data for a narrow window

    function columns(src) {
      var xs = src.t.map(function (ms) { return ms / 1000; });
      return data.charts.map(function (c) {
        return [xs].concat(c.series.map(function (s) { return seriesValues(src.signals[s.path], s.path); }));
      });
    }

    var lang = document.documentElement.lang || "en";
    function timeFormat(withSeconds) {
      return new Intl.DateTimeFormat(lang, { timeZone: data.tz, hour: "2-digit", minute: "2-digit",
        second: withSeconds ? "2-digit" : undefined, hourCycle: "h23" });
    }
    var hm = timeFormat(false), hms = timeFormat(true);
    var cols = columns(original);
    data.charts.forEach(function (c, i) {
      var el = document.getElementById("chart-" + c.id);
      var opts = {
        width: Math.max(280, el.clientWidth), height: c.id === "speed" ? 200 : 150,
        tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), data.tz); },
        cursor: { sync: { key: "drive" }, drag: { x: true, y: false, setScale: false } },
        scales: { x: { time: true }, y: { range: yRange(chartUnit(c)) } },
        legend: { live: true },
        series: [{ label: data.labels.time, value: function (u, ts) { return ts == null ? "—" : hms.format(new Date(ts * 1e3)); } }].concat(c.series.map(function (s) {
          // 1 Hz signals are null on the 10 Hz rows between their samples: draw through those.
          return { label: s.label, stroke: s.color, width: 1.6, spanGaps: true,
            fill: c.series.length === 1 ? s.color + "14" : undefined,
            paths: s.path === "Vehicle.ADAS.ABS.IsEngaged" ? uPlot.paths.stepped({ align: 1 }) : undefined,
            value: function (u, v) { return v == null ? "—" : (Math.round(v * 10) / 10) + (s.unit ? " " + s.unit : ""); } };
        })),
        axes: [{ stroke: "#5c6b80", grid: { stroke: "#eef2f7" }, ticks: { stroke: "#dfe5ee" },
                 splits: CarVaultTicks.times(80, 60, data.tz),
                 values: function (u, splits) {
                   var span = u.scales.x.max - u.scales.x.min;
                   var f = span < 300 ? hms : hm;
                   return splits.map(function (s) { return f.format(new Date(s * 1e3)); });
                 } },
               { stroke: "#5c6b80", size: 56, splits: CarVaultTicks.numbers(28, 16), grid: { stroke: "#eef2f7" }, ticks: { stroke: "#dfe5ee" },
                 label: chartUnit(c), labelSize: 18, labelFont: "600 12px system-ui, sans-serif",
                 values: function (u, splits) { return splits.map(function (v) { return formatNumber(v, lang); }); } }],
        hooks: { setSelect: [function (u) {
          if (u.select.width > 3) {
            var lo = u.posToVal(u.select.left, "x"), hi = u.posToVal(u.select.left + u.select.width, "x");
            zoomTo(Math.round(lo * 1000), Math.round(hi * 1000));
          }
          u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
        }], draw: [function (u) {
          // What the y axis shows, for people checking the page (and its tests): its unit and how many ticks.
          var splits = (u.axes[1]._splits || []).filter(function (v) { return v != null; });
          el.setAttribute("data-y-ticks", String(splits.length));
          el.setAttribute("data-y-unit", chartUnit(c));
        }] }
      };
      plots.push(new uPlot(opts, cols[i], el));
      el.insertAdjacentElement("afterend", chartTable(c, original, data, hms));
    });

    window.addEventListener("resize", function () {
      plots.forEach(function (u, i) {
        var el = document.getElementById("chart-" + data.charts[i].id);
        u.setSize({ width: Math.max(280, el.clientWidth), height: u.height });
      });
    });

    function setWindow(startMs, endMs) {
      var from = document.getElementById("from"), to = document.getElementById("to");
      if (from) from.value = localInput(startMs, data.tz);
      if (to) to.value = localInput(endMs, data.tz);
      document.querySelectorAll("a[data-window-link]").forEach(function (a) {
        var url = new URL(a.href);
        url.searchParams.set("start", startMs);
        url.searchParams.set("end", endMs);
        a.href = url.pathname + url.search;
      });
      var pkg = document.querySelector("a[data-window-link-package]");
      if (pkg) {
        var purl = new URL(pkg.href);
        purl.searchParams.set("from", localInput(startMs, data.tz));
        purl.searchParams.set("to", localInput(endMs, data.tz));
        pkg.href = purl.pathname + purl.search;
      }
      var hl = document.getElementById("route-highlight");
      if (hl) {
        var inside = data.route.filter(function (p) { return p[2] >= startMs && p[2] <= endMs; });
        var zoomed = startMs > data.start || endMs < data.end;
        hl.setAttribute("d", zoomed && inside.length > 1 ? inside.map(function (p, k) {
          return (k ? "L" : "M") + p[0] + "," + p[1];
        }).join(" ") : "");
      }
      var u = new URL(location.href);
      u.searchParams.delete("from"); u.searchParams.delete("to"); u.searchParams.delete("notice");
      u.searchParams.set("start", startMs); u.searchParams.set("end", endMs);
      history.replaceState(null, "", u.pathname + u.search);
    }

    function load(src) { columns(src).forEach(function (c, i) { plots[i].setData(c, false); }); }

    function zoomTo(startMs, endMs) {
      startMs = Math.max(startMs, data.start); endMs = Math.min(endMs, data.end);
      if (endMs - startMs < 1000) return;
      resetBtn.hidden = false;
      setWindow(startMs, endMs);
      var narrow = endMs - startMs <= 10 * 60 * 1000 && data.resample !== "100ms";
      if (narrow) {
        status.textContent = data.labels.loading;
        var paths = [];
        data.charts.forEach(function (c) { c.series.forEach(function (s) { paths.push(s.path); }); });
        var q = "start=" + startMs + "&end=" + endMs + "&format=json&signals=" + encodeURIComponent(paths.join(","));
        fetch("/api/v1/vehicles/" + data.vin + "/telemetry?" + q, { credentials: "same-origin" })
          .then(function (r) { return r.ok ? r.json() : null; })
          .then(function (body) {
            if (!body) { status.textContent = ""; return; }
            full = body;
            load(full);
            plots.forEach(function (u) { u.setScale("x", { min: startMs / 1000, max: endMs / 1000 }); });
            status.textContent = data.labels.full;
          });
      } else {
        if (full) { load(original); full = null; }
        status.textContent = "";
      }
      plots.forEach(function (u) { u.setScale("x", { min: startMs / 1000, max: endMs / 1000 }); });
    }

    resetBtn.addEventListener("click", function () {
      if (full) { load(original); full = null; }
      plots.forEach(function (u) { u.setScale("x", { min: data.start / 1000, max: data.end / 1000 }); });
      setWindow(data.start, data.end);
      resetBtn.hidden = true;
      status.textContent = "";
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    rememberTimeZone();
    enhanceForms();
    watchJobs();
    drivePage();
    routeTable();
    focusableScrollers();
    currentIntoView();
  });
})();
