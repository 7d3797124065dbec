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
