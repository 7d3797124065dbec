"""Checkpoints survive `kill -9` exactly; `accelerate launch` runs the trainer data-parallel."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from sdtune.cli import main as cli
from sdtune.data import toyworld


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return toyworld.write_dataset(toyworld.sample_scenes(8, seed=2, styles=["dotted"]), tmp_path_factory.mktemp("d") / "dotted")


def single_thread_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")


def args(tiny_path, folder, out):
    return ["train", "lora", "--model", str(tiny_path), "--data", str(folder), "--out", str(out), "--steps", "60",
            "--batch-size", "4", "--lr", "5e-3", "--checkpoint-every", "10", "--seed", "3"]


def sdtune(*argv: str) -> None:
    """Run the command in its own process, with the same thread count every time (float sums depend on it)."""
    subprocess.run([sys.executable, "-m", "sdtune", *argv], env=single_thread_env(), check=True, capture_output=True)


def test_kill_9_then_resume_ends_with_identical_weights(tiny_path, folder, tmp_path):
    sdtune(*args(tiny_path, folder, tmp_path / "whole"))

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "sdtune", *args(tiny_path, folder, out)], env=single_thread_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-0000020").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run must be killed, not finish"
    assert not (out / "pytorch_lora_weights.safetensors").exists()

    sdtune(*args(tiny_path, folder, out), "--resume")
    whole, resumed = load_file(tmp_path / "whole" / "pytorch_lora_weights.safetensors"), load_file(out / "pytorch_lora_weights.safetensors")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    losses = lambda d: json.loads((d / "loss.json").read_text())["loss"]  # noqa: E731
    assert losses(tmp_path / "whole") == losses(out)
    assert json.loads((out / "loss.json").read_text())["resumed_at_step"] >= 20


def test_resume_refuses_changed_settings_and_missing_checkpoints(tiny_path, folder, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli(args(tiny_path, folder, tmp_path / "none") + ["--resume"])
    assert "no checkpoint" in capsys.readouterr().err
    out = tmp_path / "o"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(_one_checkpoint(tiny_path, folder, tmp_path), out / "checkpoints" / "step-0000010")
    changed = args(tiny_path, folder, out) + ["--resume", "--rank", "16"]
    with pytest.raises(SystemExit):
        cli(changed)
    assert "other settings (rank" in capsys.readouterr().err


def _one_checkpoint(tiny_path, folder, tmp_path):
    a = args(tiny_path, folder, tmp_path / "c")
    a[a.index("--steps") + 1] = "11"
    a[a.index("--out") + 1] = str(tmp_path / "c")
    cli(a)
    return tmp_path / "c" / "checkpoints" / "step-0000010"


def test_accelerate_launch_trains_with_two_processes(tiny_path, folder, tmp_path):
    """Two CPU processes (gloo): DDP averages the gradients, each process draws its own batches."""
    out = tmp_path / "ddp"
    env = dict(single_thread_env(), ACCELERATE_USE_CPU="1")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sdtune"]
    train = args(tiny_path, folder, out)
    train[train.index("--steps") + 1] = "4"
    done = subprocess.run([*launch, *train], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1, "only the main process reports"
    log = json.loads((out / "loss.json").read_text())
    assert log["processes"] == 2 and len(log["loss"]) == 4

    sdtune(*args(tiny_path, folder, tmp_path / "one"), "--steps", "4")
    two, one = load_file(out / "pytorch_lora_weights.safetensors"), load_file(tmp_path / "one" / "pytorch_lora_weights.safetensors")
    assert two.keys() == one.keys()
    assert any(not torch.equal(two[k], one[k]) for k in two), "the second process's batches must change the update"
