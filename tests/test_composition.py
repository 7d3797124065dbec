"""Multi-LoRA composition: composite equals the average of n separate passes, switch alternates, merge weights."""

import pytest
import torch
from peft import LoraConfig

from sdtune.composition import adapter_per_item, compose
from sdtune.formats.adapters import add_adapter, remove_adapter

NAMES = ["a", "b", "c"]


@pytest.fixture()
def three_loras(tiny_pipe):
    for i, name in enumerate(NAMES):
        torch.manual_seed(i)
        config = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        add_adapter(tiny_pipe.unet, config, name)
    yield tiny_pipe
    for name in NAMES:
        remove_adapter(tiny_pipe, name)


def unet_call(pipe, batch=2):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(batch, pipe.unet.config.in_channels, 8, 8, generator=g)
    c = torch.randn(batch, 7, pipe.unet.config.cross_attention_dim, generator=g)
    return lambda: pipe.unet(z, torch.tensor([500, 20][:batch]), c).sample


def test_composite_is_the_mean_of_the_separate_predictions_in_one_call(three_loras):
    pipe, call = three_loras, unet_call(three_loras)
    separate = []
    for name in NAMES:
        pipe.set_adapters(name)
        separate.append(call())
    calls = []
    hook = pipe.unet.conv_in.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad(), compose(pipe, NAMES, "composite"):
        composite = call()
    hook.remove()
    assert calls == [2 * len(NAMES)], "one UNet call with the batch repeated once per LoRA"
    assert torch.allclose(composite, torch.stack(separate).mean(0), atol=1e-5)
    assert "forward" not in vars(pipe.unet), "the context gives the UNet its own forward back"


def test_merge_weights_and_switch_alternates_every_k_steps(three_loras):
    pipe = three_loras
    with torch.no_grad(), compose(pipe, ["a", "b"], "merge", weights=[0.5, 0.0]):
        merged = unet_call(pipe)()
    pipe.set_adapters("a", 0.5)
    assert torch.allclose(merged, unet_call(pipe)(), atol=1e-5)

    seen = []
    with compose(pipe, NAMES, "switch", switch_step=2) as extra:
        for step in range(6):
            seen.append(pipe.unet.active_adapters()[0])
            extra["callback_on_step_end"](pipe, step, None, {})
    assert seen == ["a", "a", "b", "b", "c", "c"]
    with compose(pipe, ["a", "b"], "switch") as extra:
        images = pipe("a red circle", num_inference_steps=3, output_type="np", **extra).images
    assert images.shape == (1, 64, 64, 3)


@pytest.mark.parametrize(
    "names, method, weights, message",
    [
        (["a", "b"], "blend", None, "Unknown composition method"),
        (["a"], "composite", None, "at least two"),
        (["a", "b"], "merge", [1.0], "one weight per LoRA"),
        (["a", "zzz"], "merge", None, "No adapter named zzz"),
    ],
)
def test_bad_compositions_are_refused(three_loras, names, method, weights, message):
    with pytest.raises(ValueError, match=message):
        with compose(three_loras, names, method, weights):
            pass


def test_composite_and_switch_apply_the_weights(three_loras):
    pipe, call = three_loras, unet_call(three_loras)
    pipe.disable_lora()
    base = call()
    pipe.enable_lora()
    with torch.no_grad(), compose(pipe, ["a", "b"], "composite", weights=[0.0, 0.0]):
        assert torch.allclose(call(), base, atol=1e-5), "weight 0 for every LoRA: the base model"
    with torch.no_grad(), compose(pipe, ["a", "b"], "switch", weights=[0.0, 2.0]) as extra:
        assert torch.allclose(call(), base, atol=1e-5), "the first LoRA (weight 0) is on for the first step"
        extra["callback_on_step_end"](pipe, 0, None, {})
        doubled = call()
    pipe.set_adapters("b", 2.0)
    assert torch.allclose(doubled, call(), atol=1e-5)


def test_composite_refuses_dora(three_loras):
    pipe = three_loras
    add_adapter(pipe.unet, LoraConfig(r=2, use_dora=True, target_modules=["to_q"]), "d")
    with pytest.raises(ValueError, match="d is DoRA"):
        with compose(pipe, ["a", "d"], "composite"):
            pass
    remove_adapter(pipe, "d")


@pytest.mark.parametrize("method", ["merge", "switch", "composite"])
def test_a_lora_merged_by_peft_is_refused_by_every_method(three_loras, method):
    """pipe.fuse_lora() (peft's merge) makes each merged layer compute its base weight alone: any other adapter
    asked for would silently do nothing there."""
    pipe, call = three_loras, unet_call(three_loras)
    with torch.no_grad():
        pipe.set_adapters("a")
        with_a = call()
        pipe.set_adapters(["a", "b", "c"])
        assert (call() - with_a).abs().max() > 1e-2, "b and c change the prediction"
    pipe.fuse_lora(adapter_names=["a"])
    try:
        pipe.set_adapters(["b", "c"])
        with torch.no_grad():
            assert (call() - with_a).abs().max() < 1e-4, "b and c act nowhere: the merged layers run W + dW_a only"
        with pytest.raises(ValueError, match="a is merged into the base weights by peft"):
            with compose(pipe, ["b", "c"], method):
                pass
    finally:
        pipe.unfuse_lora()


def test_adapter_per_item_gives_each_item_its_own_lora(three_loras):
    pipe, call = three_loras, unet_call(three_loras)
    alone = []
    for name in ["c", "a"]:
        pipe.set_adapters(name)
        alone.append(call())
    pipe.set_adapters(NAMES)
    with torch.no_grad(), adapter_per_item(pipe.unet, ["c", "a"]):
        mixed = call()
    assert torch.allclose(mixed[0], alone[0][0], atol=1e-5) and torch.allclose(mixed[1], alone[1][1], atol=1e-5)

