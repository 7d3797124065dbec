"""Adapter files: kohya/LyCORIS layout <-> peft adapters, exactly; bad files refused with one clear message."""

import json
from types import SimpleNamespace

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

from random_adapters import TARGETS as KINDS
from random_adapters import random_adapter, unet_output
from sdtune.cli import main as cli
from sdtune.formats import AdapterFileError, load_adapter, read_adapter_file
from sdtune.formats.adapters import add_adapter, kohya_tensors, remove_adapter, write_diffusers_file, write_kohya_file
from sdtune.formats.kohya import adapter_metadata, base_model_version, group_kohya_layers, kohya_metadata, sgm_names
from sdtune.methods.lycoris import loha_delta, lokr_config, lokr_delta, lokr_factor_of, splits_of


def text_output(pipe) -> torch.Tensor:
    with torch.no_grad():
        return pipe.text_encoder(pipe.tokenizer(["a striped red circle"], return_tensors="pt").input_ids)[0]


@pytest.mark.parametrize("kind", list(KINDS))
def test_kohya_file_reloads_to_the_same_adapter(kind, tiny_pipe, tmp_path):
    base = unet_output(tiny_pipe)
    random_adapter(tiny_pipe, kind, text_encoder=kind in ("lora", "dora"))
    expected, expected_text = unet_output(tiny_pipe), text_output(tiny_pipe)
    write_kohya_file(tiny_pipe, "src", tmp_path / "a.safetensors", kohya_metadata(kind, 4, 2.0, "sdtune_tiny"))
    remove_adapter(tiny_pipe, "src")
    assert torch.allclose(unet_output(tiny_pipe), base)

    load_adapter(tiny_pipe, tmp_path / "a.safetensors", "loaded")
    try:
        assert (expected - base).abs().max() > 1e-3
        assert torch.allclose(unet_output(tiny_pipe), expected, atol=1e-5)
        assert torch.allclose(text_output(tiny_pipe), expected_text, atol=1e-5)
    finally:
        remove_adapter(tiny_pipe, "loaded")


@pytest.mark.parametrize("factor", [2, 4, 16])
def test_a_lokr_file_with_any_factor_reloads_to_the_same_adapter(factor, tiny_pipe, tmp_path):
    base = unet_output(tiny_pipe)
    random_adapter(tiny_pipe, "lokr", lokr_factor=factor)
    expected = unet_output(tiny_pipe)
    write_kohya_file(tiny_pipe, "src", tmp_path / "a.safetensors", kohya_metadata("lokr", 4, 2.0, "sdtune_tiny", lokr_factor=factor))
    remove_adapter(tiny_pipe, "src")
    load_adapter(tiny_pipe, tmp_path / "a.safetensors", "loaded")
    try:
        assert (expected - base).abs().max() > 1e-3
        assert torch.allclose(unet_output(tiny_pipe), expected, atol=1e-5)
        assert tiny_pipe.unet.peft_config["loaded"].decompose_factor == factor
    finally:
        remove_adapter(tiny_pipe, "loaded")


def test_a_lokr_file_loads_beside_an_adapter_already_on_its_layers(tiny_pipe, tmp_path):
    random_adapter(tiny_pipe, "lokr", lokr_factor=4)
    expected = unet_output(tiny_pipe)
    write_kohya_file(tiny_pipe, "src", tmp_path / "a.safetensors", kohya_metadata("lokr", 4, 2.0, "sdtune_tiny", lokr_factor=4))
    remove_adapter(tiny_pipe, "src")
    random_adapter(tiny_pipe, "lora", name="other")  # the factor is read from the layers under this LoRA
    try:
        load_adapter(tiny_pipe, tmp_path / "a.safetensors", "loaded")
        assert tiny_pipe.unet.peft_config["loaded"].decompose_factor == 4
        for m in tiny_pipe.unet.modules():
            if isinstance(m, BaseTunerLayer):
                m.set_adapter("loaded")
        assert torch.allclose(unet_output(tiny_pipe), expected, atol=1e-5)
    finally:
        remove_adapter(tiny_pipe, "loaded")
        remove_adapter(tiny_pipe, "other")


