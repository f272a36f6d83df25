/* CarVault maps: every <div class="cv-map" data-map="{...}"> becomes a Leaflet map on the operator's tile server.
 *
 * data-map: {"tracks": [[[lat, lon], ...], ...], "markers": [{"lat", "lon", "kind", "label", "radius_m"?}],
 *            "label": "what the map shows"}; kinds: start, end, charge, event, place.
 * The tile server comes from GET /map/config ({"url", "attribution", "crs", "outline", "excluded"}). Without a
 * server the element keeps what the page rendered (its tile-free drawing). Positions are WGS-84; when the tiles are
 * GCJ-02 (Chinese providers) they are shifted for display only, by the same formula and mainland-China outline as
 * carvault/geo/gcj02.py (the outline comes from the server, so both decide alike). Loaded with `defer`; no inline
 * code (the portal's content security policy forbids it).
 */
(function () {
  "use strict";

  var A = 6378245.0;
  var EE = 0.00669342162296594323;
  var COLOURS = { start: "#0b6e4f", end: "#b42318", charge: "#1d4ed8", event: "#b45309", place: "#7c3aed" };

  function insideOutline(lat, lon, cfg) {
    var poly = cfg.outline || [];
    var inside = false;
    for (var i = 0, j = poly.length - 1; i < poly.length; j = i++) {
      var yi = poly[i][0], xi = poly[i][1], yj = poly[j][0], xj = poly[j][1];
      if ((yi > lat) !== (yj > lat) && lon < xi + (lat - yi) * (xj - xi) / (yj - yi)) inside = !inside;
    }
    if (!inside) return false;
    return !(cfg.excluded || []).some(function (b) {
      return lat >= b[0] && lat <= b[2] && lon >= b[1] && lon <= b[3];
    });
  }

  function offset(lat, lon) {
    var x = lon - 105.0, y = lat - 35.0, PI = Math.PI;
    var common = (20.0 * Math.sin(6.0 * x * PI) + 20.0 * Math.sin(2.0 * x * PI)) * 2.0 / 3.0;
    var dLat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * Math.sqrt(Math.abs(x)) + common;
    dLat += (20.0 * Math.sin(y * PI) + 40.0 * Math.sin(y / 3.0 * PI)) * 2.0 / 3.0;
    dLat += (160.0 * Math.sin(y / 12.0 * PI) + 320.0 * Math.sin(y * PI / 30.0)) * 2.0 / 3.0;
    var dLon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * Math.sqrt(Math.abs(x)) + common;
    dLon += (20.0 * Math.sin(x * PI) + 40.0 * Math.sin(x / 3.0 * PI)) * 2.0 / 3.0;
    dLon += (150.0 * Math.sin(x / 12.0 * PI) + 300.0 * Math.sin(x / 30.0 * PI)) * 2.0 / 3.0;
    var rad = lat / 180.0 * PI;
    var magic = 1.0 - EE * Math.sin(rad) * Math.sin(rad);
    var sqrtMagic = Math.sqrt(magic);
    dLat = (dLat * 180.0) / ((A * (1.0 - EE)) / (magic * sqrtMagic) * PI);
    dLon = (dLon * 180.0) / (A / sqrtMagic * Math.cos(rad) * PI);
    return [dLat, dLon];
  }

  /* WGS-84 -> the tiles' datum (unchanged unless the tiles are GCJ-02 and the point is in mainland China). */
  function toTiles(lat, lon, cfg) {
    if (cfg.crs !== "gcj02" || !insideOutline(lat, lon, cfg)) return [lat, lon];
    var d = offset(lat, lon);
    return [lat + d[0], lon + d[1]];
  }

  /* The tiles' datum -> WGS-84 (a clicked point): fixed-point iteration of the forward shift, as gcj02.to_wgs84. */
  function fromTiles(lat, lon, cfg) {
    if (cfg.crs !== "gcj02") return [lat, lon];
    var w = [lat, lon];
    for (var i = 0; i < 6; i++) {
      var d = offset(w[0], w[1]);
      w = [lat - d[0], lon - d[1]];
    }
    return insideOutline(w[0], w[1], cfg) ? w : [lat, lon];
  }

  /* data-map-pick="latInputId lonInputId": a click on the map fills the two inputs (WGS-84, 6 decimals). */
  function pickable(el, map, cfg) {
    var ids = (el.getAttribute("data-map-pick") || "").split(/\s+/);
    var latIn = document.getElementById(ids[0]), lonIn = document.getElementById(ids[1]);
    if (!latIn || !lonIn) return;
    var picked = null;
    map.on("click", function (e) {
      var w = fromTiles(e.latlng.lat, e.latlng.lng, cfg);
      latIn.value = w[0].toFixed(6);
      lonIn.value = w[1].toFixed(6);
      if (picked) picked.setLatLng(e.latlng);
      else picked = L.circleMarker(e.latlng, {
        radius: 8, color: "#ffffff", weight: 2, fillColor: COLOURS.place, fillOpacity: 1, className: "cv-map-picked",
      }).addTo(map);
      latIn.dispatchEvent(new Event("change", { bubbles: true }));
    });
  }

  function escapeHtml(text) {
    var div = document.createElement("div");
    div.textContent = text || "";
    return div.innerHTML;
  }

  function valid(p) {
    return p && typeof p[0] === "number" && typeof p[1] === "number" && isFinite(p[0]) && isFinite(p[1]);
  }

  function draw(el, cfg) {
    var spec;
    try { spec = JSON.parse(el.getAttribute("data-map") || "{}"); } catch (e) { return; }
    var tracks = (spec.tracks || []).map(function (t) {
      return t.filter(valid).map(function (p) { return toTiles(p[0], p[1], cfg); });
    }).filter(function (t) { return t.length > 0; });
    var markers = (spec.markers || []).filter(function (m) { return valid([m.lat, m.lon]); });
    var pick = el.hasAttribute("data-map-pick");
    if (!tracks.length && !markers.length && !pick) return;

    var canvas = document.createElement("div");
    canvas.className = "cv-map-canvas";
    canvas.setAttribute("role", "region");
    canvas.setAttribute("aria-label", spec.label || el.getAttribute("data-map-label") || "Map");
    el.appendChild(canvas);
    el.classList.add("cv-map-on");

    var map = L.map(canvas, { scrollWheelZoom: false, zoomSnap: 0.25 });
    map.attributionControl.setPrefix('<a href="https://leafletjs.com/">Leaflet</a>');
    L.tileLayer(cfg.url, { attribution: escapeHtml(cfg.attribution), maxZoom: 19, subdomains: "abc" }).addTo(map);

    var bounds = L.latLngBounds([]);
    tracks.forEach(function (t) {
      L.polyline(t, { color: "#ffffff", weight: 8, opacity: 0.9, interactive: false }).addTo(map);
      L.polyline(t, { color: "#0b6e4f", weight: 4, opacity: 1, className: "cv-map-track" }).addTo(map);
      t.forEach(function (p) { bounds.extend(p); });
    });
    var drawnMarkers = markers.map(function (m) {
      var at = toTiles(m.lat, m.lon, cfg);
      var colour = COLOURS[m.kind] || COLOURS.event;
      var layer;
      if (m.kind === "place" && m.radius_m) {
        layer = L.circle(at, { radius: m.radius_m, color: colour, weight: 2, fillOpacity: 0.12 });
      } else {
        layer = L.circleMarker(at, {
          radius: m.kind === "event" ? 7 : 8, color: "#ffffff", weight: 2, fillColor: colour, fillOpacity: 1,
          className: "cv-map-marker cv-map-" + (COLOURS[m.kind] ? m.kind : "event"),
        });
      }
      if (m.label) layer.bindTooltip(escapeHtml(m.label));
      layer.addTo(map);
      bounds.extend(m.kind === "place" && m.radius_m ? L.latLng(at).toBounds(2 * m.radius_m) : at); // whole circle
      return { kind: m.kind, label: m.label, at: at };
    });
    if (bounds.isValid() && !bounds.getNorthEast().equals(bounds.getSouthWest())) {
      map.fitBounds(bounds, { padding: [24, 24], maxZoom: 17 });
    } else if (bounds.isValid()) {
      map.setView(bounds.getCenter(), 15);
    } else {
      var home = spec.center || [0, 0];
      map.setView(toTiles(home[0], home[1], cfg), spec.center ? 11 : 2);
    }
    if (pick) pickable(el, map, cfg);
    el.setAttribute("data-map-ready", cfg.crs);
    // For the page's own scripts and its tests: the map and what was drawn, in the tiles' datum.
    window.carvaultMaps = window.carvaultMaps || [];
    window.carvaultMaps.push({ element: el, map: map, tracks: tracks, markers: drawnMarkers, crs: cfg.crs });
    el.dispatchEvent(new CustomEvent("cv-map-ready", { bubbles: true, detail: { map: map } }));
  }

  function start() {
    var els = document.querySelectorAll(".cv-map[data-map]");
    if (!els.length || typeof L === "undefined") return;
    fetch("/map/config", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (cfg) {
        if (!cfg || !cfg.url) return; // no tile server: the tile-free drawing stays
        Array.prototype.forEach.call(els, function (el) { draw(el, cfg); });
      })
      .catch(function () { /* the tile-free drawing stays */ });
  }

  window.carvaultMapToTiles = toTiles;
  window.carvaultMapFromTiles = fromTiles;
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
