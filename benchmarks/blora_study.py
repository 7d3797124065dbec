"""B-LoRA as the paper claims it, on the tiny model: one LoRA, two blocks, one image (chapter 14, Q28).

    python benchmarks/blora_study.py [--seeds 0,1,2] [--work DIR]

Frenkel et al. 2024 (*Implicit Style-Content Separation using B-LoRA*, arXiv 2403.14572) train ONE LoRA jointly in
two blocks of SDXL's UNet on ONE image, and claim that it separates by itself: the part in up_blocks.0.attentions.0
holds the image's content, the part in up_blocks.0.attentions.1 its style, so that each part works alone and the
content part of one image recombines with the style part of another. This study asks the same of the tiny UNet.

1. **Which blocks?** (the paper's probe, done by ablation). For each of two images a LoRA is trained in the whole
   UNet (LoRA on attention, MLP and convolution layers: the tiny model's LoCon default), training seed 0. Then it
   is switched off in one *unit* at a time (each attention block, ResNet and down/upsampler: 22 units), and, coarser,
   in one top-level *block* at a time (7), and the images are judged again. The *loss* of a part for an attribute is
   the share of the judge's mean probability for the image's value that goes when the part is off,
   1 - score(without part) / score(full LoRA), averaged over the two images. The content part is the one whose loss
   is largest for the shape; the style part the one, among the others, whose loss is largest for the pattern
   (dotted, outlined). The table and both choices are printed.
2. **B-LoRA.** One LoRA in two places only, trained on one image (image 1: a dotted pink star; image 2: an outlined
   cyan cross; both on white; every one of these is a concept the base model never saw), training seeds 0, 1, 2.
   Three arms choose the two places: the probed units, the probed blocks, and SDXL's position carried over to the
   tiny decoder (its first two attention blocks, up_blocks.1.attentions.0 and .1). The one image is augmented by
   shifting and scaling (16 renderings of the same scene, the object moved by up to 3 px and scaled by up to 10%),
   as a random crop would; every copy has the caption "a shape on a white background" (the class noun the tiny
   text encoder knows stands in for the paper's "A [v]").
3. **Measured**, each as k of n with a Wilson 95% interval, pooled over the seeds and both images (16 prompts per
   image, seed and condition), by the judge and by the independent pixel checker (`sdtune.evaluation.checker`):
   - *whole LoRA*, *content part* and *style part* on the training caption: shape, pattern and colour of the image;
   - *content part alone*, prompts that ask a base colour ("a blue shape on a white background"): is the shape
     kept, and does the style follow the prompt (the asked colour, flat: no pattern)?
   - *style part alone*, prompts that ask a base shape ("a square on a white background"): are the pattern and
     colour transferred, and does the shape follow the prompt?
   - *recombined*, content part of one image + style part of the other (the training caption): the first image's
     shape in the second's pattern and colour, both directions;
   - the base model on the same prompts, for reference.
   Where the claim is a comparison (content part against style part, a part against the base model, the
   recombination against the base model or the style image's whole LoRA, one arm against another), the difference
   is paired over the training seeds (`seed_difference`).

Images: 15 DDIM steps, guidance 2.5 (the tiny model's style recipe, `sdtune.defaults`), sampling seed 0. A run is
cached in `--work` (per-image outcomes), so a rerun only adds what is missing. The results file records the command,
the commit, the machine and the sha256 of the tiny model and the judge; a labelled grid of one seed's images is
written beside it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import asdict, replace
from itertools import chain
from pathlib import Path

import torch

from sdtune.evaluation.blocks import concept_score, deltas, fused

BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results" / "blora_study_cpu.json"

CAPTION = "a shape on a white background"  # every training image's caption, and the prompt of the whole LoRA
AUGMENTED = 16  # renderings of the one scene, shifted and scaled
N = 16  # images per condition, image and seed
SAMPLING = {"num_inference_steps": 15, "guidance_scale": 2.5, "seed": 0}
RECIPE = {"adapter": "lora", "targets": "attn-mlp-conv", "rank": 8, "lr": 2e-3, "steps": 150, "batch_size": 8,
          "max_timestep": 1000, "min_timestep": 0, "lr_scheduler": "constant", "warmup_steps": 0, "max_grad_norm": 1.0,
          "train_text_encoder": False, "instance_prompt": CAPTION}
UNIT = re.compile(r"(?:(?:down|up)_blocks\.\d+\.(?:attentions|resnets|downsamplers|upsamplers)|mid_block\.(?:attentions|resnets))\.\d+")
BASE_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
BASE_SHAPES = ("circle", "square", "triangle", "diamond")


def scenes() -> dict:
    """The two images: every attribute but the background is a novel concept."""
    from sdtune.data.toyworld import Scene

    return {"image 1": Scene(shape="star", colour="pink", background="white", style="dotted"),
            "image 2": Scene(shape="cross", colour="cyan", background="white", style="outlined")}


def augmented(scene, n: int = AUGMENTED, seed: int = 0) -> list:
    """The one scene, shifted by up to 3 px and scaled by up to 10%: a random crop's augmentation."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [replace(scene, cx=scene.cx + float(rng.uniform(-3, 3)), cy=scene.cy + float(rng.uniform(-3, 3)),
                    radius=scene.radius * float(rng.uniform(0.9, 1.1))) for _ in range(n)]


