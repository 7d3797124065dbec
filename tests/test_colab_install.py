"""A learner on Colab runs each chapter's install cell, then every cell: the install must cover every import they make.

Colab's runtime already has torch, numpy, matplotlib, ipywidgets, IPython, PIL and psutil; everything else a chapter
imports must come with `pip install "sdtune[gpu]"` (sdtune's dependencies and its gpu extra) or be in Python's standard
library.
"""

import ast
import json
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "course").glob("[0-9][0-9]_*.ipynb"))
ON_COLAB = {"torch", "numpy", "matplotlib", "ipywidgets", "IPython", "PIL", "google", "psutil"}  # psutil: ipykernel needs it
IMPORT_NAME = {"pillow": "PIL", "pyyaml": "yaml"}  # distributions whose import name differs (others: the same, - as _)


def installed_by_sdtune_gpu() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["gpu"]
    names = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in requirements}
    return {IMPORT_NAME.get(n, n.replace("-", "_")) for n in names} | {"sdtune"}


def imports(source: str) -> set[str]:
    """Top-level modules a cell imports (IPython magics such as %pip become `pass` before parsing)."""
    code = "\n".join(re.sub(r"^(\s*)[%!].*", r"\1pass", line) for line in source.splitlines())
    found = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.name[:2] for p in CHAPTERS])
def test_the_colab_cell_installs_what_the_chapter_imports(chapter):
    cells = [c for c in json.loads(chapter.read_text())["cells"] if c["cell_type"] == "code"]
    install = "".join(cells[0]["source"])
    assert "google.colab" in install and '%pip install -q "sdtune[gpu] @ git+' in install, "the first code cell is the Colab install"
    needed = set().union(*(imports("".join(c["source"])) for c in cells))
    missing = needed - installed_by_sdtune_gpu() - ON_COLAB - set(sys.stdlib_module_names)
    assert missing == set(), f"imported but installed neither by sdtune[gpu] nor by Colab: {sorted(missing)}"


def test_the_check_finds_a_missing_package():
    assert imports("import gdown\nfrom diffusers import StableDiffusionPipeline\n%matplotlib inline") == {"gdown", "diffusers"}
    assert "gdown" not in installed_by_sdtune_gpu() | ON_COLAB
