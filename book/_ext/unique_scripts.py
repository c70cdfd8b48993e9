"""Sphinx extension: emit each page's ``<script>`` entries once.

``sphinx-thebe`` and ``sphinx-togglebutton`` register their inline configuration scripts (for
example ``const THEBE_JS_URL = ...``) twice, once with the file name ``None`` and once with ``""``;
Sphinx sees two different assets, so every page declared the same constant twice and the browser
raised a ``SyntaxError`` on each page load. This drops repeated entries (same file, same inline
body) from the page's script list, keeping the first.
"""

from __future__ import annotations


def _key(script) -> tuple:
    # An inline script is registered with filename None by some extensions and "" by others.
    filename = getattr(script, "filename", script) or ""
    attributes = getattr(script, "attributes", {}) or {}
    return (str(filename), str(attributes.get("body", "")))


def _unique_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
