"""The widgets' settings, kept between sessions: what the user last ran, and each method's options.

One JSON file, ``~/.config/warpseg/widgets.json`` (``$WARPSEG_CONFIG/widgets.json`` when set), a
section per widget. Settings are a convenience: a missing, unreadable or outdated file means the
defaults, never an error, and a value that no longer fits (a method since removed) is ignored.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def settings_path() -> Path:
    root = os.environ.get("WARPSEG_CONFIG")
    return Path(root) if root else Path.home() / ".config" / "warpseg"


def load_settings(widget: str) -> dict[str, Any]:
    """The saved settings of ``widget`` (empty when there are none)."""
    try:
        saved = json.loads((settings_path() / "widgets.json").read_text())
    except (OSError, ValueError):
        return {}
    section = saved.get(widget) if isinstance(saved, dict) else None
    return section if isinstance(section, dict) else {}


def save_settings(widget: str, values: dict[str, Any]) -> None:
    """Merge ``values`` into ``widget``'s section; written atomically, failures ignored (read-only home)."""
    path = settings_path() / "widgets.json"
    try:
        saved = json.loads(path.read_text())
        saved = saved if isinstance(saved, dict) else {}
    except (OSError, ValueError):
        saved = {}
    saved[widget] = {**saved.get(widget, {}), **values} if isinstance(saved.get(widget), dict) else values
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(saved, indent=1) + "\n")
        partial.replace(path)
    except OSError:
        pass
