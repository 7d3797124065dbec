"""Where sdtune's shipped files live, and writing outputs safely: never half-written, never silently overwritten."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open

ASSETS = Path(__file__).resolve().parent / "assets"  # shipped weights: judge/, tiny-sd/


MANIFEST = ".sdtune-manifest.json"  # in every folder sdtune writes: the entries it wrote there
PREVIOUS = ".sdtune-previous"  # an --overwrite run parks the older result here until the new one is in place
# what a training output held before folders had a manifest (recognised only beside its training_config.json)
KNOWN_TRAINING_ENTRIES = {"training_config.json", "loss.json", "checkpoints", "validation", "pytorch_lora_weights.safetensors",
                          "learned_embeds.safetensors", "hypernetwork.safetensors", "difference.json", "model_index.json", "unet",
                          "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler", "feature_extractor",
                          "safety_checker", "image_encoder"}


def sdtune_entries(folder: Path) -> set[str]:
    """Names in `folder` that sdtune wrote: those its manifest lists (and the manifest itself); for a training output
    made before manifests existed, the names a training run writes."""
    names = {MANIFEST, PREVIOUS}
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            names |= set(json.loads(manifest.read_text())["entries"])
        except (ValueError, KeyError, TypeError):
            pass  # a damaged manifest vouches for nothing
    elif (folder / "training_config.json").is_file():
        names |= KNOWN_TRAINING_ENTRIES | {f"{folder.name}.safetensors", f"{folder.name}.pt"}
    return names


def foreign_entries(folder: Path) -> list[str]:
    """The entries of `folder` that sdtune did not write (a user's files): never deleted, never replaced."""
    if not folder.is_dir():
        return []
    ours = sdtune_entries(folder)
    return sorted(p.name for p in folder.iterdir() if p.name not in ours)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_folder(folder: str | os.PathLike, overwrite: bool, option: str = "--out",
                        inputs: dict[str, str | os.PathLike | None] | None = None, resume: bool = False) -> Path:
    """Check an output folder before any work starts; one clear error for each way it could cost the user a file.

    Refused: a file; a folder that is, or holds, one of the run's `inputs` ({option: folder}, e.g. the training data);
    a folder that already holds results, unless `overwrite`; and even with `overwrite`, a folder holding anything
    sdtune did not write (sdtune deletes only what it wrote). The folder's parent must be writable. A run that
    `resume`s continues in its own folder: only the inputs and writability are checked.
    """
    folder = Path(folder)
    resolved = folder.resolve()
    for input_option, path in (inputs or {}).items():
        if path and _inside(Path(path).resolve(), resolved):
            where = "is" if Path(path).resolve() == resolved else "holds"
            raise FileExistsError(f"{option} {folder} {where} the {input_option} folder {path}: the results would replace your "
                                  f"files. Choose an {option} outside {path}.")
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file, not a folder: choose another {option}.")
    if folder.exists() and any(folder.iterdir()) and not resume:
        if not overwrite:
            raise FileExistsError(f"{folder} already holds results: choose another {option} or pass --overwrite.")
        foreign = foreign_entries(folder)
        if foreign:
            raise FileExistsError(f"{option} {folder} holds files sdtune did not write ({', '.join(foreign[:5])}): --overwrite "
                                  f"replaces only sdtune's own results. Choose another {option}, or move those files out.")
    check_writable(folder, option)
    return folder


def check_writable(path: str | os.PathLike, option: str = "--out") -> None:
    """Fail now, not after an hour of training, if `path` (a folder, or the folder of a file) cannot be written:
    create and delete a probe file in the nearest existing folder on the way."""
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise FileExistsError(f"{option} {path}: {existing} is a file, so no folder can be made there. Choose another {option}.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".sdtune-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise PermissionError(f"{option} {path}: cannot write in {existing} ({error.strerror}). Choose a folder you can write to, "
                              "or fix its permissions.") from None


def park_previous_result(folder: Path) -> None:
    """--overwrite: move sdtune's older result in `folder` into `folder/.sdtune-previous`, so that an interrupted new run
    never leaves the old adapter beside its own checkpoints (where `sample` would pick up the old one). The parked
    result is dropped when the new one is written; until then nothing is lost."""
    entries = [p for p in folder.iterdir() if p.name in sdtune_entries(folder) - {MANIFEST, PREVIOUS}] if folder.is_dir() else []
    if not entries:
        return
    parked = folder / PREVIOUS
    if parked.exists():
        shutil.rmtree(parked)  # an even older result, parked by an earlier interrupted --overwrite run
    parked.mkdir()
    for entry in entries:
        entry.rename(parked / entry.name)
    write_manifest(folder, [p.name for p in folder.iterdir() if p.name != MANIFEST])


def write_manifest(folder: Path, entries: list[str]) -> None:
    """Record which entries of `folder` sdtune wrote."""
    with staged_file(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps({"written_by": "sdtune", "entries": sorted(entries)}, indent=1))


@contextmanager
def staged_folder(folder: str | os.PathLike, keep: tuple[str, ...] = (), record: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of `folder` to write into; on success it replaces `folder` in one rename.

    With `record`, what the block wrote is listed in the folder's manifest (a folder inside an sdtune folder, such as
    a checkpoint, needs none). Of the old folder, the entries named in `keep` (e.g. a
    run's checkpoints) and every entry sdtune did not write are carried over into the new one; only sdtune's own older
    files are dropped. On an exception the temporary folder is removed and `folder` is left exactly as it was.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; give it a normal folder's permissions
    try:
        yield tmp
        written = [p.name for p in tmp.iterdir()]
        if folder.exists():
            carried = set(foreign_entries(folder)) | {name for name in keep if (folder / name).exists()}
            for name in carried - set(written):
                (folder / name).rename(tmp / name)
            if record:
                write_manifest(tmp, written + [name for name in keep if name in carried])
            old = folder.with_name(f".{folder.name}.replaced")
            if old.exists():  # left by a swap that was killed between its two renames
                shutil.rmtree(old)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old)
        else:
            if record:
                write_manifest(tmp, written)
            tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; on success it is renamed onto `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, data: object, indent: int | None = None) -> Path:
    """Write `data` as JSON in one step (through `staged_file`): an interrupted write leaves the old file or none,
    never half a file that the next run would fail to read."""
    path = Path(path)
    with staged_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent))
    return path


def read_safetensors(path: str | os.PathLike, what: str = "file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a .safetensors file; anything else, or a damaged file, is one clear error."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: sdtune reads {what}s from .safetensors files (.pt/.bin/.ckpt files are pickles, which can run code).")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(
            f"{path} is not a readable safetensors file ({error}). It may be truncated by an interrupted "
            "download or copy: fetch it again."
        ) from None
