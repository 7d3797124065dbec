"""Adapter files: kohya/LyCORIS layout <-> peft adapters, exactly; bad files refused with one clear message."""

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

from sdtune.cli import main as cli
from sdtune.formats import AdapterFileError, load_adapter, read_adapter_file
from sdtune.formats.adapters import add_adapter, kohya_tensors, remove_adapter, write_diffusers_file, write_kohya_file
from sdtune.formats.kohya import group_kohya_layers, kohya_metadata
from sdtune.methods import adapter_config
from sdtune.methods.lycoris import loha_delta, lokr_delta, lokr_factor_of

KINDS = {"lora": "attn", "locon": "attn-mlp-conv", "dora": "attn-mlp-conv", "loha": "attn-mlp-conv", "lokr": "attn-mlp-conv"}


def random_adapter(pipe, kind: str, name: str = "src", text_encoder: bool = False, lokr_factor: int = -1) -> None:
    """An adapter with every factor random (not the zero-start init), so every tensor matters."""
    config = adapter_config(kind, 4, 2.0, KINDS[kind], "unet", lokr_factor=lokr_factor)
    if hasattr(config, "init_lora_weights"):
        config.init_lora_weights = False
    else:
        config.init_weights = False
    add_adapter(pipe.unet, config, name)
    if text_encoder:
        te = adapter_config(kind, 4, 2.0, "attn", "text_encoder")
        te.init_lora_weights = False
        add_adapter(pipe.text_encoder, te, name)
    if kind == "dora":  # move the magnitudes off their initial value ||W||
        with torch.no_grad():
            for m in pipe.unet.modules():
                if isinstance(m, BaseTunerLayer) and name in getattr(m, "lora_magnitude_vector", {}):
                    m.lora_magnitude_vector[name].weight.mul_(1.5)


def unet_output(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    z, ctx = torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 32, 128, generator=g)
    with torch.no_grad():
        return pipe.unet(z, torch.tensor([10, 500]), ctx).sample


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
    with pytest.raises(ValueError, match="No single LoKr factor .* to_q"):
        lokr_factor_of({"to_q": (64, 64, 4, 4), "to_k": (64, 64, 8, 8)})


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
