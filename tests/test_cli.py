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
    for command in ("demo", "sample", "eval", "toy-data", "train", "pretrain", "info"):
        assert command in result.stdout


def test_sample_writes_an_image_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "grid.png"
    main(["sample", "--prompt", "a green triangle on a gray background", "--num-images", "2", "--steps", "3", "--out", str(out)])
    assert Image.open(out).size == (128, 64)
    with pytest.raises(SystemExit) as error:
        main(["sample", "--prompt", "x", "--steps", "3", "--out", str(out)])
    assert error.value.code == 2
    assert "already exists" in capsys.readouterr().err


def test_unknown_model_is_one_clear_error():
    result = run("sample", "--model", "not-a-model", "--prompt", "x", "--out", "never.png")
    assert result.returncode == 2
    assert "Unknown model 'not-a-model'" in result.stderr and "Traceback" not in result.stderr


def test_toy_data_then_train_lora_from_the_command_line(tmp_path):
    main(["toy-data", "--out", str(tmp_path / "d"), "--n", "4", "--styles", "dotted", "--shapes", "star"])
    assert "dotted" in (tmp_path / "d" / "0000.txt").read_text() and "star" in (tmp_path / "d" / "0000.txt").read_text()
    main(["train", "lora", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "l"), "--steps", "2", "--batch-size", "2"])
    assert (tmp_path / "l" / "pytorch_lora_weights.safetensors").is_file()


def test_lora_spec_parsing():
    assert _parse_lora("out/lora") == ("out/lora", 1.0)
    assert _parse_lora("out/lora:0.5") == ("out/lora", 0.5)
    assert _parse_lora("C:/loras/x") == ("C:/loras/x", 1.0)
