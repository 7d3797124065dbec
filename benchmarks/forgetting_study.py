"""Does LoRA forget less than full fine-tuning when both have learned the new concept equally well? (chapter 02, Q12)

    python benchmarks/forgetting_study.py [--arms LoRA,full] [--seeds 0,1,2] [--work DIR] [--threads 1]

Biderman et al. 2024 (*LoRA Learns Less and Forgets Less*, arXiv 2405.09673) find that LoRA keeps more of the base
model's abilities than full fine-tuning, and that the two "seem to occupy the same Pareto curve" of learning against
forgetting: LoRA forgets less mostly because it learns less. So forgetting means something only at matched learning.

The run: each arm (a method and a learning rate) learns the novel *dotted* style from the 24 images chapter 02 uses
(`toyworld.sample_scenes(24, seed=1, styles=["dotted"])`), batch 8, every timestep, constant learning rate, no
clipping, training seeds 0, 1, 2. It is measured after 25, 50, 100 and 150 steps (one run, resumed from its own
checkpoint: a resumed run ends where an uninterrupted one would), so each seed gives a learning-forgetting curve:

- **learning**: 32 held-out dotted prompts (other scenes, `seed=100`): does the judge see dots?
- **forgetting**, on the 72 base prompts (`toyworld.base_prompts()`, which never name a style): is the prompted
  shape, colour and background still drawn ("content kept": all three right), and is the image still *flat*
  ("still flat": the style has not leaked into prompts that do not ask for it)?

Images: 15 DDIM steps, guidance 4 (the tiny model's sampling default), sampling seed 0, the same for every arm, so
the base model's images are the reference for every run. Rates are k/n pooled over seeds with Wilson 95% intervals;
differences between arms are the mean of the per-seed differences with a t-interval over seeds
(`sdtune.evaluation.stats.seed_difference`). "Matched learning": for each pair of arms, the two checkpoints whose
mean learning over seeds is closest (the arms' learning rates were chosen so that their curves overlap); both the
learning and the forgetting differences are reported there, paired by seed.

Every run is cached in `--work` (per-image outcomes at every checkpoint), so a rerun only adds what is missing. The
results file records the command, the commit, the machine and the sha256 of the tiny model and the judge.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path


BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results" / "forgetting_study_cpu.json"

STYLE, TRAIN_IMAGES, TRAIN_SEED = "dotted", 24, 1  # the chapter's training folder
HELD_OUT, HELD_OUT_SEED = 32, 100  # learning: dotted prompts no training image shows
CHECKPOINTS = (25, 50, 100, 150)  # optimizer steps at which each run is measured
SAMPLING = {"num_inference_steps": 15, "guidance_scale": 4.0, "seed": 0}
COMMON = {"batch_size": 8, "max_timestep": 1000, "min_timestep": 0, "lr_scheduler": "constant", "warmup_steps": 0,
          "max_grad_norm": 0.0, "train_text_encoder": False}
# an arm: a method and its learning rate. LoRA on attention, MLPs and convolutions, rank 8, is the tiny model's
# `train lora` default (sdtune.defaults); "LoRA attn r4" is the diffusers examples' choice of layers, at a small rank.
ARMS = {
    "LoRA": COMMON | {"adapter": "lora", "rank": 8, "targets": "attn-mlp-conv", "lr": 1e-3},
    "full": COMMON | {"adapter": "full", "lr": 1e-4},
    "LoRA attn r4": COMMON | {"adapter": "lora", "rank": 4, "targets": "attn", "lr": 1e-3},
}
MEASURES = ("learned", "content kept", "still flat")


def prompts() -> tuple[list, list]:
    from sdtune.data import toyworld

    return toyworld.sample_scenes(HELD_OUT, seed=HELD_OUT_SEED, styles=[STYLE]), toyworld.base_prompts()


def outcomes(pipe, judge) -> dict[str, list[bool]]:
    """Per image: the held-out dotted prompts (learned), then the base prompts (content kept, still flat)."""
    import sdtune
    from sdtune.data import toyworld

    held_out, base = prompts()
    images = sdtune.sample(pipe, [toyworld.caption(s) for s in held_out + base], batch_size=len(held_out) + len(base), **SAMPLING)
    seen = judge.predict(images)
    n = len(held_out)
    return {
        "learned": [p == STYLE for p in seen["style"][:n]],
        "content kept": [all(seen[a][n + i] == getattr(s, a) for a in ("shape", "colour", "background")) for i, s in enumerate(base)],
        "still flat": [p == "flat" for p in seen["style"][n:]],
    }


def measure_run(pipe, judge, out: Path, kind: str) -> dict[str, list[bool]]:
    """The outcomes of the model trained into `out`: the LoRA loaded into `pipe`, or the full fine-tune's UNet."""
    import sdtune
    from diffusers import UNet2DConditionModel
    from sdtune.formats.adapters import remove_adapter

    if kind == "full":
        full = type(pipe).from_pipe(pipe, unet=UNet2DConditionModel.from_pretrained(out / "unet").eval())
        full.set_progress_bar_config(disable=True)
        return outcomes(full, judge)
    sdtune.load_adapter(pipe, out / "pytorch_lora_weights.safetensors", "study")
    try:
        return outcomes(pipe, judge)
    finally:
        remove_adapter(pipe, "study")


