"""Chapter 13's claims over three distillations: how many steps an LCM-LoRA saves, and whether a style LoRA beside it
keeps its style.

    python benchmarks/lcm_study.py [--seeds 0,1,2] [--threads 2] [--work DIR] [--out FILE]

The shipped toy LCM-LoRA is one distillation (training seed 0, `sdtune/models/toy_loras.py`). Here the same recipe
(`toy_loras.LCM`: 300 steps, learning rate 1e-4, rank 8, batch 8, on 144 base-world images of seed 5) is distilled
once per training seed, each measured as chapter 13 measures the shipped one:

- **steps**: the 24 prompts of the shipped LoRA's record (`toy_loras.LCM_PROMPTS`), sampled in one batch with seed 0;
  an image is right when the judge names its shape, colour and background. The LCM-LoRA (loaded unfused) with
  `LCMScheduler` at guidance 1, at 1, 2, 4 and 8 steps; the base model with DDIM at guidance 4, at 1, 2, 4, 8 and 25
  steps; `LCMScheduler` without the LoRA at 2 and 4 steps, at guidance 4 and at the LoRA's guidance 1 (is the gain
  in the weights, in the sampler, or in sampling without guidance?);
- **beside a style LoRA**: the shipped `dotted` LoRA (trained without the LCM-LoRA) on 24 held-out prompts that ask
  for a dotted shape (`concept_scenes("style", "dotted", 24, seed=100)`): the LCM-LoRA and the style LoRA together
  (merged, weights 1 and 1), `LCMScheduler`, guidance 1, 4 steps, against the style LoRA alone with DDIM at 4 and at
  25 steps. Measured: the judge sees dots; content (all three right).

The conditions without an LCM-LoRA do not depend on the training seed: they are measured once and stand beside every
seed. Rates are k/n pooled over seeds with Wilson 95% intervals; each difference the chapter states (`DIFFERENCES`) is
the mean of the per-seed differences with a t-interval over seeds (`sdtune.evaluation.stats`), "not resolved" when it
includes zero. Each seed is cached in --work (about 2.5 minutes a seed on 2 CPU threads). The results file records the
command, the commit, the machine and the sha256 of the tiny model, the judge and the dotted LoRA.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "lcm_study_cpu.json"
LCM_STEPS = (1, 2, 4, 8)
DDIM_STEPS = (1, 2, 4, 8, 25)
SCHEDULER_ONLY_STEPS = (2, 4)
STYLE_STEPS = 4
# (a, b, measure): each a condition, "LCM-LoRA <steps>" being the seed's own distillation; paired by training seed
DIFFERENCES = [
    ("LCM-LoRA 1", "base DDIM 1", "all"), ("LCM-LoRA 2", "base DDIM 2", "all"), ("LCM-LoRA 4", "base DDIM 4", "all"),
    ("LCM-LoRA 8", "base DDIM 8", "all"), ("LCM-LoRA 4", "base DDIM 25", "all"),
    ("LCM-LoRA 2", "LCMScheduler g4, no LoRA 2", "all"), ("LCM-LoRA 4", "LCMScheduler g4, no LoRA 4", "all"),
    ("LCM-LoRA 2", "LCMScheduler g1, no LoRA 2", "all"), ("LCM-LoRA 4", "LCMScheduler g1, no LoRA 4", "all"),
    ("LCM + dotted 4", "dotted alone, DDIM 25", "dots"), ("LCM + dotted 4", "dotted alone, DDIM 4", "dots"),
    ("LCM + dotted 4", "dotted alone, DDIM 25", "all"),
]


def evaluate(pipe, judge, scenes, steps: int, guidance: float) -> dict[str, list[bool]]:
    """Sample the scenes' captions in one batch (seed 0): per image, is each attribute right, all three, and dots?"""
    import sdtune
    from sdtune.data import toyworld
    from sdtune.evaluation.judge import as_asked

    images = sdtune.sample(pipe, [toyworld.caption(s) for s in scenes], steps, guidance, seed=0, batch_size=len(scenes))
    predicted = judge.predict(images)
    right = as_asked(predicted, scenes)  # shape, colour, background and all three
    right["dots"] = [p == "dotted" for p in predicted["style"]]
    return right


def style_scenes():
    from sdtune.models.toy_loras import concept_scenes

    return concept_scenes("style", "dotted", 24, seed=100)


def without_lcm(pipe, judge) -> dict[str, dict]:
    """The conditions no distillation changes: the base model (DDIM; LCMScheduler) and the dotted LoRA alone."""
    from diffusers import LCMScheduler

    from sdtune.formats.adapters import remove_adapter
    from sdtune.models.toy_loras import LCM_PROMPTS
    import sdtune

    ddim = pipe.scheduler
    out = {f"base DDIM {s}": evaluate(pipe, judge, LCM_PROMPTS, s, 4.0) for s in DDIM_STEPS}
    pipe.scheduler = LCMScheduler.from_config(ddim.config)
    try:
        out |= {f"LCMScheduler g{g:g}, no LoRA {s}": evaluate(pipe, judge, LCM_PROMPTS, s, g)
                for g in (4.0, 1.0) for s in SCHEDULER_ONLY_STEPS}
    finally:
        pipe.scheduler = ddim
    sdtune.load_adapter(pipe, dotted_file(), "dotted")
    try:
        out |= {f"dotted alone, DDIM {s}": evaluate(pipe, judge, style_scenes(), s, 4.0) for s in (STYLE_STEPS, 25)}
    finally:
        remove_adapter(pipe, "dotted")
    return out


