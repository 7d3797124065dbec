"""Read, write and convert adapter files, and load any of them into a pipeline.

Two layouts exist in the wild (`kohya.py` describes the second):

- diffusers/peft: `pytorch_lora_weights.safetensors`, keys `unet.<module path>.lora_A.weight`, the LoraConfig
  (alpha included) in the header. `pipe.load_lora_weights(folder)` reads it. LoRA and DoRA only.
- kohya/A1111/ComfyUI: `lora_unet_<module_path>.lora_down.weight`, `alpha` per layer, `ss_*` metadata.
  LoRA, LoCon, DoRA, and LyCORIS's LoHa and LoKr (Tucker convolutions included), which diffusers refuses;
  SDXL files by sd-scripts name the UNet's layers as the original code does (`input_blocks_4_1_...`).

`load_adapter` reads both into a pipeline as a named, scalable, removable peft adapter.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import torch
from diffusers import ModelMixin
from diffusers.utils.peft_utils import recurse_remove_peft_layers
from peft import LoHaConfig, LoKrConfig, LoraConfig, PeftConfig, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from ..io import read_safetensors, staged_file
from ..models.loading import quiet_diffusers
from ..methods.lycoris import Split, lokr_factor_of, lokr_splits, lycoris_factorization, splits_of
from . import kohya

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"


class AdapterFileError(ValueError):
    """An adapter file that cannot be read or does not fit the model; the message says what to do."""


def components(pipe) -> dict[str, torch.nn.Module]:
    """The adaptable parts of a pipeline: unet, text_encoder and (SDXL) text_encoder_2."""
    names = ("unet", "text_encoder", "text_encoder_2")
    return {n: getattr(pipe, n) for n in names if getattr(pipe, n, None) is not None}


def kohya_prefixes(pipe) -> dict[str, str]:
    prefixes = dict(kohya.PREFIXES)
    if getattr(pipe, "text_encoder_2", None) is not None:
        prefixes["text_encoder"] = kohya.SDXL_TE_PREFIX
    return prefixes


# ------------------------------------------------------------------------------------------------
# Reading files safely
# ------------------------------------------------------------------------------------------------

def resolve_file(path: str | Path) -> Path:
    """A file, or a folder holding `pytorch_lora_weights.safetensors` or exactly one .safetensors file."""
    path = Path(path)
    if path.is_dir():
        if (path / DIFFUSERS_FILE).is_file():
            return path / DIFFUSERS_FILE
        files = sorted(path.glob("*.safetensors"))
        if not files and (path / "checkpoints").is_dir():
            raise AdapterFileError(f"{path} holds no finished adapter, only the checkpoints of a run that did not finish: continue "
                                   "it with the same `sdtune train` command and --resume, or pass another adapter.")
        if len(files) != 1:
            raise AdapterFileError(f"{path} holds {len(files)} .safetensors files: name the adapter file itself.")
        return files[0]
    if not path.is_file():
        raise AdapterFileError(f"{path}: no such adapter file or folder.")
    return path


def read_adapter_file(path: str | Path, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of an adapter file. Pickle files (.bin/.ckpt/.pt) are refused unless
    `allow_pickle`, since unpickling can run arbitrary code; even then only tensors are unpickled."""
    path = resolve_file(path)
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise AdapterFileError(
                f"{path} is a pickle file, which can run code when loaded. Use a .safetensors file, or if you "
                "trust its source pass allow_pickle=True (--allow-pickle)."
            )
        tensors = torch.load(path, map_location="cpu", weights_only=True)
        return dict(tensors.get("state_dict", tensors)), {}
    try:
        return read_safetensors(path, "adapter file")
    except ValueError as error:
        raise AdapterFileError(str(error)) from None


def layout_of(tensors: dict[str, torch.Tensor]) -> str:
    """'kohya' or 'diffusers', from the keys."""
    if tensors and all(k.startswith(("lora_unet_", "lora_te")) for k in tensors):
        return "kohya"
    if tensors and all(k.split(".")[0] in ("unet", "text_encoder", "text_encoder_2") for k in tensors):
        return "diffusers"
    example = next(iter(tensors), "<no tensors>")
    raise AdapterFileError(
        f"Unrecognised adapter keys (e.g. {example!r}): expected diffusers keys ('unet.…lora_A.weight') "
        "or kohya keys ('lora_unet_….lora_down.weight')."
    )


# ------------------------------------------------------------------------------------------------
# Adapters in a model <-> layers
# ------------------------------------------------------------------------------------------------

