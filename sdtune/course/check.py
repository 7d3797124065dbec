"""Self-checks for exercises, in the spirit of karpathy's `cmp()`: a clear verdict and what is wrong.

    if not check.solved(check_add_noise, add_noise):     # runs your function through the check
        from sdtune.course.solutions.ch00 import add_noise  # falls back to the reference so later cells run
"""

from __future__ import annotations

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
