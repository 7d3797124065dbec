"""`sdtune demo`: the whole idea of the course in one command, on the CPU, in about a minute.

1. sample the tiny model for prompts that ask for a *striped* shape: it has never seen stripes, so the
   judge finds almost none;
2. write 24 toy-world images of striped shapes as a training folder (images + .txt captions);
3. train a rank-4 LoRA on the UNet's attention layers;
4. sample the same prompts with the same seed, now with the LoRA, and measure again.
"""

from __future__ import annotations

import json
from pathlib import Path

from .data import toyworld
from .evaluation.judge import agreement, load_judge
from .io import check_output_folder, staged_folder
from .models.loading import load_pipeline
from .sampling import image_grid, sample
from .training import TrainConfig, train


def run_demo(out: str | Path = "sdtune-demo", model: str | Path = "tiny", steps: int = 150, overwrite: bool = False) -> dict:
    out = check_output_folder(out, overwrite)
    with staged_folder(out) as tmp:
        pipe = load_pipeline(model)
        pipe.set_progress_bar_config(disable=True)
        judge = load_judge()
        test = toyworld.sample_scenes(16, seed=100, styles=["striped"])
        prompts = [toyworld.caption(s) for s in test]

        before = sample(pipe, prompts, seed=0)
        train_scenes = toyworld.sample_scenes(24, seed=1, styles=["striped"])
        toyworld.write_dataset(train_scenes, tmp / "data")
        lora_dir = train(TrainConfig(data=str(tmp / "data"), out=str(tmp / "lora"), model=str(model), steps=steps), pipe=pipe)
        pipe.load_lora_weights(lora_dir)
        after = sample(pipe, prompts, seed=0)

        scores = {
            "before": agreement(judge.predict(before), test),
            "after": agreement(judge.predict(after), test),
        }
        image_grid(before + after, cols=16, scale=2).save(tmp / "before_after.png")
        (tmp / "scores.json").write_text(json.dumps(scores, indent=1))
    print(f"prompts: {prompts[0]!r}, ... ({len(prompts)} striped scenes)")
    for attribute in ("style", "shape", "colour", "background"):
        print(f"  judge sees the prompted {attribute:<10}: before {100 * scores['before'][attribute]:5.1f}%"
              f"   after LoRA {100 * scores['after'][attribute]:5.1f}%")
    print(f"wrote {out}/before_after.png (top row before, bottom row after), {out}/lora, {out}/data")
    return scores
