"""Pretrain the tiny Stable Diffusion and its judge on the toy world, reproducibly, on a CPU.

    python -m sdtune.models.pretrain --out sdtune/assets            # every stage (89 min measured on 2 cores)
    python -m sdtune.models.pretrain --out /tmp/t --quick            # a smoke run in seconds (the tests use it)

Stages, each seeded:
1. tokenizer: a byte-level BPE vocabulary in CLIP's format (`tokenizer.py`);
2. judge: a classifier of every toy-world attribute, base and novel (`evaluation/judge.py`);
3. VAE: trained like SD's on *everything*: base and novel concepts and broad random images, with an L1 +
   L2 + image-gradient reconstruction loss, an LPIPS-style perceptual term through a second small classifier
   and a small KL term; its latents are standardised per channel (`tiny.bake_latent_normalization`); then
   it is refined (`refine_vae`): the decoder, and the encoder with the latents of base images anchored where
   they were, so the UNet's training data stay put (`--decoder-init` runs only this stage, with a new judge,
   on a finished run);
4. text encoder + UNet, from scratch, on base concepts only: the usual epsilon-prediction loss on cached
   VAE latents, min-SNR weighting, 10% caption dropout (for classifier-free guidance) and partial captions
   ("a red shape", "a circle"), with an exponential moving average of the weights.

Every stage writes its metrics into `pretrain_log.json` in the output folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from ..config import add_config_options, config_from_args, option
from ..data import toyworld
from ..evaluation.judge import Judge, agreement, load_judge
from ..evaluation.prompts import prompt_accuracy
from . import tiny


@dataclass
class PretrainConfig:
    """Every setting of the pretraining run; `python -m sdtune.models.pretrain --help` lists them."""

    out: str = option("Output folder: tiny-sd/, judge/ and pretrain_log.json are written here.", "sdtune/assets")
    seed: int = option("Seed of every stage.", 0)
    judge_steps: int = option("Judge training steps.", 1200)
    judge_batch: int = option("Judge batch size.", 64)
    perceptual_steps: int = option("Training steps of the VAE's perceptual network (a second, smaller judge).", 1200)
    perceptual_weight: float = option("Weight of the VAE's perceptual loss (LPIPS-style, on that network's features).", 1.0)
    vae_steps: int = option("VAE training steps.", 4500)
    vae_batch: int = option("VAE batch size.", 12)
    vae_lr: float = option("VAE peak learning rate (cosine schedule).", 1e-3)
    kl_weight: float = option("Weight of the VAE's KL term, per latent element.", 1e-6)
    decoder_steps: int = option("Steps of the VAE refinement (the decoder, and the encoder if --encoder-anchor > 0).", 3000)
    decoder_lr: float = option("Peak learning rate of the VAE refinement.", 3e-4)
    semantic_weight: float = option("Weight of the refinement's term: the perceptual network names the image's attributes.", 0.15)
    encoder_anchor: float = option(
        "Weight of the refinement's anchor on base images' latents, ||E(x) - E_before(x)||^2; with a weight > 0 the "
        "encoder trains too (novel concepts may move, base ones stay where the UNet learned them); 0 = encoder frozen.", 10.0)
    unet_steps: int = option("Text encoder + UNet training steps.", 3500)
    unet_batch: int = option("Text encoder + UNet batch size.", 64)
    unet_lr: float = option("Text encoder + UNet peak learning rate (cosine schedule).", 6e-4)
    ema_decay: float = option("Decay of the exponential moving average of the weights that is shipped.", 0.999)
    caption_dropout: float = option("Fraction of empty captions, for classifier-free guidance.", 0.1)
    partial_caption: float = option("Fraction of captions with attributes left out ('a red shape').", 0.3)
    min_snr_gamma: float = option("Min-SNR-gamma loss weighting (Hang et al. 2023).", 5.0)
    bank_size: int = option("Number of base-concept images the UNet trains on.", 16000)
    eval_seeds: int = option("Images per base prompt in the final prompt-accuracy measurement.", 2)
    eval_steps: int = option("Sampling steps of that measurement.", 25)
    eval_guidance: float = option("Guidance scale of that measurement.", 4.0)
    eval_images: int = option("Images per kind for the judge and VAE measurements.", 600)
    unet_init: str = option("A tiny-sd folder whose text encoder + UNet to continue training ('' = from scratch).", "")
    resume_stages: bool = option("Reuse the judge and VAE an interrupted run left in --out/stages.", False)
    decoder_init: str = option(
        "A finished run's tiny-sd folder to continue: train a new judge and refine its VAE on the current toy "
        "world for --decoder-steps, keeping its text encoder and UNet and its base latents ('' = train every stage).", "")


def _lr_lambda(total: int, warmup: int):
    """Linear warmup, then cosine decay to 5% of the peak."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

    return f


def _to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays).astype(np.float32)).permute(0, 3, 1, 2).contiguous()


def all_concept_scenes(n: int, seed: int) -> list[toyworld.Scene]:
    """Scenes drawn from every concept, base and novel, with some blurred."""
    rng = np.random.default_rng(seed)
    scenes = toyworld.sample_scenes(n, seed, toyworld.SHAPES, toyworld.COLOURS, toyworld.BACKGROUNDS, toyworld.STYLES)
    return [s if rng.random() > 0.1 else replace(s, blur=1.5) for s in scenes]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1], averaged over images."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


# ------------------------------------------------------------------------------------------------
# Stage 2: the judge
# ------------------------------------------------------------------------------------------------

def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, per-channel colour gain, noise: so the judge also reads imperfect generated images."""
    n = x.shape[0]
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None, :] / 256).expand(3, 1, 5, 5)
    blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), k, groups=3)
    mix = torch.rand(n, 1, 1, 1, generator=gen) * (torch.rand(n, 1, 1, 1, generator=gen) < 0.5)
    x = (1 - mix) * x + mix * blurred
    x = x * (1 + 0.16 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5))
    x = x + torch.randn(x.shape, generator=gen) * 0.05 * torch.rand(n, 1, 1, 1, generator=gen)
    return x.clamp(0, 1)


def train_judge(cfg: PretrainConfig, log: dict, steps: int, seed: int, width: int = 24, name: str = "judge") -> Judge:
    """Train a multi-head classifier of every toy-world attribute on augmented renders."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    judge = Judge(width=width)
    n_bank = min(20000, steps * cfg.judge_batch)
    scenes = all_concept_scenes(n_bank, seed + 1)
    images = _to_tensor([toyworld.render_array(s) for s in tqdm(scenes, desc="judge data", leave=False)])
    labels = {k: torch.tensor([v.index(getattr(s, k)) for s in scenes]) for k, v in judge.attributes.items()}
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, 100))
    start = time.time()
    for step in (bar := tqdm(range(steps), desc=name)):
        idx = torch.randint(0, n_bank, (cfg.judge_batch,), generator=gen)
        logits = judge(_augment(images[idx], gen))
        loss = sum(F.cross_entropy(logits[k], labels[k][idx]) for k in logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    judge.eval()
    fresh = all_concept_scenes(cfg.eval_images * 3, cfg.seed + 1000)
    acc = agreement(judge.predict(_to_tensor([toyworld.render_array(s) for s in fresh])), fresh)
    log[name] = {"steps": steps, "width": width, "minutes": (time.time() - start) / 60, "accuracy_fresh_images": acc}
    print(f"{name} accuracy on fresh images:", acc)
    return judge


def save_judge(judge: Judge, out: Path, log: dict) -> None:
    """The judge ships with its own training log beside its weights."""
    judge.save(out / "judge")
    (out / "judge" / "train_log.json").write_text(json.dumps(log["judge"]))


# ------------------------------------------------------------------------------------------------
# Stage 3: the VAE
# ------------------------------------------------------------------------------------------------

def _vae_bank(n: int, seed: int) -> torch.Tensor:
    """45% base-concept images, 45% any-concept images, 10% broad random images."""
    rng = np.random.default_rng(seed)
    n_base, n_all = 9 * n // 20, 9 * n // 20
    arrays = [toyworld.render_array(s) for s in toyworld.sample_scenes(n_base, seed)]
    arrays += [toyworld.render_array(s) for s in all_concept_scenes(n_all, seed + 1)]
    arrays += [toyworld.broad_image(rng) for _ in range(n - n_base - n_all)]
    return _to_tensor(arrays)


def _gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 distance between horizontal and vertical image gradients: keeps edges sharp."""
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(a) - dx(b)).abs().mean() + (dy(a) - dy(b)).abs().mean()


def pixel_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 + L2 + 0.5 image-gradient L1: the pixel part of both VAE stages' losses."""
    return F.l1_loss(recon, x) + F.mse_loss(recon, x) + 0.5 * _gradient_l1(recon, x)


def perceptual_distance(net: Judge, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS-style distance (Zhang et al. 2018) with a toy-world classifier in place of VGG:
    d(a, b) = mean_l mean_{h,w} || f_l(a) / |f_l(a)| - f_l(b) / |f_l(b)| ||^2, f_l: layer l's features, normalised over channels.
    It weighs what a classifier needs (the object's colour, shape, pattern) above the background's pixels."""
    d = a.new_zeros(())
    ha, hb = a, b
    for layer in net.features:
        ha, hb = layer(ha), layer(hb)
        d = d + (F.normalize(ha, dim=1) - F.normalize(hb, dim=1)).pow(2).sum(1).mean()
    return d / len(net.features)


def perceptual_network(cfg: PretrainConfig, log: dict) -> Judge:
    """A second classifier of the toy world, smaller and trained with another seed: the VAE's losses look
    through it, so the judge's score after a round trip stays a measurement the VAE was not optimised against."""
    net = train_judge(cfg, log, cfg.perceptual_steps, cfg.seed + 7, width=16, name="vae_perceptual_net")
    return net.eval().requires_grad_(False).to(memory_format=torch.channels_last)


def train_vae(cfg: PretrainConfig, log: dict, judge: Judge, perceptual: Judge):
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    vae = tiny.new_vae().to(memory_format=torch.channels_last)  # channels-last convolutions: ~25% faster on CPU
    images = _vae_bank(min(24000, cfg.vae_steps * cfg.vae_batch), cfg.seed + 2)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.vae_steps, 100))
    start = time.time()
    for step in (bar := tqdm(range(cfg.vae_steps), desc="vae")):
        x = (images[torch.randint(0, len(images), (cfg.vae_batch,), generator=gen)] * 2 - 1).contiguous(memory_format=torch.channels_last)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        rec = pixel_loss(recon, x)
        perc = perceptual_distance(perceptual, recon, x)  # its convolutions read [-1, 1], as the VAE does
        kl = posterior.kl().mean() / posterior.mean[0].numel()  # per latent element
        loss = rec + cfg.perceptual_weight * perc + cfg.kl_weight * kl
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(rec=f"{rec.item():.4f}", perc=f"{perc.item():.4f}", kl=f"{kl.item():.2f}")
    vae = vae.to(memory_format=torch.contiguous_format).eval()
    minutes = (time.time() - start) / 60

    # per-channel latent statistics over toy-world images, folded into the weights
    with torch.no_grad():
        stats_images = _to_tensor([toyworld.render_array(s) for s in all_concept_scenes(cfg.eval_images * 3, cfg.seed + 3)])
        mu = torch.cat([vae.encode(b * 2 - 1).latent_dist.mean for b in stats_images.split(250)])
        mean, std = mu.mean(dim=(0, 2, 3)), mu.std(dim=(0, 2, 3))
        tiny.bake_latent_normalization(vae, mean, std)
    log["vae"] = {"steps": cfg.vae_steps, "minutes": minutes, **evaluate_vae(vae, judge, cfg.seed + 4, cfg.eval_images)}
    log["vae"]["latent_channel_mean_before_normalization"] = mean.tolist()
    log["vae"]["latent_channel_std_before_normalization"] = std.tolist()
    print("vae:", {k: v for k, v in log["vae"].items() if "latent" not in k})
    return vae


def _labelled_bank(n: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """30% base, 60% any-concept (so 48% novel styles), 10% broad images; labels -1 where there are none, and
    which images are the base-concept ones."""
    rng = np.random.default_rng(seed)
    n_base, n_all = 3 * n // 10, 6 * n // 10
    scenes = toyworld.sample_scenes(n_base, seed) + all_concept_scenes(n_all, seed + 1)
    arrays = [toyworld.render_array(s) for s in scenes] + [toyworld.broad_image(rng) for _ in range(n - len(scenes))]
    labels = {k: torch.tensor([v.index(getattr(s, k)) for s in scenes] + [-1] * (n - len(scenes)))
              for k, v in toyworld.ATTRIBUTES.items()}
    is_base = torch.arange(n) < n_base
    return _to_tensor(arrays), labels, is_base


def refine_vae(cfg: PretrainConfig, log: dict, vae, judge: Judge, perceptual: Judge):
    """Refine the VAE on data that lean on the novel concepts, as Stability AI refined SD's VAE decoder (ft-EMA,
    ft-MSE), with a semantic term: the perceptual network must name the reconstruction's attributes. With
    --encoder-anchor > 0 the encoder trains too: a frozen VAE's encoder could map a shaded green shape and a flat
    one to nearly the same latent, which no decoder can tell apart. Its anchor keeps the latents of base
    images, the UNet's whole training data, where they were:

        L = pixel(x, D(z)) + w_p perceptual(x, D(z)) + w_s sum_a CE(f_a(D(z)), a(x)) + w_e [x base] ||mu(x) - mu_0(x)||^2,
        z ~ E(x),  mu_0: the encoder before refinement
    """
    torch.manual_seed(cfg.seed + 8)
    gen = torch.Generator().manual_seed(cfg.seed + 8)
    train_encoder = cfg.encoder_anchor > 0
    before = copy.deepcopy(vae).requires_grad_(False) if train_encoder else None
    vae.requires_grad_(False)
    parts = [vae.post_quant_conv, vae.decoder] + ([vae.encoder, vae.quant_conv] if train_encoder else [])
    trained = [p for part in parts for p in part.parameters()]
    for p in trained:
        p.requires_grad_(True)
    images, labels, is_base = _labelled_bank(min(24000, cfg.decoder_steps * cfg.vae_batch), cfg.seed + 9)
    opt = torch.optim.AdamW(trained, lr=cfg.decoder_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.decoder_steps, 100))
    vae = vae.to(memory_format=torch.channels_last)
    start = time.time()
    for step in (bar := tqdm(range(cfg.decoder_steps), desc="vae refinement")):
        idx = torch.randint(0, len(images), (cfg.vae_batch,), generator=gen)
        x = (images[idx] * 2 - 1).contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(train_encoder):
            posterior = vae.encode(x).latent_dist
            z = posterior.sample(generator=gen)
        recon = vae.decode(z).sample
        rec = pixel_loss(recon, x)
        perc = perceptual_distance(perceptual, recon, x)
        logits = perceptual((recon + 1) / 2)
        sem = sum(F.cross_entropy(logits[k], labels[k][idx], ignore_index=-1) for k in logits)
        loss = rec + cfg.perceptual_weight * perc + cfg.semantic_weight * sem
        anchor = torch.zeros(())
        if train_encoder and is_base[idx].any():
            base = is_base[idx]
            with torch.no_grad():
                mu_0 = before.encode(x[base]).latent_dist.mean
            anchor = (posterior.mean[base] - mu_0).pow(2).mean()  # latents are standardised: units of a channel's std
            loss = loss + cfg.encoder_anchor * anchor
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(rec=f"{rec.item():.4f}", perc=f"{perc.item():.4f}", sem=f"{sem.item():.3f}", anchor=f"{anchor.item():.4f}")
    vae = vae.to(memory_format=torch.contiguous_format).eval().requires_grad_(False)
    log["vae_decoder_refinement"] = {"steps": cfg.decoder_steps, "minutes": (time.time() - start) / 60,
                                     **evaluate_vae(vae, judge, cfg.seed + 4, cfg.eval_images)}
    if train_encoder:
        log["vae_decoder_refinement"]["base_latent_rms_shift"] = base_latent_shift(before, vae, cfg.seed + 4, cfg.eval_images)
    print("vae after refinement:", log["vae_decoder_refinement"])
    return vae


@torch.no_grad()
def base_latent_shift(before, after, seed: int, n: int) -> float:
    """Root-mean-square change of base images' latents (posterior means), in units of a channel's std."""
    x = _to_tensor([toyworld.render_array(s) for s in toyworld.sample_scenes(n, seed)]) * 2 - 1
    return float((after.encode(x).latent_dist.mean - before.encode(x).latent_dist.mean).pow(2).mean().sqrt())


@torch.no_grad()
def round_trip(vae, images: torch.Tensor) -> torch.Tensor:
    """Encode (posterior mean) and decode images in [0, 1]."""
    out = [vae.decode(vae.encode(b * 2 - 1).latent_dist.mean).sample for b in images.split(250)]
    return ((torch.cat(out) + 1) / 2).clamp(0, 1)


@torch.no_grad()
def evaluate_vae(vae, judge: Judge, seed: int, n: int = 600) -> dict:
    """PSNR on base, novel-concept and broad images, and judge agreement after the round trip."""
    rng = np.random.default_rng(seed)
    base = toyworld.sample_scenes(n, seed)
    novel = all_concept_scenes(n, seed + 1)
    x_base = _to_tensor([toyworld.render_array(s) for s in base])
    x_novel = _to_tensor([toyworld.render_array(s) for s in novel])
    x_broad = _to_tensor([toyworld.broad_image(rng) for _ in range(n)])
    r_base, r_novel, r_broad = round_trip(vae, x_base), round_trip(vae, x_novel), round_trip(vae, x_broad)
    return {
        "psnr_base": psnr(r_base, x_base),
        "psnr_all_concepts": psnr(r_novel, x_novel),
        "psnr_broad_random": psnr(r_broad, x_broad),
        "judge_after_round_trip_base": agreement(judge.predict(r_base), base),
        "judge_after_round_trip_all_concepts": agreement(judge.predict(r_novel), novel),
        "judge_on_originals_all_concepts": agreement(judge.predict(x_novel), novel),
    }


# ------------------------------------------------------------------------------------------------
# Stage 4: text encoder + UNet
# ------------------------------------------------------------------------------------------------

def random_caption(scene: toyworld.Scene, rng: np.random.Generator, cfg: PretrainConfig) -> str:
    r = rng.random()
    if r < cfg.caption_dropout:
        return ""  # the unconditional prompt classifier-free guidance needs
    if r < cfg.caption_dropout + cfg.partial_caption:
        return toyworld.caption(scene, drop=[a for a in ("colour", "shape", "background") if rng.random() < 0.5])
    return toyworld.caption(scene)


def train_unet(cfg: PretrainConfig, log: dict, vae, tokenizer: CLIPTokenizer):
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed + 5)
    scenes = toyworld.sample_scenes(cfg.bank_size, cfg.seed + 6)
    with torch.no_grad():  # cache latents: the VAE is frozen, so encode every image once
        images = _to_tensor([toyworld.render_array(s) for s in tqdm(scenes, desc="unet data", leave=False)])
        dists = [vae.encode(b * 2 - 1).latent_dist for b in images.split(250)]
        lat_mean = torch.cat([d.mean for d in dists])
        lat_std = torch.cat([d.std for d in dists])
    del images
    if cfg.unet_init:  # continue a finished run's text encoder + UNet with a fresh schedule
        unet = UNet2DConditionModel.from_pretrained(Path(cfg.unet_init) / "unet", dtype=torch.float32)
        text_encoder = CLIPTextModel.from_pretrained(Path(cfg.unet_init) / "text_encoder", dtype=torch.float32)
    else:
        unet = tiny.new_unet()
        text_encoder = tiny.new_text_encoder(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    noise_scheduler = tiny.new_train_scheduler()
    alphas_cumprod = noise_scheduler.alphas_cumprod
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.unet_steps, 200))
    losses = []
    start = time.time()
    for step in (bar := tqdm(range(cfg.unet_steps), desc="unet")):
        idx = torch.randint(0, len(scenes), (cfg.unet_batch,), generator=gen)
        z0 = lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=gen)
        ids = tokenizer(
            [random_caption(scenes[i], rng, cfg) for i in idx.tolist()],
            padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt",
        ).input_ids
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (cfg.unet_batch,), generator=gen)
        zt = noise_scheduler.add_noise(z0, noise, t)  # z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps
        pred = unet(zt, t, text_encoder(ids)[0]).sample
        snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
        weight = snr.clamp(max=cfg.min_snr_gamma) / snr  # min-SNR-gamma weighting for epsilon prediction
        loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    log["unet"] = {
        "steps": cfg.unet_steps,
        "minutes": (time.time() - start) / 60,
        "loss_first_100": float(np.mean(losses[:100])),
        "loss_last_100": float(np.mean(losses[-100:])),
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "text_encoder_parameters": sum(p.numel() for p in text_encoder.parameters()),
    }
    return unet.eval(), text_encoder.eval()


def judge_and_vae(cfg: PretrainConfig, out: Path, log: dict) -> tuple[Judge, AutoencoderKL]:
    """Train the judge and the VAE, or reuse them: from `out/stages` (--resume-stages, after an interrupted
    run) or from the finished run whose UNet `--unet-init` continues."""
    if cfg.unet_init:
        previous = Path(cfg.unet_init).parent
        earlier = json.loads((previous / "pretrain_log.json").read_text())
        log.update(judge=earlier["judge"], vae=earlier["vae"], continued_from=earlier)
        vae = AutoencoderKL.from_pretrained(Path(cfg.unet_init) / "vae", dtype=torch.float32)
        return load_judge(previous / "judge", sure=0.0), vae  # pretraining measures with every value named
    stages = out / "stages"  # finished stages, reused by --resume-stages; deleted when the run completes
    if cfg.resume_stages and (stages / "judge_log.json").is_file():
        judge = load_judge(out / "judge", sure=0.0)  # as train_judge returns it: every value named
        log["judge"] = json.loads((stages / "judge_log.json").read_text())
    else:
        judge = train_judge(cfg, log, cfg.judge_steps, cfg.seed)
        save_judge(judge, out, log)
        stages.mkdir(exist_ok=True)
        (stages / "judge_log.json").write_text(json.dumps(log["judge"]))
    if cfg.resume_stages and (stages / "vae_refined" / "config.json").is_file():
        vae = AutoencoderKL.from_pretrained(stages / "vae_refined")
        log.update(json.loads((stages / "vae_log.json").read_text()))
        return judge, vae
    perceptual = perceptual_network(cfg, log)
    if cfg.resume_stages and (stages / "vae" / "config.json").is_file():
        vae = AutoencoderKL.from_pretrained(stages / "vae")
        log["vae"] = json.loads((stages / "vae_log.json").read_text())["vae"]
    else:
        vae = train_vae(cfg, log, judge, perceptual)
        vae.save_pretrained(stages / "vae")
        (stages / "vae_log.json").write_text(json.dumps({"vae": log["vae"]}))
    if cfg.decoder_steps:
        vae = refine_vae(cfg, log, vae, judge, perceptual)
        vae.save_pretrained(stages / "vae_refined")
        (stages / "vae_log.json").write_text(json.dumps({k: log[k] for k in ("vae", "vae_decoder_refinement")}))
    return judge, vae


def continue_decoder(cfg: PretrainConfig, out: Path, log: dict) -> tuple[Judge, StableDiffusionPipeline]:
    """A new judge and perceptual network on the current toy world, then `refine_vae` on a finished
    run's VAE: how a change of the toy world's renderings reaches a shipped model without retraining its UNet."""
    source = Path(cfg.decoder_init)
    log["continued_from"] = json.loads((source.parent / "pretrain_log.json").read_text())
    judge = train_judge(cfg, log, cfg.judge_steps, cfg.seed)
    save_judge(judge, out, log)
    perceptual = perceptual_network(cfg, log)
    pipe = StableDiffusionPipeline.from_pretrained(source, dtype=torch.float32)
    log["vae_before_refinement"] = evaluate_vae(pipe.vae, judge, cfg.seed + 4, cfg.eval_images)
    pipe.vae = refine_vae(cfg, log, pipe.vae, judge, perceptual)
    return judge, pipe


def main(cfg: PretrainConfig) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    log: dict = {"config": asdict(cfg), "torch": torch.__version__, "threads": torch.get_num_threads()}
    start = time.time()

    if cfg.decoder_init:  # base images' latents are kept (encoder frozen or anchored), so the UNet stays valid
        judge, pipe = continue_decoder(cfg, out, log)
        unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
        vocab_dir = Path(cfg.decoder_init) / "tokenizer"
    else:
        vocab_dir = out / "stages" / "tokenizer"
        tokenizer = tiny.new_tokenizer(vocab_dir)
        judge, vae = judge_and_vae(cfg, out, log)
        unet, text_encoder = train_unet(cfg, log, vae, tokenizer)
    log["tokenizer"] = {"vocab_size": len(tokenizer)}

    # Ship UNet and VAE weights in fp16 (diffusers loads them back as fp32); evaluate what is shipped.
    pipe = tiny.assemble_pipeline(copy.deepcopy(unet).half(), copy.deepcopy(vae).half(), text_encoder, tokenizer)
    tiny.save_pipeline(pipe, out / "tiny-sd", vocab_dir)
    pipe = StableDiffusionPipeline.from_pretrained(out / "tiny-sd", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    log["prompt_accuracy"] = prompt_accuracy(pipe, judge, seeds=cfg.eval_seeds, num_inference_steps=cfg.eval_steps, guidance_scale=cfg.eval_guidance)
    log["vae_shipped"] = evaluate_vae(pipe.vae, judge, cfg.seed + 4, cfg.eval_images)
    log["total_minutes"] = (time.time() - start) / 60
    shutil.rmtree(out / "stages", ignore_errors=True)
    (out / "pretrain_log.json").write_text(json.dumps(log, indent=1))
    print(json.dumps({k: log[k] for k in ("prompt_accuracy", "total_minutes")}, indent=1))
    return log


QUICK = dict(
    judge_steps=4, judge_batch=8, perceptual_steps=4, decoder_steps=3, vae_steps=4, vae_batch=4, unet_steps=4, unet_batch=8, bank_size=64, eval_seeds=1, eval_steps=2, eval_images=8,
)


def parse_args(argv: list[str] | None = None) -> PretrainConfig:
    parser = argparse.ArgumentParser(prog="python -m sdtune.models.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few steps of every stage: a smoke test, not a model")
    add_config_options(parser, PretrainConfig)
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**QUICK)  # options given explicitly still win
    return config_from_args(PretrainConfig, parser.parse_args(argv))


if __name__ == "__main__":
    main(parse_args())