def test_lokr_factor_is_found_from_the_w1_shapes():
    # SD 1.5 widths; (out, in, W1 out, W1 in) as LyCORIS splits them at factor 8 and at the default -1
    assert lokr_factor_of({"to_q": (320, 320, 8, 8), "to_k": (320, 768, 8, 8), "ff": (2560, 320, 8, 8)}) == 8
    assert lokr_factor_of({"to_q": (320, 320, 16, 16), "to_k": (320, 768, 16, 24), "ff": (1280, 1280, 32, 32)}) == -1
    assert lokr_factor_of({"to_q": (320, 320, 5, 5), "ff": (1280, 320, 20, 5)}) == 64, "64 > sqrt: W1 takes the other side"
    assert lokr_factor_of({"to_q": (64, 64, 16, 16)}) is None, "W1 the larger side: no LyCORIS factor makes it"
    with pytest.raises(ValueError, match="splits the width 64 as .* at to_q but as .* at to_k"):
        splits_of({"to_q": (64, 64, 4, 4), "to_k": (64, 64, 8, 8)})


def w1_shapes(pipe, name: str) -> dict[str, tuple[int, ...]]:
    return {path: tuple(m.lokr_w1[name].shape) for path, m in pipe.unet.named_modules() if name in getattr(m, "lokr_w1", {})}