def image_folder(scene, folder: Path) -> Path:
    """A training folder of the augmented scene without captions (the recipe's instance prompt captions it)."""
    from sdtune.data import toyworld

    if not folder.is_dir():
        toyworld.write_dataset(augmented(scene), folder)
        for caption in folder.glob("*.txt"):
            caption.unlink()
    return folder


def units(unet) -> list[str]:
    """The units the ablation switches off: every attention block, ResNet and down/upsampler of the UNet."""
    return [name for name, _ in unet.named_modules() if UNIT.fullmatch(name)]


def train_lora(pipe, scene, blocks: list[str] | None, seed: int, work: Path) -> dict[str, torch.Tensor]:
    """One LoRA on the one image (in `blocks` only, or the whole UNet); its kohya tensors, cached in `work`."""
    from safetensors.torch import load_file, save_file

    from sdtune.io import write_json
    from sdtune.training import TrainConfig, train

    tag = f"{scene.shape}-{scene.style}-{'+'.join(blocks) if blocks else 'whole-unet'}-seed{seed}"
    cached = work / f"{tag}.safetensors"
    if cached.is_file() and json.loads((work / f"{tag}.json").read_text()) == RECIPE:
        return load_file(cached)
    data = image_folder(scene, work / f"data-{scene.shape}-{scene.style}")
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        out = train(TrainConfig(data=str(data), out=str(Path(tmp) / "run"), seed=seed,
                                blocks=",".join(blocks) if blocks else None, **RECIPE), pipe=pipe)
        tensors = load_file(out / "run.safetensors")
    save_file(tensors, str(cached))
    write_json(work / f"{tag}.json", RECIPE)
    return tensors


def judged(judge, images) -> dict[str, dict[str, list[str]]]:
    """What the judge and the pixel checker name in each image."""
    from sdtune.evaluation import checker

    return {"judge": judge.predict(images), "checker": checker.check_all(images)}


def top_blocks(unet) -> list[str]:
    """The UNet's seven top-level blocks (down_blocks.0 ... up_blocks.2, mid_block): the coarser probe."""
    return [name for name, _ in unet.named_modules() if re.fullmatch(r"(?:down|up)_blocks\.\d+|mid_block", name)]