def dotted_file() -> Path:
    from sdtune.evaluation.provenance import ASSETS

    return ASSETS / "loras" / "dotted.safetensors"


def run_seed(seed: int, work: Path, pipe, judge) -> tuple[dict, dict]:
    """Distil one LCM-LoRA with this training seed, then measure it alone and beside the dotted LoRA."""
    import time

    from diffusers import LCMScheduler

    import sdtune
    from sdtune.composition import compose
    from sdtune.data import toyworld
    from sdtune.formats.adapters import remove_adapter
    from sdtune.models.toy_loras import LCM, LCM_PROMPTS
    from sdtune.training import LCMConfig, train

    data = work / "data-lcm"
    if not data.is_dir():
        toyworld.write_dataset(toyworld.sample_scenes(144, seed=5), data)
    start = time.perf_counter()
    out = train(LCMConfig(data=str(data), out=str(work / "runs" / f"lcm-seed{seed}"), seed=seed, overwrite=True, **LCM), pipe=pipe)
    train_s = time.perf_counter() - start
    ddim = pipe.scheduler
    pipe.scheduler = LCMScheduler.from_config(ddim.config)
    sdtune.load_adapter(pipe, out / f"{out.name}.safetensors", "lcm")
    sdtune.load_adapter(pipe, dotted_file(), "dotted")
    try:
        with compose(pipe, ["lcm"], "merge"):
            outcomes = {f"LCM-LoRA {s}": evaluate(pipe, judge, LCM_PROMPTS, s, 1.0) for s in LCM_STEPS}
        with compose(pipe, ["lcm", "dotted"], "merge", [1.0, 1.0]):
            outcomes[f"LCM + dotted {STYLE_STEPS}"] = evaluate(pipe, judge, style_scenes(), STYLE_STEPS, 1.0)
    finally:
        remove_adapter(pipe, "lcm")
        remove_adapter(pipe, "dotted")
        pipe.scheduler = ddim
    return {"outcomes": outcomes, "train_s": round(train_s, 1)}, {}


def main() -> None:
    from sdtune.evaluation.provenance import JUDGE_WEIGHTS, TINY_SD, start_tiny_study, study_parser, write_results
    from sdtune.evaluation.stats import Rate, seed_difference, seed_rates
    from sdtune.io import write_json
    from sdtune.models.toy_loras import LCM

    parser = study_parser(__doc__, "lcm-study", RESULTS, seeds_help="training seeds of the distillation (at least 3)", threads=2)
    study = start_tiny_study(parser, parser.parse_args())
    args, seeds, work = study.args, study.seeds, study.work
    fixed_file = work / "without_lcm.json"
    if not fixed_file.is_file():
        write_json(fixed_file, without_lcm(study.pipe, study.judge))
    fixed = json.loads(fixed_file.read_text())
    per_seed = study.outcomes(lambda seed: run_seed(seed, work, study.pipe, study.judge))
    runs = {seed: r["outcomes"] | fixed for seed, r in per_seed.items()}
    train_s = {str(seed): r["train_s"] for seed, r in per_seed.items()}
    print("distilled in, per seed:", ", ".join(f"{s:.0f} s" for s in train_s.values()), flush=True)

    measures = ("shape", "colour", "background", "all", "dots")
    conditions = {c: {m: seed_rates({s: runs[s][c][m] for s in seeds}) for m in measures} for c in runs[seeds[0]]}
    for c, rates in conditions.items():
        print(f"{c:<26}" + "  ".join(f"{m} {rates[m]['pooled']}" for m in ("all", "dots")))
    diffs = []
    for a, b, m in DIFFERENCES:
        d = seed_difference([Rate.of(runs[s][a][m]) for s in seeds], [Rate.of(runs[s][b][m]) for s in seeds], a, b)
        diffs.append({"measure": m} | d.as_dict())
        print(f"{m:<5} {d}")
    settings = {"seeds": seeds, "threads": args.threads, "recipe": LCM, "lcm_steps": LCM_STEPS, "ddim_steps": DDIM_STEPS,
                "scheduler_only_steps": SCHEDULER_ONLY_STEPS, "style_steps": STYLE_STEPS, "prompts": 24, "style_prompts": 24}
    write_results(args.out, {"judge_sure": args.judge_sure, "settings": settings, "conditions": conditions,
                             "differences": diffs, "train_s": train_s},
                  weights=[TINY_SD, JUDGE_WEIGHTS, dotted_file()], overwrite=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
