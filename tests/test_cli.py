import json
import subprocess
import sys

import pytest
from PIL import Image

from sdtune.cli import _parse_lora, main


def run(*args):
    return subprocess.run([sys.executable, "-m", "sdtune", *args], capture_output=True, text=True, timeout=600)


def test_help_lists_the_subcommands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("demo", "sample", "eval", "toy-data", "train", "convert", "merge", "pretrain", "info"):
        assert command in result.stdout


def test_sample_writes_an_image_and_refuses_to_overwrite(tiny_path, tmp_path, capsys):
    out = tmp_path / "grid.png"
    main(["sample", "--model", str(tiny_path), "--prompt", "a green triangle on a gray background",
          "--num-images", "2", "--steps", "3", "--out", str(out)])
    assert Image.open(out).size == (128, 64)
    with pytest.raises(SystemExit) as error:
        main(["sample", "--model", str(tiny_path), "--prompt", "x", "--steps", "3", "--out", str(out)])
    assert error.value.code == 2
    assert "already exists" in capsys.readouterr().err


def test_unknown_model_is_one_clear_error():
    result = run("sample", "--model", "not-a-model", "--prompt", "x", "--out", "never.png")
    assert result.returncode == 2
    assert "Unknown model 'not-a-model'" in result.stderr and "Traceback" not in result.stderr


def test_toy_data_then_train_lora_from_the_command_line(tiny_path, tmp_path):
    main(["toy-data", "--out", str(tmp_path / "d"), "--n", "4", "--styles", "dotted", "--shapes", "star"])
    assert "dotted" in (tmp_path / "d" / "0000.txt").read_text() and "star" in (tmp_path / "d" / "0000.txt").read_text()
    main(["train", "lora", "--model", str(tiny_path), "--data", str(tmp_path / "d"), "--out", str(tmp_path / "l"),
          "--steps", "2", "--batch-size", "2"])
    assert (tmp_path / "l" / "pytorch_lora_weights.safetensors").is_file()
    main(["train", "lora", "--adapter", "loha", "--model", str(tiny_path), "--data", str(tmp_path / "d"),
          "--out", str(tmp_path / "h"), "--steps", "2", "--batch-size", "2", "--lr", "1e-2"])
    main(["sample", "--model", str(tiny_path), "--prompt", "a dotted star", "--steps", "2",
          "--lora", f"{tmp_path / 'h' / 'h.safetensors'}:0.8", "--lora", str(tmp_path / "l"), "--method", "switch",
          "--out", str(tmp_path / "s.png")])
    assert Image.open(tmp_path / "s.png").size == (64, 64)
    main(["merge", str(tmp_path / "l"), str(tmp_path / "l" / "l.safetensors"), "--weights", "1,-1", "--model", str(tiny_path),
          "--out", str(tmp_path / "zero.safetensors")])
    from safetensors.torch import load_file

    from sdtune.algebra import layer_delta
    from sdtune.formats.kohya import group_kohya_layers

    assert all(layer_delta(layer).abs().max() < 1e-6 for layer in group_kohya_layers(load_file(tmp_path / "zero.safetensors")).values()), \
        "a LoRA minus itself (diffusers file - kohya file) is zero"
    main(["train", "full", "--model", str(tiny_path), "--data", str(tmp_path / "d"), "--out", str(tmp_path / "f"),
          "--steps", "1", "--batch-size", "2"])
    assert (tmp_path / "f" / "model_index.json").is_file() and (tmp_path / "f" / "unet").is_dir()


def test_dreambooth_textual_inversion_and_hypernetwork_from_the_command_line(tiny_path, tmp_path, monkeypatch):
    monkeypatch.setenv("SDTUNE_CACHE", str(tmp_path / "cache"))
    main(["toy-data", "--out", str(tmp_path / "d"), "--n", "3", "--shapes", "star", "--colours", "yellow"])
    for txt in (tmp_path / "d").glob("*.txt"):
        txt.write_text("a yellow <star> on a white background")
    tiny, data = ["--model", str(tiny_path), "--data", str(tmp_path / "d")], ["--steps", "1", "--batch-size", "2"]
    main(["train", "dreambooth", "--lora", *tiny, "--out", str(tmp_path / "db"), "--instance-prompt", "a sks diamond",
          "--class-prompt", "a diamond", "--num-class-images", "2", *data])
    assert (tmp_path / "db" / "pytorch_lora_weights.safetensors").is_file()
    assert len(list((tmp_path / "cache" / "class-images").glob("*/class-*.png"))) == 2
    main(["train", "textual-inversion", *tiny, "--out", str(tmp_path / "ti"), "--token", "<star>", "--init-word", "star", *data])
    main(["train", "hypernetwork", *tiny, "--out", str(tmp_path / "hn"), *data])
    main(["sample", "--model", str(tiny_path), "--prompt", "a <star> on a black background", "--steps", "2", "--embedding",
          str(tmp_path / "ti"), "--hypernetwork", f"{tmp_path / 'hn'}:0.5", "--lora", str(tmp_path / "db"), "--out", str(tmp_path / "s.png")])
    assert Image.open(tmp_path / "s.png").size == (64, 64)


