"""Merge, switch and composite (Zhong et al. 2024, "Multi-LoRA Composition for Image Generation"): where each one wins.

    python benchmarks/composition_study.py --threads 2    # its results file records how long it took

Four toy concepts, one LoRA each (a pink colour, a checkerboard background, a dotted style, a star shape), combined
2, 3 and 4 at a time, each prompt asking for every concept of its combination. (The paper goes to 5 LoRAs; the toy
world has four attributes, so a fifth concept would replace one of the four, and no prompt could ask for all five.)
Two sets of four LoRAs, both trained here with one recipe strong enough that each LoRA alone shows its concept in
most held-out prompts (LoCon rank 16 on attention, MLP and convolution layers, batch 16, learning rate 3e-3; the
style on t < 600 as the tiny model's style defaults, the rest on every timestep), on 64 images each. The steps per
concept (`TRAIN_STEPS`) were picked in exploration runs (training seeds 1 and 2, 32 other held-out prompts each; the
tiny model's defaults, rank 8 at 1e-3 and batch 32, showed pink in half of them): the star grows with training
(seed 1: 23/32 at 400 steps, 25/32 at 600, 30/32 at 800); pink peaks and then fades (seed 1: 18/32 at 200 steps,
27/32 at 250 and 300; seed 2: 29/32 at 300, 13/32 at 400).

- **separate**: each LoRA's images show its concept with every other attribute random, so each update carries its
  concept and little else;
- **overlapping**: the same concepts with every other attribute *fixed* (the pink LoRA sees only pink circles on
  white, the star LoRA only yellow stars on gray, ...), as a character LoRA is trained on one person in one outfit
  and style. Each update then also pushes a shape, a colour, a background or a style that another LoRA's concept
  contradicts: the updates overlap, the paper's hard case.

Each run is also kept at a third of its steps, the **short** (weaker) version. Every method draws the same prompts
from the same starting noise (paired), 25 DDIM steps, guidance 2.5 (where the tiny model's LoRA recipes are
sampled): merge (all updates added), switch every 5 steps (the paper's setting) and every step, composite
(predictions averaged). The strength map adds weight 2 (each update doubled) and the short
trainings. The judge says which asked concepts each image shows; the independent pixel checker
(`sdtune.evaluation.checker`) says it too, and the images where the two disagree are counted. Figures, as in the
paper's evaluation: **all elements present** (the image shows every asked concept) and concept presence (pooled and
per concept), each k of n with a Wilson 95% interval, and each method against merge as a paired difference over the
training seeds (t-interval: the verdict) and over the same images (Newcombe).

Seeds: each seed is a TRAINING seed: it trains its own eight LoRAs (both sets, the short versions kept on the way)
and draws its own prompts and starting noise. Differences over the seeds (a t-interval over the per-seed rates) cover
both the training and the sampling; differences over the same images (Newcombe) cover the sampling only. Five seeds
by default: with three, merge's rate moved from 4/12 to 9/12 between seeds while switch and composite stayed near 0,
and the t-interval (t = 4.30 for 3 seeds, 2.78 for 5) left most of those differences unresolved.
About 17 minutes per seed on one CPU thread. Once one seed has finished (the training data then exist), other seeds
can run in parallel processes on the same --work folder, each writing only its own files; a last run with every seed
then assembles the results from their caches.

Writes `benchmarks/results/composition_study_cpu.json` (with provenance and the sha256 of every LoRA it measured)
and `..._examples.png`, a labelled grid (training seed 0). Each finished seed is kept in `--work`
(sdtune.evaluation.provenance.seed_outcomes), so a rerun adds only the missing seeds.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import shutil
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import sdtune
from sdtune.composition import compose
from sdtune.data import toyworld
from sdtune.evaluation import checker
from sdtune.evaluation.composition import combination_scenes
from sdtune.evaluation.provenance import (
    JUDGE_WEIGHTS,
    TINY_SD,
    seed_outcomes,
    seed_pictures,
    sha256,
    study_arguments,
    study_setup,
    write_figure,
    write_results,
)
from sdtune.evaluation.stats import Rate, paired_difference, seed_difference
from sdtune.formats import load_adapter
from sdtune.training import TrainConfig, train

RESULTS = Path(__file__).parent / "results" / "composition_study_cpu.json"
CONCEPTS = {"pink": ("colour", "pink"), "checkerboard": ("background", "checkerboard"), "dotted": ("style", "dotted"),
            "star": ("shape", "star")}  # LoRA -> (toy-world attribute, the novel value it teaches)
NAMES = list(CONCEPTS)
GUIDANCE = 2.5  # the tiny model's LoRA recipes are sampled at 2.5 (sdtune.defaults sample_guidance)
STEPS = sdtune.sampling.TINY_STEPS  # 25 DDIM steps
TRAIN_IMAGES = 64
RECIPE = {"adapter": "locon", "targets": "attn-mlp-conv", "rank": 16, "batch_size": 16, "lr": 3e-3}
MAX_TIMESTEP = {"pink": 1000, "checkerboard": 1000, "dotted": 600, "star": 1000}
TRAIN_STEPS = {"pink": 300, "checkerboard": 200, "dotted": 300, "star": 800}  # each LoRA's run; its short version: a third
# the overlapping set: every other attribute fixed, each to a value that another LoRA's concept contradicts
NARROW = {
    "pink": {"shapes": ["circle"], "backgrounds": ["white"]},                                 # pink circles on white
    "checkerboard": {"shapes": ["square"], "colours": ["red"]},                               # red squares on a checkerboard
    "dotted": {"shapes": ["triangle"], "colours": ["blue"], "backgrounds": ["black"]},        # dotted blue triangles on black
    "star": {"colours": ["yellow"], "backgrounds": ["gray"]},                                 # yellow stars on gray
}
METHODS = {"merge": ("merge", 1), "switch every 5": ("switch", 5), "switch every step": ("switch", 1),
           "composite": ("composite", 1)}  # label -> (compose method, switch_step)
MAP_METHODS = ("merge", "switch every 5", "composite")
SETS = ("separate", "overlapping", "separate, short", "overlapping, short")
ADAPTER_IDS = {"separate": "sep", "overlapping": "ovl", "separate, short": "sep_short", "overlapping, short": "ovl_short"}


def adapter(lora_set: str, name: str) -> str:
    """The adapter name of one LoRA of one set in the pipeline: ovl_pink, ..."""
    return f"{ADAPTER_IDS[lora_set]}_{name}"


def training_scenes(kind: str, name: str) -> list[toyworld.Scene]:
    """The 64 training scenes of one LoRA: its concept, the other attributes random (separate) or fixed (overlapping)."""
    attribute, value = CONCEPTS[name]
    return toyworld.sample_scenes(TRAIN_IMAGES, 1, **{f"{attribute}s": [value]}, **(NARROW[name] if kind == "overlapping" else {}))


def train_sets(pipe, work: Path, seed: int) -> dict[str, dict[str, Path]]:
    """One training seed's LoRAs: both sets at a third of their steps and at their steps (one run each, resumed from
    its own checkpoint), cached in `work`."""
    files: dict[str, dict[str, Path]] = {s: {} for s in SETS}
    for kind in ("separate", "overlapping"):
        for name in NAMES:
            steps = TRAIN_STEPS[name]
            short = steps // 3
            stem = work / f"seed{seed}-{kind}-{name}"
            full, weak = Path(f"{stem}-{steps}.safetensors"), Path(f"{stem}-{short}.safetensors")
            files[kind][name], files[f"{kind}, short"][name] = full, weak
            if full.is_file() and weak.is_file():
                continue
            data = work / f"{kind}-{name}-data"  # the same 64 images for every seed: the seed varies the training
            if not data.is_dir():
                toyworld.write_dataset(training_scenes(kind, name), data)
            out = Path(f"{stem}-run")
            if out.exists():
                shutil.rmtree(out)
            start = time.time()
            for s, resume, target in ((short, False, weak), (steps, True, full)):
                result = train(TrainConfig(data=str(data), out=str(out), seed=seed, steps=s, checkpoint_every=short,
                                           resume=resume, max_timestep=MAX_TIMESTEP[name], **RECIPE), pipe=pipe)
                shutil.copy(result / f"{out.name}.safetensors", target)
            shutil.rmtree(out)
            print(f"seed {seed}: trained {kind} {name} ({short} and {steps} steps) in {time.time() - start:.0f} s", flush=True)
    return files


def prompts_for(n: int, seed: int, per_combination: int) -> dict[tuple[str, ...], list[toyworld.Scene]]:
    """For every combination of n concepts, the scenes its prompts ask for, `per_combination` of them (the single
    combination of all four gets as many as the others together, at most 8). Each seed its own prompts."""
    combos = list(itertools.combinations(NAMES, n))
    each = per_combination if len(combos) > 1 else min(8, per_combination * 4)
    return {names: combination_scenes({k: CONCEPTS[k] for k in names}, each, seed=1000 * seed + 10 * n + c)
            for c, names in enumerate(combos)}


def judged(images, asked: list[tuple[tuple[str, ...], toyworld.Scene]], judge) -> list[dict]:
    """Per image: which asked concepts the judge sees, all of them, the whole prompt, and the checker's view."""
    seen, rules = judge.predict(images), checker.check_all(images)
    rows = []
    for i, (names, scene) in enumerate(asked):
        hits = [seen[CONCEPTS[k][0]][i] == CONCEPTS[k][1] for k in names]
        by_rules = [rules[CONCEPTS[k][0]][i] == CONCEPTS[k][1] for k in names]
        rows.append({"hits": hits, "all": all(hits), "checker_all": all(by_rules), "agree": hits == by_rules,
                     "prompt_kept": all(seen[a][i] == getattr(scene, a) for a in toyworld.ATTRIBUTES)})
    return rows


