"""Results files record what produced them, and say when the weights they measured have changed."""

import argparse
import hashlib
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from sdtune.evaluation import provenance
from sdtune.evaluation.provenance import (
    JUDGE_WEIGHTS,
    REPO,
    TINY_SD,
    check_weights,
    record,
    sha256,
    study_arguments,
    study_setup,
    write_figure,
    write_results,
)
from sdtune.evaluation.stats import Rate


def test_record_names_this_process_as_it_was_started(monkeypatch):
    """A script as `python path.py ...`, a module run with -m as `python -m module ...`: commands one can run again."""
    import __main__
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / "x.py"), "--seeds", "3"])
    monkeypatch.setattr(__main__, "__spec__", None)
    assert record()["command"] == "python benchmarks/x.py --seeds 3"
    monkeypatch.setattr(sys, "argv", [str(REPO / "sdtune" / "models" / "toy_loras.py"), "--measure"])
    monkeypatch.setattr(__main__, "__spec__", types.SimpleNamespace(name="sdtune.models.toy_loras"))
    assert record()["command"] == "python -m sdtune.models.toy_loras --measure"


def test_record_names_command_commit_machine_time_and_weights():
    rec = record("python benchmarks/x.py --seeds 3", weights=[TINY_SD, JUDGE_WEIGHTS])
    assert rec["command"] == "python benchmarks/x.py --seeds 3"
    assert rec["git"] is None or (len(rec["git"]["commit"]) == 40 and isinstance(rec["git"]["dirty"], bool))
    assert {"platform", "cpus", "cpu_capability", "torch", "device"} <= set(rec["machine"])
    assert rec["time"].endswith("+00:00")
    assert "sdtune/assets/judge/model.safetensors" in rec["weights"]  # relative to the checkout
    assert "sdtune/assets/tiny-sd/unet/diffusion_pytorch_model.safetensors" in rec["weights"]  # a folder: its files
    assert rec["weights"]["sdtune/assets/judge/model.safetensors"] == hashlib.sha256(JUDGE_WEIGHTS.read_bytes()).hexdigest()


