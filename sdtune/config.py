"""Config dataclasses whose fields carry their help text, and the command-line options built from them."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any


def option(help: str, default: Any = None) -> Any:
    """A dataclass field with a help text; the CLI shows the text under the field's --option."""
    return dataclasses.field(default=default, metadata={"help": help})


def add_config_options(parser: argparse.ArgumentParser, cls: type, required: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> None:
    """Add one --option per field of the config dataclass `cls` (booleans become flags), except `exclude`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        name = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help strings with %
        if kind is bool:
            parser.add_argument(name, action="store_true", help=text)
            continue
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        shown = "" if f.default in (None, "") else f" (default: {f.default})"
        parser.add_argument(name, type=base, default=f.default, required=f.name in required, help=text + shown)


def config_from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """Build the config dataclass from parsed options; fields without an option keep their default or `fixed`."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**(given | fixed))
