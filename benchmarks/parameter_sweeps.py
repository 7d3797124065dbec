"""Chapter 03's sweeps over several training seeds: what rank, alpha, learning rate and steps each do to a LoRA.

    python benchmarks/parameter_sweeps.py [--seeds 0,1,2] [--threads 1] [--work DIR] [--out FILE]

One base configuration (BASE: a rank-4 attention LoRA, every option given), and one parameter changed at a time to
each value of SWEEPS, trained on chapter 03's 24 *outlined* toy images with each training seed. Every run samples the
chapter's 16 held-out outlined prompts (15 DDIM steps, guidance 4, sampling seed 0: the same starting noise for every
run, so runs are compared image by image) and the judge says, per image, whether it sees the style, and whether it
sees both the prompted shape and the prompted colour (what the base model already knew). The untrained model is
judged once on the same prompts.

Rates are k/n pooled over seeds with Wilson 95% intervals; each difference the chapter states (DIFFERENCES) is the
mean of the per-seed differences with a t-interval over seeds (`sdtune.evaluation.stats`), "not resolved" when it
includes zero. Also per run: the mean loss of the last 20 steps and the adapter file's size. Each seed's runs are
cached in --work (a rerun skips them). The results file records the command, the commit, the machine and the sha256
of the tiny model and the judge.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


RESULTS = Path(__file__).resolve().parent / "results" / "parameter_sweeps_cpu.json"

STYLE, IMAGES, HELD_OUT, SAMPLE_STEPS = "outlined", 24, 16, 15
# every option given: the tiny model's `train lora` defaults (LoCon layers, t < 600, batch 32) are not this lesson's
FIXED = dict(adapter="lora", targets="attn", max_timestep=1000, min_timestep=0, lr_scheduler="constant", warmup_steps=0,
             max_grad_norm=0.0)
BASE = dict(rank=4, alpha=None, lr=3e-3, steps=60, batch_size=4)  # alpha None: alpha = rank
SWEEPS = {"rank": [1, 4, 16], "alpha": [1.0, 4.0, 16.0], "lr": [3e-5, 3e-3, 3e-2], "steps": [15, 30, 60]}
MEASURES = ("style", "shape and colour")
DIFFERENCES = [  # (parameter, value a, value b, measure): each comparison chapter 03 states, paired by training seed
    ("lr", 3e-3, 3e-5, "style"), ("lr", 3e-2, 3e-3, "style"), ("lr", 3e-2, 3e-3, "shape and colour"),
    ("alpha", 16.0, 4.0, "style"), ("alpha", 1.0, 4.0, "style"), ("alpha", 16.0, 4.0, "shape and colour"),
    ("rank", 16, 1, "style"), ("rank", 16, 1, "shape and colour"),
    ("steps", 60, 15, "style"), ("steps", 60, 15, "shape and colour"),
]


def config(**change) -> dict:
    """The run's TrainConfig options: BASE with `change`, alpha None meaning alpha = rank."""
    cfg = FIXED | BASE | change
    cfg["alpha"] = float(cfg["alpha"] or cfg["rank"])
    return cfg


def key(parameter: str, value) -> str:
    return f"{parameter}={value:g}"


def outcomes(judge, images, scenes) -> dict[str, list[bool]]:
    seen = judge.predict(images)
    return {"style": [p == s.style for p, s in zip(seen["style"], scenes)],
            "shape and colour": [p == s.shape and c == s.colour for p, c, s in zip(seen["shape"], seen["colour"], scenes)]}


