"""Execute the course's chapters in place (fresh outputs), printing each one's time and peak memory.

    python course/run_chapters.py                 # every chapter, one after the other
    python course/run_chapters.py 00 03           # chapters whose file name starts with 00 or 03
    python course/run_chapters.py --jobs 2        # two chapters at a time, one CPU thread each
    python course/run_chapters.py --jobs 2 --time-only   # measure only: the notebooks are left as they are
    python course/run_chapters.py --jobs 2 --time-only --record course/times_cpu.json   # and keep the figures

`--record FILE` writes each chapter's time and peak memory, the wall-clock total and how they were run, with the
command, the commit and the machine (`sdtune.evaluation.provenance`): the figures of course/README.md's table.

Budgets (the course's promise for a 2-core CPU): 2 minutes and 3 GiB per chapter, run alone; 20 minutes for the
whole course. The tiny model's tensors are small, so one thread runs a chapter almost as fast as two (chapter 03:
135 s vs 122 s): with --jobs 2 on 2 cores the course takes about half the time, and each chapter's time is its
single-thread time.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

COURSE = Path(__file__).resolve().parent
BUDGET_SECONDS, BUDGET_GIB, TOTAL_SECONDS = 120, 3.0, 1200


def peak_gib(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process, in GiB."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():  # the kernel died
        return float("nan")
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def run(path: Path, write: bool = True) -> tuple[float, float, str]:
    """Execute one chapter in place; returns its time, peak memory and, if a cell failed, the error (the file is then
    left as it was)."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    start = time.time()
    with client.setup_kernel():
        pid = client.km.provisioner.process.pid
        try:
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
        except (CellExecutionError, DeadKernelError) as error:
            return time.time() - start, peak_gib(pid), f"cell {index}: {str(error).strip().splitlines()[-1]}"
        peak = peak_gib(pid)
    seconds = time.time() - start
    if write:
        nbformat.write(nb, path)
    return seconds, peak, ""


def option(args: list[str], name: str) -> tuple[str | None, list[str]]:
    """The value after `name` in `args` (None if absent), and `args` without the two."""
    if name not in args:
        return None, args
    at = args.index(name)
    if at + 1 == len(args):
        raise SystemExit(f"{name} needs a value (see the docstring: python course/run_chapters.py --help)")
    return args[at + 1], args[:at] + args[at + 2:]


def main(args: list[str]) -> int:
    if "--help" in args or "-h" in args:
        print(__doc__)
        return 0
    write = "--time-only" not in args
    args = [a for a in args if a != "--time-only"]
    jobs_given, args = option(args, "--jobs")
    record, args = option(args, "--record")
    jobs = int(jobs_given or 1)
    if record and Path(record).exists():
        raise SystemExit(f"--record {record}: the file exists; move it away first (a record is never overwritten silently)")
    chapters = sorted(p for p in COURSE.glob("[0-9][0-9]_*.ipynb") if not args or p.name[:2] in args)
    if jobs > 1:  # the kernels inherit this: an equal share of the cores each
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    start, failures, measured = time.time(), [], {}
    print(f"{'chapter':<44} {'time':>8} {'peak memory':>12}", flush=True)
    with ProcessPoolExecutor(jobs) as pool:  # each chapter in its own process, printed in order as they finish
        for path, (seconds, peak, error) in zip(chapters, pool.map(run, chapters, [write] * len(chapters))):
            measured[path.name] = {"seconds": round(seconds, 1), "peak_gib": round(peak, 2), "error": error}
            over = (jobs == 1 and seconds > BUDGET_SECONDS) or peak > BUDGET_GIB
            if over or error:
                failures.append(path.name)
            note = f"  FAILED, not written: {error}" if error else "  OVER BUDGET" if over else ""
            print(f"{path.name:<44} {seconds:7.1f}s {peak:10.2f} GiB{note}", flush=True)
    total = time.time() - start
    print(f"{'total (wall clock, ' + str(jobs) + ' at a time)':<44} {total:7.1f}s")
    if total > TOTAL_SECONDS:
        failures.append("the whole course")
    if failures:
        print("failed or over budget:", ", ".join(failures))
    if record:
        from sdtune.evaluation.provenance import TINY_SD, write_results

        write_results(record, {"jobs": jobs, "threads_per_chapter": os.environ.get("OMP_NUM_THREADS", "torch's default"),
                               "written": write, "chapters": measured, "total_wall_seconds": round(total, 1),
                               "budget": {"seconds_per_chapter": BUDGET_SECONDS, "gib_per_chapter": BUDGET_GIB,
                                          "total_seconds": TOTAL_SECONDS}, "failed_or_over_budget": failures},
                      weights=[TINY_SD])
        print(f"wrote {record}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
