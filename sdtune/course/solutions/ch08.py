"""Chapter 08 exercises: the prior-preservation loss on a combined batch, and choosing a DreamBooth identifier."""

import torch
import torch.nn.functional as F


def prior_preservation_loss(pred: torch.Tensor, target: torch.Tensor, lam: float) -> torch.Tensor:
    """One batch holds the subject images first and as many class images after them (diffusers' train_dreambooth.py):

        L = MSE(pred_subject, target_subject) + lam * MSE(pred_class, target_class)

    `target` is the noise eps (or v for v-prediction models). lam = 0 is plain fine-tuning on the subject half.
    """
    pred_subject, pred_class = torch.chunk(pred, 2)
    target_subject, target_class = torch.chunk(target, 2)
    return F.mse_loss(pred_subject, target_subject) + lam * F.mse_loss(pred_class, target_class)


def good_identifier(tokenizer, word: str, known_words: set[str]) -> bool:
    """A rare identifier: the tokenizer keeps it as one token (so it is one handle, not pieces with their own
    meanings), and the model has not learned a meaning for it (it is not among `known_words`)."""
    return len(tokenizer.tokenize(word)) == 1 and word not in known_words
