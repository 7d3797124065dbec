"""Chapter 01's experiments over several training seeds: what one LoRA teaches, at what strength, and what it does on a
fine-tune of its base model (Q16).

    python benchmarks/lora_basics.py [--seeds 0,1,2] [--threads 1] [--work DIR] [--out FILE]

Per training seed (the chapter runs seed 0 live and reads this file beside it):

- **a style**: a rank-4 attention LoRA (chapter 01's recipe, every option given) on 24 *dotted* toy images, judged on
  24 held-out dotted prompts before training, after it, and at half strength (the adapter's scale 0.5);
- **a fine-tune of the base**: every UNet weight trained on 24 images of *checkerboard* backgrounds (a concept the
  base model never drew), for each length in FINETUNE_STEPS. The dotted LoRA, trained on the base model, is then
  loaded into the fine-tune as it is: its B A is added to the fine-tune's weights instead of the base's. Judged on 24
  prompts that ask for both ("a dotted red circle on a checkerboard background"): the base model with the LoRA, the
  fine-tune alone, and the fine-tune with the LoRA; and the fine-tune with the LoRA on the 24 dotted prompts with plain
  backgrounds (beside "after", the base model with the LoRA on them), which separates the weights' change from the
  checkerboard the fine-tune draws under the dots. How far each fine-tune moved is recorded as the relative change
  of its UNet weights, ||W_ft - W|| / ||W||.

Images are sampled with 15 DDIM steps at guidance 4, sampling seed 0, so every condition sees the same starting noise:
outcomes are paired image by image. Rates are k/n pooled over seeds with Wilson 95% intervals; a difference between
two conditions is the mean of the per-seed differences with a t-interval over seeds (`sdtune.evaluation.stats`).
Each seed's outcomes are cached in --work (a rerun skips finished seeds), and so are its trained runs. The results file records the command, the
commit, the machine and the sha256 of the tiny model and the judge.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "lora_basics_cpu.json"

# Every option given, so the recipe means the same whatever the trainer's defaults become (the tiny model's `train lora`
# default is a LoCon-style LoRA on t < 600; chapter 01 teaches the classic one: attention only, every timestep).
LORA = dict(adapter="lora", targets="attn", rank=4, alpha=4.0, steps=200, batch_size=8, lr=1e-3, max_timestep=1000,
            min_timestep=0, lr_scheduler="constant", warmup_steps=0, max_grad_norm=0.0)
FINETUNE = dict(adapter="full", batch_size=8, lr=1e-4, max_timestep=1000, min_timestep=0, lr_scheduler="constant",
                warmup_steps=0, max_grad_norm=0.0)
FINETUNE_STEPS = (20, 60)  # the chapter trains the longer one live
IMAGES, HELD_OUT, SAMPLE_STEPS = 24, 24, 15
HALF_SCALE = 0.5
ATTRIBUTES = ("style", "shape", "colour", "background")


def scenes() -> dict[str, list]:
    """The training and evaluation scenes: the chapter builds the same ones."""
    from sdtune.data import toyworld
    from sdtune.models.toy_loras import concept_scenes

    both = [dataclasses.replace(s, style="dotted") for s in concept_scenes("background", "checkerboard", HELD_OUT, seed=100)]
    return {"dotted_train": toyworld.sample_scenes(IMAGES, seed=1, styles=["dotted"]),
            "checkerboard_train": concept_scenes("background", "checkerboard", IMAGES, seed=3),
            "dotted_test": toyworld.sample_scenes(HELD_OUT, seed=100, styles=["dotted"]),
            "both_test": both}


def outcomes(judge, images, scenes_: list) -> dict[str, list[bool]]:
    """Per attribute, whether the judge names each image's attribute as its scene has it."""
    seen = judge.predict(images)
    return {a: [p == getattr(s, a) for p, s in zip(seen[a], scenes_)] for a in ATTRIBUTES}


@torch.no_grad()
def relative_change(finetuned, base) -> float:
    """||W_ft - W|| / ||W|| over every UNet weight."""
    num = sum((a.float() - b.float()).pow(2).sum() for a, b in zip(finetuned.parameters(), base.parameters()))
    den = sum(b.float().pow(2).sum() for b in base.parameters())
    return float((num / den).sqrt())


def trained(config, pipe) -> Path:
    """Train, or reuse the run already in the output folder (its loss log is written last)."""
    from sdtune.training import train

    out = Path(config.out)
    return out if (out / "loss.json").is_file() else train(config, pipe=pipe)


