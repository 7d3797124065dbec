"""LoRA, LoCon, LoHa, LoKr and DoRA on one novel style, chapter 05's recipe, several training seeds (Q24, Q26, Q27).

    python benchmarks/variants_study.py [--seeds 0,1,2,3,4] [--work DIR] [--threads 1]

Chapter 05 trains each adapter kind once (training seed 0) on the 24 *dotted* images of
`toyworld.sample_scenes(24, seed=1, styles=["dotted"])`: rank 4 (alpha = rank), 60 steps, batch 8, every timestep,
constant learning rate, no warmup, no clipping, the UNet only, each kind on its usual layers
(`sdtune.methods.DEFAULT_TARGETS`: LoRA and DoRA on attention, LoHa and LoKr on attention and MLPs, LoCon on attention,
MLPs and convolutions), LoHa and LoKr at 4x LoRA's learning rate (8e-3 against 2e-3). This study repeats that recipe
with five training seeds, so that the chapter can say which differences between the kinds are resolved. (Three seeds
resolved none of them: at 32 prompts a run, one seed's count alone spreads a difference by about 12 points, and the
t-interval over 3 seeds is then about 30 points wide on each side; over 5 seeds, about 15.)

Each run is judged on the chapter's 32 held-out dotted prompts (`sample_scenes(32, seed=100)`: scenes no training image
shows): does the judge see the style, the shape and the colour asked for? 15 DDIM steps, guidance 4, sampling seed 0,
the same starting noise for every kind. Rates are k/n pooled over seeds with Wilson 95% intervals; each kind against
LoRA and against the base model is the mean of the per-seed differences with a t-interval over seeds
(`sdtune.evaluation.stats.seed_difference`), "not resolved" where that interval holds zero.

Every run is cached in `--work` (its per-prompt outcomes and its first images), so a rerun only adds what is missing.
Beside the results file: a picture of training seed 0, a row per kind, a column per held-out prompt, with the judge's
style verdict under each image. The results file records the command, the commit, the machine and the sha256 of the
tiny model and the judge.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path


BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results" / "variants_study_cpu.json"
PICTURE = RESULTS.with_suffix(".png")

STYLE, TRAIN_IMAGES, TRAIN_SEED = "dotted", 24, 1  # the chapter's training folder
HELD_OUT, HELD_OUT_SEED = 32, 100  # the chapter's held-out dotted prompts
SAMPLING = {"num_inference_steps": 15, "guidance_scale": 4.0, "seed": 0}  # the chapter's sampling
KINDS = ("lora", "locon", "loha", "lokr", "dora")
NAMES = {"lora": "LoRA", "locon": "LoCon", "loha": "LoHa", "lokr": "LoKr", "dora": "DoRA"}  # as the verdicts and picture say
LR = {"lora": 2e-3, "locon": 2e-3, "dora": 2e-3, "loha": 8e-3, "lokr": 8e-3}  # the product of factors wants a larger step
RECIPE = {"rank": 4, "steps": 60, "batch_size": 8, "max_timestep": 1000, "min_timestep": 0, "lr_scheduler": "constant",
          "warmup_steps": 0, "max_grad_norm": 0.0, "train_text_encoder": False}  # every option the chapter passes
MEASURES = ("style", "shape", "colour")
PICTURE_SEED, PICTURE_PROMPTS = 0, 8  # the picture: training seed 0 (the chapter's live run), the first 8 prompts


def recipe(kind: str) -> dict:
    """Every TrainConfig option of one kind's run except the data, the output folder and the seed."""
    from sdtune.methods import DEFAULT_TARGETS

    return RECIPE | {"adapter": kind, "targets": DEFAULT_TARGETS[kind], "lr": LR[kind]}


def held_out() -> list:
    from sdtune.data import toyworld

    return toyworld.sample_scenes(HELD_OUT, seed=HELD_OUT_SEED, styles=[STYLE])


def outcomes(pipe, judge) -> tuple[dict[str, list[bool]], list]:
    """Per held-out prompt: does the judge see the style, the shape and the colour asked for? And the images."""
    import sdtune
    from sdtune.data import toyworld

    scenes = held_out()
    images = sdtune.sample(pipe, [toyworld.caption(s) for s in scenes], batch_size=HELD_OUT, **SAMPLING)
    seen = judge.predict(images)
    return {m: [p == getattr(s, m) for p, s in zip(seen[m], scenes)] for m in MEASURES}, images


