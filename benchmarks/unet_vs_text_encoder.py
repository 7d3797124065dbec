"""Chapter 04's experiment over several training seeds: a LoRA on the UNet, on the text encoder and the UNet, and on the
text encoder alone, taught the same style; what each draws with its trigger word and what leaks without it.

    python benchmarks/unet_vs_text_encoder.py [--seeds 0,1,2] [--threads 1] [--work DIR] [--out FILE]

Per training seed, three rank-4 attention LoRAs on chapter 04's 24 *outlined* toy images (the style word is the
trigger), with the same steps, batch and seed (every option given):

- **UNet**: `train(TrainConfig(adapter="lora", targets="attn", ...))`;
- **TE + UNet**: the same with `train_text_encoder=True` and the text encoder at half the UNet's learning rate;
- **TE only**: a LoRA on the text encoder's attention alone, trained by the loop that chapter 04 writes by hand
  (`train_text_encoder_only` below: the same loop, so that the chapter's live run is one seed of this study).

Then the TE + UNet file with each half switched off (its text-encoder layers at scale 0: "UNet half only"; its UNet
layers at scale 0: "TE half only"). Every adapter, and the base model once, is judged on 24 held-out scenes, each
prompted twice: with the trigger ("a outlined green square on a gray background") and without it ("a green square on
a gray background", the same scene drawn flat); 15 DDIM steps, guidance 4, sampling seed 0, so outcomes are paired
image by image. Measures: the style with the trigger (the judge sees outlines), leakage (outlines without the
trigger), shape and colour (over both prompt sets). Also per seed: how far each adapter moves the prompt embeddings
(mean cosine distance per token, as chapter 04's section 4 measures it) and each run's training seconds (as timed in
the study, UNet always first and on whatever else the machine runs, so the study computes no difference from them:
chapter 04 takes the cost in time from benchmarks/text_encoder_cost.py, which times the two runs alone in alternating
order).

Rates are k/n pooled over seeds with Wilson 95% intervals; each difference chapter 04 states (DIFFERENCES) is the mean
of the per-seed differences with a t-interval over seeds (`sdtune.evaluation.stats`), "not resolved" when it includes
zero. Each seed is cached in --work (reused only if every setting is unchanged): about a minute a seed on one CPU
thread. The results file (benchmarks/results/unet_vs_text_encoder_cpu.json) records the command, the commit, the machine and the sha256 of
the tiny model and the judge.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "unet_vs_text_encoder_cpu.json"

STYLE, IMAGES, HELD_OUT = "outlined", 24, 24
SAMPLING = {"num_inference_steps": 15, "guidance_scale": 4.0, "seed": 0}  # the same images for every run
RANK, STEPS, BATCH, LR, TE_LR, TE_ONLY_LR = 4, 80, 8, 1e-3, 5e-4, 1e-3
# the UNet run's every option (chapter 04 asserts its live recipe is this one); TE + UNet adds the text encoder
FIXED = {"adapter": "lora", "targets": "attn", "rank": RANK, "alpha": float(RANK), "steps": STEPS, "batch_size": BATCH,
         "lr": LR, "max_timestep": 1000, "min_timestep": 0, "lr_scheduler": "constant", "warmup_steps": 0, "max_grad_norm": 0.0}
RUNS = ("UNet", "TE + UNet", "TE only")
HALVES = {"UNet half only": "text_encoder", "TE half only": "unet"}  # label -> the component switched off
MEASURES = ("style", "leak", "shape", "colour")
DIFFERENCES = [  # (a, b, measure), paired by training seed
    ("UNet", "base", "style"), ("TE + UNet", "UNet", "style"), ("TE only", "UNet", "style"), ("TE only", "base", "style"),
    ("UNet", "base", "leak"), ("UNet", "TE + UNet", "leak"), ("UNet", "TE only", "leak"), ("TE only", "base", "leak"),
    ("UNet", "base", "shape"), ("TE only", "UNet", "colour"), ("TE only", "base", "colour"),
    ("TE + UNet", "UNet half only", "style"), ("TE + UNet", "TE half only", "style"),
]


def scenes() -> tuple[list, list]:
    """The held-out scenes with the style, and the same scenes flat (no trigger word): as the chapter builds them."""
    from sdtune.data import toyworld

    held_out = toyworld.sample_scenes(HELD_OUT, seed=100, styles=[STYLE])
    return held_out, [dataclasses.replace(s, style="flat") for s in held_out]


def train_text_encoder_only(pipe, data: Path, out: Path, steps: int, lr: float, rank: int, batch_size: int, seed: int,
                            name: str = "te_only") -> Path:
    """Chapter 04's loop: a LoRA on the text encoder's attention, the UNet frozen, the loss through both."""
    from diffusers import DDPMScheduler

    from sdtune.data.folder import load_examples, scan_folder
    from sdtune.formats.adapters import add_adapter, remove_adapter, save_adapter
    from sdtune.formats.kohya import kohya_metadata
    from sdtune.io import write_json
    from sdtune.methods import adapter_config
    from sdtune.training import encode_captions, encode_images, unet_inputs

    examples = scan_folder(data)
    latents_mean, latents_std = encode_images(pipe, load_examples(examples, 64))
    captions = [e.caption for e in examples]
    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    torch.manual_seed(seed)
    add_adapter(pipe.text_encoder, adapter_config("lora", rank, rank, "attn", "text_encoder"), name)
    params = [p for p in pipe.text_encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(captions), (batch_size,), generator=gen)
        z0 = latents_mean[idx] + latents_std[idx] * torch.randn(latents_mean[idx].shape, generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
        cond = encode_captions(pipe, [captions[i] for i in idx.tolist()], "cpu")
        pred = pipe.unet(noise_scheduler.add_noise(z0, noise, t), t, **unet_inputs(pipe, cond, 64)).sample
        loss = (pred - noise).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    pipe.text_encoder.eval()
    out.mkdir(parents=True, exist_ok=True)
    save_adapter(pipe, out, name, "lora", out.name, kohya_metadata("lora", rank, float(rank), "sdtune_tiny"))
    write_json(out / "loss.json", {"loss": losses})
    remove_adapter(pipe, name)
    return out


def evaluate(pipe, judge) -> dict[str, list[bool]]:
    """Per image: style with the trigger, leak without it, shape and colour over both prompt sets."""
    import sdtune
    from sdtune.data import toyworld

    held_out, flat = scenes()
    images = sdtune.sample(pipe, [toyworld.caption(s) for s in held_out + flat], **SAMPLING)
    on, off = judge.predict(images[:HELD_OUT]), judge.predict(images[HELD_OUT:])
    return {"style": [p == STYLE for p in on["style"]],
            "leak": [p == STYLE for p in off["style"]],
            "shape": [p == s.shape for p, s in zip(on["shape"] + off["shape"], held_out + flat)],
            "colour": [p == s.colour for p, s in zip(on["colour"] + off["colour"], held_out + flat)]}


@torch.no_grad()
def embeddings(pipe) -> torch.Tensor:
    """The prompt embeddings c the UNet reads: the held-out prompts with the trigger, without it, and the empty prompt."""
    from sdtune.data import toyworld
    from sdtune.training import encode_captions

    held_out, flat = scenes()
    return encode_captions(pipe, [toyworld.caption(s) for s in held_out + flat] + [""], "cpu")["embeds"]


def embedding_distances(base: torch.Tensor, moved: torch.Tensor) -> dict[str, float]:
    """Mean cosine distance 1 - cos(c_i, c'_i) over prompts and token positions: with the trigger (also split before the
    trigger's position and from it on), without it (from the same position on), and the empty prompt."""
    from sdtune.data import toyworld

    held_out, _ = scenes()
    d = 1 - torch.nn.functional.cosine_similarity(base, moved, dim=-1)  # (prompts, positions)
    at = 1 + toyworld.caption(held_out[0]).split().index(STYLE)  # the trigger's position, after <bos> (one token per word)
    return {"with trigger": d[:HELD_OUT].mean().item(), "without trigger": d[HELD_OUT:2 * HELD_OUT].mean().item(),
            "empty prompt": d[2 * HELD_OUT].mean().item(), "with trigger, before it": d[:HELD_OUT, :at].mean().item(),
            "with trigger, from it on": d[:HELD_OUT, at:].mean().item(),
            "without trigger, from the same position on": d[HELD_OUT:2 * HELD_OUT, at:].mean().item()}


def set_component_scale(pipe, component: str, name: str, scale: float) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for m in getattr(pipe, component).modules():
        if isinstance(m, BaseTunerLayer) and name in m.scaling:
            m.set_scale(name, scale)


def settings() -> dict:
    """Everything that decides a seed's outcomes: a cached seed is reused only if these are unchanged."""
    return {"style": STYLE, "training_images": IMAGES, "held_out_scenes": HELD_OUT, "sampling": SAMPLING, "unet_lora": FIXED,
            "text_encoder_lr": TE_LR, "text_encoder_only_lr": TE_ONLY_LR}


def run_seed(seed: int, work: Path, judge, pipe, data: Path) -> dict:
    """The three runs of one training seed, and the two halves of the TE + UNet file: per-image outcomes, train seconds."""
    import sdtune
    from sdtune.formats.adapters import remove_adapter
    from sdtune.training import TrainConfig, train

    recipes = {
        "UNet": lambda out: train(TrainConfig(data=str(data), out=str(out), seed=seed, overwrite=True, **FIXED), pipe=pipe),
        "TE + UNet": lambda out: train(TrainConfig(data=str(data), out=str(out), seed=seed, overwrite=True, train_text_encoder=True,
                                                   text_encoder_lr=TE_LR, **FIXED), pipe=pipe),
        "TE only": lambda out: train_text_encoder_only(pipe, data, out, STEPS, TE_ONLY_LR, RANK, BATCH, seed),
    }
    outs, seconds = {}, {}
    for run, recipe in recipes.items():
        start = time.perf_counter()
        outs[run] = recipe(work / "runs" / f"{''.join(c if c.isalnum() else '-' for c in run)}-seed{seed}")
        seconds[run] = round(time.perf_counter() - start, 2)
    result, distances, base_embeds = {}, {}, embeddings(pipe)
    for run, out in outs.items():
        sdtune.load_adapter(pipe, out / f"{out.name}.safetensors", "run")
        distances[run] = embedding_distances(base_embeds, embeddings(pipe))
        result[run] = evaluate(pipe, judge)
        if run == "TE + UNet":
            for label, off in HALVES.items():
                set_component_scale(pipe, off, "run", 0.0)
                result[label] = evaluate(pipe, judge)
                set_component_scale(pipe, off, "run", 1.0)
        remove_adapter(pipe, "run")
    return {"settings": settings(), "outcomes": result, "train_s": seconds, "embedding_distance": distances}


def main() -> None:
    from sdtune.evaluation.provenance import JUDGE_WEIGHTS, TINY_SD, start_tiny_study, study_parser, write_results
    from sdtune.evaluation.stats import Rate, seed_difference
    from sdtune.io import write_json

    parser = study_parser(__doc__, "unet-vs-text-encoder", RESULTS, seeds_help="training seeds (at least 3)")
    study = start_tiny_study(parser, parser.parse_args())
    args, seeds, work, pipe, judge = study.args, study.seeds, study.work, study.pipe, study.judge

    from sdtune.data import toyworld
    data = work / f"data-{STYLE}"
    if not data.is_dir():
        toyworld.write_dataset(toyworld.sample_scenes(IMAGES, seed=1, styles=[STYLE]), data)
    base = evaluate(pipe, judge)
    runs, seconds, distances = {}, {}, {}
    for seed in seeds:
        cache = work / f"seed{seed}.json"
        cached = json.loads(cache.read_text()) if cache.is_file() else None
        if cached is None or cached["settings"] != json.loads(json.dumps(settings())):
            start = time.perf_counter()
            print(f"{time.strftime('%H:%M:%S')} seed {seed} ...", flush=True)
            cached = run_seed(seed, work, judge, pipe, data)
            write_json(cache, cached)
            print(f"  seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
        runs[seed] = cached["outcomes"] | {"base": base}
        seconds[seed] = cached["train_s"]
        distances[seed] = cached["embedding_distance"]

    conditions = ["base", *RUNS, *HALVES]
    table = {c: {m: {"pooled": Rate.of([o for s in seeds for o in runs[s][c][m]]),
                     "per_seed": {str(s): Rate.of(runs[s][c][m]) for s in seeds}} for m in MEASURES} for c in conditions}
    for c in conditions:
        print(f"{c:<16} " + "  ".join(f"{m} {table[c][m]['pooled']}" for m in MEASURES))
    diffs = []
    for a, b, m in DIFFERENCES:
        d = seed_difference([Rate.of(runs[s][a][m]) for s in seeds], [Rate.of(runs[s][b][m]) for s in seeds], a, b)
        diffs.append(d.as_dict() | {"measure": m})
        print(f"{m}: {d.verdict()}")
    write_results(args.out, {
        "judge_sure": args.judge_sure,
        "settings": settings() | {"seeds": seeds, "threads": args.threads},
        "conditions": table,
        "differences": diffs,
        "train_s": {str(s): seconds[s] for s in seeds},
        "embedding_distance": {str(s): distances[s] for s in seeds},
        "outcomes": {str(s): {c: runs[s][c] for c in conditions if c != "base"} for s in seeds} | {"base": base},
    }, weights=[TINY_SD, JUDGE_WEIGHTS], overwrite=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
