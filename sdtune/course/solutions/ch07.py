"""Chapter 07 exercises: restoring the base vocabulary after a Textual Inversion step, and counting what trains."""

import torch


def restore_other_rows(weight: torch.Tensor, original: torch.Tensor, new_ids: list[int]) -> None:
    """Copy every row of `original` back into `weight` in place, except the placeholder's rows `new_ids`.

    An optimizer step changes more than the new rows: the caption's other words get gradients too, and AdamW's
    weight decay shrinks every row. Copying the rest back keeps the base vocabulary bit-identical.
    """
    others = torch.ones(len(weight), dtype=torch.bool, device=weight.device)
    others[new_ids] = False
    with torch.no_grad():
        weight[others] = original[others].to(weight.dtype)


def ti_parameter_count(vectors: int, width: int) -> int:
    """A K-vector embedding trains K rows of the text encoder's table, each `width` numbers: K x d.

    SD 1.5 (d = 768): 768 per vector, 3 kB in fp32; SD 2.x: d = 1024.
    """
    return vectors * width
