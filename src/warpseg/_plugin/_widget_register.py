"""The registration dock widget: pick layers and a method, run it in a worker thread, inspect.

Every method of the registry appears here without GUI changes: the widget only speaks the
register contract (``warpseg.engine.register``). The job and the making of the result views run
in a worker thread; the viewer's thread only draws progress and, at the end, adds the layers.
A cancelled or failed run adds nothing and leaves the user's layers as they were.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, Label, LineEdit, PushButton

from warpseg._plugin._layers import layer_to_volume
from warpseg._plugin._result_views import layer_name, preview_layer, result_layers, slice_overlays
from warpseg._plugin._settings import load_settings, save_settings
from warpseg._plugin._widget_base import JobWidget
from warpseg.errors import InputError, WarpsegError
from warpseg.methods import METHODS
from warpseg.methods.base import preview_shape
from warpseg.metrics import label_names_warning, segmentation_lines

if TYPE_CHECKING:
    import napari

    from warpseg.engine import RegistrationResult

DEFAULT_METHOD = "sitk-demons"
SETTINGS_KEY = "register"
FLICKER_MS = 600
PREVIEW_DELAY_MS = 40  # a preview fills the live layer this long after its progress record is drawn
METRICS_LINES = 5  # room for describe_metrics's four lines: with only four the last is clipped in the dock


class RegistrationWidget(JobWidget):
    """Plugins ▸ napari-warpseg ▸ Register: moving → fixed with any method of the registry."""

    run_text = "Register"

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self.method = ComboBox(label="method", choices=list(METHODS), value=DEFAULT_METHOD)
        self.about = Label(label="")
        self.weights = FileEdit(label="weights", mode="r", filter="*.pt", value="",
                                tooltip="a checkpoint file (.pt); empty uses the shipped weights")
        self.moving_mask, self.fixed_mask = self.labels_picker("moving mask"), self.labels_picker("fixed mask")
        for picker in (self.moving_mask, self.fixed_mask):
            picker.tooltip = "a Labels layer on the image's grid (non-zero inside): the method sees only that part"
        self.initial = FileEdit(label="initial transform", mode="r", filter="*.tfm *.txt *.mat *.h5", value="",
                                tooltip="an ITK affine or rigid transform (ANTs, Slicer, SimpleITK) to start from; "
                                        "empty: start from the images as they lie")
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self.scheduler = LineEdit(label="run on", value="",
                                  tooltip="a Dask scheduler address (e.g. tcp://gpu-server:8786) to run the job there; "
                                          "empty: this computer")
        self.method_options = LineEdit(label="options", value="")
        self.metrics = Label(label="", value="")
        self.flicker = CheckBox(text="flicker fixed / warped", value=False)
        self.save_folder = FileEdit(label="save to", mode="d", value="")
        self.save_button = PushButton(text="Save results", enabled=False)
        self.extend([*self.pair_widgets(), self.moving_mask, self.fixed_mask, self.method, self.about, self.weights,
                     self.initial, self.device, self.scheduler, self.method_options, *self.run_widgets(), self.metrics,
                     self.flicker, self.save_folder, self.save_button])
        self.reserve_lines(self.about, 4)
        self.reserve_lines(self.log, 2)
        self.reserve_lines(self.metrics, METRICS_LINES, wrap=False)
        self.result: RegistrationResult | None = None
        self._running_method, self._running_fixed, self._refines = DEFAULT_METHOD, None, False
        self._flicker_timer = None
        self.method.changed.connect(self._describe_method)
        self.flicker.changed.connect(self._toggle_flicker)
        self.save_button.clicked.connect(self.save)
        napari_viewer.dims.events.current_step.connect(self._update_slice_overlays)
        napari_viewer.dims.events.ndisplay.connect(self._update_slice_overlays)
        self.pick_default_layers()
        self.restore_settings()
        self._describe_method()

    def _describe_method(self, *_: Any) -> None:
        self.about.value = describe_method(self.method.value)
        self.method_options.value = load_settings(SETTINGS_KEY).get("options", {}).get(self.method.value, "")
        defaults = getattr(METHODS[self.method.value], "defaults", None)
        self.method_options.tooltip = ("KEY=VALUE pairs separated by spaces, e.g. iterations=60,30,10. " +
                                       (f"Options: {', '.join(sorted(defaults))}" if defaults else "No options."))

    def restore_settings(self) -> None:
        """The method and device last run (the options follow the method, see :meth:`_describe_method`)."""
        saved = load_settings(SETTINGS_KEY)
        if saved.get("method") in METHODS:
            self.method.value = saved["method"]
        if saved.get("device") in self.device.choices:
            self.device.value = saved["device"]

    def remember_settings(self, request: dict[str, Any]) -> None:
        """Keep what is being run for the next session: method, device, and this method's options."""
        options = {**load_settings(SETTINGS_KEY).get("options", {}), request["method"]: self.method_options.value}
        save_settings(SETTINGS_KEY, {"method": request["method"], "device": request["device"], "options": options})

    # --- running -------------------------------------------------------------------------------
    def request(self) -> dict[str, Any]:
        """The register() arguments from the widget's fields; a clear InputError when they are wrong."""
        from warpseg.engine.validate import check_mask
        from warpseg.io import read_initial_transform
        from warpseg.io.initial_transform import check_initial_transform
        from warpseg.options import parse_options

        volumes = self.pair_volumes()
        weights = str(self.weights.value) if str(self.weights.value) not in ("", ".") else None
        try:
            options = parse_options(self.method_options.value.split())
        except WarpsegError as error:
            raise InputError(str(error).replace("--option ", "")) from None
        scheduler = self.scheduler.value.strip() or None
        initial = None
        if self.initial.line_edit.value.strip() not in ("", "."):  # the text: magicgui turns a cleared path into the cwd
            if scheduler:
                raise InputError("an initial transform runs on this computer only; empty 'run on', or the transform")
            initial = read_initial_transform(self.initial.value)
            check_initial_transform(initial, volumes["fixed"])
        masks = {f"{side}_mask": None if picker.value is None else layer_to_volume(picker.value)
                 for side, picker in (("moving", self.moving_mask), ("fixed", self.fixed_mask))}
        for side in ("moving", "fixed"):
            if masks[f"{side}_mask"] is not None:
                check_mask(masks[f"{side}_mask"], volumes[side], side)
        return {**volumes, "method": self.method.value, "weights": weights, "device": self.device.value,
                "options": options, "scheduler": scheduler, "initial_transform": initial, "masks": masks}

    def prepare_job(self):
        from warpseg.engine import register

        request = self.request()
        self.remember_settings(request)
        fixed, method = request["fixed"], request["method"]
        slice_at = self.slice_position(fixed)
        self._running_method, self._running_fixed = method, fixed
        self._refines = bool(request["options"].get("refine"))  # test-time optimisation: it streams and can stop early

        def make_job():  # here, or on a Dask cluster (same contract, progress streams back)
            arguments = {"moving_labels": request["moving_labels"], "fixed_labels": request["fixed_labels"],
                         "weights": request["weights"], "device": request["device"], "options": request["options"],
                         **request["masks"]}
            if request["scheduler"]:
                from warpseg.batch.remote import remote_register

                return remote_register(request["scheduler"], request["moving"], fixed, method, **arguments)
            return register(request["moving"], fixed, method, initial_transform=request["initial_transform"],
                            **arguments)

        def finish(result):  # in the worker thread: every array the viewer will get
            return result, result_layers(result) + slice_overlays(result, *slice_at)

        self.result = None  # the slice overlays follow the new result once it is fully shown
        if METHODS[method].streams_preview or self._refines:
            self.show_empty_preview(fixed, method, self.moving.value.contrast_limits)
        return make_job, finish

    def show_empty_preview(self, fixed, method: str, contrast_limits) -> None:
        """The live layer, empty until the previews fill it in place. It is made here, when Run is
        pressed, because creating a napari layer holds the event loop for a few hundred ms here: made
        by the first preview it froze the viewer in the middle of the job. It has the preview grid
        every streaming method samples on, and the moving image's contrast, so a preview only
        replaces its values."""
        empty = np.zeros(preview_shape(fixed.shape), np.float32)
        selection = self.viewer.layers.selection
        kept, active = set(selection), selection.active
        self.show_layer(preview_layer(empty, fixed, layer_name(method, "live"), contrast_limits=contrast_limits))
        selection.clear()
        selection.update(kept)
        selection.active = active

    def can_finish_early(self) -> bool:
        return METHODS[self._running_method].can_finish_early or self._refines

    def on_progress(self, progress) -> None:
        from qtpy.QtCore import QTimer

        super().on_progress(progress)
        if progress.preview is not None and progress.preview.ndim == self._running_fixed.ndim:
            # in a turn of the event loop of its own: the progress bar and log line repaint first
            QTimer.singleShot(PREVIEW_DELAY_MS, lambda: self.fill_live_layer(progress.preview))

    def fill_live_layer(self, preview: np.ndarray) -> None:
        """Show ``preview`` in the live layer: its values in place when the grid is the layer's (no
        re-slicing of the viewer's dimensions, no new contrast). Nothing once the job has ended and
        removed the layer."""
        name = layer_name(self._running_method, "live")
        if name not in self.viewer.layers:
            return
        layer = self.viewer.layers[name]
        data, attributes, _ = preview_layer(preview, self._running_fixed, name, contrast_limits=layer.contrast_limits)
        if layer.data.shape != data.shape:  # a method of its own grid
            layer.affine, layer.data = attributes["affine"], data
            return
        layer.data[...] = data
        layer.refresh(extent=False, highlight=False)

    def job_done(self, result: RegistrationResult) -> None:
        self.remove_layer(layer_name(result.method, "live"))
        self.result = result
        differing = result.metrics.get("label_names_differ")
        extra = 1 + len(label_names_warning(differing)) // 30 if differing else 0
        extra += 2 * len(segmentation_lines(result.metrics))  # a line each, wrapped in the narrow dock
        self.reserve_lines(self.metrics, METRICS_LINES + extra, wrap=bool(extra))  # the dock does not grow by itself
        self.metrics.value = describe_metrics(result)
        self.log.value = (f"{result.method}: done in {result.seconds_total:.1f} s"
                          + (" (partial result)" if result.partial else ""))
        self.save_button.enabled = True

    def job_stopped(self) -> None:
        self.remove_layer(layer_name(self._running_method, "live"))

    # --- inspecting ----------------------------------------------------------------------------
    def _update_slice_overlays(self, *_: Any) -> None:
        result = self.result
        if result is None or result.fixed.ndim != 3 or layer_name(result.method, "grid") not in self.viewer.layers:
            return
        axis, index = self.slice_position(result.fixed)
        if axis is None:
            return
        for layer_data in slice_overlays(result, axis, index):
            self.show_layer(layer_data)

    def _toggle_flicker(self, on: bool) -> None:
        from qtpy.QtCore import QTimer

        if self._flicker_timer is None:
            self._flicker_timer = QTimer()
            self._flicker_timer.setInterval(FLICKER_MS)
            self._flicker_timer.timeout.connect(self._flick)
        if on:
            self._flicker_timer.start()
        else:
            self._flicker_timer.stop()

    def _flick(self) -> None:
        if self.result is None:
            return
        name = layer_name(self.result.method, "warped")
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.visible = not layer.visible

    def save(self) -> Path | None:
        """Write the last result (register contract files) to the chosen folder."""
        from warpseg.engine import write_result

        folder = str(self.save_folder.value)
        if self.result is None or folder in ("", "."):
            self.report_error(InputError("pick a folder to save to (and run a registration first)"))
            return None
        try:
            files = write_result(self.result, Path(folder))
        except (WarpsegError, OSError) as error:
            self.report_error(error)
            return None
        self.log.value = f"saved {len(files)} files to {folder}"
        return Path(folder)


