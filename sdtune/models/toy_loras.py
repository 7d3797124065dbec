"""The toy LoRAs shipped with sdtune: one per novel concept, for the composition chapters and tests, and an LCM-LoRA.

    python -m sdtune.models.toy_loras --out sdtune/assets/loras        (about 8 minutes on 2 CPU cores)
    python -m sdtune.models.toy_loras --out sdtune/assets/loras --only lcm --overwrite     (retrain one, keep the rest)
    python -m sdtune.models.toy_loras --out sdtune/assets/loras --measure     (train nothing: measure them again)

Each concept LoRA is trained by `sdtune.training.train` on 24 toy images showing its concept (a pink shape, a
checkerboard background, dotted shapes, a star) with every other attribute random, then measured alone: the
fraction of images in which the judge sees its concept for 24 held-out prompts that ask for it. The LCM-LoRA
is distilled (`LCMConfig`) on 144 base images and measured by prompt accuracy at 1, 2 and 4 sampling steps,
LCMScheduler with it vs DDIM without. Files: one kohya-layout `<name>.safetensors` each and `toy_loras.json`
with the settings, the measurements and, under "measured", the judge's rule and the provenance of the measurements.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from diffusers import LCMScheduler
from safetensors.torch import save_file

from ..data import toyworld
from ..defaults import recommended
from ..evaluation.judge import load_judge
from ..evaluation.prompts import prompt_accuracy
from ..evaluation.provenance import record
from ..formats.adapters import load_adapter, remove_adapter
from ..io import check_output_folder, read_safetensors, staged_folder, write_json
from ..sampling import sample
from ..training import LCMConfig, TrainConfig, train
from .loading import TINY_PATH, load_pipeline

# concept -> (toy-world attribute, value, training settings)
CONCEPTS = {
    "pink": ("colour", "pink", dict(adapter="locon", rank=8, lr=1e-3, steps=300)),
    "checkerboard": ("background", "checkerboard", dict(adapter="lora", targets="attn", rank=4, lr=3e-3, steps=150)),
    "dotted": ("style", "dotted", dict(adapter="locon", rank=8, lr=1e-3, steps=300)),
    "star": ("shape", "star", dict(adapter="locon", rank=8, lr=1e-3, steps=300)),
}

# the guidance the tiny model's LoRA recipes are sampled at (sdtune.defaults): chapters sample these LoRAs with it
GUIDANCE = recommended("tiny", "lora", "lora")["sample_guidance"].value


def save_half(src: Path, dst: Path) -> None:
    """Copy a LoRA file in float16 (half the size; the package ships at most 25 MB of weights)."""
    tensors, metadata = read_safetensors(src, "LoRA file")
    save_file({k: v.half() for k, v in tensors.items()}, str(dst), metadata=metadata)


def concept_scenes(attribute: str, value: str, n: int, seed: int) -> list[toyworld.Scene]:
    """`n` scenes showing one novel value of one attribute, the other attributes random base ones."""
    return toyworld.sample_scenes(n, seed, **{f"{attribute}s": [value]})  # shapes=, colours=, backgrounds=, styles=


def presence(pipe, judge, attribute: str, value: str, n: int = 24, seed: int = 100) -> float:
    """Fraction of images for held-out prompts asking for the concept in which the judge sees it."""
    scenes = concept_scenes(attribute, value, n, seed)
    images = sample(pipe, [toyworld.caption(s) for s in scenes], num_inference_steps=15, seed=0)
    return sum(p == value for p in judge.predict(images)[attribute]) / n


LCM = dict(steps=300, lr=1e-4, rank=8, batch_size=8)
# 24 of the 72 base prompts, every shape, colour and background among them (in base_prompts' order, i // 3 walks the
# shape-colour pairs and i % 3 the backgrounds: i % 3 == (i // 3) % 3 takes one background per pair, in turn)
LCM_PROMPTS = [s for i, s in enumerate(toyworld.base_prompts()) if i % 3 == (i // 3) % 3]


def lcm_accuracy(pipe, judge, steps: int) -> dict[str, float]:
    """Prompt accuracy (shape, colour, background) of `pipe` as it is, at `steps` sampling steps."""
    guidance = 1.0 if isinstance(pipe.scheduler, LCMScheduler) else 4.0
    return prompt_accuracy(pipe, judge, LCM_PROMPTS, seeds=1, num_inference_steps=steps, guidance_scale=guidance)


def train_lcm(pipe, work: Path, tmp: Path) -> dict:
    """Distil the LCM-LoRA into `tmp/lcm.safetensors`; returns its settings and training time."""
    data = toyworld.write_dataset(toyworld.sample_scenes(144, seed=5), work / "lcm")
    start = time.time()
    trained = train(LCMConfig(data=str(data), out=str(work / "lcm-out"), seed=0, **LCM), pipe=pipe)
    seconds = time.time() - start
    save_half(trained / "lcm-out.safetensors", tmp / "lcm.safetensors")
    return {"settings": LCM, "train_seconds": round(seconds, 1), "prompts": len(LCM_PROMPTS)}


def measure_lcm(pipe, judge, folder: Path) -> dict:
    """Prompt accuracy at 1, 2 and 4 steps: DDIM without the LCM-LoRA, LCMScheduler with `folder/lcm.safetensors`."""
    ddim = pipe.scheduler
    without = {steps: lcm_accuracy(pipe, judge, steps) for steps in (1, 2, 4)}
    pipe.scheduler = LCMScheduler.from_config(ddim.config)
    load_adapter(pipe, folder / "lcm.safetensors", "lcm")
    try:
        with_lcm = {steps: lcm_accuracy(pipe, judge, steps) for steps in (1, 2, 4)}
    finally:  # the pipeline as it came, whatever happened
        remove_adapter(pipe, "lcm")
        pipe.scheduler = ddim
    for steps in (1, 2, 4):
        print(f"lcm  {steps} steps: DDIM without {without[steps]}  LCMScheduler with the LCM-LoRA {with_lcm[steps]}", flush=True)
    return {"ddim_without": without, "lcm_with": with_lcm}


def train_concept(pipe, name: str, work: Path, tmp: Path, seed: int = 0) -> dict:
    """Train one concept LoRA into `tmp/<name>.safetensors` (the shipped ones: training seed 0); returns what it is,
    its settings and training time."""
    attribute, value, settings = CONCEPTS[name]
    data = toyworld.write_dataset(concept_scenes(attribute, value, 24, seed=1), work / name)
    start = time.time()
    trained = train(TrainConfig(data=str(data), out=str(work / f"{name}-out"), batch_size=8, seed=seed, max_timestep=1000, **settings), pipe=pipe)
    seconds = time.time() - start
    save_half(trained / f"{name}-out.safetensors", tmp / f"{name}.safetensors")
    return {"attribute": attribute, "value": value, "settings": settings, "train_seconds": round(seconds, 1)}


def measure_concept(pipe, judge, name: str, folder: Path) -> dict:
    """How often the judge sees the concept for held-out prompts asking for it, without and with its LoRA."""
    attribute, value, _ = CONCEPTS[name]
    before = presence(pipe, judge, attribute, value)
    load_adapter(pipe, folder / f"{name}.safetensors", name)
    try:
        after = presence(pipe, judge, attribute, value)
    finally:  # the pipeline as it came, whatever happened
        remove_adapter(pipe, name)
    print(f"{name:<13} {attribute:<10} base {before:5.0%}  with its LoRA {after:5.0%}", flush=True)
    return {"presence_base": before, "presence_with_lora": after}


def measure_all(pipe, judge, folder: Path, log: dict) -> dict:
    """Measure every LoRA of the log in `folder` with `judge`; the log's measurements, with the judge's rule and the
    provenance (command, commit, machine, sha256 of each LoRA and of the tiny model) beside them."""
    for name in log:
        log[name] |= measure_lcm(pipe, judge, folder) if name == "lcm" else measure_concept(pipe, judge, name, folder)
    weights = [folder / f"{name}.safetensors" for name in log] + [TINY_PATH]
    return {**log, "measured": {"judge_sure": judge.sure, "provenance": record(weights=weights)}}


def main(out: str, overwrite: bool = False, only: list[str] | None = None, measure_only: bool = False) -> None:
    unknown = sorted(set(only or []) - set(CONCEPTS) - {"lcm"})
    if unknown:
        raise ValueError(f"--only {', '.join(unknown)}: choose among {', '.join(CONCEPTS)}, lcm.")
    pipe, judge = load_pipeline("tiny"), load_judge()
    pipe.set_progress_bar_config(disable=True)
    old = Path(out) / "toy_loras.json"
    if measure_only:  # the shipped files stay as they are; only their measurements are taken again
        if not old.is_file():
            raise FileNotFoundError(f"--measure: no toy_loras.json in {out}; train the LoRAs first (without --measure).")
        log = {k: v for k, v in json.loads(old.read_text()).items() if k in CONCEPTS or k == "lcm"}
    else:
        check_output_folder(out, overwrite)
        log = json.loads(old.read_text()) if only and old.is_file() else {}
        log.pop("measured", None)
        kept = {p.name: p.read_bytes() for p in Path(out).glob("*.safetensors")} if only else {}
        with staged_folder(out) as tmp, tempfile.TemporaryDirectory() as work:
            for name, data in kept.items():
                (tmp / name).write_bytes(data)
            for name in ["lcm", *CONCEPTS]:
                if only is None or name in only:
                    log[name] = train_lcm(pipe, Path(work), tmp) if name == "lcm" else train_concept(pipe, name, Path(work), tmp)
            (tmp / "toy_loras.json").write_text(json.dumps(log, indent=1))  # the settings; the measurements follow
    write_json(old, measure_all(pipe, judge, Path(out), log), indent=1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (sdtune ships sdtune/assets/loras)")
    parser.add_argument("--overwrite", action="store_true", help="replace the folder's contents")
    parser.add_argument("--only", help=f"comma-separated: retrain only these ({', '.join(CONCEPTS)}, lcm), keep the others")
    parser.add_argument("--measure", action="store_true",
                        help="train nothing: measure the LoRAs in --out again with the current judge (rewrites toy_loras.json)")
    args = parser.parse_args()
    main(args.out, args.overwrite, args.only.split(",") if args.only else None, args.measure)