def ablation(pipe, judge, work: Path) -> dict:
    """Step 1: each image's whole-UNet LoRA switched off in one unit (or one top-level block) at a time; the loss of
    each for the shape, the pattern and the colour; the content and style unit (and block) it points to."""
    import sdtune

    candidates = {"units": units(pipe.unet), "blocks": top_blocks(pipe.unet)}
    table = {}
    for name, scene in scenes().items():
        update = deltas(pipe.unet, train_lora(pipe, scene, None, 0, work))
        row = {}
        for unit in ["base model", "full LoRA"] + candidates["units"] + candidates["blocks"]:
            off = () if unit in ("base model", "full LoRA") else (unit,)
            with fused(pipe.unet, {} if unit == "base model" else update, off=off):
                images = sdtune.sample(pipe, [CAPTION] * N, **SAMPLING)
            row[unit] = {a: concept_score(judge, images, a, getattr(scene, a))[0] for a in ("shape", "style", "colour")}
        table[name] = row
        print(f"  {time.strftime('%H:%M:%S')} ablation of {name}'s LoRA done", flush=True)
    loss = {u: {a: sum(1 - table[i][u][a] / table[i]["full LoRA"][a] for i in table) / len(table)
                for a in ("shape", "style", "colour")} for u in candidates["units"] + candidates["blocks"]}
    chosen = {}
    for kind, names in candidates.items():
        content = max(names, key=lambda u: loss[u]["shape"])
        chosen[kind] = {"content": content, "style": max((u for u in names if u != content), key=lambda u: loss[u]["style"])}
    return {"scores": table, "loss": loss, "chosen": chosen}


def prompts(kind: str) -> list[tuple[str, dict]]:
    """N prompts and what each asks: the training caption, a base colour each, or a base shape each."""
    if kind == "caption":
        return [(CAPTION, {})] * N
    if kind == "other colours":
        return [(f"a {c} shape on a white background", {"colour": c}) for c in (BASE_COLOURS * N)[:N]]
    if kind == "other shapes":
        return [(f"a {s} on a white background", {"shape": s}) for s in (BASE_SHAPES * N)[:N]]
    raise ValueError(kind)


def sample_judged(pipe, judge, kind: str, update: dict | None = None) -> tuple[dict, list]:
    """One condition (the UNet plus `update`, or the base model): what the judge and the checker see, and the images."""
    import sdtune

    with fused(pipe.unet, update or {}):
        images = sdtune.sample(pipe, [p for p, _ in prompts(kind)], **SAMPLING)
    return {"asked": [a for _, a in prompts(kind)], **judged(judge, images)}, images


# every condition of a seed, for image i (its other image: j): which LoRA part, which prompts
CONDITIONS = {"whole LoRA": ("whole", "caption"), "content part": ("content", "caption"), "style part": ("style", "caption"),
              "content part, other colours": ("content", "other colours"), "style part, other shapes": ("style", "other shapes"),
              "recombined": ("recombined", "caption")}


def parts(loras: dict, name: str, blocks: tuple[str, str]) -> dict[str, dict]:
    """Image `name`'s B-LoRA whole, its content part, its style part, and its content part with the other image's style part."""
    from sdtune.methods.blora import block_part, recombine

    c, s = blocks
    other = next(n for n in loras if n != name)
    return {"whole": loras[name], "content": block_part(loras[name], c), "style": block_part(loras[name], s),
            "recombined": recombine(loras[name], loras[other], c, s)}


def run_seed(pipe, judge, arm: str, blocks: tuple[str, str], seed: int, work: Path) -> dict:
    """Steps 2 and 3 for one training seed: a B-LoRA per image in `blocks` (content, style), every condition judged."""
    from sdtune.io import write_json
    path = work / f"outcomes-{arm.replace(' ', '-')}-seed{seed}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached["recipe"] == RECIPE and cached["blocks"] == list(blocks):
            return cached
    start = time.perf_counter()
    loras = {name: train_lora(pipe, scene, list(blocks), seed, work) for name, scene in scenes().items()}
    train_s = time.perf_counter() - start
    out = {"recipe": RECIPE, "blocks": list(blocks), "seed": seed, "train_s": round(train_s, 1), "images": {}}
    for name in loras:
        cut = parts(loras, name, blocks)
        for label, (part, kind) in CONDITIONS.items():
            out["images"][f"{name}: {label}"] = sample_judged(pipe, judge, kind, deltas(pipe.unet, cut[part]))[0]
    out["run_s"] = round(time.perf_counter() - start, 1)
    write_json(path, out)
    print(f"  {time.strftime('%H:%M:%S')} {arm} seed {seed}: trained in {train_s:.0f} s, measured in "
          f"{out['run_s'] - train_s:.0f} s", flush=True)
    return out


