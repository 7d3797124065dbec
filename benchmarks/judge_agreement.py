"""Is the judge right on the images the course judges? Its agreement with an independent checker on generated images.

    python benchmarks/judge_agreement.py                       # 5 minutes in one measured run (2 shared CPU cores)
    python benchmarks/judge_agreement.py --judge my-judge --out benchmarks/results/judge_agreement_my-judge.json \
        --images /tmp/images.npz                               # another judge, on the images of an earlier run
    python benchmarks/judge_agreement.py --seed-shift 50000 --out benchmarks/results/judge_agreement_heldout_cpu.json
                                                               # the same sources, fresh sampling seeds

Every number the course prints comes from the judge (`sdtune.load_judge()`), a CNN trained on clean renders. The
chapters judge *generated* images, often off the training distribution. Here both the judge and
`sdtune.evaluation.checker` (rules on pixels, written without the judge's code or data) name the shape, colour,
background and style of 600+ generated images from the sources the chapters use:

- the tiny model on its 72 base prompts (3 sampling seeds);
- each shipped toy LoRA (pink, checkerboard, dotted, star) on its 24 held-out prompts, and two of them merged;
- the LCM-LoRA at 4 steps;
- a striped-style LoCon and a DreamBooth-LoRA subject (a star taught as "sks diamond"), trained here.

Agreement per attribute is k of n with a Wilson 95% interval, overall and per source, over every image ("unsure",
could not decide) counts as disagreement. The bar (issue 19): 95% on colour and background, 90% on shape and
style. Beside it, the agreement where the judge is sure (its probability of the value it names at least 0.9, a
threshold fixed on the images of seeds 7, 1007 and 2007 after a person's audit found the disagreements on images
with no nameable value, `benchmarks/judge_audit.py`): how many images it keeps, and how often the two agree on them.
`--seed-shift` draws fresh images (every sampling seed shifted), on which that threshold is tested held out.
Writes the results file (with provenance) and a PNG of the disagreements, each labelled with both
verdicts. `--images` saves the generated images (or reuses them when the file exists), so a second judge is
measured on exactly the same images.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import LCMScheduler
from PIL import Image, ImageDraw

import sdtune
from sdtune.composition import compose
from sdtune.data import toyworld
from sdtune.evaluation import checker
from sdtune.evaluation.judge import JUDGE_DIR, SURE, UNSURE, agreement_rates, as_asked, load_judge
from sdtune.evaluation.provenance import TINY_SD, readable, write_results
from sdtune.evaluation.stats import Rate, paired_difference
from sdtune.evaluation.subject import subject_prompts
from sdtune.formats import load_adapter
from sdtune.formats.adapters import remove_adapter
from sdtune.io import ASSETS, staged_file
from sdtune.models.pretrain import all_concept_scenes, round_trip
from sdtune.models.toy_loras import CONCEPTS, LCM_PROMPTS, concept_scenes
from sdtune.training import DreamBoothConfig, TrainConfig, train

ATTRIBUTES = tuple(toyworld.ATTRIBUTES)
BAR = {"shape": 0.90, "colour": 0.95, "background": 0.95, "style": 0.90}
LORAS = ASSETS / "loras"
# Sampling seeds. The checker's rules were written looking at images sampled with seeds 0, 1000 and 2000; these
# are fresh ones, so the agreement is measured on images its author never saw.
SEEDS = (7, 1007)  # the LoRA sources
BASE_SEEDS = (7, 1007, 2007)


@dataclass
class Source:
    """Generated images of one kind, with the scene each prompt asked for."""

    name: str
    scenes: list[toyworld.Scene]
    images: list[Image.Image]


def sampled(pipe, scenes, seeds=SEEDS, shift: int = 0, steps: int = 15, guidance: float = sdtune.sampling.TINY_GUIDANCE, prompts=None):
    """Sample each scene's caption (or the given prompts) once per seed; returns (scenes, images) in order."""
    prompts = prompts or [toyworld.caption(s) for s in scenes]
    images = []
    for seed in seeds:
        images += sdtune.sample(pipe, prompts, num_inference_steps=steps, guidance_scale=guidance, seed=seed + shift)
    return list(scenes) * len(seeds), images


