"""The audit of the judge by a person's blind labels (benchmarks/judge_audit.py): its counting can tell who is
right, its labels file rejects what it cannot read, and the committed results are the committed labels, counted,
on verdicts that a re-run reproduces."""

import hashlib
import json
from pathlib import Path

import pytest

import sdtune
from benchmark_scripts import load_study
from sdtune.data import toyworld
from sdtune.evaluation import checker
from sdtune.evaluation.provenance import check_weights

audit = load_study("judge_audit")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "judge_audit_cpu.json"
BLANK = {"shape": "circle", "colour": "red", "background": "white", "style": "flat"}


def verdicts(**changes) -> dict:
    return BLANK | changes


def test_score_tells_who_is_right():
    judged = [verdicts(shape="star"), verdicts(shape="star"), verdicts(shape="star"), verdicts(shape="star"), verdicts()]
    checked = [verdicts(shape="cross"), verdicts(shape="cross"), verdicts(shape="cross"), verdicts(shape="cross"), verdicts()]
    items = [(i, "shape", "disputed") for i in range(4)] + [(4, k, "agreed") for k in toyworld.ATTRIBUTES]
    labels = {(0, "shape"): "star", (1, "shape"): "cross", (2, "shape"): "triangle", (3, "shape"): "?"}
    labels |= {(4, "shape"): "square", (4, "colour"): "red", (4, "background"): "white", (4, "style"): "?"}
    prompted = [verdicts(shape="star")] * 5
    result = audit.score(items, labels, judged, checked, prompted)
    shape = result["disputed"]["shape"]
    assert (shape["n"], shape["named"].k, shape["judge right"], shape["checker right"], shape["neither"]) == (4, 3, 1, 1, 1)
    assert result["disputed"]["shape"]["unnamed, judge names the prompt"].k == 1  # item 3: "?", judge star, prompt star
    assert result["disputed"]["shape"]["unnamed, checker names the prompt"].k == 0
    assert result["disputed"]["colour"]["n"] == 0
    assert result["agreed"]["shape"]["person agrees"].k == 0  # the person saw a square where both said circle
    assert result["agreed"]["colour"]["person agrees"].k == 1
    assert result["agreed"]["style"]["named"].k == 0
    confidence = [dict.fromkeys(toyworld.ATTRIBUTES, p) for p in (0.99, 0.95, 0.5, 0.3, 0.97)]
    sure = audit.score(items, labels, judged, checked, prompted, confidence)["judge sure"]["shape"]
    assert (sure["named"].k, sure["named"].n, sure["unnamed"].k, sure["unnamed"].n) == (3, 4, 0, 1)
    with pytest.raises(ValueError, match="no label for 1 audited items"):
        audit.score(items, {k: v for k, v in labels.items() if k != (0, "shape")}, judged, checked, prompted)


@pytest.mark.parametrize("line, message", [
    ("3\tshape", "expected 'image id<TAB>attribute<TAB>label'"),
    ("3\tsize\tbig", "expected 'image id<TAB>attribute<TAB>label'"),
    ("3\tshape\thexagon", "'hexagon' is not a shape"),
])
def test_labels_file_rejects_what_it_cannot_read(tmp_path, line, message):
    path = tmp_path / "labels.tsv"
    path.write_text(f"# images {'0' * 64}\n1\tcolour\tpink\n{line}\n")
    with pytest.raises(ValueError, match=message):
        audit.read_labels(path)
    path.write_text("1\tcolour\tpink\n")
    with pytest.raises(ValueError, match="no '# images <sha256>' line"):
        audit.read_labels(path)


@pytest.fixture(scope="module")
def committed():
    results = json.loads(RESULTS.read_text())
    assert check_weights(results) == [], "the audit's verdicts describe other weights: rerun benchmarks/judge_audit.py score"
    return results


def test_committed_results_are_the_committed_labels_counted(committed):
    labels_file = REPO / committed["labels"]
    assert hashlib.sha256(labels_file.read_bytes()).hexdigest() == committed["labels_sha256"]
    images_sha, labels = audit.read_labels(labels_file)
    assert images_sha == committed["images_sha256"]
    items = [(it["image"], it["attribute"], it["kind"]) for it in committed["items"]]
    assert {(i, k) for i, k, _ in items} == set(labels), "the labels file and the audited items differ"
    assert all(labels[it["image"], it["attribute"]] == it["person"] for it in committed["items"])
    judged, checked, prompted, confidence = {}, {}, {}, {}
    for it in committed["items"]:
        prompted.setdefault(it["image"], dict(BLANK))[it["attribute"]] = it["prompt"]
        judged.setdefault(it["image"], dict(BLANK))[it["attribute"]] = it["judge"]
        checked.setdefault(it["image"], dict(BLANK))[it["attribute"]] = it["checker"]
        confidence.setdefault(it["image"], {})[it["attribute"]] = it["judge_confidence"]
    recount = audit.score(items, labels, judged, checked, prompted, confidence)
    for kind in ("disputed", "agreed", "judge sure"):
        for k in toyworld.ATTRIBUTES:
            for what, value in recount[kind][k].items():
                logged = committed[kind][k][what]
                assert (value.k, value.n) == (logged["k"], logged["n"]) if hasattr(value, "k") else value == logged, (kind, k, what)


def test_audited_verdicts_are_reproduced(committed, guessing_judge):
    """The study's first 72 images (the base prompts at sampling seed 7) drawn again: the judge and the checker give
    the audited items the verdicts the results file records."""
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    images = sdtune.sample(pipe, [toyworld.caption(s) for s in toyworld.base_prompts()], seed=7)
    judged, checked = guessing_judge.predict(images), checker.check_all(images)
    here = [it for it in committed["items"] if it["image"] < len(images)]
    assert len(here) >= 30
    same = [judged[it["attribute"]][it["image"]] == it["judge"] and checked[it["attribute"]][it["image"]] == it["checker"]
            for it in here]
    assert sum(same) >= len(here) - 1, f"{len(here) - sum(same)} of {len(here)} audited verdicts changed"
