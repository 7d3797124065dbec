"""What does prior preservation buy? DreamBooth-LoRA on a subject the tiny model never drew, prior off and on, 5 seeds.

    python benchmarks/dreambooth_prior_study.py [--weights 0,1] [--seeds 0,1,2,3,4] [--work DIR] [--threads 1]

Chapter 08's experiment, repeated over training seeds (the chapter trains seed 0 with the prior on live and checks that
its figures fall within this study's spread). The subject: 6 renders of a disc whose left half is yellow and right half
green (`sdtune.evaluation.split_disc`), on white and black backgrounds, captioned "a sks circle on a {background}
background": identifier "sks" and the right class noun, "circle" (the toy world's round shape). Prior preservation
trains on class images of "a circle" drawn by the frozen model (cached in --work, with a manifest of the settings).

Each run is measured with `sdtune.evaluation.subject.subject_outcomes` (the chapter's code), all at sampling seed 0:
12 images of the subject on each of a white, black and gray background (gray: a background no training image had,
the new context); the class in each base colour on each background (18 prompts, one image each); 36 images of the
class prompt itself, "a circle"; 12 of "a circle on a {background} background" per background. Per image:

- fidelity:         a training prompt (white, black) draws the subject (`split_disc.shows`, a rule on pixels);
- new context:      "a sks circle on a gray background" draws the subject on gray (the rule, and the judge's background);
- class kept:       "a {colour} circle on a {background} background" is a circle of that colour (the judge);
- class drift:      "a circle", the prompt prior preservation trains on, draws the subject (the rule): the class word
                    became it;
- drift in context: "a circle on a {background} background", a subject caption without its identifier, draws it.

Rates are k/n pooled over seeds with Wilson 95% intervals; prior weight w against 0 is the mean of the per-seed
differences with a t-interval over seeds (`stats.seed_difference`). The base model's and seed 0's images of each
weight are saved beside the results (`dreambooth_prior_study_cpu.png`), each row and column labelled in the image.

Each run is cached in --work (a rerun skips finished runs). From scratch the study took about 16 minutes on one core
(10 trainings of 55 to 115 s, 11 measurements of about 15 s; the training times are in the results file). The results file records the command, the commit, the
machine and the sha256 of the tiny model and the judge.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial
from pathlib import Path


BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results" / "dreambooth_prior_study_cpu.json"

# The chapter's recipe (course/08_dreambooth.ipynb asserts that it trains exactly this).
SUBJECT = {"left": "yellow", "right": "green", "images": 6, "data_seed": 1, "backgrounds": ["white", "black"]}
IDENTIFIER, CLASS_NOUN = "sks", "circle"
PHRASE = f"{IDENTIFIER} {CLASS_NOUN}"
RECIPE = {"adapter": "locon", "rank": 8, "targets": "attn-mlp-conv", "batch_size": 4, "lr": 3e-3, "steps": 600,
          "num_class_images": 50, "train_text_encoder": False, "lr_scheduler": "constant", "warmup_steps": 0,
          "max_grad_norm": 0.0, "min_timestep": 0, "max_timestep": None}
MEASURE = {"images_per_prompt": 12, "num_inference_steps": 15, "guidance_scale": 4.0, "seed": 0}
NEW_CONTEXT = "gray"
MEASURES = ("fidelity", "new context", "class kept", "class drift", "drift in context")
OUTCOMES = ("fidelity", "editability", "class kept", "class drift", "drift in context")  # per image, from subject_outcomes
GRID_COLUMNS = 5  # images per block of the picture


def subject_folder(folder: Path) -> Path:
    """The 6 training renders, captioned with the identifier, the class noun and the background."""
    from sdtune.evaluation import split_disc

    if not folder.is_dir():
        images = split_disc.training_images(SUBJECT["left"], SUBJECT["right"], n=SUBJECT["images"], seed=SUBJECT["data_seed"],
                                            backgrounds=SUBJECT["backgrounds"])
        split_disc.write_folder(folder, images)
        for i in range(SUBJECT["images"]):
            (folder / f"{i:04d}.txt").write_text(f"a {PHRASE} on a {SUBJECT['backgrounds'][i % 2]} background")
    return folder


def measure(pipe, judge):
    """The chapter's measurement of a pipeline: `subject_outcomes` with this study's settings."""
    from sdtune.evaluation import split_disc
    from sdtune.evaluation.subject import subject_outcomes

    shows = partial(split_disc.shows, left=SUBJECT["left"], right=SUBJECT["right"])
    return subject_outcomes(pipe, judge, PHRASE, CLASS_NOUN, shows, **MEASURE)


def rates(outcomes: dict, backgrounds: list[str]) -> dict:
    """The measures of the module docstring, as Rates, from `subject_outcomes`' per-image outcomes."""
    from sdtune.evaluation.stats import Rate

    fidelity, editability = outcomes["fidelity"], outcomes["editability"]
    return {
        "fidelity": Rate.of(f for f, b in zip(fidelity, backgrounds) if b in SUBJECT["backgrounds"]),
        "new context": Rate.of(f and e for f, e, b in zip(fidelity, editability, backgrounds) if b == NEW_CONTEXT),
        "class kept": Rate.of(outcomes["class kept"]),
        "class drift": Rate.of(outcomes["class drift"]),
        "drift in context": Rate.of(outcomes["drift in context"]),
    }


