"""Summaries of benchmark rows and the Markdown sections of BENCHMARKS.md."""
from __future__ import annotations

import datetime
import os
import platform
import re
from pathlib import Path

import numpy as np

TIME_BASELINES = ("ants-syn", "sitk-bspline")
MIN_TIMED_SECONDS = 0.01  # below this (identity) a time ratio means nothing
HELD_OUT_SUBJECT = "vxm"  # the shipped learned models never saw it in training
MAX_LISTED_PAIRS = 12
PAIRED_REFERENCES = {"pcreg-rt": "vxm", "brbs": "vxm", "nice-transeg": "nice-trans"}
"""Methods the issues compare with another one on the same pairs: their per-pair Dice differences are reported."""
HEADER = "# Benchmarks\n\nWritten by `warpseg bench`; each section is replaced by the run that measured it.\n"


def summarise(rows: dict[str, list[dict]]) -> dict[str, dict]:
    """Mean and standard deviation of each metric per method."""
    summary = {}
    for method, measured in rows.items():
        entry = {"pairs": len(measured), "device": measured[0]["device"] if measured else "cpu"}
        for key in ("dice_before", "dice_mean", "hd95_mean", "asd_mean", "folding_percent", "seconds"):
            values = np.array([row[key] for row in measured], dtype=float)
            entry[key] = (float(np.nanmean(values)), float(np.nanstd(values)))
        held_out = [row["dice_mean"] for row in measured if HELD_OUT_SUBJECT in subjects_of(row["pair"])]
        entry["dice_held_out"] = (float(np.mean(held_out)), float(np.std(held_out))) if held_out else (np.nan, 0.0)
        summary[method] = entry
    for method, measured in rows.items():
        reference = PAIRED_REFERENCES.get(method.split("[")[0])
        if reference in rows:
            summary[method]["paired"] = (reference, *_paired_difference(measured, rows[reference]))
    return summary


def _paired_difference(measured: list[dict], reference: list[dict]) -> tuple[float, float, int, int]:
    """Mean and spread of the per-pair Dice difference, pairs where ``measured`` is higher, pairs compared."""
    theirs = {row["pair"]: row["dice_mean"] for row in reference}
    differences = np.array([row["dice_mean"] - theirs[row["pair"]] for row in measured if row["pair"] in theirs])
    return float(differences.mean()), float(differences.std()), int((differences > 0).sum()), len(differences)


def subjects_of(pair: str) -> list[str]:
    """``"subjX->vxm@z101"`` to ``["subjX", "vxm"]``."""
    return pair.split("@")[0].split("->")


def machine_description() -> str:
    """CPU model, core count and library versions of this machine."""
    import torch

    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    threads = torch.get_num_threads()
    return (f"{model}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__} "
            f"({threads} thread{'s' if threads != 1 else ''}), Python {platform.python_version()}")


def render_table(ndim: int, pairs, summary: dict[str, dict], machine: str, pairs_kind: str = "dev pairs") -> str:
    """A Markdown section: one row per method, time as a ratio to the slowest classical baseline.

    ``pairs_kind`` names the pairs in the title ("dev pairs", "held-out slice pairs")."""
    baseline = next((name for name in TIME_BASELINES if name in summary), None)
    today = datetime.date.today().isoformat()
    lines = [
        f"## Registration, {ndim}D {pairs_kind} (seg4 labels)",
        "",
        f"Run {today} on {machine}. Pairs: {describe_pairs(pairs)}. "
        "Dice: mean over labels present in the fixed map; HD95/ASD in mm; fold: % voxels with det(J) <= 0; "
        "time: the registration itself, per pair" + (f"; speed-up: {baseline} time / method time." if baseline else ".")
        + f" The shipped learned models were trained without subject {HELD_OUT_SUBJECT}: 'Dice, pairs with "
        f"{HELD_OUT_SUBJECT}' is their held-out score (the other pairs are training subjects).",
        "",
        f"| method | Dice before | Dice after | Dice, pairs with {HELD_OUT_SUBJECT} | HD95 (mm) | ASD (mm) | fold % "
        "| s / pair | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, entry in summary.items():
        seconds = entry["seconds"][0]
        measurable = baseline and seconds >= MIN_TIMED_SECONDS
        ratio = f"{summary[baseline]['seconds'][0] / seconds:.1f}x" if measurable else "—"
        lines.append(
            f"| {method} | {_pm(entry['dice_before'])} | {_pm(entry['dice_mean'])} | {_pm(entry['dice_held_out'])} | "
            f"{_pm(entry['hd95_mean'], 2)} | "
            f"{_pm(entry['asd_mean'], 2)} | {entry['folding_percent'][0]:.3f} | {seconds:.3f} | {ratio} |"
        )
    paired = [f"{method} − {reference}: {mean:+.3f} ± {spread:.3f}, higher on {wins} of {count} pairs"
              for method, entry in summary.items() if "paired" in entry
              for reference, mean, spread, wins, count in [entry["paired"]]]
    if paired:
        lines += ["", "Dice differences on the same pairs (the issues' comparisons): " + "; ".join(paired) + "."]
    return "\n".join(lines) + "\n"


def describe_pairs(pairs) -> str:
    """The pairs' names, or their count and the first and last few when there are many."""
    names = [pair.name for pair in pairs]
    if len(names) <= MAX_LISTED_PAIRS:
        return ", ".join(names)
    return f"{len(names)} pairs ({', '.join(names[:4])}, …, {names[-1]})"


def update_benchmarks_file(path: Path, key: str, ndim: int, pairs, summary, machine: str,
                           pairs_kind: str = "dev pairs") -> None:
    """Replace (or append) the registration section ``key`` of the benchmarks file."""
    replace_section(path, key, render_table(ndim, pairs, summary, machine, pairs_kind))


READING_HEADING = "## Reading these tables"
"""The hand-written part of the file starts with this heading; new sections go in before it."""


def replace_section(path: Path, key: str, body: str) -> None:
    """Replace (or add) the section between ``<!-- bench:key -->`` markers, keeping the others.

    A new section goes before the hand-written reading of the tables, or at the end without one.
    """
    section = f"<!-- bench:{key} -->\n{body}<!-- /bench:{key} -->\n"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(key)} -->.*?<!-- /bench:{re.escape(key)} -->\n", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    elif READING_HEADING in text:
        head, reading = text.split(READING_HEADING, 1)
        text = head + section + "\n" + READING_HEADING + reading
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def _pm(value: tuple[float, float], digits: int = 3) -> str:
    mean, spread = value
    return "n/a" if np.isnan(mean) else f"{mean:.{digits}f} ± {spread:.{digits}f}"
