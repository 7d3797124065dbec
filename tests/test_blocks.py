"""sdtune.evaluation.blocks: a LoRA switched off by block, and cut by block, on the tiny model and a shipped LoRA."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import sdtune
from sdtune.algebra import set_block_scales
from sdtune.evaluation import blocks
from sdtune.formats.adapters import remove_adapter

LORAS = Path(sdtune.__file__).parent / "assets" / "loras"


@pytest.fixture(scope="module")
def pipe():
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def eps(unet) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return unet(torch.randn(2, 8, 8, 8, generator=g), 500, encoder_hidden_states=torch.randn(2, 6, 128, generator=g)).sample


def test_the_groups_are_the_seven_attention_blocks_and_the_convolutions(pipe):
    groups = blocks.block_groups(pipe.unet)
    assert len(groups) == 8 and list(groups)[-1] == "convolutions"
    assert all(name.split(".")[-2] == "attentions" for name in list(groups)[:-1])
    assert all(name.endswith(("resnets", "downsamplers", "upsamplers")) for name in groups["convolutions"])


def test_fused_off_a_block_is_what_peft_computes_with_that_block_at_scale_0_and_restores_the_weights(pipe):
    star = load_file(LORAS / "star.safetensors")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    base = eps(pipe.unet)
    with blocks.fused(pipe.unet, blocks.deltas(pipe.unet, star), off=["up_blocks.1.attentions.1"]):
        fused = eps(pipe.unet)
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items()), "the weights are restored"
    sdtune.load_adapter(pipe, LORAS / "star.safetensors", "star")
    try:
        set_block_scales(pipe, "star", {"up_blocks.1.attentions.1": 0.0})
        assert torch.allclose(fused, eps(pipe.unet), atol=1e-4)
    finally:
        remove_adapter(pipe, "star")
    assert (fused - base).abs().max() > 1e-3, "the LoRA changed the prediction: the comparison above is not vacuous"


def test_a_cut_takes_each_group_from_its_owner_only(pipe):
    tensors = {c: load_file(LORAS / f"{c}.safetensors") for c in ("star", "pink")}
    groups = blocks.block_groups(pipe.unet)
    owner = {g: "pink" if g == "down_blocks.1.attentions.0" else "star" for g in groups}
    cut = blocks.cut(tensors, owner, groups)
    assert cut.keys() == tensors["star"].keys()  # the two LoRAs adapt the same layers
    pink_keys = [k for k in cut if k.startswith("lora_unet_down_blocks_1_attentions_0_")]
    assert pink_keys and all(cut[k] is tensors["pink"][k] for k in pink_keys)
    assert all(cut[k] is tensors["star"][k] for k in cut if k not in pink_keys)


def test_a_loss_is_the_share_of_the_full_score_that_goes():
    heat = {"base": (0.1, 0.0), "full": (0.8, 1.0), "a": (0.2, 0.0), "b": (0.8, 1.0)}
    assert blocks.losses(heat) == pytest.approx({"a": 0.75, "b": 0.0})
