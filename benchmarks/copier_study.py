"""Q30's own recipe over several training seeds: one image pair, overfit A, then B, and B - A applied to new images,
beside the pairs-dataset differential LoRA of chapter 15.

    python benchmarks/copier_study.py [--seeds 0,1,2,3,4] [--threads 1] [--work DIR] [--out FILE]

The document's recipe (Q30): take one image A and the same image edited, B; overfit LoRA A on A, overfit LoRA B on B,
and LoRA B - LoRA A is the edit, to be used on any image "without a prompt". It adds that one pair is unstable and many
pairs are steadier. Here A is a toy scene drawn flat and B the same scene shaded (lit from the top left), B captioned
word for word like A, and every pair shares a composition no caption names (a small object near the top-left corner),
exactly as chapter 15 builds its pairs. Four recipes, each trained per training seed with the same LoRA settings
(every option given, so that the trainer's defaults cannot change the recipe):

- **pairs, B - A**: chapter 15's differential LoRA: LoRA A on 8 flat images, LoRA B on the 8 shaded ones, B - A exact;
- **pairs, copier**: the copier on the 8 pairs, which separates "one pair vs many" from "copier vs subtraction";
- **one pair, B - A**: the document's recipe: one pair, overfit A, overfit B (same seed, same start), subtract;
- **one pair, copier**: the same pair, overfit A, fuse it into the model, train a new LoRA on B on top: what it learns
  is what B adds to the model that already draws A, so it is B - A without a subtraction (DiffSynth-Studio's
  "copier"; `train_differential(copier=True)`).

The one-pair recipes use pair i of the 8 for training seed i, so the seeds also sample which image is overfit.
Each edit is applied at scales 1, 2 and 3 to 24 base prompts that never mention shading (new images: every base shape and
colour, the backgrounds in turn), 10 DDIM steps, guidance 4, sampling seed 0, and so are the one-pair parts A and B
alone at scale 1. The pair's own caption is sampled 8 times too (8 starting noises), to tell an edit that learned
"shade everything" from one that learned "shade this object". Measured per image:

- **shaded (judge)**: the judge's style head says "shaded"; **shaded (checker)**: the pixel-rule checker
  (`sdtune.evaluation.checker`, no learned weights) says so: its rule is how much darker the far side is than the lit
  top left;
- **content**: shape, colour and background all as prompted (judge);
- **area**: the object's share of the image (its coloured pixels: every base colour is saturated, every background a
  gray); the edit should not change it, the one pair's composition (small objects) should not leak into it.

Rates are k/n pooled over seeds with Wilson 95% intervals; a difference between two recipes (or a recipe and the base
model) is the mean of the per-seed differences with a t-interval over seeds (`sdtune.evaluation.stats.seed_difference`),
and so is the area change |area / base area - 1|. Each seed's outcomes (and its images, for the grid) are cached in
--work, so a rerun skips finished seeds. The results file records the command, the commit, the machine and the sha256
of the tiny model and the judge; beside it, a labelled grid of seed 0's images.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "copier_study_cpu.json"

# chapter 15's LoRA settings, every option given (the tiny model's `train lora` defaults are another recipe)
LORA = {"adapter": "lora", "targets": "attn", "rank": 4, "alpha": 4.0, "steps": 80, "batch_size": 8, "lr": 2e-3,
        "max_timestep": 1000, "min_timestep": 0, "lr_scheduler": "constant", "warmup_steps": 0, "max_grad_norm": 0.0}
N_PAIRS, PAIR_SEED, CORNER_SEED = 8, 10, 0
EVAL_STEPS, GUIDANCE, SAMPLE_SEED = 10, 4.0, 0
SCALES = (1.0, 2.0, 3.0)
OWN_IMAGES = 8  # the one pair's own caption, 8 images (each its own starting noise)
RECIPES = {  # name: (pairs used, copier)
    "pairs, B - A": ("all", False),
    "one pair, B - A": ("one", False),
    "one pair, copier": ("one", True),
    "pairs, copier": ("all", True),
}
ATTRIBUTES = ("shape", "colour", "background")
MEASURES = ("shaded", "shaded (checker)", "content", "own shaded")
GRID_ROWS = ("base", "pairs, B - A, x2", "one pair, B - A, x1", "one pair, B - A, x2", "one pair, B - A, x3",
             "one pair, copier, x1", "one pair, copier, x2", "one pair, B - A: A alone", "one pair, B - A: B alone")
GRID_COLUMNS = (0, 4, 7, 11, 14, 15, 20, 21)  # 8 of the 24 prompts: every shape and background (chapter 15's)
OWN_COLUMNS = 2  # and the first images of the pair's own caption


def pairs() -> list:
    """Chapter 15's pairs: (flat scene, shaded scene), small and near the top-left corner."""
    from sdtune.data import toyworld

    rng = np.random.default_rng(CORNER_SEED)
    out = []
    for a, b in toyworld.paired_scenes(N_PAIRS, seed=PAIR_SEED, kind="shading"):
        corner = {"cx": float(rng.uniform(15, 21)), "cy": float(rng.uniform(15, 21)), "radius": float(rng.uniform(9, 12))}
        out.append((dataclasses.replace(a, **corner), dataclasses.replace(b, **corner)))
    return out


