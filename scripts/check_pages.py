#!/usr/bin/env python3
"""Open every page of the built book in headless Chromium, screenshot it, and fail on visible breakage.

    python scripts/check_pages.py                      # _build/html -> _build/screenshots/
    python scripts/check_pages.py _build/html --out /tmp/shots --page book/intro.html
    python scripts/check_pages.py --static-only        # no browser: files, links and the built HTML
    python scripts/check_pages.py --allow-stderr --no-screenshots

About 1-3 s a page (a 15,000 px chapter about 6 s, half of it the screenshot) plus 1.5 s to start.

Each page (every *.html except search.html, genindex.html, py-modindex.html and what lies under
_static/, _sources/, _images/) is served from 127.0.0.1 and loaded in one headless Chromium,
driven over the DevTools protocol on a pipe (standard library only). After the load event the
script waits for the images, the web fonts and MathJax's first typesetting, then reads the
rendered DOM and writes a full-page PNG to OUT/<page>.png (plus OUT/report.json).

A page FAILS (exit status 1, each page listed with its reasons) on
  * a Python traceback: myst-nb's ``div.output.traceback`` / ``.output.error`` blocks, nbconvert's
    ``output_error``, or the text "Traceback (most recent call last)" anywhere outside a code cell's
    input;
  * stderr shown in a cell output (``div.output.stderr``: warnings, progress bars) unless
    --allow-stderr; progress-bar lines ("45%|####  | 45/100 [...]") in any output;
  * a matplotlib figure printed as text ("<Figure size 640x480 with 1 Axes>") instead of drawn, or a
    code cell that calls plt.show() / fig.show() and shows no image (a book executed with
    MPLBACKEND=Agg has no figures at all);
  * a Markdown table shown as raw text ("| a | b | | --- | --- |" in a paragraph, e.g. a
    ``display(Markdown(...))`` output rendered as CommonMark, which has no tables);
  * a docutils system message or unresolved markup (``.system-message``, ``.problematic``), i.e. the
    red error/warning boxes Sphinx puts into a page;
  * MathJax errors (``mjx-merror``, "Math input error"), undefined TeX macros (which MathJax's
    noundefined extension draws as red text), or math that MathJax never typeset;
  * a broken image: an ``<img>`` whose file does not exist, or whose naturalWidth is 0 after load;
  * a figure a reader cannot follow: an ``<img>`` that is not inside a ``<figure>`` with a non-empty
    ``<figcaption>`` (a caption and a number), or whose alt text is empty or a file name (myst-nb's
    default); the frames of an animation (``div.animation``) and the theme's icons (``_static/``) are exempt;
  * a soft image: a PNG/JPEG shown wider than 2/3 of its pixel width (not sharp on a high-density
    screen; the book draws its figures at twice their displayed size);
  * a local resource that failed to load (HTTP status >= 400, or a network error), a page that does
    not finish loading;
  * a dead internal link: an href to a local file that does not exist, or to an #anchor that the
    target page does not define;
  * an uncaught JavaScript exception while the page loads (e.g. a script declared twice).
Printed as notes, not failures: code blocks, tables or equations wider than
the text column (the reader must scroll sideways; the widest overflow in pixels), and figures scaled
below 60% of their pixel width to fit the column (their labels shrink with them).

MathJax: Sphinx loads MathJax 3 from a CDN by default, which an offline machine cannot reach. When a
page loads MathJax from a remote URL, the script serves a local MathJax 3 in its place, found in
--mathjax-dir, $MATHJAX_DIR, the PyPI package ``sphinx-mathjax-offline`` or ``django-static-mathjax``,
or an npm ``node_modules/mathjax/es5``; with none available, pages with math fail with a message
saying so. A book built with the ``sphinx-mathjax-offline`` extension ships its own copy and needs
none of this.

Exit status: 0 every page passed, 1 some page failed, 2 the check could not run (no Chromium, no
pages).
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import importlib.util
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit

SKIP_PAGES = {"search.html", "genindex.html", "py-modindex.html"}
# Alt text that only names the file (myst-nb writes "../_images/<hash>.png" when no alt is given).
FILE_NAME_ALT = re.compile(r"(?:\S*/)?[\w.-]+\.(?:png|svg|jpe?g|gif|webp)", re.IGNORECASE)
SHARP_RATIO = 1.5  # a PNG/JPEG must have at least this many pixels per displayed CSS pixel
SKIP_DIRS = {"_static", "_sources", "_images", "_downloads", ".doctrees", "jupyter_execute"}
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
             "source", "track", "wbr"}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-extensions", "--hide-scrollbars", "--mute-audio",
                  # Nothing leaves the machine: every host name but localhost fails at once (a remote
                  # resource would otherwise hold the load event until its DNS lookup times out).
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1")
TRACEBACK_TEXT = "Traceback (most recent call last)"
PROGRESS_BAR = re.compile(r"\d+%\|[^|\n]*\|\s*\d+(?:\.\d+)?[kMG]?/\d+(?:\.\d+)?[kMG]?\s*\[")
FIGURE_REPR = re.compile(r"<Figure size \d+(?:\.\d+)?x\d+(?:\.\d+)? with \d+ Axes>")
REMOTE_MATHJAX = re.compile(r"""(<script\b[^>]*?\bsrc=["'])(https?://[^"']*?mathjax[^"']*?/)([\w.-]+\.js)([^"']*)(["'])""",
                            re.IGNORECASE)
SHOW_CALL = re.compile(r"\b(?:plt|pyplot|fig\w*)\s*\.\s*show\s*\(\s*\)")
RAW_TABLE = re.compile(r"\|\s*:?(?:-{3,}|[\u2014\u2013][-\u2014\u2013]*)\s*:?\s*\|")  # "| --- |" (docutils turns --- into an em dash)
RED_STYLE = re.compile(r"(?:^|;)\s*color\s*:\s*red\b", re.IGNORECASE)
MATHJAX_ROUTE = "/__check_pages_mathjax__/"


# --------------------------------------------------------------------------------------------------
# Reading a page's HTML (static file or rendered DOM): no browser needed, so the tests exercise it.
# --------------------------------------------------------------------------------------------------

@dataclass
class PageScan:
    """What one HTML document contains that the checks need."""

    problems: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    links: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)
    redirect: str | None = None
    untypeset: list[str] = field(default_factory=list)
    math_total: int = 0
    math_typeset: int = 0


