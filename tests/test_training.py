import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

from adapter_images import through_both_layouts
from sdtune.data import toyworld
from sdtune.formats import load_adapter
from sdtune.formats.adapters import remove_adapter
from sdtune.training import TrainConfig, latest_checkpoint, train


@pytest.fixture(scope="module")
def striped_folder(tmp_path_factory):
    return toyworld.write_dataset(
        toyworld.sample_scenes(8, seed=1, styles=["striped"]), tmp_path_factory.mktemp("data") / "striped"
    )


def images(pipe, prompt="a striped red circle on a white background"):
    return pipe(prompt, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images


def quick(folder, out, **change) -> TrainConfig:
    return TrainConfig(**(dict(data=str(folder), out=str(out), steps=4, batch_size=4, lr=1e-2, rank=4) | change))


def test_lora_files_load_in_plain_diffusers_and_kohya_layout_gives_the_same_images(tiny_pipe, striped_folder, tmp_path):
    out = train(quick(striped_folder, tmp_path / "lora"), pipe=tiny_pipe)
    assert not getattr(tiny_pipe.unet, "peft_config", None), "training must leave the caller's pipeline without adapters"
    weights = load_file(out / "pytorch_lora_weights.safetensors")
    assert weights and all(k.startswith("unet.") and ("lora_A" in k or "lora_B" in k) for k in weights)
    assert any("attn2.to_k.lora_B" in k for k in weights)
    losses = json.loads((out / "loss.json").read_text())["loss"]
    assert len(losses) == 4 and all(v == v for v in losses)
    assert json.loads((out / "training_config.json").read_text())["rank"] == 4

    with safe_open(str(out / "lora.safetensors"), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys

    base = images(tiny_pipe)
    adapted, from_kohya = through_both_layouts(tiny_pipe, out, out / "lora.safetensors", images)  # plain diffusers, kohya
    assert abs(adapted - base).max() > 1e-3
    assert abs(from_kohya - adapted).max() < 1e-5
    assert abs(images(tiny_pipe) - base).max() < 1e-6, "removing the adapter restores the base model"


@pytest.mark.parametrize("adapter", ["locon", "dora", "loha", "lokr"])
def test_every_adapter_kind_trains_and_its_kohya_file_reproduces_it(adapter, tiny_pipe, striped_folder, tmp_path):
    targets = "attn-mlp-conv" if adapter == "dora" else None  # DoRA on convolutions too: peft's conv magnitude is (1, out, 1, 1)
    factor = 4 if adapter == "lokr" else -1  # LoKr with a factor other than the default: the loader must find it again
    out = train(quick(striped_folder, tmp_path / adapter, adapter=adapter, targets=targets, lokr_factor=factor), pipe=tiny_pipe)
    kohya = load_file(out / f"{adapter}.safetensors")
    marker = {"locon": "resnets_0_conv1.lora_down.weight", "dora": "dora_scale", "loha": "hada_w1_a", "lokr": "lokr_w1"}[adapter]
    assert any(k.endswith(marker) for k in kohya), f"{adapter}: no {marker} key in the kohya file"
    if adapter == "lokr":  # 64 channels split 4 x 16: W1 is 4 x 4
        assert all(v.shape == (4, 4) for k, v in kohya.items() if k.endswith("lokr_w1") and "_proj_in" in k)
        assert json.loads(safe_open(out / "lokr.safetensors", "pt").metadata()["ss_network_args"])["factor"] == "4"
    base = images(tiny_pipe)
    load_adapter(tiny_pipe, out / f"{adapter}.safetensors", "k")
    from_kohya = images(tiny_pipe)
    remove_adapter(tiny_pipe, "k")
    assert abs(from_kohya - base).max() > 1e-4, f"{adapter}: training changed nothing"
    if adapter in ("locon", "dora"):  # the diffusers file gives the same images
        tiny_pipe.load_lora_weights(out)
        assert abs(images(tiny_pipe) - from_kohya).max() < 1e-5
        tiny_pipe.unload_lora_weights()
    else:
        assert not (out / "pytorch_lora_weights.safetensors").exists(), "diffusers has no LoHa/LoKr layout"


@pytest.mark.parametrize("adapter", ["lora", "locon"])  # LoCon's text-encoder part is plain LoRA (no convolutions there)
def test_text_encoder_adapter_goes_into_both_layouts(adapter, tiny_pipe, striped_folder, tmp_path):
    out = train(quick(striped_folder, tmp_path / "te", adapter=adapter, train_text_encoder=True, text_encoder_lr=5e-3), pipe=tiny_pipe)
    assert not getattr(tiny_pipe.text_encoder, "peft_config", None)
    assert any(k.startswith("text_encoder.") for k in load_file(out / "pytorch_lora_weights.safetensors"))
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj") for k in load_file(out / "te.safetensors"))
    a, b = through_both_layouts(tiny_pipe, out, out / "te.safetensors", images)
    assert abs(a - b).max() < 1e-5


def test_full_fine_tuning_writes_a_pipeline_and_leaves_the_callers_untouched(tiny_pipe, striped_folder, tmp_path):
    before = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    out = train(quick(striped_folder, tmp_path / "full", adapter="full", lr=1e-3), pipe=tiny_pipe)
    assert all(torch.equal(v, tiny_pipe.unet.state_dict()[k]) for k, v in before.items())
    tuned = StableDiffusionPipeline.from_pretrained(out)
    changed = [k for k, v in tuned.unet.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > 0.5 * len(before)


def test_options_min_snr_noise_offset_dropout_flip_accumulation_schedule_validation(tiny_pipe, striped_folder, tmp_path):
    cfg = quick(striped_folder, tmp_path / "o", min_snr_gamma=5.0, noise_offset=0.05, caption_dropout=0.2, flip=True,
                gradient_accumulation=2, lr_scheduler="cosine", warmup_steps=1, validation_prompt="a striped red circle",
                validation_every=2, gradient_checkpointing=True)
    out = train(cfg, pipe=tiny_pipe)
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-0000002.png", "step-0000004.png"]
    assert len(json.loads((out / "loss.json").read_text())["loss"]) == 4


def test_max_grad_norm_clips_what_the_optimizer_steps_with(tiny_pipe, striped_folder, tmp_path):
    norms = []

    def record(optimizer, args, kwargs):  # runs before every optimizer step, after the clipping
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    hook = register_optimizer_step_pre_hook(record)
    try:
        train(quick(striped_folder, tmp_path / "free", steps=3), pipe=tiny_pipe)
        limit = min(norms) / 10  # below every unclipped norm, so each step is clipped
        norms.clear()
        train(quick(striped_folder, tmp_path / "clipped", steps=3, max_grad_norm=limit), pipe=tiny_pipe)
    finally:
        hook.remove()
    assert len(norms) == 3 and all(n == pytest.approx(limit, rel=1e-3) for n in norms)


def test_timesteps_stay_within_min_and_max_timestep(tiny_pipe, striped_folder, tmp_path):
    seen = []
    hook = tiny_pipe.unet.register_forward_pre_hook(lambda m, args: seen.extend(args[1].tolist()))
    try:
        train(quick(striped_folder, tmp_path / "t", min_timestep=100, max_timestep=300), pipe=tiny_pipe)
    finally:
        hook.remove()
    assert seen and all(100 <= t < 300 for t in seen)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(rank=0), "--rank must be a positive"),
        (dict(min_timestep=500, max_timestep=400), "--min-timestep < --max-timestep"),
        (dict(max_timestep=2000), "--max-timestep <= 1000"),
        (dict(max_timestep=0), "--min-timestep < --max-timestep"),
        (dict(alpha=-1.0), "--alpha must be a positive"),
        (dict(adapter="ia3"), "Unknown --adapter"),
        (dict(targets="everything"), "Unknown --targets"),
        (dict(adapter="locon", targets="attn"), "LoCon is LoRA on convolutions"),
        (dict(adapter="lora", lokr_factor=4), "--lokr-factor .* only for --adapter lokr"),
        (dict(adapter="lokr", lokr_factor=0), "--lokr-factor is -1 or a positive integer"),
        (dict(lr=0.0), "--lr must be a positive"),
        (dict(max_grad_norm=-1.0), "--max-grad-norm must be >= 0"),
        (dict(steps=0), "--steps must be a positive"),
        (dict(caption_dropout=1.0), "--caption-dropout"),
        (dict(validation_every=5), "--validation-prompt"),
        (dict(mixed_precision="fp8"), "--mixed-precision"),
        (dict(adapter="hypernetwork", train_text_encoder=True), "hypernetwork keeps it frozen"),
    ],
)
def test_bad_options_are_refused_before_work(change, message, striped_folder, tmp_path):
    with pytest.raises(ValueError, match=message):
        train(TrainConfig(data=str(striped_folder), out=str(tmp_path / "o"), **change))
    assert not (tmp_path / "o").exists()


def test_existing_results_are_not_overwritten(striped_folder, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="--overwrite"):
        train(TrainConfig(data=str(striped_folder), out=str(out)))
    assert (out / "keep.txt").read_text() == "precious"


def test_a_diverging_loss_stops_with_a_message_and_keeps_the_last_checkpoint(tiny_pipe, striped_folder, tmp_path):
    cfg = quick(striped_folder, tmp_path / "nan", lr=1e30, steps=30, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match="last checkpoint .* is intact"):
        train(cfg, pipe=tiny_pipe)
    last = latest_checkpoint(cfg.out)
    assert last is not None and {p.name for p in last.iterdir()} == {"trainable.safetensors", "state.pt", "training_config.json"}
    assert not (tmp_path / "nan" / "lora.safetensors").exists()
    assert not getattr(tiny_pipe.unet, "peft_config", None)