def adapter_layers(module: torch.nn.Module, adapter_name: str) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, float]]:
    """An adapter's tensors per layer {module path: {peft suffix: tensor}} and each layer's scale alpha / r."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in get_peft_model_state_dict(module, adapter_name=adapter_name).items():
        path, suffix = kohya.split_peft_key(key)
        layers.setdefault(path, {})[suffix] = value
    scales = {path: float(module.get_submodule(path).scaling[adapter_name]) for path in layers}
    return layers, scales


def has_adapter(module: torch.nn.Module, adapter_name: str) -> bool:
    return any(isinstance(m, BaseTunerLayer) and adapter_name in m.scaling for m in module.modules())


def add_adapter(module: torch.nn.Module, config: PeftConfig, adapter_name: str, lokr_split: Split = lycoris_factorization) -> None:
    """Add a peft adapter to a UNet (diffusers' `add_adapter`) or a text encoder (peft's injection, recorded in
    `peft_config` as transformers does, whose own `add_adapter` asks for a newer peft). LoKr layers split each width
    with `lokr_split`: LyCORIS's rule by default, so that the config's factor means LyCORIS's `factor`."""
    with lokr_splits(lokr_split) if isinstance(config, LoKrConfig) else nullcontext():
        if isinstance(module, ModelMixin):
            module.add_adapter(config, adapter_name=adapter_name)
            return
        inject_adapter_in_model(config, module, adapter_name=adapter_name)
    if not getattr(module, "_hf_peft_config_loaded", False):
        module.peft_config = {}
    module.peft_config[adapter_name] = config
    module._hf_peft_config_loaded = True


def remove_adapter(pipe, adapter_name: str) -> None:
    """Delete an adapter from every component that holds it; a component left without adapters gets its
    original layers back, so the pipeline is exactly as it was before the adapter came."""
    for module in components(pipe).values():
        if not has_adapter(module, adapter_name):
            continue
        for layer in module.modules():
            if isinstance(layer, BaseTunerLayer) and adapter_name in layer.scaling:
                layer.delete_adapter(adapter_name)
        configs = getattr(module, "peft_config", {})
        configs.pop(adapter_name, None)
        if not configs:
            recurse_remove_peft_layers(module)
            if "peft_config" in vars(module):
                del module.peft_config
            module._hf_peft_config_loaded = False


def set_adapter_scale(pipe, adapter_name: str, scale: float) -> None:
    """Multiply an adapter's update by `scale` (1 = as trained), as `pipe.set_adapters` does."""
    for module in components(pipe).values():
        for m in module.modules():
            if isinstance(m, BaseTunerLayer) and adapter_name in m.scaling:
                m.set_scale(adapter_name, scale)


def _peft_config(kind: str, ranks: dict[str, int], alphas: dict[str, float], decompose_both: bool = False,
                 lokr_factor: int = -1, tucker: bool = False) -> PeftConfig:
    """A peft config that rebuilds exactly these layers: per-layer rank and alpha as patterns; `tucker`: k x k
    convolutions with Tucker cores (LyCORIS's use_tucker, peft's use_effective_conv2d)."""
    r, alpha = Counter(ranks.values()).most_common(1)[0][0], Counter(alphas.values()).most_common(1)[0][0]
    common = dict(
        target_modules=list(ranks),
        rank_pattern={p: v for p, v in ranks.items() if v != r},
        alpha_pattern={p: v for p, v in alphas.items() if v != alpha},
    )
    if kind in ("lora", "dora"):
        return LoraConfig(r=r, lora_alpha=alpha, use_dora=kind == "dora", **common)
    if kind == "loha":
        return LoHaConfig(r=r, alpha=alpha, use_effective_conv2d=tucker, **common)
    return LoKrConfig(r=r, alpha=alpha, decompose_both=decompose_both, decompose_factor=lokr_factor, use_effective_conv2d=tucker, **common)


