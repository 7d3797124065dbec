"""Peak memory against folder size: the old whole-folder encoding beside `prepare_latents`, which encodes in batches.

    python benchmarks/data_memory.py [--sizes 100,1000,5000] [--resolution 128]

Generates a folder of captioned 144x128 images (coloured ellipses), then, for each size and path, runs one
process (one thread) that loads the tiny model and the folder's list, resets the kernel's peak-RSS mark
(/proc/self/clear_refs, Linux), prepares the latents, and reports the peak RSS (VmHWM) above the RSS it
started from. The tiny VAE is fully convolutional (plus one attention block), so it encodes 128 px images to
8x16x16 latents; each image's float pixels (3x128x128x4 B = 192 KiB) are 12x its latents' mean and std
(2x8x16x16x4 B = 16 KiB), so memory that follows the pixels shows:

* old: `load_examples` (every image into one float tensor) + the encoding of sdtune.training.encode_images
  at f42872e (written out below, so this benchmark outlives the trainer's switch);
* new: `prepare_latents(pipe, examples, resolution)` (squares, no flip, in memory).

Written to benchmarks/results/data_memory_cpu.txt with the command, commit, machine and the VAE's sha256.
The new path's peak should be flat in the folder size apart from the latents themselves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "data_memory_cpu.txt"
VAE_WEIGHTS = ROOT / "sdtune" / "assets" / "tiny-sd" / "vae" / "diffusion_pytorch_model.safetensors"


def status_kb(field: str) -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))


def write_folder(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        image = Image.new("RGB", (144, 128), tuple(int(c) for c in rng.integers(0, 256, 3)))
        x, y = rng.integers(0, 80, 2)
        ImageDraw.Draw(image).ellipse((x, y, x + 60, y + 45), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        image.save(folder / f"{i:05d}.png")
        (folder / f"{i:05d}.txt").write_text(f"a shape, number {i}")


def measure(folder: Path, count: int, path: str, resolution: int) -> dict:
    """In this process: peak RSS above the starting RSS while preparing the latents of the first `count` images."""
    import torch

    torch.set_num_threads(1)
    import sdtune
    from sdtune.data.folder import load_examples, scan_folder
    from sdtune.data.latents import prepare_latents

    pipe = sdtune.load_pipeline("tiny")
    examples = scan_folder(folder)[:count]
    start = status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the RSS now
    tick = time.perf_counter()
    with torch.no_grad():
        if path == "old":
            pixels = load_examples(examples, resolution)
            dists = [pipe.vae.encode(b.to(pipe.device, pipe.vae.dtype)).latent_dist for b in pixels.split(32)]  # encode_images
            scale = pipe.vae.config.scaling_factor
            latents = [torch.cat([d.mean for d in dists]).float().cpu() * scale, torch.cat([d.std for d in dists]).float().cpu() * scale]
        else:
            buckets = prepare_latents(pipe, examples, resolution).buckets
            latents = [t for b in buckets for t in (b.mean, b.std)]
    seconds = time.perf_counter() - tick
    return {"images": count, "path": path, "start_mb": start / 1024, "peak_above_start_mb": (status_kb("VmHWM") - start) / 1024,
            "latents_mb": sum(t.numel() * t.element_size() for t in latents) / 2**20, "seconds": seconds}


def provenance() -> str:
    import torch

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = " (uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    vae = hashlib.sha256(VAE_WEIGHTS.read_bytes()).hexdigest()
    return (f"# {' '.join(['python', f'benchmarks/{Path(__file__).name}', *sys.argv[1:]])}\n"
            f"# git {git('rev-parse', '--short', 'HEAD')}{dirty}, {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            "1 thread\n"
            f"# tiny VAE {VAE_WEIGHTS.relative_to(ROOT)} sha256 {vae}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,5000", help="folder sizes, comma-separated")
    parser.add_argument("--resolution", type=int, default=128, help="training resolution (the tiny model's VAE takes any multiple of 8)")
    parser.add_argument("--child", nargs=4, metavar=("FOLDER", "COUNT", "PATH", "RESOLUTION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, count, path, resolution = args.child
        print(json.dumps(measure(Path(folder), int(count), path, int(resolution))))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        write_folder(folder, max(sizes))
        for count in sizes:
            for path in ("old", "new"):
                command = [sys.executable, __file__, "--child", str(folder), str(count), path, str(args.resolution)]
                out = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    lines = [f"{args.resolution} px squares from 144x128 images; peak: the RSS high-water mark above the RSS before the latents "
             "were prepared (model loaded, folder listed); process peak: the high-water mark itself",
             f"{'images':>7} {'path':>4} {'process peak MB':>16} {'peak MB':>9} {'latents MB':>11} {'peak - latents MB':>18} {'seconds':>8}"]
    for r in rows:
        peak = r["peak_above_start_mb"]
        lines.append(f"{r['images']:>7,} {r['path']:>4} {r['start_mb'] + peak:>16.1f} {peak:>9.1f} {r['latents_mb']:>11.1f} "
                     f"{peak - r['latents_mb']:>18.1f} {r['seconds']:>8.1f}")
    for path in ("old", "new"):
        mine = [r for r in rows if r["path"] == path]
        first, last = mine[0], mine[-1]
        slope = ((last["peak_above_start_mb"] - last["latents_mb"]) - (first["peak_above_start_mb"] - first["latents_mb"])) / (
            last["images"] - first["images"]) * 1000
        lines.append(f"{path}: peak - latents grows {slope:.1f} MB per 1,000 images from {first['images']:,} to {last['images']:,} images")
    text = provenance() + "\n".join(lines) + "\n"
    print(text)
    from sdtune.io import staged_file

    with staged_file(RESULTS) as tmp:
        tmp.write_text(text)


if __name__ == "__main__":
    main()
