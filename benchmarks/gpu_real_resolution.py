"""SD 1.5 at 512 px and SDXL at 1024 px on a GPU: training in fp16 and bf16 beside diffusers' LoRA script, sampling
and multi-LoRA composition, and SDXL LoRA under a 15 GB memory cap. Writes the results file the chapters read.

    python benchmarks/gpu_real_resolution.py --overwrite                      # a lent GPU: about 8 minutes on an H100
    python benchmarks/gpu_real_resolution.py --small --out /tmp/gpu_small.json  # a CPU check of this script (2-5 min)

Options: --no-sdxl (SD 1.5 only), --only train,compose,cap (some parts), --rounds, --repeats, --steps.
The results go to benchmarks/results/gpu_<device>.json (gpu_h100.json on an H100: the file chapters 01 and 10 read),
written with `sdtune.evaluation.provenance.write_results` after every part, so a run cut short keeps what it measured
("complete": false until the end).

No weights can be downloaded where this runs, so the pipelines are built here with random weights in the exact
architectures (`sdtune.models.architectures.random_pipeline`: SD 1.5's 860M-parameter UNet, CLIP ViT-L/14's text
encoder, the SD VAE; SDXL's 2.6B UNet and both text encoders), saved in fp16: time and memory depend on the
architecture and the resolution, not on the weights' values. Each model's entry records the seed the weights were
drawn from and the sha256 of every file saved (the folder itself is temporary: it is rebuilt from the seed).
Everything then goes through sdtune's own code path (`load_pipeline(folder)`, `train(TrainConfig(model=folder, ...))`,
`compose`), as it would for a hub checkpoint.

The parts, with the time each takes on an H100 (estimated from the last run's rates; the results file's "seconds"
records what each took: the first figure is SD 1.5's, the second SDXL's):

- train (~2.5 min, ~1.5 min): LoRA rank 4 and full fine-tuning, in fp16 and in bf16, one process per precision
  (accelerate fixes the precision once per process). Per case: optimizer steps per second over the whole loop (its
  first step, which holds the GPU's warm-up, included: what the chapters print) and in steady state (the median step
  after the first five), and the peak GPU memory (`torch.cuda.max_memory_allocated`, loading and latent caching
  included). SD 1.5 only: `--rounds` rounds side by side of sdtune and the per-step work of diffusers'
  `examples/text_to_image/train_text_to_image_lora.py` (`train_speed.run_reference`: the batch encoded by the VAE
  and the text encoder at every step, the UNet's forward under autocast, fp16's loss scaling) at the same
  settings; their steps/s ratio, target >= 1.5x. diffusers' SDXL script is another program (two text encoders,
  size and crop time ids) that this loop does not reproduce, so SDXL has no ratio.
- cap (SDXL, ~1 min): LoRA with `sdtune.fit.plan("sdxl", "lora", 15, bf16=False)`'s settings (a 15 GB T4 has no
  bf16 units) under `torch.cuda.set_per_process_memory_fraction(15 GB / the GPU's memory)`: whether it fits, and
  its peak.
- compose (~1 min, ~1.3 min): 25 DDIM steps at guidance 7.5: the base model, one LoRA unmerged and merged, then 3
  LoRAs by merge, switch and composite (sdtune's one batched call, `grouped_lora`) against the sequential n-pass
  composite (`composite_speed.sequential_composite`); the composite/merge and batched/sequential ratios.
  Sampling's speed does not depend on the LoRAs' values, so they are random (rank 4 on attention like the
  training's, rank 8 on attention and MLP for the three).
- building, saving and hashing the models: ~10 s (SD 1.5), ~30 s (SDXL).

`--small` shrinks every width and the resolution (64 px): every part runs on a CPU in a few minutes, fp16 (no CPU
training) and the memory cap (CUDA only) recorded as skipped with the reason. A check of this script, not a benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import diffusers
import peft
import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file

import sdtune
from composite_speed import sequential_composite  # the reference n-pass composite, beside this script
from sdtune.composition import compose
from sdtune.data import toyworld
from sdtune.evaluation.provenance import sha256, write_results
from sdtune.fit import plan
from sdtune.formats.adapters import add_adapter, remove_adapter
from sdtune.io import write_json
from sdtune.models.architectures import random_pipeline
from sdtune.training import TrainConfig, train
from train_speed import run_reference, timings  # diffusers' LoRA example's step, beside this script

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
GB = 1e9
SEED = 0  # the random weights are drawn from it
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
PARTS = ("train", "compose", "cap")
CAP_GB = 15  # a T4's memory: the smallest GPU the chapters' "at scale" cells plan for
TARGET = 1.5  # sdtune's steps/s over diffusers' example loop
RESULTS = Path(__file__).parent / "results"
NO_FP16 = "skipped: the CPU has no fp16 training (accelerate's fp16 scales the loss for a GPU's half-precision units); bf16 stands for it here"

# Training cases (adapter, batch, gradient checkpointing) per precision; each precision runs in its own process.
CASES = {"sd15": {"fp16": [("lora", 1, True), ("lora", 4, True), ("full", 1, True)], "bf16": [("lora", 1, True), ("full", 1, True)]},
         "sdxl": {"fp16": [("lora", 1, True)], "bf16": [("lora", 1, True)]}}
# beside diffusers' loop: batch 1 as in the example's README, no checkpointing (the example's default)
VERSUS = ("lora", 1, False)

NOTES = [
    ("it_per_s: optimizer steps per second over the whole loop, its first step (the GPU's warm-up) included; "
     "steady_it_per_s: 1 / the median step after the first five; first_step_s: the first step's seconds"),
    ("peak_gb: torch.cuda.max_memory_allocated over the case, model loading and latent caching included (peak_reserved_gb: "
     "what the allocator held); gpu_gb_at_start: what the process still held when the case began (0: the peak is the case's own)"),
    ("every precision trains in its own process (accelerate fixes the mixed precision once per process); LoRA cases load the "
     "model in the case's precision and pass it to train(); full fine-tuning is given the folder (train() would copy a caller's "
     "UNet to train it, and the copy would count in the peak) and trains a float32 UNet under autocast"),
    ("vs_diffusers: sdtune beside the per-step work of diffusers' train_text_to_image_lora.py (benchmarks/train_speed.py "
     "run_reference) at the same settings, run in turn in one process per precision; ratios are sdtune / diffusers within each "
     "round, their median reported; 'met' reads the steady-state ratio. In bf16 the example keeps the LoRA weights in bf16 (it "
     "upcasts them to fp32 only for fp16); sdtune trains them in fp32 in both"),
    "sampling: 25 DDIM steps, guidance 7.5, batch 1, after a 2-step warm-up; random LoRAs (speed does not depend on their values)",
]


# ---------------------------------------------------------------------------------------------------------------
# Measuring, inside a case's process

def free() -> None:
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def synced() -> float:
    if CUDA:
        torch.cuda.synchronize()
    return time.perf_counter()


def memory() -> dict:
    """The peak GPU memory since the last `free()`; none on the CPU."""
    if not CUDA:
        return {"peak_gb": None, "peak_reserved_gb": None}
    return {"peak_gb": round(torch.cuda.max_memory_allocated() / GB, 2), "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / GB, 2)}


def rates(step_seconds: list[float]) -> dict:
    t = timings(step_seconds)
    return {"it_per_s": round(t["steps_per_s"], 2), "steady_it_per_s": round(t["steady_steps_per_s"], 2), "first_step_s": round(t["first_step_s"], 2)}


def sdtune_case(job: dict, case: dict, settings: dict | None = None) -> dict:
    """One sdtune training run (`settings`: TrainConfig fields that replace the case's, e.g. a memory plan's)."""
    adapter, precision = case["adapter"], job["precision"]
    out = Path(job["work"]) / case["name"]
    fields = {"adapter": adapter, "steps": case["steps"], "batch_size": case["batch"], "gradient_checkpointing": case["checkpointing"],
              "mixed_precision": precision} | (settings or {})
    if adapter != "full":
        fields |= {"rank": 4, "targets": "attn"}  # diffusers' example: rank 4 on to_q, to_k, to_v, to_out.0
    # as diffusers' example: AdamW at 1e-4, constant, clipped at 1, timesteps from all 1000
    cfg = TrainConfig(data=job["data"], out=str(out), model=job["model"], lr=1e-4, lr_scheduler="constant", warmup_steps=0,
                      max_grad_norm=1.0, min_timestep=0, max_timestep=1000, seed=0, overwrite=True, **fields)
    # the model in the case's precision; full fine-tuning gets the folder instead (train() would train a copy of a
    # caller's UNet, and the copy would count in the peak)
    pipe = None if adapter == "full" else sdtune.load_pipeline(job["model"], dtype=DTYPES[cfg.mixed_precision])
    train(cfg, pipe=pipe)
    log = json.loads((out / "loss.json").read_text())
    trained = {} if adapter == "full" else {"trainable": sum(t.numel() for t in load_file(out / "pytorch_lora_weights.safetensors").values())}
    del pipe
    shutil.rmtree(out)
    return {"adapter": adapter, "batch": cfg.batch_size, "gradient_checkpointing": cfg.gradient_checkpointing, "precision": cfg.mixed_precision,
            "steps": cfg.steps, **trained, **rates(log["step_seconds"]), "final_loss": round(log["loss"][-1], 4)}


def diffusers_case(job: dict, case: dict) -> dict:
    """The per-step work of diffusers' train_text_to_image_lora.py at the case's settings."""
    r = run_reference(job["model"], Path(job["data"]), case["steps"], case["batch"], dtype=DTYPES[job["precision"]],
                      checkpointing=case["checkpointing"])
    return {"adapter": "lora", "batch": case["batch"], "gradient_checkpointing": case["checkpointing"], "precision": job["precision"],
            "steps": case["steps"], "trainable": r["trainable"], "it_per_s": round(r["steps_per_s"], 2),
            "steady_it_per_s": round(r["steady_steps_per_s"], 2), "first_step_s": round(r["first_step_s"], 2),
            "encoding_fraction": round(r["encoding_fraction"], 3)}


def cap_case(job: dict, case: dict) -> dict:
    """SDXL LoRA with the memory plan for a CAP_GB GPU, under a CAP_GB cap on what PyTorch may allocate."""
    fit = plan("sdxl", "lora", CAP_GB, bf16=False)  # what a 15 GB T4 gets: it has no bf16 units
    settings = dict(fit.settings)
    record = {"cap_gb": CAP_GB, "plan": fit.settings, "plan_need_gb": round(fit.need_gb, 1), "plan_reasons": fit.reasons}
    if CUDA:
        if torch.cuda.memory_allocated():
            raise RuntimeError("The memory cap must come before anything is on the GPU: run the cap case first in its process.")
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(CAP_GB * GB / total)
        record["memory_fraction"] = round(CAP_GB * GB / total, 4)
    else:
        settings["mixed_precision"] = "bf16"
        record["memory_cap"] = "skipped: no CUDA GPU (the cap is torch.cuda.set_per_process_memory_fraction); the plan's other settings ran in bf16"
    try:
        record |= {"fit": True, **sdtune_case(job, case, settings)}
    except torch.OutOfMemoryError as error:
        record |= {"fit": False, "error": str(error).splitlines()[0]}
    return record


def seconds_per_image(pipe, steps: int, repeats: int, **extra) -> tuple[float, torch.Tensor]:
    run = lambda n: pipe("a red circle on a white background", num_inference_steps=n, guidance_scale=7.5, output_type="pt",
                         generator=torch.Generator(DEVICE).manual_seed(0), **extra).images
    run(2)  # warm-up: kernels loaded and tuned
    start = synced()
    for _ in range(repeats):
        images = run(steps)
    return round((synced() - start) / repeats, 4), images


@contextlib.contextmanager
def merged(unet, name: str):
    """peft's merge: W <- W + (alpha / r) B A in place, so a merged layer's forward is the base layer's alone; undone after."""
    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.merge(adapter_names=[name])
    try:
        yield
    finally:
        for layer in layers:
            layer.unmerge()