def measures(label: str, own, other, seen: dict) -> dict[str, list[bool]]:
    """Per image, each measure of a condition. `own`: the image whose LoRA (or content part) it is; `other`: the other."""
    shape, colour, style, asked = seen["shape"], seen["colour"], seen["style"], seen["asked"]
    is_ = lambda values, want: [v == want for v in values]
    if label == "recombined":
        return {"shape of content image": is_(shape, own.shape), "pattern of style image": is_(style, other.style),
                "colour of style image": is_(colour, other.colour),
                "shape and pattern": [a == own.shape and b == other.style for a, b in zip(shape, style)]}
    if label == "content part, other colours":
        return {"shape kept": is_(shape, own.shape), "colour as asked": [v == a["colour"] for v, a in zip(colour, asked)],
                "flat as asked": is_(style, "flat"), "pattern kept": is_(style, own.style)}
    if label == "style part, other shapes":
        return {"pattern kept": is_(style, own.style), "colour kept": is_(colour, own.colour),
                "shape as asked": [v == a["shape"] for v, a in zip(shape, asked)], "shape kept": is_(shape, own.shape)}
    return {"shape kept": is_(shape, own.shape), "pattern kept": is_(style, own.style), "colour kept": is_(colour, own.colour)}


def per_seed(run: dict, by: str = "judge") -> dict[str, dict[str, list[bool]]]:
    """{condition: {measure: outcomes of both images}} for one seed (or the base model), by the judge or the checker."""
    named = scenes()
    out: dict = {}
    for key, seen in run["images"].items():
        name, label = key.split(": ", 1)
        other = next(n for n in named if n != name)
        for m, v in measures(label, named[name], named[other], {**seen[by], "asked": seen["asked"]}).items():
            out.setdefault(label, {}).setdefault(m, []).extend(v)
    return out


def base_run(pipe, judge) -> dict:
    """The base model on every condition's prompts (no LoRA), judged against each image's expectations."""
    seen = {kind: sample_judged(pipe, judge, kind)[0] for kind in ("caption", "other colours", "other shapes")}
    return {"images": {f"{name}: {label}": seen[kind] for name in scenes() for label, (_, kind) in CONDITIONS.items()}}


def describe(scene) -> str:
    return f"a {scene.style} {scene.colour} {scene.shape}"


