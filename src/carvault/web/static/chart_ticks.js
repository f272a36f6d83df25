/* Where a chart's axis puts its ticks: the one rule every uPlot chart of the portal follows (drive, statistics,
   charging). uPlot alone picks the increment from a pixel spacing, so a narrow (phone) chart or a short axis can get a
   single tick, and a reader cannot tell the scale. Here an axis gets the increment nearest its preferred spacing,
   then smaller ones until it shows at least three ticks, but never closer than its labels need (minPx).
   Time axes step in whole seconds, minutes, hours and days of the page's time zone. */
(function () {
  "use strict";

  var NUMBERS = [];
  for (var k = -3; k <= 9; k++) {
    [1, 2, 2.5, 5].forEach(function (m) { NUMBERS.push(m * Math.pow(10, k)); });
  }
  var MIN = 60, HOUR = 3600, DAY = 86400;
  var TIMES = [1, 2, 5, 10, 15, 30, MIN, 2 * MIN, 5 * MIN, 10 * MIN, 15 * MIN, 30 * MIN, HOUR, 2 * HOUR, 3 * HOUR,
               4 * HOUR, 6 * HOUR, 8 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 14 * DAY, 28 * DAY, 91 * DAY, 364 * DAY];

  // Seconds the zone's wall clock is ahead of UTC at t (uPlot.tzDate shows a zone's wall time as local fields).
  function zoneOffset(t, tz) {
    if (!tz || typeof uPlot === "undefined") return 0;
    var d = uPlot.tzDate(new Date(t * 1e3), tz);
    var wall = Date.UTC(d.getFullYear(), d.getMonth(), d.getDate(), d.getHours(), d.getMinutes(), d.getSeconds());
    return Math.round((wall - Math.floor(t) * 1e3) / 1e3);
  }

  function ticks(min, max, incr, shift) {
    var out = [];
    var first = Math.ceil((min + shift) / incr - 1e-9) * incr - shift;
    var digits = Math.max(0, -Math.floor(Math.log10(incr)) + 2);
    for (var v = first, i = 0; v <= max + incr * 1e-9 && i < 1000; i++, v = first + i * incr) {
      out.push(Number(v.toFixed(digits)));
    }
    return out;
  }

  /* A uPlot axis `splits` function. incrs: ascending increments; prefPx / minPx: the wished and the least distance
     between two ticks in CSS pixels; tz: for time axes, the zone whose midnight and hours ticks align to. */
  function splits(incrs, prefPx, minPx, tz) {
    return function (u, axisIdx, min, max, foundIncr, foundSpace) {
      if (!(max > min) || !(foundIncr > 0) || !(foundSpace > 0)) return [min];
      var pxPerUnit = foundSpace / foundIncr;  // uPlot's own scale: foundIncr spans foundSpace pixels
      var shift = tz ? zoneOffset(min, tz) : 0;
      var i = 0;
      while (i < incrs.length - 1 && incrs[i] * pxPerUnit < prefPx) i++;
      var best = ticks(min, max, incrs[i], shift);
      while (best.length < 3 && i > 0 && incrs[i - 1] * pxPerUnit >= minPx) {
        i--;
        best = ticks(min, max, incrs[i], shift);
      }
      return best;
    };
  }

  window.CarVaultTicks = {
    numbers: function (prefPx, minPx) { return splits(NUMBERS, prefPx, minPx, null); },
    times: function (prefPx, minPx, tz) { return splits(TIMES, prefPx, minPx, tz); }
  };
})();
