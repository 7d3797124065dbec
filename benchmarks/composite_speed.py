"""LoRA composite: one batched UNet call for n LoRAs vs n sequential passes, and merge/switch for scale.

    python benchmarks/composite_speed.py

Target: composite with 3 LoRAs at batch 1 on the CPU in <= 0.6x the time of the sequential n-pass composite
(the reference: per step, activate each LoRA in turn, run the UNet, average). Both give the same images (checked).
Printed beside them: merge and switch (one pass per step) and the base model without LoRAs.
"""

import time

import numpy as np
import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from peft import LoraConfig

import sdtune
from sdtune.composition import compose
from sdtune.formats.adapters import add_adapter

TARGET = 0.6
NAMES = ["subject", "style", "background"]
PROMPT = "a red circle on a white background"


def sequential_composite(pipe, names):
    """The reference: n UNet passes per step, one LoRA active in each, predictions averaged."""
    forward = pipe.unet.forward

    def composite(*args, return_dict: bool = True, **kwargs):
        outs = []
        for name in names:
            pipe.unet.set_adapters(name)
            outs.append(forward(*args, return_dict=False, **kwargs)[0])
        mean = torch.stack(outs).mean(0)
        return UNet2DConditionOutput(sample=mean) if return_dict else (mean,)

    return composite


def run(pipe, repeats: int, **extra) -> tuple[float, np.ndarray]:
    pipe(PROMPT, num_inference_steps=25, guidance_scale=4.0, output_type="np", **extra)  # warm-up
    start = time.perf_counter()
    for r in range(repeats):
        images = pipe(PROMPT, num_inference_steps=25, guidance_scale=4.0, output_type="np",
                      generator=torch.Generator().manual_seed(0), **extra).images
    return (time.perf_counter() - start) / repeats, images


def main() -> None:
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 25 DDIM steps, guidance 4, batch 1")
    base, _ = run(pipe, 5)
    for i, name in enumerate(NAMES):  # three rank-8 LoRAs on attention + MLP (random weights: speed does not care)
        torch.manual_seed(i)
        add_adapter(pipe.unet, LoraConfig(r=8, init_lora_weights=False, target_modules=[
            "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]), name)
    rows = [("base model, no LoRA", base)]
    with torch.no_grad():
        for method in ("merge", "switch"):
            with compose(pipe, NAMES, method) as extra:
                rows.append((f"{method} (3 LoRAs)", run(pipe, 5, **extra)[0]))
        with compose(pipe, NAMES, "composite"):
            batched, batched_images = run(pipe, 5)
        pipe.unet.forward = sequential_composite(pipe, NAMES)
        sequential, sequential_images = run(pipe, 5)
        del pipe.unet.forward
    rows += [("composite, sequential 3 passes (reference)", sequential), ("composite, one batched call (sdtune)", batched)]
    print(f"{'setting':<46} {'s/image':>8}")
    for name, seconds in rows:
        print(f"{name:<46} {seconds:8.3f}")
    ratio = batched / sequential
    print(f"batched / sequential: {ratio:.2f} (target <= {TARGET}: {'met' if ratio <= TARGET else 'MISSED'}); "
          f"max image difference {np.abs(batched_images - sequential_images).max():.1e}")


if __name__ == "__main__":
    main()
