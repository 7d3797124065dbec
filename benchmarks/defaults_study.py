"""Which defaults let a user's first run show what it was trained on? Candidate recipes, several training seeds each.

    python benchmarks/defaults_study.py [--part style,subject] [--recipes NAME,...] [--seeds 0,1,2] [--work DIR]

Two users, each running one command with every other option at its default (issue 23):

- **a new style** through `sdtune train lora --data DIR --out DIR`: 32 toy-world images of one novel style (the
  recipes are tuned on dotted and striped; `tests/test_defaults.py` checks the chosen defaults on *outlined*, which
  this study never trains on). Judged on 32 held-out prompts of the style (other shapes, colours and backgrounds):
  the judge's style, shape and colour agreement, at sampling guidance 2.5, 3 and 4 (4: the tiny model's default);
- **a new subject** through `sdtune train dreambooth --lora --instance-prompt "a sks toy" --class-prompt "a circle"`:
  6 unlabeled renders of a disc whose left half is blue and right half yellow (`sdtune.evaluation.split_disc`; the
  test uses another pair of colours and other renders), on white and black backgrounds. Judged by a pixel rule that
  needs no classifier to know the subject (`split_disc.shows`), on 16 images of the training prompt "a sks toy" and
  16 of a new context, "a sks toy on a gray background" (the subject shows, on the third plain background); and
  on 16 images of the class prompt "a circle", whether the judge still sees a circle (class kept) and whether the
  subject shows there instead (class drift: DreamBooth's language drift).

Every recipe runs with training seeds 0, 1, 2 and the same sampling seeds, so recipes are compared image for image;
rates are k/n pooled over seeds with Wilson 95% intervals, and differences between recipes are the mean of the
per-seed differences with a t-interval over seeds (`sdtune.evaluation.stats`). Each run is cached in `--work` as
JSON with its adapter and image grid (a rerun skips finished runs, and samples a trained adapter again when the
guidances change). The results file records the command, the commit, the machine and the sha256 of the tiny model
and the judge.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path


BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results" / "defaults_study_cpu.json"

# ---------------------------------------------------------------------------------------------------------------
# The candidates. Every option is given, so that a recipe means the same whatever the trainer's defaults become (a style
# recipe on all timesteps says max_timestep 1000: the tiny model's `train lora` default is 600).
# ---------------------------------------------------------------------------------------------------------------

COMMON = {"alpha": None, "lr_scheduler": "constant", "warmup_steps": 0, "max_grad_norm": 0.0, "min_timestep": 0,
          "max_timestep": None, "train_text_encoder": False}
STYLE_RECIPES = {
    # sdtune's fixed defaults before this study: attention-only LoRA, the diffusers example's choice for SD 1.5
    "lora-attn r4 b8 (before)": COMMON | {"adapter": "lora", "rank": 4, "targets": "attn", "batch_size": 8, "lr": 1e-3,
                                          "steps": 300, "max_timestep": 1000},
    # the README's style recipe (tests/test_style_bar.py)
    "locon r8 b32 t<600": COMMON | {"adapter": "locon", "rank": 8, "targets": "attn-mlp-conv", "batch_size": 32, "lr": 1e-3,
                                    "steps": 300, "max_timestep": 600},
    "locon r8 b32 all t": COMMON | {"adapter": "locon", "rank": 8, "targets": "attn-mlp-conv", "batch_size": 32, "lr": 1e-3,
                                    "steps": 300, "max_timestep": 1000},
}
SUBJECT_RECIPES = {
    # the run: today's defaults with --steps 400
    "lora-attn r4 b8 400 (before)": COMMON | {"adapter": "lora", "rank": 4, "targets": "attn", "batch_size": 8, "lr": 1e-3,
                                              "steps": 400, "prior_loss_weight": 1.0, "num_class_images": 50},
    "locon r8 b8 800 lr3e-3 prior 0.3 +te": COMMON | {"adapter": "locon", "rank": 8, "targets": "attn-mlp-conv", "batch_size": 8,
                                                      "lr": 3e-3, "steps": 800, "prior_loss_weight": 0.3, "num_class_images": 50,
                                                      "train_text_encoder": True},
}

STYLES = ("dotted", "striped")  # tuned on these; outlined is kept for the test
STYLE_IMAGES = 32  # images in a style's training folder, unless its name says another size ("dotted-64")
STYLE_FOLDERS = {"locon r8 b32 t<600": ("dotted", "striped", "dotted-64")}  # a recipe's folders, if not STYLES
HELD_OUT = 32  # prompts of the style per run (seed 100: scenes no training folder holds)
GUIDANCES = (2.5, 3.0, 4.0)
BAR = {"style": 0.80, "shape": 0.85, "colour": 0.85}  # the style bar of the README and the demo

SUBJECT = ("blue", "yellow")  # left, right
SUBJECT_BACKGROUNDS = ("white", "black")  # the training renders'; the new context asks for the third plain one
INSTANCE_PROMPT, CLASS_PROMPT = "a sks toy", "a circle"
NEW_BACKGROUND = "gray"
NEW_CONTEXT = f"a sks toy on a {NEW_BACKGROUND} background"
SUBJECT_PROMPTS = (INSTANCE_PROMPT, NEW_CONTEXT, CLASS_PROMPT)
SUBJECT_SAMPLES = 16  # images per prompt per run


def _key(part: str, name: str, recipe: dict, variant: str, seed: int) -> str:
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
    slug = "".join(c if c.isalnum() else "-" for c in name)
    return f"{part}-{slug}-{digest}-{variant}-seed{seed}"


def _fresh_pipe():
    import sdtune

    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _timed_train(config) -> float:
    from sdtune.training import train

    start = time.perf_counter()
    train(config, pipe=_fresh_pipe())
    return time.perf_counter() - start


def _sampled(out: Path, grid: Path, prompts: list[str], cols: int) -> None:
    """Sample `prompts` with the adapter trained into `out` at each guidance (seed 0) into `grid`, guidance after guidance."""
    import sdtune

    pipe = _fresh_pipe()
    sdtune.load_adapter(pipe, out / f"{out.name}.safetensors", "study")
    images = [im for g in GUIDANCES for im in sdtune.sample(pipe, prompts, guidance_scale=g, seed=0)]
    sdtune.image_grid(images, cols=cols, scale=2).save(grid)


def train_style(recipe: dict, style: str, images: int, seed: int, work: Path, out: Path) -> float:
    """Train on the style's folder (`images` images, seed 1) into `out`; returns the training seconds."""
    from sdtune.data import toyworld
    from sdtune.training import TrainConfig

    data = work / f"data-{style}" if images == STYLE_IMAGES else work / f"data-{style}-{images}"
    if not data.is_dir():
        toyworld.write_dataset(toyworld.sample_scenes(images, seed=1, styles=[style]), data)
    return _timed_train(TrainConfig(data=str(data), out=str(out), seed=seed, overwrite=True, **recipe))


