"""Chapter 05 exercises: LoHa's parameter count and the Kronecker product behind LoKr."""

import torch


def loha_parameter_count(d_out: int, d_in: int, r: int) -> int:
    """Two LoRA-shaped pairs: W1a, W2a are d_out x r and W1b, W2b are r x d_in, so 2 r (d_in + d_out).

    For a k x k convolution pass d_in = in_channels * k * k: LoHa builds a d_out x (d_in k k) matrix.
    """
    return 2 * r * (d_in + d_out)


def kron_shape(w1_shape: tuple[int, int], w2_shape: tuple[int, int]) -> tuple[int, int]:
    """kron of a p x q and a p' x q' matrix is (p p') x (q q'): every entry of W1 scales one copy of W2.

    LoKr on a 320 x 320 layer: W1 16 x 16, W2 20 x 20 -> 320 x 320.
    """
    (p, q), (p2, q2) = w1_shape, w2_shape
    return (p * p2, q * q2)


def kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kronecker product of two matrices by broadcasting: t[i, k, j, l] = a[i, j] * b[k, l], then
    row i * p' + k and column j * q' + l of the result, which is what reshape gives for the order (i, k, j, l)."""
    p, q = a.shape
    p2, q2 = b.shape
    return (a[:, None, :, None] * b[None, :, None, :]).reshape(p * p2, q * q2)
