"""Chapter 09's comparison over training seeds: one subject taught by full DreamBooth, DreamBooth-LoRA, Textual
Inversion and a hypernetwork, on one budget.

    python benchmarks/four_methods_study.py [--seeds 0,1,2,3,4] [--threads 1] [--work DIR] [--out FILE]

Per training seed, chapter 09's section 2 exactly (the chapter asserts that its live run is seed 0 of this recipe):
five renders of a yellow star (a shape the tiny model never drew), captioned "a yellow sks diamond on a {background}
background" for DreamBooth, DreamBooth-LoRA and the hypernetwork and "a yellow <sks> on ..." for Textual Inversion;
80 steps, batch 4, each method at its own learning rate (RECIPE); both DreamBooth runs with prior preservation on 16
class images of "a diamond", drawn by the frozen model with the training seed (as the trainer draws them).

Each run, and the base model once, is measured as the chapter measures it (`sdtune.evaluation.subject.subject_scores`:
18 prompts "a {colour} {phrase} on a {background} background", every base colour and background, 10 DDIM steps,
sampling seed 0), image by image:

- fidelity:     the judge sees a star (18 images);
- editability:  the judge sees the prompted colour, and the prompted background (36 judgements, two per image: their
                mean is subject_scores' editability);
- class kept:   "a {colour} diamond on a {background} background" still draws a diamond (18 images);
- drift:        the relative change of the UNet's noise prediction on 8 prompts that never mention the subject or its
                class, and on the empty prompt (a number per run, not a rate).

Rates are k/n pooled over seeds with Wilson 95% intervals; each difference the chapter states (DIFFERENCES) is the
mean of the per-seed differences with a t-interval over seeds (`sdtune.evaluation.stats.seed_difference`), "not
resolved" when it includes zero. Also per seed: trainable parameters, file size and training seconds. Seed 0's images
(the chapter's picture: the subject in its trained look and edited, and the class) are saved beside the results
(four_methods_study_cpu.png), rows and columns named in the image.

Each seed is cached in --work (reused only if every setting is unchanged): about a minute a seed on one CPU thread
(the committed file: 5 seeds, 53 to 70 s each, about 5 minutes in all; 3 seeds left the fidelity differences unresolved).
The results file records the command, the commit, the machine and the sha256 of the tiny model and the judge.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "four_methods_study_cpu.json"

# The chapter's recipe (course/09_lora_dreambooth_ti_hypernetworks.ipynb asserts that it trains exactly this).
SUBJECT = {"shape": "star", "colour": "yellow", "backgrounds": ["white", "gray"], "images": 5, "data_seed": 7,
           "identifier": "sks", "class_noun": "diamond", "token": "<sks>"}
RECIPE = {"steps": 80, "batch_size": 4, "max_timestep": 1000, "num_class_images": 16, "prior_loss_weight": 1.0,
          "rank": 8, "targets": "attn-mlp", "layer_structure": "1,2,1", "vectors": 1,
          "lr": {"DreamBooth": 4e-4, "DreamBooth-LoRA": 6e-3, "Textual Inversion": 1e-2, "hypernetwork": 2e-3}}
MEASURE = {"num_inference_steps": 10, "seeds": 1}  # subject_scores' sampling (its default guidance)
METHODS = ("DreamBooth", "DreamBooth-LoRA", "Textual Inversion", "hypernetwork")
MEASURES = ("fidelity", "editability", "class kept")
FILES = {"DreamBooth": "unet/diffusion_pytorch_model.safetensors", "DreamBooth-LoRA": "db_lora.safetensors",
         "Textual Inversion": "learned_embeds.safetensors", "hypernetwork": "hypernetwork.safetensors"}
SHOW = [("yellow", "white"), ("yellow", "gray"), ("red", "black"), ("blue", "white")]  # the picture: trained look, then edits
DIFFERENCES = [  # (a, b, measure), paired by training seed: each comparison chapter 09 makes
    ("DreamBooth", "Textual Inversion", "fidelity"), ("DreamBooth-LoRA", "Textual Inversion", "fidelity"),
    ("DreamBooth-LoRA", "DreamBooth", "fidelity"), ("DreamBooth", "hypernetwork", "fidelity"),
    ("DreamBooth-LoRA", "DreamBooth", "editability"), ("DreamBooth", "base", "editability"),
    ("Textual Inversion", "DreamBooth", "editability"), ("hypernetwork", "base", "editability"),
    ("DreamBooth-LoRA", "DreamBooth", "class kept"), ("DreamBooth", "base", "class kept"),
    ("DreamBooth-LoRA", "base", "class kept"), ("hypernetwork", "base", "class kept"),
]


def phrase(method: str) -> str:
    """What the prompts call the subject: the new word for Textual Inversion, identifier and class for the others."""
    return SUBJECT["token"] if method == "Textual Inversion" else f"{SUBJECT['identifier']} {SUBJECT['class_noun']}"


def subject_folder(folder: Path, method_phrase: str) -> Path:
    """The five renders, captioned "a yellow {phrase} on a {background} background" (the chapter's `subject_folder`)."""
    from sdtune.data import toyworld

    if not folder.is_dir():
        scenes = toyworld.sample_scenes(SUBJECT["images"], seed=SUBJECT["data_seed"], shapes=[SUBJECT["shape"]],
                                        colours=[SUBJECT["colour"]], backgrounds=SUBJECT["backgrounds"])
        toyworld.write_dataset(scenes, folder)
        for scene, txt in zip(scenes, sorted(folder.glob("*.txt"))):
            txt.write_text(f"a {SUBJECT['colour']} {method_phrase} on a {scene.background} background")
    return folder


def configs(seed: int, work: Path, out: Path) -> dict:
    """The four training configurations of one seed, every option as the chapter gives it."""
    from sdtune.training import (
        DreamBoothConfig,
        HypernetworkConfig,
        TextualInversionConfig,
    )

    db_data = subject_folder(work / "data_db", phrase("DreamBooth"))
    ti_data = subject_folder(work / "data_ti", phrase("Textual Inversion"))
    noun, lr = SUBJECT["class_noun"], RECIPE["lr"]
    shared = {"steps": RECIPE["steps"], "batch_size": RECIPE["batch_size"], "seed": seed, "max_timestep": RECIPE["max_timestep"],
              "overwrite": True}
    dreambooth = {"data": str(db_data), "instance_prompt": f"a {SUBJECT['colour']} {phrase('DreamBooth')}",
                  "class_prompt": f"a {noun}", "num_class_images": RECIPE["num_class_images"],
                  "class_data": str(work / "class_images"), "prior_loss_weight": RECIPE["prior_loss_weight"]}
    return {
        "DreamBooth": DreamBoothConfig(out=str(out / "db_full"), adapter="full", lr=lr["DreamBooth"], **dreambooth, **shared),
        "DreamBooth-LoRA": DreamBoothConfig(out=str(out / "db_lora"), adapter="lora", rank=RECIPE["rank"], targets=RECIPE["targets"],
                                            lr=lr["DreamBooth-LoRA"], **dreambooth, **shared),
        "Textual Inversion": TextualInversionConfig(data=str(ti_data), out=str(out / "ti"), token=SUBJECT["token"], init_word=noun,
                                                    vectors=RECIPE["vectors"], lr=lr["Textual Inversion"], **shared),
        "hypernetwork": HypernetworkConfig(data=str(db_data), out=str(out / "hn"), layer_structure=RECIPE["layer_structure"],
                                           lr=lr["hypernetwork"], **shared),
    }


@contextlib.contextmanager
def applied(pipe, method: str, out: Path | None):
    """The pipeline with `method`'s result in it (as the chapter's `applied`); afterwards `pipe` is the base model again."""
    import sdtune
    from sdtune.formats.adapters import remove_adapter
    from sdtune.methods import hypernetwork as hypernet
    from sdtune.methods.textual_inversion import load_embedding, remove_embedding

    if method == "DreamBooth":
        tuned = sdtune.load_pipeline(out)
        tuned.set_progress_bar_config(disable=True)
        yield tuned
        del tuned
    elif method == "DreamBooth-LoRA":
        name = sdtune.load_adapter(pipe, out / FILES[method], "db_lora")
        yield pipe
        remove_adapter(pipe, name)
    elif method == "Textual Inversion":
        load_embedding(pipe, out)
        yield pipe
        remove_embedding(pipe, SUBJECT["token"])
    elif method == "hypernetwork":
        hypernet.load_hypernetwork(pipe.unet, out)
        yield pipe
        hypernet.detach(pipe.unet)
    else:
        yield pipe


def outcomes(pipe, judge, method_phrase: str) -> dict[str, list[bool]]:
    """Per image (per judgement for editability), what `subject_scores` averages: same prompts, seed and steps."""
    from sdtune.evaluation.subject import subject_prompts
    from sdtune.sampling import TINY_GUIDANCE, sample

    def judged(words: str):
        rows = subject_prompts(words)
        images = []
        for s in range(MEASURE["seeds"]):
            images += sample(pipe, [p for p, _, _ in rows], MEASURE["num_inference_steps"], TINY_GUIDANCE, seed=1000 * s)
        return rows * MEASURE["seeds"], judge.predict(images)

    rows, seen = judged(method_phrase)
    _, class_seen = judged(SUBJECT["class_noun"])
    return {"fidelity": [p == SUBJECT["shape"] for p in seen["shape"]],
            "editability": [p == c for p, (_, c, _) in zip(seen["colour"], rows)]
                           + [p == b for p, (_, _, b) in zip(seen["background"], rows)],
            "class kept": [p == SUBJECT["class_noun"] for p in class_seen["shape"]]}


def unrelated_prompts() -> list[str]:
    """Prompts that never mention the subject or its class (the chapter's UNRELATED)."""
    from sdtune.data import toyworld

    return [toyworld.caption(s) for s in toyworld.base_prompts() if s.shape != SUBJECT["class_noun"]][::7]


@torch.no_grad()
def noise_prediction(pipe) -> torch.Tensor:
    """The UNet's noise prediction for the unrelated prompts and the empty one, on fixed noise at t = 500."""
    prompts = unrelated_prompts()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(len(prompts) + 1, pipe.unet.config.in_channels, 8, 8, generator=g)
    cond, _ = pipe.encode_prompt(prompts + [""], pipe.device, 1, False)
    return pipe.unet(z, torch.full((len(prompts) + 1,), 500), encoder_hidden_states=cond).sample


def drift(eps: torch.Tensor, base_eps: torch.Tensor) -> dict[str, float]:
    """||eps - eps_base|| / ||eps_base|| per prompt: the mean over the unrelated prompts, and the empty prompt."""
    change = (eps - base_eps).flatten(1).norm(dim=1) / base_eps.flatten(1).norm(dim=1)
    return {"drift": change[:-1].mean().item(), "drift empty": change[-1].item()}


def picture_prompts(method: str) -> list[str]:
    """The picture's columns: the subject in its trained look and edited, then the class in two colours."""
    noun = SUBJECT["class_noun"]
    return ([f"a {c} {phrase(method)} on a {b} background" for c, b in SHOW]
            + [f"a red {noun} on a black background", f"a blue {noun} on a white background"])


def measure(pipe, judge, method: str, out: Path | None, base_eps: torch.Tensor | None, work: Path, key: str) -> dict:
    """One method's (or the base model's) outcomes, drift and picture images (saved in work)."""
    import sdtune

    with applied(pipe, method, out) as p:
        result = {"outcomes": outcomes(p, judge, phrase(method)), "eps": noise_prediction(p)}
        images = sdtune.sample(p, picture_prompts(method), MEASURE["num_inference_steps"], seed=0)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(work / "picture" / f"{key}-{i}.png"))
        Path(paths[-1]).parent.mkdir(parents=True, exist_ok=True)
        image.save(paths[-1])
    result["picture"] = paths
    if base_eps is not None:
        result |= drift(result["eps"], base_eps)
    return result


