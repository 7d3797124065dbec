"""Will the tiny model's pretraining fit in 2 hours on this machine? A projection from a short run of each stage.

    python benchmarks/pretrain_time.py [--steps 60]

Runs every stage of `sdtune.models.pretrain` for a few steps at the default batch sizes and models (judge,
perceptual network, VAE, VAE refinement with the encoder, text encoder + UNet), times each training loop, and
projects a full run: loop seconds per step x the default number of steps, plus the time to render each stage's
image bank at the measured rendering speed. Evaluations are not counted (about 2-3 minutes in a full run's log).
The projection is no substitute for one measured run (`total_minutes` in `pretrain_log.json`; one from-scratch
run took 89.4 minutes: `benchmarks/results/pretrain_from_scratch_cpu.json`); it tells how far this machine is from
the 2-hour budget before spending the 2 hours.
"""

import argparse
import tempfile
import time

import torch

from sdtune.data import toyworld
from sdtune.models import pretrain, tiny


def main() -> None:
    parser = argparse.ArgumentParser(description="project the pretraining time from a short run of each stage")
    parser.add_argument("--steps", type=int, default=60, help="steps of each stage's short run (default 60)")
    args = parser.parse_args()
    full = pretrain.PretrainConfig()
    short = pretrain.PretrainConfig(judge_steps=args.steps, perceptual_steps=args.steps, vae_steps=args.steps,
                                    decoder_steps=args.steps, unet_steps=args.steps, eval_images=8)
    start = time.time()
    scenes = toyworld.sample_scenes(500, seed=0)
    for s in scenes:
        toyworld.render_array(s)
    seconds_per_image = (time.time() - start) / len(scenes)

    log: dict = {}
    judge = pretrain.train_judge(short, log, short.judge_steps, short.seed)
    perceptual = pretrain.perceptual_network(short, log)
    vae = pretrain.train_vae(short, log, judge, perceptual)
    pretrain.refine_vae(short, log, vae, judge, perceptual)
    with tempfile.TemporaryDirectory() as vocab:
        pretrain.train_unet(short, log, vae, tiny.new_tokenizer(vocab))

    # stage: (log key, default steps, images rendered for its training data in a full run)
    stages = {
        "judge": ("judge", full.judge_steps, min(20000, full.judge_steps * full.judge_batch)),
        "perceptual network": ("vae_perceptual_net", full.perceptual_steps, min(20000, full.perceptual_steps * full.judge_batch)),
        "VAE": ("vae", full.vae_steps, min(24000, full.vae_steps * full.vae_batch)),
        "VAE refinement": ("vae_decoder_refinement", full.decoder_steps, min(24000, full.decoder_steps * full.vae_batch)),
        "text encoder + UNet": ("unet", full.unet_steps, full.bank_size),
    }
    print(f"# {args.steps} steps of each stage, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"rendering {1000 * seconds_per_image:.2f} ms per image")
    print(f"{'stage':<22}{'s/step':>8}{'steps':>7}{'loop min':>10}{'data min':>10}")
    total = 0.0
    for name, (key, steps, images) in stages.items():
        per_step = 60 * log[key]["minutes"] / args.steps
        loop, data = per_step * steps / 60, seconds_per_image * images / 60
        total += loop + data
        print(f"{name:<22}{per_step:>8.3f}{steps:>7}{loop:>10.1f}{data:>10.1f}")
    print(f"projected full run: {total:.0f} minutes (budget 120), evaluations not counted")


if __name__ == "__main__":
    main()