def sample_style(style: str, out: Path, grid: Path) -> None:
    """The held-out prompts, one row of `grid` per guidance."""
    from sdtune.data import toyworld

    _sampled(out, grid, [toyworld.caption(s) for s in toyworld.sample_scenes(HELD_OUT, seed=100, styles=[style])], HELD_OUT)


def train_subject(recipe: dict, seed: int, work: Path, out: Path) -> float:
    """DreamBooth-LoRA on the 6 split-disc renders into `out`; returns the training seconds."""
    from sdtune.evaluation import split_disc
    from sdtune.training import DreamBoothConfig

    data = work / f"data-subject-{'-'.join(SUBJECT_BACKGROUNDS)}"
    if not data.is_dir():
        split_disc.write_folder(data, split_disc.training_images(*SUBJECT, n=6, seed=1, backgrounds=SUBJECT_BACKGROUNDS))
    return _timed_train(DreamBoothConfig(data=str(data), out=str(out), seed=seed, overwrite=True, instance_prompt=INSTANCE_PROMPT,
                                         class_prompt=CLASS_PROMPT, **recipe))


def sample_subject(out: Path, grid: Path) -> None:
    """16 images each of the instance, new-context and class prompts: three rows of `grid` per guidance."""
    _sampled(out, grid, [p for p in SUBJECT_PROMPTS for _ in range(SUBJECT_SAMPLES)], SUBJECT_SAMPLES)


