"""Hypernetworks in the AUTOMATIC1111 WebUI sense (NovelAI, 2022): small MLPs on the attention's K and V inputs.

A cross-attention layer computes K = W_k c and V = W_v c from the text context c. A hypernetwork leaves
W_k, W_v and every UNet weight frozen and transforms the context first, one residual MLP per path:

    K = W_k (c + MLP_k(c)),    V = W_v (c + MLP_v(c)),    Q unchanged
    MLP(c) = W_2 act(W_1 c + b_1) + b_2       (layer structure "1, 2, 1": d -> 2d -> d)

One (MLP_k, MLP_v) pair exists per input width d and is shared by every attention layer whose K/V input
has that width (for SD 1.x: the 768-wide text context of all 16 cross-attention layers). The weights start
at N(0, 0.01) with zero biases, so the MLP starts near zero and the model near unchanged. Unlike LoRA, the
update depends on c itself, and it cannot be merged into W_k: it costs a little at every step.

Files: `hypernetwork.safetensors` (sdtune's, safe to load) and `<name>.pt` in the WebUI's layout
({width: [state_k, state_v], "layer_structure": ..., "activation_func": ...}: a pickle, as the WebUI reads).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.models.attention_processor import Attention
from safetensors.torch import save_file
from torch import nn

from ..io import read_safetensors, staged_file
from .trainable import Trainable

SAFETENSORS_FILE = "hypernetwork.safetensors"
ACTIVATIONS = {"linear": None, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU, "swish": nn.Hardswish,
               "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def parse_structure(text: str) -> list[float]:
    """'1,2,1' -> [1.0, 2.0, 1.0]: widths as multiples of d; the first and last must be 1 (the residual)."""
    try:
        structure = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--layer-structure {text!r}: give comma-separated width factors such as 1,2,1.") from None
    if len(structure) < 2 or structure[0] != 1 or structure[-1] != 1 or min(structure) <= 0:
        raise ValueError(f"--layer-structure {text!r}: it must start and end with 1 and hold positive factors, e.g. 1,2,1.")
    return structure


class HypernetworkModule(nn.Module):
    """c -> c + MLP(c), the residual MLP of one path (K or V)."""

    def __init__(self, dim: int, structure: list[float], activation: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(len(structure) - 1):
            linear = nn.Linear(int(dim * structure[i]), int(dim * structure[i + 1]))
            nn.init.normal_(linear.weight, std=0.01)
            nn.init.zeros_(linear.bias)
            layers.append(linear)
            if ACTIVATIONS[activation] is not None and i < len(structure) - 2:  # no activation on the output
                layers.append(ACTIVATIONS[activation]())
        self.linear = nn.Sequential(*layers)  # the WebUI's state-dict names: linear.0.weight, ...
        self.strength = 1.0

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        mlp = self.linear(c.to(self.linear[0].weight.dtype))  # the MLP in its own precision (float32 while it trains)
        return c + (self.strength * mlp).to(c.dtype)  # c + MLP(c)


class Hypernetwork(nn.Module):
    """The (MLP_k, MLP_v) pair of every width it serves."""

    def __init__(self, widths: list[int], structure: list[float], activation: str = "relu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"Unknown --activation {activation!r}: choose one of {', '.join(ACTIVATIONS)}.")
        self.structure, self.activation = structure, activation
        self.pairs = nn.ModuleDict({str(d): nn.ModuleList([HypernetworkModule(d, structure, activation) for _ in "kv"]) for d in widths})

    def set_strength(self, strength: float) -> None:
        """Scale every MLP's output (the WebUI's hypernetwork strength; 1 = as trained)."""
        for module in self.modules():
            if isinstance(module, HypernetworkModule):
                module.strength = strength


class ContextTransform(nn.Module):
    """A K or V projection with the hypernetwork's MLP in front: W (c + MLP(c))."""

    def __init__(self, projection: nn.Linear, mlp: HypernetworkModule) -> None:
        super().__init__()
        self.projection, self.mlp = projection, mlp

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.projection(self.mlp(c))


def cross_attention_width(unet) -> int:
    width = unet.config.cross_attention_dim
    return width[0] if isinstance(width, (list, tuple)) else int(width)


