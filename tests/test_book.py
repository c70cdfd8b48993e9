"""The book's structure: well-formed notebooks, a table of contents that lists every chapter,
and citations that resolve into the one bibliography."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import notebooks  # noqa: E402

NOTEBOOKS = notebooks.notebooks()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_well_formed(path):
    assert notebooks.problems(path) == []


def _toc_files() -> set[str]:
    return set(re.findall(r"file:\s*(\S+)", (ROOT / "_toc.yml").read_text()))


def test_every_notebook_and_page_is_in_the_toc():
    listed = _toc_files() | {re.search(r"root:\s*(\S+)", (ROOT / "_toc.yml").read_text()).group(1)}
    pages = {str(p.relative_to(ROOT).with_suffix("")) for p in (ROOT / "book").rglob("*") if p.suffix in {".md", ".ipynb"}
             and ".ipynb_checkpoints" not in p.parts}
    assert pages - listed == set(), "pages missing from _toc.yml"
    assert listed - pages == set(), "_toc.yml lists pages that do not exist"


def _cite_keys(text: str) -> set[str]:
    keys = set()
    for group in re.findall(r"\{cite(?::[a-z]+)?\}`([^`]+)`", text):
        keys.update(k.strip() for k in group.split(","))
    for group in re.findall(r":cite(?::[a-z]+)?:`([^`]+)`", text):
        keys.update(k.strip() for k in group.split(","))
    return keys


def test_every_citation_is_in_the_bibliography():
    bib = set(re.findall(r"^@\w+\{([^,]+),", (ROOT / "book" / "references.bib").read_text(), flags=re.M))
    cited = set()
    for path in (ROOT / "book").rglob("*"):
        if path.suffix == ".md":
            cited |= _cite_keys(path.read_text())
        elif path.suffix == ".ipynb":
            nb = json.loads(path.read_text())
            cited |= _cite_keys("\n".join("".join(c["source"]) for c in nb["cells"]))
    for path in (ROOT / "bdk").rglob("*.py"):
        cited |= _cite_keys(path.read_text())
    assert cited - bib == set(), "cite keys missing from book/references.bib"


def test_bibliography_keys_are_unique():
    keys = re.findall(r"^@\w+\{([^,]+),", (ROOT / "book" / "references.bib").read_text(), flags=re.M)
    assert len(keys) == len(set(keys))