def draw(pipe, adapters: list[str], label: str, weight: float, prompts: list[str], seed: int):
    method, switch_step = METHODS[label]
    with compose(pipe, adapters, method, [weight] * len(adapters), switch_step=switch_step) as extra:
        return sdtune.sample(pipe, prompts, STEPS, GUIDANCE, seed=seed, **extra)


def run_cell(pipe, judge, lora_set: str, n: int, label: str, weight: float, asked: dict, seed: int) -> tuple[list[dict], list]:
    """One cell of the grid for one seed: one pipeline call per combination (the same prompts and starting noise for
    every set, method and weight: paired)."""
    rows, images = [], []
    for c, (names, scenes) in enumerate(asked.items()):
        start = time.perf_counter()
        drawn = draw(pipe, [adapter(lora_set, k) for k in names], label, weight, [toyworld.caption(s) for s in scenes],
                     seed=1000 * seed + 100 * n + c)
        seconds = (time.perf_counter() - start) / len(scenes)
        for row, scene in zip(judged(drawn, [(names, s) for s in scenes], judge), scenes):
            rows.append(row | {"set": lora_set, "n": n, "method": label, "weight": weight, "seed": seed,
                               "combination": "+".join(names), "prompt": toyworld.caption(scene), "seconds": seconds})
        images += drawn
    return rows, images