def generate(pipe, work: Path, shift: int = 0) -> list[Source]:
    """Every source's images; `shift` is added to every sampling seed (fresh images of the same sources)."""
    sources = []
    draw = functools.partial(sampled, shift=shift)
    start = time.time()

    def done(name, scenes, images):
        sources.append(Source(name, scenes, images))
        print(f"  {name:<28} {len(images):4d} images  ({time.time() - start:4.0f} s)", flush=True)

    base = toyworld.base_prompts()
    done("base prompts", *draw(pipe, base, seeds=BASE_SEEDS, steps=sdtune.sampling.TINY_STEPS))

    for name, (attribute, value, _) in CONCEPTS.items():  # as sdtune.models.toy_loras measures them
        load_adapter(pipe, LORAS / f"{name}.safetensors", name)
        done(f"toy LoRA: {name}", *draw(pipe, concept_scenes(attribute, value, 24, seed=100)))
    merged = toyworld.sample_scenes(24, seed=101, shapes=["star"], colours=["pink"])
    with compose(pipe, ["pink", "star"], "merge"):
        done("toy LoRAs merged: pink+star", *draw(pipe, merged))
    for name in CONCEPTS:
        remove_adapter(pipe, name)

    ddim = pipe.scheduler
    pipe.scheduler = LCMScheduler.from_config(ddim.config)
    load_adapter(pipe, LORAS / "lcm.safetensors", "lcm")
    done("LCM-LoRA, 4 steps", *draw(pipe, LCM_PROMPTS, steps=4, guidance=1.0))
    remove_adapter(pipe, "lcm")
    pipe.scheduler = ddim

    # a style, the course's recipe (README, "What a style takes"): LoCon on attention, MLPs and convolutions,
    # low-noise timesteps, sampled at guidance 2.5
    data = toyworld.write_dataset(toyworld.sample_scenes(32, seed=1, styles=["striped"]), work / "striped")
    out = train(TrainConfig(data=str(data), out=str(work / "striped-out"), adapter="locon", rank=8, steps=200,
                            batch_size=16, max_timestep=600, seed=0), pipe=pipe)
    load_adapter(pipe, out / "striped-out.safetensors", "striped")
    done("striped LoCon (trained here)", *draw(pipe, toyworld.sample_scenes(24, seed=100, styles=["striped"]), guidance=2.5))
    remove_adapter(pipe, "striped")

    # a subject, DreamBooth-LoRA with prior preservation (as chapter 08): five yellow stars called "sks diamond"
    stars = toyworld.sample_scenes(5, seed=7, shapes=["star"], colours=["yellow"], backgrounds=["white", "gray"])
    data = toyworld.write_dataset(stars, work / "subject")
    for scene, txt in zip(stars, sorted(data.glob("*.txt"))):
        txt.write_text(f"a yellow sks diamond on a {scene.background} background")
    out = train(DreamBoothConfig(data=str(data), out=str(work / "subject-out"), adapter="locon", rank=8,
                                 instance_prompt="a yellow sks diamond", class_prompt="a diamond", num_class_images=32,
                                 class_data=str(work / "class-images"), steps=200, batch_size=4, lr=1e-3, seed=0), pipe=pipe)
    load_adapter(pipe, out / "subject-out.safetensors", "subject")
    rows = subject_prompts("sks diamond") + subject_prompts("diamond")  # the subject, then its class (drift)
    scenes = [toyworld.Scene("star" if "sks" in p else "diamond", c, b) for p, c, b in rows]
    done("DreamBooth-LoRA subject (here)", *draw(pipe, scenes, prompts=[p for p, _, _ in rows]))
    remove_adapter(pipe, "subject")
    return sources


