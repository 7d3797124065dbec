"""Differential LoRA: B - A exactly as one LoRA of rank r_A + r_B, SVD-compressed, the copier variant, pair checks."""

import json

import pytest
import torch

from unet_probe import unet_out

from sdtune.data import toyworld
from sdtune.data.folder import DatasetError
from sdtune.formats import load_adapter
from sdtune.formats.adapters import remove_adapter
from sdtune.methods.differential import check_pairs, train_differential
from sdtune.training import TrainConfig


@pytest.fixture(scope="module")
def pair_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    pairs = toyworld.paired_scenes(3, seed=2, kind="sharpness")
    return (toyworld.write_dataset([a for a, _ in pairs], root / "blurred"),
            toyworld.write_dataset([b for _, b in pairs], root / "sharp"))



def test_difference_is_b_minus_a_exactly_and_compresses(tiny_pipe, pair_folders, tmp_path):
    cfg = TrainConfig(data="", out=str(tmp_path / "diff"), steps=2, batch_size=2, lr=1e-2, rank=2)
    out = train_differential(tiny_pipe, cfg, *pair_folders)
    report = json.loads((out / "difference.json").read_text())
    assert report["method"] == "exact" and report["rank"] == 4 and report["max_relative_error"] < 1e-5
    parts = tmp_path / "diff-parts"
    load_adapter(tiny_pipe, parts / "A" / "A.safetensors", "A")
    load_adapter(tiny_pipe, parts / "B" / "B.safetensors", "B")
    tiny_pipe.set_adapters(["A", "B"], [-1.0, 1.0])
    expected = unet_out(tiny_pipe)
    remove_adapter(tiny_pipe, "A"), remove_adapter(tiny_pipe, "B")
    tiny_pipe.load_lora_weights(out)  # plain diffusers reads the difference
    assert torch.allclose(unet_out(tiny_pipe), expected, atol=1e-5)
    tiny_pipe.unload_lora_weights()

    small = train_differential(tiny_pipe, TrainConfig(data="", out=str(tmp_path / "small"), steps=2, batch_size=2, lr=1e-2, rank=2),
                               *pair_folders, rank=1)
    assert json.loads((small / "difference.json").read_text())["rank"] == 1
    copier = train_differential(tiny_pipe, TrainConfig(data="", out=str(tmp_path / "copier"), steps=2, batch_size=2, lr=1e-2),
                                *pair_folders, copier=True)
    assert json.loads((copier / "difference.json").read_text())["method"] == "copier"
    assert not getattr(tiny_pipe.unet, "peft_config", None), "the pipeline is left without adapters"


def test_pairs_must_match(pair_folders, tmp_path):
    assert check_pairs(*pair_folders) == ["0000", "0001", "0002"]
    lonely = toyworld.write_dataset(toyworld.sample_scenes(2, seed=0), tmp_path / "two")
    with pytest.raises(DatasetError, match="without a partner"):
        check_pairs(pair_folders[0], lonely)


def test_differential_from_the_command_line(tiny_path, pair_folders, tmp_path, capsys):
    from sdtune.cli import main

    main(["train", "differential", "--model", str(tiny_path), "--data-a", str(pair_folders[0]), "--data-b", str(pair_folders[1]),
          "--out", str(tmp_path / "d"), "--svd-rank", "2", "--steps", "1", "--batch-size", "2"])
    assert json.loads((tmp_path / "d" / "difference.json").read_text())["rank"] == 2
    assert (tmp_path / "d" / "pytorch_lora_weights.safetensors").is_file() and (tmp_path / "d" / "d.safetensors").is_file()
