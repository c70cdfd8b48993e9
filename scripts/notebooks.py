"""Keep the book's notebooks consistent: the setup cell, no stored outputs, a title first.

    python scripts/notebooks.py check          # exit 1 and list problems
    python scripts/notebooks.py fix            # rewrite setup cells, strip outputs
    python scripts/notebooks.py new book/x.ipynb "Title"   # a new notebook with the setup cell

The setup cell clones the repository on Colab at the book's pinned revision and installs ``bdk``
from it; everywhere else it uses the installed ``bdk`` and, where there is none, says how to install
it. The URL and the revision are both read from ``_config.yml`` (``repository.url`` and
``repository.branch``, which is also the revision the launch buttons open), so the launch button,
the setup cell and the README's install line cannot disagree.
"""

from __future__ import annotations

import json
import re
import uuid
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _repository_setting(key: str) -> str:
    text = (ROOT / "_config.yml").read_text()
    block = re.search(r"^repository:\s*\n((?:[ \t]+.*\n?)+)", text, flags=re.M)
    match = re.search(rf"^\s+{key}:\s*(\S+)", block.group(1), flags=re.M) if block else None
    if not match:
        raise SystemExit(f"_config.yml has no repository.{key}")
    return match.group(1).strip("'\"")


def repository_url() -> str:
    """``repository.url`` of ``_config.yml``."""
    return _repository_setting("url")


def pinned_revision() -> str:
    """``repository.branch`` of ``_config.yml``: the branch or tag that readers run."""
    return _repository_setting("branch")


def install_line() -> str:
    """The pip command that installs ``bdk`` at the pinned revision (the README quotes it)."""
    return f'pip install "bdk @ git+{repository_url()}@{pinned_revision()}"'


def setup_source() -> str:
    return (
        "# Setup. On Colab: install bdk (with its data/ folder) at the book's\n"
        "# pinned revision, and let it download the data sets it lacks.\n"
        "# Everywhere: seed every generator, set the plot style, and print\n"
        "# the profile and the device.\n"
        "import os\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        f'    repo = "{repository_url()}"\n'
        f"    !git clone -q --depth 1 --branch {pinned_revision()} {{repo}} /content/bdk\n"
        "    %pip install -q /content/bdk\n"
        '    os.environ.setdefault("BDK_DATA_DIR", "/content/bdk/data")\n'
        '    os.environ.setdefault("BDK_DOWNLOAD", "1")  # MD5-checked\n'
        "\n"
        "try:\n"
        "    import bdk\n"
        "except ModuleNotFoundError:\n"
        "    raise ModuleNotFoundError(\n"
        '        "this chapter needs the bdk package: "\n'
        f"        '{install_line()}'\n"
        '        " (or, in a clone of the repository, pip install -e .)"\n'
        "    ) from None\n"
        "\n"
        "device = bdk.setup_notebook(seed=0)"
    )


SETUP_METADATA = {"tags": ["hide-input"]}


def notebooks() -> list[Path]:
    return sorted(p for p in (ROOT / "book").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def problems(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    found = []
    cells = nb.get("cells", [])
    if not cells or cells[0]["cell_type"] != "markdown" or not "".join(cells[0]["source"]).lstrip().startswith("# "):
        found.append("the first cell must be a markdown cell starting with a '# Title'")
    code = [c for c in cells if c["cell_type"] == "code"]
    if not code or "".join(code[0]["source"]) != setup_source():
        found.append("the first code cell must be the setup cell (run `python scripts/notebooks.py fix`)")
    for c in code:
        if c.get("outputs") or c.get("execution_count") is not None:
            found.append("notebooks are committed without outputs (run `python scripts/notebooks.py fix`)")
            break
    if nb.get("metadata", {}).get("kernelspec", {}).get("name") != "python3":
        found.append("kernelspec must be python3")
    return found


def fix(path: Path) -> None:
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    if code and "setup_notebook" in "".join(code[0]["source"]):
        code[0]["source"] = setup_source().splitlines(keepends=True)
        code[0]["metadata"] = dict(SETUP_METADATA)
    for c in code:
        c["outputs"] = []
        c["execution_count"] = None
    for c in nb["cells"]:
        c.setdefault("id", uuid.uuid4().hex[:8])
        c.get("metadata", {}).pop("execution", None)
    nb["nbformat"], nb["nbformat_minor"] = 4, 5
    nb.setdefault("metadata", {})["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def new(path: Path, title: str) -> None:
    def md(text):
        return {"cell_type": "markdown", "id": uuid.uuid4().hex[:8], "metadata": {},
                "source": text.splitlines(keepends=True)}

    nb = {
        "cells": [
            md(f"# {title}\n"),
            {"cell_type": "code", "id": uuid.uuid4().hex[:8], "execution_count": None,
             "metadata": dict(SETUP_METADATA), "outputs": [],
             "source": setup_source().splitlines(keepends=True)},
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"check", "fix", "new"}:
        print(__doc__)
        return 2
    if argv[0] == "new":
        new(Path(argv[1]), argv[2])
        return 0
    bad = 0
    for path in notebooks():
        if argv[0] == "fix":
            fix(path)
        for problem in problems(path):
            print(f"{path.relative_to(ROOT)}: {problem}")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
