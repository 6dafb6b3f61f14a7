"""Run every method on the dev pairs and write the tables into BENCHMARKS.md."""
from __future__ import annotations

import sys
from pathlib import Path

from warpseg.bench.pairs import DevPair, default_data_dir, dev_pairs
from warpseg.bench.report import machine_description, summarise, update_benchmarks_file

DEFAULT_3D_PAIRS = 3


def run_benchmark(data_dir: Path | None, *, methods: list[str] | None = None, ndims=(2, 3),
                  max_pairs: int | None = None, output: Path = Path("BENCHMARKS.md")) -> dict:
    """Register the dev pairs with each method; return the per-method rows and write the report."""
    from warpseg.methods import available_methods, get_method

    data_dir = Path(data_dir) if data_dir else default_data_dir()
    for name in methods or []:
        get_method(name)  # fail early on unknown or uninstalled methods
    tables = {}
    for ndim in ndims:
        names = methods or available_methods(ndim)
        limit = max_pairs or (DEFAULT_3D_PAIRS if ndim == 3 else None)
        pairs = dev_pairs(data_dir, ndim, limit)
        rows = {}
        for name in names:
            if get_method(name).needs_weights:
                _measure(pairs[0], name)  # warm-up: load the model and build kernels once, not timed
            rows[name] = [_measure(pair, name) for pair in pairs]
        tables[ndim] = summarise(rows)
        update_benchmarks_file(output, f"register-{ndim}d", ndim, pairs, tables[ndim], machine_description())
    return tables


def _measure(pair: DevPair, method: str) -> dict:
    from warpseg.engine import register, run_to_end
    from warpseg.io import read_volume

    job = register(read_volume(pair.moving, labels=False), read_volume(pair.fixed, labels=False), method,
                   moving_labels=read_volume(pair.moving_labels, labels=True),
                   fixed_labels=read_volume(pair.fixed_labels, labels=True), device="auto")
    result = run_to_end(job)
    row = {"pair": pair.name, "seconds": result.seconds_registration, "device": result.device,
           **{k: v for k, v in result.metrics.items() if not isinstance(v, dict)}}
    print(f"[bench] {method:14s} {pair.name:12s} Dice {row['dice_before']:.3f} -> {row['dice_mean']:.3f}  "
          f"fold {row['folding_percent']:.3f}%  {row['seconds']:.2f}s", file=sys.stderr)
    return row
