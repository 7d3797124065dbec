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
    for command in ("demo", "sample", "eval", "toy-data", "train", "convert", "pretrain", "info"):
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
          "--lora", f"{tmp_path / 'h' / 'h.safetensors'}:0.8", "--lora", str(tmp_path / "l"), "--out", str(tmp_path / "s.png")])
    assert Image.open(tmp_path / "s.png").size == (64, 64)
    main(["train", "full", "--model", str(tiny_path), "--data", str(tmp_path / "d"), "--out", str(tmp_path / "f"),
          "--steps", "1", "--batch-size", "2"])
    assert (tmp_path / "f" / "model_index.json").is_file() and (tmp_path / "f" / "unet").is_dir()


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
    assert Image.open(tmp_path / "demo" / "before_after.png").size == (16 * 128, 2 * 128)
    assert "judge sees the prompted style" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["demo", "--model", str(tiny_path), "--out", str(tmp_path / "demo"), "--steps", "3"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "x.txt"], "name an image file"),
        (["--out", "x.png", "--steps", "0"], "must be positive"),
        (["--out", "x.png", "--lora", "missing-lora:0.5"], "--lora missing-lora: no such file"),
    ],
)
def test_sample_refuses_bad_options_before_loading_anything(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["sample", "--model", "tiny", "--prompt", "a red circle", *args])
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