def picture_blocks(seen) -> dict[str, list]:
    """The picture's column blocks: seed 0's images of the subject where it was trained, in the new context, and of the
    bare class prompt."""
    subject = lambda background: [im for im, b in zip(seen.subject_images, seen.subject_backgrounds) if b == background]
    bare = seen.class_images[len(seen.outcomes["class kept"]) :]  # the class prompt itself, "a circle", first
    return {f"'a {PHRASE} on a white background' (trained)": subject("white")[:GRID_COLUMNS],
            f"'a {PHRASE} on a {NEW_CONTEXT} background' (new context)": subject(NEW_CONTEXT)[:GRID_COLUMNS],
            f"'a {CLASS_NOUN}' (the class prompt)": bare[:GRID_COLUMNS]}


def run(weight: float, seed: int, work: Path, judge) -> dict:
    """Train (or reuse) one DreamBooth-LoRA run and measure it: per-image outcomes, training seconds, grid images. A
    cached run whose outcomes are not those of `subject_outcomes` now is measured again from its saved adapter, not retrained."""
    import sdtune
    from sdtune.io import write_json
    from sdtune.training import DreamBoothConfig, train

    key = f"prior{weight:g}-seed{seed}"
    cache, out = work / f"{key}.json", work / "runs" / key
    cached = json.loads(cache.read_text()) if cache.is_file() else None
    if cached and set(cached["outcomes"]) == set(OUTCOMES):
        return cached
    adapter = out / f"{out.name}.safetensors"
    if cached and adapter.is_file():
        print(f"{time.strftime('%H:%M:%S')} measuring {key} again (trained before) ...", flush=True)
        seconds, load = cached["train_s"], cached["load_average"]
    else:
        print(f"{time.strftime('%H:%M:%S')} training {key} ...", flush=True)
        pipe = sdtune.load_pipeline("tiny")
        pipe.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        train(DreamBoothConfig(data=str(subject_folder(work / "subject")), out=str(out), seed=seed, overwrite=True,
                               instance_prompt=f"a {PHRASE}", class_prompt=f"a {CLASS_NOUN}", prior_loss_weight=weight,
                               class_data=str(work / "class-images"), **RECIPE), pipe=pipe)
        seconds, load = time.perf_counter() - start, os.getloadavg()[0]
    tuned = sdtune.load_pipeline("tiny")
    tuned.set_progress_bar_config(disable=True)
    sdtune.load_adapter(tuned, adapter, "subject")
    seen = measure(tuned, judge)
    blocks = {}
    for name, images in picture_blocks(seen).items():
        blocks[name] = []
        for i, image in enumerate(images):
            path = work / f"{key}-{len(blocks)}-{i}.png"
            image.save(path)
            blocks[name].append(str(path))
    result = {"train_s": round(seconds, 1), "load_average": load, "outcomes": seen.outcomes,
              "subject_backgrounds": seen.subject_backgrounds, "picture": blocks}
    write_json(cache, result)
    print(f"  trained in {seconds:.0f} s; " + ", ".join(f"{k} {v}" for k, v in rates(result["outcomes"], result["subject_backgrounds"]).items()),
          flush=True)
    return result


