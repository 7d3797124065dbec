"""LCM-LoRA: the consistency parameterisation, the distillation step, and sampling with LCMScheduler."""

import pytest
import torch
from diffusers import LCMScheduler

from sdtune.data import toyworld
from sdtune.methods.lcm import boundary_scalings, ddim_timesteps
from sdtune.training import LCMConfig, train


def test_boundary_condition_and_solver_grid():
    c_skip, c_out = boundary_scalings(torch.tensor([0, 999]))
    assert c_skip[0] == 1 and c_out[0] == 0, "f(z, 0) = z"
    assert c_skip[1] < 1e-6 and abs(c_out[1] - 1) < 1e-6, "f = x0_hat far from 0"
    grid = ddim_timesteps(1000, 50)
    assert grid[0] == 19 and grid[-1] == 999 and len(grid) == 50


def test_lcm_lora_trains_and_samples_in_four_steps(tiny_pipe, tmp_path):
    data = toyworld.write_dataset(toyworld.sample_scenes(4, seed=0), tmp_path / "data")
    base = tiny_pipe.unet.state_dict()
    out = train(LCMConfig(data=str(data), out=str(tmp_path / "lcm"), steps=3, batch_size=2, lr=1e-2), pipe=tiny_pipe)
    assert all(torch.equal(v, base[k]) for k, v in tiny_pipe.unet.state_dict().items()), "the teacher is left untouched"
    scheduler = tiny_pipe.scheduler
    tiny_pipe.scheduler = LCMScheduler.from_config(scheduler.config)
    tiny_pipe.load_lora_weights(out, adapter_name="lcm")
    images = tiny_pipe("a red circle", num_inference_steps=4, guidance_scale=1.0, output_type="np").images
    tiny_pipe.unload_lora_weights()
    tiny_pipe.scheduler = scheduler
    assert images.shape == (1, 64, 64, 3) and torch.isfinite(torch.from_numpy(images)).all()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(adapter="loha"), "LoRA-family adapter"),
        (dict(train_text_encoder=True), "the UNet's LoRA only"),
        (dict(w_min=6.0), "--w-min <= --w-max"),
        (dict(num_ddim_timesteps=7), "must divide 1000"),
        (dict(max_timestep=500), "teacher's DDIM grid"),
    ],
)
def test_bad_lcm_options_are_refused_before_work(change, message, tmp_path):
    data = toyworld.write_dataset(toyworld.sample_scenes(2, seed=0), tmp_path / "data")
    with pytest.raises(ValueError, match=message):
        train(LCMConfig(data=str(data), out=str(tmp_path / "lcm"), **change))
    assert not (tmp_path / "lcm").exists()


def test_a_v_prediction_model_is_distilled_in_the_scheduler_s_own_terms(tiny_path, tmp_path):
    """On a v-prediction model the UNet's output is v, not eps: the distillation reads it as diffusers' schedulers do
    (the x0 its consistency function starts from is the scheduler's own pred_original_sample), then trains."""
    from diffusers import DDIMScheduler

    import sdtune
    from sdtune.methods.lcm import eps_from

    scheduler = DDIMScheduler.from_pretrained(tiny_path / "scheduler", prediction_type="v_prediction")
    alphas = scheduler.alphas_cumprod
    z, v, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([19, 499, 999])
    eps = eps_from("v_prediction", alphas)(v, z, t)
    a = alphas[t].view(-1, 1, 1, 1)
    ours = (z - (1 - a).sqrt() * eps) / a.sqrt()  # x0 from eps, as consistency_loss computes it
    scheduler.set_timesteps(50)
    for i, step in enumerate(t.tolist()):
        theirs = scheduler.step(v[i : i + 1], step, z[i : i + 1]).pred_original_sample
        assert torch.allclose(ours[i : i + 1], theirs, atol=1e-4)
    with pytest.raises(ValueError, match="epsilon or v-prediction"):
        eps_from("sample", alphas)

    pipe = sdtune.load_pipeline(tiny_path)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    data = toyworld.write_dataset(toyworld.sample_scenes(4, seed=0), tmp_path / "data")
    out = train(LCMConfig(data=str(data), out=str(tmp_path / "lcm"), steps=3, batch_size=2), pipe=pipe)
    assert all(torch.isfinite(torch.tensor(__import__("json").loads((out / "loss.json").read_text())["loss"])))


def test_passes_are_counted_not_timed(tiny_pipe):
    """Guidance doubles the UNet's batch; an LCM step at guidance 1 is one evaluation per image."""
    from sdtune.sampling import counting_passes, sample

    with counting_passes(tiny_pipe.unet) as guided:
        sample(tiny_pipe, ["a red circle", "a blue square"], num_inference_steps=3, guidance_scale=4.0)
    with counting_passes(tiny_pipe.unet) as single:
        sample(tiny_pipe, ["a red circle", "a blue square"], num_inference_steps=3, guidance_scale=1.0)
    assert guided == {"calls": 3, "rows": 12} and single == {"calls": 3, "rows": 6}
    sample(tiny_pipe, "a red circle", num_inference_steps=2)
    assert guided == {"calls": 3, "rows": 12}, "the hooks are removed when the block ends"
