"""The results files the chapters read are found wherever a notebook runs, and a missing one is one clear error."""

import json
import re
import urllib.request
from pathlib import Path

import pytest

from sdtune.course import studies

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "course").glob("[0-9][0-9]_*.ipynb"))


def test_a_committed_file_is_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a notebook copied elsewhere (JupyterLab's root, a student's home)
    found = studies.repo_file("benchmarks/results/variants_study_cpu.json")
    assert found == ROOT / "benchmarks/results/variants_study_cpu.json" and json.loads(found.read_text())["settings"]


def test_without_a_checkout_the_file_is_fetched_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(studies, "REPO", tmp_path / "site-packages")  # installed from git: no benchmarks/ beside sdtune
    monkeypatch.setenv("SDTUNE_CACHE", str(tmp_path / "cache"))
    asked = []

    class Response:
        def __init__(self, url):
            asked.append(url)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return b'{"settings": {}}'

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Response(url))
    first = studies.repo_file("benchmarks/results/x.json")
    again = studies.repo_file("benchmarks/results/x.json")
    assert first == again == tmp_path / "cache" / "repository" / "benchmarks/results/x.json"
    assert asked == [studies.RAW + "benchmarks/results/x.json"] and json.loads(first.read_text()) == {"settings": {}}


def test_offline_and_without_a_checkout_is_one_error_that_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(studies, "REPO", tmp_path / "site-packages")
    monkeypatch.setenv("SDTUNE_CACHE", str(tmp_path / "cache"))

    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match=r"benchmarks/results/x\.json.*git clone"):
        studies.repo_file("benchmarks/results/x.json")
    assert not (tmp_path / "cache" / "repository" / "benchmarks/results/x.json").exists(), "nothing half-written"
    for outside in ("../secrets.json", "/etc/passwd"):
        with pytest.raises(ValueError, match="inside the repository"):
            studies.repo_file(outside)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.name[:2] for p in CHAPTERS])
def test_no_chapter_reads_a_file_relative_to_its_working_directory(chapter):
    code = "".join("".join(c["source"]) for c in json.loads(chapter.read_text())["cells"] if c["cell_type"] == "code")
    assert not re.search(r"""["']\.\./""", code), "read committed files with sdtune.course.studies.repo_file"