def summarise(runs: dict[str, dict[int, dict]], base: dict) -> dict:
    """Per arm, condition and measure: k/n pooled over seeds and images (judge, checker) and per seed; the comparisons."""
    from sdtune.evaluation.stats import Rate, seed_difference

    base_judge, base_checker = per_seed(base), per_seed(base, "checker")
    summary = {"base model": {label: {m: {"judge": Rate.of(v), "checker": Rate.of(base_checker[label][m])}
                                      for m, v in ms.items()} for label, ms in base_judge.items()}, "arms": {}}
    seeds_rates = {}
    for arm, by_seed in runs.items():
        judge_by_seed = {seed: per_seed(run) for seed, run in by_seed.items()}
        checker_by_seed = {seed: per_seed(run, "checker") for seed, run in by_seed.items()}
        table = {}
        for label, ms in next(iter(judge_by_seed.values())).items():
            table[label] = {m: {"judge": Rate.of(chain.from_iterable(judge_by_seed[s][label][m] for s in by_seed)),
                                "checker": Rate.of(chain.from_iterable(checker_by_seed[s][label][m] for s in by_seed)),
                                "per_seed": {str(s): Rate.of(judge_by_seed[s][label][m]) for s in by_seed}} for m in ms}
        seeds_rates[arm] = {label: {m: [Rate.of(judge_by_seed[s][label][m]) for s in sorted(by_seed)] for m in ms}
                            for label, ms in next(iter(judge_by_seed.values())).items()}
        summary["arms"][arm] = {"blocks": next(iter(by_seed.values()))["blocks"], "conditions": table,
                                "train_s": {str(s): r["train_s"] for s, r in by_seed.items()},
                                "run_s": {str(s): r["run_s"] for s, r in by_seed.items()}}
    base_rate = lambda label, m: [Rate.of(base_judge[label][m])] * len(next(iter(runs.values())))
    comparisons = {}
    for arm, r in seeds_rates.items():
        pairs = {
            "the content part draws the shape more often than the style part": (
                r["content part"]["shape kept"], r["style part"]["shape kept"], "content part", "style part"),
            "the style part draws the pattern more often than the content part": (
                r["style part"]["pattern kept"], r["content part"]["pattern kept"], "style part", "content part"),
            "the content part keeps the shape in other colours (against the base model)": (
                r["content part, other colours"]["shape kept"], base_rate("content part, other colours", "shape kept"),
                "content part", "base model"),
            "the style part puts the pattern on other shapes (against the base model)": (
                r["style part, other shapes"]["pattern kept"], base_rate("style part, other shapes", "pattern kept"),
                "style part", "base model"),
            "recombined: content image's shape in the style image's pattern (against the base model)": (
                r["recombined"]["shape and pattern"], base_rate("recombined", "shape and pattern"), "recombined", "base model"),
            "recombined: the style image's pattern, against its whole LoRA": (
                r["recombined"]["pattern of style image"], r["whole LoRA"]["pattern kept"], "recombined", "whole LoRA"),
        }
        comparisons[arm] = {}
        for claim, (a, b, na, nb) in pairs.items():
            d = seed_difference(a, b, na, nb)
            comparisons[arm][claim] = d.as_dict() | {"verdict": d.verdict()}
    arms = list(seeds_rates)
    comparisons["between arms"] = {}
    for i, a in enumerate(arms):
        for b in arms[i + 1:]:
            d = seed_difference(seeds_rates[a]["recombined"]["shape and pattern"], seeds_rates[b]["recombined"]["shape and pattern"], a, b)
            comparisons["between arms"][f"recombined, shape and pattern: {a} against {b}"] = d.as_dict() | {"verdict": d.verdict()}
    summary["comparisons"] = comparisons
    return summary


