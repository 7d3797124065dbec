"""The committed results files a chapter reads, found wherever the notebook runs.

A chapter's comparisons rest on a study in `benchmarks/` whose results file is committed in the repository. The
chapter names it by its path there, so that the course's prose test can tie every number to it:

    study = json.loads(repo_file("benchmarks/results/variants_study_cpu.json").read_text())

The file is read from the checkout sdtune is imported from (a clone, an editable install), whatever the notebook's
working directory; where sdtune was installed without one (Colab's `pip install git+https://...`), it is fetched
once from the repository into the cache ($SDTUNE_CACHE or ~/.cache/sdtune, then `repository/`).
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from ..evaluation.provenance import REPO
from ..io import staged_file

REPOSITORY = "https://github.com/sdtune/sdtune"
RAW = "https://raw.githubusercontent.com/sdtune/sdtune/main/"


def cache_folder() -> Path:
    """Where fetched repository files are kept: $SDTUNE_CACHE or ~/.cache/sdtune, then repository/."""
    return Path(os.environ.get("SDTUNE_CACHE", Path.home() / ".cache" / "sdtune")) / "repository"


def repo_file(relative: str) -> Path:
    """A committed file of the sdtune repository, by its path there ("benchmarks/results/x.json")."""
    if Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise ValueError(f"repo_file({relative!r}): give a path inside the repository, such as benchmarks/results/x.json.")
    for found in (REPO / relative, cache_folder() / relative):
        if found.is_file():
            return found
    url = RAW + relative
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            content = response.read()
    except OSError as error:
        raise FileNotFoundError(
            f"{relative}: this sdtune install ({REPO}) has no copy of the repository, and fetching {url} failed "
            f"({error}). Open the course from a clone: git clone {REPOSITORY} && pip install -e ./sdtune") from None
    with staged_file(cache_folder() / relative) as tmp:
        tmp.write_bytes(content)
    return cache_folder() / relative