def run_seed(seed: int, work: Path, judge, pipe, data: Path, prompts: list[str], scenes) -> dict:
    import sdtune
    from sdtune.formats.adapters import remove_adapter
    from sdtune.training import TrainConfig, train

    runs: dict[str, dict] = {}
    trained: dict[str, dict] = {}  # one run per distinct configuration: the base one is in every sweep
    for parameter, values in SWEEPS.items():
        for value in values:
            cfg = config(**{parameter: value})
            name = json.dumps(cfg, sort_keys=True)
            if name not in trained:
                out = train(TrainConfig(data=str(data), out=str(work / "runs" / f"run{len(trained)}-seed{seed}"), seed=seed,
                                        overwrite=True, **cfg), pipe=pipe)
                sdtune.load_adapter(pipe, out, "sweep")
                images = sdtune.sample(pipe, prompts, num_inference_steps=SAMPLE_STEPS, seed=0)
                remove_adapter(pipe, "sweep")
                losses = json.loads((out / "loss.json").read_text())["loss"]
                trained[name] = outcomes(judge, images, scenes) | {
                    "final_loss": sum(losses[-20:]) / len(losses[-20:]),
                    "kB": (out / "pytorch_lora_weights.safetensors").stat().st_size / 1e3}
            runs[key(parameter, value)] = trained[name]
    return runs


def main() -> None:
    from sdtune.evaluation.provenance import JUDGE_WEIGHTS, TINY_SD, start_tiny_study, study_parser, write_results
    from sdtune.evaluation.stats import Rate, seed_difference
    from sdtune.io import write_json

    parser = study_parser(__doc__, "parameter-sweeps", RESULTS)
    study = start_tiny_study(parser, parser.parse_args(), min_seeds=1)
    args, seeds, work, pipe, judge = study.args, study.seeds, study.work, study.pipe, study.judge

    import sdtune
    from sdtune.data import toyworld
    data = work / f"data-{STYLE}"
    if not data.is_dir():
        toyworld.write_dataset(toyworld.sample_scenes(IMAGES, seed=1, styles=[STYLE]), data)
    scenes = toyworld.sample_scenes(HELD_OUT, seed=100, styles=[STYLE])
    prompts = [toyworld.caption(s) for s in scenes]
    untrained = outcomes(judge, sdtune.sample(pipe, prompts, num_inference_steps=SAMPLE_STEPS, seed=0), scenes)

    runs = {}
    for seed in seeds:
        cache = work / f"seed{seed}.json"
        if not cache.is_file():
            print(f"{time.strftime('%H:%M:%S')} seed {seed} ...", flush=True)
            write_json(cache, run_seed(seed, work, judge, pipe, data, prompts, scenes))
        runs[seed] = json.loads(cache.read_text())

    table = {}
    for parameter, values in SWEEPS.items():
        for value in values:
            k = key(parameter, value)
            table[k] = {m: {"pooled": Rate.of(sum((runs[s][k][m] for s in seeds), [])),
                            "per_seed": {str(s): Rate.of(runs[s][k][m]) for s in seeds}} for m in MEASURES}
            table[k] |= {"final_loss": {str(s): runs[s][k]["final_loss"] for s in seeds},
                         "kB": {str(s): runs[s][k]["kB"] for s in seeds}}
            print(f"{k:<12} " + "  ".join(f"{m} {table[k][m]['pooled']}" for m in MEASURES))
    diffs = []
    for parameter, a, b, m in DIFFERENCES:
        ka, kb = key(parameter, a), key(parameter, b)
        d = seed_difference([Rate.of(runs[s][ka][m]) for s in seeds], [Rate.of(runs[s][kb][m]) for s in seeds],
                            f"{parameter} {a:g}", f"{parameter} {b:g}")
        diffs.append(d.as_dict() | {"parameter": parameter, "value_a": a, "value_b": b, "measure": m})
        print(f"{m}: {d.verdict()}")
    write_results(args.out, {
        "judge_sure": args.judge_sure,
        "settings": {"seeds": seeds, "threads": args.threads, "style": STYLE, "training_images": IMAGES,
                     "held_out_prompts": HELD_OUT, "sample_steps": SAMPLE_STEPS, "guidance": 4.0, "fixed": FIXED,
                     "base": BASE, "sweeps": SWEEPS},
        "untrained": {m: Rate.of(untrained[m]) for m in MEASURES},
        "runs": table,
        "differences": diffs,
        "outcomes": {str(s): {k: {m: r[m] for m in MEASURES} for k, r in runs[s].items()} for s in seeds},
    }, weights=[TINY_SD, JUDGE_WEIGHTS], overwrite=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
