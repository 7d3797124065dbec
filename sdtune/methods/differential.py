"""Differential LoRA (Q30): a LoRA that holds only what differs between two renderings of the same images.

Train LoRA A on images A (say blurred) and LoRA B on the same scenes rendered as B (sharp), with the same
captions. Each learns the scenes plus its rendering; their difference keeps only the rendering:

    dW_diff = dW_B - dW_A = g_B B_B A_B - g_A B_A A_A          (g = alpha / r)
            = [g_B B_B, -g_A B_A] [A_B; A_A]                   exactly a LoRA of rank r_A + r_B

(never subtract the factors themselves: see `sdtune.algebra`). It can be compressed by SVD to a lower
rank, with the error reported. Applied to the base model it moves any image from A's look toward B's, with
no trigger word, while what the captions describe stays. The "copier" variant gets the difference by
training: fuse LoRA A into the model (so the model already draws the scenes as A), then train LoRA B on top
of it; B alone then holds what is left, the difference.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..algebra import combine, fuse, unfuse
from ..data.folder import IMAGE_EXTENSIONS, DatasetError
from ..formats.adapters import inject, kohya_to_peft, load_adapter, remove_adapter, save_adapter
from ..formats.kohya import adapter_metadata, group_kohya_layers, targets_of
from ..io import check_output_folder, read_safetensors, staged_folder

DIFFERENCE = "difference"


def check_pairs(folder_a: str | Path, folder_b: str | Path) -> list[str]:
    """The image names two pair folders share; an image without its partner is an error naming it."""
    names = [{p.stem for p in Path(f).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS} if Path(f).is_dir() else set()
             for f in (folder_a, folder_b)]
    if not names[0] or not names[1]:
        raise DatasetError(f"Pair folders {folder_a} and {folder_b} must both hold images (A and B renderings of the same scenes).")
    alone = sorted(names[0] ^ names[1])
    if alone:
        raise DatasetError(f"Images without a partner in the other pair folder: {', '.join(alone[:5])}. "
                           "Each image of A needs the same-name image in B.")
    return sorted(names[0])


def difference_tensors(lora_a: str | Path, lora_b: str | Path, rank: int | None = None) -> tuple[dict, dict[str, float]]:
    """B - A in the kohya layout: exact (rank r_A + r_B) or SVD-compressed to `rank`; plus per-layer relative errors."""
    a, _ = read_safetensors(lora_a, "LoRA file")
    b, _ = read_safetensors(lora_b, "LoRA file")
    return combine([b, a], [1.0, -1.0], "svd" if rank else "cat", rank=rank)


def train_differential(pipe, cfg, folder_a: str | Path, folder_b: str | Path, copier: bool = False, rank: int | None = None) -> Path:
    """Train LoRA A and LoRA B (same `cfg`, a `TrainConfig` whose `out` is the result folder) and write the
    difference LoRA to `cfg.out` in both layouts, with `difference.json` (ranks, errors). `copier=True`: train B
    on the model with A fused in, and B alone is the difference."""
    from ..training import train

    check_pairs(folder_a, folder_b)
    inputs = {"--data-a": folder_a, "--data-b": folder_b}
    out = check_output_folder(cfg.out, cfg.overwrite, inputs=inputs)
    work = out.with_name(out.name + "-parts")
    check_output_folder(work, cfg.overwrite, inputs=inputs)
    lora_a = train(replace(cfg, data=str(folder_a), out=str(work / "A")), pipe=pipe)
    if copier:
        load_adapter(pipe, lora_a / "A.safetensors", "A")
        saved = fuse(pipe, "A")
        try:
            lora_b = train(replace(cfg, data=str(folder_b), out=str(work / "B")), pipe=pipe)
        finally:
            unfuse(pipe, "A", saved)
            remove_adapter(pipe, "A")
        tensors, _ = read_safetensors(lora_b / "B.safetensors", "LoRA file")
        errors = {}
    else:
        lora_b = train(replace(cfg, data=str(folder_b), out=str(work / "B")), pipe=pipe)
        tensors, errors = difference_tensors(lora_a / "A.safetensors", lora_b / "B.safetensors", rank)
    inject(pipe, kohya_to_peft(pipe, tensors), DIFFERENCE)
    try:
        with staged_folder(out) as tmp:
            final_rank = next(v.shape[0] for k, v in tensors.items() if k.endswith("lora_down.weight"))
            targets = targets_of(group_kohya_layers(tensors))
            meta = adapter_metadata(pipe, "locon" if targets == "attn-mlp-conv" else "lora", final_rank, float(final_rank), targets,
                                    extra={"ss_training_comment": f"differential LoRA: {Path(folder_b).name} - {Path(folder_a).name}"})
            save_adapter(pipe, tmp, DIFFERENCE, "lora", out.name, meta)
            report = {"method": "copier" if copier else ("svd" if rank else "exact"), "rank": final_rank,
                      "max_relative_error": max(errors.values(), default=0.0), "parts": str(work)}
            (tmp / "difference.json").write_text(json.dumps(report, indent=1))
    finally:
        remove_adapter(pipe, DIFFERENCE)
    return out
