"""SD 1.5 and SDXL at their real resolution on a GPU: LoRA training memory and speed, sampling, merged LoRA, composition.

    python benchmarks/gpu_real_resolution.py --out results.json [--no-sdxl] [--small]

No weights can be downloaded where this runs, so the pipelines are built here with random weights in the exact
architectures of SD 1.5 (the 860M-parameter UNet, CLIP ViT-L/14's text encoder, the SD VAE) and SDXL (the 2.6B UNet,
both text encoders): time and memory depend on the architecture and the resolution, not on the weights' values.
The tokenizer is the tiny model's, padded to CLIP's 77 tokens. Everything then goes through sdtune's own code path
(`load_pipeline(folder)`, `train(TrainConfig(model=folder, ...))`, `compose`), as it would for a hub checkpoint.
`--small` shrinks every width and the resolution: a CPU check of this script, not a benchmark.

Targets from the issues: SD 1.5 LoRA training at 512 px, batch 1, fp16 + gradient checkpointing, peak GPU memory
<= 8 GB (it/s reported); composite with 3 LoRAs in one batched UNet call vs the sequential n-pass reference.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer

import sdtune
from composite_speed import sequential_composite  # the reference n-pass composite, beside this script
from sdtune.composition import compose
from sdtune.data import toyworld
from sdtune.formats.adapters import add_adapter, remove_adapter
from sdtune.models.architectures import random_pipeline
from sdtune.training import TrainConfig, train

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
GB = 1e9


def build(kind: str, folder: Path, small: bool) -> dict:
    """Write a random-weight pipeline of `kind` ('sd15' or 'sdxl') in fp16 to `folder`; return its parameter counts."""
    pipe = random_pipeline(kind, small)
    counts = {f"{name}_parameters": sum(p.numel() for p in module.parameters())
              for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
    pipe.to(torch.float16 if CUDA else torch.float32).save_pretrained(folder)
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    del pipe
    free()
    return counts | {"resolution": resolution}


def free() -> None:
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / GB if CUDA else float("nan")


def synced() -> float:
    if CUDA:
        torch.cuda.synchronize()
    return time.perf_counter()


def train_case(model: Path, data: Path, out: Path, adapter: str, batch: int, checkpointing: bool, precision: str, steps: int) -> dict:
    """One sdtune training run; it/s over the loop (its first, warm-up step included), peak GPU memory over the whole
    run (model loading included)."""
    free()
    cfg = TrainConfig(data=str(data), out=str(out), model=str(model), adapter=adapter, rank=4, steps=steps, batch_size=batch,
                      mixed_precision=precision if CUDA else "no", gradient_checkpointing=checkpointing, seed=0, overwrite=True)
    start = synced()
    train(cfg)
    seconds = json.loads((out / "loss.json").read_text())["seconds_this_session"]
    return {"adapter": adapter, "batch": batch, "gradient_checkpointing": checkpointing, "precision": precision, "steps": steps,
            "it_per_s": round(steps / seconds, 2), "peak_gb": round(peak_gb(), 2), "wall_s": round(synced() - start, 1)}


def seconds_per_image(pipe, steps: int, repeats: int, **extra) -> tuple[float, torch.Tensor]:
    run = lambda: pipe("a red circle on a white background", num_inference_steps=steps, guidance_scale=7.5, output_type="pt",
                       generator=torch.Generator(DEVICE).manual_seed(0), **extra).images
    run()  # warm-up
    start = synced()
    for _ in range(repeats):
        images = run()
    return (synced() - start) / repeats, images


def merge_adapter(unet, name: str) -> None:
    """peft's merge: W <- W + (alpha / r) B A in place; a merged layer's forward is the base layer's alone."""
    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge(adapter_names=[name])


