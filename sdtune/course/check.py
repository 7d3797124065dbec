"""Self-checks for exercises, in the spirit of karpathy's `cmp()`: a clear verdict and what is wrong.

A chapter's exercises live in `sdtune/course/checks/chNN.py`: for each, an `Exercise` with its checker, the
reference solution (`sdtune/course/solutions/chNN.py`) and plausible wrong answers. The notebook runs

    from sdtune.course.checks import ch00
    add_noise = check.solution(ch00.ADD_NOISE, add_noise)   # yours if it passes, else the reference

and `tests/test_exercises.py` runs every reference (it must pass) and every wrong answer (each must fail).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


def close(actual, expected: torch.Tensor, name: str, atol: float = 1e-5) -> bool:
    """Compare a learner's tensor with the expected one; print a verdict that names the problem."""
    if not isinstance(actual, torch.Tensor):
        print(f"✗ {name}: expected a torch.Tensor, got {type(actual).__name__}.")
        return False
    if actual.shape != expected.shape:
        print(f"✗ {name}: expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}.")
        return False
    if not actual.dtype.is_floating_point:
        print(f"✗ {name}: expected floating-point values, got {actual.dtype}.")
        return False
    error = (actual.detach().float() - expected.float()).abs().max().item()
    if error > atol:
        print(f"✗ {name}: values differ by up to {error:.3g} (allowed {atol:g}).")
        return False
    print(f"✓ {name}: matches (max difference {error:.1e}).")
    return True


def _shown(value) -> str:
    """A count with thousands separators (10,240), anything else as Python prints it."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)


def equal(actual, expected, name: str) -> bool:
    """Compare a learner's value (a count, a shape, a yes or no) with the expected one; print a verdict."""
    if actual == expected:
        print(f"✓ {name}: {_shown(actual)}")
        return True
    print(f"✗ {name}: expected {_shown(expected)}, got {_shown(actual)}.")
    return False


def solved(checker: Callable[[Callable], bool], fn: Callable) -> bool:
    """Run `checker(fn)`; True if the learner's `fn` passes. Unattempted or failing: say so, return False."""
    try:
        ok = bool(checker(fn))
    except NotImplementedError:
        print("Not attempted yet: the reference solution is used so the rest of the chapter runs.")
        return False
    except Exception as error:  # a learner's bug: report it, keep the chapter running
        print(f"✗ your function raised {type(error).__name__}: {error}")
        ok = False
    if not ok:
        print("Using the reference solution for the cells below; fix yours and run the check again.")
    return ok


@dataclass(frozen=True)
class Exercise:
    """One exercise: `checker(fn)` says whether `fn` is right (printing what is wrong); `reference` passes it;
    each of `wrong` (a plausible mistake, by its description) must fail it."""

    name: str
    checker: Callable[[Callable], bool]
    reference: Callable
    wrong: dict[str, Callable] = field(default_factory=dict)


def solution(exercise: Exercise, attempt: Callable) -> Callable:
    """The function the chapter goes on with: the learner's `attempt` if it passes the check, else the reference,
    which is checked too: a reference that fails its own check stops the chapter (a bug in the course)."""
    if solved(exercise.checker, attempt):
        return attempt
    if not exercise.checker(exercise.reference):
        raise AssertionError(f"The reference solution of {exercise.name} fails its own check: this is a bug in the "
                             "course, please report it.")
    return exercise.reference
