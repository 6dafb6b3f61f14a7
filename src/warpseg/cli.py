"""The ``warpseg`` command: everything the GUI does, headless."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from warpseg.errors import WarpsegError
from warpseg.options import parse_options


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except WarpsegError as error:
        print(f"warpseg: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("warpseg: interrupted; nothing was written", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="warpseg", description=__doc__)
    commands = parser.add_subparsers(title="commands")
    _add_register(commands)
    _add_segment(commands)
    _add_methods(commands)
    _add_train(commands)
    _add_bench(commands)
    _add_batch(commands)
    _add_atlas(commands)
    _add_brbs(commands)
    _add_demo(commands)
    return parser


def _add_register(commands) -> None:
    command = commands.add_parser("register", help="register MOVING to FIXED and write the results")
    command.add_argument("moving", type=Path)
    command.add_argument("fixed", type=Path)
    command.add_argument("--method", default="sitk-bspline", help="see `warpseg methods` (default: sitk-bspline)")
    command.add_argument("--weights", default=None, help="weights file for learned methods")
    command.add_argument("--moving-labels", type=Path, default=None)
    command.add_argument("--fixed-labels", type=Path, default=None)
    command.add_argument("--moving-landmarks", type=Path, default=None,
                         help="CSV of x,y,z world points in mm (RAS), one per row (a header row allowed)")
    command.add_argument("--fixed-landmarks", type=Path, default=None,
                         help="CSV of the corresponding fixed points, same order; result.json gets tre_mm_*")
    command.add_argument("--moving-mask", type=Path, default=None,
                         help="mask on the moving image's grid (non-zero inside): the method sees only that part")
    command.add_argument("--fixed-mask", type=Path, default=None,
                         help="mask on the fixed image's grid (non-zero inside): the method sees only that part")
    command.add_argument("--initial-transform", type=Path, default=None,
                         help="ITK transform file (affine/rigid: .tfm, .txt, ANTs .mat, Slicer .h5) mapping fixed "
                              "to moving points, to start from; the written field includes it")
    add_job_arguments(command, "iterations=50")
    command.set_defaults(run=_run_register)


def add_job_arguments(command, option_example: str) -> None:
    """The arguments every register or segment command ends with: device, options, output, quiet."""
    command.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    command.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                         help=f"a method option, e.g. --option {option_example} (repeatable)")
    command.add_argument("--out", type=Path, required=True, help="output folder")
    command.add_argument("--quiet", action="store_true", help="print no progress")


def _run_register(args) -> int:
    from warpseg.engine import register, run_to_end, write_result
    from warpseg.io import read_initial_transform, read_landmarks, read_volume

    if (args.moving_landmarks is None) != (args.fixed_landmarks is None):
        raise WarpsegError("give both --moving-landmarks and --fixed-landmarks (corresponding points), or neither")
    landmarks = read_landmarks(args.moving_landmarks, args.fixed_landmarks) if args.moving_landmarks else None
    moving = read_volume(args.moving, labels=False)
    fixed = read_volume(args.fixed, labels=False)
    moving_labels = read_volume(args.moving_labels, labels=True) if args.moving_labels else None
    fixed_labels = read_volume(args.fixed_labels, labels=True) if args.fixed_labels else None
    masks = {f"{side}_mask": read_volume(path, labels=True) if path else None
             for side, path in (("moving", args.moving_mask), ("fixed", args.fixed_mask))}
    initial = read_initial_transform(args.initial_transform) if args.initial_transform else None
    job = register(moving, fixed, args.method, moving_labels=moving_labels, fixed_labels=fixed_labels,
                   weights=args.weights, device=args.device, options=parse_options(args.option),
                   landmarks=landmarks, initial_transform=initial, **masks)
    result = run_to_end(job, None if args.quiet else ProgressPrinter(args.method))
    if initial is not None:
        result.details["initial_transform"] = str(args.initial_transform)
    write_result(result, args.out)
    print(format_summary(result, args.out))
    warn_if_label_names_differ(result.metrics, "give --moving-labels and --fixed-labels in one label set")
    return 0


def _add_segment(commands) -> None:
    command = commands.add_parser("segment", help="segment IMAGE and write the label map")
    command.add_argument("image", type=Path)
    command.add_argument("--method", default="atlas-propagation", help="see `warpseg methods` (default: atlas-propagation)")
    command.add_argument("--atlas", type=Path, default=None, help="atlas image, for atlas-based methods")
    command.add_argument("--atlas-labels", type=Path, default=None, help="the atlas's label map")
    command.add_argument("--labels", type=Path, default=None, help="reference labels: result.json gets Dice and HD95")
    command.add_argument("--weights", default=None, help="weights file for learned methods")
    add_job_arguments(command, "registration=nir")
    command.set_defaults(run=_run_segment)


def _run_segment(args) -> int:
    from warpseg.engine import run_to_end, segment, write_segmentation
    from warpseg.io import read_volume
    from warpseg.metrics import dice_headline

    atlas = read_atlas_arguments(args)
    reference = read_volume(args.labels, labels=True) if args.labels else None
    job = segment(read_volume(args.image, labels=False), args.method, atlas=atlas, reference=reference,
                  weights=args.weights, device=args.device, options=parse_options(args.option))
    result = run_to_end(job, None if args.quiet else ProgressPrinter(args.method))
    write_segmentation(result, args.out)
    scores = f"; {dice_headline(result.metrics)}" if "dice_mean" in result.metrics else ""
    print(f"{result.method}: {result.seconds:.2f} s on {result.device}{scores}\nwritten to {args.out}")
    warn_if_label_names_differ(result.metrics, "give --labels in the segmentation's label set")
    return 0


def warn_if_label_names_differ(metrics: dict, what_to_do: str) -> None:
    """Print the shared warning when the scored label maps name their IDs differently (and could not be
    compared by tissue class instead)."""
    from warpseg.metrics import label_names_warning

    if metrics.get("label_names_differ") and not metrics.get("tissue_classes"):
        print(f"warning: {label_names_warning(metrics['label_names_differ'])}; {what_to_do}", file=sys.stderr)


def read_atlas_arguments(args):
    """``(image, labels)`` volumes of ``--atlas`` and ``--atlas-labels``, None without them; both or neither."""
    from warpseg.io import read_volume

    if (args.atlas is None) != (args.atlas_labels is None):
        raise WarpsegError("give both --atlas and --atlas-labels (an image and its label map), or neither")
    return (read_volume(args.atlas, labels=False), read_volume(args.atlas_labels, labels=True)) if args.atlas else None


class ProgressPrinter:
    """Prints progress records to stderr, at most about once a second per stage."""

    def __init__(self, label: str, interval: float = 1.0) -> None:
        self.label, self.interval, self.last = label, interval, {}

    def __call__(self, progress) -> None:
        now = time.monotonic()
        if now - self.last.get(progress.stage, -1e9) < self.interval:
            return
        self.last[progress.stage] = now
        share = f" {progress.fraction:4.0%}" if progress.fraction is not None else ""
        loss = f" loss {progress.loss:.4f}" if progress.loss is not None else ""
        print(f"[{self.label}] {progress.stage}{share} {progress.message}{loss}", file=sys.stderr)


def format_summary(result, out_dir: Path) -> str:
    from warpseg.metrics import segmentation_lines

    metrics = result.metrics
    parts = [f"{result.method}: {result.seconds_registration:.2f} s registration "
             f"({result.seconds_total:.2f} s total) on {result.device}",
             f"folding {metrics['folding_percent']:.3f} %"]
    if "dice_mean" in metrics:
        parts.append(f"Dice {metrics['dice_before']:.3f} -> {metrics['dice_mean']:.3f}, "
                     f"HD95 {metrics['hd95_mean']:.2f} mm")
    if "tre_mm_after" in metrics:
        parts.append(f"TRE {metrics['tre_mm_before']:.2f} -> {metrics['tre_mm_after']:.2f} mm")
    return "\n".join(["; ".join(parts), *segmentation_lines(metrics), f"written to {out_dir}"])


def _add_methods(commands) -> None:
    command = commands.add_parser("methods", help="list the registration methods")
    command.set_defaults(run=_run_methods)


def _run_methods(args) -> int:
    from warpseg.methods import METHODS, SEGMENTATION_METHODS

    print("registration (warpseg register --method NAME):")
    for name, method in METHODS.items():
        missing = method.missing_requirements()
        if missing:
            state = f"needs {', '.join(missing)}"
        elif method.needs_weights:
            shipped = [f"{ndim}D" for ndim in (2, 3) if method.has_shipped_weights(ndim)]
            state = f"weights {'+'.join(shipped)}" if shipped else "no weights"
        else:
            state = "ready"
        print(f"  {name:18s} {state:14s} {method.description}")
    print("segmentation (warpseg segment --method NAME):")
    for name, method in SEGMENTATION_METHODS.items():
        if method.needs_weights:
            shipped = [f"{ndim}D" for ndim in (2, 3) if method.has_shipped_weights(ndim)]
            state = f"weights {'+'.join(shipped)}" if shipped else "no weights"
        else:
            state = "needs an atlas" if method.needs_atlas else "ready"
        print(f"  {name:18s} {state:14s} {method.description}")
    return 0


def _add_train(commands) -> None:
    command = commands.add_parser("train", help="train a learned method on the shared data; writes a checkpoint")
    command.add_argument("method", help="registration: nice-trans, vxm, vxm-diff or lindef; few-shot segmentation: "
                         "nice-transeg, seg-unet, pcreg-rt or brbs (with --labels and --shots)")
    command.add_argument("--data", type=Path, default=None, help="shared data folder (default: $WARPSEG_DATA or ../shared/data)")
    command.add_argument("--ndim", type=int, choices=[2, 3], required=True)
    command.add_argument("--out", type=Path, required=True, help="checkpoint file to write (.pt)")
    command.add_argument("--steps", type=int, default=2000)
    command.add_argument("--lr", type=float, default=1e-4)
    command.add_argument("--smoothness", type=float, default=1.0,
                         help="weight σ of the diffusion regulariser (lindef: on its deformable stage; default 1)")
    command.add_argument("--similarity", default="lncc",
                         help="image similarity: mse, lncc, mi or a weighted sum such as 'mi:0.5,lncc:0.5' (default: lncc)")
    command.add_argument("--dice-weight", type=float, default=1.0, help="weight of the label Dice term (0: unsupervised)")
    command.add_argument("--validate-every", type=int, default=250)
    command.add_argument("--validation-subjects", default=None,
                         help="comma-separated held-out subjects (default vxm; subjY for --labels seg35)")
    command.add_argument("--labels", default="seg4", choices=["seg4", "seg35"],
                         help="segmentation methods: label set to learn (seg35 is 1-shot: only vxm is labelled)")
    command.add_argument("--shots", type=int, default=None,
                         help="segmentation methods: K labelled atlases, real subjects first, then SynthSeg maps "
                              "(default 5 for seg4, 1 for seg35)")
    command.add_argument("--segmentation-weight", type=float, default=1.0,
                         help="segmentation methods: weight of weighted cross-entropy + Dice on the labelled atlas")
    command.add_argument("--consistency-weight", type=float, default=1.0,
                         help="nice-transeg: weight of Dice(S_F, S_M o phi) coupling the fixed segmentation to the warped "
                              "moving one; pcreg-rt: of the registration-made pseudo-labels teaching the segmentation; "
                              "brbs: of the mix-misalignment regulariser")
    command.add_argument("--self-pairs", type=float, default=0.0,
                         help="nice-transeg and pcreg-rt with one atlas (K = 1): share of steps pairing the atlas "
                              "with an augmented copy of itself, a fixed side with known labels (nice-transeg) or "
                              "with pseudo-labels that are nearly right (pcreg-rt) (default 0)")
    command.add_argument("--freeze-registration", action="store_true",
                         help="nice-transeg: train the segmentation branches only; the encoder, affine step and "
                              "registration decoder keep their --init-from weights (a warm-up on small budgets)")
    command.add_argument("--registration-lr-scale", type=float, default=1.0,
                         help="nice-transeg: the encoder, affine step and registration decoder learn at this share "
                              "of --lr, the segmentation branches at --lr (default 1; below 1 keeps the warm start's "
                              "registration while the branches learn, and both still exchange features)")
    command.add_argument("--label-maps", type=int, default=15, help="SynthSeg label maps used for synthetic images")
    command.add_argument("--spacing", type=float, default=None,
                         help="3D training grid spacing in mm (default 2; coarser trains faster, recorded in the checkpoint)")
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    command.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                         help="network constructor option, e.g. --model-option integration_steps=7")
    command.add_argument("--init-from", default=None, metavar="CHECKPOINT[,CHECKPOINT]",
                         help="start from these checkpoints' weights where they fit (e.g. nice-transeg from nice-trans "
                              "weights, convs that gained inputs get zeros there; pcreg-rt from seg-unet and vxm "
                              "weights)")
    command.add_argument("--resume", action="store_true", help="continue from OUT's .state.pt file")
    command.add_argument("--distributed", action="store_true",
                         help="data-parallel training under torchrun (DDP: gloo on CPU, nccl on CUDA), e.g. "
                              "torchrun --nproc_per_node=2 -m warpseg.cli train ... --distributed")
    command.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from warpseg.bench.pairs import default_data_dir
    from warpseg.engine.register import resolve_device, run_to_end
    from warpseg.learning.distributed import is_main_process
    from warpseg.learning.few_shot import default_validation_subjects
    from warpseg.learning.registry import ATLAS_NETWORKS, SEGMENTATION_NETWORKS, SELF_PAIRING_METHODS
    from warpseg.learning.train import TrainingConfig, train_registration

    if args.method in ATLAS_NETWORKS:
        raise WarpsegError(f"{args.method} trains while it builds its atlas: use `warpseg atlas build --ndim {args.ndim} "
                           f"--out DIR`")
    segmenting = args.method in SEGMENTATION_NETWORKS
    if args.self_pairs and args.method not in SELF_PAIRING_METHODS:
        raise WarpsegError(f"--self-pairs applies to {' and '.join(SELF_PAIRING_METHODS)} (the methods that learn "
                           f"from the fixed side's labels or pseudo-labels), not to {args.method}; leave it out")
    if args.freeze_registration and (args.method != "nice-transeg" or not (args.init_from or args.resume)):
        raise WarpsegError("--freeze-registration applies to nice-transeg started from trained weights "
                           "(--init-from a nice-trans or nice-transeg checkpoint, or --resume); add --init-from or "
                           "leave it out")
    if args.registration_lr_scale != 1.0 and (args.method != "nice-transeg" or args.freeze_registration
                                              or not 0.0 < args.registration_lr_scale <= 1.0):
        raise WarpsegError("--registration-lr-scale applies to nice-transeg without --freeze-registration and takes "
                           f"a share in (0, 1], got {args.registration_lr_scale}; fix it or leave it out")
    if args.validation_subjects:
        validation = tuple(args.validation_subjects.split(","))
    else:
        validation = default_validation_subjects(args.labels) if segmenting else ("vxm",)
    shots = args.shots if args.shots is not None else (1 if args.labels == "seg35" else 5)
    config = TrainingConfig(
        method=args.method, ndim=args.ndim, data=str(args.data or default_data_dir()), steps=args.steps,
        learning_rate=args.lr, smoothness=args.smoothness, dice_weight=args.dice_weight, similarity=args.similarity,
        seed=args.seed,
        validate_every=args.validate_every, validation_subjects=validation,
        label_maps=args.label_maps, spacing=args.spacing, device=resolve_device(args.device),
        model_options=parse_options(args.model_option), labels=args.labels, shots=shots,
        segmentation_weight=args.segmentation_weight, consistency_weight=args.consistency_weight,
        self_pairs=args.self_pairs, init_from=str(args.init_from) if args.init_from else None,
        freeze_registration=args.freeze_registration, registration_lr_scale=args.registration_lr_scale)
    printer = ProgressPrinter(f"train {args.method}", 5.0) if is_main_process() else None
    path = run_to_end(train_registration(config, args.out, resume=args.resume, distributed=args.distributed), printer)
    if is_main_process():
        print(f"checkpoint written to {path}")
    return 0


def _add_bench(commands) -> None:
    command = commands.add_parser("bench", help="benchmark methods on the dev pairs; writes BENCHMARKS.md")
    command.add_argument("--data", type=Path, default=None, help="shared data folder (default: $WARPSEG_DATA or ../shared/data)")
    command.add_argument("--methods", default=None,
                         help="comma-separated method names, options in brackets, e.g. "
                              "nir,vxm[refine=100],vxm[weights=FILE] (default: all available, and learned ones refined)")
    command.add_argument("--ndim", type=int, choices=[2, 3], action="append", default=None,
                         help="2 and/or 3 (default: both)")
    command.add_argument("--max-pairs", type=int, default=None, help="use at most this many pairs per dimension")
    command.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    command.add_argument("--viewer", action="store_true",
                         help="measure the napari viewer's responsiveness while registering instead (needs a display)")
    command.add_argument("--section", default=None,
                         help="write the tables into BENCHMARKS.md section SECTION-<n>d instead of register-<n>d "
                              "(e.g. a parameter sweep beside the main table); with --atlas-build: section SECTION "
                              "instead of atlas-evolution")
    command.add_argument("--atlas-build", type=Path, default=None, metavar="DIR",
                         help="report how the atlas in DIR (from `warpseg atlas build`) evolved: table and figure")
    command.add_argument("--held-out-slices", action="store_true",
                         help="2D: register every slice z=90..130 of the held-out subject vxm with the same slice of "
                              "the other subjects, both directions (164 pairs), into section held-out-slices-2d; "
                              "default methods: identity and the learned ones")
    command.add_argument("--segmentation", action="store_true",
                         help="benchmark segmentation instead: few-shot networks and atlas propagation on held-out subjects")
    command.add_argument("--labels", default="seg4,seg35", help="--segmentation: label sets, comma-separated")
    command.add_argument("--corrupt", nargs="?", type=int, const=1, default=0, metavar="N",
                         help="--segmentation: also segment N copies of every target with added noise and bias "
                              "field (seeds 0 to N-1; N defaults to 1) and report their mean")
    command.set_defaults(run=_run_bench)


def _run_bench(args) -> int:
    from warpseg.bench import run_benchmark

    from warpseg.bench.run import parse_method_list

    methods = parse_method_list(args.methods) if args.methods else None
    if args.viewer:
        from warpseg.bench.viewer import run_viewer_benchmark

        run_viewer_benchmark(methods, args.output)
        return 0
    if args.atlas_build:
        from warpseg.bench.atlas import report_atlas_evolution

        print(f"figure: {report_atlas_evolution(args.atlas_build, args.output, section=args.section or 'atlas-evolution')}")
        return 0
    if args.segmentation:
        from warpseg.bench.segmentation import run_segmentation_benchmark

        if args.corrupt < 0:
            raise WarpsegError(f"--corrupt {args.corrupt}: give a number of corrupted copies, 1 or more")

        run_segmentation_benchmark(args.data, methods=methods, ndims=args.ndim or [2], corrupt=args.corrupt,
                                   label_sets=tuple(args.labels.split(",")), output=args.output)
        return 0
    default_ndims = [2] if args.held_out_slices else [2, 3]
    run_benchmark(args.data, methods=methods, ndims=args.ndim or default_ndims, max_pairs=args.max_pairs,
                  output=args.output, section=args.section, held_out_slices=args.held_out_slices)
    return 0


def _add_batch(commands) -> None:
    command = commands.add_parser("batch", help="many registrations or segmentations from a CSV, on local processes or a Dask cluster")
    batch_commands = command.add_subparsers(title="batch commands")
    _add_batch_register(batch_commands)
    _add_batch_segment(batch_commands)
    _add_batch_bench(batch_commands)


def _add_batch_register(commands) -> None:
    command = commands.add_parser("register", help="register every row of a pairs CSV; writes OUT/<id>/ and OUT/summary.csv")
    command.add_argument("--pairs", type=Path, required=True,
                         help="CSV with columns moving,fixed[,moving_labels,fixed_labels,id]; paths relative to the CSV")
    _add_batch_job_options(command, "iterations=50")
    command.set_defaults(run=_run_batch_register)


def _add_batch_segment(commands) -> None:
    command = commands.add_parser("segment", help="segment every row of an images CSV; writes OUT/<id>/ and OUT/summary.csv")
    command.add_argument("--images", type=Path, required=True,
                         help="CSV with columns image[,atlas,atlas_labels,labels,id] (labels: a reference to score); "
                              "paths relative to the CSV")
    _add_batch_job_options(command, "registration=sitk-demons")
    command.set_defaults(run=_run_batch_segment)


def _add_batch_job_options(command, option_example: str) -> None:
    command.add_argument("--method", required=True, help="see `warpseg methods`")
    command.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                         help=f"a method option, e.g. --option {option_example} (repeatable)")
    command.add_argument("--weights", default=None, help="weights file for learned methods (a path the workers can read)")
    command.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="chosen on each worker")
    command.add_argument("--out", type=Path, required=True, help="output folder (rows already there are skipped)")
    command.add_argument("--scheduler", default=None, metavar="ADDRESS",
                         help="a Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: a local cluster)")
    command.add_argument("--workers", type=int, default=1, help="local worker processes (without --scheduler; default 1, in-process)")
    command.add_argument("--quiet", action="store_true", help="print no progress")


def _run_batch_register(args) -> int:
    from warpseg.batch import read_pairs
    from warpseg.methods import get_method

    get_method(args.method)  # fail before starting a cluster
    return _run_batch(args, read_pairs(args.pairs))


def _run_batch_segment(args) -> int:
    from warpseg.batch import read_images
    from warpseg.methods import get_segmenter

    get_segmenter(args.method)
    return _run_batch(args, read_images(args.images))


def _run_batch(args, rows: list) -> int:
    from warpseg.batch import BatchJob, run_batch

    job = BatchJob(args.method, parse_options(args.option), args.weights, args.device)
    records = run_batch(rows, job, args.out, scheduler=args.scheduler, workers=args.workers,
                        on_row=None if args.quiet else print_batch_row)
    counts = {status: sum(r["status"] == status for r in records) for status in ("ok", "skipped", "failed")}
    print(f"{len(records)} rows: {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed; "
          f"summary in {args.out / 'summary.csv'}")
    return 1 if counts["failed"] else 0


def print_batch_row(record: dict, done: int, total: int) -> None:
    """One line on stderr per finished row of a batch."""
    detail = record["error"] or f"{record['seconds_registration'] or record['seconds_total'] or 0:.2f} s"
    if record.get("dice_mean") is not None:
        before = f"{record['dice_before']:.3f} -> " if record.get("dice_before") is not None else ""
        detail += f", Dice {before}{record['dice_mean']:.3f}"
    worker = f" on {record['worker']}" if record.get("worker") else ""
    print(f"[batch] {done}/{total} {record['status']:7s} {record['id']}: {detail}{worker}", file=sys.stderr)


def _add_batch_bench(commands) -> None:
    command = commands.add_parser("bench", help="batch throughput on 1 vs 2 local workers; writes the 'batch' section of BENCHMARKS.md")
    command.add_argument("--data", type=Path, default=None, help="shared data folder (default: $WARPSEG_DATA or ../shared/data)")
    command.add_argument("--method", default="sitk-affine", help="a fast method (default: sitk-affine)")
    command.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                         help="a method option (default: threads=1)")
    command.add_argument("--rows", type=int, default=12, help="batch rows: the 2D dev pairs repeated (default 12)")
    command.add_argument("--gpu-seconds-per-pair", type=float, default=2.0,
                         help="ASSUMED time of one 3D pair on one GPU, for the projection (default 2.0)")
    command.add_argument("--bandwidth-mb-s", type=float, default=100.0,
                         help="ASSUMED storage-to-worker bandwidth per worker in MB/s, for the projection (default 100)")
    command.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    command.set_defaults(run=_run_batch_bench)


def _run_batch_bench(args) -> int:
    from warpseg.bench.batch import Projection, run_batch_benchmark

    options = {"threads": 1, **parse_options(args.option)}
    projection = Projection(gpu_seconds_per_pair=args.gpu_seconds_per_pair, bandwidth_mb_s=args.bandwidth_mb_s)
    run_batch_benchmark(args.data, args.output, method=args.method, options=options, rows=args.rows,
                        projection=projection)
    print(f"section 'batch' written to {args.output}")
    return 0


def _add_brbs(commands) -> None:
    command = commands.add_parser("brbs", help="BRBS jobs: generate labelled images with trained weights")
    brbs_commands = command.add_subparsers(title="brbs commands")
    generate = brbs_commands.add_parser(
        "generate", help="write N labelled images made by space-style sampling (image + labels NIfTI pairs)")
    generate.add_argument("--weights", type=Path, required=True, help="a BRBS checkpoint (warpseg train brbs ...)")
    generate.add_argument("--n", type=int, required=True, help="how many (image, labels) pairs to write")
    generate.add_argument("--out", type=Path, required=True, help="output folder (written all at once, at the end)")
    generate.add_argument("--atlas", type=Path, default=None, help="atlas image (default: the checkpoint's)")
    generate.add_argument("--atlas-labels", type=Path, default=None, help="the atlas's label map")
    generate.add_argument("--images", type=Path, nargs="+", default=None,
                          help="unlabelled target images whose shapes and styles are sampled (with --atlas)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    generate.add_argument("--quiet", action="store_true", help="print no progress")
    generate.set_defaults(run=_run_brbs_generate)


def _run_brbs_generate(args) -> int:
    from warpseg.engine import run_to_end
    from warpseg.engine.generate import generate_labelled_images
    from warpseg.io import read_volume

    atlas = read_atlas_arguments(args)
    images = [read_volume(path, labels=False) for path in args.images or []]
    job = generate_labelled_images(args.weights, args.n, args.out, atlas=atlas, images=images, seed=args.seed,
                                   device=args.device)
    written = run_to_end(job, None if args.quiet else ProgressPrinter("brbs generate"))
    print(f"{args.n} labelled images written to {args.out} ({len(written)} files; open the pairs in napari)")
    return 0


def _add_atlas(commands) -> None:
    command = commands.add_parser("atlas", help="atlas jobs: build an Atlas-ISTN atlas and model")
    atlas_commands = command.add_subparsers(title="atlas commands")
    build = atlas_commands.add_parser(
        "build", help="train Atlas-ISTN while building its atlas; writes the atlas (NIfTI), model.pt and the "
                      "per-epoch history into OUT, all at once at the end")
    build.add_argument("--data", type=Path, default=None, help="shared data folder (default: $WARPSEG_DATA or ../shared/data)")
    build.add_argument("--ndim", type=int, choices=[2, 3], default=2)
    build.add_argument("--labels", default="seg4", choices=["seg4", "seg35"], help="label set of the atlas")
    build.add_argument("--epochs", type=int, default=50, help="epochs, each followed by an atlas update (default 50)")
    build.add_argument("--steps-per-epoch", type=int, default=100, help="training steps per epoch (default 100)")
    build.add_argument("--out", type=Path, required=True, help="output folder")
    build.add_argument("--lr", type=float, default=1e-3)
    build.add_argument("--atlas-rate", type=float, default=0.01, help="η: atlas update rate per epoch (paper: 0.01)")
    build.add_argument("--smoothness", type=float, default=500.0, help="λ: weight of the velocity smoothness (paper: 500-800)")
    build.add_argument("--omega", type=float, default=1.0, help="ω: weight of the registration terms")
    build.add_argument("--omega-ramp-epoch", type=int, default=0,
                       help="ramp ω with a sigmoid centred on this epoch (paper, brains: 200; default 0: constant)")
    build.add_argument("--dice-weight", type=float, default=0.0,
                       help="add this weight times (1 - soft Dice) to the ITN's squared-error loss (default 0: the "
                            "paper's loss; the seg35 build uses it, see the README)")
    build.add_argument("--cross-entropy-weight", type=float, default=0.0,
                       help="add this weight times class-weighted cross-entropy to the ITN's loss (default 0: the "
                            "paper's loss; 3D needs it, see the README)")
    build.add_argument("--validation-subjects", default=None,
                       help="comma-separated held-out subjects (default vxm; subjY for --labels seg35)")
    build.add_argument("--label-maps", type=int, default=15, help="SynthSeg label maps used as labelled subjects")
    build.add_argument("--synthetic-share", type=float, default=0.2,
                       help="share of training draws with images synthesised from the label maps (default 0.2)")
    build.add_argument("--spacing", type=float, default=None, help="3D training grid spacing in mm (default 2)")
    build.add_argument("--slab", type=int, default=2, help="2D: slices within this distance of the benchmark slice")
    build.add_argument("--snapshot-every", type=int, default=0,
                       help="also write the atlas of every N-th epoch (atlas_*_epochNNN.nii.gz; default 0: none)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    build.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                       help="network constructor option, e.g. --model-option stn_downsize=2")
    build.add_argument("--resume", action="store_true",
                       help="continue the finished build in OUT up to --epochs (the optimiser restarts)")
    build.add_argument("--quiet", action="store_true", help="print no progress")
    build.add_argument("--distributed", action="store_true",
                       help="data-parallel build under torchrun (DDP: gloo on CPU, nccl on CUDA; the atlas update "
                            "warps the training set split over the processes), e.g. "
                            "torchrun --nproc_per_node=2 -m warpseg.cli atlas build ... --distributed")
    build.set_defaults(run=_run_atlas_build)


def _run_atlas_build(args) -> int:
    from warpseg.bench.pairs import default_data_dir
    from warpseg.engine.register import resolve_device, run_to_end
    from warpseg.learning.atlas_build import AtlasConfig, build_atlas
    from warpseg.learning.distributed import is_main_process

    config = AtlasConfig(
        data=str(args.data or default_data_dir()), ndim=args.ndim, labels=args.labels, epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        learning_rate=args.lr, atlas_rate=args.atlas_rate, smoothness=args.smoothness, omega=args.omega,
        omega_ramp_epoch=args.omega_ramp_epoch, dice_weight=args.dice_weight,
        cross_entropy_weight=args.cross_entropy_weight, seed=args.seed,
        validation_subjects=tuple(args.validation_subjects.split(",")) if args.validation_subjects else (),
        label_maps=args.label_maps, synthetic_share=args.synthetic_share, spacing=args.spacing, slab=args.slab, snapshot_every=args.snapshot_every,
        device=resolve_device(args.device), model_options=parse_options(args.model_option))
    printer = ProgressPrinter("atlas build", 5.0) if is_main_process() and not args.quiet else None
    written = run_to_end(build_atlas(config, args.out, resume=args.resume, distributed=args.distributed), printer)
    if is_main_process():
        print(f"atlas and model written to {args.out} ({len(written)} files)")
    return 0


def _add_demo(commands) -> None:
    command = commands.add_parser("demo", help="the main job: register and segment the sample pair with the shipped "
                                             "NICE-Transeg, write results and screenshots")
    command.add_argument("--out", type=Path, default=Path("demo_output"))
    command.add_argument("--method", default=None, help="registration method (default: the demo's choice)")
    command.add_argument("--ndim", type=int, choices=[2, 3], default=3)
    command.add_argument("--no-screenshot", action="store_true")
    command.add_argument("--show", action="store_true", help="keep the napari window open afterwards (needs a display)")
    command.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    from warpseg.demo import run_demo

    run_demo(args.out, method=args.method, ndim=args.ndim, screenshot=not args.no_screenshot, stay_open=args.show)
    return 0


if __name__ == "__main__":
    sys.exit(main())