def _lokr_shapes(module: torch.nn.Module, layers: dict[str, dict[str, torch.Tensor]]) -> dict[str, tuple[int, int, int, int]]:
    """Each LoKr layer's (out, in) and its W1's (out1, in1), from `module` and the layers' tensors (W1 has the same
    name in both layouts)."""
    shapes = {}
    for path, layer in layers.items():
        base = module.get_submodule(path)
        if isinstance(base, BaseTunerLayer):  # the layer already holds another adapter
            base = base.get_base_layer()
        linear = isinstance(base, torch.nn.Linear)
        out, in_ = (base.out_features, base.in_features) if linear else (base.out_channels, base.in_channels // base.groups)
        w1 = tuple(layer["lokr_w1"].shape[:2]) if "lokr_w1" in layer else (layer["lokr_w1_a"].shape[0], layer["lokr_w1_b"].shape[1])
        shapes[path] = (out, in_, *w1)
    return shapes


def _file_split(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> Split:
    """The split of each width that gives every LoKr layer of `state` (a peft state dict) the W1 shape it has there:
    the file's own, whichever rule made it (LyCORIS's, or peft's, which sdtune used before it followed LyCORIS)."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        path, suffix = kohya.split_peft_key(key)
        layers.setdefault(path, {})[suffix] = value
    try:
        splits = splits_of(_lokr_shapes(module, layers))
    except ValueError as error:
        raise AdapterFileError(str(error)) from None
    return lambda dimension, factor: splits.get(dimension) or lycoris_factorization(dimension, factor)


def _layer_lookup(pipe) -> dict[str, tuple[str, str]]:
    """kohya layer name -> (component, module path), for every module of the pipeline; UNet layers under their
    original (SGM) names too, as sd-scripts writes SDXL files."""
    lookup = {}
    for component, prefix in kohya_prefixes(pipe).items():
        if component in components(pipe):
            module = components(pipe)[component]
            lookup.update({kohya.kohya_layer_name(prefix, path): (component, path) for path, _ in module.named_modules() if path})
            if component == "unet":
                lookup.update({kohya.kohya_layer_name(prefix, sgm): (component, path) for path, sgm in kohya.sgm_names(module).items()})
    return lookup


def kohya_to_peft(pipe, tensors: dict[str, torch.Tensor]) -> dict[str, tuple[PeftConfig, dict[str, torch.Tensor]]]:
    """kohya tensors -> {component: (peft config, peft state dict)}, layer names resolved against the model (SDXL's
    original names too). Every layer is checked first (`kohya.check_layer`, DoRA's magnitude axis): a tensor sdtune
    cannot place is one clear error, never a layer loaded without it."""
    lookup = _layer_lookup(pipe)
    grouped: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    kinds: dict[str, set[str]] = {}
    for name, layer in kohya.group_kohya_layers(tensors).items():
        if name not in lookup:
            raise AdapterFileError(f"Layer {name} of the file is not in this model: the file was made for another base model.")
        try:
            kind = kohya.check_layer(name, layer)
            if kind == "dora":  # peft's layout of the magnitude, once its axis is checked
                layer = {**layer, "dora_scale": kohya.dora_scale_to_peft(name, layer)}
        except ValueError as error:
            raise AdapterFileError(str(error)) from None
        component, path = lookup[name]
        grouped.setdefault(component, {})[path] = layer
        kinds.setdefault(component, set()).add(kind)

    result = {}
    for component, layers in grouped.items():
        if len(kinds[component]) != 1:
            raise AdapterFileError(f"The file mixes adapter kinds {sorted(kinds[component])} in the {component}; sdtune loads one kind per component.")
        kind = kinds[component].pop()
        ranks, alphas, state = {}, {}, {}
        for path, layer in layers.items():
            rank = kohya.rank_of(layer)
            alpha = kohya.alpha_of(layer, rank)
            if rank == 0:  # LoKr with both factors full: scale 1, and a rank large enough that peft keeps them full
                rank = max(layer["lokr_w2"].shape[:2])
                alpha = float(rank)
            ranks[path], alphas[path] = rank, alpha
            state.update({f"{path}.{kohya.PEFT_NAMES[suffix]}": value for suffix, value in layer.items() if suffix != "alpha"})
        tucker = any(core in layer for layer in layers.values() for core in kohya.TUCKER_NAMES)
        if kind == "lokr":
            decompose_both = any("lokr_w1_a" in layer for layer in layers.values())
            factor = lokr_factor_of(_lokr_shapes(components(pipe)[component], layers))
            config = _peft_config(kind, ranks, alphas, decompose_both, -1 if factor is None else factor, tucker)
        else:
            config = _peft_config(kind, ranks, alphas, tucker=tucker)
        result[component] = (config, state)
    return result


def inject(pipe, adapters: dict[str, tuple[PeftConfig, dict[str, torch.Tensor]]], adapter_name: str) -> None:
    """Add each component's adapter and its weights; a shape that does not fit is one clear error. LoKr layers are
    split as the weights are (`_file_split`)."""
    try:
        for component, (config, state) in adapters.items():
            module = components(pipe)[component]
            if isinstance(config, LoKrConfig):
                add_adapter(module, config, adapter_name, _file_split(module, state))
            else:
                add_adapter(module, config, adapter_name)
            expected = get_peft_model_state_dict(module, adapter_name=adapter_name)
            for key, value in state.items():
                if key not in expected:
                    raise AdapterFileError(f"The file's tensor {component}.{key} has no place in this model's {component}.")
                if expected[key].shape != value.shape:
                    raise AdapterFileError(
                        f"{component}.{key} has shape {tuple(value.shape)} in the file but {tuple(expected[key].shape)} "
                        "in this model: the adapter was trained for another base model."
                    )
            set_peft_model_state_dict(module, {k: v.to(expected[k].dtype) for k, v in state.items()}, adapter_name=adapter_name)
    except Exception:
        remove_adapter(pipe, adapter_name)
        raise


def check_diffusers_shapes(pipe, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """A diffusers-layout LoRA whose layers do not fit this model is one error naming the first misfit (diffusers would
    print one line per layer): lora_A is (r, in[, k, k]) and lora_B (out, r[, 1, 1]) of the layer they adapt."""
    misfits = []
    for key, value in tensors.items():
        component, _, rest = key.partition(".")
        if component not in components(pipe) or not rest.endswith((".lora_A.weight", ".lora_B.weight")):
            continue
        layer_path, which = rest.rsplit(".", 2)[0], rest.rsplit(".", 2)[1]
        try:
            layer = components(pipe)[component].get_submodule(layer_path)
        except AttributeError:
            misfits.append(f"{key} names no layer of this model's {component}")
            continue
        layer = layer.get_base_layer() if isinstance(layer, BaseTunerLayer) else layer
        wanted = (layer.in_features if isinstance(layer, torch.nn.Linear) else layer.in_channels // layer.groups) if which == "lora_A" \
            else (layer.out_features if isinstance(layer, torch.nn.Linear) else layer.out_channels)
        have = value.shape[1] if which == "lora_A" else value.shape[0]
        if have != wanted:
            shape = f"({value.shape[0]}, {wanted})" if which == "lora_A" else f"({wanted}, {value.shape[1]})"
            misfits.append(f"{key} has shape {tuple(value.shape[:2])} in the file, {shape} in this model")
    if misfits:
        raise AdapterFileError(f"{path} does not fit this model: {misfits[0]} ({len(misfits)} layer(s) in all). "
                               "Was it trained for another base model?")


def is_lycoris(path: str | Path) -> bool:
    """Whether an adapter file holds LoHa or LoKr layers (from its key names; no tensor is read)."""
    path = resolve_file(path)
    if path.suffix != ".safetensors":
        return False
    with safe_open(str(path), framework="pt") as f:
        return any(".hada_" in key or ".lokr_" in key for key in f.keys())


def load_adapters(pipe, paths: list[str | Path], allow_pickle: bool = False) -> list[str]:
    """Load several adapters as "lora0", "lora1", ... (in the order given). LoRA-family files go in before LoHa and LoKr
    ones: peft can wrap a convolution that holds a LoRA in a LoHa or LoKr, not the other way round."""
    order = sorted(range(len(paths)), key=lambda i: is_lycoris(paths[i]))
    for i in order:
        load_adapter(pipe, paths[i], f"lora{i}", allow_pickle=allow_pickle)
    return [f"lora{i}" for i in range(len(paths))]


def load_adapter(pipe, path: str | Path, adapter_name: str = "default", scale: float = 1.0, allow_pickle: bool = False) -> str:
    """Load a diffusers- or kohya-layout adapter (LoRA, LoCon, DoRA, LoHa, LoKr) into `pipe` as a peft adapter.

    Returns the adapter's name; `remove_adapter(pipe, name)` takes it out again, `set_adapter_scale` scales it.
    """
    if not adapter_name or any(f".{t}".startswith(f".{adapter_name}") for t in kohya.TENSOR_NAMES):
        raise AdapterFileError(f"Adapter name {adapter_name!r} clashes with peft's tensor names (lora_A, hada_w1_a, ...): choose another.")
    for module in components(pipe).values():
        if has_adapter(module, adapter_name):
            raise AdapterFileError(f"The pipeline already has an adapter named {adapter_name!r}: choose another name.")
    tensors, _ = read_adapter_file(path, allow_pickle)
    if layout_of(tensors) == "kohya":
        inject(pipe, kohya_to_peft(pipe, tensors), adapter_name)
    else:  # diffusers' own loader reads its layout, with the LoraConfig it keeps in the file's header
        check_diffusers_shapes(pipe, tensors, path)
        try:
            with quiet_diffusers():  # its own report of a mismatch is a line per layer; ours above is one
                pipe.load_lora_weights(str(resolve_file(path)), adapter_name=adapter_name)
        except (RuntimeError, ValueError, KeyError) as error:
            remove_adapter(pipe, adapter_name)
            raise AdapterFileError(
                f"{path} does not fit this model ({str(error).splitlines()[0][:300]}): was it trained for another base model?"
            ) from None
    if scale != 1.0:
        set_adapter_scale(pipe, adapter_name, scale)
    return adapter_name


# ------------------------------------------------------------------------------------------------
# Writing files
# ------------------------------------------------------------------------------------------------

def kohya_tensors(pipe, adapter_name: str) -> dict[str, torch.Tensor]:
    """Every component's adapter in the kohya layout."""
    tensors: dict[str, torch.Tensor] = {}
    for component, module in components(pipe).items():
        if has_adapter(module, adapter_name):
            layers, scales = adapter_layers(module, adapter_name)
            tensors.update(kohya.layers_to_kohya(kohya_prefixes(pipe)[component], layers, scales))
    return tensors


def write_kohya_file(pipe, adapter_name: str, path: Path, metadata: dict[str, str]) -> None:
    with staged_file(path) as tmp:
        save_file(kohya_tensors(pipe, adapter_name), str(tmp), metadata=metadata)


def write_diffusers_file(pipe, adapter_name: str, path: Path) -> None:
    """diffusers' own writer (`save_lora_weights`, with each component's LoraConfig in the header), then one rename."""
    layers, configs = {}, {}
    for component, module in components(pipe).items():
        if has_adapter(module, adapter_name):
            config = module.peft_config[adapter_name]
            if not isinstance(config, LoraConfig):
                raise AdapterFileError(
                    f"diffusers has no layout for {type(config).__name__.removesuffix('Config')}: the kohya/LyCORIS file "
                    "is its format (sdtune.formats.load_adapter and the WebUI/ComfyUI read it)."
                )
            layers[f"{component}_lora_layers"] = get_peft_model_state_dict(module, adapter_name=adapter_name)
            configs[f"{component}_lora_adapter_metadata"] = config.to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        type(pipe).save_lora_weights(tmp, **layers, **configs, safe_serialization=True)
        os.replace(Path(tmp) / DIFFUSERS_FILE, path)


def save_adapter(pipe, folder: str | Path, adapter_name: str, kind: str, kohya_name: str, metadata: dict[str, str]) -> list[Path]:
    """Write the adapter as `<kohya_name>.safetensors` (kohya/A1111/ComfyUI; LyCORIS keys for LoHa/LoKr) and,
    for LoRA-family kinds, `pytorch_lora_weights.safetensors` (diffusers). Each file is written atomically."""
    folder = Path(folder)
    written = [folder / f"{kohya_name}.safetensors"]
    write_kohya_file(pipe, adapter_name, written[0], metadata)
    if kind in ("lora", "locon", "dora"):
        written.append(folder / DIFFUSERS_FILE)
        write_diffusers_file(pipe, adapter_name, written[1])
    return written


def convert_file(pipe, src: str | Path, dst: str | Path, to: str, allow_pickle: bool = False) -> str:
    """Rewrite an adapter file in the other layout ('kohya' or 'diffusers'); `pipe` is its base model."""
    if to not in ("kohya", "diffusers"):
        raise ValueError(f"Unknown layout {to!r}: choose kohya or diffusers.")
    name = "sdtune_convert"
    load_adapter(pipe, src, adapter_name=name, allow_pickle=allow_pickle)
    try:
        if to == "diffusers":
            write_diffusers_file(pipe, name, Path(dst))
        else:
            config = next(m.peft_config[name] for m in components(pipe).values() if has_adapter(m, name))
            kind = {"LOHA": "loha", "LOKR": "lokr"}.get(str(config.peft_type).split(".")[-1], "dora" if getattr(config, "use_dora", False) else "lora")
            targets = kohya.targets_of(kohya.group_kohya_layers(kohya_tensors(pipe, name)))
            if kind == "lora" and targets == "attn-mlp-conv":
                kind = "locon"
            alpha = getattr(config, "lora_alpha", getattr(config, "alpha", config.r))
            meta = kohya.adapter_metadata(pipe, kind, config.r, alpha, targets, getattr(config, "decompose_factor", -1),
                                          {"ss_training_comment": f"converted by sdtune from {Path(src).name}"},
                                          getattr(config, "use_effective_conv2d", False))
            write_kohya_file(pipe, name, Path(dst), meta)
    finally:
        remove_adapter(pipe, name)
    return to
