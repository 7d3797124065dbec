"""Who is right where the judge and the checker disagree? A person's blind labels, scored.

    python benchmarks/judge_audit.py sheets --images /tmp/ja/images.npz --sheets /tmp/audit   # 1. sheets to label
    python benchmarks/judge_audit.py score --images /tmp/ja/images.npz                        # 2. the labels, scored

`benchmarks/judge_agreement.py` counts how often the judge and the pixel-rule checker agree on 624 generated
images; where they disagree one of them is wrong, or the image shows no nameable value at all (a blob between a
circle and a square, a pink between red and pink). Agreement alone cannot tell these apart; a person can. The audit:

1. `sheets` draws every image with a disagreement, and a random sample of images on which the two agree on every
   attribute, enlarged, with only an id and the attributes to name: neither verdict is shown (blind labelling);
2. a person writes, per item, the value they see, or "?" where the image shows none clearly
   (`benchmarks/results/judge_audit_labels.tsv`, one line per image and attribute);
3. `score` recomputes both verdicts on the same images and counts, per attribute: of the disputed verdicts, how many
   a person could name, and of those how many the judge named right, the checker, or neither; of the agreed sample,
   how often the person names the same value; whether either reader leans to the prompt where there is nothing to
   name (of the disputed items a person could not name, how often each names the value the prompt asked for); and
   whether the judge knows when there is nothing to name: how often it is sure (probability of its named value at
   least 0.9) on the items a person could name, and on those they could not. Rates are k of n with a Wilson 95% interval.

The images are the study's own (`--images`, written by `judge_agreement.py --images`, or generated here with the
same seeds when the file is missing); the labels file records the images' fingerprint, and `score` refuses labels
made on other images.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

import sdtune
from sdtune.data import toyworld
from sdtune.evaluation import checker
from sdtune.evaluation.judge import JUDGE_DIR, load_judge
from sdtune.evaluation.provenance import TINY_SD, write_results
from sdtune.evaluation.stats import Rate

# this folder's scripts run with the folder on sys.path
from judge_agreement import ATTRIBUTES, LORAS, SURE, Source, captioned_grid, generate, load_images, save_images

LABELS = Path("benchmarks/results/judge_audit_labels.tsv")
AGREED_SAMPLE, SAMPLE_SEED = 48, 0
AMBIGUOUS = "?"


def fingerprint(sources: list[Source]) -> str:
    """sha256 of every image's pixels, in order: labels are tied to the images they were made on."""
    digest = hashlib.sha256()
    for s in sources:
        for image in s.images:
            digest.update(np.asarray(image.convert("RGB")).tobytes())
    return digest.hexdigest()


def verdicts(sources: list[Source], judge) -> tuple[list[dict], list[dict], list[str]]:
    """The judge's and the checker's verdict on every image (ids: the images' order in the study), and the source of each."""
    judged, checked, names = [], [], []
    for s in sources:
        j, c = judge.predict(s.images), checker.check_all(s.images)
        judged += [{k: j[k][i] for k in ATTRIBUTES} for i in range(len(s.images))]
        checked += [{k: c[k][i] for k in ATTRIBUTES} for i in range(len(s.images))]
        names += [s.name] * len(s.images)
    return judged, checked, names


def audit_items(judged: list[dict], checked: list[dict]) -> list[tuple[int, str, str]]:
    """(image id, attribute, kind): every disputed verdict, then all four attributes of a seeded random sample of the
    images on which the two agree on every attribute."""
    disputed = [(i, k, "disputed") for i, (j, c) in enumerate(zip(judged, checked)) for k in ATTRIBUTES if j[k] != c[k]]
    agreed = [i for i, (j, c) in enumerate(zip(judged, checked)) if j == c]
    sample = sorted(np.random.default_rng(SAMPLE_SEED).choice(agreed, min(AGREED_SAMPLE, len(agreed)), replace=False))
    return disputed + [(int(i), k, "agreed") for i in sample for k in ATTRIBUTES]


