"""The HTML document around a report: escaping, embedded images, the stylesheet and scripts, and the policy that
keeps the file from ever loading or running anything else.

A report is one file: its stylesheet and scripts are inline (assets/, shipped in the package), its images are
JPEG data URIs, and it names no font, script or other file anywhere. Its Content-Security-Policy (a <meta>
element, since a file from disk has no headers) allows exactly its own inline script and style, by their
sha256, and images from data: URIs; nothing may be fetched at all. So even a bug that let a file name through
as HTML could not run a script or send anything anywhere. Every text that comes from outside mvit (file names,
URLs, error messages, paths) goes through `text()`; class labels too, since they come from a data file.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import re
from functools import lru_cache
from importlib import resources
from typing import Sequence

from PIL import Image

from mvit_cli import __version__

# C0 controls, DEL and the C1 controls: shown as escapes (\n, \x1b) as mvit shows them in a terminal, so a file
# name with a newline reads as what it is.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def text(value: object) -> str:
    """`value` as HTML text or attribute content: control characters as visible escapes, characters that are not
    valid UTF-8 (lone surrogates) as \\udcxx, then <, >, &, " and ' escaped."""
    shown = _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(value))
    shown = shown.encode("utf-8", "backslashreplace").decode("utf-8")
    return html.escape(shown, quote=True)


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def image_tag(jpeg: bytes, alt: str, css_class: str = "") -> str:
    """An <img> of the JPEG with its width and height (read from its header), drawn lazily: a page of thousands
    of thumbnails decodes only those near the screen."""
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            width, height = image.size
        size = f' width="{width}" height="{height}"'
    except Exception:  # noqa: BLE001 - a size is only a layout hint
        size = ""
    klass = f' class="{css_class}"' if css_class else ""
    return f'<img{klass} src="{data_uri(jpeg)}" alt="{text(alt)}"{size} loading="lazy" decoding="async">'


@lru_cache(maxsize=None)
def asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def _sha256(source: str) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(source.encode('utf-8')).digest()).decode('ascii')}'"


def policy(scripts: Sequence[str], styles: Sequence[str]) -> str:
    """The Content-Security-Policy of a page whose only inline scripts and styles are these."""
    script_sources = " ".join(map(_sha256, scripts)) or "'none'"
    style_sources = " ".join(map(_sha256, styles)) or "'none'"
    return "; ".join([
        "default-src 'none'",
        f"script-src {script_sources}",
        f"style-src {style_sources}",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
    ])


def head(title: str, script_names: Sequence[str]) -> str:
    """Everything up to and including <body>: the policy, the title and the stylesheet."""
    css = asset("report.css")
    scripts = [asset(name) for name in script_names]
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{text(policy(scripts, [css]))}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<meta name=\"referrer\" content=\"no-referrer\">\n"
        f"<meta name=\"generator\" content=\"mvit {text(__version__)}\">\n"
        "<link rel=\"icon\" href=\"data:,\">\n"
        f"<title>{text(title)}</title>\n<style>{css}</style>\n</head>\n<body>\n"
    )


def tail(script_names: Sequence[str], footer: str) -> str:
    """The footer, the scripts (last: the page is complete when they run) and the end of the document."""
    scripts = "".join(f"<script>{asset(name)}</script>\n" for name in script_names)
    return f"<footer>{footer}</footer>\n{scripts}</body>\n</html>\n"


def facts_table(rows: Sequence[tuple[str, str]], table_id: str = "") -> str:
    """A two-column table of (name, HTML value) rows; the names are escaped here, the values by the caller."""
    ident = f' id="{text(table_id)}"' if table_id else ""
    body = "".join(f"<tr><th>{text(name)}</th><td>{value}</td></tr>" for name, value in rows)
    return f"<table class=\"facts\"{ident}><tbody>{body}</tbody></table>"