def run_alone(pipe, judge, lora_set: str, seed: int, prompts: int) -> list[dict]:
    """Each LoRA alone (weight 1) on held-out prompts asking for its concept: the ceiling, and the 85% bar."""
    rows = []
    for name in NAMES:
        asked = combination_scenes({name: CONCEPTS[name]}, prompts, seed=30_000 + 100 * seed)
        with compose(pipe, [adapter(lora_set, name)], "merge", [1.0]):
            images = sdtune.sample(pipe, [toyworld.caption(s) for s in asked], STEPS, GUIDANCE, seed=7 + seed)
        for row in judged(images, [((name,), s) for s in asked], judge):
            rows.append({"set": lora_set, "lora": name, "seed": seed, "shown": row["all"], "checker": row["checker_all"]})
    return rows


@torch.no_grad()
def interactions(pipe, lora_set: str, weight: float) -> dict:
    """How the four LoRAs' effects on the guided noise prediction combine, at 4 noise levels, for a prompt asking for all
    four concepts. d_i = eps(W_0 + w dW_i) - eps(W_0). overlap: the mean cosine between two LoRAs' d_i (0: they push
    in unrelated directions); merge_interaction: |d_merge - sum_i d_i| / |sum_i d_i| (0: the updates add without
    interfering). Sizes against |eps(W_0)|: one LoRA's effect (the mean), merge's, composite's (which is exactly
    mean_i d_i, since it averages the n predictions)."""
    g = torch.Generator().manual_seed(0)
    size = pipe.unet.config.sample_size
    z = torch.randn(4, pipe.unet.config.in_channels, size, size, generator=g)
    t = torch.tensor([900, 600, 300, 100])
    cond, uncond = pipe.encode_prompt(["a dotted pink star on a checkerboard background"] * 4, "cpu", 1, True)
    context = torch.cat([uncond, cond])

    def guided() -> torch.Tensor:
        u, c = pipe.unet(torch.cat([z, z]), torch.cat([t, t]), encoder_hidden_states=context).sample.chunk(2)
        return u + GUIDANCE * (c - u)

    names = [adapter(lora_set, k) for k in NAMES]
    pipe.disable_lora()
    eps0 = guided()
    pipe.enable_lora()
    d = {}
    for name in names:
        with compose(pipe, [name], "merge", [weight]):
            d[name] = (guided() - eps0).flatten()
    with compose(pipe, names, "merge", [weight] * len(names)):
        merged = (guided() - eps0).flatten()
    with compose(pipe, names, "composite", [weight] * len(names)):
        composite = (guided() - eps0).flatten()
    total = sum(d.values())
    cosines = [float(torch.nn.functional.cosine_similarity(d[a], d[b], dim=0)) for a, b in itertools.combinations(names, 2)]
    return {"overlap": float(np.mean(cosines)), "cosines": cosines,
            "merge_interaction": float((merged - total).norm() / total.norm()),
            "one_size": float(torch.stack([v.norm() for v in d.values()]).mean() / eps0.norm()),
            "merge_size": float(merged.norm() / eps0.norm()), "composite_size": float(composite.norm() / eps0.norm())}


