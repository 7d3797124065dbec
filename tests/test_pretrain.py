import json

import torch
from diffusers import StableDiffusionPipeline

from sdtune.evaluation.judge import load_judge
from sdtune.models import pretrain


def test_a_small_step_run_of_the_pretraining_script_produces_a_loadable_model(tmp_path):
    log = pretrain.main(pretrain.parse_args(["--out", str(tmp_path), "--quick"]))
    assert set(log) >= {"judge", "vae", "unet", "prompt_accuracy", "vae_shipped"}
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "tiny-sd")
    assert pipe.vae.config.latent_channels == 8 and pipe.vae.config.scaling_factor == 1.0
    assert pipe.unet.dtype.is_floating_point
    assert (tmp_path / "tiny-sd" / "tokenizer" / "merges.txt").is_file()
    assert load_judge(tmp_path / "judge").attributes["style"][0] == "flat"
    assert json.loads((tmp_path / "pretrain_log.json").read_text())["config"]["unet_steps"] == 4


def test_the_config_has_a_command_line_option_per_field():
    cfg = pretrain.parse_args(["--unet-steps", "7", "--kl-weight", "0.5"])
    assert cfg.unet_steps == 7 and cfg.kl_weight == 0.5 and cfg.vae_steps == pretrain.PretrainConfig().vae_steps


def test_decoder_init_refines_only_the_decoder_of_a_finished_run(tmp_path):
    pretrain.main(pretrain.parse_args(["--out", str(tmp_path / "first"), "--quick"]))
    log = pretrain.main(pretrain.parse_args(["--out", str(tmp_path / "second"), "--quick",
                                             "--decoder-init", str(tmp_path / "first" / "tiny-sd")]))
    assert "unet" not in log and log["continued_from"]["config"]["out"] == str(tmp_path / "first")
    first = StableDiffusionPipeline.from_pretrained(tmp_path / "first" / "tiny-sd")
    second = StableDiffusionPipeline.from_pretrained(tmp_path / "second" / "tiny-sd")
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))  # noqa: E731
    assert same(first.unet, second.unet) and same(first.text_encoder, second.text_encoder)
    assert same(first.vae.encoder, second.vae.encoder) and not same(first.vae.decoder, second.vae.decoder)
