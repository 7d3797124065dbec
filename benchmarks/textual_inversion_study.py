"""Chapter 07's Textual Inversion experiment over several training seeds: a star (a shape the tiny model never drew) and a
triangle (one it draws), one vector and four.

    python benchmarks/textual_inversion_study.py [--seeds 0,1,2] [--threads 1] [--work DIR] [--out FILE]

Exactly the chapter's recipe: five yellow stars (or triangles) on white or gray, captioned "a yellow <sks> on a white
background", the new word <sks> starting at "diamond", AdamW at lr 5e-3, batch 4, 150 steps, every trainer option given
(so that the trainer's defaults cannot change the recipe). Three runs per training seed:

- **star, 1 vector**, **triangle, 1 vector**, **star, 4 vectors**;

and the base model once (**before**: the phrase "diamond", which is what <sks> is before training). Each is measured as
the chapter measures it (`sdtune.evaluation.subject.subject_scores` with one sampling seed), image by image: the 18
prompts "a {colour} <sks> on a {background} background" (every base colour and background), 15 steps, guidance 4,
sampling seed 0, and as many of the class, "a {colour} diamond on a {background} background":

- **fidelity**: the judge sees the subject's shape (18 images);
- **colour**, **background**: the judge sees the prompted colour, the prompted background (18 each);
- **editability**: colour and background together (36 outcomes: subject_scores' mean of the two);
- **class kept**: the class prompts still draw diamonds (18 images).

Beside the rates: each learned vector's norm and its nearest whole words (cosine), as the chapter prints them, and the
shapes the judge saw. Rates are k/n pooled over seeds with Wilson 95% intervals; a difference between two runs is the
mean of the per-seed differences with a t-interval over seeds (`sdtune.evaluation.stats.seed_difference`), "not
resolved" when it holds zero. Each seed's outcomes are cached in --work (a rerun skips finished seeds). The results file
records the command, the commit, the machine and the sha256 of the tiny model and the judge; beside it, a labelled grid
of training seed 0's images (the chapter's live run).
"""

from __future__ import annotations

import collections
import shutil
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "textual_inversion_study_cpu.json"

TOKEN, INIT_WORD, CLASS_NOUN = "<sks>", "diamond", "diamond"
# chapter 07's training settings, every option given (asserted equal by the chapter)
RECIPE = {"steps": 150, "batch_size": 4, "lr": 5e-3, "lr_scheduler": "constant", "warmup_steps": 0, "max_grad_norm": 0.0,
          "min_timestep": 0, "max_timestep": 1000}
DATA = {"images": 5, "seed": 7, "colours": ["yellow"], "backgrounds": ["white", "gray"]}  # toyworld.sample_scenes
RUNS = {"star, 1 vector": ("star", 1), "triangle, 1 vector": ("triangle", 1), "star, 4 vectors": ("star", 4)}
EVAL = {"num_inference_steps": 15, "guidance_scale": 4.0, "seed": 0}  # subject_scores(..., seeds=1): its defaults
MEASURES = ("fidelity", "editability", "colour", "background", "class kept")
COMPARED = [  # (a, b): the chapter's comparisons
    ("triangle, 1 vector", "star, 1 vector"),
    ("star, 4 vectors", "star, 1 vector"),
    ("star, 1 vector", "before"),
    ("star, 4 vectors", "before"),
    ("triangle, 1 vector", "before"),
]


def scenes(shape: str) -> list:
    """The chapter's five training scenes of `shape`."""
    from sdtune.data import toyworld

    return toyworld.sample_scenes(DATA["images"], seed=DATA["seed"], shapes=[shape], colours=DATA["colours"],
                                  backgrounds=DATA["backgrounds"])


def write_folder(shape: str, folder: Path) -> Path:
    """The training folder: the scenes with captions that name the colour and background and use the token."""
    from sdtune.data import toyworld

    chosen = scenes(shape)
    out = toyworld.write_dataset(chosen, folder)
    for scene, txt in zip(chosen, sorted(out.glob("*.txt"))):
        txt.write_text(f"a {scene.colour} {TOKEN} on a {scene.background} background")
    return out


