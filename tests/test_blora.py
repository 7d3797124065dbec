"""B-LoRA on the tiny model (chapter 14, benchmarks/blora_study.py): a LoRA restricted to any UNet unit, cut by unit."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from sdtune.evaluation.provenance import check_weights
from sdtune.methods import target_modules, within_blocks
from sdtune.methods.blora import block_part, recombine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "blora_study_cpu.json"


@pytest.mark.parametrize("unit, expected", [
    ("up_blocks.1.resnets.1", ["conv1", "conv2", "conv_shortcut"]),  # the layers sit right under a ResNet
    ("down_blocks.0.downsamplers.0", ["conv"]),
    ("up_blocks.1.attentions.1", None),  # an attention block: its projections, deeper down
])
def test_blocks_select_exactly_the_layers_of_a_unit(tiny_pipe, unit, expected):
    pattern = within_blocks(target_modules("attn-mlp-conv", "unet"), [unit])
    chosen = [n for n, _ in tiny_pipe.unet.named_modules() if re.fullmatch(pattern, n)]
    assert chosen and all(n.startswith(unit + ".") for n in chosen), f"{unit}: {chosen}"
    if expected is not None:
        assert sorted(n[len(unit) + 1:] for n in chosen) == expected
    else:
        assert len(chosen) == 12  # proj_in, proj_out, 2 x (q, k, v, out), ff in and out
    neighbour = re.sub(r"\d+$", lambda m: str(int(m.group()) + 10), unit)  # resnets.11 must not match resnets.1
    assert not re.fullmatch(pattern, neighbour + ".conv1")


def test_a_lora_on_two_resnets_trains_only_there_and_cuts_apart(tiny_pipe, tmp_path):
    from safetensors.torch import load_file

    from sdtune.data import toyworld
    from sdtune.training import TrainConfig, train

    content, style = "up_blocks.2.resnets.0", "up_blocks.1.resnets.1"
    data = toyworld.write_dataset(toyworld.sample_scenes(2, seed=0, shapes=["star"]), tmp_path / "one")
    out = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), adapter="lora", targets="attn-mlp-conv", rank=2,
                            steps=2, batch_size=2, blocks=f"{content},{style}"), pipe=tiny_pipe)
    tensors = load_file(out / "run.safetensors")
    layers = {k.split(".")[0] for k in tensors}
    assert layers and all(k.startswith(("lora_unet_up_blocks_2_resnets_0_", "lora_unet_up_blocks_1_resnets_1_")) for k in layers)
    parts = block_part(tensors, content), block_part(tensors, style)
    assert parts[0] and parts[1] and len(parts[0]) + len(parts[1]) == len(tensors)
    other = {k: torch.zeros_like(v) for k, v in tensors.items()}
    mixed = recombine(tensors, other, content, style)
    assert all(mixed[k] is tensors[k] for k in parts[0]) and all(not mixed[k].any() for k in parts[1] if k.endswith("weight"))


def test_the_study_measures_what_it_says():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import blora_study

    one, two = blora_study.scenes().values()
    seen = {"shape": ["star", "cross", "star"], "colour": ["cyan", "cyan", "pink"], "style": ["outlined", "outlined", "dotted"],
            "asked": [{}] * 3}
    got = blora_study.measures("recombined", one, two, seen)
    assert got == {"shape of content image": [True, False, True], "pattern of style image": [True, True, False],
                   "colour of style image": [True, True, False], "shape and pattern": [True, False, False]}
    asked = {**seen, "asked": [{"shape": "star"}, {"shape": "square"}, {"shape": "cross"}]}
    assert blora_study.measures("style part, other shapes", two, one, asked)["shape as asked"] == [True, False, False]


@pytest.mark.skipif(not RESULTS.exists(), reason="run python benchmarks/blora_study.py")
def test_the_study_results_measured_the_shipped_weights():
    results = json.loads(RESULTS.read_text())
    assert check_weights(results) == [], "rerun python benchmarks/blora_study.py"
    assert len(results["settings"]["seeds"]) >= 3
    assert RESULTS.with_suffix(".png").is_file(), "the study writes its grid beside its results file: rerun it"
