"""Chapter 08's exercises: the prior-preservation loss on a combined batch, and choosing a DreamBooth identifier."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from sdtune.course import check
from sdtune.course.check import Exercise
from sdtune.course.solutions import ch08 as solutions
from sdtune.data import toyworld
from sdtune.io import ASSETS


def check_prior_loss(fn) -> bool:
    """A batch of 4 subject images then 4 class images, as diffusers' train_dreambooth.py stacks them:
    L = MSE(subject half) + lambda MSE(class half), at lambda 1, 0.5 and 0."""
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(8, 4, 8, 8, generator=g), torch.randn(8, 4, 8, 8, generator=g)
    pred[4:] = target[4:] + 0.3 * pred[4:]  # the class half nearly right: its term is smaller, so the halves differ
    subject, cls = F.mse_loss(pred[:4], target[:4]), F.mse_loss(pred[4:], target[4:])
    ok = True
    for lam in (1.0, 0.5, 0.0):
        ok &= check.close(fn(pred, target, lam), subject + lam * cls, name=f"prior_preservation_loss(pred, target, {lam})")
    return ok


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """The tiny model's CLIP tokenizer, read from the package."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(ASSETS / "tiny-sd" / "tokenizer")


def pretraining_words() -> set[str]:
    """Every word of the tiny model's pretraining captions: the words it has a meaning for."""
    return {w for s in toyworld.base_prompts() for w in (toyworld.caption(s) + " shape").split()}


def check_identifier(fn) -> bool:
    """Rare single tokens pass ("sks", "ohwx"); a word the model knows ("circle", "red") and a string the tokenizer
    splits into pieces ("xyz", "skscircle") do not."""
    ok = True
    tokenizer, known = tiny_tokenizer(), pretraining_words()
    for word, expected in (("sks", True), ("ohwx", True), ("circle", False), ("xyz", False), ("skscircle", False), ("red", False)):
        actual = bool(fn(tokenizer, word, known))
        if actual == expected:
            print(f"✓ good_identifier({word!r}): {actual}")
        else:
            print(f"✗ good_identifier({word!r}): expected {expected}, got {actual}.")
            ok = False
    return ok


def _halves(pred, target):
    return torch.chunk(pred, 2), torch.chunk(target, 2)


def _lambda_on_subject(pred, target, lam):
    (ps, pc), (ts, tc) = _halves(pred, target)
    return lam * F.mse_loss(ps, ts) + F.mse_loss(pc, tc)


def _class_unweighted(pred, target, lam):
    (ps, pc), (ts, tc) = _halves(pred, target)
    return F.mse_loss(ps, ts) + F.mse_loss(pc, tc)


PRIOR_PRESERVATION_LOSS = Exercise("prior_preservation_loss", check_prior_loss, solutions.prior_preservation_loss, wrong={
    "one MSE over the whole batch (lambda ignored)": lambda pred, target, lam: F.mse_loss(pred, target),
    "lambda on the subject half instead of the class half": _lambda_on_subject,
    "the class term not weighted by lambda": _class_unweighted,
})
GOOD_IDENTIFIER = Exercise("good_identifier", check_identifier, solutions.good_identifier, wrong={
    "one token is enough (a known word passes)": lambda tokenizer, word, known: len(tokenizer.tokenize(word)) == 1,
    "unknown is enough (pieces pass)": lambda tokenizer, word, known: word not in known,
    "short words": lambda tokenizer, word, known: len(word) <= 4,
})
EXERCISES = [PRIOR_PRESERVATION_LOSS, GOOD_IDENTIFIER]
