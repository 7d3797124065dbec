"""Every number in a chapter's prose is one the chapter printed, and no prose names a code variable.

For each chapter rewritten to the course's evidence rules (its notebook metadata holds `sdtune.prose_exceptions`),
each number in a markdown cell (outside LaTeX, code spans and links) must appear in the chapter's committed outputs
(what `python course/run_chapters.py NN` wrote) or in a committed results file the chapter reads. A number that is
not a measurement is allowed only through the notebook's `prose_exceptions`: the phrase that holds it and the reason.
Structural numbers (section headings "## 3.", numbered steps "**2. ...**", list items "1. ...") are not claims and
are skipped.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _exceptions(path: Path) -> dict[str, str] | None:
    return json.loads(path.read_text())["metadata"].get("sdtune", {}).get("prose_exceptions")


CHAPTERS = sorted(p.name[:2] for p in (ROOT / "course").glob("[0-9][0-9]_*.ipynb") if _exceptions(p) is not None)
EXCEPTIONS = {n: _exceptions(next((ROOT / "course").glob(f"{n}_*.ipynb"))) for n in CHAPTERS}

NUMBER = re.compile(r"(?<![A-Za-z0-9_.])\d[\d,]*(?:\.\d+)?")  # a digit after a Chinese character counts too
STRUCTURE = re.compile(r"^\s*(?:#+\s*|\*\*|>\s*)?\d+\.\s", re.M)  # "## 3. The judge", "**2. Guidance.**", "1. item"
VARIABLE = re.compile(r"\b[A-Za-z][A-Za-z0-9]*_[A-Za-z0-9_]+\b|\b[A-Za-z_]\w*\[[^\]\s]*\]")


def prose(text: str) -> str:
    """Markdown without what is not prose: LaTeX, fenced code, code spans, link targets, HTML tags."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)
    text = re.sub(r"\$[^$\n]*\$", " ", text)
    text = re.sub(r"`[^`\n]*`", " ", text)
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", text)  # images, badges
    text = re.sub(r"\]\([^)]*\)", "]", text)  # keep a link's text, drop its target
    text = re.sub(r"<[^>]+>", " ", text)
    return STRUCTURE.sub(" ", text)


def numbers_in(text: str) -> set[str]:
    return {n.replace(",", "").rstrip(".") for n in NUMBER.findall(text)}


def chapter(number: str) -> dict:
    return json.loads(next((ROOT / "course").glob(f"{number}_*.ipynb")).read_text())


def printed(nb: dict) -> set[str]:
    """Every number in the chapter's outputs, and in the committed results files its code reads."""
    texts = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        for out in cell.get("outputs", []):
            texts.append("".join(out.get("text", "")))
            for kind in ("text/plain", "text/markdown", "text/html"):
                texts.append("".join(out.get("data", {}).get(kind, "")))
        for path in re.findall(r"(?:benchmarks/results|sdtune/assets)/[\w./-]+\.json", "".join(cell["source"])):
            texts.append(_results_numbers(json.loads((ROOT / path).read_text())))
    return numbers_in("\n".join(texts))


def _results_numbers(value) -> str:
    """A results file's numbers as the prose may quote them: as stored, rounded, and fractions as percentages."""
    if isinstance(value, dict):
        return " ".join(_results_numbers(v) for v in value.values())
    if isinstance(value, list):
        return " ".join(_results_numbers(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value) if isinstance(value, str) else ""
    forms = {repr(value)} | {f"{value:.{d}f}" for d in range(4)}
    if 0 <= value <= 1:
        forms |= {f"{100 * value:.{d}f}" for d in range(2)}
    return " ".join(forms)


def unexplained_numbers(number: str) -> list[tuple[int, str]]:
    nb = chapter(number)
    seen = printed(nb)
    missing = []
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        text = prose("".join(cell["source"]))
        for phrase in EXCEPTIONS.get(number, {}):
            text = text.replace(phrase, " ")
        missing += [(index, n) for n in sorted(numbers_in(text) - seen)]
    return missing


@pytest.mark.parametrize("number", CHAPTERS)
def test_every_number_in_the_prose_was_printed(number):
    assert unexplained_numbers(number) == [], (
        "numbers in markdown (cell index, number) that no output or results file of the chapter shows: print them, "
        "render the sentence from the run's values, or list the phrase in EXCEPTIONS with its reason")


@pytest.mark.parametrize("number", CHAPTERS)
def test_no_prose_names_a_variable(number):
    found = [(i, v) for i, cell in enumerate(chapter(number)["cells"]) if cell["cell_type"] == "markdown"
             for v in VARIABLE.findall(prose("".join(cell["source"])))]
    assert found == [], "markdown names code variables (cell index, name): say what the value is, or put code in `code`"


@pytest.mark.parametrize("number", CHAPTERS)
def test_every_exception_is_used(number):
    text = " ".join(prose("".join(c["source"])) for c in chapter(number)["cells"] if c["cell_type"] == "markdown")
    assert [p for p in EXCEPTIONS.get(number, {}) if p not in text] == [], "an exception no prose needs: remove it"


def test_the_check_catches_a_planted_number():
    nb = {"cells": [{"cell_type": "code", "source": ["print(0.972)"], "outputs": [{"text": ["97.2%\n"]}]},
                    {"cell_type": "markdown", "source": ["The judge agrees in 97.2% of images, colour 99.0%."]}]}
    assert numbers_in(prose(nb["cells"][1]["source"][0])) - printed(nb) == {"99.0"}
    assert numbers_in("评判器一致率为97.2%，颜色为99.0%") == {"97.2", "99.0"}  # digits against Chinese text are found too
    assert VARIABLE.findall(prose("fidelity was scores[\"base\"] after N_STEPS steps; `ok_name` in code")) == \
        ['scores["base"]', "N_STEPS"]