def outcomes(pipe, judge, phrase: str, subject: str) -> tuple[dict[str, list[bool]], list[str], np.ndarray]:
    """Per image, as subject_scores measures (seeds=1): ({measure: bools}, shapes seen, the 18 subject images as uint8)."""
    import sdtune
    from sdtune.evaluation.subject import subject_prompts

    rows = subject_prompts(phrase)
    steps, guidance, seed = EVAL["num_inference_steps"], EVAL["guidance_scale"], EVAL["seed"]
    images = sdtune.sample(pipe, [p for p, _, _ in rows], steps, guidance, seed=seed)
    class_images = sdtune.sample(pipe, [p for p, _, _ in subject_prompts(CLASS_NOUN)], steps, guidance, seed=seed)
    seen, class_seen = judge.predict(images), judge.predict(class_images)
    colour = [p == c for p, (_, c, _) in zip(seen["colour"], rows)]
    background = [p == b for p, (_, _, b) in zip(seen["background"], rows)]
    result = {"fidelity": [p == subject for p in seen["shape"]], "colour": colour, "background": background,
              "editability": colour + background, "class kept": [p == CLASS_NOUN for p in class_seen["shape"]]}
    return result, list(seen["shape"]), np.stack([np.asarray(im) for im in images])


def whole_words(pipe, base_vocab: int) -> tuple[list[str], torch.Tensor]:
    """The vocabulary's whole words (alphabetic, over 5 characters with the </w> mark) and their embeddings, as the
    chapter's nearest-word table uses them."""
    vocab = pipe.tokenizer.convert_ids_to_tokens(list(range(base_vocab)))
    ids = [i for i, w in enumerate(vocab) if w.endswith("</w>") and w[:-4].isalpha() and len(w) > 5]
    table = pipe.text_encoder.get_input_embeddings().weight.detach()[:base_vocab]
    return [vocab[i][:-4] for i in ids], table[ids]


def nearest(vector: torch.Tensor, words: list[str], table: torch.Tensor, k: int = 3) -> list[tuple[str, float]]:
    """The k whole words whose embeddings are closest to `vector` by cosine."""
    sims = torch.nn.functional.cosine_similarity(vector[None], table, dim=1)
    top = sims.topk(k)
    return [(words[i], round(float(s), 4)) for s, i in zip(top.values, top.indices)]


