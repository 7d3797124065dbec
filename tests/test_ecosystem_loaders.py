"""sdtune's adapter files in the tools that consume them, and theirs in sdtune: LyCORIS's own loader (the
`lycoris-lora` package, 3.x: its 4.x releases stop on any diffusers SD UNet with "duplicated lora name") and
diffusers. Each comparison is the UNet's output with the adapter applied by the other tool against sdtune's.

LyCORIS reads a file two ways: from the weights alone (`create_network_from_weights`, what inference tools do) and
by rebuilding the network from the header's `ss_network_args` and loading the weights into it (what sd-scripts
does to resume training): the second checks the header (algo, preset, factor, dora_wd) as well as the tensors.
"""

import json
import logging

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from random_adapters import TARGETS, random_adapter, unet_output
from sdtune.formats import AdapterFileError, load_adapter, read_adapter_file
from sdtune.formats.adapters import remove_adapter, write_diffusers_file, write_kohya_file
from sdtune.formats.kohya import adapter_metadata, group_kohya_layers
from sdtune.methods.lycoris import lycoris_factorization

PRESET_ATTRIBUTES = ("ENABLE_CONV", "UNET_TARGET_REPLACE_MODULE", "UNET_TARGET_REPLACE_NAME", "TEXT_ENCODER_TARGET_REPLACE_MODULE",
                     "TEXT_ENCODER_TARGET_REPLACE_NAME", "MODULE_ALGO_MAP", "NAME_ALGO_MAP", "USE_FNMATCH")


@pytest.fixture()
def lycoris():
    """LyCORIS's kohya module; the preset it sets on its network class (class attributes) is put back afterwards."""
    kohya = pytest.importorskip("lycoris.kohya", reason="needs the lycoris-lora package (pip install 'lycoris-lora>=3.4,<4')")
    logging.getLogger("LyCORIS").setLevel(logging.WARNING)
    network = kohya.LycorisNetworkKohya
    saved = {name: getattr(network, name) for name in PRESET_ATTRIBUTES}
    yield kohya
    for name, value in saved.items():
        setattr(network, name, value)


def with_lycoris(pipe, network) -> torch.Tensor:
    """The UNet's output with a LyCORIS network applied to it; the UNet is restored afterwards."""
    network.apply_to(None, pipe.unet, apply_text_encoder=False, apply_unet=True)
    try:
        return unet_output(pipe)
    finally:
        for module in network.unet_loras:
            module.restore()


def sdtune_file(pipe, path, kind: str, targets: str | None = None, factor: int = -1, tucker: bool = False):
    """A random `kind` adapter written by sdtune to `path`; returns the UNet's output with it loaded by sdtune."""
    random_adapter(pipe, kind, lokr_factor=factor, targets=targets, tucker=tucker)
    write_kohya_file(pipe, "src", path, adapter_metadata(pipe, kind, 4, 2.0, targets or TARGETS[kind], factor, tucker=tucker))
    remove_adapter(pipe, "src")
    load_adapter(pipe, path, "loaded")
    try:
        return unet_output(pipe)
    finally:
        remove_adapter(pipe, "loaded")


# LoKr with Tucker cores is left out here: LyCORIS's weights-only reader takes the rank from lokr_w2_a's second
# dimension, which in the Tucker layout is W2's height, so it fails on LyCORIS's own files too; the test below of
# LyCORIS's files in sdtune shows the layouts are the same.
KINDS = [("lora", False), ("locon", False), ("dora", False), ("loha", False), ("lokr", False), ("loha", True)]


@pytest.mark.parametrize("kind, tucker", KINDS, ids=[k + ("-tucker" if t else "") for k, t in KINDS])
def test_lycoris_reads_sdtunes_files_from_the_weights_as_sdtune_does(kind, tucker, lycoris, tiny_pipe, tmp_path):
    base = unet_output(tiny_pipe)
    ours = sdtune_file(tiny_pipe, tmp_path / "a.safetensors", kind, tucker=tucker)
    network, _ = lycoris.create_network_from_weights(1.0, str(tmp_path / "a.safetensors"), None, None, tiny_pipe.unet)
    theirs = with_lycoris(tiny_pipe, network)
    layers = group_kohya_layers(read_adapter_file(tmp_path / "a.safetensors")[0])
    assert len(network.unet_loras) == len(layers), "LyCORIS found every layer of the file"
    assert (ours - base).abs().max() > 1e-3
    assert torch.allclose(theirs, ours, atol=1e-5), f"{kind}: largest difference {(theirs - ours).abs().max():.2e}"
    assert torch.equal(unet_output(tiny_pipe), base)