@pytest.mark.parametrize("factor", [16, 32])
def test_lokr_factor_is_lycoris_factor_above_the_square_root(factor, tiny_pipe):
    """LyCORIS splits a width d at a factor f dividing it into f and d / f with the smaller side in W1; peft gives W1
    the side f. At f = 16 a 64-wide layer is 4 x 16 (W1 4 x 4), not 16 x 4."""
    add_adapter(tiny_pipe.unet, lokr_config(4, 4.0, ["proj_in", "to_q"], factor), "src")
    try:
        shapes = w1_shapes(tiny_pipe, "src")
        assert shapes and all(shape == (64 // factor, 64 // factor) for path, shape in shapes.items() if path.startswith("down_blocks.0.")), shapes
        assert all(shape == (128 // factor, 128 // factor) for path, shape in shapes.items() if path.startswith("down_blocks.1."))
    finally:
        remove_adapter(tiny_pipe, "src")


def test_a_lokr_file_split_by_pefts_rule_still_loads_exactly(tiny_pipe, tmp_path):
    """sdtune wrote LoKr files with peft's split before it followed LyCORIS (factor 16: W1 16 x 16 on a 64-wide layer):
    the loader splits each width as the file does, so those files load as before."""
    from peft.tuners.lokr.layer import factorization as pefts_split

    config = lokr_config(4, 2.0, ["proj_in", "to_q", "conv1"], 16)
    config.init_weights = False
    add_adapter(tiny_pipe.unet, config, "src", lokr_split=pefts_split)
    assert (16, 16) in w1_shapes(tiny_pipe, "src").values()
    expected = unet_output(tiny_pipe)
    write_kohya_file(tiny_pipe, "src", tmp_path / "old.safetensors", kohya_metadata("lokr", 4, 2.0, "sdtune_tiny", lokr_factor=16))
    remove_adapter(tiny_pipe, "src")
    load_adapter(tiny_pipe, tmp_path / "old.safetensors", "loaded")
    try:
        assert (16, 16) in w1_shapes(tiny_pipe, "loaded").values()
        assert torch.allclose(unet_output(tiny_pipe), expected, atol=1e-5)
    finally:
        remove_adapter(tiny_pipe, "loaded")


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_tucker_convolutions_round_trip(kind, tiny_pipe, tmp_path):
    """LyCORIS's use_tucker (hada_t1/hada_t2, lokr_t2: a core per k x k convolution) is peft's use_effective_conv2d."""
    base = unet_output(tiny_pipe)
    random_adapter(tiny_pipe, kind, tucker=True)
    expected = unet_output(tiny_pipe)
    write_kohya_file(tiny_pipe, "src", tmp_path / "t.safetensors", adapter_metadata(tiny_pipe, kind, 4, 2.0, "attn-mlp-conv", tucker=True))
    remove_adapter(tiny_pipe, "src")
    assert any(k.endswith(("hada_t1", "lokr_t2")) for k in load_file(tmp_path / "t.safetensors"))
    load_adapter(tiny_pipe, tmp_path / "t.safetensors", "loaded")
    try:
        assert (expected - base).abs().max() > 1e-3
        assert torch.allclose(unet_output(tiny_pipe), expected, atol=1e-5)
    finally:
        remove_adapter(tiny_pipe, "loaded")


def test_layers_sdtune_cannot_read_are_refused_with_one_clear_error(tiny_pipe, tmp_path):
    random_adapter(tiny_pipe, "locon")
    tensors = kohya_tensors(tiny_pipe, "src")
    remove_adapter(tiny_pipe, "src")
    conv = next(k.removesuffix(".lora_down.weight") for k, v in tensors.items() if k.endswith("lora_down.weight") and v.dim() == 4)
    cases = {
        "with a Tucker core .lora_mid": {f"{conv}.lora_mid.weight": torch.zeros(4, 4, 3, 3)},
        "tensors sdtune does not read .hada_w1_c.": {f"{conv}.hada_w1_c": torch.zeros(2)},
        "a DoRA magnitude .*on lokr": {f"{conv}.lokr_w1": torch.zeros(2, 2), f"{conv}.dora_scale": torch.zeros(2)},
    }
    for message, extra in cases.items():
        save_file({**tensors, **extra}, tmp_path / "bad.safetensors")
        with pytest.raises(AdapterFileError, match=f"{conv}.*{message}"):
            load_adapter(tiny_pipe, tmp_path / "bad.safetensors")
    assert not getattr(tiny_pipe.unet, "peft_config", None)


def test_dora_magnitudes_per_input_column_are_refused(tiny_pipe, tmp_path):
    """LyCORIS's wd_on_output=False keeps dora_scale (1, in): on a square layer it has as many numbers as peft's
    per-output magnitude, and flattening it would load it silently wrong; the axis is read from the shape (ComfyUI)."""
    random_adapter(tiny_pipe, "dora")
    tensors = kohya_tensors(tiny_pipe, "src")
    remove_adapter(tiny_pipe, "src")
    square = next(k for k, v in tensors.items() if k.endswith("to_q.dora_scale") and v.shape == (64, 1))
    save_file({**tensors, square: tensors[square].reshape(1, 64)}, tmp_path / "per_input.safetensors")
    with pytest.raises(AdapterFileError, match=f"{square.split('.')[0]}: .* shape \\(1, 64\\), one number per input column"):
        load_adapter(tiny_pipe, tmp_path / "per_input.safetensors")
    save_file({**tensors, square: tensors[square].flatten()}, tmp_path / "flat.safetensors")  # (out,) is per output: it loads
    load_adapter(tiny_pipe, tmp_path / "flat.safetensors", "flat")
    remove_adapter(tiny_pipe, "flat")


def test_headers_say_what_sd_scripts_and_lycoris_read(tiny_pipe):
    """DoRA, LoHa, LoKr under lycoris.kohya with LyCORIS's algo and preset (sd-scripts' networks.lora has no dora_scale);
    conv_dim only where convolutions were adapted; ss_v2 and the _v suffix as sd-scripts writes them."""
    dora = adapter_metadata(tiny_pipe, "dora", 4, 4.0, "attn-mlp")
    assert dora["ss_network_module"] == "lycoris.kohya"
    assert json.loads(dora["ss_network_args"]) == {"algo": "lora", "preset": "attn-mlp", "dora_wd": "True"}
    lokr = json.loads(adapter_metadata(tiny_pipe, "lokr", 4, 4.0, "attn-mlp", lokr_factor=16)["ss_network_args"])
    assert lokr == {"algo": "lokr", "preset": "attn-mlp", "factor": "16"}, "no conv_dim: LyCORIS would add convolutions"
    loha = json.loads(adapter_metadata(tiny_pipe, "loha", 4, 4.0, "attn-mlp-conv")["ss_network_args"])
    assert loha == {"algo": "loha", "preset": "full", "conv_dim": "4", "conv_alpha": "4.0"}
    locon = adapter_metadata(tiny_pipe, "locon", 8, 8.0, "attn-mlp-conv")
    assert locon["ss_network_module"] == "networks.lora" and json.loads(locon["ss_network_args"]) == {"conv_dim": "8", "conv_alpha": "8.0"}
    assert locon["ss_base_model_version"] == "sdtune_tiny" and locon["ss_v2"] == "False"

    def pipe(width: int, prediction: str, sdxl: bool = False):
        return SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(cross_attention_dim=width)),
                               scheduler=SimpleNamespace(config={"prediction_type": prediction}), text_encoder_2=object() if sdxl else None)

    versions = {(768, "epsilon"): "sd_v1", (1024, "epsilon"): "sd_v2", (1024, "v_prediction"): "sd_v2_v", (128, "v_prediction"): "sdtune_tiny_v"}
    for (width, prediction), version in versions.items():
        assert base_model_version(pipe(width, prediction)) == version
    assert base_model_version(pipe(2048, "epsilon", sdxl=True)) == "sdxl_base_v1-0"
    assert kohya_metadata("lora", 4, 4.0, "sd_v2_v")["ss_v2"] == "True"


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_lycoris_deltas_follow_the_published_formulas(kind, tiny_pipe):
    random_adapter(tiny_pipe, kind)
    try:
        layers = group_kohya_layers(kohya_tensors(tiny_pipe, "src"))
        modules = {n: m for n, m in tiny_pipe.unet.named_modules() if isinstance(m, BaseTunerLayer)}
        checked = 0
        for name, t in layers.items():
            path = next(p for p in modules if "lora_unet_" + p.replace(".", "_") == name)
            module = modules[path]
            shape = module.get_base_layer().weight.shape
            if kind == "loha":  # dW = alpha / r (W1a W1b) * (W2a W2b)
                delta = loha_delta(t["hada_w1_a"], t["hada_w1_b"], t["hada_w2_a"], t["hada_w2_b"], float(t["alpha"]) / t["hada_w1_b"].shape[0], shape)
            else:  # dW = alpha / r kron(W1, W2), scale 1 when no factor is decomposed
                w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
                w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"]
                r = t["lokr_w2_b"].shape[0] if "lokr_w2_b" in t else None
                delta = lokr_delta(w1, w2, float(t["alpha"]) / r if r else 1.0, shape)
            assert torch.allclose(delta, module.get_delta_weight("src"), atol=1e-6, rtol=1e-4), path
            checked += 1
        assert checked == len(layers) > 10
    finally:
        remove_adapter(tiny_pipe, "src")


def test_convert_between_layouts_keeps_every_tensor(tiny_pipe, tmp_path, capsys, tiny_path):
    random_adapter(tiny_pipe, "lora", text_encoder=True)
    write_diffusers_file(tiny_pipe, "src", tmp_path / "pytorch_lora_weights.safetensors")
    remove_adapter(tiny_pipe, "src")
    cli(["convert", str(tmp_path / "pytorch_lora_weights.safetensors"), str(tmp_path / "k.safetensors"), "--to", "kohya", "--model", str(tiny_path)])
    cli(["convert", str(tmp_path / "k.safetensors"), str(tmp_path / "back.safetensors"), "--to", "diffusers", "--model", str(tiny_path)])
    a, b = load_file(tmp_path / "pytorch_lora_weights.safetensors"), load_file(tmp_path / "back.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k]) for k in a)
    assert any(k.startswith("lora_te_text_model_") for k in load_file(tmp_path / "k.safetensors"))
    header = read_adapter_file(tmp_path / "k.safetensors")[1]
    assert header["ss_base_model_version"] == "sdtune_tiny" and header["sdtune_targets"] == "attn", "the base model, not 'unknown'"
    with pytest.raises(SystemExit):
        cli(["convert", str(tmp_path / "k.safetensors"), str(tmp_path / "back.safetensors"), "--to", "diffusers", "--model", str(tiny_path)])
    assert "already exists" in capsys.readouterr().err


def test_loha_has_no_diffusers_layout(tiny_pipe, tmp_path):
    random_adapter(tiny_pipe, "loha")
    try:
        with pytest.raises(AdapterFileError, match="diffusers has no layout for LoHa"):
            write_diffusers_file(tiny_pipe, "src", tmp_path / "x.safetensors")
    finally:
        remove_adapter(tiny_pipe, "src")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.fixture()
def lora_file(tiny_pipe, tmp_path):
    random_adapter(tiny_pipe, "lora")
    write_kohya_file(tiny_pipe, "src", tmp_path / "good.safetensors", {})
    remove_adapter(tiny_pipe, "src")
    return tmp_path / "good.safetensors"


def test_pickle_files_are_refused_unless_allowed(lora_file, tiny_pipe, tmp_path):
    torch.save(load_file(lora_file), tmp_path / "old.bin")
    with pytest.raises(AdapterFileError, match="pickle file, which can run code"):
        load_adapter(tiny_pipe, tmp_path / "old.bin")
    tensors, _ = read_adapter_file(tmp_path / "old.bin", allow_pickle=True)
    assert tensors.keys() == load_file(lora_file).keys()


def test_truncated_and_foreign_files_give_one_clear_error_and_leave_the_pipeline_clean(lora_file, tiny_pipe, tmp_path):
    data = lora_file.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFileError, match="truncated"):
        load_adapter(tiny_pipe, tmp_path / "cut.safetensors")

    tensors = load_file(lora_file)
    key = next(k for k in tensors if k.endswith("lora_down.weight"))
    wrong = dict(tensors, **{key: torch.zeros(4, tensors[key].shape[1] + 1)})
    save_file(wrong, tmp_path / "other_model.safetensors")
    with pytest.raises(AdapterFileError, match="trained for another base model"):
        load_adapter(tiny_pipe, tmp_path / "other_model.safetensors")

    save_file({"lora_unet_no_such_block.lora_down.weight": torch.zeros(4, 8)}, tmp_path / "alien.safetensors")
    with pytest.raises(AdapterFileError, match="not in this model"):
        load_adapter(tiny_pipe, tmp_path / "alien.safetensors")

    save_file({"model.weight": torch.zeros(2)}, tmp_path / "checkpoint.safetensors")
    with pytest.raises(AdapterFileError, match="Unrecognised adapter keys"):
        load_adapter(tiny_pipe, tmp_path / "checkpoint.safetensors")
    assert not getattr(tiny_pipe.unet, "peft_config", None)


def test_adapter_names_that_clash_with_peft_tensor_names_are_refused(lora_file, tiny_pipe):
    for name in ("lora", "hada_w1", "lokr"):
        with pytest.raises(AdapterFileError, match="clashes with peft's tensor names"):
            load_adapter(tiny_pipe, lora_file, name)
    load_adapter(tiny_pipe, lora_file, "style")
    with pytest.raises(AdapterFileError, match="already has an adapter named 'style'"):
        load_adapter(tiny_pipe, lora_file, "style")
    remove_adapter(tiny_pipe, "style")


@pytest.fixture(scope="module")
def sdxl_layout(tiny_path):
    """A tiny random SDXL pipeline whose UNet has SDXL's block structure (three levels, the first without attention,
    two resnets per level), so its original (SGM) layer names are those of a real SDXL file."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from sdtune.models.tiny import SCHEDULER_CONFIG

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(tiny_path / "tokenizer")
    text = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, vocab_size=len(tokenizer),
                max_position_embeddings=tokenizer.model_max_length, projection_dim=32,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32, 32), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=(2, 4, 4),
        use_linear_projection=True, transformer_layers_per_block=(1, 2, 2), addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 32, norm_num_groups=8,
    )
    vae = AutoencoderKL(block_out_channels=(8,), latent_channels=4, norm_num_groups=8, sample_size=16)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**text)), text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text)),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
    )
    return pipe


def sdxl_unet_output(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    z, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 7, 32, generator=g)
    added = {"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        return pipe.unet(z, torch.tensor([300]), ctx, added_cond_kwargs=added).sample


def test_sgm_names_are_those_of_real_sdxl_files(sdxl_layout):
    """Names as sd-scripts writes them for SDXL (its UNet is the original code's), against the diffusers paths."""
    names = sgm_names(sdxl_layout.unet)
    known = {
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
        "down_blocks.2.attentions.1.transformer_blocks.1.ff.net.2": "input_blocks.8.1.transformer_blocks.1.ff.net.2",
        "down_blocks.0.resnets.0.conv1": "input_blocks.1.0.in_layers.2",
        "down_blocks.1.resnets.0.conv_shortcut": "input_blocks.4.0.skip_connection",
        "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
        "mid_block.attentions.0.proj_in": "middle_block.1.proj_in",
        "mid_block.resnets.1.time_emb_proj": "middle_block.2.emb_layers.1",
        "up_blocks.0.upsamplers.0.conv": "output_blocks.2.2.conv",
        "up_blocks.1.upsamplers.0.conv": "output_blocks.5.2.conv",
        "up_blocks.2.resnets.2.conv2": "output_blocks.8.0.out_layers.3",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0": "output_blocks.5.1.transformer_blocks.0.attn2.to_out.0",
        "conv_in": "input_blocks.0.0", "conv_out": "out.2", "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
    }
    assert {path: names.get(path) for path in known} == known
    assert len(set(names.values())) == len(names), "one module per original name"


def test_an_sdxl_file_with_original_block_names_loads_as_diffusers_reads_it(sdxl_layout, tmp_path):
    """sd-scripts writes SDXL LoRAs with the original (SGM) names; sdtune loads them as diffusers' own converter does."""
    from peft import LoraConfig

    pipe = sdxl_layout
    base = sdxl_unet_output(pipe)
    targets = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2", "conv1", "conv2", "conv_shortcut", "time_emb_proj",
               "downsamplers.0.conv", "upsamplers.0.conv"]
    add_adapter(pipe.unet, LoraConfig(r=4, lora_alpha=2.0, target_modules=targets, init_lora_weights=False), "src")
    expected = sdxl_unet_output(pipe)
    names = {f"lora_unet_{path.replace('.', '_')}": f"lora_unet_{sgm.replace('.', '_')}" for path, sgm in sgm_names(pipe.unet).items()}
    tensors = {names[k.split(".")[0]] + "." + k.split(".", 1)[1]: v for k, v in kohya_tensors(pipe, "src").items()}
    remove_adapter(pipe, "src")
    assert any(k.startswith("lora_unet_input_blocks_4_1_") for k in tensors) and not any("down_blocks" in k for k in tensors)
    save_file(tensors, tmp_path / "sgm.safetensors")

    load_adapter(pipe, tmp_path / "sgm.safetensors", "sgm")
    ours = sdxl_unet_output(pipe)
    remove_adapter(pipe, "sgm")
    pipe.load_lora_weights(str(tmp_path / "sgm.safetensors"), adapter_name="d")
    theirs = sdxl_unet_output(pipe)
    pipe.unload_lora_weights()
    assert (expected - base).abs().max() > 1e-3
    assert torch.allclose(ours, expected, atol=1e-5)
    assert torch.allclose(theirs, expected, atol=1e-5), "diffusers' SGM converter reads the names the same way"
