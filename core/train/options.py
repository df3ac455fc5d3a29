"""Declared options of a settings dataclass: the default (the dataclass field), the help text and the range.

The CLI (``core/cli/finetune.py``, ``core/cli/pretrain.py``) and the desktop dialogs read an option from
here instead of writing its default, bounds or help again, so the three cannot drift apart:

    FINETUNE_OPTIONS = ConfigOptions(FinetuneConfig, {"epochs": Option("training epochs", min=1, max=10000)})
    FINETUNE_OPTIONS.add_argument(parser, "epochs")            # --epochs, default, help, range check
    FINETUNE_OPTIONS["epochs"].default, FINETUNE_OPTIONS["epochs"].min
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["Option", "OptionSpec", "ConfigOptions"]


@dataclass(frozen=True)
class Option:
    """Help, inclusive bounds (``None``: unbounded on that side) and allowed values of one field."""

    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None


@dataclass(frozen=True)
class OptionSpec:
    """One field as the CLI and the dialogs see it."""

    name: str
    default: Any
    type: Callable[[str], Any] | None     # int, float or str; None for other field types
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None

    def check(self, value: Any) -> Any:
        """``value`` if it lies in the range, else ValueError naming the option and the range."""
        if self.choices is not None and value is not None and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        if value is not None and self.type in (int, float):      # a config file may hold anything
            whole = self.type is int
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) \
                    or not math.isfinite(value):
                raise ValueError(f"{self.name} must be {'a whole' if whole else 'a finite'} number, got {value!r}")
        if value is None or (self.min is None and self.max is None):
            return value
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            lo = "-inf" if self.min is None else f"{self.min:g}"
            hi = "inf" if self.max is None else f"{self.max:g}"
            raise ValueError(f"{self.name} must be in [{lo}, {hi}], got {value}")
        return value


class ConfigOptions:
    """The options of one dataclass: defaults from its fields, help and ranges from ``table``."""

    def __init__(self, cls: type, table: dict[str, Option]):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(table) - set(fields))
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        self.cls = cls
        self._specs = {name: OptionSpec(name, _default(fields[name]), _scalar_type(hints[name]), opt.help, opt.min,
                                        opt.max, opt.choices)
                       for name, opt in table.items()}

    def __getitem__(self, name: str) -> OptionSpec:
        return self._specs[name]

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def __iter__(self):
        return iter(self._specs)

    def check_config(self, config: Any, where: str | Path | None = None) -> None:
        """Every declared option of ``config`` in its range and of its type: a config read from a file or a
        project store (resume, reconstruct, the window) is held to the CLI's bounds, so an absurd value (an
        image size of 10**6, negative epochs) is a ValueError naming ``where`` before anything is allocated."""
        for name, spec in self._specs.items():
            try:
                spec.check(getattr(config, name))
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}" if where else str(exc)) from None

    def add_argument(self, parser, name: str, *flags: str, show_default: bool = False,
                     **overrides: Any) -> argparse.Action:
        """``parser.add_argument`` for field ``name`` (flag ``--name-with-dashes`` unless ``flags``): its
        default, help and a type that refuses values out of range. ``show_default`` appends the default to
        the help (for parsers without ArgumentDefaultsHelpFormatter); ``overrides`` go to add_argument."""
        spec = self._specs[name]
        kwargs: dict[str, Any] = {"default": spec.default,
                                  "help": spec.help + (" (default %(default)s)" if show_default else "")}
        if spec.type is not None:
            kwargs["type"] = _checked(spec)
        if spec.choices is not None:
            kwargs["choices"] = spec.choices
        kwargs.update(overrides)
        return parser.add_argument(*(flags or ("--" + name.replace("_", "-"),)), **kwargs)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise ValueError(f"field {f.name} has no default")


def _scalar_type(hint: Any) -> Callable[[str], Any] | None:
    """int / float / str, also inside ``X | None``; None for anything else (bool, dict, tuple...)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else None
    return hint if hint in (int, float, str) else None


def _checked(spec: OptionSpec) -> Callable[[str], Any]:
    convert = spec.type

    def parse(text: str):
        value = convert(text)              # not a number: argparse's own "invalid int value" message
        try:
            return spec.check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = convert.__name__      # argparse names the type in its message ("invalid int value")
    return parse
