"""DreamBooth (prior preservation, class-image cache), Textual Inversion and hypernetworks: files and wiring."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from sdtune.data import toyworld
from sdtune.methods import hypernetwork as hypernet
from sdtune.methods.dreambooth import MANIFEST, class_images
from sdtune.methods.textual_inversion import load_embedding, remove_embedding
from sdtune.training import DreamBoothConfig, HypernetworkConfig, TextualInversionConfig, train

TOKEN = "<star-ti>"


@pytest.fixture(scope="module")
def star_folder(tmp_path_factory):
    """Four yellow stars, captioned with the TI token, the DreamBooth prompt coming from --instance-prompt."""
    scenes = toyworld.sample_scenes(4, seed=3, shapes=["star"], colours=["yellow"])
    folder = toyworld.write_dataset(scenes, tmp_path_factory.mktemp("data") / "stars")
    for s, txt in zip(scenes, sorted(folder.glob("*.txt"))):
        txt.write_text(f"a {TOKEN} on a {s.background} background")
    return folder


@pytest.fixture(scope="module")
def plain_star_folder(tmp_path_factory):
    scenes = toyworld.sample_scenes(4, seed=3, shapes=["star"], colours=["yellow"])
    folder = toyworld.write_dataset(scenes, tmp_path_factory.mktemp("data") / "plain")
    for txt in folder.glob("*.txt"):
        txt.unlink()
    return folder


def images(pipe, prompt="a yellow star on a white background"):
    return pipe(prompt, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images


# ------------------------------------------------------------------------------------------------
# Textual Inversion
# ------------------------------------------------------------------------------------------------

def ti(folder, out, **change):
    return TextualInversionConfig(**(dict(data=str(folder), out=str(out), token=TOKEN, init_word="star", steps=3,
                                          batch_size=2, lr=5e-2) | change))


@pytest.mark.parametrize("vectors", [1, 3])
def test_textual_inversion_changes_only_the_new_rows_and_loads_in_plain_diffusers(tiny_pipe, tiny_path, star_folder, tmp_path, vectors):
    vocab_before = len(tiny_pipe.tokenizer)
    base_rows = tiny_pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    init_row = base_rows[tiny_pipe.tokenizer.convert_tokens_to_ids("star</w>")]
    out = train(ti(star_folder, tmp_path / "ti", vectors=vectors), pipe=tiny_pipe)
    assert len(tiny_pipe.tokenizer) == vocab_before, "training leaves the caller's tokenizer as it came"
    assert tiny_pipe.text_encoder.config.vocab_size == vocab_before
    assert torch.equal(tiny_pipe.text_encoder.get_input_embeddings().weight, base_rows)

    learned = load_file(out / "learned_embeds.safetensors")
    assert list(learned) == [TOKEN] and learned[TOKEN].shape == (vectors, base_rows.shape[1])
    assert not torch.allclose(learned[TOKEN], init_row.expand(vectors, -1)), "the embedding trained away from the init word"
    assert torch.equal(load_file(out / "star-ti.safetensors")["emb_params"], learned[TOKEN])

    # a fresh pipeline in plain diffusers: every old row bit-identical, the token's rows the learned ones
    pipe = StableDiffusionPipeline.from_pretrained(tiny_path)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(str(out / "learned_embeds.safetensors"), token=TOKEN)
    rows = pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(rows[:vocab_before], base_rows)
    assert torch.equal(rows[vocab_before:], learned[TOKEN])
    from_diffusers = images(pipe, f"a {TOKEN} on a black background")
    remove_embedding(pipe, TOKEN)
    assert len(pipe.tokenizer) == vocab_before
    assert load_embedding(pipe, out / "star-ti.safetensors", TOKEN) == TOKEN  # the kohya/A1111 file
    assert abs(images(pipe, f"a {TOKEN} on a black background") - from_diffusers).max() < 1e-6


def test_textual_inversion_bad_input(tiny_pipe, star_folder, plain_star_folder, tmp_path):
    with pytest.raises(ValueError, match="already a word"):
        train(ti(star_folder, tmp_path / "a", token="star"), pipe=tiny_pipe)
    with pytest.raises(ValueError, match="single known token"):
        train(ti(star_folder, tmp_path / "b", init_word="yellow star"), pipe=tiny_pipe)
    with pytest.raises(ValueError, match="do not contain the token"):
        train(ti(plain_star_folder, tmp_path / "c", instance_prompt="a star"), pipe=tiny_pipe)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    wide = tmp_path / "wide.safetensors"
    from safetensors.torch import save_file

    save_file({"emb_params": torch.zeros(1, 1024)}, str(wide))
    with pytest.raises(ValueError, match="another base model"):
        load_embedding(tiny_pipe, wide, "<x>")


# ------------------------------------------------------------------------------------------------
# DreamBooth
# ------------------------------------------------------------------------------------------------

def test_class_images_are_cached_and_regenerated_for_another_prompt(tiny_pipe, tmp_path):
    folder = tmp_path / "class"
    tiny_pipe.set_progress_bar_config(disable=False, desc="mine")
    first = class_images(tiny_pipe, "a diamond", 3, folder)
    assert len(first) == 3 and all(e.caption == "a diamond" for e in first)
    assert tiny_pipe._progress_bar_config == {"disable": False, "desc": "mine"}, "the caller's progress bar is left as it was"
    tiny_pipe.set_progress_bar_config(disable=True)
    stamp = [e.image.stat().st_mtime_ns for e in first]
    again = class_images(tiny_pipe, "a diamond", 2, folder)
    assert [e.image.stat().st_mtime_ns for e in again] == stamp[:2], "a matching cache is reused"
    other = class_images(tiny_pipe, "a circle", 3, folder)
    assert json.loads((folder / MANIFEST).read_text())["prompt"] == "a circle"
    assert all(e.caption == "a circle" for e in other)


def test_dreambooth_lora_and_full_write_files_plain_diffusers_loads(tiny_pipe, tiny_path, plain_star_folder, tmp_path):
    common = dict(data=str(plain_star_folder), instance_prompt="a sks diamond", class_prompt="a diamond",
                  num_class_images=3, class_data=str(tmp_path / "class"), steps=2, batch_size=2)
    lora = train(DreamBoothConfig(out=str(tmp_path / "db-lora"), adapter="lora", lr=1e-2, **common), pipe=tiny_pipe)
    assert (tmp_path / "class" / MANIFEST).is_file()
    base = images(tiny_pipe, "a sks diamond on a black background")
    tiny_pipe.load_lora_weights(lora)
    assert abs(images(tiny_pipe, "a sks diamond on a black background") - base).max() > 1e-4
    tiny_pipe.unload_lora_weights()

    full = train(DreamBoothConfig(out=str(tmp_path / "db-full"), lr=1e-3, **common), pipe=tiny_pipe)
    tuned = StableDiffusionPipeline.from_pretrained(full)
    assert any(not torch.equal(a, b) for a, b in zip(tuned.unet.parameters(), tiny_pipe.unet.parameters()))
    assert torch.equal(tuned.text_encoder.get_input_embeddings().weight, tiny_pipe.text_encoder.get_input_embeddings().weight)


def test_full_dreambooth_can_train_the_text_encoder_too_and_leaves_the_caller_pipeline(tiny_pipe, plain_star_folder, tmp_path):
    before = {k: v.clone() for k, v in tiny_pipe.text_encoder.state_dict().items()}
    out = train(DreamBoothConfig(data=str(plain_star_folder), out=str(tmp_path / "db-te"), instance_prompt="a sks diamond",
                                 prior_loss_weight=0.0, train_text_encoder=True, text_encoder_lr=1e-2, steps=2, batch_size=2,
                                 lr=1e-3), pipe=tiny_pipe)
    assert all(torch.equal(v, before[k]) for k, v in tiny_pipe.text_encoder.state_dict().items()), "the caller's encoder is untouched"
    tuned = StableDiffusionPipeline.from_pretrained(out)
    assert any(not torch.equal(v, before[k]) for k, v in tuned.text_encoder.state_dict().items()), "the saved encoder trained"


def test_dreambooth_bad_input(tiny_pipe, plain_star_folder, tmp_path):
    with pytest.raises(ValueError, match="needs --class-prompt"):
        train(DreamBoothConfig(data=str(plain_star_folder), out=str(tmp_path / "a"), instance_prompt="a sks diamond"), pipe=tiny_pipe)
    with pytest.raises(ValueError, match="--instance-prompt"):
        train(DreamBoothConfig(data=str(plain_star_folder), out=str(tmp_path / "b"), class_prompt="a diamond"), pipe=tiny_pipe)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="No images"):
        train(DreamBoothConfig(data=str(empty), out=str(tmp_path / "c"), instance_prompt="a sks diamond", class_prompt="a diamond"), pipe=tiny_pipe)


# ------------------------------------------------------------------------------------------------
# Hypernetwork
# ------------------------------------------------------------------------------------------------

def test_hypernetwork_trains_saves_both_layouts_and_detaches_exactly(tiny_pipe, star_folder, tmp_path):
    base = images(tiny_pipe)
    out = train(HypernetworkConfig(data=str(star_folder), out=str(tmp_path / "hn"), steps=3, batch_size=2, lr=1e-2), pipe=tiny_pipe)
    assert abs(images(tiny_pipe) - base).max() < 1e-6, "training detaches the hypernetwork from the caller's UNet"
    width = hypernet.cross_attention_width(tiny_pipe.unet)
    webui = torch.load(out / "hn.pt", weights_only=True)
    assert webui["layer_structure"] == [1.0, 2.0, 1.0] and webui["activation_func"] == "relu"
    assert set(webui[width][0]) == {"linear.0.weight", "linear.0.bias", "linear.2.weight", "linear.2.bias"}
    assert webui[width][0]["linear.0.weight"].shape == (2 * width, width)

    loaded = hypernet.load_hypernetwork(tiny_pipe.unet, out)
    assert torch.equal(loaded.pairs[str(width)][1].linear[2].weight, webui[width][1]["linear.2.weight"])
    changed = images(tiny_pipe)
    loaded.set_strength(0.0)
    assert abs(images(tiny_pipe) - base).max() < 1e-5, "strength 0: c + 0 * MLP(c) = c"
    hypernet.detach(tiny_pipe.unet)
    assert abs(changed - base).max() > 1e-4
    assert abs(images(tiny_pipe) - base).max() < 1e-6
    with pytest.raises(ValueError, match="layer-structure"):
        train(HypernetworkConfig(data=str(star_folder), out=str(tmp_path / "bad"), layer_structure="2,1"), pipe=tiny_pipe)