def save_images(path: Path, sources: list[Source]) -> None:
    arrays = {f"{i}": np.stack([np.asarray(im.convert("RGB")) for im in s.images]) for i, s in enumerate(sources)}
    meta = [{"name": s.name, "scenes": [asdict(x) for x in s.scenes]} for s in sources]
    with staged_file(path) as tmp:
        np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)


def load_images(path: Path) -> list[Source]:
    saved = np.load(path)
    meta = json.loads(str(saved["meta"]))
    return [Source(m["name"], [toyworld.Scene(**x) for x in m["scenes"]], [Image.fromarray(a) for a in saved[str(i)]])
            for i, m in enumerate(meta)]


def captioned_grid(images: list[Image.Image], captions: list[str], scale: int = 2, cols: int = 10,
                   caption_height: int = 44) -> Image.Image:
    """The images enlarged `scale` times (no blur), row by row, each with its caption (lines of text) below it."""
    side, cell_h = 64 * scale, 64 * scale + caption_height
    cols = min(cols, max(1, len(images)))
    grid = Image.new("RGB", (cols * side, max(1, -(-len(images) // cols)) * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, caption) in enumerate(zip(images, captions)):
        x, y = (i % cols) * side, (i // cols) * cell_h
        grid.paste(image.resize((side, side), Image.NEAREST), (x, y))
        draw.multiline_text((x + 2, y + side + 1), caption, fill="black", spacing=0)
    return grid


def disagreement_grid(rows: list[tuple[Image.Image, str, dict, dict]], path: Path) -> None:
    """Each disagreement enlarged, with its source and, per attribute that differs, "judge/checker"."""
    captions = ["\n".join(([source[:21]] + [f"{k[:3]} {judged[k][:8]}/{checked[k][:8]}" for k in ATTRIBUTES
                                             if judged[k] != checked[k]])[:4]) for _, source, judged, checked in rows]
    grid = captioned_grid([image for image, *_ in rows], captions)
    with staged_file(path) as tmp:
        grid.quantize(256).save(tmp, format="PNG")  # a palette of 256 colours: a third of the size
        readable(tmp)


def measure(sources: list[Source], judge) -> tuple[dict, list]:
    """Agreement judge vs checker per attribute, overall and per source: over every image ("unsure" counts as a
    disagreement), over the images the checker decided, and where the judge is sure; the unsure counts; and the
    disagreements. `judge` names every value; where it is sure is its own rule at SURE, on the same probabilities."""
    per_source, disagreements = {}, []
    judged_all, checked_all, sure_all = ({k: [] for k in ATTRIBUTES} for _ in range(3))
    for s in sources:
        probabilities = judge.probabilities(s.images)  # one pass, named two ways
        judged, sure_named = judge.name(probabilities), judge.name(probabilities, SURE)
        checked = checker.check_all(s.images)
        per_source[s.name] = agreement(judged, checked) | {
            "images": len(s.images),
            "where_sure": where_sure(sure_named, checked),
            "judge_vs_prompt": agreement_rates(judged, s.scenes),
            "checker_vs_prompt": agreement_rates(checked, s.scenes),
        }
        for k in ATTRIBUTES:
            judged_all[k] += judged[k]
            checked_all[k] += checked[k]
            sure_all[k] += sure_named[k]
        for i, image in enumerate(s.images):
            if any(judged[k][i] != checked[k][i] for k in ATTRIBUTES):
                disagreements.append((image, s.name, {k: judged[k][i] for k in ATTRIBUTES}, {k: checked[k][i] for k in ATTRIBUTES}))
    return agreement(judged_all, checked_all) | {"per_source": per_source, "where_sure": where_sure(sure_all, checked_all)}, disagreements


def where_sure(sure_named: dict[str, list[str]], checked: dict[str, list[str]], sure: float = SURE) -> dict:
    """Per attribute: the images on which the judge is sure (`sure_named`: its names at threshold `sure`, "unsure"
    elsewhere), as a share of all, and the agreement with the checker on those, and on those of them the checker
    decided."""
    out = {"threshold": sure}
    for k in ATTRIBUTES:
        kept = [(j, c) for j, c in zip(sure_named[k], checked[k]) if j != UNSURE]
        out[k] = {"sure": Rate(len(kept), len(sure_named[k])),
                  "agreement": Rate.of(j == c for j, c in kept),
                  "agreement_decided": Rate.of(j == c for j, c in kept if c != checker.UNSURE)}
    return out


def compare(sources: list[Source], judge, other, name: str, other_name: str) -> dict:
    """Two judges on the same images, paired per image (Newcombe's interval): agreement with the checker on every
    image, and on the base prompts (whose images show no style) agreement with the prompt."""
    images = [im for s in sources for im in s.images]
    checked = checker.check_all(images)
    a, b = judge.predict(images), other.predict(images)
    base = next(s for s in sources if s.name == "base prompts")
    a_base, b_base = (as_asked(j.predict(base.images), base.scenes, ATTRIBUTES) for j in (judge, other))
    return {
        "agreement with the checker": {k: paired_difference([x == c for x, c in zip(a[k], checked[k])],
                                                            [y == c for y, c in zip(b[k], checked[k])], name, other_name)
                                       for k in ATTRIBUTES},
        "base prompts: names the prompt": {k: paired_difference(a_base[k], b_base[k], name, other_name) for k in ATTRIBUTES},
    }


def agreement(judged: dict[str, list[str]], checked: dict[str, list[str]]) -> dict:
    """Per attribute: agreement over all images, over those the checker decided, and how many it did not."""
    decided = {k: [j == c for j, c in zip(judged[k], checked[k]) if c != checker.UNSURE] for k in ATTRIBUTES}
    return {"agreement": {k: Rate.of(j == c for j, c in zip(judged[k], checked[k])) for k in ATTRIBUTES},
            "agreement_decided": {k: Rate.of(decided[k]) for k in ATTRIBUTES},
            "unsure": {k: checked[k].count(checker.UNSURE) for k in ATTRIBUTES}}


def validate(pipe, judge, n: int = 300, seed: int = 2024) -> dict:
    """Checker and judge against the truth where it is known: fresh renders of every concept, and their VAE round trips."""
    scenes = all_concept_scenes(n, seed)
    x = torch.from_numpy(np.stack([toyworld.render_array(s) for s in scenes])).float().permute(0, 3, 1, 2)
    with torch.no_grad():
        y = round_trip(pipe.vae, x)
    out = {}
    for kind, images in (("clean renders", x), ("VAE round trips", y)):
        named, judged = checker.check_all(images), judge.predict(images)
        out[kind] = agreement_rates(named, scenes)
        out[kind]["unsure"] = {k: named[k].count(checker.UNSURE) for k in ATTRIBUTES}
        out[kind]["judge"] = agreement_rates(judged, scenes)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge", default=str(JUDGE_DIR), help="judge folder (default: the shipped judge)")
    parser.add_argument("--out", default="benchmarks/results/judge_agreement_cpu.json", help="results file (replaced)")
    parser.add_argument("--images", help="an .npz of generated images: reused when it exists, else written after generating")
    parser.add_argument("--compare", help="another judge folder: paired differences of the two judges' agreement, per image")
    parser.add_argument("--seed-shift", type=int, default=0, help="added to every sampling seed: fresh images of the "
                        "same sources (a held-out set for a threshold chosen on the default images)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: on a shared machine more "
                        "threads than free cores make every step wait for the slowest)")
    args = parser.parse_args()
    out = Path(args.out)
    judge_dir = Path(args.judge)
    # a bad --judge (or --compare) fails here, before any work. Both name every value: the agreement counts every
    # image, and where_sure names the same probabilities again at the threshold (Judge.name)
    judge = load_judge(judge_dir, sure=0.0)
    other = load_judge(args.compare, sure=0.0) if args.compare else None
    torch.set_num_threads(args.threads)
    start = time.time()
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    validation = validate(pipe, judge)
    print("where the truth is known (300 fresh scenes of every concept), right per attribute:")
    for kind, rates in validation.items():
        print(f"  {kind:<16} checker " + "  ".join(f"{k} {rates[k]}" for k in ATTRIBUTES) + f"   unsure {rates['unsure']}")
        print(f"  {'':<16} judge   " + "  ".join(f"{k} {rates['judge'][k]}" for k in ATTRIBUTES))
    if args.images and Path(args.images).is_file():
        sources = load_images(Path(args.images))
        print(f"reusing the images in {args.images}")
    else:
        with tempfile.TemporaryDirectory() as work:
            os.environ.setdefault("SDTUNE_CACHE", str(Path(work) / "cache"))
            print("generating:")
            sources = generate(pipe, Path(work), shift=args.seed_shift)
        if args.images:
            save_images(Path(args.images), sources)
    results, disagreements = measure(sources, judge)
    seconds = time.time() - start
    n = sum(len(s.images) for s in sources)
    print(f"\njudge vs checker on {n} generated images ({seconds:.0f} s); bar: {BAR}")
    print(f"  {'attribute':<11} {'every image (unsure = disagree)':<34} {'images the checker decided':<30} unsure")
    for k in ATTRIBUTES:
        every, decided = results["agreement"][k], results["agreement_decided"][k]
        print(f"  {k:<11} {str(every):<26} {'met' if every.value >= BAR[k] else 'NOT MET':<7}  "
              f"{str(decided):<26} {'met' if decided.value >= BAR[k] else 'NOT MET':<7} {results['unsure'][k]:4d}")
    sure = results["where_sure"]
    print(f"\nwhere the judge is sure (its probability of the value it names >= {sure['threshold']}):")
    print(f"  {'attribute':<11} {'sure on':<26} {'agreement there':<34} {'there, the checker decided':<30}")
    for k in ATTRIBUTES:
        every, decided = sure[k]["agreement"], sure[k]["agreement_decided"]
        print(f"  {k:<11} {str(sure[k]['sure']):<26} {str(every):<26} {'met' if every.value >= BAR[k] else 'NOT MET':<7}  "
              f"{str(decided):<26} {'met' if decided.value >= BAR[k] else 'NOT MET'}")
    print("\nper source, agreement over every image:")
    for name, row in results["per_source"].items():
        print(f"  {name:<32} " + "  ".join(f"{k} {row['agreement'][k]}" for k in ATTRIBUTES))
    if other is not None:
        results["compared_to"] = compare(sources, judge, other, judge_dir.name, Path(args.compare).name)
        print(f"\n{judge_dir.name} vs {args.compare}, the same {n} images, paired per image:")
        for what, differences in results["compared_to"].items():
            for k, d in differences.items():
                print(f"  {what:<30} {k:<11} {d}")
    grid = out.with_name(out.stem + "_disagreements.png")
    disagreement_grid(disagreements, grid)
    weights = [TINY_SD, judge_dir / "model.safetensors"] + sorted(LORAS.glob("*.safetensors"))
    weights += [Path(args.compare) / "model.safetensors"] if args.compare else []
    results.update(validation=validation, images=n, seconds=round(seconds, 1), bar=BAR, judge=str(judge_dir), seed_shift=args.seed_shift,
                   disagreements=len(disagreements),
                   grid=grid.name)
    write_results(out, results, weights=weights, overwrite=True)
    print(f"wrote {out} and {grid} ({len(disagreements)} images with a disagreement)")


if __name__ == "__main__":
    main()
