"""Method options written as ``KEY=VALUE`` text (the CLI's ``--option``, the widgets' options field).

A module of its own, light to import: the widgets parse options in the viewer's thread.
"""
from __future__ import annotations

from warpseg.errors import WarpsegError


def parse_options(pairs: list[str]) -> dict:
    """``["iterations=50", "mode=diffeo"]`` to ``{"iterations": 50, "mode": "diffeo"}``."""
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise WarpsegError(f"option {pair!r} is not KEY=VALUE; write e.g. --option iterations=50")
        key, value = pair.split("=", 1)
        options[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return options


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)
