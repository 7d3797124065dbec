"""LoRA composite: one batched UNet call for n LoRAs vs n sequential passes, and merge/switch for scale.

    python benchmarks/composite_speed.py [--rounds 3] [--out FILE]

Target: composite with 3 LoRAs at batch 1 on the CPU in <= 0.6x the time of the sequential n-pass composite
(the reference: per step, activate each LoRA in turn, run the UNet, average). Both give the same images (checked).
Timed beside them: merge and switch (one pass per step) and the base model without LoRAs. Every setting is timed once
per round, the settings in turn, so that the machine's drift between minutes hits all alike; the ratio is taken per
round, and the table gives the median of the rounds. The results file
(benchmarks/results/composite_speed_cpu.json) records the command, the commit, the machine and the sha256 of the
tiny model.
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from peft import LoraConfig

import sdtune
from sdtune.composition import compose
from sdtune.formats.adapters import add_adapter

RESULTS = Path(__file__).resolve().parent / "results" / "composite_speed_cpu.json"
TARGET = 0.6
REPEATS = 3  # images per setting and round
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
    """Seconds per image over `repeats` images of PROMPT (25 DDIM steps, guidance 4, batch 1), and the last image."""
    start = time.perf_counter()
    for r in range(repeats):
        images = pipe(PROMPT, num_inference_steps=25, guidance_scale=4.0, output_type="np",
                      generator=torch.Generator().manual_seed(0), **extra).images
    return (time.perf_counter() - start) / repeats, images


def one_round(base, pipe, repeats: int) -> tuple[dict[str, float], float]:
    """Every setting timed once: seconds per image, and the largest pixel difference between the two composites.
    `base`: the tiny pipeline without adapters; `pipe`: the same with the three LoRAs."""
    seconds = {}
    with torch.no_grad():
        seconds["base model, no LoRA"] = run(base, repeats)[0]
        for method in ("merge", "switch"):
            with compose(pipe, NAMES, method) as extra:
                seconds[f"{method} (3 LoRAs)"] = run(pipe, repeats, **extra)[0]
        pipe.unet.forward = sequential_composite(pipe, NAMES)
        seconds["composite, sequential 3 passes (reference)"], sequential_images = run(pipe, repeats)
        del pipe.unet.forward
        with compose(pipe, NAMES, "composite"):
            seconds["composite, one batched call (sdtune)"], batched_images = run(pipe, repeats)
    return seconds, float(np.abs(batched_images - sequential_images).max())


def main() -> None:
    from sdtune.evaluation.provenance import TINY_SD, write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, every setting timed once in each (default 3)")
    parser.add_argument("--out", default=str(RESULTS), help="results file (JSON)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: give at least 1")
    base, pipe = sdtune.load_pipeline("tiny"), sdtune.load_pipeline("tiny")
    for p in (base, pipe):
        p.set_progress_bar_config(disable=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 25 DDIM steps, guidance 4, batch 1")
    for i, name in enumerate(NAMES):  # three rank-8 LoRAs on attention + MLP (random weights: speed does not care)
        torch.manual_seed(i)
        add_adapter(pipe.unet, LoraConfig(r=8, init_lora_weights=False, target_modules=[
            "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]), name)
    one_round(base, pipe, 1)  # warm-up
    rounds = [one_round(base, pipe, REPEATS) for _ in range(args.rounds)]
    settings = list(rounds[0][0])
    median = {k: statistics.median(r[0][k] for r in rounds) for k in settings}
    ratios = [r[0]["composite, one batched call (sdtune)"] / r[0]["composite, sequential 3 passes (reference)"] for r in rounds]
    ratio = statistics.median(ratios)
    difference = max(r[1] for r in rounds)
    print(f"{'setting':<46} {'s/image, median':>16}  per round")
    for k in settings:
        print(f"{k:<46} {median[k]:16.3f}  " + ", ".join(f"{r[0][k]:.3f}" for r in rounds))
    print(f"batched / sequential: {ratio:.2f} (per round {', '.join(f'{x:.2f}' for x in ratios)}; target <= {TARGET}: "
          f"{'met' if max(ratios) <= TARGET else 'not met in every round'}); max image difference {difference:.1e}")
    write_results(args.out, {"settings": {"rounds": args.rounds, "images_per_setting_and_round": REPEATS, "steps": 25,
                                          "guidance": 4.0, "batch": 1, "loras": len(NAMES), "rank": 8,
                                          "threads": torch.get_num_threads()},
                             "seconds_per_image": {k: [r[0][k] for r in rounds] for k in settings},
                             "median_seconds_per_image": median, "ratio_per_round": ratios, "ratio_median": ratio,
                             "target": TARGET, "target_met_every_round": max(ratios) <= TARGET,
                             "max_image_difference": difference},
                  weights=[TINY_SD], overwrite=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
