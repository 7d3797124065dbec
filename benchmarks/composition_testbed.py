"""The composition testbed: merge vs switch vs composite on the shipped toy LoRAs, by number of LoRAs, with cost.

    python benchmarks/composition_testbed.py [--n 8]

Loads the four toy LoRAs (pink colour, checkerboard background, dotted style, star shape; see
`sdtune/assets/loras/toy_loras.json`), scores every 2-, 3- and 4-LoRA combination with each method
(`sdtune.evaluation.composition`), and prints the mean per size and method: concept presence, all concepts at
once, and seconds per image. The paper's direction (methods.md): composite and switch beat merge, the gap
growing with the number of LoRAs.
"""

import argparse
import json
from collections import defaultdict

import sdtune
from sdtune.evaluation.composition import testbed
from sdtune.formats import load_adapter
from sdtune.io import ASSETS


def main() -> None:
    parser = argparse.ArgumentParser(description="merge vs switch vs composite on the toy LoRAs")
    parser.add_argument("--n", type=int, default=8, help="images per combination and method (default 8)")
    parser.add_argument("--steps", type=int, default=15, help="DDIM steps (default 15)")
    args = parser.parse_args()
    pipe, judge = sdtune.load_pipeline("tiny"), sdtune.load_judge()
    pipe.set_progress_bar_config(disable=True)
    log = json.loads((ASSETS / "loras" / "toy_loras.json").read_text())
    concepts = {name: (entry["attribute"], entry["value"]) for name, entry in log.items() if "attribute" in entry}
    for name in concepts:
        load_adapter(pipe, ASSETS / "loras" / f"{name}.safetensors", name)
    rows = testbed(pipe, judge, concepts, n=args.n, num_inference_steps=args.steps)
    table = defaultdict(list)
    for row in rows:
        table[row["size"], row["method"]].append(row)
    print(f"{'LoRAs':>5} {'method':<10} {'presence':>9} {'all':>6} {'s/image':>8}   ({args.n} images per combination)")
    for (size, method), group in sorted(table.items()):
        mean = {k: sum(r[k] for r in group) / len(group) for k in ("presence", "all", "seconds_per_image")}
        print(f"{size:>5} {method:<10} {mean['presence']:9.1%} {mean['all']:6.1%} {mean['seconds_per_image']:8.3f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
