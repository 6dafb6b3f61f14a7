"""Run every method on the dev pairs and write the tables into BENCHMARKS.md."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from warpseg.bench.pairs import DevPair, default_data_dir, dev_pairs, held_out_slice_pairs
from warpseg.bench.report import machine_description, summarise, update_benchmarks_file

DEFAULT_3D_PAIRS = 3
REFINE_ITERATIONS = {2: 100}  # default '<learned method>[refine=N]' rows (test-time optimisation), per ndim


def parse_method_list(text: str) -> list[str]:
    """``"a,b[x=1,y=2],c"`` to ``["a", "b[x=1,y=2]", "c"]``: commas inside brackets stay."""
    names, depth, current = [], 0, ""
    for character in text:
        depth += {"[": 1, "]": -1}.get(character, 0)
        if character == "," and depth == 0:
            names.append(current.strip())
            current = ""
        else:
            current += character
    return [name for name in names + [current.strip()] if name]


def parse_variant(spec: str) -> tuple[str, dict]:
    """``"nir[iterations=200,mode=displacement]"`` to ``("nir", {"iterations": 200, ...})``."""
    from warpseg.options import parse_options

    if "[" not in spec:
        return spec, {}
    if not spec.endswith("]"):
        from warpseg.errors import InputError

        raise InputError(f"method {spec!r}: write options as NAME[KEY=VALUE,KEY=VALUE]")
    name, inside = spec[:-1].split("[", 1)
    return name, parse_options([item for item in parse_method_list(inside)])


def default_methods(ndim: int) -> list[str]:
    """Every method that can run here, plus a refined row for each learned one with shipped weights."""
    from warpseg.methods import METHODS, available_methods

    names = available_methods(ndim)
    if ndim in REFINE_ITERATIONS:
        names += [f"{name}[refine={REFINE_ITERATIONS[ndim]}]" for name in available_methods(ndim)
                  if METHODS[name].needs_weights and METHODS[name].name != "nice-trans-affine"]
    return names


def held_out_methods() -> list[str]:
    """The default of ``--held-out-slices``: the identity and every learned method with 2D weights."""
    from warpseg.methods import METHODS, available_methods

    return ["identity"] + [name for name in available_methods(2) if METHODS[name].needs_weights]


def run_benchmark(data_dir: Path | None, *, methods: list[str] | None = None, ndims=(2, 3),
                  max_pairs: int | None = None, output: Path = Path("BENCHMARKS.md"), section: str | None = None,
                  held_out_slices: bool = False) -> dict:
    """Register the dev pairs with each method; return the per-method rows and write the report
    (into the section ``register-<n>d``, or ``<section>-<n>d`` to keep a separate table).

    ``held_out_slices``: 2D only, the pairs of :func:`~warpseg.bench.pairs.held_out_slice_pairs`
    instead (section ``held-out-slices-2d`` by default; methods: :func:`held_out_methods`)."""
    from warpseg.errors import InputError
    from warpseg.methods import get_method

    data_dir = Path(data_dir) if data_dir else default_data_dir()
    for spec in methods or []:
        get_method(parse_variant(spec)[0])  # fail early on unknown or uninstalled methods
    if held_out_slices and tuple(ndims) != (2,):
        raise InputError("--held-out-slices pairs 2D slices: run it with --ndim 2")
    tables = {}
    for ndim in ndims:
        with tempfile.TemporaryDirectory(prefix="warpseg-bench-") as folder:
            if held_out_slices:
                names = methods or held_out_methods()
                pairs = held_out_slice_pairs(data_dir, Path(folder), max_pairs=max_pairs)
            else:
                names = methods or default_methods(ndim)
                pairs = dev_pairs(data_dir, ndim, max_pairs or (DEFAULT_3D_PAIRS if ndim == 3 else None))
            rows = {}
            for name in names:
                if get_method(parse_variant(name)[0]).needs_weights:
                    _measure(pairs[0], name)  # warm-up: load the model and build kernels once, not timed
                rows[name] = [_measure(pair, name) for pair in pairs]
        tables[ndim] = summarise(rows)
        default_section = "held-out-slices" if held_out_slices else "register"
        update_benchmarks_file(output, f"{section or default_section}-{ndim}d", ndim, pairs, tables[ndim],
                               machine_description(), "held-out slice pairs" if held_out_slices else "dev pairs")
    return tables


def _measure(pair: DevPair, method: str) -> dict:
    from warpseg.engine import register, run_to_end
    from warpseg.io import read_volume

    name, options = parse_variant(method)
    job = register(read_volume(pair.moving, labels=False), read_volume(pair.fixed, labels=False), name,
                   moving_labels=read_volume(pair.moving_labels, labels=True),
                   fixed_labels=read_volume(pair.fixed_labels, labels=True), device="auto", options=options)
    result = run_to_end(job)
    row = {"pair": pair.name, "seconds": result.seconds_registration, "device": result.device,
           **{k: v for k, v in result.metrics.items() if not isinstance(v, dict)}}
    print(f"[bench] {method:14s} {pair.name:12s} Dice {row['dice_before']:.3f} -> {row['dice_mean']:.3f}  "
          f"fold {row['folding_percent']:.3f}%  {row['seconds']:.2f}s", file=sys.stderr)
    return row
