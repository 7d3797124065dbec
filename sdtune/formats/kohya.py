"""The kohya-ss / A1111 WebUI / ComfyUI layout of an adapter file.

One flat safetensors file. Each adapted layer is named by its component prefix and its module path with
"." replaced by "_":

    unet  down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q
      ->  lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q
    text encoder (SD 1.x/2.x) text_model.encoder.layers.0.self_attn.q_proj
      ->  lora_te_text_model_encoder_layers_0_self_attn_q_proj        (SDXL: lora_te1_ / lora_te2_)

and carries its tensors under that name, with `alpha` beside them (scale = alpha / rank; a missing or zero alpha
means alpha = rank, scale 1, as sd-scripts and LyCORIS read it):

| kind | peft tensor | kohya tensor |
|---|---|---|
| LoRA, LoCon | lora_A.weight, lora_B.weight | lora_down.weight, lora_up.weight |
| DoRA | + lora_magnitude_vector (out,); a conv: (1, out, 1, 1) | + dora_scale (out, 1[, 1, 1]) |
| LoHa | hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b [, hada_t1, hada_t2] | the same names |
| LoKr | lokr_w1[_a, _b], lokr_w2[_a, _b] [, lokr_t2] | the same names |

The `_t` tensors are LyCORIS's Tucker cores of a k x k convolution (its `use_tucker`, peft's
`use_effective_conv2d`). DoRA's magnitude is one number per output row (LyCORIS's default `wd_on_output`);
LyCORIS's older per-input layout (1, in[, 1, 1]) has no peft counterpart and is refused. When neither LoKr factor is
decomposed, LyCORIS and the WebUI ignore alpha (scale 1), while peft still scales by alpha / r; the export folds
that scale into W2 and the import sets it back.

SDXL files made by sd-scripts name the UNet's layers after the original (SGM) code, which numbers blocks instead
of naming them: `input_blocks.4.1` is down_blocks.1.attentions.0, a resnet's `in_layers.2` is its conv1.
`sgm_names` derives those names from the UNet's own block structure, so both spellings load.

The header carries sd-scripts' `ss_*` fields (`adapter_metadata`), as sd-scripts writes them: LoRA and LoCon under
`networks.lora`, DoRA, LoHa and LoKr under `lycoris.kohya` with LyCORIS's `algo`, `preset` and `factor`.
"""

from __future__ import annotations

import json

import torch

from ..methods import DEFAULT_TARGETS, TARGET_PRESETS

PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te", "text_encoder_2": "lora_te2"}
SDXL_TE_PREFIX = "lora_te1"  # the first text encoder of SDXL

