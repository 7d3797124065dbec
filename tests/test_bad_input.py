"""What a new user's mistakes cost: nothing. One test per case of the bad-input probe (issue 20): sdtune deletes only
what it wrote, --resume only goes forward, interrupts leave a consistent folder, every number is checked before work,
and an error is one clear line (the traceback only with --debug).

Each case failed on the code before this suite (it destroyed a file, did something meaningless with exit 0, or ended
in a traceback). README.md's "Troubleshooting" has the table of what sdtune refuses and why.
"""

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from sdtune.cli import main as cli
from sdtune.data import toyworld
from sdtune.methods.dreambooth import MANIFEST, class_images


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return toyworld.write_dataset(toyworld.sample_scenes(4, seed=3, styles=["dotted"]), tmp_path_factory.mktemp("data") / "dotted")


def train_args(model, data, out, *extra):
    return ["train", "lora", "--model", str(model), "--data", str(data), "--out", str(out), "--steps", "3", "--batch-size", "2", *extra]


def refused(argv, capsys, *phrases):
    """The command stops with exit status 2 and one line naming the problem; no traceback."""
    capsys.readouterr()  # what earlier commands of the test printed
    with pytest.raises(SystemExit) as stop:
        cli(argv)
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
    assert stop.value.code == 2, err
    assert "Traceback" not in err and len(said) == 1, err
    for phrase in phrases:
        assert phrase in err, err
    return err


