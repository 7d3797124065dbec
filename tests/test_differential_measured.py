"""Differential LoRA, measured on the shipped tiny model (about 40 s): B - A adds B's quality to prompts without any
trigger word and leaves the objects where they are, while B alone, trained on the same images, moves them too.

The pairs: eight toy scenes drawn flat (A) and shaded (B), every pair in one shared composition that no caption
names (small objects near the top left), B captioned word for word like A. What the two LoRAs share (that
composition) cancels in B - A; what only B has (the shading) stays. Chapter 15 measured, over two seeds: the judge
sees shading in 4% of base images and 54% with B - A at scale 2; object area 0.170 vs 0.168; B alone 0.132-0.136.
"""

from dataclasses import replace

import numpy as np
import pytest
import torch

import sdtune
from sdtune.data import toyworld
from sdtune.evaluation.judge import agreement, to_tensor
from sdtune.formats.adapters import remove_adapter, set_adapter_scale
from sdtune.methods.differential import train_differential
from sdtune.training import TrainConfig

# all 24 shape x colour pairs, the three backgrounds in turn (every third base prompt would be white only)
EVAL = [s for i, s in enumerate(toyworld.base_prompts()) if i % 3 == (i // 3) % 3]


def shared_composition_pairs(n: int, seed: int) -> list[tuple[toyworld.Scene, toyworld.Scene]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for flat, shaded in toyworld.paired_scenes(n, seed=seed + 10, kind="shading"):
        place = dict(cx=float(rng.uniform(15, 21)), cy=float(rng.uniform(15, 21)), radius=float(rng.uniform(9, 12)))
        pairs.append((replace(flat, **place), replace(shaded, **place)))
    return pairs


def measure(pipe, judge) -> dict[str, float]:
    """Shaded share (judge), content accuracy (judge) and object area (chromatic pixels: the backgrounds are gray)."""
    images = to_tensor(sdtune.sample(pipe, [toyworld.caption(s) for s in EVAL], 10, seed=0))
    predicted = judge.predict(images)
    accuracy = agreement(predicted, EVAL)
    area = ((images.amax(1) - images.amin(1)) > 0.12).float().mean()
    return {"shaded": float(np.mean([p == "shaded" for p in predicted["style"]])),
            "content": (accuracy["shape"] + accuracy["colour"] + accuracy["background"]) / 3, "area": float(area)}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_difference_adds_shading_without_a_trigger_word_and_keeps_the_objects(tmp_path, judge):
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    pairs = shared_composition_pairs(8, seed=0)
    folder_a = toyworld.write_dataset([a for a, _ in pairs], tmp_path / "flat")
    folder_b = toyworld.write_dataset([b for _, b in pairs], tmp_path / "shaded")
    for caption_a, caption_b in zip(sorted(folder_a.glob("*.txt")), sorted(folder_b.glob("*.txt"))):
        caption_b.write_text(caption_a.read_text())  # no word for the difference: B - A needs no trigger
    cfg = TrainConfig(data=str(folder_a), out=str(tmp_path / "difference"), steps=80, batch_size=8, lr=2e-3, rank=4, seed=0)
    out = train_differential(pipe, cfg, folder_a, folder_b)

    base = measure(pipe, judge)
    sdtune.load_adapter(pipe, out, "difference")
    set_adapter_scale(pipe, "difference", 2.0)
    difference = measure(pipe, judge)
    remove_adapter(pipe, "difference")
    sdtune.load_adapter(pipe, out.with_name(out.name + "-parts") / "B" / "B.safetensors", "B")
    b_alone = measure(pipe, judge)
    remove_adapter(pipe, "B")

    assert difference["shaded"] > base["shaded"] + 0.3, (base, difference)  # measured 4% -> 54%
    assert difference["content"] >= base["content"] - 0.1, (base, difference)
    assert abs(difference["area"] / base["area"] - 1) < 0.1, (base, difference)  # measured 0.170 vs 0.168
    assert b_alone["area"] < 0.9 * base["area"], (base, b_alone)  # B also learned the composition: 0.132
    torch.testing.assert_close(pipe.unet.state_dict()["conv_in.weight"], sdtune.load_pipeline("tiny").unet.state_dict()["conv_in.weight"])