@pytest.mark.parametrize("kind, factor", [("dora", -1), ("loha", -1), ("lokr", -1), ("lokr", 4), ("lokr", 16)])
def test_lycoris_rebuilds_sdtunes_network_from_the_header(kind, factor, lycoris, tiny_pipe, tmp_path):
    """LyCORIS builds the network the header describes (algo, preset attn-mlp, factor, dora_wd) and loads the file into
    it with no tensor missing or left over: the header names exactly the layers and shapes the file holds."""
    ours = sdtune_file(tiny_pipe, tmp_path / "a.safetensors", kind, "attn-mlp", factor)
    header = read_adapter_file(tmp_path / "a.safetensors")[1]
    assert header["ss_network_module"] == "lycoris.kohya"
    network = lycoris.create_network(1.0, int(header["ss_network_dim"]), float(header["ss_network_alpha"]), None, None, tiny_pipe.unet,
                                     **json.loads(header["ss_network_args"]))
    network.apply_to(None, tiny_pipe.unet, apply_text_encoder=False, apply_unet=True)
    try:
        assert network.load_weights(str(tmp_path / "a.safetensors")) == {}, "no missing or unexpected tensors"
        theirs = unet_output(tiny_pipe)
    finally:
        for module in network.unet_loras:
            module.restore()
    assert torch.allclose(theirs, ours, atol=1e-5), f"{kind}: largest difference {(theirs - ours).abs().max():.2e}"


def lycoris_network(lycoris, pipe, **args):
    """A LyCORIS network made by LyCORIS itself on the tiny UNet, every factor random (its magnitudes moved off ||W||)."""
    network = lycoris.create_network(1.0, 4, 2.0, None, None, pipe.unet, **args)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in ((n, p) for module in network.unet_loras for n, p in module.named_parameters()):
            if name.endswith("dora_scale"):
                parameter.mul_(1.5)
            else:
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    return network


@pytest.mark.parametrize("args", [
    dict(algo="lokr", factor=16, preset="attn-mlp"),
    dict(algo="lokr", factor=4, preset="full", use_tucker=True),
    dict(algo="loha", preset="full", use_tucker=True),
    dict(algo="lora", preset="attn-mlp", dora_wd=True),
    dict(algo="locon", preset="full", dora_wd=True),
], ids=["lokr-16", "lokr-4-tucker", "loha-tucker", "dora", "dora-conv"])
def test_files_lycoris_writes_load_in_sdtune_as_lycoris_applies_them(args, lycoris, tiny_pipe, tmp_path):
    base = unet_output(tiny_pipe)
    network = lycoris_network(lycoris, tiny_pipe, **args)
    theirs = with_lycoris(tiny_pipe, network)
    network.save_weights(str(tmp_path / "lyco.safetensors"), torch.float32, {})
    load_adapter(tiny_pipe, tmp_path / "lyco.safetensors", "lyco")
    try:
        ours = unet_output(tiny_pipe)
    finally:
        remove_adapter(tiny_pipe, "lyco")
    assert (theirs - base).abs().max() > 1e-3
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), f"largest difference {(ours - theirs).abs().max():.2e}"


def test_lycoris_dora_with_magnitudes_per_input_column_is_refused(lycoris, tiny_pipe, tmp_path):
    network = lycoris_network(lycoris, tiny_pipe, algo="lora", preset="attn-mlp", dora_wd=True, wd_on_output=False)
    network.apply_to(None, tiny_pipe.unet, apply_text_encoder=False, apply_unet=True)  # registers the modules for saving
    for module in network.unet_loras:
        module.restore()
    network.save_weights(str(tmp_path / "per_input.safetensors"), torch.float32, {})
    with pytest.raises(AdapterFileError, match="one number per input column .* wd_on_output"):
        load_adapter(tiny_pipe, tmp_path / "per_input.safetensors")
    assert not any(isinstance(m, BaseTunerLayer) for m in tiny_pipe.unet.modules())


def test_lokr_split_is_lycoris_factorization_for_every_width_and_factor(lycoris):
    from lycoris.functional.general import factorization

    widths = range(1, 1400)
    factors = [-1, *range(1, 80)]
    assert all(lycoris_factorization(d, f) == factorization(d, f) for d in widths for f in factors)


@pytest.mark.parametrize("kind", ["lora", "locon", "dora"])
def test_diffusers_reads_sdtunes_files_as_sdtune_does(kind, tiny_pipe, tmp_path):
    """diffusers reads LoRA and LoCon from the kohya file; from a kohya file it drops DoRA's dora_scale (its own warning
    says so), so DoRA goes through the diffusers layout, which keeps the magnitudes."""
    base = unet_output(tiny_pipe)
    random_adapter(tiny_pipe, kind)
    write_kohya_file(tiny_pipe, "src", tmp_path / "k.safetensors", adapter_metadata(tiny_pipe, kind, 4, 2.0, TARGETS[kind]))
    write_diffusers_file(tiny_pipe, "src", tmp_path / "pytorch_lora_weights.safetensors")
    remove_adapter(tiny_pipe, "src")
    load_adapter(tiny_pipe, tmp_path / "k.safetensors", "loaded")
    ours = unet_output(tiny_pipe)
    remove_adapter(tiny_pipe, "loaded")
    tiny_pipe.load_lora_weights(str(tmp_path / ("pytorch_lora_weights.safetensors" if kind == "dora" else "k.safetensors")), adapter_name="d")
    try:
        theirs = unet_output(tiny_pipe)
    finally:
        tiny_pipe.unload_lora_weights()
    assert (ours - base).abs().max() > 1e-3
    assert torch.allclose(theirs, ours, atol=1e-5)
