import json

import torch
from diffusers import StableDiffusionPipeline

from sdtune.evaluation.judge import Judge, load_judge
from sdtune.models import pretrain, tiny


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


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_decoder_init_refines_the_vae_of_a_finished_run_and_keeps_its_unet(tmp_path):
    pretrain.main(pretrain.parse_args(["--out", str(tmp_path / "first"), "--quick"]))
    first = StableDiffusionPipeline.from_pretrained(tmp_path / "first" / "tiny-sd")
    for name, anchor in (("anchored", []), ("frozen", ["--encoder-anchor", "0"])):
        log = pretrain.main(pretrain.parse_args(["--out", str(tmp_path / name), "--quick", *anchor,
                                                 "--decoder-init", str(tmp_path / "first" / "tiny-sd")]))
        assert "unet" not in log and log["continued_from"]["config"]["out"] == str(tmp_path / "first")
        second = StableDiffusionPipeline.from_pretrained(tmp_path / name / "tiny-sd")
        assert _same(first.unet, second.unet) and _same(first.text_encoder, second.text_encoder)
        assert not _same(first.vae.decoder, second.vae.decoder)
        assert _same(first.vae.encoder, second.vae.encoder) == (name == "frozen")
        assert ("base_latent_rms_shift" in log["vae_decoder_refinement"]) == (name == "anchored")


def test_the_encoder_anchor_holds_base_images_latents():
    """Trained with the encoder, the refinement moves base images' latents less the stronger its anchor."""
    judge = Judge(width=8).eval().requires_grad_(False)
    shifts = {}
    for weight in (1e-4, 1e3):
        cfg = pretrain.PretrainConfig(decoder_steps=12, vae_batch=4, decoder_lr=3e-3, eval_images=8, encoder_anchor=weight)
        torch.manual_seed(0)
        vae = tiny.new_vae()
        log: dict = {}
        pretrain.refine_vae(cfg, log, vae, judge, judge)
        shifts[weight] = log["vae_decoder_refinement"]["base_latent_rms_shift"]
    assert 0 < shifts[1e3] < 0.5 * shifts[1e-4], shifts