def run_seed(seed: int, pipe, judge, work: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Every run for one training seed: ({run: per-image outcomes, shapes, vectors}, {run: the 18 subject images})."""
    from sdtune.methods.textual_inversion import (
        load_embedding,
        read_embedding,
        remove_embedding,
    )
    from sdtune.training import TextualInversionConfig, train

    shutil.rmtree(work / f"seed{seed}", ignore_errors=True)  # a seed that did not finish starts again
    base_vocab = len(pipe.tokenizer)
    words, table = whole_words(pipe, base_vocab)
    folders = {shape: write_folder(shape, work / f"seed{seed}" / "data" / shape) for shape in ("star", "triangle")}
    results, pictures, seconds = {}, {}, {}
    for name, (shape, vectors) in RUNS.items():
        start = time.perf_counter()
        out = train(TextualInversionConfig(data=str(folders[shape]), out=str(work / f"seed{seed}" / name.replace(", ", "_").replace(" ", "")),
                                           token=TOKEN, init_word=INIT_WORD, vectors=vectors, seed=seed, **RECIPE), pipe=pipe)
        seconds[name] = time.perf_counter() - start
        load_embedding(pipe, out)
        try:
            measured, shapes, pictures[name] = outcomes(pipe, judge, TOKEN, shape)
        finally:
            remove_embedding(pipe, TOKEN)
        assert len(pipe.tokenizer) == base_vocab, "removing the embedding must leave the base vocabulary"
        learned = read_embedding(out)[1]
        results[name] = {**measured, "shapes seen": dict(collections.Counter(shapes).most_common()),
                         "vectors": [{"norm": float(v.norm()), "nearest": nearest(v, words, table)} for v in learned]}
    return {"runs": results, "train_seconds": seconds}, pictures


def before(pipe, judge) -> tuple[dict, dict[str, np.ndarray]]:
    """The base model: the phrase "diamond" (what <sks> is before training), scored for both subjects."""
    words, table = whole_words(pipe, len(pipe.tokenizer))
    init = pipe.text_encoder.get_input_embeddings().weight.detach()[pipe.tokenizer.convert_tokens_to_ids(f"{INIT_WORD}</w>")]
    measured, shapes, images = outcomes(pipe, judge, INIT_WORD, "star")
    triangle = outcomes(pipe, judge, INIT_WORD, "triangle")[0]["fidelity"]
    return ({**measured, "fidelity (triangle)": triangle, "shapes seen": dict(collections.Counter(shapes).most_common()),
             "vectors": [{"norm": float(init.norm()), "nearest": nearest(init, words, table)}],
             "word median norm": float(table.norm(dim=1).median())}, {"before": images})


def summarise(per_seed: dict[int, dict], base: dict) -> dict:
    """Pooled rates, per-seed rates, nearest words, and the differences over seeds that the chapter reads."""
    from sdtune.evaluation.stats import Rate, seed_difference

    seeds = sorted(per_seed)
    runs = {"before": {m: {"pooled": Rate.of(base[m]), "per_seed": {str(s): Rate.of(base[m]) for s in seeds}} for m in MEASURES}}
    runs["before"]["fidelity (triangle)"] = {"pooled": Rate.of(base["fidelity (triangle)"])}
    for name in RUNS:
        rows = {s: per_seed[s]["runs"][name] for s in seeds}
        runs[name] = {m: {"pooled": Rate.of(x for r in rows.values() for x in r[m]),
                          "per_seed": {str(s): Rate.of(r[m]) for s, r in rows.items()}} for m in MEASURES}
        runs[name]["shapes seen"] = {str(s): r["shapes seen"] for s, r in rows.items()}
        runs[name]["vectors"] = {str(s): r["vectors"] for s, r in rows.items()}
        first = [r["vectors"][0]["nearest"][0] for r in rows.values()]  # the first vector's nearest word, per seed
        runs[name]["nearest word"] = dict(collections.Counter(w for w, _ in first).most_common())
        runs[name]["nearest cosine"] = {"min": min(c for _, c in first), "max": max(c for _, c in first)}
        norms = [v["norm"] for r in rows.values() for v in r["vectors"]]
        runs[name]["norm"] = {"min": min(norms), "max": max(norms)}

    def per_seed_rates(name: str, measure: str) -> list:
        return [runs[name][measure]["per_seed"][str(s)] for s in seeds]

    differences = []
    if len(seeds) >= 3:
        for a, b in COMPARED:
            for m in MEASURES:
                d = seed_difference(per_seed_rates(a, m), per_seed_rates(b, m), a, b)
                differences.append({"a_run": a, "b_run": b, "measure": m, **d.as_dict()})
    return {"runs": runs, "differences": differences,
            "before": {"shapes seen": base["shapes seen"], "vectors": base["vectors"], "word median norm": base["word median norm"]},
            "train_seconds": {str(s): per_seed[s]["train_seconds"] for s in seeds},
            "seed_seconds": {str(s): per_seed[s]["seconds"] for s in seeds}}


GRID_ROWS = ("before", *RUNS)


def grid(pictures: dict[str, np.ndarray], path: Path, seed: int) -> None:
    """Training seed `seed`'s images: a row per run, a column per test prompt, then the training images; named in the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sdtune.data import toyworld
    from sdtune.evaluation.provenance import write_figure
    from sdtune.evaluation.subject import subject_prompts

    rows = subject_prompts(TOKEN)
    training = [toyworld.render(s) for shape in ("star", "triangle") for s in scenes(shape)]
    columns = len(rows)
    fig, axes = plt.subplots(len(GRID_ROWS) + 1, columns, figsize=(0.85 * columns + 1.6, 0.95 * (len(GRID_ROWS) + 1) + 0.6))
    labels = {"before": "before:\n'diamond'"} | {name: name.replace(", ", ",\n") for name in RUNS}
    for row, name in zip(axes, GRID_ROWS):
        for ax, image in zip(row, pictures[name]):
            ax.imshow(image); ax.set_xticks([]); ax.set_yticks([])
        row[0].set_ylabel(labels[name], fontsize=8, rotation=0, ha="right", va="center")
    for ax, (_, colour, background) in zip(axes[0], rows):
        ax.set_title(f"{colour}\non {background}", fontsize=7)
    last = axes[-1]
    for ax in last:
        ax.axis("off")
    for i, (ax, image) in enumerate(zip(last, training)):
        ax.imshow(image); ax.set_title("star" if i < DATA["images"] else "triangle", fontsize=7)
    last[0].text(-0.1, 0.5, "training\nimages", fontsize=8, ha="right", va="center", transform=last[0].transAxes)
    fig.suptitle(f"Textual Inversion study, training seed {seed}: 'a {{colour}} <sks> on a {{background}} background' "
                 "(columns), one run per row; sampling seed 0", fontsize=9)
    plt.tight_layout()
    write_figure(path, fig, dpi=72)


def main() -> None:
    from sdtune.evaluation.provenance import (JUDGE_WEIGHTS, TINY_SD, seed_outcomes, seed_pictures, start_tiny_study,
                                             study_parser, write_results)

    parser = study_parser(__doc__, "textual-inversion-study", RESULTS, seeds_help="training seeds (at least 3 for the differences)")
    study = start_tiny_study(parser, parser.parse_args(), min_seeds=1)
    args, seeds, work, pipe, judge = study.args, study.seeds, study.work, study.pipe, study.judge
    t0 = time.perf_counter()
    base, base_pictures = before(pipe, judge)
    base_seconds = time.perf_counter() - t0
    per_seed = {}
    for seed in seeds:
        per_seed[seed] = seed_outcomes(work, seed, lambda: run_seed(seed, pipe, judge, work))
        print(f"seed {seed}: {per_seed[seed]['seconds']:.0f} s; " + "; ".join(
            f"{name}: fidelity {sum(r['fidelity'])}/18, editability {sum(r['editability'])}/36"
            for name, r in per_seed[seed]["runs"].items()), flush=True)
    summary = summarise(per_seed, base)
    out = Path(args.out)
    settings = {"recipe": RECIPE, "token": TOKEN, "init_word": INIT_WORD, "class_noun": CLASS_NOUN, "data": DATA,
                "runs": {name: {"subject": shape, "vectors": vectors} for name, (shape, vectors) in RUNS.items()},
                "evaluation": EVAL, "seeds": seeds, "picture": {"file": out.with_suffix(".png").name, "seed": seeds[0]}}
    seconds = base_seconds + sum(p["seconds"] for p in per_seed.values())  # training and sampling, cached seeds too
    write_results(out, {"judge_sure": args.judge_sure, "settings": settings, **summary, "seconds": seconds}, weights=[TINY_SD, JUDGE_WEIGHTS], overwrite=True)
    with np.load(seed_pictures(work, seeds[0])) as pictures:
        grid(base_pictures | dict(pictures), out.with_suffix(".png"), seeds[0])
    print(f"wrote {out} and its grid ({seconds:.0f} s of training and sampling)")
    for name, r in summary["runs"].items():
        print(f"  {name:<20} " + "  ".join(f"{m} {r[m]['pooled']!s:<22}" for m in MEASURES))
    for d in summary["differences"]:
        if d["measure"] in ("fidelity", "editability"):
            print(f"  {d['measure']:<12} {d['verdict']}")


if __name__ == "__main__":
    main()