def test_write_results_is_json_with_provenance_and_refuses_to_overwrite(tmp_path):
    weights = tmp_path / "lora.safetensors"
    weights.write_bytes(b"weights v1")
    path = write_results(tmp_path / "r.json", {"shape": Rate(23, 24)}, weights=[weights], command="test")
    saved = json.loads(path.read_text())
    assert saved["shape"] == Rate(23, 24).as_dict() and saved["provenance"]["command"] == "test"
    assert saved["provenance"]["weights"] == {str(weights.resolve()): sha256(weights)}
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_results(tmp_path / "r.json", {}, command="test")
    write_results(tmp_path / "r.json", {"again": 1}, command="test", overwrite=True)
    assert json.loads(path.read_text())["again"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora.safetensors", "r.json"]  # no temporary file left


def test_write_figure_leaves_a_whole_png_and_closes_the_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    path = write_figure(tmp_path / "grid.png", fig, dpi=40)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no staged leftover
    assert fig.number not in plt.get_fignums()


def test_check_weights_catches_changed_and_missing_files(tmp_path):
    weights = tmp_path / "lora.safetensors"
    weights.write_bytes(b"weights v1")
    saved = json.loads(write_results(tmp_path / "r.json", {}, weights=[weights], command="test").read_text())
    assert check_weights(saved) == [] and check_weights(saved["provenance"]) == []
    weights.write_bytes(b"weights v2")
    assert check_weights(saved) == [f"{weights.resolve()}: sha256 changed since the measurement (the figures describe other weights)"]
    weights.unlink()
    assert check_weights(saved) == [f"{weights.resolve()}: missing"]
    with pytest.raises(ValueError, match="no 'weights'"):
        check_weights({"provenance": {}})


def test_bad_inputs_are_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        record("x", weights=[tmp_path / "nope.safetensors"])
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        record("x", weights=[tmp_path])
    with pytest.raises(ValueError, match="adds the 'provenance' key itself"):
        write_results(tmp_path / "r.json", {"provenance": 1}, command="x")
    with pytest.raises(TypeError, match="cannot write a set"):
        write_results(tmp_path / "s.json", {"x": {1, 2}}, command="x")
    assert not (tmp_path / "s.json").exists()


def test_every_study_takes_the_same_options_and_refuses_bad_seeds_before_work(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    study_arguments(parser, "x-study", tmp_path / "x.json", seeds="0,1,2")
    args = parser.parse_args(["--work", str(tmp_path / "work"), "--threads", "1"])
    threads = torch.get_num_threads()
    try:
        assert study_setup(parser, args, min_seeds=3) == ([0, 1, 2], tmp_path / "work") and (tmp_path / "work").is_dir()
        assert torch.get_num_threads() == 1 and args.out == str(tmp_path / "x.json")
    finally:
        torch.set_num_threads(threads)
    for seeds, message in (("0,0,1", "given twice"), ("0,1", "at least 3 seeds"), ("a,b", "comma-separated integers")):
        args = parser.parse_args(["--seeds", seeds, "--work", str(tmp_path / seeds)])
        with pytest.raises(SystemExit):
            study_setup(parser, args, min_seeds=3)
        assert message in capsys.readouterr().err and not (tmp_path / seeds).exists(), seeds
    args = parser.parse_args(["--judge-sure", "1", "--work", str(tmp_path / "sure")])
    with pytest.raises(SystemExit):
        study_setup(parser, args)
    assert "--judge-sure: sure=1.0: the judge's threshold is a probability in [0, 1)" in capsys.readouterr().err and not (tmp_path / "sure").exists()


def test_a_work_folder_is_reused_only_by_the_code_and_options_that_made_it(tmp_path, capsys, monkeypatch):
    """Cached outcomes are never read back under another --judge-sure, another study option or other code; a folder
    with no record of what made it is refused too (its outcomes may come from any earlier version)."""
    parser = argparse.ArgumentParser()
    study_arguments(parser, "x-study", tmp_path / "x.json")
    work = tmp_path / "work"
    threads = torch.get_num_threads()
    try:
        study_setup(parser, parser.parse_args(["--work", str(work)]))  # the default: the sure judge
        made_by = json.loads((work / "made_by.json").read_text())
        assert made_by["options"]["judge_sure"] == 0.9 and made_by["code"] == provenance.code_fingerprint()
        study_setup(parser, parser.parse_args(["--work", str(work), "--judge-sure", "0.9", "--seeds", "3,4,5"]))  # more seeds: reused
        with pytest.raises(SystemExit):
            study_setup(parser, parser.parse_args(["--work", str(work), "--judge-sure", "0"]))
        assert "computed with other options (--judge-sure 0.9)" in capsys.readouterr().err
        monkeypatch.setattr(provenance, "code_fingerprint", lambda: "another version")
        with pytest.raises(SystemExit):
            study_setup(parser, parser.parse_args(["--work", str(work), "--judge-sure", "0.9"]))
        assert "other code (sdtune or this script changed since)" in capsys.readouterr().err
        old = tmp_path / "old"  # a folder from before the record: its outcomes could be any version's
        old.mkdir()
        (old / "seed0.json").write_text("{}")
        with pytest.raises(SystemExit):
            study_setup(parser, parser.parse_args(["--work", str(old)]))
        assert "no record of the code and options that made them" in capsys.readouterr().err
        assert sorted(p.name for p in old.iterdir()) == ["seed0.json"], "a refused folder is left as it was"
    finally:
        torch.set_num_threads(threads)


def test_an_option_that_only_chooses_arms_does_not_refuse_the_work_folder(tmp_path, capsys):
    """A study whose arms are cached one by one (style_bar's --kinds) reruns with fewer or more arms on the same
    --work; any other option still refuses it."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--kinds", default="a,b")
    parser.add_argument("--style", default="dotted")
    study_arguments(parser, "x-study", tmp_path / "x.json")
    work = str(tmp_path / "work")
    threads = torch.get_num_threads()
    try:
        study_setup(parser, parser.parse_args(["--work", work]), selectors=["kinds"])
        study_setup(parser, parser.parse_args(["--work", work, "--kinds", "b"]), selectors=["kinds"])
        with pytest.raises(SystemExit):
            study_setup(parser, parser.parse_args(["--work", work, "--style", "striped"]), selectors=["kinds"])
        assert "computed with other options (--style dotted)" in capsys.readouterr().err
        with pytest.raises(SystemExit):  # without the selector, the arms chosen are part of the record
            study_setup(parser, parser.parse_args(["--work", work, "--kinds", "b"]))
        assert "computed with other options (--kinds None)" in capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)


def test_a_seed_is_run_once_and_kept_whole(tmp_path):
    import numpy as np

    from sdtune.evaluation.provenance import seed_outcomes, seed_pictures

    runs = []

    def run():
        runs.append(1)
        return {"shaded": [True, False]}, {"grid": np.zeros((2, 4, 4, 3), dtype=np.uint8)}

    first = seed_outcomes(tmp_path, 3, run)
    again = seed_outcomes(tmp_path, 3, run)
    assert len(runs) == 1 and first == again and first["shaded"] == [True, False] and first["seconds"] >= 0
    with np.load(seed_pictures(tmp_path, 3)) as pictures:
        assert pictures["grid"].shape == (2, 4, 4, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed3.json", "seed3_images.npz"], "no temporary file left"

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        seed_outcomes(tmp_path, 4, interrupted)
    assert not (tmp_path / "seed4.json").exists(), "an unfinished seed leaves nothing to be read as finished"


def test_a_json_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from sdtune.io import write_json

    path = write_json(tmp_path / "seed0.json", {"outcomes": [True, False]})
    assert json.loads(path.read_text()) == {"outcomes": [True, False]}

    def half_then_interrupted(self: Path, text: str, *args, **kwargs):  # the process dies half-way through the write
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", half_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"outcomes": [False, False, True]})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"outcomes": [True, False]}, "the old file is intact"
    assert [p.name for p in tmp_path.iterdir()] == ["seed0.json"], "no temporary file is left"


def test_a_tiny_study_starts_from_checked_options_the_tiny_pipeline_and_the_judge(tmp_path, capsys):
    from sdtune.evaluation.provenance import start_tiny_study, study_parser

    parser = study_parser("A study.\n\nMore.", "x-study", tmp_path / "x.json", seeds_help="training seeds")
    parser.add_argument("--own", default="a", help="an option of this study")
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit):
            start_tiny_study(parser, parser.parse_args(["--seeds", "0,1", "--work", str(tmp_path / "refused")]))
        assert "at least 3 seeds" in capsys.readouterr().err and not (tmp_path / "refused").exists()
        args = parser.parse_args(["--work", str(tmp_path / "work"), "--own", "b"])
        study = start_tiny_study(parser, args)
        assert (study.seeds, study.work, study.args.out, study.args.own) == ([0, 1, 2], tmp_path / "work", str(tmp_path / "x.json"), "b")
        assert study.judge.sure == 0.9 and study.pipe.unet.config.sample_size == 8 and torch.get_num_threads() == 1
        ran = []
        outcomes = study.outcomes(lambda seed: (ran.append(seed) or {"seed": seed}, {}))
        assert ran == [0, 1, 2] and [outcomes[s]["seed"] for s in (0, 1, 2)] == [0, 1, 2]
        assert study.outcomes(lambda seed: (ran.append(seed) or {}, {}))[1]["seed"] == 1 and ran == [0, 1, 2], "cached"
    finally:
        torch.set_num_threads(threads)
