"""Where sdtune's shipped files live, and writing outputs safely: never half-written, never silently overwritten."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open

ASSETS = Path(__file__).resolve().parent / "assets"  # shipped weights: judge/, tiny-sd/


def check_output_folder(folder: str | os.PathLike, overwrite: bool, option: str = "--out") -> Path:
    """Refuse a folder that already holds files unless `overwrite`; call it before any work starts."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file, not a folder: choose another {option}.")
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} already holds results: choose another {option} or pass --overwrite.")
    return folder


@contextmanager
def staged_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `folder` to write into; on success it replaces `folder` in one rename.

    On an exception the temporary folder is removed and `folder` is left exactly as it was.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; give it a normal folder's permissions
    try:
        yield tmp
        if folder.exists():
            old = folder.with_name(f".{folder.name}.replaced")
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old)
        else:
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