def grid_rows(grid: Path, cols: int) -> list[list]:
    """The images of a grid written by `_sampled` (scale 2, nearest): exactly the sampled 64x64 images, row by row."""
    from PIL import Image

    picture = Image.open(grid).convert("RGB")
    cell = picture.width // cols
    return [[picture.crop((c * cell, r * cell, (c + 1) * cell, (r + 1) * cell)).resize((cell // 2, cell // 2), Image.NEAREST)
             for c in range(cols)] for r in range(picture.height // cell)]


def score_style(grid: Path, style: str, judge) -> dict:
    """Per guidance: for each held-out prompt, whether the judge sees its style, shape and colour."""
    from sdtune.data import toyworld

    held_out = toyworld.sample_scenes(HELD_OUT, seed=100, styles=[style])
    scores = {}
    for g, row in zip(GUIDANCES, grid_rows(grid, HELD_OUT)):
        seen = judge.predict(row)
        scores[str(g)] = {a: [p == getattr(s, a) for p, s in zip(seen[a], held_out)] for a in ("style", "shape", "colour")}
    return scores


def score_subject(grid: Path, judge) -> dict:
    """Per guidance: the subject shows on the training prompt; in the new context, on a black background; the class
    prompt still draws what the judge calls a circle."""
    from sdtune.evaluation import split_disc

    rows = grid_rows(grid, SUBJECT_SAMPLES)
    scores = {}
    for i, g in enumerate(GUIDANCES):
        instance, context, classes = rows[3 * i : 3 * i + 3]
        scores[str(g)] = {
            "training prompt": [split_disc.shows(im, *SUBJECT) for im in instance],
            "new context": [split_disc.shows(im, *SUBJECT) and split_disc.background_of(im) == NEW_BACKGROUND for im in context],
            "class kept": [s == "circle" for s in judge.predict(classes)["shape"]],
            "class drift": [split_disc.shows(im, *SUBJECT) for im in classes],
        }
    return scores


def cached(work: Path, key: str, train, sample, score) -> dict:
    """One run: trained once (its time kept in the cache), sampled again when the guidances change, scored from its images."""
    from sdtune.io import write_json

    path, grid, out = work / f"{key}.json", work / f"{key}.png", work / "runs" / key
    result = json.loads(path.read_text()) if path.is_file() else None
    if result is None:
        print(f"running {key} ...", flush=True)
        result = {"train_s": train(out), "load_average": os.getloadavg()[0]}
        print(f"  {time.strftime('%H:%M:%S')} trained in {result['train_s']:.0f} s", flush=True)
    if result.get("guidances", [2.5, 4.0]) != list(GUIDANCES) or not grid.is_file():
        sample(out, grid)
        result["guidances"] = list(GUIDANCES)
    write_json(path, result)
    return {"train_s": result["train_s"], "load_average": result.get("load_average"), "scores": score(grid)}


def summarise(runs: dict[int, dict]) -> dict:
    """Per guidance and measure: k/n pooled over seeds with its interval, and each seed's rate."""
    from sdtune.evaluation.stats import Rate

    seeds = sorted(runs)
    out = {"train_s": {str(s): round(runs[s]["train_s"], 1) for s in seeds}, "guidance": {}}
    for g, measures in runs[seeds[0]]["scores"].items():
        out["guidance"][g] = {
            m: {"pooled": Rate.of(sum((runs[s]["scores"][g][m] for s in seeds), [])),
                "per_seed": {str(s): Rate.of(runs[s]["scores"][g][m]) for s in seeds}}
            for m in measures
        }
    return out


def compare(a: dict[int, dict], b: dict[int, dict], guidance: str, measure: str, name_a: str, name_b: str):
    from sdtune.evaluation.stats import Rate, seed_difference

    seeds = sorted(set(a) & set(b))
    return seed_difference([Rate.of(a[s]["scores"][guidance][measure]) for s in seeds],
                           [Rate.of(b[s]["scores"][guidance][measure]) for s in seeds], name_a, name_b)


def main() -> None:
    from sdtune.evaluation.provenance import study_arguments, study_setup

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="style,subject", help="style, subject or both (comma-separated)")
    parser.add_argument("--recipes", help="comma-separated recipe names (default: all of the part's)")
    study_arguments(parser, "defaults-study", RESULTS, threads=2)
    args = parser.parse_args()
    seeds, work = study_setup(parser, args, selectors=["part", "recipes"])  # each recipe, folder and seed cached on its own
    os.environ.setdefault("SDTUNE_CACHE", str(work / "cache"))  # class images: kept with the study
    parts = args.part.split(",")
    wanted = set(args.recipes.split(",")) if args.recipes else None
    unknown = (wanted or set()) - set(STYLE_RECIPES) - set(SUBJECT_RECIPES)
    if unknown:
        parser.error(f"--recipes: unknown {', '.join(sorted(unknown))}; choose from {', '.join([*STYLE_RECIPES, *SUBJECT_RECIPES])}")

    results: dict = {"settings": {"seeds": seeds, "threads": args.threads, "guidances": GUIDANCES, "bar": BAR}}
    from sdtune.evaluation.judge import load_judge
    from sdtune.evaluation.provenance import JUDGE_WEIGHTS, TINY_SD, write_results

    judge = load_judge(sure=args.judge_sure)

    if "style" in parts:
        results["settings"]["style"] = {"folders": {name: STYLE_FOLDERS.get(name, STYLES) for name in STYLE_RECIPES},
                                        "held_out_prompts": HELD_OUT, "recipes": STYLE_RECIPES}
        results["style"] = {}
        for name, recipe in STYLE_RECIPES.items():
            if wanted and name not in wanted:
                continue
            for folder in STYLE_FOLDERS.get(name, STYLES):
                style, _, size = folder.partition("-")
                images = int(size or STYLE_IMAGES)
                runs = {s: cached(work, _key("style", name, recipe, folder, s),
                                  lambda out, s=s: train_style(recipe, style, images, s, work, out),
                                  lambda out, grid: sample_style(style, out, grid), lambda grid: score_style(grid, style, judge))
                        for s in seeds}
                results["style"].setdefault(name, {})[folder] = summarise(runs) | {"_runs": runs}
    if "subject" in parts:
        results["settings"]["subject"] = {"colours": SUBJECT, "backgrounds": SUBJECT_BACKGROUNDS, "images": 6,
                                          "instance_prompt": INSTANCE_PROMPT, "class_prompt": CLASS_PROMPT,
                                          "new_context": NEW_CONTEXT, "samples_per_prompt": SUBJECT_SAMPLES,
                                          "recipes": SUBJECT_RECIPES}
        results["subject"] = {}
        for name, recipe in SUBJECT_RECIPES.items():
            if wanted and name not in wanted:
                continue
            runs = {s: cached(work, _key("subject", name, recipe, f"split-disc-{'-'.join(SUBJECT_BACKGROUNDS)}", s),
                              lambda out, s=s: train_subject(recipe, s, work, out), sample_subject, lambda grid: score_subject(grid, judge))
                    for s in seeds}
            results["subject"][name] = summarise(runs) | {"_runs": runs}

    results["differences"] = differences(results)
    report(results)
    for part in ("style", "subject"):
        for entry in results.get(part, {}).values():
            for e in (entry.values() if part == "style" else [entry]):
                e.pop("_runs")
    write_results(args.out, {"judge_sure": args.judge_sure} | results, weights=[TINY_SD, JUDGE_WEIGHTS], overwrite=True)
    print(f"wrote {args.out}")


def differences(results: dict) -> list[dict]:
    """Each recipe against the one marked "(before)" (sdtune's defaults before this study), paired by training seed,
    for every measure at every guidance."""
    rows = []
    for part in ("style", "subject"):
        recipes = results.get(part, {})
        before = next((name for name in recipes if name.endswith("(before)")), None)
        for name, entry in recipes.items():
            if before is None or name == before:
                continue
            for variant, runs in (entry.items() if part == "style" else [("split disc", entry)]):
                base = recipes[before].get(variant) if part == "style" else recipes[before]
                if base is None or sorted(base["_runs"]) != sorted(runs["_runs"]):
                    continue  # paired by seed, so only when both ran the same seeds
                for g, measures in runs["guidance"].items():
                    for m in measures:
                        d = compare(runs["_runs"], base["_runs"], g, m, name, before)
                        rows.append({"part": part, "on": variant, "guidance": g, "measure": m} | d.as_dict())
    return rows


def report(results: dict) -> None:
    for name, per_style in results.get("style", {}).items():
        for style, s in per_style.items():
            for g, measures in s["guidance"].items():
                cells = "  ".join(f"{m} {measures[m]['pooled']}" for m in ("style", "shape", "colour"))
                print(f"style  {name:<28} {style:<8} g{g:<4} {cells}   train s {list(s['train_s'].values())}")
    for name, s in results.get("subject", {}).items():
        for g, measures in s["guidance"].items():
            cells = "  ".join(f"{m} {r['pooled']}" for m, r in measures.items())
            print(f"subject {name:<30} g{g:<4} {cells}   train s {list(s['train_s'].values())}")
    for d in results["differences"]:
        print(f"{d['part']} on {d['on']}, guidance {d['guidance']}, {d['measure']}: {d['verdict']}")


if __name__ == "__main__":
    main()
