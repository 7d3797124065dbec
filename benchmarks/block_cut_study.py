"""Chapter 14's sections 2 and 3 over three training seeds: which blocks of the tiny UNet hold a concept LoRA's
concept, and does cutting two LoRAs by block keep both concepts?

    python benchmarks/block_cut_study.py [--seeds 0,1,2] [--threads 2] [--work DIR] [--out FILE]

The chapter probes and cuts the shipped toy LoRAs, which are one training each (seed 0). Here the three concept LoRAs
the chapter uses (star: a shape; dotted: a pattern; pink: a colour) are trained again per training seed exactly as
the shipped ones are (`sdtune.models.toy_loras.train_concept`: LoCon rank 8, 300 steps, on 24 images of the
concept), and the chapter's two experiments are run on each seed's LoRAs:

1. **The probe** (`sdtune.evaluation.blocks.probe`): each LoRA switched off in one block group at a time (each of
   the seven attention blocks, and every convolution as one group), 8 held-out prompts asking for the concept, 10
   DDIM steps; the loss of a group is the share of the full LoRA's score (the judge's mean probability for the
   concept) that goes without it. Recorded per seed: the loss table and the group each concept loses most without.
2. **The cut**, for the pairs star + pink and star + dotted: every block group goes to the LoRA that loses more
   without it (its *owner*, from that seed's probe), and one LoRA is made of each group's layers from its owner
   (`blocks.cut`); against **merge** (both LoRAs in every layer) and the **swapped** cut (every group to the other
   LoRA). 24 prompts that ask for both concepts (seed 100), 25 DDIM steps, guidance 4, sampling seed 0. Measured per
   image: the judge names each concept; both at once.

Rates are k/n pooled over seeds with Wilson 95% intervals; each difference the chapter states (`DIFFERENCES`) is the
mean of the per-seed differences with a t-interval over seeds, "not resolved" when it includes zero. Each seed is
cached in --work (about 4 minutes a seed on 2 CPU threads). The results file records the command, the commit, the
machine and the sha256 of the tiny model and the judge.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "block_cut_study_cpu.json"
CONCEPTS = ("star", "dotted", "pink")
PAIRS = (("star", "pink"), ("star", "dotted"))
METHODS = ("merge", "cut", "swapped")
N_PROBE, PROBE_STEPS, N_MIX = 8, 10, 24
# (pair, measure, a, b): measure is a concept of the pair or "both"; paired by training seed
DIFFERENCES = [
    ("star+pink", "star", "cut", "swapped"), ("star+pink", "pink", "merge", "cut"), ("star+pink", "both", "merge", "cut"),
    ("star+dotted", "star", "cut", "swapped"), ("star+dotted", "dotted", "swapped", "cut"),
    ("star+dotted", "both", "merge", "cut"),
]


def concept_prompts(concepts: list[str], n: int, seed: int = 100) -> list[str]:
    """n held-out prompts asking for every one of the concepts (the other attributes random base values)."""
    from sdtune.data import toyworld
    from sdtune.models.toy_loras import CONCEPTS as SHIPPED

    fixed = {f"{SHIPPED[c][0]}s": [SHIPPED[c][1]] for c in concepts}  # e.g. shapes=["star"], colours=["pink"]
    return [toyworld.caption(s) for s in toyworld.sample_scenes(n, seed, **fixed)]


def run_seed(pipe, judge, seed: int, work: Path) -> tuple[dict, dict]:
    """Train the three concept LoRAs with this seed, probe each, cut each pair: per-seed outcomes."""
    import sdtune
    from safetensors.torch import load_file

    from sdtune.evaluation import blocks
    from sdtune.models.toy_loras import CONCEPTS as SHIPPED
    from sdtune.models.toy_loras import train_concept

    groups = blocks.block_groups(pipe.unet)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        train_s = {c: train_concept(pipe, c, Path(tmp) / "train", Path(tmp), seed=seed)["train_seconds"] for c in CONCEPTS}
        tensors = {c: load_file(Path(tmp) / f"{c}.safetensors") for c in CONCEPTS}
    updates = {c: blocks.deltas(pipe.unet, tensors[c]) for c in CONCEPTS}
    heat, loss = {}, {}
    for c in CONCEPTS:
        attribute, value, _ = SHIPPED[c]
        heat[c] = blocks.probe(pipe, judge, updates[c], attribute, value, concept_prompts([c], N_PROBE), PROBE_STEPS, groups)
        loss[c] = blocks.losses(heat[c])
    mix, owners = {}, {}
    for a, b in PAIRS:
        owner = {g: a if loss[a][g] >= loss[b][g] else b for g in groups}
        swapped = {g: b if o == a else a for g, o in owner.items()}
        owners[f"{a}+{b}"] = owner
        prompts = concept_prompts([a, b], N_MIX)
        conditions = {"merge": [updates[a], updates[b]],
                      "cut": [blocks.deltas(pipe.unet, blocks.cut(tensors, owner, groups))],
                      "swapped": [blocks.deltas(pipe.unet, blocks.cut(tensors, swapped, groups))]}
        mix[f"{a}+{b}"] = {}
        for method, update in conditions.items():
            with blocks.fused(pipe.unet, *update):
                named = judge.predict(sdtune.sample(pipe, prompts))
            seen = {c: [v == SHIPPED[c][1] for v in named[SHIPPED[c][0]]] for c in (a, b)}
            mix[f"{a}+{b}"][method] = seen | {"both": [x and y for x, y in zip(seen[a], seen[b])]}
    top = {c: max(loss[c], key=loss[c].get) for c in CONCEPTS}
    return {"train_s": train_s, "heat": heat, "loss": loss, "top": top, "owner": owners, "mix": mix}, {}


def summarise(runs: dict[int, dict]) -> dict:
    """Pooled and per-seed rates of every pair, method and measure; the stated differences, paired by seed; the
    probe's findings per seed."""
    from sdtune.evaluation.stats import Rate, seed_difference, seed_rates

    seeds = sorted(runs)
    rates = {pair: {method: {m: seed_rates({s: runs[s]["mix"][pair][method][m] for s in seeds})
                             for m in runs[seeds[0]]["mix"][pair][method]}
                    for method in METHODS}
             for pair in runs[seeds[0]]["mix"]}
    differences = []
    for pair, m, a, b in DIFFERENCES:
        d = seed_difference([Rate.of(runs[s]["mix"][pair][a][m]) for s in seeds],
                            [Rate.of(runs[s]["mix"][pair][b][m]) for s in seeds], a, b)
        differences.append({"pair": pair, "measure": m} | d.as_dict())
    star, dotted, pink = ([runs[s]["loss"][c] for s in seeds] for c in CONCEPTS)
    attention = [g for g in runs[seeds[0]]["loss"]["star"] if g != "convolutions"]
    probe = {
        "top": {c: {str(s): runs[s]["top"][c] for s in seeds} for c in CONCEPTS},
        "loss": {c: {str(s): runs[s]["loss"][c] for s in seeds} for c in CONCEPTS},
        "largest attention-block loss": {c: {str(s): max(runs[s]["loss"][c][g] for g in attention) for s in seeds}
                                         for c in CONCEPTS},
        "column correlation": {pair: {str(s): float(np.corrcoef([list(x.values()), list(y.values())])[0, 1])
                                      for s, x, y in zip(seeds, first, second)}
                               for pair, first, second in (("star~dotted", star, dotted), ("star~pink", star, pink))},
    }
    return {"rates": rates, "differences": differences, "probe": probe,
            "owner": {str(s): runs[s]["owner"] for s in seeds}, "train_s": {str(s): runs[s]["train_s"] for s in seeds}}