def write_sheets(sources: list[Source], items: list[tuple[int, str, str]], folder: Path, images_sha: str,
                 per_sheet: int = 24, cols: int = 6, scale: int = 4) -> None:
    """Contact sheets of the items' images, 4x enlarged, each captioned with its id and the attributes to name only;
    and a labels template (one line per item, "?" to be replaced)."""
    images = [im for s in sources for im in s.images]
    wanted: dict[int, list[str]] = {}
    for i, k, _ in items:
        wanted.setdefault(i, []).append(k)
    ids = list(wanted)
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(ids), per_sheet):
        chunk = ids[start : start + per_sheet]
        sheet = captioned_grid([images[i] for i in chunk], [f"#{i} {', '.join(wanted[i])}" for i in chunk],
                               scale=scale, cols=cols, caption_height=16)
        sheet.save(folder / f"sheet_{start // per_sheet:02d}.png")
    template = [f"# images {images_sha}", "# image\tattribute\tlabel (a value the image shows, or ? where none clearly)"]
    template += [f"{i}\t{k}\t{AMBIGUOUS}" for i, k, _ in items]
    (folder / "labels_template.tsv").write_text("\n".join(template) + "\n")


def read_labels(path: Path) -> tuple[str, dict[tuple[int, str], str]]:
    """The images' fingerprint the labels were made on, and {(image id, attribute): label}."""
    images_sha, labels = None, {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("# images "):
            images_sha = line.split()[2]
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 3 or fields[1] not in ATTRIBUTES or not fields[0].isdigit():
            raise ValueError(f"{path}, line {n}: expected 'image id<TAB>attribute<TAB>label', got {line!r}.")
        i, k, label = int(fields[0]), fields[1], fields[2]
        if label != AMBIGUOUS and label not in toyworld.ATTRIBUTES[k]:
            raise ValueError(f"{path}, line {n}: {label!r} is not a {k} (one of {', '.join(toyworld.ATTRIBUTES[k])}, or ?).")
        labels[(i, k)] = label
    if images_sha is None:
        raise ValueError(f"{path} has no '# images <sha256>' line: labels must name the images they were made on.")
    return images_sha, labels


def score(items: list[tuple[int, str, str]], labels: dict[tuple[int, str], str], judged: list[dict],
          checked: list[dict], prompted: list[dict], confidence: list[dict] | None = None) -> dict:
    """Per attribute, over the disputed verdicts: how many a person could name, who named them right, and on those
    they could not, how often each reader named the prompted value; over the agreed sample: how often the person
    names the value both gave; with the judge's confidence per image, how often it is sure on the items a person
    named and on those they could not."""
    missing = [(i, k) for i, k, _ in items if (i, k) not in labels]
    if missing:
        raise ValueError(f"no label for {len(missing)} audited items, first {missing[:3]}: label every item of the sheets.")
    out: dict = {"disputed": {}, "agreed": {}}
    for k in ATTRIBUTES:
        disputed = [(labels[i, k], judged[i][k], checked[i][k]) for i, a, kind in items if a == k and kind == "disputed"]
        named = [(p, j, c) for p, j, c in disputed if p != AMBIGUOUS]
        who = Counter("judge" if p == j else "checker" if p == c else "neither" for p, j, c in named)
        unnamed = [i for i, a, kind in items if a == k and kind == "disputed" and labels[i, k] == AMBIGUOUS]
        out["disputed"][k] = {"n": len(disputed), "named": Rate(len(named), len(disputed)) if disputed else None,
                              "judge right": who["judge"], "checker right": who["checker"], "neither": who["neither"],
                              "judge right of named": Rate(who["judge"], len(named)) if named else None,
                              "unnamed, judge names the prompt": Rate.of(judged[i][k] == prompted[i][k] for i in unnamed) if unnamed else None,
                              "unnamed, checker names the prompt": Rate.of(checked[i][k] == prompted[i][k] for i in unnamed) if unnamed else None}
        agreed = [(labels[i, k], judged[i][k]) for i, a, kind in items if a == k and kind == "agreed"]
        named_agreed = [(p, j) for p, j in agreed if p != AMBIGUOUS]
        out["agreed"][k] = {"n": len(agreed), "named": Rate(len(named_agreed), len(agreed)) if agreed else None,
                            "person agrees": Rate.of(p == j for p, j in named_agreed) if named_agreed else None}
    if confidence is not None:
        out["judge sure"] = {}
        for k in ATTRIBUTES:
            sure = {"named": [], "unnamed": []}
            for i, a, _ in items:
                if a == k:
                    sure["unnamed" if labels[i, k] == AMBIGUOUS else "named"].append(confidence[i][k] >= SURE)
            out["judge sure"][k] = {which: Rate.of(outcomes) if outcomes else None for which, outcomes in sure.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["sheets", "score"], help="sheets: draw what to label; score: count who is right")
    parser.add_argument("--images", required=True, help="the study's images (.npz from judge_agreement.py --images); "
                        "generated with the study's seeds and written there when missing")
    parser.add_argument("--sheets", default="judge-audit-sheets", help="sheets: folder for the contact sheets and template")
    parser.add_argument("--labels", default=str(LABELS), help="score: the labels file (default: the committed one)")
    parser.add_argument("--out", default="benchmarks/results/judge_audit_cpu.json", help="score: results file (replaced)")
    args = parser.parse_args()
    if args.step == "score":  # the labels are read before any work: a bad file fails in a second, not after minutes
        if not Path(args.labels).is_file():
            parser.error(f"--labels {args.labels} does not exist: run the sheets step and label its template first.")
        labelled_sha, labels = read_labels(Path(args.labels))
    elif (Path(args.sheets) / "labels_template.tsv").exists():
        parser.error(f"--sheets {args.sheets} already holds a labels template (perhaps half filled in): name a new folder.")
    images = Path(args.images)
    judge = load_judge(JUDGE_DIR, sure=0.0)  # names every value: the audit asks where a name was right
    if images.is_file():
        sources = load_images(images)
    else:
        pipe = sdtune.load_pipeline("tiny")
        pipe.set_progress_bar_config(disable=True)
        with tempfile.TemporaryDirectory() as work:
            os.environ.setdefault("SDTUNE_CACHE", str(Path(work) / "cache"))
            sources = generate(pipe, Path(work))
        save_images(images, sources)
    images_sha = fingerprint(sources)
    judged, checked, names = verdicts(sources, judge)
    items = audit_items(judged, checked)
    if args.step == "sheets":
        write_sheets(sources, items, Path(args.sheets), images_sha)
        print(f"{len({i for i, _, _ in items})} images, {len(items)} items to label: {args.sheets}/sheet_*.png; "
              f"fill in {args.sheets}/labels_template.tsv, then run the score step with --labels")
        return
    if labelled_sha != images_sha:
        raise SystemExit(f"--labels {args.labels} was made on other images ({labelled_sha[:12]}, these are "
                         f"{images_sha[:12]}): regenerate the study's images or label these.")
    confidence = judge.confidence([im for s in sources for im in s.images])
    confidence = [{k: confidence[k][i] for k in ATTRIBUTES} for i in range(len(judged))]
    prompted = [{k: getattr(scene, k) for k in ATTRIBUTES} for s in sources for scene in s.scenes]
    results = score(items, labels, judged, checked, prompted, confidence)
    print(f"{len(items)} audited items on {len({i for i, _, _ in items})} of {len(judged)} images")
    print("where judge and checker disagree (the person saw neither verdict):")
    for k, row in results["disputed"].items():
        print(f"  {k:<11} {row['n']:3d} disputed; a person names {row['named']}: judge right {row['judge right']}, "
              f"checker right {row['checker right']}, neither {row['neither']}")
    print("where a person could name nothing, each reader names the value the prompt asked for in:")
    for k, row in results["disputed"].items():
        print(f"  {k:<11} judge {str(row['unnamed, judge names the prompt']):<26} checker {row['unnamed, checker names the prompt']}")
    print(f"where they agree (a random {AGREED_SAMPLE} such images):")
    for k, row in results["agreed"].items():
        print(f"  {k:<11} a person names {row['named']}; names the value both gave in {row['person agrees']}")
    print(f"does the judge know? sure (probability >= {SURE}) on the audited items a person")
    for k, row in results["judge sure"].items():
        print(f"  {k:<11} named: {str(row['named']):<26} could not name: {row['unnamed']}")
    results.update(images=len(judged), images_sha256=images_sha, labels=str(args.labels),
                   labels_sha256=hashlib.sha256(Path(args.labels).read_bytes()).hexdigest(),
                   items=[{"image": i, "source": names[i], "attribute": k, "kind": kind, "person": labels[i, k],
                           "prompt": prompted[i][k], "judge": judged[i][k], "checker": checked[i][k],
                           "judge_confidence": round(confidence[i][k], 4)} for i, k, kind in items])
    write_results(Path(args.out), results, weights=[TINY_SD, JUDGE_DIR / "model.safetensors"] + sorted(LORAS.glob("*.safetensors")),
                  overwrite=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
