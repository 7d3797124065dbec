"""Chapter 11's comparisons over three trainings of the two LoRAs it combines: cat, linear, svd, TIES and DARE.

    python benchmarks/fusion_study.py [--seeds 0,1,2] [--threads 2] [--work DIR] [--out FILE]

Chapter 11 combines the shipped pink and dotted LoRAs (one training each: seed 0) into one file per recipe and judges
what each file draws. Here both LoRAs are trained again per training seed exactly as the shipped ones are
(`sdtune.models.toy_loras.train_concept`), combined with the chapter's recipes (`sdtune.algebra.combine`, weights 1
and 1: cat; linear; svd at rank 2 and 8; TIES and DARE at rank 8, density 0.5) and saved in float16 as the chapter
saves them. Every file, and each LoRA alone, draws the chapter's 24 prompts that ask for a pink dotted shape
(`combination_scenes`, seed 0; 15 DDIM steps, guidance 2.5, sampling seed 0). Measured per image: pink, dotted, both,
and the rest of the prompt (the shape and background asked for); per file, the prediction error: how far the UNet's
noise prediction with the file is from the prediction with both LoRAs loaded, relative to what the two LoRAs change.

Rates are k/n pooled over seeds with Wilson 95% intervals; each difference the chapter states (`DIFFERENCES`) is the
mean of the per-seed differences with a t-interval over seeds. Each seed is cached in --work (about 2 minutes a seed on
2 CPU threads). The results file records the command, the commit, the machine and the sha256 of the tiny model and the
judge.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "fusion_study_cpu.json"
N, STEPS, WEIGHTS, K, DENSITY = 24, 15, [1.0, 1.0], 8, 0.5
RECIPES = {"cat": ("cat", {}), "linear": ("linear", {}), "svd k=2": ("svd", {"rank": 2}), "svd k=8": ("svd", {"rank": K}),
           f"ties k={K}": ("ties", {"rank": K, "density": DENSITY}), f"dare k={K}": ("dare", {"rank": K, "density": DENSITY})}
MEASURES = ("pink", "dotted", "both", "rest")
# (a, b, measure), paired by training seed
DIFFERENCES = [("cat", "pink", "both"), ("cat", "dotted", "both"), ("cat", "linear", "rest"), ("svd k=8", "cat", "both"),
               ("cat", "linear", "both")]


def scenes():
    from sdtune.evaluation.composition import combination_scenes

    return combination_scenes({"pink": ("colour", "pink"), "dotted": ("style", "dotted")}, N, seed=0)


def judged(judge, images, scenes) -> dict[str, list[bool]]:
    """Per image: pink? dotted? both? the shape and background asked for? (as chapter 11 judges)"""
    seen = judge.predict(images)
    pink = [c == "pink" for c in seen["colour"]]
    dotted = [s == "dotted" for s in seen["style"]]
    rest = [sh == sc.shape and bg == sc.background for sh, bg, sc in zip(seen["shape"], seen["background"], scenes)]
    return {"pink": pink, "dotted": dotted, "both": [a and b for a, b in zip(pink, dotted)], "rest": rest}


def unet_out(pipe, prompts: list[str]) -> torch.Tensor:
    """The UNet's noise prediction on 8 fixed latents and timesteps (chapter 11's probe)."""
    g = torch.Generator().manual_seed(0)
    c = pipe.unet.config
    latents = torch.randn(8, c.in_channels, c.sample_size, c.sample_size, generator=g)
    text, _ = pipe.encode_prompt(prompts[:8], "cpu", 1, False)
    with torch.no_grad():
        return pipe.unet(latents, torch.linspace(100, 900, 8).long(), text).sample


def run_seed(pipe, judge, seed: int, work: Path) -> tuple[dict, dict]:
    import sdtune
    from safetensors.torch import load_file, save_file

    from sdtune.algebra import combine
    from sdtune.data import toyworld
    from sdtune.formats.adapters import remove_adapter
    from sdtune.models.toy_loras import GUIDANCE, train_concept

    sc = scenes()
    prompts = [toyworld.caption(s) for s in sc]
    outcomes, error = {}, {}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        tmp = Path(tmp)
        for name in ("pink", "dotted"):
            train_concept(pipe, name, tmp / "train", tmp, seed=seed)
        loras = [load_file(tmp / "pink.safetensors"), load_file(tmp / "dotted.safetensors")]
        files = {"pink": tmp / "pink.safetensors", "dotted": tmp / "dotted.safetensors"}
        for name, (method, kw) in RECIPES.items():
            files[name] = tmp / f"{name.replace(' ', '_').replace('=', '')}.safetensors"
            save_file({k: v.half() for k, v in combine(loras, WEIGHTS, method, **kw)[0].items()}, str(files[name]))
        base = unet_out(pipe, prompts)
        sdtune.load_adapter(pipe, files["pink"], "pink")
        sdtune.load_adapter(pipe, files["dotted"], "dotted")
        pipe.set_adapters(["pink", "dotted"], WEIGHTS)
        both = unet_out(pipe, prompts)
        remove_adapter(pipe, "pink")
        remove_adapter(pipe, "dotted")
        for name, path in files.items():
            sdtune.load_adapter(pipe, path, "combo")
            try:
                error[name] = float((unet_out(pipe, prompts) - both).norm() / (both - base).norm())
                outcomes[name] = judged(judge, sdtune.sample(pipe, prompts, STEPS, guidance_scale=GUIDANCE, seed=0), sc)
            finally:
                remove_adapter(pipe, "combo")
    return {"outcomes": outcomes, "prediction_error": error}, {}


def main() -> None:
    from sdtune.evaluation.provenance import JUDGE_WEIGHTS, TINY_SD, start_tiny_study, study_parser, write_results
    from sdtune.evaluation.stats import Rate, seed_difference, seed_rates

    parser = study_parser(__doc__, "fusion-study", RESULTS, seeds_help="training seeds of the two LoRAs (at least 3)", threads=2)
    study = start_tiny_study(parser, parser.parse_args())
    args, seeds = study.args, study.seeds
    runs = study.outcomes(lambda s: run_seed(study.pipe, study.judge, s, study.work))
    conditions = list(runs[seeds[0]]["outcomes"])
    rates = {c: {m: seed_rates({s: runs[s]["outcomes"][c][m] for s in seeds}) for m in MEASURES} for c in conditions}
    for c in conditions:
        errors = ", ".join(f"{runs[s]['prediction_error'][c]:.2f}" for s in seeds)
        print(f"{c:<10} " + "  ".join(f"{m} {rates[c][m]['pooled']}" for m in MEASURES) + f"  prediction error {errors}")
    differences = []
    for a, b, m in DIFFERENCES:
        d = seed_difference([Rate.of(runs[s]["outcomes"][a][m]) for s in seeds], [Rate.of(runs[s]["outcomes"][b][m]) for s in seeds], a, b)
        differences.append({"measure": m} | d.as_dict())
        print(f"{m:<5} {d}")
    settings = {"seeds": seeds, "threads": args.threads, "prompts": N, "steps": STEPS, "weights": WEIGHTS,
                "recipes": {name: [method, kw] for name, (method, kw) in RECIPES.items()}}
    write_results(args.out, {"judge_sure": args.judge_sure, "settings": settings, "rates": rates, "differences": differences,
                             "prediction_error": {c: {str(s): runs[s]["prediction_error"][c] for s in seeds} for c in conditions}},
                  weights=[TINY_SD, JUDGE_WEIGHTS], overwrite=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
