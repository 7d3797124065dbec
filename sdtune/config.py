"""Config dataclasses whose fields carry their help text, and the command-line options built from them."""

from __future__ import annotations

import argparse
import dataclasses
import math
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
        if base is bool:  # bool | None: --name / --no-name, unset means "the defaults decide"
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=None, help=text)
            continue
        shown = "" if f.default in (None, "") else f" (default: {f.default})"
        parser.add_argument(name, type=base, default=f.default, required=f.name in required, help=text + shown)


def config_from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """Build the config dataclass from parsed options; fields without an option keep their default or `fixed`."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**(given | fixed))


def check_number(name: str, value: float | None, minimum: float | None = None, maximum: float | None = None,
                 above: float | None = None, below: float | None = None, integer: bool = False) -> None:
    """Refuse NaN, infinity and values out of range for the option `name` (a field name, shown as --name), with one
    message that says what the option takes; None (left to the defaults) passes."""
    if value is None:
        return
    option = "--" + name.replace("_", "-")
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{option} must be {kind}, got {value!r}.")
    if integer and value != int(value):
        raise ValueError(f"{option} must be an integer, got {value}.")
    if integer and minimum == 1:
        wanted = "a positive integer"
    elif above == 0:
        wanted = "a positive number"
    else:
        wanted = " and ".join(x for x in (f">= {minimum:g}" if minimum is not None else "", f"> {above:g}" if above is not None else "",
                                           f"< {below:g}" if below is not None else "") if x)
    if maximum is not None:
        wanted += f" no larger than {int(maximum):,}" if integer else f" no larger than {maximum:g}"
    if ((minimum is not None and value < minimum) or (above is not None and value <= above)
            or (maximum is not None and value > maximum) or (below is not None and value >= below)):
        raise ValueError(f"{option} must be {wanted}, got {int(value):,}." if integer else f"{option} must be {wanted}, got {value:g}.")