PROGRESS_BAR = re.compile(r"\d+%\|")  # tqdm's bars (loading a model): not messages


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def read_only(folder: Path):
    """A folder nobody can write into, root included (chattr +i); chmod where that is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    if not immutable:
        folder.chmod(0o555)
    try:
        probe = folder / ".probe"
        try:
            probe.touch()
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("cannot make a read-only folder here")
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True) if immutable else folder.chmod(0o755)


# ------------------------------------------------------------------------------------------------
# Lost: each must be impossible
# ------------------------------------------------------------------------------------------------

def test_out_equal_to_data_is_refused_even_with_overwrite(tiny_path, dataset, tmp_path, capsys):
    data = tmp_path / "dsA"
    data.mkdir()
    for p in dataset.iterdir():
        (data / p.name).write_bytes(p.read_bytes())
    before = snapshot(data)
    refused(train_args(tiny_path, data, data, "--overwrite"), capsys, "is the --data folder")
    assert snapshot(data) == before


def test_out_holding_the_data_folder_is_refused(tiny_path, dataset, tmp_path, capsys):
    project = tmp_path / "proj"
    (project / "imgs").mkdir(parents=True)
    for p in dataset.iterdir():
        (project / "imgs" / p.name).write_bytes(p.read_bytes())
    (project / "notes.txt").write_text("my notes")
    before = snapshot(project)
    refused(train_args(tiny_path, project / "imgs", project, "--overwrite"), capsys, "holds the --data folder")
    assert snapshot(project) == before


def test_overwrite_refuses_a_folder_with_files_sdtune_did_not_write(tiny_path, dataset, tmp_path, capsys):
    out = tmp_path / "o"
    cli(train_args(tiny_path, dataset, out))
    (out / "notes.txt").write_text("mine")
    refused(train_args(tiny_path, dataset, out, "--overwrite"), capsys, "did not write (notes.txt)")
    (out / "notes.txt").unlink()
    cli(train_args(tiny_path, dataset, out, "--overwrite", "--seed", "1"))  # only sdtune's files there: replaced
    assert json.loads((out / "training_config.json").read_text())["seed"] == 1


def test_resume_never_goes_back_on_a_finished_run(tiny_path, dataset, tmp_path, capsys):
    out = tmp_path / "done"
    cli(train_args(tiny_path, dataset, out, "--checkpoint-every", "2"))
    before = snapshot(out)
    refused(train_args(tiny_path, dataset, out, "--checkpoint-every", "2", "--resume", "--steps", "1"), capsys, "would go back")
    refused(train_args(tiny_path, dataset, out, "--checkpoint-every", "2", "--resume"), capsys, "already finished step 3")
    assert snapshot(out) == before
    cli(train_args(tiny_path, dataset, out, "--checkpoint-every", "2", "--resume", "--steps", "5"))  # more steps: goes on
    log = json.loads((out / "loss.json").read_text())
    assert log["resumed_at_step"] == 3 and len(log["loss"]) == 5


def test_class_image_cache_replaces_only_the_images_its_manifest_lists(tiny_pipe, tmp_path):
    folder = tmp_path / "C"
    made = class_images(tiny_pipe, "a circle", 2, folder)
    (folder / "my_own_photo.png").write_bytes(made[0].image.read_bytes())
    (folder / "README.md").write_text("my class photos")
    mine = snapshot(folder)
    again = class_images(tiny_pipe, "a square", 2, folder)  # another class prompt: the cache is made anew
    assert json.loads((folder / MANIFEST).read_text())["prompt"] == "a square"
    assert (folder / "README.md").read_text() == "my class photos"
    assert (folder / "my_own_photo.png").read_bytes() == mine["my_own_photo.png"]
    assert {e.image.name for e in again}.isdisjoint({"my_own_photo.png", "README.md"})


# ------------------------------------------------------------------------------------------------
# Silent: exit 0 with a wrong or meaningless result, now refused (or said out loud)
# ------------------------------------------------------------------------------------------------

def test_tiny_images_are_warned_about_by_name(tiny_path, dataset, tmp_path, caplog):
    data = tmp_path / "d"
    data.mkdir()
    for p in dataset.iterdir():
        (data / p.name).write_bytes(p.read_bytes())
    Image.new("RGB", (1, 1), (255, 0, 0)).save(data / "dot.png")
    (data / "dot.txt").write_text("a red dot")
    with caplog.at_level(logging.WARNING):
        cli(train_args(tiny_path, data, tmp_path / "o"))
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "dot.png" in r.getMessage()]
    assert warned and "smaller than a quarter" in warned[0].getMessage()


def test_empty_captions_are_said_out_loud(tiny_path, dataset, tmp_path, caplog, capsys):
    data = tmp_path / "d"
    data.mkdir()
    for p in dataset.iterdir():
        (data / p.name).write_bytes(p.read_bytes())
    first = sorted(data.glob("*.txt"))[0]
    first.write_text("")
    with caplog.at_level(logging.WARNING):
        cli(train_args(tiny_path, data, tmp_path / "some"))
    assert any(first.with_suffix(".png").name in r.getMessage() and r.levelno >= logging.WARNING for r in caplog.records)
    for caption in data.glob("*.txt"):
        caption.write_text("")
    refused(train_args(tiny_path, data, tmp_path / "all"), capsys, "empty")


@pytest.mark.parametrize("extra, phrase", [
    (["--steps", "10000000000"], "--steps must be a positive integer no larger than 10,000,000"),
    (["--warmup-steps", "1000000"], "--warmup-steps 1000000 is not shorter than the run"),
    (["--lr", "-1e-3"], "--lr must be a positive number"),
    (["--max-grad-norm", "nan"], "--max-grad-norm must be a number"),
    (["--noise-offset", "nan"], "--noise-offset must be a number"),
])
def test_numeric_training_options_are_checked_before_work(extra, phrase, tiny_path, dataset, tmp_path, capsys):
    refused(train_args(tiny_path, dataset, tmp_path / "o", *extra), capsys, phrase)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra, phrase", [
    (["--lora", "LORA:1e9"], "the scale after ':' must be a number from -10 to 10"),
    (["--lora", "LORA:nan"], "the scale after ':' must be a number"),
    (["--lora", "LORA:inf"], "the scale after ':' must be a number"),
    (["--guidance", "-5"], "--guidance must be >= 0"),
    (["--guidance", "nan"], "--guidance must be a number"),
])
def test_sampling_numbers_are_checked_before_work(extra, phrase, tiny_path, tmp_path, capsys):
    extra = [e.replace("LORA", str(tmp_path)) for e in extra]
    refused(["sample", "--model", str(tiny_path), "--prompt", "a red circle", "--out", str(tmp_path / "a.png"), *extra], capsys, phrase)
    assert not (tmp_path / "a.png").exists()


def test_merge_refuses_nan_weights(tmp_path, capsys):
    a = tmp_path / "a.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 2)}, str(a))
    refused(["merge", str(a), str(a), "--weights", "1,nan", "--out", str(tmp_path / "m.safetensors")], capsys, "--weights 1,nan")
    assert not (tmp_path / "m.safetensors").exists()


def test_class_data_equal_to_the_instance_folder_is_refused(tiny_path, dataset, tmp_path, capsys):
    refused(["train", "dreambooth", "--lora", "--model", str(tiny_path), "--data", str(dataset), "--out", str(tmp_path / "o"),
             "--instance-prompt", "a sks circle", "--class-prompt", "a circle", "--class-data", str(dataset)],
            capsys, "is the training folder")


def sdtune_process(*argv):
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    # Ctrl-C's default action, even where the test runner was started with SIGINT ignored (a background job of a shell)
    return subprocess.Popen([sys.executable, "-m", "sdtune", *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def interrupt_at(proc: subprocess.Popen, out: Path, step: int, timeout: float = 300) -> tuple[str, str]:
    """SIGINT the training process once it has a checkpoint of `step` or later (older ones are pruned as it goes, so a
    checkpoint folder can come and go between two looks), and wait for it to exit."""
    def reached() -> bool:
        return any(int(p.name[5:]) >= step for p in (out / "checkpoints").glob("step-*") if p.name[5:].isdigit())

    deadline = time.time() + timeout
    while not reached() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted: give it more steps"
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=120)


def test_ctrl_c_during_an_overwrite_run_leaves_no_old_result_beside_new_checkpoints(tiny_path, dataset, tmp_path, capsys):
    out = tmp_path / "o"
    cli(train_args(tiny_path, dataset, out))
    old = load_file(out / "pytorch_lora_weights.safetensors")
    proc = sdtune_process(*train_args(tiny_path, dataset, out, "--overwrite", "--steps", "400", "--checkpoint-every", "1", "--seed", "1"))
    _, err = interrupt_at(proc, out, 2)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err and "earlier result is kept" in err, err
    assert not (out / "pytorch_lora_weights.safetensors").exists() and not (out / "o.safetensors").exists()
    parked = load_file(out / ".sdtune-previous" / "pytorch_lora_weights.safetensors")  # the old result, not lost
    assert parked.keys() == old.keys() and all(torch.equal(parked[k], old[k]) for k in old)
    refused(["sample", "--model", str(tiny_path), "--prompt", "x", "--lora", str(out), "--out", str(tmp_path / "s.png")], capsys,
            "holds no finished adapter", "--resume")
    assert not (tmp_path / "s.png").exists()


# ------------------------------------------------------------------------------------------------
# Tracebacks: each now one clear line
# ------------------------------------------------------------------------------------------------

def test_a_read_only_output_folder_is_refused_before_training(tiny_path, dataset, tmp_path, capsys):
    with read_only(tmp_path / "ro") as folder:
        refused(train_args(tiny_path, dataset, folder), capsys, "cannot write in", "--out")


def test_sample_into_a_read_only_folder_is_refused_before_sampling(tiny_path, tmp_path, capsys):
    with read_only(tmp_path / "ro") as folder:
        refused(["sample", "--model", str(tiny_path), "--prompt", "x", "--out", str(folder / "a.png")], capsys, "cannot write in")


@pytest.mark.parametrize("damaged", ["trainable.safetensors", "state.pt"])
def test_a_truncated_checkpoint_falls_back_to_the_one_before(damaged, tiny_path, dataset, tmp_path, caplog):
    out = tmp_path / "o"
    proc = sdtune_process(*train_args(tiny_path, dataset, out, "--steps", "400", "--checkpoint-every", "1"))
    interrupt_at(proc, out, 3)
    newest = sorted((out / "checkpoints").glob("step-*"))[-1]
    steps = int(newest.name[5:]) + 3  # a few steps past the newest checkpoint, wherever the interrupt landed
    path = newest / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        cli(train_args(tiny_path, dataset, out, "--steps", str(steps), "--checkpoint-every", "1", "--resume"))
    assert f"{newest} is damaged" in caplog.text
    assert json.loads((out / "loss.json").read_text())["resumed_at_step"] == int(newest.name[5:]) - 1


def test_ctrl_c_prints_one_line(tiny_path, dataset, tmp_path):
    out = tmp_path / "o"
    proc = sdtune_process(*train_args(tiny_path, dataset, out, "--steps", "400", "--checkpoint-every", "1"))
    _, err = interrupt_at(proc, out, 1)
    assert proc.returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert [line for line in err.splitlines() if line.startswith("sdtune train:")] == err.strip().splitlines()[-1:], err


def test_toy_data_with_no_images_names_the_option(tmp_path, capsys):
    refused(["toy-data", "--out", str(tmp_path / "d"), "--n", "0"], capsys, "--n must be a positive integer")


def test_eval_with_no_seeds_names_the_option(capsys):
    refused(["eval", "base", "--seeds", "0"], capsys, "--seeds must be a positive integer")


def test_a_lora_of_the_wrong_shapes_is_one_clear_error(tiny_path, tmp_path, capfd):
    import sdtune

    pipe = sdtune.load_pipeline(tiny_path)
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    width = pipe.unet.get_submodule(layer).in_features
    tensors = {f"unet.{layer}.lora_A.weight": torch.zeros(4, width + 3), f"unet.{layer}.lora_B.weight": torch.zeros(width, 4)}
    save_file(tensors, str(tmp_path / "pytorch_lora_weights.safetensors"))
    capfd.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli(["sample", "--model", str(tiny_path), "--prompt", "x", "--lora", str(tmp_path), "--out", str(tmp_path / "a.png")])
    out, err = capfd.readouterr()
    said = [line for line in (out + err).splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
    assert stop.value.code == 2
    assert len(said) == 1 and "(4, 67) in the file" in err and "another base model" in err, out + err


def test_debug_shows_the_traceback(tiny_path, dataset, tmp_path):
    with pytest.raises(ValueError, match="--lr must be a positive number"):
        cli(train_args(tiny_path, dataset, tmp_path / "o", "--lr", "-1", "--debug"))