def save_strip(images: list, path: Path) -> None:
    """The first PICTURE_PROMPTS images side by side, for the picture."""
    from PIL import Image

    strip = Image.new("RGB", (64 * PICTURE_PROMPTS, 64))
    for i, image in enumerate(images[:PICTURE_PROMPTS]):
        strip.paste(image.resize((64, 64)), (64 * i, 0))
    strip.save(path)


def run(pipe, judge, kind: str, seed: int, work: Path) -> dict:
    """Train one kind with one seed, load its kohya file as the chapter does, judge it; cached in `work`."""
    import sdtune
    from sdtune.data import toyworld
    from sdtune.formats.adapters import remove_adapter
    from sdtune.io import write_json
    from sdtune.training import TrainConfig, train

    path = work / f"{kind}-seed{seed}.json"
    if path.is_file() and path.with_suffix(".png").is_file():
        cached = json.loads(path.read_text())
        if cached["recipe"] == recipe(kind) and cached["sampling"] == SAMPLING and len(cached["outcomes"]["style"]) == HELD_OUT:
            return cached | {"reused": True}
    data = work / "data"
    if not data.is_dir():
        toyworld.write_dataset(toyworld.sample_scenes(TRAIN_IMAGES, seed=TRAIN_SEED, styles=[STYLE]), data)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        start = time.perf_counter()
        out = train(TrainConfig(data=str(data), out=str(Path(tmp) / "run"), seed=seed, **recipe(kind)), pipe=pipe)
        seconds = time.perf_counter() - start
        name = sdtune.load_adapter(pipe, out / f"{out.name}.safetensors", "study")
        try:
            seen, images = outcomes(pipe, judge)
        finally:
            remove_adapter(pipe, name)
    result = {"recipe": recipe(kind), "sampling": SAMPLING, "seed": seed, "train_s": round(seconds, 1),
              "load_average": round(os.getloadavg()[0], 1), "outcomes": seen}
    print(f"  {time.strftime('%H:%M:%S')} {kind} seed {seed} ({seconds:.1f} s): "
          + "  ".join(f"{m} {sum(v)}/{len(v)}" for m, v in seen.items()), flush=True)
    save_strip(images, path.with_suffix(".png"))
    write_json(path, result)
    return result


def summarise(base: dict[str, list[bool]], runs: dict[str, dict[int, dict]]) -> dict:
    """Per kind and measure: k/n pooled over seeds, each seed's k/n; each kind against LoRA and against the base model,
    paired by training seed (only with at least 3 seeds: the course's rule for such a claim)."""
    from sdtune.evaluation.stats import MIN_SEEDS, Rate, seed_difference

    kinds = {}
    for kind, by_seed in runs.items():
        seeds = sorted(by_seed)
        kinds[kind] = {
            "recipe": by_seed[seeds[0]]["recipe"],
            "train_s": {str(s): by_seed[s]["train_s"] for s in seeds},
            "pooled": {m: Rate.of(o for s in seeds for o in by_seed[s]["outcomes"][m]) for m in MEASURES},
            "per_seed": {m: {str(s): Rate.of(by_seed[s]["outcomes"][m]) for s in seeds} for m in MEASURES},
        }
    base_rates = {m: Rate.of(v) for m, v in base.items()}
    against_lora, against_base = {}, {}
    for kind, row in kinds.items():
        if len(row["per_seed"]["style"]) < MIN_SEEDS:
            continue
        # the base model has no training seed: the same images stand beside every seed of the kind
        against_base[kind] = {m: seed_difference(list(row["per_seed"][m].values()), [base_rates[m]] * len(row["per_seed"][m]),
                                                 NAMES[kind], "the base model") for m in MEASURES}
        if kind != "lora" and "lora" in kinds:
            shared = sorted(set(row["per_seed"]["style"]) & set(kinds["lora"]["per_seed"]["style"]), key=int)
            against_lora[kind] = {m: seed_difference([row["per_seed"][m][s] for s in shared],
                                                     [kinds["lora"]["per_seed"][m][s] for s in shared], NAMES[kind], "LoRA")
                                  for m in MEASURES}
    return {"base model": base_rates, "kinds": kinds, "against_lora": against_lora, "against_base": against_base}