def all_per_seed(rows: list[dict], seeds: list[int]) -> list[Rate]:
    """All elements present, one rate per training seed (in the order of `seeds`)."""
    return [Rate.of(r["all"] for r in rows if r["seed"] == s) for s in seeds]


def summary(rows: list[dict], seeds: list[int]) -> dict:
    """All elements, concept presence (pooled and per concept), whole prompt and the checker's view, pooled over the
    seeds; all elements per seed."""
    asked = sorted({k for r in rows for k in r["combination"].split("+")}, key=NAMES.index)
    return {
        "all": Rate.of(r["all"] for r in rows),
        "all_per_seed": all_per_seed(rows, seeds),
        "presence": Rate.of(h for r in rows for h in r["hits"]),
        "per_concept": {k: Rate.of(h for r in rows for name, h in zip(r["combination"].split("+"), r["hits"]) if name == k)
                        for k in asked},
        "prompt_kept": Rate.of(r["prompt_kept"] for r in rows),
        "checker_all": Rate.of(r["checker_all"] for r in rows),
        "judge_checker_agree": Rate.of(r["agree"] for r in rows),
        "seconds_per_image": float(np.mean([r["seconds"] for r in rows])),
    }


def compare(by_method: dict[str, list[dict]], seeds: list[int]) -> dict:
    """Each method against merge on all elements: over the training seeds (t-interval; the verdict) and over the same
    images (Newcombe; the sampling only). The winner is the best method when its difference over the seeds with every
    other method excludes zero, else "not resolved"."""
    def over_seeds(a: str, b: str):
        return replace(seed_difference(all_per_seed(by_method[a], seeds), all_per_seed(by_method[b], seeds), a, b),
                       method=f"paired over {len(seeds)} training seeds (t-interval)")

    out = {}
    for label, rows in by_method.items():
        if label != "merge":
            out[f"{label} - merge"] = {
                "seeds": over_seeds(label, "merge"),
                "images": paired_difference([r["all"] for r in rows], [r["all"] for r in by_method["merge"]], label, "merge"),
            }
    rates = {label: float(np.mean([r["all"] for r in rows])) for label, rows in by_method.items()}
    best = max(rates, key=rates.get)
    beaten = {other: over_seeds(best, other) for other in by_method if other != best}
    out["winner"] = best if all(d.resolved for d in beaten.values()) else "not resolved"
    out["best"] = best
    out["best_vs_others"] = {k: d.verdict() for k, d in beaten.items()}
    return out