def run_arm(pipe, judge, arm: str, seed: int, work: Path) -> dict:
    """One training run, measured at every checkpoint; cached in `work` as JSON (per-image outcomes)."""
    from sdtune.data import toyworld
    from sdtune.io import write_json
    from sdtune.training import TrainConfig, train

    recipe = ARMS[arm]
    path = work / f"{''.join(c if c.isalnum() else '-' for c in arm)}-lr{recipe['lr']:g}-seed{seed}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached["recipe"] == recipe and [int(k) for k in cached["steps"]] == list(CHECKPOINTS):
            return cached | {"reused": True}
    data = work / "data"
    if not data.is_dir():
        toyworld.write_dataset(toyworld.sample_scenes(TRAIN_IMAGES, seed=TRAIN_SEED, styles=[STYLE]), data)
    result = {"recipe": recipe, "seed": seed, "steps": {}, "train_s": 0.0}
    run_start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        out = Path(tmp) / "run"
        for i, steps in enumerate(CHECKPOINTS):
            start = time.perf_counter()
            train(TrainConfig(data=str(data), out=str(out), seed=seed, steps=steps, checkpoint_every=CHECKPOINTS[-1],
                              resume=i > 0, **recipe), pipe=pipe)
            result["train_s"] += time.perf_counter() - start
            result["steps"][str(steps)] = measure_run(pipe, judge, out, recipe["adapter"])
            rates = {m: sum(v) / len(v) for m, v in result["steps"][str(steps)].items()}
            print(f"  {time.strftime('%H:%M:%S')} {arm} seed {seed} step {steps}: "
                  + "  ".join(f"{m} {100 * r:.0f}%" for m, r in rates.items()), flush=True)
    result["run_s"] = round(time.perf_counter() - run_start, 1)  # training and measuring, every checkpoint
    result["load_average"] = os.getloadavg()[0]
    write_json(path, result)
    return result


def summarise(runs: dict[int, dict]) -> dict:
    """Per checkpoint and measure: k/n pooled over seeds with its interval, each seed's rate, and the mean over seeds."""
    from sdtune.evaluation.stats import Rate

    seeds = sorted(runs)
    table = {}
    for steps in map(str, CHECKPOINTS):
        table[steps] = {}
        for m in MEASURES:
            per_seed = {str(s): Rate.of(runs[s]["steps"][steps][m]) for s in seeds}
            table[steps][m] = {"pooled": Rate.of(sum((runs[s]["steps"][steps][m] for s in seeds), [])), "per_seed": per_seed,
                               "mean": sum(r.value for r in per_seed.values()) / len(seeds)}
    return {"train_s": {str(s): round(runs[s]["train_s"], 1) for s in seeds},
            "run_s": {str(s): runs[s].get("run_s") for s in seeds},
            "load_average": {str(s): round(runs[s]["load_average"], 1) for s in seeds}, "steps": table}


