"""Argument types shared by the sub-commands."""

from __future__ import annotations

import argparse
import json


def key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE parsed as JSON when it is JSON (``--timm-kwarg depths=[1,1,1,1]``)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except ValueError:
        return k, v


def int_list(text: str) -> list[int]:
    """``0,2,3`` -> [0, 2, 3]."""
    return [int(t) for t in text.split(",") if t.strip()]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value
