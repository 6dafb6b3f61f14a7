"""The compare dock widget: several methods on one pair, one metrics table, layers toggled per method.

The methods run one after the other in one worker job; each adds the same result layers as the
Register widget (named ``"<method>: <view>"``). Picking a method in 'show' makes its layers
visible and hides the others'. The table exports as CSV and the view as PNG.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, PushButton, Select, Table

from warpseg._plugin._result_views import layer_name, result_layers, slice_overlays
from warpseg._plugin._widget_base import JobWidget
from warpseg.errors import InputError
from warpseg.methods import Progress, available_methods

if TYPE_CHECKING:
    import napari

    from warpseg.engine import RegistrationResult

COLUMNS = ("method", "Dice before", "Dice after", "HD95 (mm)", "fold %", "folds", "seconds")
DEFAULT_METHODS = ("identity", "sitk-affine", "sitk-demons")
SHOWN_VIEWS = ("warped", "warped labels", "grid", "folds")


class CompareWidget(JobWidget):
    """Plugins ▸ napari-warpseg ▸ Compare methods: one table of Dice, HD95, folds and time."""

    run_text = "Compare"

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        names = available_methods()
        self.methods = Select(label="methods", choices=names, value=[m for m in DEFAULT_METHODS if m in names])
        self.table = Table(value=table_columns([]))
        self.shown = ComboBox(label="show", choices=[])
        self.csv_file = FileEdit(label="table CSV", mode="w", filter="*.csv", value="")
        self.csv_button = PushButton(text="Export table")
        self.png_file = FileEdit(label="view PNG", mode="w", filter="*.png", value="")
        self.png_button = PushButton(text="Save view")
        self.extend([*self.pair_widgets(), self.methods, *self.run_widgets(), self.table, self.shown,
                     self.csv_file, self.csv_button, self.png_file, self.png_button])
        self.reserve_lines(self.log, 2)
        self.results: list[RegistrationResult] = []
        self.shown.changed.connect(self.show_method)
        self.csv_button.clicked.connect(self.export_table)
        self.png_button.clicked.connect(self.save_view)
        self.pick_default_layers()

    def prepare_job(self):
        from warpseg.engine import register

        volumes = self.pair_volumes()
        methods = list(self.methods.value)
        if not methods:
            raise InputError("pick at least one method to compare")
        slice_at = self.slice_position(volumes["fixed"])

        def make_job():
            results = []
            for number, method in enumerate(methods, start=1):
                job = register(volumes["moving"], volumes["fixed"], method, moving_labels=volumes["moving_labels"],
                               fixed_labels=volumes["fixed_labels"])
                result = yield from _labelled(job, f"{method} ({number}/{len(methods)})")
                results.append(result)
            return results

        def finish(results):  # in the worker thread
            layers = []
            for result in results:
                views = result_layers(result) + slice_overlays(result, *slice_at)
                layers += [(data, {**attributes, "visible": False}, kind) for data, attributes, kind in views]
            return results, layers

        return make_job, finish

    def job_done(self, results: list[RegistrationResult]) -> None:
        self.results = results
        self.table.value = table_columns([metric_row(result) for result in results])
        self.shown.choices = [result.method for result in results]
        self.shown.value = results[-1].method
        self.show_method(results[-1].method)
        self.log.value = f"compared {len(results)} methods"

    def show_method(self, method: str | None) -> None:
        """Show ``method``'s main layers (warped, labels, grid, folds) and hide the other methods'."""
        if not method:
            return
        for result in self.results:
            for view in SHOWN_VIEWS:
                name = layer_name(result.method, view)
                if name in self.viewer.layers:
                    self.viewer.layers[name].visible = result.method == method

    def export_table(self) -> Path | None:
        path = str(self.csv_file.value)
        if not self.results or path in ("", "."):
            self.report_error(InputError("run a comparison and pick a CSV file name first"))
            return None
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            writer.writerows(metric_row(result) for result in self.results)
        self.log.value = f"table written to {path}"
        return Path(path)

    def save_view(self) -> Path | None:
        path = str(self.png_file.value)
        if path in ("", "."):
            self.report_error(InputError("pick a PNG file name first"))
            return None
        self.viewer.screenshot(path, canvas_only=True)
        self.log.value = f"view saved to {path}"
        return Path(path)


def metric_row(result: RegistrationResult) -> list[Any]:
    """One table row: method, Dice before/after, HD95, fold % and count, registration seconds."""
    metrics = result.metrics

    def rounded(key: str, digits: int = 3):
        value = metrics.get(key)
        return None if value is None or not np.isfinite(value) else round(float(value), digits)

    return [result.method, rounded("dice_before"), rounded("dice_mean"), rounded("hd95_mean", 2),
            rounded("folding_percent"), int(np.count_nonzero(result.jacobian.array <= 0)),
            round(result.seconds_registration, 2)]


def table_columns(rows: list[list[Any]]) -> dict[str, list[Any]]:
    """Rows as the ``{column: values}`` mapping a magicgui Table takes."""
    return {column: [row[index] for row in rows] for index, column in enumerate(COLUMNS)}


def _labelled(job, label: str):
    """Run ``job``, prefixing its progress stages with ``label``; return its value."""
    while True:
        try:
            progress = next(job)
        except StopIteration as stop:
            return stop.value
        try:
            yield Progress(f"{label} {progress.stage}", progress.step, progress.total, progress.message,
                           progress.loss, progress.preview)
        except GeneratorExit:
            job.close()
            raise