def picture(base_strip: Path, strips: dict[str, Path], verdicts: dict[str, list[bool]], captions: list[str], title: str):
    """A row per model (the base model, then each kind), a column per held-out prompt; under each image the judge's
    style verdict. Rows and columns are named in the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = {"base model": base_strip} | strips
    fig, axes = plt.subplots(len(rows), PICTURE_PROMPTS, figsize=(1.25 * PICTURE_PROMPTS + 1.2, 1.35 * len(rows) + 0.9))
    for r, (label, strip) in enumerate(rows.items()):
        image = Image.open(strip)
        for c in range(PICTURE_PROMPTS):
            ax = axes[r, c]
            ax.imshow(image.crop((64 * c, 0, 64 * c + 64, 64)))
            ax.set_xticks([]), ax.set_yticks([])
            dotted = verdicts[label][c]
            ax.set_xlabel("dots" if dotted else "no dots", fontsize=7, color="green" if dotted else "firebrick", labelpad=1)
            if r == 0:
                ax.set_title(captions[c].removeprefix("a dotted ").replace(" on a ", "\non ").replace(" background", ""), fontsize=7)
        axes[r, 0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def main() -> None:
    from sdtune.evaluation.provenance import start_tiny_study, study_parser

    parser = study_parser(__doc__, "variants-study", RESULTS, seeds="0,1,2,3,4",
                          seeds_help=f"training seeds (at least 3, {PICTURE_SEED} among them: the picture)")
    args = parser.parse_args()
    if str(PICTURE_SEED) not in args.seeds.split(","):
        parser.error(f"--seeds {args.seeds}: include {PICTURE_SEED}, the picture's and the chapter's live run's seed")
    study = start_tiny_study(parser, args)  # differences are paired by seed: at least 3
    seeds, work, pipe, judge = study.seeds, study.work, study.pipe, study.judge

    from sdtune.data import toyworld
    from sdtune.evaluation.provenance import JUDGE_WEIGHTS, TINY_SD, write_figure, write_results

    start = time.perf_counter()
    base, base_images = outcomes(pipe, judge)
    save_strip(base_images, work / "base.png")
    runs = {k: {s: run(pipe, judge, k, s, work) for s in seeds} for k in KINDS}

    out = Path(args.out)
    picture_file = out.with_suffix(".png")
    results = {
        "settings": {"style": STYLE, "training_images": TRAIN_IMAGES, "training_scenes_seed": TRAIN_SEED,
                     "held_out_prompts": HELD_OUT, "held_out_seed": HELD_OUT_SEED, "sampling": SAMPLING, "seeds": seeds,
                     "threads": args.threads, "recipe": RECIPE, "lr": LR,
                     "picture": {"file": picture_file.name, "training_seed": PICTURE_SEED, "prompts": PICTURE_PROMPTS}},
        **summarise(base, runs),
        "wall_s": round(time.perf_counter() - start, 1),  # this invocation; runs found in --work were not redone
        "runs_reused": [f"{k} seed {s}" for k in KINDS for s in seeds if runs[k][s].get("reused")],
    }
    report(results)
    rows = {k: f"{NAMES[k]}\n(all seeds: dots\n{results['kinds'][k]['pooled']['style'].k}/{results['kinds'][k]['pooled']['style'].n})"
            for k in KINDS}
    verdicts = {"base model": base["style"]} | {rows[k]: runs[k][PICTURE_SEED]["outcomes"]["style"] for k in KINDS}
    captions = [toyworld.caption(s) for s in held_out()]
    fig = picture(work / "base.png", {rows[k]: work / f"{k}-seed{PICTURE_SEED}.png" for k in KINDS}, verdicts, captions,
                  f"rows: the base model and each adapter kind, training seed {PICTURE_SEED}; columns: held-out dotted "
                  f"prompts; under each image: does the judge see dots?")
    write_figure(picture_file, fig, dpi=72)
    write_results(out, {"judge_sure": args.judge_sure} | results, weights=[TINY_SD, JUDGE_WEIGHTS], overwrite=True)
    print(f"wrote {out} and {picture_file}")


def report(results: dict) -> None:
    print("base model: " + "  ".join(f"{m} {r}" for m, r in results["base model"].items()))
    for k, row in results["kinds"].items():
        print(f"{k:<6} " + "  ".join(f"{m} {row['pooled'][m]}" for m in MEASURES)
              + "   style per seed " + ",".join(str(r.k) for r in row["per_seed"]["style"].values()))
    for name in ("against_base", "against_lora"):
        for k, diffs in results[name].items():
            for m, d in diffs.items():
                print(f"  {m}: {d.verdict()}")
    print(f"wall {results['wall_s']} s")


if __name__ == "__main__":
    main()
