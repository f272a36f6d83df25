"""Browser names for people: "Chrome on Linux" from a User-Agent header (sessions on the account page).

Deliberately simple: the first known product token wins, in an order that puts browsers that also claim to be
Chrome or Safari (Edge, Opera, Samsung Internet) first. Anything unknown is None, and the page shows the raw text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# (token, name) in the order they are tried: a browser built on Chrome also sends "Chrome/" and "Safari/".
BROWSERS: tuple[tuple[str, str], ...] = (
    ("Edg/", "Edge"),
    ("EdgA/", "Edge"),
    ("EdgiOS/", "Edge"),
    ("OPR/", "Opera"),
    ("SamsungBrowser/", "Samsung Internet"),
    ("UCBrowser/", "UC Browser"),
    ("MicroMessenger/", "WeChat"),
    ("FxiOS/", "Firefox"),
    ("Firefox/", "Firefox"),
    ("CriOS/", "Chrome"),
    ("HeadlessChrome/", "Chrome"),
    ("Chromium/", "Chromium"),
    ("Chrome/", "Chrome"),
    ("Version/", "Safari"),  # Safari names its version in Version/ and itself in Safari/
    ("curl/", "curl"),
    ("python-httpx/", "httpx"),
    ("python-requests/", "Python requests"),
)
SYSTEMS: tuple[tuple[str, str], ...] = (
    ("iPhone", "iOS"),
    ("iPad", "iPadOS"),
    ("Android", "Android"),
    ("CrOS", "ChromeOS"),
    ("Windows", "Windows"),
    ("HarmonyOS", "HarmonyOS"),
    ("Macintosh", "macOS"),
    ("Mac OS X", "macOS"),
    ("Linux", "Linux"),
)
_TOKEN = re.compile(r"[A-Za-z][\w.\- ]*/")


@dataclass(frozen=True)
class Agent:
    """What a User-Agent says, for people: the browser and, when it says, the operating system."""

    browser: str
    system: str | None


def parse(user_agent: str | None) -> Agent | None:
    """The browser and system a User-Agent names, or None when it names no browser this table knows."""
    text = (user_agent or "").strip()[:400]
    if not text:
        return None
    browser = next((name for token, name in BROWSERS if token in text), None)
    if browser == "Safari" and "Safari/" not in text:
        browser = None  # "Version/" alone is not Safari
    if browser is None:
        return None
    system = next((name for token, name in SYSTEMS if token in text), None)
    return Agent(browser, system)
