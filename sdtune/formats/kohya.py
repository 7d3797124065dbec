"""The kohya-ss / A1111 WebUI / ComfyUI layout of an adapter file.

One flat safetensors file. Each adapted layer is named by its component prefix and its module path with
"." replaced by "_":

    unet  down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q
      ->  lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q
    text encoder (SD 1.x/2.x) text_model.encoder.layers.0.self_attn.q_proj
      ->  lora_te_text_model_encoder_layers_0_self_attn_q_proj        (SDXL: lora_te1_ / lora_te2_)

and carries its tensors under that name, with `alpha` beside them (scale = alpha / rank):

| kind | peft tensor | kohya tensor |
|---|---|---|
| LoRA, LoCon | lora_A.weight, lora_B.weight | lora_down.weight, lora_up.weight |
| DoRA | + lora_magnitude_vector (out,); a conv: (1, out, 1, 1) | + dora_scale (out, 1[, 1, 1]) |
| LoHa | hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b | the same names |
| LoKr | lokr_w1[_a, _b], lokr_w2[_a, _b] | the same names |

One convention differs: when neither LoKr factor is decomposed, LyCORIS and the WebUI ignore alpha (scale 1),
while peft still scales by alpha / r; the export folds that scale into W2 and the import sets it back.
SDXL UNets in kohya files made by sd-scripts use the original (SGM) block names; `pipe.load_lora_weights`
converts those for LoRA.
"""

from __future__ import annotations

import json

import torch

PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te", "text_encoder_2": "lora_te2"}
SDXL_TE_PREFIX = "lora_te1"  # the first text encoder of SDXL

TENSOR_NAMES = {  # peft suffix -> kohya suffix
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora_magnitude_vector": "dora_scale",
    **{k: k for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")},
    **{k: k for k in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")},
}
PEFT_NAMES = {v: k for k, v in TENSOR_NAMES.items()}


def kind_of(tensor_names: set[str]) -> str:
    """The adapter kind from a layer's tensor names (peft or kohya suffixes)."""
    if any(n.startswith("hada_") for n in tensor_names):
        return "loha"
    if any(n.startswith("lokr_") for n in tensor_names):
        return "lokr"
    if tensor_names & {"lora_magnitude_vector", "dora_scale"}:
        return "dora"
    if tensor_names & {"lora_A.weight", "lora_down.weight"}:
        return "lora"
    raise ValueError(f"Unrecognised adapter tensors {sorted(tensor_names)}: not a LoRA, DoRA, LoHa or LoKr layer.")


def split_peft_key(key: str) -> tuple[str, str]:
    """'down_blocks.0.attn1.to_q.lora_A.weight' -> ('down_blocks.0.attn1.to_q', 'lora_A.weight')."""
    for suffix in TENSOR_NAMES:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    raise ValueError(f"Unrecognised adapter tensor {key!r}.")


def kohya_layer_name(prefix: str, module_path: str) -> str:
    """kohya's name of a layer. Text-encoder names always start `text_model_` (transformers 4's CLIPTextModel
    layout, which transformers 5 flattened), so files stay interchangeable across versions."""
    if prefix.startswith("lora_te") and not module_path.startswith("text_model."):
        module_path = "text_model." + module_path
    return f"{prefix}_{module_path.replace('.', '_')}"


def rank_of(tensors: dict[str, torch.Tensor]) -> int:
    """The rank r that alpha / r refers to, from a layer's (kohya-named) tensors."""
    for name in ("lora_down.weight", "hada_w1_b", "lokr_w2_b", "lokr_w1_b"):
        if name in tensors:
            return tensors[name].shape[0]
    return 0  # LoKr with both factors full: alpha is not used


def dora_scale_to_peft(layer: dict[str, torch.Tensor]) -> torch.Tensor:
    """A layer's `dora_scale` (out, 1[, 1, 1]) in peft's layout, the inverse of the reshape in `layers_to_kohya`:
    (out,) for a linear layer, (1, out, 1, 1) for a conv."""
    scale = layer["dora_scale"].flatten()
    return scale.reshape(1, -1, 1, 1) if layer["lora_up.weight"].dim() == 4 else scale


def layers_to_kohya(prefix: str, layers: dict[str, dict[str, torch.Tensor]], alphas: dict[str, float]) -> dict[str, torch.Tensor]:
    """peft layers {module path: {peft suffix: tensor}} of one component -> kohya tensors."""
    out: dict[str, torch.Tensor] = {}
    for path, tensors in layers.items():
        name = kohya_layer_name(prefix, path)
        converted = {TENSOR_NAMES[k]: v.detach().float().contiguous() for k, v in tensors.items()}
        if "dora_scale" in converted:
            up = converted["lora_up.weight"]
            converted["dora_scale"] = converted["dora_scale"].reshape((-1,) + (1,) * (up.dim() - 1))
        rank = rank_of(converted)
        if rank == 0:  # full LoKr factors: fold peft's alpha / r into W2, as readers will use scale 1
            converted["lokr_w2"] = converted["lokr_w2"] * alphas[path]
            alpha = 1.0
        else:
            alpha = alphas[path] * rank  # alphas holds the scale alpha / r
        out.update({f"{name}.{k}": v for k, v in converted.items()})
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def group_kohya_layers(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Flat kohya tensors -> {layer name: {tensor suffix: tensor}}."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, suffix = key.partition(".")
        layers.setdefault(name, {})[suffix] = value
    return layers


def kohya_metadata(kind: str, rank: int, alpha: float, base_model: str, extra: dict | None = None,
                   lokr_factor: int = -1) -> dict[str, str]:
    """The `ss_*` header fields kohya's sd-scripts write and the WebUI shows."""
    lycoris = kind in ("loha", "lokr")
    args = {"algo": kind} if lycoris else {}
    if kind in ("locon", "loha", "lokr"):
        args.update(conv_dim=str(rank), conv_alpha=str(alpha))
    if kind == "lokr":
        args["factor"] = str(lokr_factor)
    if kind == "dora":
        args["dora_wd"] = "true"
    meta = {
        "ss_network_module": "lycoris.kohya" if lycoris else "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_network_args": json.dumps(args),
        "ss_base_model_version": base_model,
        "sdtune_adapter": kind,
    }
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta
