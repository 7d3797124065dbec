"""The `sdtune` command: `sdtune --help` lists the subcommands, `sdtune SUBCOMMAND --help` their options."""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import sys
import tempfile
import traceback
from contextlib import nullcontext
from pathlib import Path

from PIL import Image

from .config import add_config_options, check_number, config_from_args
from .data import toyworld
from .io import check_writable


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SCHEDULERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "dpm": "DPMSolverMultistepScheduler", "lcm": "LCMScheduler"}


def _refuse_existing(path: Path, overwrite: bool, option: str = "--out") -> None:
    """Outputs are never replaced silently: stop before any work unless --overwrite was given."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists: choose another {option} or pass --overwrite.")


def _atomic_save(image: Image.Image, path: Path, overwrite: bool) -> None:
    """Write an image via a temporary file, refusing to replace an existing one unless asked."""
    _refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        image.save(tmp, format={".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG"))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


MAX_SCALE = 10.0  # an adapter at 10x its trained strength already draws noise; more is a typo


def _parse_lora(spec: str, option: str = "--lora") -> tuple[str, float]:
    """'PATH' or 'PATH:SCALE' -> (path, scale); a scale is whatever follows the last ':' if it is a number, and it must
    be finite and within +-10."""
    path, _, scale = spec.rpartition(":")
    try:
        value = float(scale)
    except ValueError:
        return spec, 1.0
    if not (math.isfinite(value) and abs(value) <= MAX_SCALE):
        raise ValueError(f"{option} {spec}: the scale after ':' must be a number from -{MAX_SCALE:g} to {MAX_SCALE:g} (1 = as trained, "
                         f"0.5 = half, -1 = the opposite), got {scale}.")
    return path, value


def cmd_sample(args: argparse.Namespace) -> None:
    from .composition import compose
    from .formats.adapters import load_adapters, resolve_file
    from .methods.hypernetwork import load_hypernetwork
    from .methods.textual_inversion import load_embedding
    from .models.loading import load_pipeline
    from .sampling import image_grid, sample

    out = Path(args.out)
    _refuse_existing(out, args.overwrite)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"--out {out}: name an image file ending in {', '.join(IMAGE_SUFFIXES)}.")
    check_number("num_images", args.num_images, minimum=1, maximum=1024, integer=True)
    check_number("steps", args.steps, minimum=1, maximum=1000, integer=True)
    check_number("guidance", args.guidance, minimum=0, maximum=50)
    check_number("switch_step", args.switch_step, minimum=1, integer=True)
    check_writable(out.parent)
    if args.method in ("switch", "composite") and len(args.lora or []) < 2:
        raise ValueError(f"--method {args.method} combines several LoRAs: give --lora at least twice.")
    loras = [_parse_lora(spec) for spec in args.lora or []]
    for option, path in [("--lora", p) for p, _ in loras] + [("--embedding", e.partition(":")[0]) for e in args.embedding or []] + (
            [("--hypernetwork", _parse_lora(args.hypernetwork, "--hypernetwork")[0])] if args.hypernetwork else []):
        if not Path(path).exists():
            raise FileNotFoundError(f"{option} {path}: no such file or folder (a training output folder or .safetensors file).")
    for path, _ in loras:
        resolve_file(path)  # a folder without a finished adapter is refused before the model loads
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    if args.scheduler != "default":  # an LCM-LoRA samples with LCMScheduler, 2-8 steps, guidance 1-2
        import diffusers

        pipe.scheduler = getattr(diffusers, SCHEDULERS[args.scheduler]).from_config(pipe.scheduler.config)
    names = load_adapters(pipe, [path for path, _ in loras], allow_pickle=args.allow_pickle)
    for spec in args.embedding or []:
        path, _, token = spec.partition(":")
        load_embedding(pipe, path, token or None)
    if args.hypernetwork:
        path, strength = _parse_lora(args.hypernetwork, "--hypernetwork")
        load_hypernetwork(pipe.unet, path, strength)
    with compose(pipe, names, args.method, [scale for _, scale in loras], args.switch_step) if names else nullcontext({}) as extra:
        images = sample(pipe, [args.prompt] * args.num_images, args.steps, args.guidance, seed=args.seed, **extra)
    _atomic_save(image_grid(images), out, args.overwrite)
    print(f"wrote {out} ({len(images)} image(s) for {args.prompt!r})")


def cmd_eval(args: argparse.Namespace) -> None:
    from .evaluation.judge import load_judge
    from .evaluation.prompts import prompt_accuracy
    from .models.loading import load_pipeline

    check_number("seeds", args.seeds, minimum=1, maximum=100, integer=True)
    check_number("steps", args.steps, minimum=1, maximum=1000, integer=True)
    check_number("guidance", args.guidance, minimum=0, maximum=50)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    scores = prompt_accuracy(pipe, load_judge(), seeds=args.seeds, num_inference_steps=args.steps, guidance_scale=args.guidance)
    print(f"judge agreement with the prompt over {72 * args.seeds} images (72 base prompts x {args.seeds} seeds):")
    for name, value in scores.items():
        print(f"  {name:<10} {100 * value:5.1f}%")


def cmd_toy_data(args: argparse.Namespace) -> None:
    check_number("n", args.n, minimum=1, maximum=100_000, integer=True)
    scenes = toyworld.sample_scenes(
        args.n, args.seed, args.shapes.split(","), args.colours.split(","), args.backgrounds.split(","), args.styles.split(",")
    )
    folder = toyworld.write_dataset(scenes, args.out, overwrite=args.overwrite)
    print(f"wrote {len(scenes)} images with captions to {folder}")


def cmd_train(args: argparse.Namespace) -> None:
    from .training import DreamBoothConfig, HypernetworkConfig, LCMConfig, TextualInversionConfig, TrainConfig, train

    if args.method == "differential":
        from .methods.differential import train_differential
        from .models.loading import load_pipeline

        cfg = config_from_args(TrainConfig, args, data=args.data_a)
        cfg.validate()  # before the model loads
        out = train_differential(load_pipeline(cfg.model), cfg, args.data_a, args.data_b, args.copier, args.svd_rank)
        print(f"wrote {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
        return
    if args.method == "dreambooth":
        cfg = config_from_args(DreamBoothConfig, args, adapter="lora" if args.lora else "full")
    else:
        cls = {"textual-inversion": TextualInversionConfig, "hypernetwork": HypernetworkConfig, "lcm": LCMConfig}.get(args.method, TrainConfig)
        cfg = config_from_args(cls, args, **({"adapter": "full"} if args.method == "full" else {}))
    out = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # under `accelerate launch`, one line for the whole run
        print(f"wrote {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))


def cmd_convert(args: argparse.Namespace) -> None:
    from .formats import convert_file
    from .models.loading import load_pipeline

    src, dst = Path(args.src), Path(args.dst)
    _refuse_existing(dst, args.overwrite, "output")
    if dst.suffix != ".safetensors":
        raise ValueError(f"{dst}: the converted file must end in .safetensors.")
    check_writable(dst.parent, "output")
    layout = convert_file(load_pipeline(args.model), src, dst, args.to, allow_pickle=args.allow_pickle)
    print(f"wrote {dst} ({layout} layout)")


def cmd_merge(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    from .algebra import combine
    from .formats.adapters import kohya_tensors, load_adapters
    from .formats.kohya import adapter_metadata, group_kohya_layers, targets_of
    from .io import staged_file
    from .models.loading import load_pipeline

    out = Path(args.out)
    _refuse_existing(out, args.overwrite)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: the merged LoRA is written as a .safetensors file.")
    weights = _merge_weights(args.weights, len(args.loras))
    check_number("density", args.density, above=0, maximum=1)
    check_number("rank", args.rank, minimum=1, integer=True)
    check_writable(out.parent)
    for path in args.loras:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such LoRA file or folder.")
    pipe = load_pipeline(args.model)  # the base model resolves either layout's layer names
    names = load_adapters(pipe, args.loras, allow_pickle=args.allow_pickle)
    loras = [kohya_tensors(pipe, name) for name in names]
    tensors, errors = combine(loras, weights, args.method, args.rank, args.density, args.seed)
    rank = max(v.shape[0] for k, v in tensors.items() if k.endswith("lora_down.weight"))
    targets = targets_of(group_kohya_layers(tensors))
    meta = adapter_metadata(pipe, "locon" if targets == "attn-mlp-conv" else "lora", rank, float(rank), targets,
                            extra={"ss_training_comment": f"sdtune merge {args.method} of {len(loras)} LoRAs"})
    with staged_file(out) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    print(f"wrote {out} (kohya layout, rank {rank}; largest relative error against the exact weighted sum: {max(errors.values()):.3g})")


def _merge_weights(text: str | None, count: int) -> list[float]:
    """--weights: one finite number per LoRA, each within +-10."""
    if not text:
        return [1.0] * count
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise ValueError(f"--weights {text}: give comma-separated numbers, one per LoRA, e.g. 0.8,1.0.") from None
    if len(weights) != count:
        raise ValueError(f"--weights {text}: {len(weights)} weights for {count} LoRAs; give one per LoRA.")
    for w in weights:
        if not (math.isfinite(w) and abs(w) <= MAX_SCALE):
            raise ValueError(f"--weights {text}: each weight must be a number from -{MAX_SCALE:g} to {MAX_SCALE:g}, got {w}.")
    return weights


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    check_number("steps", args.steps, minimum=1, maximum=100_000, integer=True)
    run_demo(args.out, model=args.model, steps=args.steps, overwrite=args.overwrite)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from .models import pretrain

    pretrain.main(pretrain.parse_args(args.pretrain_args))


def cmd_info(args: argparse.Namespace) -> None:
    import diffusers
    import peft
    import torch
    import transformers

    from .models.loading import TINY_PATH, default_device

    log = TINY_PATH.parent / "pretrain_log.json"
    info = {
        "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "device": default_device(), "tiny_model": str(TINY_PATH),
        "tiny_model_prompt_accuracy": json.loads(log.read_text()).get("prompt_accuracy") if log.is_file() else None,
    }
    print(json.dumps(info, indent=1))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdtune", description="Fine-tune text-to-image diffusion models: the sdtune course's toolkit.",
                                     epilog="Add --debug anywhere to see the full traceback of an error.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="sample the tiny model, train a small LoRA on a novel style, write a before/after grid")
    p.add_argument("--out", default="sdtune-demo", help="output folder (default: sdtune-demo)")
    p.add_argument("--model", default="tiny", help="'tiny' (default) or a tiny-architecture pipeline folder")
    p.add_argument("--steps", type=int, default=None, help="LoRA training steps (default: sdtune train lora's, 300 on the tiny model)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo folder")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sample", help="generate images from a prompt")
    p.add_argument("--model", default="tiny", help="'tiny', a pipeline folder or a hub id")
    p.add_argument("--prompt", required=True, help="the text prompt, e.g. 'a red circle on a white background'")
    p.add_argument("--lora", action="append", metavar="PATH[:SCALE]", help="LoRA folder or file, repeatable; scale default 1")
    p.add_argument("--method", choices=["merge", "switch", "composite"], default="merge",
                   help="how several LoRAs combine: merge (weights added), switch (one per step, in turn), composite "
                        "(every LoRA's prediction averaged, one batched UNet call); default merge")
    p.add_argument("--switch-step", type=int, default=1, help="switch: denoising steps before the next LoRA (default 1)")
    p.add_argument("--embedding", action="append", metavar="PATH[:TOKEN]",
                   help="Textual Inversion embedding (folder or .safetensors), repeatable; TOKEN names a kohya/A1111 file's word")
    p.add_argument("--hypernetwork", metavar="PATH[:STRENGTH]", help="hypernetwork folder or hypernetwork.safetensors; strength default 1")
    p.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    p.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale (default 4)")
    p.add_argument("--scheduler", choices=["default", *SCHEDULERS], default="default",
                   help="sampler: the model's own (default), or lcm for an LCM-LoRA (then e.g. --steps 4 --guidance 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--num-images", type=int, default=1, help="images to generate, saved as one grid")
    p.add_argument("--out", required=True, help="output image file (.png)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--allow-pickle", action="store_true", help="also read .bin/.ckpt adapters (pickle: only from a source you trust)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="measure a model with the judge")
    p.add_argument("what", choices=["base"], help="base: judge agreement on all 72 base prompts")
    p.add_argument("--model", default="tiny", help="'tiny' or a pipeline folder trained on the toy world")
    p.add_argument("--seeds", type=int, default=2, help="images per prompt (default 2)")
    p.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    p.add_argument("--guidance", type=float, default=4.0, help="guidance scale (default 4)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("toy-data", help="write toy-world images + captions as a training folder")
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--n", type=int, default=24, help="number of images (default 24)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--shapes", default=",".join(toyworld.BASE_SHAPES), help=f"comma-separated, of {','.join(toyworld.SHAPES)}")
    p.add_argument("--colours", default=",".join(toyworld.BASE_COLOURS), help=f"comma-separated, of {','.join(toyworld.COLOURS)}")
    p.add_argument("--backgrounds", default=",".join(toyworld.BASE_BACKGROUNDS), help=f"comma-separated, of {','.join(toyworld.BACKGROUNDS)}")
    p.add_argument("--styles", default="flat", help=f"comma-separated, of {','.join(toyworld.STYLES)}")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.set_defaults(func=cmd_toy_data)

    from .training import DreamBoothConfig, HypernetworkConfig, LCMConfig, TextualInversionConfig, TrainConfig

    train = sub.add_parser("train", help="train an adapter or the whole UNet").add_subparsers(dest="method", required=True, metavar="METHOD")
    p = train.add_parser("lora", help="train a LoRA, LoCon, DoRA, LoHa or LoKr adapter (--adapter) on a folder of captioned images")
    add_config_options(p, TrainConfig, required=("data", "out"))
    p.set_defaults(func=cmd_train)
    p = train.add_parser("full", help="fine-tune every UNet weight (the baseline adapters are compared with)")
    not_adapters = ("adapter", "rank", "alpha", "targets", "lokr_factor", "blocks", "train_text_encoder")
    add_config_options(p, TrainConfig, required=("data", "out"), exclude=not_adapters)
    p.set_defaults(func=cmd_train)
    p = train.add_parser("differential", help="differential LoRA: LoRA B - LoRA A from paired folders (same names, same captions)")
    p.add_argument("--data-a", required=True, help="folder of the A renderings (e.g. blurred)")
    p.add_argument("--data-b", required=True, help="folder of the same scenes rendered as B (e.g. sharp)")
    p.add_argument("--copier", action="store_true", help="train B on the model with A fused in; B alone is the difference")
    p.add_argument("--svd-rank", type=int, help="compress B - A to this rank by SVD (default: exact, rank r_A + r_B)")
    add_config_options(p, TrainConfig, required=("out",), exclude=("data", "adapter", "lokr_factor", "train_text_encoder", "blocks"))
    p.set_defaults(func=cmd_train)
    p = train.add_parser("dreambooth", help="DreamBooth: a subject under a rare identifier, with prior preservation (whole UNet, or --lora)")
    add_config_options(p, DreamBoothConfig, required=("data", "out", "instance_prompt"), exclude=("adapter", "lokr_factor"))
    p.add_argument("--lora", action="store_true", help="DreamBooth-LoRA: train a LoRA instead of the whole UNet")
    p.set_defaults(func=cmd_train)
    p = train.add_parser("textual-inversion", help="Textual Inversion: learn the embedding of a new token")
    add_config_options(p, TextualInversionConfig, required=("data", "out", "token", "init_word"), exclude=not_adapters)
    p.set_defaults(func=cmd_train)
    p = train.add_parser("lcm", help="LCM-LoRA: distil few-step sampling into a LoRA (sample with LCMScheduler, 2-8 steps, guidance 1)")
    add_config_options(p, LCMConfig, required=("data", "out"), exclude=("lokr_factor", "train_text_encoder", "prior_loss_weight", "class_prompt",
                                                                      "num_class_images", "class_data"))
    p.set_defaults(func=cmd_train)
    p = train.add_parser("hypernetwork", help="a WebUI-style hypernetwork: residual MLPs on the cross-attention's K and V inputs")
    add_config_options(p, HypernetworkConfig, required=("data", "out"), exclude=not_adapters)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("convert", help="convert an adapter file between the diffusers and kohya/A1111/ComfyUI layouts")
    p.add_argument("src", help="adapter file or folder (diffusers or kohya layout)")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--to", choices=["kohya", "diffusers"], required=True, help="the layout to write")
    p.add_argument("--model", default="tiny", help="the base model the adapter belongs to: its layer names resolve kohya keys")
    p.add_argument("--allow-pickle", action="store_true", help="also read .bin/.ckpt files (pickle: only from a source you trust)")
    p.add_argument("--overwrite", action="store_true", help="replace dst if it exists")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("merge", help="combine LoRA files into one: linear, cat (exact), svd, ties or dare (kohya-layout output)")
    p.add_argument("loras", nargs="+", help="LoRA files or folders (diffusers or kohya layout, LoRA/LoCon)")
    p.add_argument("--weights", help="comma-separated, one per LoRA (default 1 each); 1,-1 gives the difference A - B")
    p.add_argument("--method", choices=["linear", "cat", "svd", "ties", "dare"], default="cat", help="default cat: exact, rank = sum of ranks")
    p.add_argument("--rank", type=int, help="target rank for svd, ties and dare")
    p.add_argument("--model", default="tiny", help="the base model the LoRAs belong to (default tiny)")
    p.add_argument("--density", type=float, default=0.5, help="ties/dare: fraction of each update kept (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="dare's random drop (default 0)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--allow-pickle", action="store_true", help="also read .bin/.ckpt files (pickle: only from a source you trust)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_merge)

    # its options (and --help) belong to the pretraining script's own parser: main() hands them over
    p = sub.add_parser("pretrain", help="retrain the tiny model and judge (sdtune pretrain --help lists its options)", add_help=False)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("info", help="versions, device and the tiny model's measured quality")
    p.set_defaults(func=cmd_info)
    return parser


_NEGATIVE_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?|-(inf|infinity|nan)", re.IGNORECASE)


def _keep_negative_numbers(argv: list[str]) -> list[str]:
    """`--lr -1e-3` -> `--lr=-1e-3`: argparse takes '-1e-3' for an option (it knows only '-1' and '-1.5' as numbers), and
    would answer "expected one argument" instead of sdtune's message about the value."""
    joined: list[str] = []
    for token in argv:
        if joined and joined[-1].startswith("--") and "=" not in joined[-1] and _NEGATIVE_NUMBER.fullmatch(token):
            joined[-1] = f"{joined[-1]}={token}"
        else:
            joined.append(token)
    return joined