def sampling_cases(model: Path, lora_dir: Path, steps: int, repeats: int) -> dict:
    """Base, with one LoRA, with it merged; then 3 LoRAs by merge, switch, composite (batched and sequential)."""
    free()
    pipe = sdtune.load_pipeline(str(model))
    pipe.set_progress_bar_config(disable=True)
    results = {}
    with torch.no_grad():
        results["base_s_per_image"], base = seconds_per_image(pipe, steps, repeats)
        results["base_peak_gb"] = round(peak_gb(), 2)
        sdtune.load_adapter(pipe, lora_dir, "trained")
        results["lora_s_per_image"], with_lora = seconds_per_image(pipe, steps, repeats)
        merge_adapter(pipe.unet, "trained")
        results["lora_merged_s_per_image"], merged = seconds_per_image(pipe, steps, repeats)
        results["merged_vs_unmerged_max_abs_diff"] = float((merged.float() - with_lora.float()).abs().max())
        remove_adapter(pipe, "trained")
        names = ["subject", "style", "background"]
        for i, name in enumerate(names):  # rank-8 LoRAs on attention + MLP; random weights: speed does not care
            torch.manual_seed(i)
            add_adapter(pipe.unet, LoraConfig(r=8, init_lora_weights=False, target_modules=[
                "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]), name)
        for method in ("merge", "switch", "composite"):
            free()
            with compose(pipe, names, method) as extra:
                results[f"{method}_3_loras_s_per_image"], _ = seconds_per_image(pipe, steps, repeats, **extra)
            results[f"{method}_3_loras_peak_gb"] = round(peak_gb(), 2)
        results["composite_sequential_3_loras_s_per_image"] = sequential_seconds(pipe, names, steps, repeats)
    for key, value in results.items():
        results[key] = round(value, 4) if isinstance(value, float) else value
    results["composite_batched_over_sequential"] = round(
        results["composite_3_loras_s_per_image"] / results["composite_sequential_3_loras_s_per_image"], 3)
    del pipe
    free()
    return results


def sequential_seconds(pipe, names: list[str], steps: int, repeats: int) -> float:
    """Time of the reference composite (composite_speed.py's n UNet passes per step) per image."""
    pipe.unet.forward = sequential_composite(pipe, names)
    try:
        seconds, _ = seconds_per_image(pipe, steps, repeats)
    finally:
        del pipe.unet.forward
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gpu_results.json", help="JSON file the figures are written to (after each stage).")
    parser.add_argument("--no-sdxl", action="store_true", help="Only SD 1.5.")
    parser.add_argument("--small", action="store_true", help="Shrunken models: check the script on a CPU.")
    parser.add_argument("--steps", type=int, default=30, help="Training steps per case.")
    parser.add_argument("--repeats", type=int, default=2, help="Timed sampling runs per setting (after one warm-up).")
    args = parser.parse_args()
    if not CUDA and not args.small:
        raise SystemExit("This benchmark needs a CUDA GPU (SD 1.5 at 512 px); on a CPU run it with --small to check the script.")
    results: dict = {"device": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__}
    out = Path(args.out)

    def record(key: str, value) -> None:
        results[key] = value
        out.write_text(json.dumps(results, indent=1))
        print(key, json.dumps(value), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = toyworld.write_dataset(toyworld.sample_scenes(8, seed=1, styles=["striped"]), tmp / "data")
        for kind in ("sd15",) if args.no_sdxl else ("sd15", "sdxl"):
            start = synced()
            record(f"{kind}_model", build(kind, tmp / kind, args.small) | {"build_s": round(synced() - start, 1)})
            cases = [("lora", 1, True, "fp16"), ("lora", 1, False, "fp16"), ("lora", 4, True, "fp16"), ("full", 1, True, "fp16"),
                     ("full", 1, True, "bf16")] if kind == "sd15" else [("lora", 1, True, "fp16"), ("lora", 1, False, "fp16")]
            for adapter, batch, checkpointing, precision in cases:
                name = f"{kind}_train_{adapter}_batch{batch}_{'gc' if checkpointing else 'nogc'}_{precision}"
                steps = args.steps if adapter != "full" else max(args.steps // 3, 2)
                try:
                    record(name, train_case(tmp / kind, data, tmp / f"{name}_out", adapter, batch, checkpointing, precision, steps))
                except Exception as error:  # a failing case is recorded; the next one still runs
                    record(name, f"{type(error).__name__}: {error}")
            lora = tmp / f"{kind}_train_lora_batch1_gc_fp16_out"
            record(f"{kind}_sampling_25_steps", sampling_cases(tmp / kind, lora, 25, args.repeats))
            shutil.rmtree(tmp / kind)


if __name__ == "__main__":
    main()