def _first_line(text: str, last: bool = False, width: int = 160) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1] if last else lines[0]
    return line if len(line) <= width else line[: width - 3] + "..."


class _Scanner(HTMLParser):
    """An HTML walker that keeps a stack of open elements and captures the text of flagged blocks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scan = PageScan()
        self.stack: list[dict] = []  # {"tag", "kinds", "text": list | None}
        self._seen: set[str] = set()
        self.cells = 0

    # -- helpers -----------------------------------------------------------------------------------
    def _add(self, problem: str) -> None:
        if problem not in self._seen:
            self._seen.add(problem)
            self.scan.problems.append(problem)

    def _inside(self, kind: str) -> bool:
        return any(kind in entry["kinds"] for entry in self.stack)

    @staticmethod
    def _kinds(tag: str, classes: set[str], attrs: dict[str, str]) -> set[str]:
        kinds = set()
        if "output" in classes and ("traceback" in classes or "error" in classes):
            kinds.add("traceback")
        if "output_error" in classes:
            kinds.add("traceback")
        if "output" in classes and "stderr" in classes:
            kinds.add("stderr")
        if "output_stderr" in classes:
            kinds.add("stderr")
        if "cell_output" in classes or "output" in classes or "output_area" in classes:
            kinds.add("output")
        if "cell_input" in classes or "input_area" in classes:
            kinds.add("input")
        if "cell" in classes or "jp-Cell" in classes:
            kinds.add("cell")
        if tag == "p":
            kinds.add("paragraph")
        if "system-message" in classes:
            kinds.add("system-message")
        if "problematic" in classes:
            kinds.add("problematic")
        if tag == "mjx-merror":
            kinds.add("merror")
        if "math" in classes and tag in {"span", "div"}:
            kinds.add("math")
        if tag == "mjx-container":
            kinds.add("mjx")
        if (tag.startswith("mjx-") and RED_STYLE.search(attrs.get("style", ""))) or (
                tag == "mtext" and attrs.get("mathcolor", "").lower() == "red"):
            kinds.add("undefined-macro")  # MathJax's noundefined extension draws \foo in red
        if tag in {"button", "script", "style", "template"}:
            kinds.add("ignore")  # e.g. sphinx-copybutton's "Copy to clipboard" tooltip
        if tag == "figure":
            kinds.add("figure")
        if tag == "figcaption":
            kinds.add("figcaption")
        if "animation" in classes:
            kinds.add("animation")  # matplotlib's to_jshtml: the frames are images of one figure
        return kinds

    # -- HTMLParser callbacks ----------------------------------------------------------------------
    def handle_starttag(self, tag, attrs):
        attrs = {k: (v or "") for k, v in attrs}
        classes = set(attrs.get("class", "").split())
        if "id" in attrs:
            self.scan.ids.add(attrs["id"])
        if tag == "a" and "name" in attrs:
            self.scan.ids.add(attrs["name"])
        if tag == "a" and "href" in attrs:
            self.scan.links.append(attrs["href"])
        if tag == "meta" and attrs.get("http-equiv", "").lower() == "refresh":
            match = re.search(r"url\s*=\s*['\"]?([^'\";]+)", attrs.get("content", ""), re.IGNORECASE)
            if match:
                self.scan.redirect = match.group(1).strip()
                self.scan.links.append(self.scan.redirect)
        if tag == "img" or (tag == "svg" and self._inside("output")):
            for entry in self.stack:
                if "cell" in entry["kinds"]:
                    entry["figures"] = entry.get("figures", 0) + 1
        if tag == "img":
            self.scan.images.append(attrs.get("src", ""))
            self._check_figure_image(attrs)
        if tag == "script" and attrs.get("src"):
            self.scan.scripts.append(attrs["src"])
        kinds = self._kinds(tag, classes, attrs)
        if "mjx" in kinds:
            for entry in self.stack:
                if "math" in entry["kinds"]:
                    entry["typeset"] = True
        if tag == "mjx-c":  # CHTML draws glyphs with CSS; the class names the code point (mjx-c5C is "\\")
            glyphs = "".join(chr(int(c[5:], 16)) for c in classes if re.fullmatch(r"mjx-c[0-9A-Fa-f]+", c))
            for entry in self.stack:
                if "undefined-macro" in entry["kinds"]:
                    entry["text"].append(glyphs)
        if "merror" in kinds and attrs.get("data-mjx-error"):
            self._add(f"MathJax error: {attrs['data-mjx-error']}")
        if tag in VOID_TAGS:
            return
        entry = {"tag": tag, "kinds": kinds, "text": [] if kinds - {"mjx", "cell", "ignore"} else None}
        if "cell" in kinds:
            self.cells += 1
            entry["number"] = self.cells
        if "output" in kinds:
            for outer in self.stack:
                if "cell" in outer["kinds"]:
                    outer["has_output"] = True
        if "math" in kinds:
            entry["typeset"] = False
        self.stack.append(entry)

    def _check_figure_image(self, attrs: dict[str, str]) -> None:
        """An image must sit in a captioned figure and have alt text that describes it."""
        src = attrs.get("src", "") or "(no src)"
        if self._inside("animation") or "_static/" in src:  # frames of an animation; the theme's own icons
            return
        alt = attrs.get("alt", "").strip()
        if not alt:
            self._add(f"image without alt text: {src}")
        elif FILE_NAME_ALT.fullmatch(alt):
            self._add(f"image whose alt text is a file name ({alt}): write what it shows")
        figures = [entry for entry in self.stack if "figure" in entry["kinds"]]
        if not figures:
            self._add(f"image without a caption (not in a <figure>): {src}")
        else:
            figures[-1]["image"] = src

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID_TAGS and self.stack and self.stack[-1]["tag"] == tag:
            self._close(self.stack.pop())

    def handle_endtag(self, tag):
        if tag in VOID_TAGS or not any(entry["tag"] == tag for entry in self.stack):
            return
        while self.stack:
            entry = self.stack.pop()
            self._close(entry)
            if entry["tag"] == tag:
                break

    def handle_data(self, data):
        if self._inside("ignore"):
            return
        for entry in self.stack:
            if entry["text"] is not None:
                entry["text"].append(data)
        if TRACEBACK_TEXT in data and not self._inside("input") and not self._inside("traceback"):
            self._add(f'the text "{TRACEBACK_TEXT}" (a Python traceback) outside a code cell')
        if "Math input error" in data:
            self._add("MathJax: Math input error")

    def close(self):
        super().close()
        while self.stack:
            self._close(self.stack.pop())

    def _close(self, entry) -> None:
        kinds = entry["kinds"]
        text = "".join(entry["text"]) if entry["text"] is not None else ""
        if "math" in kinds:
            self.scan.math_total += 1
            self.scan.math_typeset += bool(entry.get("typeset"))
            if not entry.get("typeset"):
                self.scan.untypeset.append(" ".join(text.split()))
        if "traceback" in kinds:
            self._add(f"Python traceback in a cell output: {_first_line(text, last=True) or '(empty)'}")
        if "stderr" in kinds:
            self._add(f"stderr in a cell output: {_first_line(text)}")
        if "input" in kinds and SHOW_CALL.search(text):
            for outer in self.stack:
                if "cell" in outer["kinds"]:
                    outer["shows"] = SHOW_CALL.search(text).group(0)
        if "cell" in kinds and entry.get("shows") and not entry.get("figures"):
            if entry.get("has_output"):
                self._add(f"code cell {entry['number']} calls {entry['shows']} but shows no figure (was the book "
                          "executed with MPLBACKEND=Agg or another non-inline backend?)")
            else:
                self._add(f"code cell {entry['number']} calls {entry['shows']} but has no output at all (not "
                          "executed: did an earlier cell fail or time out?)")
        if "paragraph" in kinds and RAW_TABLE.search(text):
            self._add(f"a Markdown table shown as raw text: {_first_line(' '.join(text.split()), width=100)}")
        if "figcaption" in kinds:
            for outer in reversed(self.stack):
                if "figure" in outer["kinds"]:
                    outer["caption"] = " ".join(text.split()).rstrip("#").strip()
                    break
        if "figure" in kinds and entry.get("image") and not entry.get("caption"):
            self._add(f"figure without a caption: {entry['image']}")
        if "system-message" in kinds:
            self._add(f"docutils system message: {_first_line(' '.join(text.split()), width=200)}")
        if "problematic" in kinds:
            self._add(f"unresolved markup (docutils 'problematic'): {_first_line(text)}")
        if "merror" in kinds:
            self._add(f"MathJax error: {_first_line(text) or '(no message)'}")
        if "undefined-macro" in kinds and text.strip().startswith("\\"):
            self._add(f"undefined TeX macro drawn in red by MathJax: {text.strip()}")
        if "output" in kinds and "input" not in kinds and not self._inside("output"):
            if PROGRESS_BAR.search(text):
                match = PROGRESS_BAR.search(text)
                line = text[text.rfind("\n", 0, match.start()) + 1:].split("\n", 1)[0]
                self._add(f"progress bar in a cell output: {_first_line(line)}")
            if FIGURE_REPR.search(text):
                self._add(f"matplotlib figure printed as text instead of drawn: {FIGURE_REPR.search(text).group(0)}")


def scan_html(html: str) -> PageScan:
    """Scan one HTML document (a built page, or a rendered DOM) for the problems a reader would see.

    Args:
        html: the document's text.

    Returns:
        A PageScan: ``problems`` (human-readable reasons, in document order, without duplicates),
        ``ids`` (anchor targets), ``links`` (every ``<a href>``), ``images`` (every ``<img src>``),
        ``scripts`` (every ``<script src>``), and counts of math elements (``math_total``) and of
        those MathJax has typeset (``math_typeset``; meaningful for a rendered DOM only).
    """
    scanner = _Scanner()
    scanner.feed(html)
    scanner.close()
    return scanner.scan


def _untypeset_message(scan: PageScan) -> str:
    shown = ", ".join(_first_line(tex, width=60) for tex in scan.untypeset[:3])
    more = f" and {len(scan.untypeset) - 3} more" if len(scan.untypeset) > 3 else ""
    return (f"MathJax typeset {scan.math_typeset} of {scan.math_total} math elements; not typeset (a TeX error "
            f"such as a missing brace?): {shown}{more}")


def dom_problems(html: str, allow_stderr: bool = False, expect_math: bool = True) -> list[str]:
    """The problems in a rendered page's DOM (after JavaScript and MathJax ran).

    Args:
        html: ``document.documentElement.outerHTML`` of the loaded page (or a static page's text).
        allow_stderr: if True, stderr blocks in cell outputs are not problems.
        expect_math: if True, math elements that MathJax did not typeset are a problem.

    Returns:
        A list of reasons, empty for a good page.
    """
    scan = scan_html(html)
    problems = [p for p in scan.problems if not (allow_stderr and p.startswith("stderr in a cell output"))]
    if expect_math and scan.math_total and scan.math_typeset < scan.math_total:
        problems.append(_untypeset_message(scan))
    return problems


def _local_target(ref: str, page: Path, root: Path) -> tuple[Path, str] | None:
    """The file (under root) and fragment that a link/src on ``page`` points to; None if not local."""
    parts = urlsplit(ref)
    if parts.scheme or parts.netloc or ref.startswith(("//", "data:", "javascript:", "mailto:")):
        return None
    base = PurePosixPath("/" + page.relative_to(root).as_posix())
    if parts.path:
        target = PurePosixPath(urljoin(str(base), unquote(parts.path)))
    else:
        target = base
    rel = target.as_posix().lstrip("/")
    path = root / rel if rel else root
    if ref.split("#")[0].split("?")[0].endswith("/") or path.is_dir():
        path = path / "index.html"
    return path, unquote(parts.fragment)


def link_problems(page: Path, root: Path, scan: PageScan, ids_by_page: dict[Path, set[str]] | None = None) -> list[str]:
    """Missing local images, dead internal links and dead anchors of one built page.

    Args:
        page: the page's file.
        root: the built HTML folder (links may not leave it).
        scan: ``scan_html`` of the page's file.
        ids_by_page: the ids of every page (resolved path -> ids), to check ``#fragment`` targets;
            None skips fragment checks on other pages.

    Returns:
        A list of reasons, empty if every reference resolves.
    """
    problems: list[str] = []
    root = root.resolve()
    page = page.resolve()
    for src in scan.images:
        if not src.strip():
            problems.append("broken image: <img> without a src")
            continue
        target = _local_target(src, page, root)
        if target is None:
            if not src.startswith("data:"):
                problems.append(f"image from the network (cannot be shown offline): {src}")
            continue
        path = target[0].resolve()
        if not path.is_relative_to(root):
            problems.append(f"broken image: {src} points outside the built book")
        elif not path.is_file():
            problems.append(f"broken image: {src} (missing file {path.relative_to(root)})")
    for href in scan.links:
        target = _local_target(href, page, root)
        if target is None:
            continue
        path, fragment = target
        path = path.resolve()
        if not path.is_relative_to(root):
            problems.append(f"dead internal link: {href} points outside the built book")
            continue
        if not path.exists():
            problems.append(f"dead internal link: {href} (no file {path.relative_to(root)})")
            continue
        if fragment and path.suffix == ".html":
            ids = scan.ids if path == page else (ids_by_page or {}).get(path)
            if ids is not None and fragment not in ids:
                problems.append(f"dead anchor: {href} (no id '{fragment}' in {path.relative_to(root)})")
    return list(dict.fromkeys(problems))


def image_problems(images: list[dict]) -> list[str]:
    """Broken images reported by the browser.

    Args:
        images: for each ``<img>``: ``{"attr": src attribute, "complete": bool, "naturalWidth": int}``,
            optionally ``"clientWidth"`` (displayed CSS pixels) and ``"animation"`` (a frame of one).

    Returns:
        A reason for each image that finished loading with naturalWidth 0 or never finished, and for
        each PNG/JPEG with fewer than ``SHARP_RATIO`` pixels per displayed pixel.
    """
    problems = []
    for image in images:
        src = image.get("attr") or image.get("src") or "(no src)"
        if not image.get("complete"):
            problems.append(f"broken image: {src} did not finish loading")
        elif not image.get("naturalWidth"):
            problems.append(f"broken image: {src} has naturalWidth 0 (missing or not an image)")
        elif (image.get("clientWidth") and not image.get("animation")
              and not str(src).lower().split("?")[0].endswith(".svg")
              and image["naturalWidth"] < SHARP_RATIO * image["clientWidth"]):
            problems.append(f"soft image: {src} is {image['naturalWidth']} px wide, shown at {image['clientWidth']} px "
                            f"(draw it at least {SHARP_RATIO:g}x its displayed size, e.g. the retina inline format)")
    return problems


def find_pages(root: Path) -> list[Path]:
    """Every page of a built book: *.html except search/genindex/py-modindex and asset folders."""
    pages = []
    for path in sorted(root.rglob("*.html")):
        rel = path.relative_to(root)
        if rel.name in SKIP_PAGES or any(part in SKIP_DIRS for part in rel.parts[:-1]):
            continue
        pages.append(path)
    return pages


def find_local_mathjax(explicit: str | None = None) -> Path | None:
    """A folder holding MathJax 3's combined components (tex-chtml.js ...), or None."""
    candidates = []
    if explicit:
        candidates.append(Path(explicit))
    if os.environ.get("MATHJAX_DIR"):
        candidates.append(Path(os.environ["MATHJAX_DIR"]))
    for module, sub in (("sphinx-mathjax-offline", "static/mathjax"), ("mathjax", "static/mathjax/es5")):
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            candidates.append(Path(spec.origin).parent / sub)
    here = Path.cwd()
    for folder in (here, *here.parents):
        candidates.append(folder / "node_modules" / "mathjax" / "es5")
    for candidate in candidates:
        if (candidate / "tex-chtml.js").is_file():
            return candidate.resolve()
    return None


# --------------------------------------------------------------------------------------------------
# Serving the book and driving Chromium.
# --------------------------------------------------------------------------------------------------

class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the book; swaps a remote MathJax for the local copy when one is configured."""

    mathjax_dir: Path | None = None

    def log_message(self, *args):  # quiet
        pass

    def send_head(self):
        path = urlsplit(self.path).path
        if path.startswith(MATHJAX_ROUTE) and self.mathjax_dir is not None:
            rel = unquote(path[len(MATHJAX_ROUTE):])
            file = (self.mathjax_dir / rel).resolve()
            if not file.is_relative_to(self.mathjax_dir) or not file.is_file():
                self.send_error(404)
                return None
            return self._send_bytes(file.read_bytes(), self.guess_type(str(file)))
        if self.mathjax_dir is not None and path.endswith(".html"):
            file = Path(self.translate_path(path))
            if file.is_file():
                text = file.read_text(encoding="utf-8", errors="replace")
                text = REMOTE_MATHJAX.sub(
                    lambda m: f"{m.group(1)}{MATHJAX_ROUTE}{m.group(3)}{m.group(5)}", text)
                return self._send_bytes(text.encode("utf-8"), "text/html; charset=utf-8")
        return super().send_head()

    def _send_bytes(self, data: bytes, ctype: str):
        import io
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return io.BytesIO(data)


def serve(root: Path, mathjax_dir: Path | None) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Start a quiet HTTP server for ``root`` on 127.0.0.1 (a free port); returns (server, base URL)."""
    handler = type("Handler", (_Handler,), {"mathjax_dir": mathjax_dir})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class CDPError(RuntimeError):
    pass


class Chromium:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (file descriptors 3 and 4)."""

    def __init__(self, binary: str, width: int = 1280, height: int = 2000) -> None:
        self.profile = tempfile.mkdtemp(prefix="check-pages-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def child_fds():
            # Move both ends high first, so that dup2 onto 3/4 cannot clobber the other one.
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 1000)
            os.dup2(b, 1001)
            os.dup2(1000, 3)
            os.dup2(1001, 4)
            for fd in (a, b, 1000, 1001):
                os.close(fd)

        self.log = open(Path(self.profile) / "chromium.log", "w+")
        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=child_fds, close_fds=False)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.width, self.height = width, height
        self.version = self.call("Browser.getVersion", timeout=60)["product"]
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=True)

    # -- protocol ----------------------------------------------------------------------------------
    def _send(self, method: str, params: dict | None, session: bool) -> int:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._to_child, data):]
        return self._next_id

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self._from_child], [], [], left)
            if not ready:
                raise TimeoutError
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise CDPError(f"Chromium closed the DevTools pipe; its log:\n{self._log_tail()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 30) -> dict:
        """Send one command and wait for its answer, keeping the events that arrive meanwhile."""
        message_id = self._send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self._receive(deadline)
            except TimeoutError:
                raise TimeoutError(f"{method}: no answer within {timeout:.0f} s") from None
            if message.get("id") == message_id:
                if "error" in message:
                    raise CDPError(f"{method}: {message['error'].get('message')}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_event(self, method: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event["method"] == method:
                    return self.events.pop(i)
            try:
                message = self._receive(deadline)
            except TimeoutError:
                raise TimeoutError(f"no {method} within {timeout:.0f} s") from None
            if "method" in message:
                self.events.append(message)

    def _log_tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        lines = [line for line in self.log.read().splitlines() if "dbus" not in line]
        return "\n".join(lines[-20:])

    # -- page operations ---------------------------------------------------------------------------
    def open(self, url: str, timeout: float) -> None:
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=True, timeout=timeout)
        self.wait_event("Page.loadEventFired", timeout)

    def evaluate(self, expression: str, timeout: float):
        result = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True, "timeout": int(timeout * 1000)},
                           session=True, timeout=timeout + 5)
        if "exceptionDetails" in result:
            raise CDPError(f"page script failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def screenshot(self, path: Path, height: int, max_height: int) -> None:
        height = max(self.height, min(height, max_height))
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=True)
        try:
            data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False,
                                                         "optimizeForSpeed": True},
                             session=True, timeout=60)["data"]
        finally:
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
                      session=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:  # noqa: BLE001 - the process is killed below anyway
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


# Runs in the page after the load event: waits for images, MathJax and fonts, then reports.
SHRINK_LIMIT = 0.6  # a figure shown at less than this fraction of its pixel size is noted

PAGE_PROBE = r"""
(async () => {
  const SHRINK_LIMIT = %SHRINK_LIMIT%;
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const imgs = [...document.images];
  for (const img of imgs) if (img.loading === 'lazy') img.loading = 'eager';
  await Promise.all(imgs.map(img => img.complete ? null : new Promise(r => {
    img.addEventListener('load', r); img.addEventListener('error', r); setTimeout(r, 10000); })));
  let mathjax = 'no math';
  if (document.querySelector('.math, .MathJax, script[type^="math/tex"]')) {
    const t0 = Date.now();
    while (!(window.MathJax && MathJax.startup && MathJax.startup.promise) && Date.now() - t0 < 2000) await sleep(50);
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      const done = await Promise.race([MathJax.startup.promise.then(() => 'typeset', e => 'failed: ' + e),
                                       sleep(30000).then(() => 'timed out')]);
      mathjax = done;
    } else {
      mathjax = 'not loaded';
    }
  }
  if (document.fonts && document.fonts.ready) await Promise.race([document.fonts.ready, sleep(5000)]);
  await sleep(100);
  // Content that the reader has to scroll sideways to see: code/output blocks, tables, equations.
  const main = document.querySelector('main, article, [role=main]') || document.body;
  const wide = {};
  for (const el of main.querySelectorAll('*')) {
    const style = getComputedStyle(el);
    if (!['auto', 'scroll'].includes(style.overflowX) || el.scrollWidth <= el.clientWidth + 2) continue;
    const kind = el.matches('pre, pre *') || el.querySelector('pre') ? 'code/output block'
               : el.querySelector('table') || el.matches('table') ? 'table'
               : el.matches('mjx-container, .math') || el.querySelector('mjx-container') ? 'equation' : 'block';
    const w = wide[kind] || (wide[kind] = {count: 0, widest: 0});
    w.count += 1; w.widest = Math.max(w.widest, el.scrollWidth - el.clientWidth);
  }
  // Figures scaled down to fit the column: their text shrinks by the same factor.
  // (against the width the page asks for: a 2x PNG is meant to be shown at half its pixel width)
  const intended = img => parseFloat(img.style.width) || parseFloat(img.getAttribute('width')) || img.naturalWidth;
  const shrunk = imgs.filter(img => img.closest('.cell_output, .output, figure') && img.naturalWidth > 0)
                     .map(img => img.clientWidth / intended(img)).filter(scale => scale < SHRINK_LIMIT);
  return {
    mathjax,
    wide,
    shrunk,
    images: imgs.map(img => ({attr: img.getAttribute('src'), src: img.currentSrc || img.src,
                              complete: img.complete, naturalWidth: img.naturalWidth,
                              clientWidth: img.clientWidth, animation: !!img.closest('.animation')})),
    height: Math.max(document.documentElement.scrollHeight, document.body ? document.body.scrollHeight : 0),
    html: document.documentElement.outerHTML,
  };
})()
"""


def _network_problems(events: list[dict], base_url: str) -> tuple[list[str], list[str]]:
    """(problems, notes) from the DevTools events of one page load."""
    problems, notes = [], []
    urls = {}
    for event in events:
        params = event.get("params", {})
        method = event["method"]
        if method == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
        elif method == "Network.responseReceived":
            response = params["response"]
            if (response["status"] >= 400 and response["url"].startswith(base_url)
                    and response["url"] != base_url + "favicon.ico"):  # asked for by the browser itself
                problems.append(f"HTTP {response['status']} for {response['url'][len(base_url):]}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            url = urls.get(params["requestId"], "?")
            if url.startswith(base_url):
                problems.append(f"failed to load {url[len(base_url):]}: {params.get('errorText')}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text", "")
            problems.append(f"JavaScript exception: {_first_line(text)}")
    return list(dict.fromkeys(problems)), list(dict.fromkeys(notes))


def _drop_repeats(problems: list[str]) -> list[str]:
    """Drop the browser's reports (404, naturalWidth 0) of an image the file check already called missing."""
    missing = {m.group(1): m.group(2) for p in problems
               if (m := re.fullmatch(r"broken image: (.*) \(missing file (.*)\)", p))}
    kept = []
    for problem in dict.fromkeys(problems):
        m = re.fullmatch(r"broken image: (.*) (?:has naturalWidth 0 .*|did not finish loading)", problem)
        if m and m.group(1) in missing:
            continue
        m = re.fullmatch(r"HTTP 404 for (.*)", problem)
        if m and m.group(1) in missing.values():
            continue
        kept.append(problem)
    return kept


