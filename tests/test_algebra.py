"""LoRA algebra: cat is exact, linear is not, svd is the best rank-k, fuse/unfuse restores bit for bit."""

import pytest
import torch
from peft import LoraConfig

from unet_probe import unet_out

from sdtune.algebra import combine, fuse, fused_adapters, layer_delta, set_block_scales, unfuse
from sdtune.composition import compose
from sdtune.formats.adapters import add_adapter, inject, kohya_tensors, kohya_to_peft, remove_adapter
from sdtune.formats.kohya import group_kohya_layers

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1"]


@pytest.fixture()
def two_loras(tiny_pipe):
    for seed, (name, rank) in enumerate((("a", 4), ("b", 2))):
        torch.manual_seed(seed)
        add_adapter(tiny_pipe.unet, LoraConfig(r=rank, lora_alpha=2 * rank, init_lora_weights=False, target_modules=TARGETS), name)
    yield tiny_pipe, kohya_tensors(tiny_pipe, "a"), kohya_tensors(tiny_pipe, "b")
    for name in ("a", "b", "mix"):
        remove_adapter(tiny_pipe, name)



def test_cat_is_exact_and_loads_as_one_lora_equal_to_both_active(two_loras):
    pipe, a, b = two_loras
    mixed, errors = combine([a, b], [0.7, -0.4], "cat")
    assert max(errors.values()) < 1e-5
    layer = next(iter(group_kohya_layers(mixed).values()))
    assert layer["lora_down.weight"].shape[0] == 6, "rank r1 + r2"
    pipe.set_adapters(["a", "b"], [0.7, -0.4])
    both = unet_out(pipe)
    inject(pipe, kohya_to_peft(pipe, mixed), "mix")
    pipe.set_adapters("mix")
    assert torch.allclose(unet_out(pipe), both, atol=1e-5)


def test_linear_keeps_cross_terms_and_svd_is_the_best_rank_k(two_loras):
    _, a, b = two_loras
    with pytest.raises(ValueError, match="same rank"):
        combine([a, b], [0.5, 0.5], "linear")
    _, errors = combine([a, a], [0.5, 0.5], "linear")  # (B + B)(A + A) / 2 = 2 BA, not BA
    assert min(errors.values()) > 0.99
    exact, _ = combine([a, b], [1.0, 1.0], "svd", rank=6)
    compressed, errors = combine([a, b], [1.0, 1.0], "svd", rank=3)
    name = next(iter(group_kohya_layers(a)))
    full = layer_delta(group_kohya_layers(exact)[name])
    s = torch.linalg.svdvals(full.flatten(1))
    assert errors[name] == pytest.approx(float(s[3:].norm() / s.norm()), rel=1e-3), "Eckart-Young: the tail of the spectrum"
    with pytest.raises(ValueError, match="above the sum's exact rank"):
        combine([a, b], [1.0, 1.0], "svd", rank=7)
    for method in ("ties", "dare"):
        merged, errors = combine([a, b], [1.0, 1.0], method, rank=4, density=0.5)
        assert group_kohya_layers(merged)[name]["lora_down.weight"].shape[0] == 4 and 0 < errors[name] < 1
    with pytest.raises(ValueError, match="Unknown combination"):
        combine([a, b], [1.0, 1.0], "average")
    with pytest.raises(ValueError, match="one weight per LoRA"):
        combine([a, b], [1.0], "cat")


def test_fuse_gives_the_adapter_output_and_unfuse_restores_every_bit(two_loras):
    pipe = two_loras[0]
    pipe.set_adapters("a")
    active = unet_out(pipe)
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items() if "base_layer" in k}
    saved = fuse(pipe, "a")
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for n, m in pipe.unet.named_modules() if n.endswith("lora_A.a")]
    assert torch.allclose(unet_out(pipe), active, atol=1e-5)
    assert hooks and not calls, "a fused adapter's layers are not computed any more"
    for hook in hooks:
        hook.remove()
    with pytest.raises(ValueError, match="already fused"):
        fuse(pipe, "a")
    for method in ("merge", "composite"):  # re-activating a fused LoRA would count its update twice
        with pytest.raises(ValueError, match="^a is fused into the base weights"):
            with compose(pipe, ["a", "b"], method):
                pass
    unfuse(pipe, "a", saved)
    assert fused_adapters(pipe) == set()
    assert all(torch.equal(pipe.unet.state_dict()[k], v) for k, v in weights.items())
    assert torch.equal(unet_out(pipe), active)