def examples_png(path: Path, examples: dict) -> None:
    """A labelled grid: one prompt asking for all four concepts, every method (rows) and set / weight (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = sorted({(s, w) for s, _, w in examples}, key=lambda c: (SETS.index(c[0]), c[1]))
    labels = list(METHODS)
    fig, axes = plt.subplots(len(labels), len(columns), figsize=(1.9 * len(columns), 2.1 * len(labels)), squeeze=False)
    for i, label in enumerate(labels):
        for j, (lora_set, weight) in enumerate(columns):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if (lora_set, label, weight) not in examples:
                ax.axis("off")
                continue
            image, row = examples[lora_set, label, weight]
            ax.imshow(image)
            marks = " ".join(("✓" if h else "✗") + k[:4] for k, h in zip(row["combination"].split("+"), row["hits"]))
            ax.set_xlabel(marks + ("" if row["agree"] else "\nchecker disagrees"), fontsize=7,
                          color="black" if row["agree"] else "red")
            if i == 0:
                ax.set_title(f"{lora_set}\nweight {weight:g}", fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=9)
    first = next(iter(examples.values()))[1]
    fig.suptitle(f"'{first['prompt']}' (4 LoRAs, training seed {first['seed']}): the judge's verdict per asked concept",
                 fontsize=9)
    fig.tight_layout()
    write_figure(path, fig, dpi=80)


def run_seed(seed: int, pipe, judge, work: Path, args: argparse.Namespace, weights: list[float]) -> tuple[dict, dict]:
    """One training seed: train its eight LoRAs (and their short versions), then measure each alone, their
    interactions and every cell of the grid on the seed's own prompts. Returns (outcomes, pictures)."""
    start = time.time()
    files = train_sets(pipe, work, seed)
    train_seconds = time.time() - start
    with warnings.catch_warnings():  # peft notes that the UNet already holds adapters: here that is the point
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        for lora_set in SETS:
            for name in NAMES:
                load_adapter(pipe, files[lora_set][name], adapter(lora_set, name))
    alone = [row for lora_set in SETS for row in run_alone(pipe, judge, lora_set, seed, args.alone)]
    effects = {f"{s}, weight {w:g}": interactions(pipe, s, w) for s in SETS[:2] for w in (1.0, *weights)}
    effects |= {f"{s}, weight 1": interactions(pipe, s, 1.0) for s in SETS[2:]}

    # (set, n, method, weight): the paper's setting at weight 1, then the strength map (weights, short training)
    cells = [(s, n, m, 1.0) for s in SETS[:2] for n in (2, 3, 4) for m in METHODS]
    cells += [(s, n, m, w) for s in SETS[:2] for w in weights for n in (2, 4) for m in MAP_METHODS]
    cells += [(s, n, m, 1.0) for s in SETS[2:] for n in (2, 4) for m in MAP_METHODS]
    asked = {n: prompts_for(n, seed, args.prompts) for n in (2, 3, 4)}
    rows, pictures, examples = [], {}, []
    for lora_set, n, label, weight in cells:
        cell_rows, images = run_cell(pipe, judge, lora_set, n, label, weight, asked[n], seed)
        rows += cell_rows
        if n == 4 and lora_set in SETS[:2]:
            pictures[str(len(examples))] = np.asarray(images[0])
            examples.append({"set": lora_set, "method": label, "weight": weight, "row": cell_rows[0]})
        print(f"seed {seed}  {lora_set:<19} n={n} {label:<18} w={weight:g}: all elements "
              f"{Rate.of(r['all'] for r in cell_rows)}  ({time.time() - start:.0f} s)", flush=True)
    pipe.delete_adapters([adapter(s, k) for s in SETS for k in NAMES])
    loras = {f"{s} {k}": {"steps": TRAIN_STEPS[k] // 3 if "short" in s else TRAIN_STEPS[k], "sha256": sha256(files[s][k])}
             for s in SETS for k in NAMES}
    return ({"alone": alone, "rows": rows, "interactions": effects, "examples": examples, "loras": loras,
             "train_seconds": train_seconds, "images_per_cell": {n: sum(len(v) for v in a.values()) for n, a in asked.items()}},
            pictures)


def mean_effects(per_seed: list[dict]) -> dict:
    """The interaction measures averaged over the training seeds (each seed's are kept too)."""
    return {key: {m: (np.mean([e[key][m] for e in per_seed], axis=0).tolist() if m == "cosines"
                      else float(np.mean([e[key][m] for e in per_seed])))
                  for m in per_seed[0][key]}
            for key in per_seed[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2,
                        help="prompts per combination and seed (the combination of all four: 4x, at most 8; default 2)")
    parser.add_argument("--alone", type=int, default=12, help="held-out prompts per LoRA and seed, each LoRA alone (default 12)")
    parser.add_argument("--weights", default="2", help="the strength map's LoRA weights besides 1, comma-separated (default 2)")
    study_arguments(parser, "composition-study", RESULTS, seeds="0,1,2,3,4",
                    seeds_help="training seeds: each trains its own LoRAs and draws its own prompts and noise")
    args = parser.parse_args()
    try:
        weights = [float(w) for w in args.weights.split(",") if w]
    except ValueError:
        parser.error(f"--weights {args.weights!r}: give comma-separated numbers, e.g. 2 or 1.5,2")
    if args.prompts < 1 or args.alone < 1:
        parser.error("--prompts and --alone must be at least 1")
    seeds, work = study_setup(parser, args, min_seeds=3)
    start = time.time()

    pipe, judge = sdtune.load_pipeline("tiny"), sdtune.load_judge(sure=args.judge_sure)
    pipe.set_progress_bar_config(disable=True)
    per_seed = {}
    for seed in seeds:
        per_seed[seed] = seed_outcomes(work, seed, functools.partial(run_seed, seed, pipe, judge, work, args, weights))
    rows = [r for seed in seeds for r in per_seed[seed]["rows"]]
    alone = [r for seed in seeds for r in per_seed[seed]["alone"]]
    alone_rates = {s: {k: Rate.of(r["shown"] for r in alone if (r["set"], r["lora"]) == (s, k)) for k in NAMES} for s in SETS}
    for lora_set, rates in alone_rates.items():
        print(f"alone, {lora_set:<19}" + "  ".join(f"{k} {r}" + (" (below 85%)" if r.value < 0.85 else "")
                                                   for k, r in rates.items()), flush=True)
    effects = mean_effects([per_seed[seed]["interactions"] for seed in seeds])
    for key, e in effects.items():
        print(f"{key:<31} overlap {e['overlap']:+.2f}  merge interaction {e['merge_interaction']:.2f}  "
              f"effect of one {e['one_size']:.2f}, merge {e['merge_size']:.2f}, composite {e['composite_size']:.2f}", flush=True)

    keys = list(dict.fromkeys((r["set"], r["n"], r["weight"]) for r in rows))
    grid = []
    for lora_set, n, weight in keys:
        by_method = {m: [r for r in rows if (r["set"], r["n"], r["method"], r["weight"]) == (lora_set, n, m, weight)]
                     for m in METHODS}
        by_method = {m: r for m, r in by_method.items() if r}
        grid.append({"set": lora_set, "n": n, "weight": weight,
                     "methods": {m: summary(r, seeds) for m, r in by_method.items()}, "comparison": compare(by_method, seeds)})
    first = per_seed[seeds[0]]
    payload = {
        "settings": {"seeds": seeds, "seeds_are": "training seeds: each trains its own eight LoRAs and draws its own "
                                                  "prompts and starting noise",
                     "images_per_cell_and_seed": first["images_per_cell"],
                     "alone_prompts_per_lora_and_seed": args.alone, "sampling_steps": STEPS, "guidance": GUIDANCE,
                     "switch_steps": {k: v[1] for k, v in METHODS.items() if v[0] == "switch"},
                     "train_steps": TRAIN_STEPS, "short_steps": {k: v // 3 for k, v in TRAIN_STEPS.items()},
                     "train_images": TRAIN_IMAGES,
                     "recipe": RECIPE, "max_timestep": MAX_TIMESTEP, "overlapping_data": NARROW,
                     "weights": [1.0, *weights], "threads": args.threads},
        "alone": alone_rates,
        "alone_per_seed": {s: {k: [Rate.of(r["shown"] for r in alone if (r["set"], r["lora"], r["seed"]) == (s, k, seed))
                                   for seed in seeds] for k in NAMES} for s in SETS},
        "alone_checker": {s: {k: Rate.of(r["checker"] for r in alone if (r["set"], r["lora"]) == (s, k)) for k in NAMES}
                          for s in SETS},
        "grid": grid,
        "interactions": effects,
        "interactions_per_seed": {seed: per_seed[seed]["interactions"] for seed in seeds},
        "images": [{k: r[k] for k in ("set", "n", "method", "weight", "seed", "combination", "prompt", "hits", "all",
                                       "checker_all", "agree", "prompt_kept")} for r in rows],
        "loras": {f"{name}, seed {seed}": lora for seed in seeds for name, lora in per_seed[seed]["loras"].items()},
        "train_seconds": round(sum(per_seed[seed]["train_seconds"] for seed in seeds), 1),
        "seconds_per_seed": {seed: round(per_seed[seed]["seconds"], 1) for seed in seeds},
        "seconds": round(sum(per_seed[seed]["seconds"] for seed in seeds), 1),
    }
    # the committed weights it measured; the LoRAs trained here (not committed) are recorded by sha256 under "loras"
    write_results(args.out, {"judge_sure": args.judge_sure} | payload, weights=[TINY_SD, JUDGE_WEIGHTS], overwrite=True)
    with np.load(seed_pictures(work, seeds[0])) as pictures:
        examples = {(e["set"], e["method"], e["weight"]): (pictures[str(i)], e["row"]) for i, e in enumerate(first["examples"])}
    examples_png(Path(args.out).with_name(Path(args.out).stem + "_examples.png"), examples)
    print(f"\nall elements present\n{'set':<19} {'n':>2} {'weight':>6}  " + "".join(f"{m:<24}" for m in METHODS) + "winner")
    for g in grid:
        cells_text = "".join(f"{str(g['methods'][m]['all']) if m in g['methods'] else '-':<24}" for m in METHODS)
        print(f"{g['set']:<19} {g['n']:>2} {g['weight']:>6g}  {cells_text}{g['comparison']['winner']}")
    print(f"wrote {args.out} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