def attach(unet, hypernetwork: Hypernetwork) -> int:
    """Put the hypernetwork in front of the K and V projections of every attention layer whose K/V input
    width it serves; returns the number of layers. `detach` undoes it exactly."""
    if getattr(unet, "_hypernetwork", None) is not None:
        raise ValueError("This UNet already has a hypernetwork: detach it first (sdtune.methods.hypernetwork.detach).")
    count = 0
    for module in unet.modules():
        if isinstance(module, Attention) and str(module.to_k.in_features) in hypernetwork.pairs:
            mlp_k, mlp_v = hypernetwork.pairs[str(module.to_k.in_features)]
            module.to_k, module.to_v = ContextTransform(module.to_k, mlp_k), ContextTransform(module.to_v, mlp_v)
            count += 1
    if count == 0:
        raise ValueError(f"No attention layer of this UNet takes inputs {', '.join(hypernetwork.pairs)} wide: "
                         "the hypernetwork was made for another base model.")
    unet._hypernetwork = hypernetwork
    return count


def detach(unet) -> None:
    """Give every K and V projection back its original layer."""
    for module in unet.modules():
        if isinstance(module, Attention) and isinstance(module.to_k, ContextTransform):
            module.to_k, module.to_v = module.to_k.projection, module.to_v.projection
    unet._hypernetwork = None


def save_hypernetwork(hypernetwork: Hypernetwork, folder: Path, name: str, steps: int) -> list[Path]:
    """Write `hypernetwork.safetensors` and the WebUI's `<name>.pt`, each atomically."""
    structure = ",".join(f"{x:g}" for x in hypernetwork.structure)
    tensors = {f"{d}.{path}.{k}": v.detach().float().cpu().contiguous()
               for d, pair in hypernetwork.pairs.items() for path, m in zip("kv", pair) for k, v in m.state_dict().items()}
    written = [folder / SAFETENSORS_FILE, folder / f"{name}.pt"]
    with staged_file(written[0]) as tmp:
        save_file(tensors, str(tmp), metadata={"layer_structure": structure, "activation_func": hypernetwork.activation,
                                               "name": name, "step": str(steps)})
    webui = {int(d): [{k: v.detach().float().cpu() for k, v in m.state_dict().items()} for m in pair]
             for d, pair in hypernetwork.pairs.items()}
    webui |= {"layer_structure": hypernetwork.structure, "activation_func": hypernetwork.activation, "is_layer_norm": False,
              "weight_initialization": "Normal", "use_dropout": False, "dropout_structure": [0.0] * len(hypernetwork.structure),
              "activate_output": False, "last_layer_dropout": False, "name": name, "step": steps}
    with staged_file(written[1]) as tmp:
        torch.save(webui, tmp)
    return written


def load_hypernetwork(unet, path: str | Path, strength: float = 1.0) -> Hypernetwork:
    """Read `hypernetwork.safetensors` (or a folder holding it) and attach it to `unet`."""
    path = Path(path)
    if path.is_dir():
        if not (path / SAFETENSORS_FILE).is_file():
            raise ValueError(f"{path} holds no {SAFETENSORS_FILE}: pass a hypernetwork training folder or the file itself.")
        path = path / SAFETENSORS_FILE
    tensors, meta = read_safetensors(path, "hypernetwork")
    if "layer_structure" not in meta:
        raise ValueError(f"{path} is not an sdtune hypernetwork file (no layer_structure in its header).")
    widths = sorted({int(k.split(".")[0]) for k in tensors})
    hypernetwork = Hypernetwork(widths, parse_structure(meta["layer_structure"]), meta.get("activation_func", "relu"))
    state = {f"pairs.{d}.{'kv'.index(p)}.{rest}": v for k, v in tensors.items() for d, p, rest in [k.split(".", 2)]}
    hypernetwork.load_state_dict(state)
    hypernetwork.to(unet.device, unet.dtype)
    hypernetwork.set_strength(strength)
    attach(unet, hypernetwork)
    return hypernetwork


class HypernetworkTraining(Trainable):
    """A new hypernetwork in front of the UNet's K and V projections, trained, saved for diffusers and the WebUI."""

    def attach(self, pipe, copy_weights: bool):
        cfg, unet = self.cfg, pipe.unet
        self.network = Hypernetwork([cross_attention_width(unet)], parse_structure(cfg.layer_structure), cfg.activation).to(unet.device)
        attach(unet, self.network)
        self.unet, self.text_encoders = unet, []
        return pipe

    def save(self, pipe, folder: Path, name: str, resolution: int) -> None:
        save_hypernetwork(self.network, folder, name, self.cfg.steps)

    def detach(self, pipe) -> None:
        detach(pipe.unet)
