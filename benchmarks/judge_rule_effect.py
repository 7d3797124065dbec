"""What counting with the sure judge changed: each study's verdicts, every value named against only where sure.

    python benchmarks/judge_rule_effect.py            # every study counted both ways
    python benchmarks/judge_rule_effect.py --all      # also the verdicts whose figures alone moved

The chapters read `benchmarks/results/<study>_cpu.json`, counted with the sure judge (`sdtune.load_judge()`): it names
a value only where its probability is at least 0.9 (`SURE`), and an "unsure" image counts as a miss.
`benchmarks/results/every_value/<study>_cpu.json` is the same study (same settings, same weights) as counted before
that rule, with the judge naming every value (its most probable one; `--judge-sure 0`). Where the training reproduces,
the images are the same and only the counting differs; then no count of what the judge names ("the judge sees the
style") can rise under the sure rule, while a count of its agreement with the pixel checker can (both may now say "not
there"). This script prints, per study, how many rates moved, which rose (where one is a count of what the judge
names, the images themselves differ between the two runs), and every verdict (a paired difference over training
seeds: "A higher than B by ...", "not resolved ...") whose conclusion changed: resolved to not resolved, or the other
way, or the direction. `--all` adds those whose figures alone moved.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterator

RESULTS = Path(__file__).resolve().parent / "results"


def walk(node, path: str = "") -> Iterator[tuple[str, object]]:
    """Every value in a results file but its provenance, with where it sits, depth first."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            if key != "provenance":
                yield from walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


def rates(results: dict) -> dict[str, tuple[int, int]]:
    """Every {k, n} rate in a results file, by where it sits."""
    return {path: (node["k"], node["n"]) for path, node in walk(results)
            if isinstance(node, dict) and isinstance(node.get("k"), int) and isinstance(node.get("n"), int)}


def verdicts(results: dict) -> dict[str, str]:
    """Every "verdict" string in a results file (what a paired difference concludes), by where it sits."""
    return {path: node for path, node in walk(results) if path.endswith("/verdict") and isinstance(node, str)}


def conclusion(verdict: str) -> str:
    """What a verdict concludes, without its figures: "higher", "lower" or "not resolved"."""
    return "not resolved" if "not resolved" in verdict else "higher" if " higher than " in verdict else "lower"


def compare(every: dict, sure: dict) -> dict:
    """Rates moved and risen, and verdicts (before, after) that differ, between the two counts of one study."""
    before, after = rates(every), rates(sure)
    shared = [p for p in before if p in after]
    said, says = verdicts(every), verdicts(sure)
    return {"rates": len(shared),
            "moved": sum(before[p] != after[p] for p in shared),
            "rose": [p for p in shared if after[p][1] == before[p][1] and after[p][0] > before[p][0]],
            "verdicts": len([p for p in said if p in says]),
            "changed": [(said[p], says[p]) for p in said if p in says and said[p] != says[p]]}


def concluded_otherwise(effect: dict) -> list[tuple[str, str]]:
    """The changed verdicts whose conclusion differs, not only their figures."""
    return [(was, now) for was, now in effect["changed"] if conclusion(was) != conclusion(now)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="also print the verdicts whose figures alone moved")
    args = parser.parse_args()
    counted = sorted((RESULTS / "every_value").glob("*_cpu.json"))
    if not counted:
        parser.error(f"no study counted with every value named in {RESULTS / 'every_value'}: run a study with "
                     f"--judge-sure 0 --out {RESULTS / 'every_value'}/<study>_cpu.json first")
    for path in counted:
        every, sure = json.loads(path.read_text()), json.loads((RESULTS / path.name).read_text())
        effect = compare(every, sure)
        otherwise = concluded_otherwise(effect)
        print(f"\n{path.stem}: {effect['moved']} of {effect['rates']} rates moved, {len(effect['rose'])} rose; of "
              f"{effect['verdicts']} verdicts, {len(otherwise)} concluded otherwise and "
              f"{len(effect['changed']) - len(otherwise)} moved in figures only")
        for where in effect["rose"][:6]:
            print(f"  rose: {where}")
        for was, now in effect["changed"] if args.all else otherwise:
            print(f"  every value named: {was}\n  only where sure:   {now}")


if __name__ == "__main__":
    main()
