"""The blocks a report section is made of: plain data (paragraphs, tables, inline images, formatted
cells) that the Jinja2 template escapes and lays out; no HTML is built here."""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("vidcls.reporting.report")


@dataclass(frozen=True)
class Cell:
    """A table cell with formatting; plain strings and numbers in a row are cells too."""

    parts: tuple = ()  # (text, bold) runs: "0.810 / 0.830" with the variant in use bold
    cls: str = ""  # "num" or "bar" (right-aligned numbers)
    bar: float | None = None  # 0..100: a light bar behind the value, so a column reads like a chart
    code: bool = False  # monospace (config values)


def num(value: object, digits: int = 3, signed: bool = False) -> str:
    """Metric formatting: fixed decimals, '-' for missing or NaN (JSON null, absent split)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (bool, int)) or not isinstance(value, float):
        return str(value)
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def num_cell(text: str, bold: bool = False) -> Cell:
    return Cell(((text, bold),), cls="num")


def bar_cell(value: object) -> Cell | str:
    """A 0..1 metric with a bar behind it; '-' when missing."""
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "-"
    pct = max(0.0, min(100.0, 100.0 * float(value)))
    return Cell(((f"{value:.3f}", False),), cls="bar", bar=pct)


def para(text: str, cls: str = "", code: str | None = None) -> dict:
    """A paragraph; ``code`` is appended in monospace (paths)."""
    return {"kind": "p", "text": text, "cls": cls, "code": code}


def na(text: str = "not available") -> dict:
    return para(text, cls="na")


def table(
    headers: list, rows: list, *, table_id: str, row_classes: list | None = None, scroll: bool = False
) -> dict:
    classes = row_classes or [""] * len(rows)
    return {
        "kind": "table",
        "id": table_id,
        "headers": list(headers),
        "scroll": scroll,
        "rows": [{"cls": c, "cells": list(r)} for r, c in zip(rows, classes)],
    }


def figure(alt: str, draw: Callable[..., bytes | None], *args: Any, **kwargs: Any) -> dict:
    """``draw(*args, **kwargs)`` (PNG bytes) as an image; a note in its place if it has nothing or fails."""
    try:
        png = draw(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - one figure must not cost the rest of the report
        log.warning("report: figure %r could not be drawn (%s: %s)", alt, type(exc).__name__, exc)
        return na(f"{alt}: figure could not be drawn ({type(exc).__name__}: {exc})")
    if not png:
        return na(f"{alt}: not available")
    return {
        "kind": "img",
        "alt": alt,
        "src": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
    }