def labelled_picture(rows: dict[str, dict[str, list]], scale: int = 2):
    """A grid with its row names on the left and its column blocks named on top, in the image itself."""
    from PIL import Image, ImageDraw

    side, label_w, head_h, gap = 64 * scale, 150, 16, 8
    blocks = list(next(iter(rows.values())))
    block_w = GRID_COLUMNS * side
    picture = Image.new("RGB", (label_w + len(blocks) * (block_w + gap), head_h + len(rows) * side), "white")
    draw = ImageDraw.Draw(picture)
    for j, block in enumerate(blocks):
        draw.text((label_w + j * (block_w + gap) + 2, 2), block, fill="black")
    for i, (row, by_block) in enumerate(rows.items()):
        y = head_h + i * side
        draw.multiline_text((4, y + side // 2 - 12), row, fill="black")
        for j, block in enumerate(blocks):
            for k, image in enumerate(by_block[block]):
                picture.paste(image.resize((side, side), Image.NEAREST), (label_w + j * (block_w + gap) + k * side, y))
    return picture


def main() -> None:
    from sdtune.evaluation.provenance import study_arguments, study_setup

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="0,1", help="prior loss weights (comma-separated; 0 must be among them)")
    study_arguments(parser, "dreambooth-prior-study", RESULTS, seeds="0,1,2,3,4",
                    seeds_help="training seeds (at least 3: the differences are paired over seeds)")
    args = parser.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    if 0.0 not in weights:
        parser.error("--weights must include 0: every weight is compared with prior preservation off")
    seeds, work = study_setup(parser, args, min_seeds=3)

    from PIL import Image

    import sdtune
    from sdtune.evaluation.provenance import (
        JUDGE_WEIGHTS,
        TINY_SD,
        readable,
        write_results,
    )
    from sdtune.evaluation.stats import Rate, seed_difference
    from sdtune.io import staged_file

    judge = sdtune.load_judge(sure=args.judge_sure)
    base = sdtune.load_pipeline("tiny")
    base.set_progress_bar_config(disable=True)
    base_seen = measure(base, judge)
    base_rates = rates(base_seen.outcomes, base_seen.subject_backgrounds)
    runs = {w: {s: run(w, s, work, judge) for s in seeds} for w in weights}

    table, differences = {}, {}
    per_weight = {w: {s: rates(r["outcomes"], r["subject_backgrounds"]) for s, r in by_seed.items()} for w, by_seed in runs.items()}
    for w, per_seed in per_weight.items():
        table[f"{w:g}"] = {
            "train_s": {str(s): runs[w][s]["train_s"] for s in seeds},
            "pooled": {m: Rate(sum(p[m].k for p in per_seed.values()), sum(p[m].n for p in per_seed.values())) for m in MEASURES},
            "per_seed": {str(s): per_seed[s] for s in seeds},
        }
        if w != 0.0:
            differences[f"{w:g}"] = {m: seed_difference([per_seed[s][m] for s in seeds], [per_weight[0.0][s][m] for s in seeds],
                                                        f"prior {w:g}", "prior 0") for m in MEASURES}
    print("base model  " + "  ".join(f"{m} {base_rates[m]}" for m in MEASURES))
    for w, row in table.items():
        print(f"prior {w:<5} " + "  ".join(f"{m} {row['pooled'][m]}" for m in MEASURES) + f"   train s {list(row['train_s'].values())}")
    for w, diffs in differences.items():
        for m, d in diffs.items():
            print(f"{m}: {d.verdict()}")

    rows = {"base model": picture_blocks(base_seen)}
    for w in weights:
        rows[f"prior {'off' if w == 0 else 'on'}, weight {w:g}\ntraining seed {seeds[0]}"] = {
            block: [Image.open(p).convert("RGB") for p in paths] for block, paths in runs[w][seeds[0]]["picture"].items()}
    png = Path(args.out).with_suffix(".png")
    with staged_file(png) as tmp:
        labelled_picture(rows).save(tmp, format="PNG")
        readable(tmp)
    results = {
        "settings": {"subject": SUBJECT, "identifier": IDENTIFIER, "class_noun": CLASS_NOUN, "recipe": RECIPE, "measure": MEASURE,
                     "new_context": NEW_CONTEXT, "weights": weights, "seeds": seeds, "threads": args.threads,
                     "picture": {"file": png.name, "rows": list(rows), "columns": list(next(iter(rows.values())))}},
        "base model": base_rates,
        "prior": table,
        "differences": differences,
    }
    write_results(args.out, {"judge_sure": args.judge_sure} | results, weights=[TINY_SD, JUDGE_WEIGHTS], overwrite=True)
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