def find_chromium(explicit: str | None = None) -> str | None:
    for name in (explicit, os.environ.get("CHROMIUM"), *CHROMIUM_NAMES):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("html", nargs="?", default="_build/html", help="the built HTML folder (default: _build/html)")
    parser.add_argument("--out", default=None, help="screenshot folder (default: <html>/../screenshots)")
    parser.add_argument("--page", action="append", default=[], help="check only this page (path relative to html; repeatable)")
    parser.add_argument("--chromium", default=None, help="the browser binary (default: $CHROMIUM or chromium on PATH)")
    parser.add_argument("--mathjax-dir", default=None, help="a local MathJax 3 (folder with tex-chtml.js) for remote-MathJax pages")
    parser.add_argument("--allow-stderr", action="store_true", help="stderr in cell outputs is not a failure")
    parser.add_argument("--static-only", action="store_true", help="no browser: check files, links and the built HTML only")
    parser.add_argument("--no-screenshots", action="store_true", help="check without writing screenshots")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per page (default 60)")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels (default 1280)")
    parser.add_argument("--max-height", type=int, default=30000, help="screenshots are cut at this height (default 30000)")
    args = parser.parse_args(argv)

    root = Path(args.html).resolve()
    out = Path(args.out) if args.out else root.parent / "screenshots"
    if not root.is_dir():
        print(f"[pages] no built book at {root}: build it first (jupyter-book build .)", file=sys.stderr)
        return 2
    pages = [root / p for p in args.page] if args.page else find_pages(root)
    missing = [p for p in pages if not p.is_file()]
    if missing or not pages:
        print(f"[pages] no such page(s): {', '.join(map(str, missing)) or root}", file=sys.stderr)
        return 2

    scans = {path.resolve(): scan_html(path.read_text(encoding="utf-8", errors="replace"))
             for path in root.rglob("*.html") if "_static" not in path.relative_to(root).parts}
    ids_by_page = {path: scan.ids for path, scan in scans.items()}
    results: dict[str, dict] = {}
    for page in pages:
        rel = page.relative_to(root).as_posix()
        scan = scans[page.resolve()]
        problems = link_problems(page, root, scan, ids_by_page)
        results[rel] = {"problems": problems, "notes": [], "seconds": 0.0, "screenshot": None}
        if args.static_only:
            problems += dom_problems(page.read_text(encoding="utf-8", errors="replace"),
                                     allow_stderr=args.allow_stderr, expect_math=False)

    browser = server = None
    start = time.monotonic()
    if not args.static_only:
        binary = find_chromium(args.chromium)
        if binary is None:
            print("[pages] no Chromium found (apt-get install chromium, or pass --chromium / set $CHROMIUM)",
                  file=sys.stderr)
            return 2
        uses_remote_mathjax = any(any(REMOTE_MATHJAX.search(f'<script src="{s}">') for s in scans[p.resolve()].scripts)
                                  for p in pages)
        mathjax_dir = find_local_mathjax(args.mathjax_dir) if uses_remote_mathjax else None
        server, base_url = serve(root, mathjax_dir)
        browser = Chromium(binary, width=args.width)
        how = ("" if not uses_remote_mathjax else
               f"; remote MathJax replaced by {mathjax_dir}" if mathjax_dir else
               "; MathJax is remote and no local copy was found")
        print(f"[pages] {len(pages)} pages of {root} in {browser.version}{how}", flush=True)
    try:
        for page in pages:
            rel = page.relative_to(root).as_posix()
            result = results[rel]
            if args.static_only:
                continue
            if scans[page.resolve()].redirect is not None:  # e.g. index.html -> book/intro.html
                result["notes"].append(f"redirects to {scans[page.resolve()].redirect} (target checked as a link)")
                continue
            t0 = time.monotonic()
            try:
                browser.open(base_url + rel, timeout=args.timeout)
                info = browser.evaluate(PAGE_PROBE.replace("%SHRINK_LIMIT%", str(SHRINK_LIMIT)),
                                        timeout=args.timeout)
                net_problems, notes = _network_problems(browser.events, base_url)
                result["problems"] += net_problems
                result["notes"] += notes
                result["problems"] += image_problems(info["images"])
                result["problems"] += dom_problems(info["html"], allow_stderr=args.allow_stderr,
                                                   expect_math=info["mathjax"] == "typeset")
                if info["mathjax"] not in ("no math", "typeset"):
                    remote = [s for s in scans[page.resolve()].scripts if REMOTE_MATHJAX.search(f'<script src="{s}">')]
                    hint = (f" (MathJax is loaded from {remote[0]}, unreachable offline: pass --mathjax-dir, or "
                            "pip install sphinx-mathjax-offline)" if remote and mathjax_dir is None else "")
                    result["problems"].append(f"MathJax {info['mathjax']}{hint}")
                if info["shrunk"]:
                    smallest = min(info["shrunk"])
                    result["notes"].append(
                        f"{len(info['shrunk'])} figure(s) shrunk to fit the column, the smallest to {smallest:.0%} "
                        f"(an 11 pt label at 100 dpi then shows {15 * smallest:.0f} px tall): use a narrower figsize")
                for kind, wide in sorted(info["wide"].items()):
                    result["notes"].append(f"{wide['count']} {kind}(s) wider than the column, cut and scrolled "
                                           f"sideways (the widest by {wide['widest']} px)")
                if not args.no_screenshots:
                    shot = out / (rel[: -len(".html")] + ".png")
                    browser.screenshot(shot, info["height"], args.max_height)
                    result["screenshot"] = str(shot)
                    if info["height"] > args.max_height:
                        result["notes"].append(f"page is {info['height']} px tall; screenshot cut at {args.max_height}")
            except (TimeoutError, CDPError) as error:
                result["problems"].append(f"page did not load/render: {error}")
                if browser.proc.poll() is not None:  # Chromium died: start a fresh one for the next pages
                    browser.close()
                    browser = Chromium(binary, width=args.width)
            result["problems"] = _drop_repeats(result["problems"])
            result["seconds"] = round(time.monotonic() - t0, 2)
    finally:
        if browser is not None:
            browser.close()
        if server is not None:
            server.shutdown()
            server.server_close()

    failed = 0
    for rel, result in results.items():
        status = "FAIL" if result["problems"] else "ok  "
        failed += bool(result["problems"])
        timing = "" if args.static_only else f" ({result['seconds']:.1f} s)"
        print(f"[pages] {status} {rel}{timing}")
        for problem in result["problems"]:
            print(f"[pages]        - {problem}")
        for note in result["notes"]:
            print(f"[pages]        note: {note}")
    if not args.no_screenshots and not args.static_only:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(results, indent=1))
    total = time.monotonic() - start
    where = "" if args.no_screenshots or args.static_only else f"; screenshots in {out}"
    print(f"[pages] {len(results) - failed} passed, {failed} failed"
          + ("" if args.static_only else f" in {total:.1f} s ({total / max(len(results), 1):.1f} s/page){where}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
