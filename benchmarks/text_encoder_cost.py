"""What training the text encoder too costs in time: chapter 04's UNet LoRA and TE + UNet LoRA, timed in turn.

    python benchmarks/text_encoder_cost.py [--rounds 6] [--threads 1] [--out FILE]

Chapter 04's study (`benchmarks/unet_vs_text_encoder.py`) times each run as it trains it, always the UNet run first,
on whatever else the machine is doing; its committed timings came out the wrong way round (TE + UNet faster, though
it does all the UNet run's work and the text encoder's besides). Here only the time is measured, on the same
recipe (`unet_vs_text_encoder.FIXED`: rank-4 attention LoRA, 80 steps, batch 8, on chapter 04's 24 outlined
images; TE + UNet adds the text encoder at half the learning rate), in rounds whose order alternates (UNet first,
then TE + UNet first, ...), so that a warm-up or a drift in the machine's load falls on both alike. The difference
is the mean of the per-round differences with a t-interval over rounds. Run it on a quiet machine: its results file
records the command, the commit, the machine, each round's load average and the sha256 of the tiny model.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "text_encoder_cost_cpu.json"
RUNS = ("UNet", "TE + UNet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds of the two runs, order alternating (default 6)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as chapter 04's study)")
    parser.add_argument("--out", default=str(RESULTS), help="results file (JSON)")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error(f"--rounds {args.rounds}: give at least 2, so that each run goes first once")
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: give at least 1")

    import torch

    import sdtune
    from sdtune.data import toyworld
    from sdtune.evaluation.provenance import TINY_SD, write_results
    from sdtune.evaluation.stats import seed_difference
    from sdtune.training import TrainConfig, train
    from unet_vs_text_encoder import FIXED, IMAGES, STYLE, TE_LR  # this folder's scripts run with the folder on sys.path

    torch.set_num_threads(args.threads)
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    extra = {"UNet": {}, "TE + UNet": {"train_text_encoder": True, "text_encoder_lr": TE_LR}}
    seconds: dict[str, list[float]] = {run: [] for run in RUNS}
    load = []
    with tempfile.TemporaryDirectory() as tmp:
        data = toyworld.write_dataset(toyworld.sample_scenes(IMAGES, seed=1, styles=[STYLE]), Path(tmp) / "data")
        for r in range(args.rounds):
            for run in RUNS if r % 2 == 0 else RUNS[::-1]:
                start = time.perf_counter()
                train(TrainConfig(data=str(data), out=str(Path(tmp) / "out"), seed=r, overwrite=True, **FIXED, **extra[run]), pipe=pipe)
                seconds[run].append(round(time.perf_counter() - start, 2))
            load.append(round(os.getloadavg()[0], 2))
            print(f"round {r}: " + ", ".join(f"{run} {seconds[run][-1]:.2f} s" for run in RUNS) + f" (load {load[-1]})", flush=True)
    d = seed_difference(seconds["TE + UNet"], seconds["UNet"], "TE + UNet", "UNet")
    print(f"TE + UNet minus UNet: {d.estimate:+.2f} s [{d.low:+.2f}, {d.high:+.2f}] per run ({'resolved' if d.resolved else 'not resolved'})")
    write_results(args.out, {"settings": {"rounds": args.rounds, "threads": args.threads, "recipe": FIXED, "text_encoder_lr": TE_LR,
                                          "images": IMAGES, "style": STYLE, "order": "alternating, UNet first in round 0"},
                             "seconds": seconds, "load_average": load,
                             "difference": {"a": "TE + UNet", "b": "UNet", "seconds": d.estimate, "low": d.low, "high": d.high,
                                            "resolved": d.resolved, "method": "paired over rounds (t-interval)"}},
                  weights=[TINY_SD], overwrite=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
