"""Exercise checks can fail: every chapter's reference passes its checker, and every listed wrong answer fails it.

Chapters with exercises keep them in sdtune/course/checks/chNN.py (see sdtune.course.check); this test finds them all.
"""

import importlib
import json
from pathlib import Path

import pytest

from sdtune.course import check

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in (ROOT / "sdtune" / "course" / "checks").glob("ch[0-9][0-9].py"))
EXERCISES = [(m, e) for m in MODULES for e in importlib.import_module(f"sdtune.course.checks.{m}").EXERCISES]
WRONG = [(m, e, why) for m, e in EXERCISES for why in e.wrong]


@pytest.mark.parametrize("module, exercise", EXERCISES, ids=[f"{m}.{e.name}" for m, e in EXERCISES])
def test_reference_passes_and_has_wrong_answers(module, exercise):
    assert check.solved(exercise.checker, exercise.reference), f"{module}: the reference of {exercise.name} fails its check"
    assert exercise.wrong, f"{module}.{exercise.name} lists no wrong answer: a check never seen failing may not be able to"


@pytest.mark.parametrize("module, exercise, why", WRONG, ids=[f"{m}.{e.name}: {w}" for m, e, w in WRONG])
def test_wrong_answer_fails(module, exercise, why):
    assert not check.solved(exercise.checker, exercise.wrong[why]), f"{module}.{exercise.name} accepts a wrong answer: {why}"


@pytest.mark.parametrize("module", MODULES)
def test_chapter_uses_its_checks(module):
    """The notebook runs each exercise through check.solution, so a failing reference stops the chapter."""
    chapter = next((ROOT / "course").glob(f"{module[2:]}_*.ipynb"))
    code = "\n".join("".join(c["source"]) for c in json.loads(chapter.read_text())["cells"] if c["cell_type"] == "code")
    for _, exercise in (x for x in EXERCISES if x[0] == module):
        assert f"check.solution({module}.{exercise.name.upper()}, {exercise.name})" in code, (chapter.name, exercise.name)


def test_solution_keeps_a_passing_attempt_and_refuses_a_broken_reference():
    ok = check.Exercise("double", lambda fn: fn(2) == 4, reference=lambda x: 2 * x)
    mine = lambda x: x + x  # noqa: E731
    assert check.solution(ok, mine) is mine
    assert check.solution(ok, lambda x: 3 * x) is ok.reference
    broken = check.Exercise("double", lambda fn: fn(2) == 4, reference=lambda x: 3 * x)
    with pytest.raises(AssertionError, match="reference solution of double fails its own check"):
        check.solution(broken, lambda x: 3 * x)


def test_equal_says_what_was_expected_and_what_came(capsys):
    assert check.equal(10240, 10240, "count") and "✓ count: 10,240" in capsys.readouterr().out
    assert not check.equal(5120, 10240, "count") and "✗ count: expected 10,240, got 5,120." in capsys.readouterr().out
    assert not check.equal("10240", 10240, "count") and "got '10240'" in capsys.readouterr().out
    assert check.equal((2, 3), (2, 3), "shape") and not check.equal(False, True, "good_identifier('sks')")