def explain(error: BaseException) -> str:
    """One sentence for an error the command could not prevent: what happened to which file, and what to do. sdtune's own
    errors already say it."""
    if isinstance(error, OSError) and error.errno is None:
        return str(error)
    if isinstance(error, PermissionError):
        return f"cannot write or read {error.filename or 'a file'} (permission denied): choose a folder you can write to, or fix its permissions."
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return (f"the disk is full ({error.filename or 'while writing'}): free some space or choose an --out on another disk. "
                "Files are written whole or not at all, so nothing half-written was left.")
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename or ''}".rstrip(": ")
    if type(error).__name__ == "SafetensorError":
        return f"a .safetensors file is damaged ({error}): fetch or copy it again."
    return str(error)


# errors whose message already says what to do: no traceback, exit status 2 (an unexpected one gets 1)
EXPECTED = (ValueError, OSError, FloatingPointError)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere on the line: the traceback too, for a bug report
    argv = _keep_negative_numbers([a for a in argv if a != "--debug"])
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "pretrain":
        args.pretrain_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        args.func(args)
    except KeyboardInterrupt as error:
        if debug:
            raise
        said = str(error) if str(error) else "Interrupted. Outputs are written whole at the end, so nothing half-written was left."
        print(f"sdtune {args.command}: {said}", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as error:
        if debug:
            raise
        expected = isinstance(error, EXPECTED) or type(error).__name__ == "SafetensorError"
        if expected:
            print(f"sdtune {args.command}: error: {explain(error)}", file=sys.stderr)
        else:
            where = traceback.extract_tb(error.__traceback__)[-1]
            print(f"sdtune {args.command}: unexpected {type(error).__name__}: {error} (at {Path(where.filename).name}:{where.lineno}). "
                  "Run the command again with --debug for the whole traceback, and please report it.", file=sys.stderr)
        raise SystemExit(2 if expected else 1) from None