def describe_method(name: str) -> str:
    """The method's description and whether it can run here (requirements, shipped weights)."""
    method = METHODS[name]
    missing = method.missing_requirements()
    if missing:
        state = f"needs {', '.join(missing)} (not installed)"
    elif method.needs_weights:
        shipped = [f"{n}D" for n in (2, 3) if method.has_shipped_weights(n)]
        state = f"shipped weights: {', '.join(shipped) or 'none; pick a file'}"
    else:
        state = "no weights needed"
    return f"{method.description}\n{state}"


def describe_metrics(result: RegistrationResult) -> str:
    """The result's scores on a few lines: Dice before → after, HD95, folds (count and %), NCC, the
    joint methods' segmentations against the labels of their images, time."""
    metrics = result.metrics
    lines = []
    if "dice_mean" in metrics:
        lines.append(f"Dice {metrics.get('dice_before', float('nan')):.3f} → {metrics['dice_mean']:.3f}"
                     + (f" · HD95 {metrics['hd95_mean']:.2f} mm" if "hd95_mean" in metrics else ""))
        if metrics.get("label_names_differ"):
            lines.append(label_names_warning(metrics["label_names_differ"]))
    folds = int(np.count_nonzero(result.jacobian.array <= 0))
    lines.append(f"folds (det J ≤ 0): {folds} voxels, {metrics['folding_percent']:.3f} %")
    lines.append(f"NCC {metrics['ncc_before']:.3f} → {metrics['ncc_after']:.3f}")
    lines.extend(segmentation_lines(metrics))
    lines.append(f"{result.seconds_registration:.2f} s on {result.device}")
    return "\n".join(lines)