def run_seed(seed: int, work: Path, judge, pipe, base_eps: torch.Tensor) -> dict:
    """The four trainings of one seed on the shared pipeline, then each measured: outcomes, drift, cost."""
    from safetensors.torch import load_file

    from sdtune.training import train

    out = work / "runs" / f"seed{seed}"
    result, folders, seconds = {"settings": settings()}, {}, {}
    for method, cfg in configs(seed, work, out).items():  # all four trained first, then measured: as the chapter does
        start = time.perf_counter()
        folders[method] = train(cfg, pipe=pipe)
        seconds[method] = time.perf_counter() - start
    for method, folder in folders.items():
        tensors = load_file(folder / FILES[method])
        seen = measure(pipe, judge, method, folder, base_eps, work, f"seed{seed}-{method}")
        seen.pop("eps")
        result[method] = seen | {"train_s": round(seconds[method], 2),
                                 "params": sum(t.numel() for k, t in tensors.items() if not k.endswith(".alpha")),
                                 "file_kB": round((folder / FILES[method]).stat().st_size / 1e3, 1)}
        print(f"  {method:<18} {seconds[method]:5.0f} s  "
              + "  ".join(f"{m} {sum(v)}/{len(v)}" for m, v in seen["outcomes"].items()), flush=True)
    return result