def grid(pipe, blocks: tuple[str, str], seed: int, work: Path, path: Path) -> None:
    """A labelled grid: the two training images, then every condition of one seed (8 images each, their prompts named)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import sdtune
    from sdtune.data import toyworld
    from sdtune.evaluation.provenance import write_figure

    named = scenes()
    loras = {name: train_lora(pipe, scene, list(blocks), seed, work) for name, scene in named.items()}
    rows = [((f"training images: image 1 = {describe(named['image 1'])}, image 2 = {describe(named['image 2'])} "
              f"(one scene each, augmented; caption '{CAPTION}')"),
             [toyworld.render(s) for s in augmented(named["image 1"])[:4] + augmented(named["image 2"])[:4]])]
    for name in named:
        other = next(n for n in named if n != name)
        cut = parts(loras, name, blocks)
        for label, (part, kind) in CONDITIONS.items():
            what = {"whole": f"{name}'s whole B-LoRA", "content": f"{name}'s content part ({blocks[0]}) alone",
                    "style": f"{name}'s style part ({blocks[1]}) alone",
                    "recombined": f"content part of {name} + style part of {other}"}[part]
            asked = {"caption": f"'{CAPTION}'", "other colours": "'a red / green / blue ... shape on a white background'",
                     "other shapes": "'a circle / square / triangle / diamond on a white background'"}[kind]
            with fused(pipe.unet, deltas(pipe.unet, cut[part])):
                images = sdtune.sample(pipe, [p for p, _ in prompts(kind)][:8], **SAMPLING)
            rows.append((f"{what}, prompts {asked}", images))
    fig, axes = plt.subplots(len(rows), 1, figsize=(7.2, 1.12 * len(rows)))
    for ax, (label, images) in zip(axes, rows):
        ax.imshow(sdtune.image_grid(images, cols=8))
        ax.set_title(label, loc="left", fontsize=6.5)
        ax.axis("off")
    fig.suptitle(f"B-LoRA on the tiny model, training seed {seed}: content unit {blocks[0]}, style unit {blocks[1]}", fontsize=8)
    plt.tight_layout()
    write_figure(path, fig, dpi=110)


def main() -> None:
    from sdtune.evaluation.provenance import JUDGE_WEIGHTS, TINY_SD, start_tiny_study, study_parser, write_results

    parser = study_parser(__doc__, "blora-study", RESULTS, seeds_help="training seeds (at least 3 for the comparisons)")
    start = time.perf_counter()
    study = start_tiny_study(parser, parser.parse_args(), min_seeds=1)
    args, seeds, work, pipe, judge = study.args, study.seeds, study.work, study.pipe, study.judge
    out = Path(args.out)
    probe = ablation(pipe, judge, work)
    print("\nablation (loss of the judge's score without the unit, mean of the two images):")
    print(f"{'unit':<30}{'shape':>8}{'pattern':>9}{'colour':>8}")
    marks = {probe["chosen"][k][part]: f"  <- {part}" for k in probe["chosen"] for part in ("content", "style")}
    for unit, loss in probe["loss"].items():
        print(f"{unit:<30}{loss['shape']:>8.0%}{loss['style']:>9.0%}{loss['colour']:>8.0%}{marks.get(unit, '')}")
    for kind, c in probe["chosen"].items():
        print(f"{kind}: content {c['content']}, style {c['style']}", flush=True)
    arms = {"probed units": (probe["chosen"]["units"]["content"], probe["chosen"]["units"]["style"]),
            "probed blocks": (probe["chosen"]["blocks"]["content"], probe["chosen"]["blocks"]["style"]),
            "SDXL's position": ("up_blocks.1.attentions.0", "up_blocks.1.attentions.1")}
    runs = {arm: {seed: run_seed(pipe, judge, arm, blocks, seed, work) for seed in seeds} for arm, blocks in arms.items()}
    base = base_run(pipe, judge)
    summary = summarise(runs, base)
    grid(pipe, arms["probed units"], seeds[0], work, out.with_suffix(".png"))
    for arm, s in summary["arms"].items():
        print(f"\n{arm}: content {s['blocks'][0]}, style {s['blocks'][1]} ({len(seeds)} training seeds x 2 images x {N} images)")
        for label, ms in s["conditions"].items():
            for m, r in ms.items():
                base_r = summary["base model"][label][m]["judge"]
                print(f"  {label:<28}{m:<24}{r['judge']!s:<28} checker {r['checker']!s:<28} base {base_r}")
        for claim, d in summary["comparisons"][arm].items():
            print(f"  {claim}: {d['verdict']}")
    print()
    for claim, d in summary["comparisons"]["between arms"].items():
        print(f"{claim}: {d['verdict']}")
    payload = {"settings": {"seeds": seeds, "recipe": RECIPE, "caption": CAPTION, "augmented": AUGMENTED, "n": N,
                            "sampling": SAMPLING, "images": {k: asdict(v) for k, v in scenes().items()},
                            "arms": {a: list(b) for a, b in arms.items()}},
               "ablation": probe, **summary,  # the grid is written beside the results file (out.with_suffix(".png"))
               "study_s": round(time.perf_counter() - start, 1), "load_average": os.getloadavg()[0]}
    write_results(out, {"judge_sure": args.judge_sure} | payload, weights=[TINY_SD, JUDGE_WEIGHTS], overwrite=True)
    print(f"\n{out} ({payload['study_s']:.0f} s)")


if __name__ == "__main__":
    main()
