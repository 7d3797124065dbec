"""Chapter 07's exercises: restoring the base vocabulary after a Textual Inversion step, and counting what trains."""

from __future__ import annotations

import torch

from sdtune.course import check
from sdtune.course.check import Exercise
from sdtune.course.solutions import ch07 as solutions


def check_restore(fn) -> bool:
    """After an optimizer step touched every row, rows 7 and 9 (the new word's) keep their trained values and every
    other row is the original again, bit for bit; `fn` works in place."""
    g = torch.Generator().manual_seed(0)
    original = torch.randn(10, 4, generator=g)
    trained = original + torch.randn(10, 4, generator=g)
    weight = trained.clone()
    with torch.no_grad():
        fn(weight, original, [7, 9])
    expected = original.clone()
    expected[[7, 9]] = trained[[7, 9]]
    return check.close(weight, expected, name="restore_other_rows: rows 7 and 9 trained, the others the original", atol=0)


def check_count(fn) -> bool:
    """K vectors of width d: the tiny model's 128-wide table (the chapter's files: 1 and 4 vectors), SD 1.5's 768, SD 2's 1024."""
    ok = check.equal(fn(1, 128), 128, "ti_parameter_count(1, 128), the 1-vector file of the tiny model")
    ok &= check.equal(fn(4, 128), 512, "ti_parameter_count(4, 128), the 4-vector file")
    ok &= check.equal(fn(4, 768), 3072, "ti_parameter_count(4, 768), SD 1.5")
    return ok & check.equal(fn(2, 1024), 2048, "ti_parameter_count(2, 1024), SD 2.x")


def _copy_all(weight, original, new_ids):
    with torch.no_grad():
        weight.copy_(original)


def _restore_only_new(weight, original, new_ids):
    with torch.no_grad():
        weight[new_ids] = original[new_ids]


RESTORE_OTHER_ROWS = Exercise("restore_other_rows", check_restore, solutions.restore_other_rows, wrong={
    "every row restored, the new word's too": _copy_all,
    "nothing restored": lambda weight, original, new_ids: None,
    "only the new word's rows restored (the mask inverted)": _restore_only_new,
})
TI_PARAMETER_COUNT = Exercise("ti_parameter_count", check_count, solutions.ti_parameter_count, wrong={
    "the width alone (one vector whatever K is)": lambda vectors, width: width,
    "K + d instead of K x d": lambda vectors, width: vectors + width,
    "bytes in fp32 instead of numbers": lambda vectors, width: 4 * vectors * width,
})
EXERCISES = [RESTORE_OTHER_ROWS, TI_PARAMETER_COUNT]
