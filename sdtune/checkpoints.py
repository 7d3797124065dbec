"""Checkpoints: everything the rest of a run depends on, so that a resumed run ends where an uninterrupted one would.

A checkpoint `OUT/checkpoints/step-NNNNNNN/` holds the trainable weights (`trainable.safetensors`), the optimizer,
schedule, loss scale and random state (`state.pt`), and the run's settings. It is written atomically; the newest two
are kept. `--resume` only goes forward: it refuses to go back to fewer steps than a checkpoint holds, and a damaged
checkpoint (a truncated copy, a full disk) falls back to the one before it, with a message.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .io import staged_folder

logger = logging.getLogger(__name__)

KEEP = 2  # checkpoints kept; the older ones are deleted as new ones are written
# options that may change between a checkpoint and the run that resumes it: they do not change what is trained
RESUMABLE_CHANGES = {"out", "steps", "resume", "overwrite", "checkpoint_every", "validation_every", "validation_prompt", "torch_compile"}


class CheckpointError(ValueError):
    """No checkpoint the run can go on from, with what to do about it."""


def checkpoints(out: str | Path) -> list[Path]:
    """The run's checkpoint folders, oldest first."""
    return sorted((Path(out) / "checkpoints").glob("step-*"))


def latest_checkpoint(out: str | Path) -> Path | None:
    found = checkpoints(out)
    return found[-1] if found else None


def step_of(folder: Path) -> int:
    return int(folder.name.removeprefix("step-"))


def check_resume(out: str | Path, steps: int | None) -> None:
    """Before any work: --resume needs a checkpoint, and goes forward only (more steps than the checkpoint holds).
    `steps` None: not known yet (the defaults decide it), so only the checkpoint is looked for."""
    out = Path(out)
    last = latest_checkpoint(out)
    if last is None:
        raise CheckpointError(f"--resume: no checkpoint in {out / 'checkpoints'}; start without --resume.")
    finished = out / "training_config.json"
    finished_steps = json.loads(finished.read_text()).get("steps") if finished.is_file() else None
    if finished_steps is not None and step_of(last) < finished_steps:
        raise CheckpointError(f"--resume: {out} holds a finished {finished_steps}-step result, and its newest checkpoint is "
                              f"step {step_of(last)}: resuming would replace the result with a shorter run. Keep the result, "
                              "or train anew in another --out.")
    if steps is not None and steps <= step_of(last):
        done = "finished" if finished_steps == step_of(last) else "reached"
        raise CheckpointError(f"--resume: the run in {out} already {done} step {step_of(last)}; --steps {steps} would go back. "
                              f"Ask for more than {step_of(last)} steps to continue it.")


def save_checkpoint(out: Path, step: int, named_params: dict[str, torch.nn.Parameter], optimizer, scheduler,
                    gen: torch.Generator, losses: list[float], cfg) -> Path:
    """Write everything the rest of the run depends on, atomically; keep the newest `KEEP` checkpoints."""
    folder = out / "checkpoints" / f"step-{step:07d}"
    with staged_folder(folder, record=False) as tmp:
        save_file({k: v.detach().contiguous() for k, v in named_params.items()}, str(tmp / "trainable.safetensors"))
        scaler = getattr(optimizer, "scaler", None)  # fp16: the loss scale is part of the run's state
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": gen.get_state(),
                    "step": step, "losses": losses, "scaler": scaler.state_dict() if scaler else None}, tmp / "state.pt")
        (tmp / "training_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    for old in checkpoints(out)[:-KEEP]:
        trash = old.with_name(f".{old.name}.deleting")  # renamed first: an interrupted delete leaves no half checkpoint
        old.rename(trash)
        shutil.rmtree(trash)
    return folder


def load_checkpoint(out: Path, cfg, named_params: dict[str, torch.nn.Parameter], optimizer, scheduler,
                    gen: torch.Generator) -> tuple[int, list[float]]:
    """Restore the newest readable checkpoint into the run; returns (step, losses so far).

    A checkpoint made with settings that change the training is refused; a damaged one is skipped for the one before.
    """
    for folder in reversed(checkpoints(out)):
        try:
            saved = json.loads((folder / "training_config.json").read_text())
            weights = load_file(str(folder / "trainable.safetensors"))
            state = torch.load(folder / "state.pt", weights_only=True)
            missing = set(named_params) - set(weights)
        except Exception as error:  # safetensors, torch.load and json each fail in their own way on a truncated file
            logger.warning("%s is damaged (%s: %s); trying the checkpoint before it.", folder, type(error).__name__,
                           str(error).splitlines()[0][:200] if str(error) else "")
            continue
        changed = [f.name for f in fields(cfg) if f.name not in RESUMABLE_CHANGES and saved.get(f.name, f.default) != getattr(cfg, f.name)]
        if changed:
            raise CheckpointError(f"--resume: {folder} was made with other settings ({', '.join(changed)}); use the same options.")
        if missing:
            raise CheckpointError(f"--resume: {folder} does not hold this run's weights (e.g. {sorted(missing)[0]}); use the same options.")
        with torch.no_grad():
            for name, param in named_params.items():
                param.copy_(weights[name])
        optimizer.load_state_dict(state["optimizer"])
        if getattr(optimizer, "scaler", None) and state.get("scaler"):
            optimizer.scaler.load_state_dict(state["scaler"])
        scheduler.load_state_dict(state["scheduler"])
        gen.set_state(state["rng"])
        return state["step"], state["losses"]
    raise CheckpointError(f"--resume: no readable checkpoint in {out / 'checkpoints'} (each is damaged; see the warnings above). "
                          "Start the run again without --resume, in another --out or with --overwrite.")
