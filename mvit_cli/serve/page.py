"""The page at /: one self-contained HTML file (page.html, shipped in the package), and the headers it is sent with.

The page needs nothing from anywhere but this server (no scripts, fonts or styles from elsewhere), so it works
offline. Its Content-Security-Policy allows exactly its own inline script and style (by their sha256), images
from the files the user picks (blob:) and requests to this server: even a bug that put a file name into the
page as HTML could not run a script or send anything elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def page_html() -> str:
    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


def _hashes(tag: str, html: str) -> str:
    sources = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in sources)


@lru_cache(maxsize=1)
def page_headers() -> dict[str, str]:
    html = page_html()
    policy = "; ".join([
        "default-src 'none'",
        f"script-src {_hashes('script', html)}",
        f"style-src {_hashes('style', html)}",
        "img-src blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])
    return {"Content-Security-Policy": policy, "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
