"""Basic accessibility checks run inside the page: language, one h1, heading order, labelled controls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"  # axe-core, vendored from npm (frontend/vendor.py)

CHECK_JS = r"""
() => {
  const problems = [];
  const lang = document.documentElement.getAttribute('lang');
  if (!lang) problems.push('html has no lang attribute');
  const visible = el => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length) || el.closest('details');
  const h1 = document.querySelectorAll('h1');
  if (h1.length !== 1) problems.push(`expected one h1, found ${h1.length}`);
  let last = 0;
  document.querySelectorAll('h1, h2, h3, h4, h5, h6').forEach(h => {
    const level = Number(h.tagName[1]);
    if (last && level > last + 1) problems.push(`heading skips: h${last} -> h${level} "${h.textContent.trim()}"`);
    last = level;
  });
  document.querySelectorAll('input, select, textarea').forEach(el => {
    const type = (el.getAttribute('type') || '').toLowerCase();
    if (['hidden', 'submit', 'button'].includes(type) || el.hidden) return;
    const named = (el.labels && el.labels.length) || el.getAttribute('aria-label')
      || el.getAttribute('aria-labelledby');
    if (!named) problems.push(`${el.tagName.toLowerCase()}[name=${el.name}] has no label`);
  });
  document.querySelectorAll('button, a[href]').forEach(el => {
    if (!visible(el)) return;
    const name = (el.getAttribute('aria-label') || el.textContent || '').trim();
    if (!name && !el.querySelector('svg title, img[alt]')) problems.push(`${el.tagName.toLowerCase()} without a name`);
  });
  document.querySelectorAll('img').forEach(img => { if (!img.hasAttribute('alt')) problems.push('img without alt'); });
  const ids = {};
  document.querySelectorAll('[id]').forEach(el => { ids[el.id] = (ids[el.id] || 0) + 1; });
  Object.entries(ids).forEach(([id, n]) => { if (n > 1) problems.push(`id "${id}" used ${n} times`); });
  return problems;
}
"""


def accessibility_problems(page: Any) -> list[str]:
    """What the page gets wrong, empty when it passes."""
    problems: list[str] = page.evaluate(CHECK_JS)
    return problems


def tab_through(page: Any, presses: int = 40) -> list[str]:
    """Press Tab from the top of the page; describe each element that takes the focus."""
    page.evaluate("() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); }")
    seen = []
    for _ in range(presses):
        page.keyboard.press("Tab")
        seen.append(
            page.evaluate("""() => { const e = document.activeElement; if (!e) return '';
            const d = e.id || e.getAttribute('name') || e.getAttribute('href') || e.textContent.trim();
            return d.slice(0, 80); }""")
        )
    return seen


def axe_violations(page: Any, *, exclude: tuple[str, ...] = ()) -> list[str]:
    """axe-core's WCAG 2.1 A/AA violations on the page as loaded, one line each (rule, impact, first targets)."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        # Evaluated through the DevTools protocol, which the portal's content security policy does not govern (a
        # script tag would be refused, rightly): the page is checked under its real policy.
        page.evaluate(f"() => {{ {AXE.read_text()}\n }}")
    result = page.evaluate(
        """async (exclude) => {
          const r = await axe.run({include: [document], exclude: exclude.map(s => [s])},
            {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']},
             resultTypes: ['violations']});
          return r.violations.map(v => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.slice(0, 3)
            .map(n => n.target.join(' ')).join(', ')}`);
        }""",
        list(exclude),
    )
    return list(result)
