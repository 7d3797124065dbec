"""course/README.md's "CPU: time, peak memory" column, its footer and README's figures for a classroom are the record
that `python course/run_chapters.py --jobs 2 --time-only --record course/times_cpu.json` wrote (command, commit and
machine in the file), and that record is within the course's budget."""

import json
import re

from sdtune.evaluation.provenance import REPO, check_weights

RECORD = json.loads((REPO / "course" / "times_cpu.json").read_text())
CHAPTERS = RECORD["chapters"]


def _table_cells() -> dict[str, str]:
    """{notebook file name: its row's "CPU: time, peak memory" cell} from course/README.md."""
    cells = {}
    for line in (REPO / "course" / "README.md").read_text().splitlines():
        found = re.match(r"\| \[\d\d [^\]]*\]\((\d\d_[^)]+\.ipynb)\)", line)
        if found:
            cells[found.group(1)] = [c.strip() for c in line.strip().strip("|").split("|")][3]
    return cells


def test_the_record_is_every_chapter_of_a_clean_checkout_within_budget():
    assert check_weights(RECORD) == [] and not RECORD["provenance"]["git"]["dirty"]
    assert sorted(CHAPTERS) == sorted(p.name for p in (REPO / "course").glob("[0-9][0-9]_*.ipynb"))
    assert not RECORD["failed_or_over_budget"] and all(not c["error"] for c in CHAPTERS.values())
    assert RECORD["total_wall_seconds"] <= RECORD["budget"]["total_seconds"]
    assert all(c["peak_gib"] <= RECORD["budget"]["gib_per_chapter"] for c in CHAPTERS.values())


def test_the_course_readme_prints_the_record():
    cells = _table_cells()
    assert set(cells) == set(CHAPTERS)
    for name, c in CHAPTERS.items():
        assert cells[name] == f"{round(c['seconds'])} s, {c['peak_gib']:.2f} GiB", name
    text = " ".join((REPO / "course" / "README.md").read_text().split())
    assert f"{sum(c['seconds'] for c in CHAPTERS.values()) / 60:.1f} minutes of chapter time" in text
    assert f"{RECORD['total_wall_seconds'] / 60:.1f} minutes of wall-clock time" in text


def test_the_readme_gives_the_records_range():
    text = " ".join((REPO / "README.md").read_text().split())
    seconds = sorted(round(c["seconds"]) for c in CHAPTERS.values())
    assert f"{seconds[0]} to {seconds[-1]} s" in text
    peaks = sorted(c["peak_gib"] for c in CHAPTERS.values())
    assert f"{peaks[0]:.2f}-{peaks[-1]:.2f} GiB" in text