TUCKER_NAMES = ("hada_t1", "hada_t2", "lokr_t2")
TENSOR_NAMES = {  # peft suffix -> kohya suffix
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora_magnitude_vector": "dora_scale",
    **{k: k for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")},
    **{k: k for k in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")},
}
PEFT_NAMES = {v: k for k, v in TENSOR_NAMES.items()}
KIND_TENSORS = {  # the kohya tensors a layer of each kind may hold, besides alpha
    "lora": {"lora_down.weight", "lora_up.weight"},
    "dora": {"lora_down.weight", "lora_up.weight", "dora_scale"},
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"},
    "lokr": {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"},
}

# sdtune's target presets -> LyCORIS's preset of the same layers. LyCORIS's "full" also adapts each resnet's
# time_emb_proj, conv_in, conv_out and the time embedding, which attn-mlp-conv leaves out: it is the nearest.
LYCORIS_PRESETS = {"attn": "attn-only", "attn-mlp": "attn-mlp", "attn-mlp-conv": "full"}


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


def check_layer(name: str, layer: dict[str, torch.Tensor]) -> str:
    """A kohya layer's kind, after checking that sdtune reads every tensor it holds; one clear ValueError otherwise."""
    names = set(layer) - {"alpha"}
    if "lora_mid.weight" in names:
        raise ValueError(f"{name} is a LoCon layer with a Tucker core (lora_mid, LyCORIS's use_tucker), which peft has no "
                         "layer for: merge it into the model with LyCORIS or ComfyUI, or retrain without use_tucker.")
    kind = kind_of(names)
    if "dora_scale" in names and kind != "dora":
        raise ValueError(f"{name} is a {kind} layer with a DoRA magnitude (dora_scale, LyCORIS's dora_wd on {kind}), which "
                         "peft has no layer for: sdtune loads DoRA on LoRA/LoCon layers only.")
    unknown = names - KIND_TENSORS[kind]
    if unknown:
        raise ValueError(f"{name} holds tensors sdtune does not read ({', '.join(sorted(unknown))}) beside its {kind} tensors: "
                         "the file comes from a LyCORIS algorithm or option sdtune does not support.")
    return kind


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


def alpha_of(tensors: dict[str, torch.Tensor], rank: int) -> float:
    """A layer's alpha as sd-scripts and LyCORIS read it: missing or 0 means alpha = rank (scale 1)."""
    alpha = float(tensors["alpha"]) if "alpha" in tensors else 0.0
    return alpha if alpha > 0 else float(rank)


def dora_scale_to_peft(name: str, layer: dict[str, torch.Tensor]) -> torch.Tensor:
    """A layer's `dora_scale` (out, 1[, 1, 1]) in peft's layout, the inverse of the reshape in `layers_to_kohya`:
    (out,) for a linear layer, (1, out, 1, 1) for a conv. The axis is read from the shape, as ComfyUI does: a
    magnitude per input column (LyCORIS with wd_on_output=False: (1, in[, 1, 1])) is refused, since peft's DoRA
    normalises per output row and a square layer would otherwise load it silently wrong."""
    scale, up = layer["dora_scale"], layer["lora_up.weight"]
    out = up.shape[0]
    if scale.shape[0] != out or scale.numel() != out:
        raise ValueError(f"{name}: its DoRA magnitude (dora_scale) has shape {tuple(scale.shape)}, one number per input column "
                         f"(LyCORIS's wd_on_output=False); peft's DoRA, which sdtune loads it through, keeps one per output row "
                         f"({out}). Retrain with LyCORIS's default wd_on_output=True.")
    return scale.reshape(1, -1, 1, 1) if up.dim() == 4 else scale.flatten()


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


# ------------------------------------------------------------------------------------------------
# SDXL's original (SGM) layer names
# ------------------------------------------------------------------------------------------------

RESNET_SGM_NAMES = {"conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def sgm_blocks(unet: torch.nn.Module) -> dict[str, str]:
    """diffusers block path -> the original code's, from the UNet's own structure. The original numbers its blocks:
    input_blocks.0 is conv_in, then each down block's (resnet, attention) pairs and its downsampler each take the next
    number; middle_block is resnet, attention, resnet; output_blocks number each up block's pairs, with the
    upsampler inside the last one (after the attention if there is one)."""
    blocks = {"conv_in": "input_blocks.0.0", "conv_out": "out.2", "time_embedding.linear_1": "time_embed.0",
              "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
    index = 1
    for b, block in enumerate(unet.down_blocks):
        for i in range(len(block.resnets)):
            blocks[f"down_blocks.{b}.resnets.{i}"] = f"input_blocks.{index}.0"
            if getattr(block, "attentions", None):
                blocks[f"down_blocks.{b}.attentions.{i}"] = f"input_blocks.{index}.1"
            index += 1
        if block.downsamplers:
            blocks[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
            index += 1
    if unet.mid_block is not None:
        for i in range(len(unet.mid_block.resnets)):
            blocks[f"mid_block.resnets.{i}"] = f"middle_block.{2 * i}"
        for i in range(len(getattr(unet.mid_block, "attentions", None) or [])):
            blocks[f"mid_block.attentions.{i}"] = f"middle_block.{2 * i + 1}"
    index = 0
    for b, block in enumerate(unet.up_blocks):
        attention = bool(getattr(block, "attentions", None))
        for i in range(len(block.resnets)):
            blocks[f"up_blocks.{b}.resnets.{i}"] = f"output_blocks.{index}.0"
            if attention:
                blocks[f"up_blocks.{b}.attentions.{i}"] = f"output_blocks.{index}.1"
            index += 1
        if block.upsamplers:
            blocks[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks.{index - 1}.{2 if attention else 1}.conv"
    return blocks


def sgm_names(unet: torch.nn.Module) -> dict[str, str]:
    """Every UNet module path that has an original (SGM) name -> that name; inside a resnet the layers are renamed
    too (conv1 -> in_layers.2, time_emb_proj -> emb_layers.1, conv2 -> out_layers.3, conv_shortcut -> skip_connection)."""
    blocks = sgm_blocks(unet)
    names = {}
    for path, _ in unet.named_modules():
        block = next((b for b in blocks if path == b or path.startswith(b + ".")), None)
        if block is None:
            continue
        rest = path[len(block) + 1:]
        if ".resnets." in block and rest:
            first, _, tail = rest.partition(".")
            rest = ".".join(filter(None, [RESNET_SGM_NAMES.get(first, first), tail]))
        names[path] = ".".join(filter(None, [blocks[block], rest]))
    return names


# ------------------------------------------------------------------------------------------------
# The header
# ------------------------------------------------------------------------------------------------

def base_model_version(pipe) -> str:
    """sd-scripts' `ss_base_model_version`: sd_v1 or sd_v2, with "_v" for a v-prediction model, or sdxl_base_v1-0
    (sd-scripts' one SDXL version string); sdtune's tiny model (and any other UNet) is "sdtune_tiny", "_v" likewise.
    SD 1.x and 2.x are told apart by the text encoder's width (768: CLIP ViT-L, 1024: OpenCLIP ViT-H)."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl_base_v1-0"
    family = {768: "sd_v1", 1024: "sd_v2"}.get(pipe.unet.config.cross_attention_dim, "sdtune_tiny")
    v_prediction = pipe.scheduler.config.get("prediction_type") == "v_prediction"
    return family + ("_v" if v_prediction else "")


def targets_of(layer_names) -> str:
    """The narrowest target preset (attn, attn-mlp, attn-mlp-conv) whose layers include every given kohya layer name;
    attn-mlp-conv, the widest, for layers outside all three."""
    names = list(layer_names)
    for preset, suffixes in TARGET_PRESETS.items():
        ends = tuple("_" + s.replace(".", "_") for s in suffixes["unet"] + suffixes["text_encoder"])
        if all(name.endswith(ends) for name in names):
            return preset
    return "attn-mlp-conv"


def kohya_metadata(kind: str, rank: int, alpha: float, base_model: str, extra: dict | None = None,
                   lokr_factor: int = -1, targets: str | None = None, tucker: bool = False) -> dict[str, str]:
    """The `ss_*` header fields, as sd-scripts writes them (and the WebUI and LyCORIS read them).

    LoRA and LoCon: `networks.lora` (sd-scripts' own loader), `conv_dim`/`conv_alpha` when convolutions are adapted.
    DoRA, LoHa, LoKr: `lycoris.kohya` with LyCORIS's `algo` and `preset` (which layers it builds when it re-creates the
    network from the header), `dora_wd` for DoRA (sd-scripts' loader has no dora_scale and would drop the magnitudes),
    `factor` for LoKr, `use_tucker` for Tucker convolutions. `targets` is sdtune's preset; default: the kind's default.
    `ss_v2` is "True" for SD 2.x (the WebUI sorts LoRAs by it)."""
    targets = targets or DEFAULT_TARGETS[kind]
    convolutions = {"conv_dim": str(rank), "conv_alpha": str(alpha)} if targets == "attn-mlp-conv" else {}
    if kind in ("lora", "locon"):
        module, args = "networks.lora", dict(convolutions)
    else:
        algo = kind if kind != "dora" else ("locon" if convolutions else "lora")
        module, args = "lycoris.kohya", {"algo": algo, "preset": LYCORIS_PRESETS[targets], **convolutions}
        if kind == "dora":
            args["dora_wd"] = "True"
        if kind == "lokr":
            args["factor"] = str(lokr_factor)
        if tucker:
            args["use_tucker"] = "True"
    meta = {
        "ss_network_module": module,
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_network_args": json.dumps(args),
        "ss_base_model_version": base_model,
        "ss_v2": str(base_model.startswith("sd_v2")),
        "sdtune_adapter": kind,
        "sdtune_targets": targets,
    }
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def adapter_metadata(pipe, kind: str, rank: int, alpha: float, targets: str | None = None, lokr_factor: int = -1,
                     extra: dict | None = None, tucker: bool = False) -> dict[str, str]:
    """The whole header of an adapter file for `pipe`'s base model: what training, `sdtune convert` and `sdtune merge`
    write. `targets` is sdtune's preset (attn, attn-mlp, attn-mlp-conv; `targets_of` finds it from a file's layers)."""
    return kohya_metadata(kind, rank, alpha, base_model_version(pipe), extra, lokr_factor, targets, tucker)