def run_seed(seed: int, work: Path, judge) -> dict:
    import sdtune
    from sdtune.data import toyworld
    from sdtune.formats.adapters import remove_adapter, set_adapter_scale
    from sdtune.training import TrainConfig

    s = scenes()
    folders = {k: work / f"data-{k}" for k in ("dotted_train", "checkerboard_train")}
    for k, folder in folders.items():
        if not folder.is_dir():
            toyworld.write_dataset(s[k], folder)
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)

    def judged(p, key: str) -> dict[str, list[bool]]:
        images = sdtune.sample(p, [toyworld.caption(x) for x in s[key]], num_inference_steps=SAMPLE_STEPS, seed=0)
        return outcomes(judge, images, s[key])

    result: dict = {"before": judged(pipe, "dotted_test"), "both: base": judged(pipe, "both_test")}
    start = time.perf_counter()
    lora = trained(TrainConfig(data=str(folders["dotted_train"]), out=str(work / "runs" / f"lora-seed{seed}"), seed=seed,
                               overwrite=True, **LORA), pipe)
    result["lora_train_s"] = time.perf_counter() - start
    sdtune.load_adapter(pipe, lora, "dotted")
    result["after"] = judged(pipe, "dotted_test")
    result["both: base + LoRA"] = judged(pipe, "both_test")
    set_adapter_scale(pipe, "dotted", HALF_SCALE)
    result[f"scale {HALF_SCALE}"] = judged(pipe, "dotted_test")
    remove_adapter(pipe, "dotted")
    result["finetune_change"] = {}
    for steps in FINETUNE_STEPS:
        out = trained(TrainConfig(data=str(folders["checkerboard_train"]), out=str(work / "runs" / f"ft{steps}-seed{seed}"),
                                  steps=steps, seed=seed, overwrite=True, **FINETUNE), pipe)
        finetuned = sdtune.load_pipeline(str(out))
        finetuned.set_progress_bar_config(disable=True)
        result["finetune_change"][str(steps)] = relative_change(finetuned.unet, pipe.unet)
        result[f"both: fine-tune {steps}"] = judged(finetuned, "both_test")
        sdtune.load_adapter(finetuned, lora, "dotted")
        result[f"both: fine-tune {steps} + LoRA"] = judged(finetuned, "both_test")
        result[f"fine-tune {steps} + LoRA"] = judged(finetuned, "dotted_test")
    return result


def summarise(runs: dict[int, dict]) -> dict:
    """Per condition and attribute: k/n pooled over seeds with its interval, and each seed's rate."""
    from sdtune.evaluation.stats import Rate

    seeds = sorted(runs)
    conditions = [k for k, v in runs[seeds[0]].items() if isinstance(v, dict) and "style" in v]
    return {c: {a: {"pooled": Rate.of(sum((runs[s][c][a] for s in seeds), [])),
                    "per_seed": {str(s): Rate.of(runs[s][c][a]) for s in seeds}} for a in ATTRIBUTES}
            for c in conditions}


DIFFERENCES = [  # (condition a, condition b, attribute): each claim the chapter makes, paired by training seed
    ("after", "before", "style"), ("after", "before", "shape"), ("after", "before", "colour"),
    (f"scale {HALF_SCALE}", "before", "style"), ("after", f"scale {HALF_SCALE}", "style"),
    *[(f"both: fine-tune {n} + LoRA", "both: base + LoRA", "style") for n in FINETUNE_STEPS],
    *[(f"fine-tune {n} + LoRA", "after", "style") for n in FINETUNE_STEPS],
    *[(f"both: fine-tune {n} + LoRA", f"both: fine-tune {n}", "background") for n in FINETUNE_STEPS],
    *[(f"both: fine-tune {n} + LoRA", f"both: fine-tune {n}", "shape") for n in FINETUNE_STEPS],
]


def differences(runs: dict[int, dict]) -> list[dict]:
    from sdtune.evaluation.stats import Rate, seed_difference

    seeds = sorted(runs)
    return [seed_difference([Rate.of(runs[s][a][attr]) for s in seeds], [Rate.of(runs[s][b][attr]) for s in seeds],
                            f"{a} ({attr})", f"{b} ({attr})").as_dict() | {"attribute": attr, "a_condition": a, "b_condition": b}
            for a, b, attr in DIFFERENCES]


def main() -> None:
    from sdtune.evaluation.provenance import study_arguments, study_setup
    from sdtune.io import write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    study_arguments(parser, "lora-basics", RESULTS)
    args = parser.parse_args()
    seeds, work = study_setup(parser, args)

    from sdtune.evaluation.judge import load_judge
    from sdtune.evaluation.provenance import JUDGE_WEIGHTS, TINY_SD, write_results

    judge = load_judge(sure=args.judge_sure)
    runs = {}
    for seed in seeds:
        cache = work / f"seed{seed}.json"
        if cache.is_file():
            runs[seed] = json.loads(cache.read_text())
            continue
        print(f"{time.strftime('%H:%M:%S')} seed {seed} ...", flush=True)
        runs[seed] = run_seed(seed, work, judge)
        write_json(cache, runs[seed])
    summary = summarise(runs)
    diffs = differences(runs)
    for condition, rates in summary.items():
        print(f"{condition:<28} " + "  ".join(f"{a} {rates[a]['pooled']}" for a in ATTRIBUTES))
    for d in diffs:
        print(d["verdict"])
    write_results(args.out, {
        "judge_sure": args.judge_sure,
        "settings": {"seeds": seeds, "threads": args.threads, "lora": LORA, "finetune": FINETUNE, "finetune_steps": FINETUNE_STEPS,
                     "training_images": IMAGES, "held_out_prompts": HELD_OUT, "sample_steps": SAMPLE_STEPS, "guidance": 4.0,
                     "half_scale": HALF_SCALE},
        "conditions": summary,
        "differences": diffs,
        "finetune_change": {n: {str(s): runs[s]["finetune_change"][str(n)] for s in seeds} for n in FINETUNE_STEPS},
        "lora_train_s": {str(s): round(runs[s]["lora_train_s"], 1) for s in seeds},
        "outcomes": {str(s): {k: v for k, v in runs[s].items() if isinstance(v, dict) and "style" in v} for s in seeds},
    }, weights=[TINY_SD, JUDGE_WEIGHTS], overwrite=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