def sampling_case(job: dict, case: dict) -> dict:
    """Base, with one LoRA, with it merged; then 3 LoRAs by merge, switch, composite (batched and sequential)."""
    pipe = sdtune.load_pipeline(job["model"])  # fp16 on a GPU
    pipe.set_progress_bar_config(disable=True)
    steps, repeats = case["steps"], case["repeats"]
    results = {}
    with torch.no_grad():
        results["base_s_per_image"], base = seconds_per_image(pipe, steps, repeats)
        results |= {"base_peak_gb": memory()["peak_gb"]}
        torch.manual_seed(SEED)  # rank 4 on attention, as trained; random B (zero would make merging trivially exact)
        add_adapter(pipe.unet, LoraConfig(r=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), "one")
        results["lora_s_per_image"], with_lora = seconds_per_image(pipe, steps, repeats)
        with merged(pipe.unet, "one"):
            results["lora_merged_s_per_image"], merged_images = seconds_per_image(pipe, steps, repeats)
        # merging changes only the rounding: its difference is small beside what the LoRA changes
        results["merged_vs_unmerged_max_abs_diff"] = float(f"{(merged_images.float() - with_lora.float()).abs().max():.2g}")
        results["lora_vs_base_max_abs_diff"] = float(f"{(with_lora.float() - base.float()).abs().max():.2g}")
        remove_adapter(pipe, "one")
        names = ["subject", "style", "background"]
        for i, name in enumerate(names):  # rank-8 LoRAs on attention + MLP, as composite_speed.py's
            torch.manual_seed(i)
            add_adapter(pipe.unet, LoraConfig(r=8, init_lora_weights=False, target_modules=[
                "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]), name)
        for method in ("merge", "switch", "composite"):
            free()
            with compose(pipe, names, method) as extra:
                results[f"{method}_3_loras_s_per_image"], _ = seconds_per_image(pipe, steps, repeats, **extra)
            results[f"{method}_3_loras_peak_gb"] = memory()["peak_gb"]
        pipe.unet.forward = sequential_composite(pipe, names)  # n UNet passes per step, one LoRA each
        try:
            results["composite_sequential_3_loras_s_per_image"], _ = seconds_per_image(pipe, steps, repeats)
        finally:
            del pipe.unet.forward
    results["composite_batched_over_sequential"] = round(results["composite_3_loras_s_per_image"] / results["composite_sequential_3_loras_s_per_image"], 3)
    results["composite_over_merge"] = round(results["composite_3_loras_s_per_image"] / results["merge_3_loras_s_per_image"], 3)
    results["composite_implementation"] = "sdtune.composition.grouped_lora: the batch repeated 3 times, adapter i on copy i, one UNet call"
    results |= {"steps": steps, "repeats": repeats}
    return results


WORK = {"sdtune": sdtune_case, "diffusers": diffusers_case, "cap": cap_case, "sampling": sampling_case}


def run_job(job: dict, result: Path) -> None:
    """Run a job's cases in this process, one after another; the result file is rewritten after each."""
    done = {}
    for case in job["cases"]:
        free()
        at_start = {"gpu_gb_at_start": round(torch.cuda.memory_allocated() / GB, 2)} if CUDA else {}
        start = synced()
        try:
            value = WORK[case["work"]](job, case)
            value = value | ({} if case["work"] == "sampling" else memory()) | at_start | {"wall_s": round(synced() - start, 1)}
        except Exception as error:  # recorded; the next case still runs
            traceback.print_exc()
            value = f"{type(error).__name__}: {error}"
        done[case["name"]] = value
        write_json(result, done)
        print(case["name"], json.dumps(value), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# The parent: builds the models, starts one process per job, assembles the results file

def build(kind: str, folder: Path, small: bool) -> dict:
    """Write a random-weight pipeline of `kind` to `folder` (fp16 on a GPU); its parameter counts, seed and sha256s."""
    start = time.perf_counter()
    pipe = random_pipeline(kind, small, seed=SEED)
    counts = {f"{name}_parameters": sum(p.numel() for p in module.parameters())
              for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
    dtype = torch.float16 if CUDA else torch.float32
    pipe.to(dtype).save_pretrained(folder)
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    del pipe
    gc.collect()
    seconds = round(time.perf_counter() - start, 1)
    weights = {str(f.relative_to(folder)): sha256(f) for f in sorted(folder.rglob("*.safetensors"))}
    return counts | {"resolution": resolution, "build_s": seconds, "seed": SEED, "saved_dtype": str(dtype).removeprefix("torch."),
                     "built_by": f"sdtune.models.architectures.random_pipeline({kind!r}, small={small}, seed={SEED})",
                     "weights_sha256": weights}


def child(job: dict, work: Path) -> dict:
    """Run `job` in a new Python process; what it measured, and for each case it did not finish, why."""
    result, log = work / f"{job['name']}.json", work / f"{job['name']}.log"
    result.unlink(missing_ok=True)  # what this process writes, nothing older
    command = [sys.executable, __file__, "--job", json.dumps(job), "--job-result", str(result)]
    with open(log, "w") as f:
        code = subprocess.run(command, check=False, stdout=f, stderr=subprocess.STDOUT, env=os.environ | {"TQDM_DISABLE": "1"}).returncode
    done = json.loads(result.read_text()) if result.exists() else {}
    text = log.read_text()
    for line in text.splitlines():
        if line.split(" ", 1)[0] in done:  # the case lines, as they came
            print(line, flush=True)
    if code or any(isinstance(value, str) for value in done.values()):  # what went wrong, for the next run
        print(f"{job['name']}: exit code {code}; its output ends:\n{text[-3000:]}", file=sys.stderr, flush=True)
    if code:
        last = text.strip().splitlines()[-1] if text.strip() else "no output"
        done |= {c["name"]: f"process exited with code {code}: {last}" for c in job["cases"] if c["name"] not in done}
    return done


def case_name(kind: str, adapter: str, batch: int, checkpointing: bool, precision: str) -> str:
    return f"{kind}_train_{adapter}_batch{batch}_{'gc' if checkpointing else 'nogc'}_{precision}"


def train_part(kind: str, model: Path, data: Path, work: Path, args) -> dict:
    """Every training case of `kind`, one process per precision; SD 1.5 also beside diffusers' loop."""
    steps = args.steps if kind == "sd15" else max(args.steps // 2, 7)  # SDXL: each step is ~3x SD 1.5's
    section = {}
    for precision, settings in CASES[kind].items():
        cases = [{"work": "sdtune", "name": case_name(kind, adapter, batch, checkpointing, precision), "adapter": adapter, "batch": batch,
                  "checkpointing": checkpointing, "steps": steps if adapter != "full" else max(steps // 3, 7)}
                 for adapter, batch, checkpointing in settings]
        rounds = versus_cases(kind, precision, steps, args.rounds)
        entry = case_name(kind, *VERSUS, precision)  # the first round's sdtune run: the chapters' entry for these settings
        ratio = entry.replace("_train_", "_vs_diffusers_")
        if precision == "fp16" and not CUDA:
            section |= {case["name"]: NO_FP16 for case in cases} | ({entry: NO_FP16, ratio: NO_FP16} if rounds else {})
            continue
        done = child({"name": f"{kind}_train_{precision}", "precision": precision, "model": str(model), "data": str(data),
                      "work": str(work), "cases": cases + rounds}, work)
        section |= {case["name"]: done[case["name"]] for case in cases}
        if rounds:
            pairs = [(done[ours["name"]], done[theirs["name"]]) for ours, theirs in zip(rounds[0::2], rounds[1::2])]
            section[entry] = pairs[0][0]
            section[ratio] = versus(pairs)
    return section


def versus_cases(kind: str, precision: str, steps: int, rounds: int) -> list[dict]:
    """sdtune, then diffusers' example loop, `rounds` times, at VERSUS's settings; SD 1.5 only (the loop is the SD script's)."""
    adapter, batch, checkpointing = VERSUS
    return [{"work": side, "name": f"{kind}_vs_diffusers_round{r}_{side}_{precision}", "adapter": adapter, "batch": batch,
             "checkpointing": checkpointing, "steps": steps} for r in range(1, rounds + 1) for side in ("sdtune", "diffusers")
            ] if kind == "sd15" else []


def versus(pairs: list[tuple[dict | str, dict | str]]) -> dict | str:
    """sdtune's steps/s over diffusers' loop, within each round (the machine's drift hits both), and their medians."""
    failed = [run for pair in pairs for run in pair if isinstance(run, str)]
    if failed:
        return f"not measured: {failed[0]}"
    ratio = {key: [round(s[key] / d[key], 2) for s, d in pairs] for key in ("it_per_s", "steady_it_per_s")}
    f = statistics.median(d["encoding_fraction"] for _, d in pairs)
    steady = statistics.median(ratio["steady_it_per_s"])
    return {"rounds": [{"sdtune": s, "diffusers": d} for s, d in pairs],
            "steady_ratio": round(steady, 2), "steady_ratios": ratio["steady_it_per_s"],
            "whole_run_ratio": round(statistics.median(ratio["it_per_s"]), 2), "whole_run_ratios": ratio["it_per_s"],
            "target": TARGET, "met": steady >= TARGET,
            "diffusers_encoding_fraction": round(f, 3), "caching_alone_at_most": round(1 / (1 - f), 2)}


def device_name() -> str:
    return torch.cuda.get_device_name(0) if CUDA else "cpu"


def default_out(small: bool) -> Path:
    """benchmarks/results/gpu_<model>.json: gpu_h100.json for 'NVIDIA H100 80GB HBM3'; --small: the temporary folder."""
    found = re.search(r"\b([A-Z]{1,2}\d{1,4})\b", device_name())
    slug = found.group(1).lower() if found else re.sub(r"[^a-z0-9]+", "_", device_name().lower()).strip("_")
    return Path(tempfile.gettempdir()) / f"gpu_{slug}_small.json" if small else RESULTS / f"gpu_{slug}.json"


def machine_line() -> str:
    device = f"one {device_name()} ({torch.cuda.get_device_properties(0).total_memory / GB:.0f} GB)" if CUDA else "the CPU (--small: a check of the script, not a benchmark)"
    return f"{device}, torch {torch.__version__}, diffusers {diffusers.__version__}, peft {peft.__version__}; {datetime.date.today()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="Results file (JSON). Default: benchmarks/results/gpu_<device>.json (with --small: in the temporary folder).")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing results file.")
    parser.add_argument("--no-sdxl", action="store_true", help="Only SD 1.5.")
    parser.add_argument("--only", help=f"Comma-separated parts to run: {', '.join(PARTS)} (default: all; cap is SDXL's).")
    parser.add_argument("--small", action="store_true", help="Shrunken models (64 px): check the script on a CPU.")
    parser.add_argument("--steps", type=int, default=30, help="Training steps per SD 1.5 case (SDXL: half; full fine-tuning: a third; at least 7).")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds of sdtune beside diffusers' loop, per precision.")
    parser.add_argument("--repeats", type=int, default=2, help="Timed sampling runs per setting (SDXL: half, at least 1).")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # a child process: run these cases
    parser.add_argument("--job-result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not CUDA:
        torch.set_num_threads(1)  # a CPU check: the machine is shared
    if args.job:
        run_job(json.loads(args.job), Path(args.job_result))
        return

    parts = [p for p in args.only.split(",") if p] if args.only is not None else list(PARTS)
    if not parts or any(p not in PARTS for p in parts):
        raise SystemExit(f"--only {args.only}: choose parts among {', '.join(PARTS)}, comma-separated.")
    if args.only and "cap" in parts and args.no_sdxl:
        raise SystemExit("--only ...cap trains SDXL under the memory cap: drop --no-sdxl, or cap from --only.")
    if not CUDA and not args.small:
        raise SystemExit("This benchmark needs a CUDA GPU (SD 1.5 at 512 px, SDXL at 1024 px); on a CPU run it with --small to check the script.")
    if args.steps < 7 or args.rounds < 1 or args.repeats < 1:
        raise SystemExit("--steps must be at least 7 (steady state is the median step after the first five), --rounds and --repeats at least 1.")
    out = Path(args.out) if args.out else default_out(args.small)
    if out.exists() and not args.overwrite:
        raise SystemExit(f"{out} exists: pass --overwrite to replace it, or --out another file.")
    kinds = [kind for kind in ("sd15",) + (() if args.no_sdxl else ("sdxl",)) if kind == "sdxl" or set(parts) != {"cap"}]
    command = " ".join(["python", f"benchmarks/{Path(__file__).name}", *sys.argv[1:]])  # also in the provenance; chapter 01 prints it
    results: dict = {"machine": machine_line(), "command": command, "parts": parts, "complete": False, "seconds": {}, "notes": NOTES}

    @contextlib.contextmanager
    def part(key: str):
        """Time the block, then write the results file: a run cut short keeps every part before."""
        start = time.perf_counter()
        yield
        results["seconds"][key] = round(time.perf_counter() - start, 1)
        write_results(out, results, overwrite=True)
        print(f"-- {key}: {results['seconds'][key]} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = toyworld.write_dataset(toyworld.sample_scenes(8, seed=1, styles=["striped"]), work / "data")
        for kind in kinds:
            section = results.setdefault(kind, {})
            model = work / kind
            with part(f"{kind}_build"):
                section[f"{kind}_model"] = build(kind, model, args.small)
                print(f"{kind}_model", json.dumps(section[f"{kind}_model"]), flush=True)
            if "train" in parts:
                with part(f"{kind}_train"):
                    section |= train_part(kind, model, data, work, args)
            if "cap" in parts and kind == "sdxl":
                with part("sdxl_cap"):
                    section |= child({"name": "sdxl_cap", "precision": "fp16", "model": str(model), "data": str(data), "work": str(work),
                                      "cases": [{"work": "cap", "name": f"sdxl_lora_under_{CAP_GB}gb", "adapter": "lora", "batch": 1,
                                                 "checkpointing": False, "steps": max(args.steps // 2, 7)}]}, work)
            if "compose" in parts:
                repeats = args.repeats if kind == "sd15" else max(args.repeats // 2, 1)
                with part(f"{kind}_compose"):
                    section |= child({"name": f"{kind}_compose", "model": str(model), "work": str(work), "cases": [
                        {"work": "sampling", "name": f"{kind}_sampling_25_steps", "steps": 25, "repeats": repeats}]}, work)
            shutil.rmtree(model)
        results["complete"] = True
        write_results(out, results, overwrite=True)
    print(f"wrote {out}: {sum(results['seconds'].values()):.0f} s", flush=True)

if __name__ == "__main__":
    main()
