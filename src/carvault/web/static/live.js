/* CarVault "Live" page: the vehicle's latest values over VISS v3 (WebSocket), exactly as any app reads them.
   One subscription per tile group (timebased, 1 s); values are VISS strings; every tile shows the age of its
   value, and the page says "car offline since ..." when nothing new has arrived for a while. No inline script. */
(function () {
  "use strict";

  var cfgEl = document.getElementById("live-config");
  if (!cfgEl || !window.WebSocket) return;
  var cfg = JSON.parse(cfgEl.textContent);
  var T = cfg.texts;
  var values = {};          // path -> {value: string, ts: ms}
  var unavailable = {};     // group id -> description
  var groupOf = {};         // subscriptionId -> group id
  var trail = [];           // recent positions [lat, lon, ts]
  var ws = null, nextId = 1, retryMs = 1000, ended = false;

  function text(key, params) {
    var s = T[key] || key;
    Object.keys(params || {}).forEach(function (k) { s = s.split("{" + k + "}").join(params[k]); });
    return s;
  }

  function when(ms) {
    try {
      return new Intl.DateTimeFormat(cfg.lang, {
        timeZone: cfg.tz, year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit"
      }).format(new Date(ms));
    } catch (e) { return new Date(ms).toISOString(); }
  }

  function age(ms) {
    var s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    var shown = s < 90 ? text("seconds", { n: s })
      : s < 5400 ? text("minutes", { n: Math.round(s / 60) }) : text("hours", { n: Math.round(s / 3600) });
    return text("age", { age: shown });
  }

  function num(v, digits) {
    var n = Number(v);
    return isFinite(n) ? n.toLocaleString(cfg.lang, { maximumFractionDigits: digits, minimumFractionDigits: digits }) : v;
  }

  function gear(v) {
    var n = parseInt(v, 10);
    if (n === 126) return text("gear.park");
    if (n === 127) return text("gear.drive");
    if (n === -1) return text("gear.reverse");
    if (n === 0) return text("gear.neutral");
    return text("gear.forward", { n: n });
  }

  function format(tile) {
    var v = values[tile.paths[0]];
    if (!v) return null;
    switch (tile.format) {
      case "speed": return num(v.value, 0) + " km/h";
      case "percent": return num(v.value, 1) + " %";
      case "range": return num(Number(v.value) / 1000, 0) + " km";
      case "gear": return gear(v.value);
      case "door": return v.value === "true" ? text("open") : text("closed");
      case "charging":
        if (v.value !== "true") return text("not_charging");
        var p = values[tile.paths[1]];
        return p ? text("charging_at", { kw: num(Math.abs(Number(p.value)) / 1000, 1) }) : text("charging_at", { kw: "—" });
      default: return v.value;
    }
  }

  function groupOfPath(path) {
    for (var i = 0; i < cfg.groups.length; i++) {
      if (cfg.groups[i].paths.indexOf(path) >= 0) return cfg.groups[i].id;
    }
    return null;
  }

  function newest(paths) {
    var ts = null;
    paths.forEach(function (p) { if (values[p] && (ts === null || values[p].ts > ts)) ts = values[p].ts; });
    return ts;
  }

  function renderTiles() {
    cfg.tiles.forEach(function (tile) {
      var el = document.querySelector('[data-tile="' + tile.id + '"]');
      if (!el) return;
      var shown = format(tile), blocked = unavailable[groupOfPath(tile.paths[0])];
      var ts = newest(tile.paths);
      el.querySelector("[data-value]").textContent = shown !== null ? shown : blocked ? text("unavailable") : "—";
      el.querySelector("[data-age]").textContent = shown !== null && ts ? age(ts) : blocked || text("no_value");
      el.setAttribute("data-state", shown === null ? (blocked ? "unavailable" : "empty")
        : Date.now() - ts > cfg.offline_after_ms ? "stale" : "fresh");
    });
    var pos = document.querySelector('[data-tile="position"]');
    var lat = values[cfg.lat], lon = values[cfg.lon];
    if (lat && lon) {
      pos.querySelector("[data-value]").textContent = text("position_at", { lat: num(lat.value, 5), lon: num(lon.value, 5) });
      pos.querySelector("[data-age]").textContent = age(Math.max(lat.ts, lon.ts));
    } else if (unavailable.position) {
      pos.querySelector("[data-value]").textContent = text("unavailable");
      pos.querySelector("[data-age]").textContent = unavailable.position;
    }
    var all = Object.keys(values).map(function (p) { return values[p].ts; });
    var last = all.length ? Math.max.apply(null, all) : null;
    var offline = document.getElementById("live-offline");
    if (last !== null && Date.now() - last > cfg.offline_after_ms) {
      offline.textContent = text("offline_since", { when: when(last) });
      offline.hidden = false;
    } else {
      offline.hidden = true;
    }
  }

  function drawTrail() {
    var line = document.getElementById("live-trail-line"), dot = document.getElementById("live-trail-now");
    if (!trail.length) return;
    var lat0 = trail[trail.length - 1][0], kx = Math.cos(lat0 * Math.PI / 180) * 111320, ky = 110540;
    var xs = trail.map(function (p) { return p[1] * kx; }), ys = trail.map(function (p) { return p[0] * ky; });
    var minX = Math.min.apply(null, xs), maxX = Math.max.apply(null, xs);
    var minY = Math.min.apply(null, ys), maxY = Math.max.apply(null, ys);
    var span = Math.max(maxX - minX, maxY - minY, 200), scale = 340 / span;
    var cx = (minX + maxX) / 2, cy = (minY + maxY) / 2;
    var pts = xs.map(function (x, i) {
      return (320 + (x - cx) * scale).toFixed(1) + "," + (200 - (ys[i] - cy) * scale).toFixed(1);
    });
    line.setAttribute("points", pts.join(" "));
    var last = pts[pts.length - 1].split(",");
    dot.setAttribute("cx", last[0]);
    dot.setAttribute("cy", last[1]);
    dot.setAttribute("visibility", "visible");
  }

  function take(data) {
    (Array.isArray(data) ? data : [data]).forEach(function (d) {
      values[d.path] = { value: d.dp.value, ts: Date.parse(d.dp.ts) };
    });
    var lat = values[cfg.lat], lon = values[cfg.lon];
    if (lat && lon) {
      var prev = trail[trail.length - 1];
      var ts = Math.max(lat.ts, lon.ts);
      if (!prev || prev[2] !== ts) {
        trail.push([Number(lat.value), Number(lon.value), ts]);
        if (trail.length > 600) trail.shift();
        drawTrail();
      }
    }
    renderTiles();
  }

  function status(key, kind) {
    var el = document.getElementById("live-status");
    el.textContent = text(key);
    el.className = "flash flash-" + (kind || "info");
  }

  function subscribe(group) {
    if (!ws || ws.readyState !== 1) return;
    var paths = { variant: "paths", parameter: group.paths.map(function (p) { return p.replace(/^Vehicle\./, ""); }) };
    // The latest values at once (get), then every second (timebased subscription).
    ws.send(JSON.stringify({ action: "get", requestId: String(nextId++), path: "Vehicle", filter: paths }));
    var id = String(nextId++);
    groupOf["req" + id] = group.id;
    ws.send(JSON.stringify({
      action: "subscribe", requestId: id, path: "Vehicle",
      filter: [paths, { variant: "timebased", parameter: { period: "1000" } }]
    }));
  }

  function refused(group, error) {
    if (!group) return;  // an answer from before a reconnect
    unavailable[group] = error.description;
    if (error.number === "401") { ended = true; status("session_ended", "error"); ws.close(); return; }
    var g = cfg.groups.filter(function (x) { return x.id === group; })[0];
    g.paths.forEach(function (p) { delete values[p]; });  // no longer served: show why, not a stale value
    renderTiles();
    setTimeout(function () { subscribe(g); }, 15000);  // the owner may turn collection back on
  }

  function onMessage(ev) {
    var msg;
    try { msg = JSON.parse(ev.data); } catch (e) { return; }
    if (msg.action === "get") {
      if (msg.data) take(msg.data);  // an error here (no value yet, stopped) also comes on the subscription
    } else if (msg.action === "subscribe") {
      var group = groupOf["req" + msg.requestId];
      delete groupOf["req" + msg.requestId];
      if (msg.error) { refused(group, msg.error); return; }
      groupOf[msg.subscriptionId] = group;
      delete unavailable[group];
      renderTiles();
    } else if (msg.action === "subscription") {
      if (msg.error) {
        var g = groupOf[msg.subscriptionId];
        delete groupOf[msg.subscriptionId];
        refused(g, msg.error);
      } else if (msg.data) {
        take(msg.data);
      }
    }
  }

  function connect() {
    if (ended) return;
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    ws = new WebSocket(scheme + location.host + cfg.endpoint, "VISSv3");
    ws.onopen = function () {
      retryMs = 1000;
      status("connected", "ok");
      cfg.groups.forEach(subscribe);
    };
    ws.onmessage = onMessage;
    ws.onclose = function () {
      groupOf = {};
      if (ended) return;
      status("reconnecting", "warn");
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 30000);
    };
  }

  connect();
  setInterval(renderTiles, 1000);  // ages and the offline notice move on even when nothing arrives
})();