def test_block_scales(two_loras):
    pipe = two_loras[0]
    pipe.set_adapters("a")
    active = unet_out(pipe)
    blocks = [n for n, _ in pipe.unet.named_children() if n in ("down_blocks", "mid_block", "up_blocks")]
    assert set_block_scales(pipe, "a", {b: 0.0 for b in blocks}) > 0
    pipe.disable_lora()
    base = unet_out(pipe)
    pipe.enable_lora()
    assert torch.allclose(unet_out(pipe), base, atol=1e-6)
    set_block_scales(pipe, "a", {"up_blocks.0": 1.0})
    assert torch.equal(unet_out(pipe), active)
    with pytest.raises(ValueError, match="No UNet block named"):
        set_block_scales(pipe, "a", {"middle": 1.0})


def test_a_layer_only_some_loras_adapt_takes_the_others_as_zero():
    """The shipped checkerboard LoRA adapts fewer layers than the pink LoCon: cat keeps every layer of both, exactly."""
    from sdtune.io import read_safetensors
    from sdtune.models.loading import ASSETS

    pink, checker = (read_safetensors(ASSETS / "loras" / f"{n}.safetensors")[0] for n in ("pink", "checkerboard"))
    p, c = group_kohya_layers(pink), group_kohya_layers(checker)
    assert set(c) < set(p), "the premise: checkerboard adapts a subset of pink's layers"
    merged, errors = combine([pink, checker], [1.0, 0.5], "cat")
    m = group_kohya_layers(merged)
    assert set(m) == set(p) and max(errors.values()) < 1e-5
    only_pink = next(name for name in p if name not in c)
    assert torch.allclose(layer_delta(m[only_pink]), layer_delta(p[only_pink]).float(), atol=1e-6)
    with pytest.raises(ValueError, match="share no adapted layer"):
        combine([pink, {k.replace("lora_unet_", "lora_te_"): v for k, v in checker.items()}], [1.0, 1.0], "cat")


def test_layers_without_alpha_combine_as_alpha_equal_to_rank(two_loras):
    """sd-scripts and LyCORIS read a missing (or zero) alpha as alpha = r, scale 1; cat and linear do the same."""
    _, a, b = two_loras
    no_alpha = {k: v for k, v in a.items() if not k.endswith(".alpha")}
    same = {k: (torch.tensor(float(a[k.replace(".alpha", ".lora_down.weight")].shape[0])) if k.endswith(".alpha") else v) for k, v in a.items()}
    zero = {k: (torch.tensor(0.0) if k.endswith(".alpha") else v) for k, v in a.items()}
    for method in ("cat", "linear"):
        reference, _ = combine([same, same], [0.5, 0.25], method)
        for unset in (no_alpha, zero):
            mixed, _ = combine([unset, unset], [0.5, 0.25], method)
            assert mixed.keys() == reference.keys() and all(torch.allclose(mixed[k], reference[k]) for k in mixed), method
    _, errors = combine([no_alpha, b], [1.0, -1.0], "cat")
    assert max(errors.values()) < 1e-5


def test_dora_layers_are_refused_not_merged_without_their_magnitudes(tiny_pipe):
    add_adapter(tiny_pipe.unet, LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, use_dora=True, target_modules=TARGETS), "d")
    try:
        dora = kohya_tensors(tiny_pipe, "d")
    finally:
        remove_adapter(tiny_pipe, "d")
    assert any(k.endswith("dora_scale") for k in dora)
    for method in ("cat", "svd"):
        with pytest.raises(ValueError, match="is a DoRA layer: .* no LoRA holds a combination of DoRAs exactly"):
            combine([dora, dora], [1.0, 1.0], method, rank=4)