def matched(name_a: str, a: dict, name_b: str, b: dict, runs_a: dict, runs_b: dict) -> dict:
    """The checkpoints of arms a and b whose mean learning is closest, and the paired seed differences there."""
    from sdtune.evaluation.stats import Rate, seed_difference

    step_a, step_b = min(((sa, sb) for sa in a["steps"] for sb in b["steps"]),
                         key=lambda p: (abs(a["steps"][p[0]]["learned"]["mean"] - b["steps"][p[1]]["learned"]["mean"]),
                                        -a["steps"][p[0]]["learned"]["mean"]))
    seeds = sorted(set(runs_a) & set(runs_b))
    return {"a": name_a, "b": name_b, "steps_a": int(step_a), "steps_b": int(step_b),
            "differences": {m: seed_difference([Rate.of(runs_a[s]["steps"][step_a][m]) for s in seeds],
                                               [Rate.of(runs_b[s]["steps"][step_b][m]) for s in seeds],
                                               f"{name_a} ({step_a} steps)", f"{name_b} ({step_b} steps)")
                            for m in MEASURES}}


def same_steps(name_a: str, name_b: str, runs_a: dict, runs_b: dict) -> dict:
    """At every checkpoint, a - b paired by seed (learning and forgetting after the same training)."""
    from sdtune.evaluation.stats import Rate, seed_difference

    seeds = sorted(set(runs_a) & set(runs_b))
    return {str(k): {m: seed_difference([Rate.of(runs_a[s]["steps"][str(k)][m]) for s in seeds],
                                        [Rate.of(runs_b[s]["steps"][str(k)][m]) for s in seeds], name_a, name_b)
                     for m in MEASURES} for k in CHECKPOINTS}


def main() -> None:
    from sdtune.evaluation.provenance import JUDGE_WEIGHTS, TINY_SD, start_tiny_study, study_parser, write_results

    parser = study_parser(__doc__, "forgetting-study", RESULTS)
    parser.add_argument("--arms", default="LoRA,full", help=f"comma-separated, from: {', '.join(ARMS)}")
    args = parser.parse_args()
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"--arms: unknown {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    study = start_tiny_study(parser, args, min_seeds=2)  # differences are paired by seed; the study's claims use 3
    seeds, work, pipe, judge = study.seeds, study.work, study.pipe, study.judge
    start = time.perf_counter()
    base = outcomes(pipe, judge)
    runs = {arm: {s: run_arm(pipe, judge, arm, s, work) for s in seeds} for arm in arms}

    from sdtune.evaluation.stats import Rate

    results = {
        "settings": {"style": STYLE, "training_images": TRAIN_IMAGES, "held_out_prompts": HELD_OUT, "base_prompts": 72,
                     "checkpoints": CHECKPOINTS, "sampling": SAMPLING, "seeds": seeds, "threads": args.threads,
                     "arms": {a: ARMS[a] for a in arms}},
        "base model": {m: Rate.of(v) for m, v in base.items()},
        "arms": {arm: summarise(runs[arm]) for arm in arms},
    }
    results["matched"] = [matched(a, results["arms"][a], b, results["arms"][b], runs[a], runs[b])
                          for i, a in enumerate(arms) for b in arms[i + 1:]]
    results["same_steps"] = {f"{a} vs {b}": same_steps(a, b, runs[a], runs[b]) for i, a in enumerate(arms) for b in arms[i + 1:]}
    results["wall_s"] = round(time.perf_counter() - start, 1)  # this invocation; runs found in --work were not redone
    results["runs_reused"] = [f"{a} seed {s}" for a in arms for s in seeds if runs[a][s].get("reused")]
    report(results)
    write_results(args.out, {"judge_sure": args.judge_sure} | results, weights=[TINY_SD, JUDGE_WEIGHTS], overwrite=True)
    print(f"wrote {args.out}")


def report(results: dict) -> None:
    print("base model: " + "  ".join(f"{m} {r}" for m, r in results["base model"].items()))
    for arm, s in results["arms"].items():
        for steps, row in s["steps"].items():
            print(f"{arm:<14} {steps:>4} steps  " + "  ".join(f"{m} {row[m]['pooled']}" for m in MEASURES))
    for m in results["matched"]:
        print(f"matched learning: {m['a']} at {m['steps_a']} steps, {m['b']} at {m['steps_b']} steps")
        for measure, d in m["differences"].items():
            print(f"  {measure}: {d}")


if __name__ == "__main__":
    main()
