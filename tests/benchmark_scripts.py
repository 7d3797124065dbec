"""The study scripts of benchmarks/ are scripts, not a package: tests load one by name to test its functions; and the
README's tables of their results, read back to be compared with the results files."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Mapping

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
README = BENCHMARKS.parent / "README.md"


def load_study(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (its main() is not run), with benchmarks/ on sys.path as when run as a script."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_rows(start: str, end: str, labels: Mapping[str, str]) -> dict[str, list[str]]:
    """The README's table rows between the texts `start` and `end` whose first cell is a key of `labels`:
    {labels[first cell]: the row's cells, the first included}."""
    text = README.read_text()
    rows = {}
    for line in text[text.index(start):text.index(end)].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in labels:
            rows[labels[cells[0]]] = cells
    return rows