def write_pairs(chosen: list, folder: Path) -> tuple[Path, Path]:
    """Folders A (flat) and B (shaded) with the same names and A's captions in both."""
    from sdtune.data import toyworld

    folder_a = toyworld.write_dataset([a for a, _ in chosen], folder / "flat")
    folder_b = toyworld.write_dataset([b for _, b in chosen], folder / "shaded")
    for txt_a in folder_a.glob("*.txt"):
        (folder_b / txt_a.name).write_text(txt_a.read_text())
    return folder_a, folder_b


def eval_scenes() -> list:
    """Chapter 15's 24 prompts: each base shape x colour once, the backgrounds in turn."""
    from sdtune.data import toyworld

    return [s for i, s in enumerate(toyworld.base_prompts()) if i % 3 == (i // 3) % 3]


def own_scene(pair_index: int):
    """The one pair's caption as a prompt (the scene centred: neither the judge nor the caption reads a position)."""
    return dataclasses.replace(pairs()[pair_index][0], cx=32.0, cy=32.0, radius=15.0)


def measure(judge, images, scenes: list) -> dict[str, list]:
    """Per image: judge and checker say shaded, the judge names shape, colour and background right, the object's area."""
    from sdtune.evaluation.checker import check_all
    from sdtune.evaluation.judge import to_tensor

    x = to_tensor(images)
    mask = ((x.amax(1) - x.amin(1)) > 0.12).float()  # coloured pixels: every base colour is saturated, every background gray
    seen = judge.predict(x)
    checked = check_all(images)
    return {"shaded": [s == "shaded" for s in seen["style"]],
            "shaded (checker)": [s == "shaded" for s in checked["style"]],
            "content": [all(seen[a][i] == getattr(s, a) for a in ATTRIBUTES) for i, s in enumerate(scenes)],
            "area": mask.mean((1, 2)).tolist()}


def run_seed(seed: int, pipe, judge, work: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Every recipe for one training seed: ({condition: per-image outcomes}, {condition: the 24 images, uint8})."""
    import sdtune
    from sdtune.data import toyworld
    from sdtune.formats.adapters import remove_adapter, set_adapter_scale
    from sdtune.methods.differential import train_differential
    from sdtune.training import TrainConfig

    scenes = eval_scenes()
    prompts = [toyworld.caption(s) for s in scenes]
    everything = pairs()
    one = [everything[seed % N_PAIRS]]
    own = own_scene(seed % N_PAIRS)
    pictures = {}

    def sample_with(name: str, path: Path | None, scale: float = 1.0) -> dict:
        if path is not None:
            sdtune.load_adapter(pipe, path, "x")
            set_adapter_scale(pipe, "x", scale)
        try:
            images = sdtune.sample(pipe, prompts, EVAL_STEPS, guidance_scale=GUIDANCE, seed=SAMPLE_SEED)
            own_images = sdtune.sample(pipe, [toyworld.caption(own)] * OWN_IMAGES, EVAL_STEPS, guidance_scale=GUIDANCE,
                                       seed=SAMPLE_SEED)
        finally:
            if path is not None:
                remove_adapter(pipe, "x")
        pictures[name] = np.stack([np.asarray(im) for im in images])
        pictures[f"{name} (own)"] = np.stack([np.asarray(im) for im in own_images])
        return {**measure(judge, images, scenes), "own shaded": measure(judge, own_images, [own] * OWN_IMAGES)["shaded"]}

    shutil.rmtree(work / f"seed{seed}", ignore_errors=True)  # a seed that did not finish starts again
    data = {"all": write_pairs(everything, work / f"seed{seed}" / "data" / "all"),
            "one": write_pairs(one, work / f"seed{seed}" / "data" / "one")}
    results = {"base": sample_with("base", None)}
    timing = {}
    for name, (which, copier) in RECIPES.items():
        out = work / f"seed{seed}" / name.replace(", ", "_").replace(" ", "")
        cfg = TrainConfig(data="", out=str(out), seed=seed, **LORA)
        start = time.perf_counter()
        train_differential(pipe, cfg, *data[which], copier=copier)
        timing[name] = time.perf_counter() - start
        for s in SCALES:
            results[f"{name}, x{s:g}"] = sample_with(f"{name}, x{s:g}", out / f"{out.name}.safetensors", s)
        if name == "one pair, B - A":  # the overfit parts alone: what each learned besides its rendering
            for part in ("A", "B"):
                label = f"{name}: {part} alone"
                results[label] = sample_with(label, out.with_name(out.name + "-parts") / part / f"{part}.safetensors")
    return {"conditions": results, "train_seconds": timing, "one_pair": toyworld.caption(one[0][0])}, pictures


def summarise(per_seed: dict[int, dict]) -> dict:
    """Pooled rates, per-seed figures, and the differences over seeds that the chapter reads."""
    from sdtune.evaluation.stats import Rate, seed_difference

    seeds = sorted(per_seed)
    names = list(per_seed[seeds[0]]["conditions"])
    base_area = {s: float(np.mean(per_seed[s]["conditions"]["base"]["area"])) for s in seeds}
    conditions = {}
    for name in names:
        rows = {s: per_seed[s]["conditions"][name] for s in seeds}
        conditions[name] = {m: {"pooled": Rate.of(x for r in rows.values() for x in r[m]),
                                "per_seed": {str(s): Rate.of(r[m]) for s, r in rows.items()}} for m in MEASURES}
        area = {s: float(np.mean(r["area"])) for s, r in rows.items()}
        conditions[name]["area"] = {"mean": float(np.mean(list(area.values()))), "per_seed": {str(s): a for s, a in area.items()}}
        change = {str(s): abs(area[s] / base_area[s] - 1) for s in seeds}
        conditions[name]["area change"] = {"mean": float(np.mean(list(change.values()))), "per_seed": change}

    def per_seed_values(condition: str, measure_: str) -> list:
        values = conditions[condition][measure_]["per_seed"]
        return [values[str(s)] for s in seeds]

    def differ(a: str, b: str, measure_: str) -> dict:
        d = seed_difference(per_seed_values(a, measure_), per_seed_values(b, measure_), a, b)
        return {"a_condition": a, "b_condition": b, "measure": measure_, **d.as_dict()}

    compared = [(f"{x}, x{s:g}", f"{y}, x{s:g}") for s in SCALES for x, y in
                (("one pair, B - A", "pairs, B - A"), ("one pair, copier", "pairs, B - A"), ("one pair, copier", "one pair, B - A"),
                 ("pairs, copier", "pairs, B - A"), ("one pair, copier", "pairs, copier"))]
    compared += [(f"{r}, x{s:g}", "base") for r in RECIPES for s in SCALES]
    compared += [(f"one pair, B - A: {p} alone", "base") for p in ("A", "B")]
    compared += [("one pair, B - A: B alone", "one pair, B - A, x1")]
    differences = [differ(a, b, m) for a, b in compared for m in (*MEASURES, "area change")] if len(seeds) >= 3 else []
    return {"conditions": conditions, "differences": differences,
            "train_seconds": {str(s): per_seed[s]["train_seconds"] for s in seeds},
            "seed_seconds": {str(s): per_seed[s]["seconds"] for s in seeds},
            "one_pair": {str(s): per_seed[s]["one_pair"] for s in seeds}}


def grid(pictures: dict[str, np.ndarray], path: Path, seed: int, own_caption: str) -> None:
    """Seed `seed`'s images: a row per condition, a column per prompt (8 new ones, then the pair's own), named in the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sdtune.data import toyworld
    from sdtune.evaluation.provenance import write_figure

    prompts = [toyworld.caption(s) for s in eval_scenes()]
    def short(prompt: str) -> str:
        return prompt.replace("a ", "", 1).replace(" on a ", "\n").replace(" background", "")

    columns = len(GRID_COLUMNS) + OWN_COLUMNS
    fig, axes = plt.subplots(len(GRID_ROWS), columns, figsize=(1.3 * columns + 1.6, 1.3 * len(GRID_ROWS)))
    for row, name in zip(axes, GRID_ROWS):
        shown = [pictures[name][i] for i in GRID_COLUMNS] + list(pictures[f"{name} (own)"][:OWN_COLUMNS])
        for ax, image in zip(row, shown):
            ax.imshow(image); ax.set_xticks([]); ax.set_yticks([])
        row[0].set_ylabel(name.replace(": ", ":\n").replace(", x", "\nx"), fontsize=7, rotation=0, ha="right", va="center")
        for ax in row[len(GRID_COLUMNS):]:
            for side in ax.spines.values():
                side.set_edgecolor("C3"); side.set_linewidth(1.5)
    for ax, i in zip(axes[0], GRID_COLUMNS):
        ax.set_title(short(prompts[i]), fontsize=7)
    for k, ax in enumerate(axes[0][len(GRID_COLUMNS):]):
        ax.set_title(f"own caption ({k + 1}):\n{short(own_caption).split(chr(10))[0]}", fontsize=7, color="C3")
    fig.suptitle(f"copier study, training seed {seed}: new prompts (none mentions shading), then the one pair's own caption "
                 "(red frames); sampling seed 0", fontsize=9)
    plt.tight_layout()
    write_figure(path, fig, dpi=72)


def main() -> None:
    from sdtune.evaluation.provenance import (JUDGE_WEIGHTS, TINY_SD, seed_outcomes, seed_pictures, start_tiny_study,
                                             study_parser, write_results)

    parser = study_parser(__doc__, "copier-study", RESULTS, seeds="0,1,2,3,4", seeds_help="training seeds (at least 3 for the differences)")
    study = start_tiny_study(parser, parser.parse_args(), min_seeds=1)
    args, seeds, work, pipe, judge = study.args, study.seeds, study.work, study.pipe, study.judge
    per_seed = {}
    for seed in seeds:
        per_seed[seed] = seed_outcomes(work, seed, lambda: run_seed(seed, pipe, judge, work))
        shaded = {k: sum(v["shaded"]) for k, v in per_seed[seed]["conditions"].items()}
        print(f"seed {seed}: {per_seed[seed]['seconds']:.0f} s; judge says shaded, of 24: {shaded}", flush=True)
    summary = summarise(per_seed)
    settings = {"lora": LORA, "pairs": N_PAIRS, "pair_seed": PAIR_SEED, "corner_seed": CORNER_SEED, "seeds": seeds,
                "scales": list(SCALES), "eval_prompts": len(eval_scenes()), "eval_steps": EVAL_STEPS, "guidance": GUIDANCE,
                "sample_seed": SAMPLE_SEED, "own_prompt_images": OWN_IMAGES,
                "recipes": {k: {"pairs": v[0], "copier": v[1]} for k, v in RECIPES.items()}}
    out = Path(args.out)
    seconds = sum(p["seconds"] for p in per_seed.values())  # each seed's training and sampling, also for cached seeds
    write_results(out, {"judge_sure": args.judge_sure, "settings": settings, **summary, "seconds": seconds},
                  weights=[TINY_SD, JUDGE_WEIGHTS], overwrite=True)
    with np.load(seed_pictures(work, seeds[0])) as pictures:
        grid(dict(pictures), out.with_name(out.stem + "_grid.png"), seeds[0], per_seed[seeds[0]]["one_pair"])
    print(f"wrote {out} and its grid")
    for name, c in summary["conditions"].items():
        print(f"  {name:<26} shaded {c['shaded']['pooled']!s:<22} checker {c['shaded (checker)']['pooled']!s:<22} "
              f"content {c['content']['pooled']!s:<22} own {c['own shaded']['pooled']!s:<20} "
              f"area {100 * c['area']['mean']:.1f}% (change {100 * c['area change']['mean']:.0f}%)")
    for d in summary["differences"]:
        if d["measure"] in ("shaded", "area change"):
            print(f"  {d['measure']:<12} {d['verdict']}")


if __name__ == "__main__":
    main()