def test_dreambooth_without_class_prompt_is_one_clear_error(tmp_path):
    result = run("train", "dreambooth", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--instance-prompt", "a sks toy")
    assert result.returncode == 2 and "needs --class-prompt" in result.stderr and "Traceback" not in result.stderr


def test_train_full_has_no_adapter_options():
    result = run("train", "full", "--help")
    assert result.returncode == 0 and "--rank" not in result.stdout and "--checkpoint-every" in result.stdout


def test_lora_spec_parsing():
    assert _parse_lora("out/lora") == ("out/lora", 1.0)
    assert _parse_lora("out/lora:0.5") == ("out/lora", 0.5)
    assert _parse_lora("C:/loras/x") == ("C:/loras/x", 1.0)


def test_demo_writes_its_grid_scores_and_lora(tiny_path, tmp_path, capsys):
    main(["demo", "--model", str(tiny_path), "--out", str(tmp_path / "demo"), "--steps", "3"])
    names = {p.name for p in (tmp_path / "demo").iterdir()}
    assert {"before_after.png", "scores.json", "lora", "data"} <= names
    assert Image.open(tmp_path / "demo" / "before_after.png").size == (16 * 128, 4 * 128)  # 32 prompts, before and after
    out = capsys.readouterr().out
    assert "judge sees the prompted style" in out and "/32 = " in out and "bar (style >= 80%" in out
    with pytest.raises(SystemExit):
        main(["demo", "--model", str(tiny_path), "--out", str(tmp_path / "demo"), "--steps", "3"])


@pytest.mark.slow
def test_the_demo_teaches_the_style_as_the_defaults_study_measured(tmp_path):
    """`sdtune demo` as a newcomer runs it, every option at its default (about 100 s on 2 quiet cores): the judge sees
    the new style more often after the LoRA than before (the difference resolved), and the rates after it fall within
    the spread of the defaults study's arm on the same folder (64 dotted images, three training seeds)."""
    from sdtune import defaults
    from sdtune.demo import run_demo
    from sdtune.evaluation.provenance import REPO
    from sdtune.evaluation.stats import Rate, bar_verdict, rate_difference
    from study_arms import assert_within_arm

    scores = run_demo(tmp_path / "demo")  # the shipped tiny model
    as_rate = lambda r: Rate(r["k"], r["n"])  # noqa: E731
    learned = rate_difference(as_rate(scores["after"]["style"]), as_rate(scores["before"]["style"]), "after", "before")
    assert learned.resolved and learned.estimate > 0, learned
    study = json.loads((REPO / "benchmarks" / "results" / "defaults_study_cpu.json").read_text())
    pooled = study["style"][defaults.STYLE_RECIPE]["dotted-64"]["guidance"][str(scores["guidance"])]
    assert_within_arm({m: as_rate(scores["after"][m]) for m in ("style", "shape", "colour")}, pooled, name="the demo")
    verdict, per_measure = bar_verdict({m: as_rate(scores["after"][m]) for m in scores["bar"]}, scores["bar"])
    assert (scores["bar_verdict"], scores["bar_per_measure"]) == (verdict, per_measure)  # what it printed is its rates' verdict


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "x.txt"], "name an image file"),
        (["--out", "x.png", "--steps", "0"], "--steps must be a positive integer"),
        (["--out", "x.png", "--lora", "missing-lora:0.5"], "--lora missing-lora: no such file"),
        (["--out", "x.png", "--lora", "one", "--method", "composite"], "give --lora at least twice"),
    ],
)
def test_sample_refuses_bad_options_before_loading_anything(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["sample", "--model", "tiny", "--prompt", "a red circle", *args])
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_every_help_text_prints_as_written():
    """argparse formats help with %: a field's help such as '~30% slower' must come out as written."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "sdtune", "train", "lora", "--help"], capture_output=True, text=True, check=True).stdout
    assert "30% slower" in " ".join(out.split())


def test_sample_with_the_lcm_scheduler_matches_the_api(tmp_path):
    """`sdtune sample --scheduler lcm` with the shipped LCM-LoRA draws what the Python API draws."""
    import numpy as np
    from diffusers import LCMScheduler

    import sdtune
    from sdtune.models.loading import ASSETS

    lcm = ASSETS / "loras" / "lcm.safetensors"
    out = tmp_path / "lcm.png"
    main(["sample", "--prompt", "a red circle on a white background", "--lora", str(lcm), "--scheduler", "lcm",
          "--steps", "2", "--guidance", "1", "--out", str(out)])
    pipe = sdtune.load_pipeline("tiny")
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    sdtune.load_adapter(pipe, lcm, "lcm")
    expected = sdtune.sample(pipe, ["a red circle on a white background"], 2, 1.0, seed=0)[0]
    assert np.abs(np.asarray(Image.open(out), dtype=int) - np.asarray(expected, dtype=int)).max() <= 1


def test_pretrain_hands_its_options_to_the_pretraining_script(capsys):
    with pytest.raises(SystemExit) as done:
        main(["pretrain", "--help"])
    assert done.value.code == 0 and "--encoder-anchor" in capsys.readouterr().out
    with pytest.raises(SystemExit) as error:
        main(["info", "--quick"])  # a pretraining option on another command is refused
    assert error.value.code == 2 and "unrecognized arguments: --quick" in capsys.readouterr().err
