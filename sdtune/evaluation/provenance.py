"""What every committed log and results file records, so a figure can be traced to what produced it.

    write_results("benchmarks/results/x.json", {"agreement": ...}, weights=[TINY_SD, JUDGE_WEIGHTS], overwrite=True)
    check_weights(json.load(open("benchmarks/results/x.json")))      # [] while the weights are the ones measured

A study script takes the same options as every other (`study_arguments`, `study_setup`): --seeds, --threads,
--work (its cache: a rerun adds only what is missing) and --out.

The record: the command, the git commit (and whether the tree had uncommitted changes), the machine (platform,
CPU count, torch version, device), the time, and the sha256 of each weights file measured. A test that
compares a logged figure with a re-measurement first checks that the weights are still the logged ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from ..io import ASSETS, staged_file, write_json
from .judge import SURE, check_sure
from .stats import MIN_SEEDS

REPO = Path(__file__).resolve().parents[2]  # the checkout sdtune runs from (when it is one)
TINY_SD = ASSETS / "tiny-sd"
JUDGE_WEIGHTS = ASSETS / "judge" / "model.safetensors"


def sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, as `sha256sum` prints it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; a folder (a diffusers pipeline, a training output) stands for every .safetensors inside it."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("*.safetensors"))
            if not found:
                raise FileNotFoundError(f"{p} holds no .safetensors file: pass the weights files it should record.")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"Weights file {p} does not exist: record only files that were measured.")
    return files


def _shown(path: Path) -> str:
    """A path relative to the checkout when inside it (the record stays valid in another clone), else absolute."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine() -> dict:
    """Where it ran: platform, Python, CPU count and instruction set, torch and its threads, and the device.

    The instruction set is the one torch's CPU kernels use (AVX2, AVX512, ...): kernels for different instruction
    sets may add floats in another order, so it is what to compare first when a rerun differs in its last bits."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def record(command: str | Sequence[str] | None = None, weights: Iterable[str | os.PathLike] = ()) -> dict:
    """The provenance of a measurement made now. `command`: the command line (default: this process's)."""
    if command is None:  # this process's: "python benchmarks/x.py --flag", "python -m sdtune.models.x --flag", or
        program = Path(sys.argv[0])  # "sdtune train ..." for a console script
        module = getattr(sys.modules["__main__"].__spec__, "name", None)  # set for `python -m module` only
        command = ["python", "-m", module] if module else ["python", _shown(program)] if program.suffix == ".py" else [program.name]
        command += sys.argv[1:]
    commit = _git("rev-parse", "HEAD")
    return {
        "command": command if isinstance(command, str) else " ".join(command),
        "git": {"commit": commit, "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))} if commit else None,
        "machine": machine(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "weights": {_shown(p): sha256(p) for p in _weights_files(weights)},
    }


def write_results(path: str | os.PathLike, payload: dict, weights: Iterable[str | os.PathLike] = (),
                  command: str | Sequence[str] | None = None, overwrite: bool = False) -> Path:
    """Write `payload` as JSON with its provenance under "provenance", atomically (never half-written).

    An existing file is replaced only with `overwrite=True` (a benchmark regenerating its own results file).
    """
    path = Path(path)
    if "provenance" in payload:
        raise ValueError("write_results adds the 'provenance' key itself: remove it from the payload.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists: pass overwrite=True to replace it, or choose another path.")
    text = json.dumps({"provenance": record(command, weights), **payload}, indent=1, default=_plain)
    with staged_file(path) as tmp:
        tmp.write_text(text + "\n")
        readable(tmp)
    return path


def write_figure(path: str | os.PathLike, fig, dpi: int) -> Path:
    """Save a matplotlib figure as a PNG beside a results file, atomically (never half-written), and close it."""
    import matplotlib.pyplot as plt  # here, not at import: only the benchmarks that draw need matplotlib

    path = Path(path)
    with staged_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
        readable(tmp)
    plt.close(fig)
    return path


def readable(path: Path) -> None:
    """Give a staged file a normal file's permissions (the temporary file it was is private to its owner)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _plain(value):
    """JSON for the values results hold: Rate and Difference (their as_dict), numpy and torch scalars."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"write_results cannot write a {type(value).__name__}: convert it to numbers, strings, lists or dicts.")


def check_weights(results: dict) -> list[str]:
    """What no longer matches: one line per recorded weights file that is missing or whose sha256 changed.

    `results`: a file written by `write_results` (loaded) or its "provenance" record. Empty list: all match.
    """
    recorded = results.get("provenance", results).get("weights")
    if recorded is None:
        raise ValueError("This record has no 'weights': it was not written by sdtune.evaluation.provenance.write_results.")
    problems = []
    for shown, digest in recorded.items():
        path = Path(shown) if Path(shown).is_absolute() else REPO / shown
        if not path.is_file():
            problems.append(f"{shown}: missing")
        elif sha256(path) != digest:
            problems.append(f"{shown}: sha256 changed since the measurement (the figures describe other weights)")
    return problems


def study_arguments(parser: argparse.ArgumentParser, name: str, results: str | os.PathLike, seeds: str = "0,1,2",
                    seeds_help: str = "training seeds", threads: int = 1) -> None:
    """Add the options every study in benchmarks/ takes: --seeds, --threads, --work, --out and --judge-sure."""
    parser.add_argument("--seeds", default=seeds, help=f"{seeds_help}, comma-separated (default {seeds})")
    parser.add_argument("--threads", type=int, default=threads, help=f"torch threads (default {threads})")
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "sdtune" / name),
                        help="data, trained runs and per-seed outcomes, kept so that a rerun adds only what is missing "
                             "(a folder made by other code or options is refused)")
    parser.add_argument("--out", default=str(results), help="results file (JSON); a picture, if any, is written beside it")
    parser.add_argument("--judge-sure", type=float, default=SURE,
                        help="the judge names a value only where its probability is at least this, else \"unsure\" "
                             f"(default {SURE}: the threshold benchmarks/judge_agreement.py tested; 0 names every value)")


def study_setup(parser: argparse.ArgumentParser, args: argparse.Namespace, min_seeds: int = 1,
                selectors: Sequence[str] = ()) -> tuple[list[int], Path]:
    """Check --seeds (distinct integers, at least `min_seeds`), --threads, --judge-sure and that --work was made by this
    code with these options (`made_by.json`), set torch's threads, make --work.

    `selectors`: options (as attribute names, e.g. "kinds") that only choose which arms run, each arm cached on its
    own: they are left out of the record, so a rerun with fewer or more arms reuses the arms already in --work.

    Returns (seeds, work). A bad value stops the script with one message naming the option, before any work."""
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 0,1,2")
    if len(set(seeds)) != len(seeds):
        parser.error(f"--seeds {args.seeds}: a seed is given twice; give distinct seeds, e.g. 0,1,2")
    if len(seeds) < min_seeds:
        parser.error(f"--seeds {args.seeds}: this study needs at least {min_seeds} seeds (its differences are paired over seeds), e.g. 0,1,2")
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: give at least 1")
    try:
        check_sure(args.judge_sure)
    except ValueError as e:
        parser.error(f"--judge-sure: {e}")
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    made_by = {"code": code_fingerprint(), "options": {k: v for k, v in sorted(vars(args).items()) if k not in ("seeds", "work", "out", *selectors)}}
    record_file = work / "made_by.json"  # the code and options that computed the outcomes cached in --work
    if record_file.is_file():
        before = json.loads(record_file.read_text())
        if before != made_by:
            old_options = before["options"]
            changed = [f"--{k.replace('_', '-')} {old_options.get(k)}" for k in made_by["options"] if old_options.get(k) != made_by["options"][k]]
            what = f"other options ({', '.join(changed)})" if changed else "other code (sdtune or this script changed since)"
            parser.error(f"--work {work} holds outcomes computed with {what}: give a fresh --work, so that no cached "
                         f"outcome is counted under code or options that did not compute it")
    elif work.is_dir() and any(work.iterdir()):
        parser.error(f"--work {work} holds files but no record of the code and options that made them: give a fresh "
                     f"--work (or empty this one), so that no stale outcome is counted")
    work.mkdir(parents=True, exist_ok=True)
    write_json(record_file, made_by)
    return seeds, work


def code_fingerprint() -> str:
    """sha256 over the Python files of the sdtune package and of the running script: the code that computes a study's
    outcomes. Any edit to either changes it, so a cache made by other code is never read as this code's."""
    package = Path(__file__).resolve().parents[1]
    script = Path(sys.argv[0]).resolve()
    files = sorted(package.rglob("*.py")) + ([script] if script.suffix == ".py" and script.is_file() else [])
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(package.parent) if package in path.parents else Path(path.name)
        digest.update(name.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def seed_pictures(work: Path, seed: int) -> Path:
    """Where `seed_outcomes` keeps a training seed's pictures (arrays by name, for a study's figure)."""
    return work / f"seed{seed}_images.npz"


def seed_outcomes(work: Path, seed: int, run: Callable[[], tuple[dict, dict[str, np.ndarray]]]) -> dict:
    """One training seed of a study: read from `work` where an earlier run finished it, else `run()`, which returns
    (outcomes, pictures). The outcomes get the seed's "seconds"; the pictures are kept in `seed_pictures`, then the
    outcomes in seed{seed}.json, each written whole, so an interrupted seed is run again, never read half-written."""
    cached = work / f"seed{seed}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    start = time.perf_counter()
    outcomes, pictures = run()
    outcomes["seconds"] = time.perf_counter() - start
    with staged_file(seed_pictures(work, seed)) as tmp:
        np.savez_compressed(tmp, **pictures)
    write_json(cached, outcomes)
    return outcomes


@dataclasses.dataclass
class TinyStudy:
    """What a seeded study of the tiny model starts from: its checked options, seeds and --work folder, the tiny
    pipeline (progress bars off) and the judge at --judge-sure."""

    args: argparse.Namespace
    seeds: list[int]
    work: Path
    pipe: object
    judge: object

    def outcomes(self, run_seed: Callable[[int], tuple[dict, dict[str, np.ndarray]]]) -> dict[int, dict]:
        """Every seed's outcomes: `run_seed(seed)` where `seed_outcomes` finds none in --work."""
        return {seed: seed_outcomes(self.work, seed, functools.partial(run_seed, seed)) for seed in self.seeds}


def study_parser(description: str, name: str, results: str | os.PathLike, seeds: str = "0,1,2",
                 seeds_help: str = "training seeds", threads: int = 1) -> argparse.ArgumentParser:
    """A study's command line with the options every study takes (`study_arguments`); the study adds its own.
    `description`: the script's docstring (its first line is the help's)."""
    parser = argparse.ArgumentParser(description=description.split("\n")[0])
    study_arguments(parser, name, results, seeds=seeds, seeds_help=seeds_help, threads=threads)
    return parser


def start_tiny_study(parser: argparse.ArgumentParser, args: argparse.Namespace, min_seeds: int = MIN_SEEDS,
                     selectors: Sequence[str] = ()) -> TinyStudy:
    """Check the options every study takes (`study_setup`: a bad one stops the script before any work), then load the
    tiny pipeline and the judge at --judge-sure."""
    from ..models.loading import load_pipeline
    from .judge import load_judge

    seeds, work = study_setup(parser, args, min_seeds=min_seeds, selectors=selectors)
    pipe = load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    return TinyStudy(args, seeds, work, pipe, load_judge(sure=args.judge_sure))