def settings() -> dict:
    """Everything that decides a seed's outcomes: a cached seed is reused only if these are unchanged."""
    return {"subject": SUBJECT, "recipe": RECIPE, "measure": MEASURE, "picture_prompts": {m: picture_prompts(m) for m in METHODS},
            "unrelated_prompts": unrelated_prompts()}


def summarize(runs: dict[int, dict], base: dict) -> tuple[dict, list]:
    """Pooled and per-seed Rates for each method and the base model, and the paired differences of DIFFERENCES."""
    from sdtune.evaluation.stats import Rate, seed_difference

    seeds = list(runs)
    per = lambda method, s: (base if method == "base" else runs[s][method])["outcomes"]
    table = {method: {m: {"pooled": Rate.of([o for s in seeds for o in per(method, s)[m]]),
                          "per_seed": {str(s): Rate.of(per(method, s)[m]) for s in seeds}} for m in MEASURES}
             for method in ("base", *METHODS)}
    diffs = []
    for a, b, m in DIFFERENCES:
        d = seed_difference([Rate.of(per(a, s)[m]) for s in seeds], [Rate.of(per(b, s)[m]) for s in seeds], a, b)
        diffs.append(d.as_dict() | {"measure": m})
    return table, diffs


def picture(rows: dict[str, list[str]], columns: list[str]):
    """The labelled grid: one row per method (training seed 0), one column per prompt, names in the image."""
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(len(rows), len(columns), figsize=(1.45 * len(columns) + 1.2, 1.5 * len(rows) + 0.6))
    for row_axes, (name, paths) in zip(axes, rows.items()):
        for ax, path in zip(row_axes, paths):
            ax.imshow(Image.open(path)); ax.set_xticks([]); ax.set_yticks([])
        row_axes[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    for ax, column in zip(axes[0], columns):
        ax.set_title(column, fontsize=7)
    fig.suptitle(f"prompts 'a {{colour}} {phrase('DreamBooth')} on a {{background}} background' ('{SUBJECT['token']}' for Textual "
                 f"Inversion); training seed 0, {RECIPE['steps']} steps each", fontsize=8)
    fig.tight_layout()
    return fig


def main() -> None:
    from sdtune.evaluation.provenance import study_arguments, study_setup
    from sdtune.evaluation.stats import MIN_SEEDS
    from sdtune.io import write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    study_arguments(parser, "four-methods-study", RESULTS, seeds="0,1,2,3,4",
                    seeds_help=f"training seeds (at least {MIN_SEEDS}; the picture shows the first)")
    args = parser.parse_args()
    seeds, work = study_setup(parser, args, min_seeds=MIN_SEEDS)

    import sdtune
    from sdtune.evaluation.provenance import (
        JUDGE_WEIGHTS,
        TINY_SD,
        write_figure,
        write_results,
    )

    start = time.perf_counter()
    judge = sdtune.load_judge(sure=args.judge_sure)
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    base = measure(pipe, judge, "base", None, None, work, "base")
    base_eps = base.pop("eps")
    runs = {}
    for seed in seeds:
        cache = work / f"seed{seed}.json"
        cached = json.loads(cache.read_text()) if cache.is_file() else None
        if cached is None or cached["settings"] != json.loads(json.dumps(settings())):
            t0 = time.perf_counter()
            print(f"{time.strftime('%H:%M:%S')} seed {seed} ...", flush=True)
            cached = run_seed(seed, work, judge, pipe, base_eps)
            write_json(cache, cached)
            print(f"  seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
        runs[seed] = cached

    table, diffs = summarize(runs, base)
    for method, row in table.items():
        print(f"{method:<18} " + "  ".join(f"{m} {row[m]['pooled']}" for m in MEASURES))
    for d in diffs:
        print(f"{d['measure']}: {d['verdict']}")
    per_seed = {key: {m: {str(s): runs[s][m][key] for s in seeds} for m in METHODS}
                for key in ("drift", "drift empty", "train_s", "params", "file_kB")}
    for key, by_method in per_seed.items():
        print(f"{key:<12} " + "  ".join(f"{m} {list(v.values())}" for m, v in by_method.items()))

    rows = {"base": base["picture"]} | {f"{m}\nseed {seeds[0]}": runs[seeds[0]][m]["picture"] for m in METHODS}
    columns = [f"subject,\n{c} on {b}" for c, b in SHOW] + [f"class:\n'a red {SUBJECT['class_noun']}'",
                                                           f"class:\n'a blue {SUBJECT['class_noun']}'"]
    png = write_figure(Path(args.out).with_suffix(".png"), picture(rows, columns), dpi=80)
    minutes = (time.perf_counter() - start) / 60
    write_results(args.out, {
        "judge_sure": args.judge_sure,
        "settings": settings() | {"seeds": seeds, "threads": args.threads, "methods": list(METHODS),
                                  "picture": {"file": png.name, "rows": list(rows), "columns": columns}},
        "rates": table,
        "differences": diffs,
        "per_seed": per_seed,
        "outcomes": {"base": base["outcomes"]} | {str(s): {m: runs[s][m]["outcomes"] for m in METHODS} for s in seeds},
        "minutes_this_invocation": round(minutes, 1),
    }, weights=[TINY_SD, JUDGE_WEIGHTS], overwrite=True)
    print(f"wrote {args.out} and {png} ({minutes:.1f} min)")


if __name__ == "__main__":
    main()
