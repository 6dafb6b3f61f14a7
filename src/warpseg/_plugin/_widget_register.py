"""The registration dock widget: pick layers and a method, run it in a worker thread, inspect.

Every method of the registry appears here without GUI changes: the widget only speaks the
register contract (``warpseg.engine.register``). The job and the making of the result views run
in a worker thread; the viewer's thread only draws progress and, at the end, adds the layers.
A cancelled or failed run adds nothing and leaves the user's layers as they were.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import QSizePolicy
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton

from warpseg._plugin._jobs import JobHandle, ProgressClock, format_eta
from warpseg._plugin._layers import layer_to_volume
from warpseg._plugin._result_views import layer_name, preview_layer, result_layers, slice_overlays
from warpseg.errors import InputError, WarpsegError
from warpseg.methods import METHODS

if TYPE_CHECKING:
    import napari

    from warpseg.engine import RegistrationResult

DEFAULT_METHOD = "sitk-demons"
NO_LAYER = ("—", None)
FLICKER_MS = 600


class RegistrationWidget(Container):
    """Plugins ▸ napari-warpseg ▸ Register: moving → fixed with any method of the registry."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.moving = ComboBox(label="moving image", choices=self._volume_layers)
        self.moving_labels = ComboBox(label="moving labels", choices=self._label_layers)
        self.fixed = ComboBox(label="fixed image", choices=self._volume_layers)
        self.fixed_labels = ComboBox(label="fixed labels", choices=self._label_layers)
        self.method = ComboBox(label="method", choices=list(METHODS), value=DEFAULT_METHOD)
        self.about = Label(label="")
        self.weights = FileEdit(label="weights", mode="r", filter="*.pt", value="",
                                tooltip="a checkpoint file (.pt); empty uses the shipped weights")
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self.method_options = LineEdit(label="options", value="",
                                tooltip="KEY=VALUE pairs separated by spaces, e.g. iterations=60,30,10 smoothing_sigma=2")
        self.run_button = PushButton(text="Register")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="", min=0, max=1000, value=0)
        self.log = Label(label="", value="ready")
        self.metrics = Label(label="", value="")
        self.flicker = CheckBox(text="flicker fixed / warped", value=False)
        self.save_folder = FileEdit(label="save to", mode="d", value="")
        self.save_button = PushButton(text="Save results", enabled=False)
        self.extend([self.moving, self.moving_labels, self.fixed, self.fixed_labels, self.method, self.about,
                     self.weights, self.device, self.method_options, Container(widgets=[self.run_button, self.cancel_button],
                                                                          layout="horizontal", labels=False),
                     self.progress, self.log, self.metrics, self.flicker,
                     self.save_folder, self.save_button])
        self.job: JobHandle | None = None
        self._pending: list[tuple] = []
        self._showing = False  # result layers still being added
        self.result: RegistrationResult | None = None
        self._clock = ProgressClock()
        self._flicker_timer = None
        self.method.changed.connect(self._describe_method)
        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.flicker.changed.connect(self._toggle_flicker)
        self.save_button.clicked.connect(self.save)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(lambda _: self.reset_choices())
        napari_viewer.dims.events.current_step.connect(self._update_slice_overlays)
        napari_viewer.dims.events.ndisplay.connect(self._update_slice_overlays)
        for label in (self.about, self.log, self.metrics):  # changing text must not re-lay out the window
            label.native.setWordWrap(True)
            label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
            label.native.setMinimumHeight(label.native.fontMetrics().lineSpacing() * (3 if label is self.metrics else 2))
        self._pick_defaults()
        self._describe_method()

    # --- choices -------------------------------------------------------------------------------
    def _volume_layers(self, _widget=None) -> list:
        from napari.layers import Image, Labels

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image | Labels)]

    def _label_layers(self, _widget=None) -> list:
        from napari.layers import Labels

        return [NO_LAYER] + [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)]

    def _pick_defaults(self) -> None:
        """Preselect layers named like the sample pair's (``moving``, ``fixed``, ``* labels``)."""
        for combo, name in ((self.moving, "moving"), (self.fixed, "fixed"),
                            (self.moving_labels, "moving labels"), (self.fixed_labels, "fixed labels")):
            for layer in self.viewer.layers:
                if layer.name == name:
                    combo.value = layer

    def _describe_method(self, *_: Any) -> None:
        method = METHODS[self.method.value]
        missing = method.missing_requirements()
        if missing:
            state = f"needs {', '.join(missing)} (not installed)"
        elif method.needs_weights:
            shipped = [f"{n}D" for n in (2, 3) if method.has_shipped_weights(n)]
            state = f"shipped weights: {', '.join(shipped) or 'none; pick a file'}"
        else:
            state = "no weights needed"
        self.about.value = f"{method.description}\n{state}"
        defaults = getattr(method, "defaults", None)
        self.method_options.tooltip = ("KEY=VALUE pairs separated by spaces. " +
                                (f"Options: {', '.join(sorted(defaults))}" if defaults else "No options."))

    # --- running -------------------------------------------------------------------------------
    def request(self) -> dict[str, Any]:
        """The register() arguments from the widget's fields; a clear InputError when they are wrong."""
        from napari.layers import Labels

        from warpseg.cli import parse_options

        moving, fixed = self.moving.value, self.fixed.value
        if moving is None or fixed is None:
            raise InputError("pick a moving and a fixed image layer (File ▸ Open Sample has a brain pair)")
        for role, layer in (("moving", moving), ("fixed", fixed)):
            if isinstance(layer, Labels):
                raise InputError(f"layer {layer.name!r} is a Labels layer; pick an Image layer as the {role} image "
                                 f"(label maps go in '{role} labels')")
        if moving is fixed:
            raise InputError("the moving and fixed images are the same layer; pick two different layers")
        volumes = {role: layer_to_volume(layer) for role, layer in (("moving", moving), ("fixed", fixed))}
        for role, combo in (("moving_labels", self.moving_labels), ("fixed_labels", self.fixed_labels)):
            volumes[role] = None if combo.value is None else layer_to_volume(combo.value)
        if volumes["moving"].ndim != volumes["fixed"].ndim:
            raise InputError(f"moving layer {moving.name!r} is {volumes['moving'].ndim}D but fixed layer "
                             f"{fixed.name!r} is {volumes['fixed'].ndim}D; pick two 2D or two 3D layers")
        weights = str(self.weights.value) if str(self.weights.value) not in ("", ".") else None
        try:
            options = parse_options(self.method_options.value.split())
        except WarpsegError as error:
            raise InputError(str(error).replace("--option ", "")) from None
        return {**volumes, "method": self.method.value, "weights": weights, "device": self.device.value,
                "options": options}

    @property
    def busy(self) -> bool:
        """True while a job runs or its result layers are still being added."""
        return self._showing or (self.job is not None and self.job.running)

    def start(self) -> JobHandle | None:
        """Start the registration in a worker thread (nothing happens while one is busy)."""
        from warpseg.engine import register

        if self.busy:
            return self.job
        try:
            request = self.request()
        except WarpsegError as error:
            self._report_error(error)
            return None
        fixed = request["fixed"]
        slice_at = self._slice_position(fixed)

        def make_job():
            return register(request["moving"], fixed, request["method"], moving_labels=request["moving_labels"],
                            fixed_labels=request["fixed_labels"], weights=request["weights"],
                            device=request["device"], options=request["options"])

        def finish(result):  # in the worker thread: every array the viewer will get
            return result, result_layers(result), slice_overlays(result, *slice_at)

        self._clock = ProgressClock()
        self._set_running(True, f"{request['method']}: starting")
        self.job = JobHandle(make_job, finish=finish, on_progress=lambda p: self._on_progress(p, fixed, request["method"]),
                             on_done=self._on_done, on_error=self._on_error, on_cancelled=self._on_cancelled)
        return self.job

    def cancel(self) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.log.value = "cancelling…"

    def _on_progress(self, progress, fixed, method: str) -> None:
        fraction = progress.fraction
        self.progress.value = int(1000 * fraction) if fraction is not None else 0
        parts = [f"{progress.stage}", progress.message, format_eta(self._clock.eta(progress))]
        if progress.loss is not None:
            parts.append(f"loss {progress.loss:.4f}")
        self.log.value = " · ".join(part for part in parts if part)
        if progress.preview is not None and progress.preview.ndim == fixed.ndim:
            self._show_layer(preview_layer(progress.preview, fixed, layer_name(method, "live")))

    def _on_done(self, value) -> None:
        """Add the result layers one per turn of the event loop, so the viewer keeps drawing."""
        result, layers, overlays = value
        self._remove(layer_name(result.method, "live"))
        self.result = None  # the slice overlays follow the new result once it is fully shown
        self._pending, self._showing = list(layers + overlays), True
        self.log.value = f"{result.method}: adding {len(self._pending)} layers"
        self._add_pending(result)

    def _add_pending(self, result) -> None:
        from qtpy.QtCore import QTimer

        if self._pending:
            self._show_layer(self._pending.pop(0))
            QTimer.singleShot(0, lambda: self._add_pending(result))
            return
        self.result, self._showing = result, False
        self.metrics.value = describe_metrics(result)
        self._set_running(False, f"{result.method}: done in {result.seconds_total:.1f} s"
                          + (" (partial result)" if result.partial else ""))
        self.progress.value = 1000
        self.save_button.enabled = True

    def _on_error(self, error: Exception) -> None:
        self._remove(layer_name(self.method.value, "live"))
        self._set_running(False, "failed")
        self._report_error(error)

    def _on_cancelled(self) -> None:
        self._remove(layer_name(self.method.value, "live"))
        self._set_running(False, "cancelled; no layers were changed")
        self.progress.value = 0

    def _set_running(self, running: bool, message: str) -> None:
        self.run_button.enabled, self.cancel_button.enabled = not running, running
        self.log.value = message

    def _report_error(self, error: Exception) -> None:
        """A notification (and the log line); unexpected errors also go to the log with their traceback."""
        from napari.utils.notifications import show_error

        self.log.value = f"error: {error}"
        if not isinstance(error, WarpsegError):
            logging.getLogger(__name__).error("registration failed", exc_info=error)
        show_error(f"warpseg: {error}" if isinstance(error, WarpsegError) else f"warpseg: {type(error).__name__}: {error}")

    # --- result layers -------------------------------------------------------------------------
    def _show_layer(self, layer_data: tuple) -> None:
        """Add a layer, or update the one of the same name in place (same type)."""
        data, attributes, layer_type = layer_data
        name = attributes["name"]
        if name in self.viewer.layers and self.viewer.layers[name]._type_string == layer_type:
            layer = self.viewer.layers[name]
            layer.affine = attributes["affine"]
            layer.data = data
            if "contrast_limits" in attributes:
                layer.contrast_limits = attributes["contrast_limits"]
            return
        self._remove(name)
        getattr(self.viewer, f"add_{layer_type}")(data, **attributes)

    def _remove(self, name: str) -> None:
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)

    def _slice_position(self, fixed) -> tuple[int | None, int]:
        """(napari data axis, index) of the fixed grid's slice on screen; (None, 0) in 2D or a 3D view.

        The index follows napari's own slicing: the world-to-data transform restricted to the
        sliced axis (which ignores the out-of-plane part of an oblique affine), rounded.
        """
        if fixed.ndim == 2 or self.viewer.dims.ndisplay == 3 or self.viewer.dims.ndim != 3:
            return None, 0
        from warpseg._plugin._layers import napari_affine

        axis = self.viewer.dims.not_displayed[0]
        world_to_data = np.linalg.inv(napari_affine(fixed))
        data = world_to_data[axis, axis] * self.viewer.dims.point[axis] + world_to_data[axis, -1]
        return axis, int(round(data))

    def _update_slice_overlays(self, *_: Any) -> None:
        result = self.result
        if result is None or result.fixed.ndim != 3 or layer_name(result.method, "grid") not in self.viewer.layers:
            return
        axis, index = self._slice_position(result.fixed)
        if axis is None:
            return
        for layer_data in slice_overlays(result, axis, index):
            self._show_layer(layer_data)

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
            self._report_error(InputError("pick a folder to save to (and run a registration first)"))
            return None
        try:
            files = write_result(self.result, Path(folder))
        except (WarpsegError, OSError) as error:
            self._report_error(error)
            return None
        self.log.value = f"saved {len(files)} files to {folder}"
        return Path(folder)


def describe_metrics(result: RegistrationResult) -> str:
    """The result's scores on a few lines: Dice before → after, HD95, folds (count and %), time."""
    metrics = result.metrics
    lines = []
    if "dice_mean" in metrics:
        lines.append(f"Dice {metrics.get('dice_before', float('nan')):.3f} → {metrics['dice_mean']:.3f}"
                     + (f" · HD95 {metrics['hd95_mean']:.2f} mm" if "hd95_mean" in metrics else ""))
    folds = int(np.count_nonzero(result.jacobian.array <= 0))
    lines.append(f"folds {folds} voxels ({metrics['folding_percent']:.3f} %) · NCC "
                 f"{metrics['ncc_before']:.3f} → {metrics['ncc_after']:.3f}")
    lines.append(f"{result.seconds_registration:.2f} s on {result.device}")
    return "\n".join(lines)