def main() -> None:
    from sdtune.evaluation.provenance import JUDGE_WEIGHTS, TINY_SD, start_tiny_study, study_parser, write_results

    parser = study_parser(__doc__, "block-cut-study", RESULTS, seeds_help="training seeds of the concept LoRAs (at least 3)", threads=2)
    study = start_tiny_study(parser, parser.parse_args())
    args, seeds = study.args, study.seeds
    runs = study.outcomes(lambda s: run_seed(study.pipe, study.judge, s, study.work))
    summary = summarise(runs)
    for pair, methods in summary["rates"].items():
        for method, measures in methods.items():
            print(f"{pair:<12} {method:<8} " + "  ".join(f"{m} {r['pooled']}" for m, r in measures.items()))
    for d in summary["differences"]:
        print(f"{d['pair']}, {d['measure']}: {d['verdict']}")
    print("the group each concept loses most without, per seed:", summary["probe"]["top"])
    settings = {"seeds": seeds, "threads": args.threads, "concepts": CONCEPTS, "pairs": PAIRS, "probe_prompts": N_PROBE,
                "probe_steps": PROBE_STEPS, "mix_prompts": N_MIX}
    write_results(args.out, {"judge_sure": args.judge_sure, "settings": settings} | summary,
                  weights=[TINY_SD, JUDGE_WEIGHTS], overwrite=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
