"""What every warpseg dock widget shares: the pair pickers, the worker job, progress and result layers.

A subclass builds its own fields, then calls :meth:`JobWidget.run_job` with a job factory (a
generator of Progress records, run in a worker thread) and a ``finish`` function (also run in the
worker thread) that returns ``(value, layer_data_list)``. The layers are then added one per turn
of the event loop and :meth:`JobWidget.job_done` receives ``value``. A cancelled or failed job
adds nothing; errors become napari notifications.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton
from qtpy.QtWidgets import QSizePolicy

from warpseg._plugin._jobs import JobHandle, ProgressClock, format_eta, preload_job_modules
from warpseg._plugin._layers import layer_to_volume
from warpseg.errors import InputError, WarpsegError

if TYPE_CHECKING:
    import napari

NO_LAYER = ("—", None)


class JobWidget(Container):
    """A dock widget that runs one job at a time (subclasses add their fields, see the module notes)."""

    run_text = "Run"

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(labels=True)
        preload_job_modules()
        self.viewer = napari_viewer
        self.run_button = PushButton(text=self.run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False, tooltip="stop and keep nothing")
        self.finish_button = PushButton(text="Finish now", enabled=False,
                                        tooltip="stop an iterative method and keep its best result so far")
        self.progress = ProgressBar(label="", min=0, max=1000, value=0)
        self.log = Label(label="", value="ready")
        self.job: JobHandle | None = None
        self._pending: list[tuple] = []
        self._showing = False  # result layers still being added
        self._clock = ProgressClock()
        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.finish_button.clicked.connect(self.finish_now)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(lambda _: self.reset_choices())

    def image_picker(self, label: str) -> ComboBox:
        """A combo box of the viewer's Image (and Labels) layers, kept up to date."""
        return ComboBox(label=label, choices=self._volume_layers)

    def labels_picker(self, label: str) -> ComboBox:
        """A combo box of the viewer's Labels layers and '—' (none), kept up to date."""
        return ComboBox(label=label, choices=self._label_layers)

    def pair_widgets(self) -> list:
        """Moving and fixed image and label pickers (created on first use)."""
        if not hasattr(self, "moving"):
            self.moving, self.moving_labels = self.image_picker("moving image"), self.labels_picker("moving labels")
            self.fixed, self.fixed_labels = self.image_picker("fixed image"), self.labels_picker("fixed labels")
        return [self.moving, self.moving_labels, self.fixed, self.fixed_labels]

    def run_widgets(self) -> list:
        buttons = [self.run_button, self.finish_button, self.cancel_button]
        return [Container(widgets=buttons, layout="horizontal", labels=False),
                self.progress, self.log]

    @staticmethod
    def reserve_lines(label: Label, lines: int, wrap: bool = True) -> Label:
        """Give ``label`` room for ``lines`` lines up front (docks do not grow when text arrives later);
        long text wraps instead of widening the dock."""
        label.native.setWordWrap(wrap)
        label.native.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        label.native.setMinimumHeight(int(label.native.fontMetrics().lineSpacing() * (lines + 0.5)))
        return label

    # --- layer choices -------------------------------------------------------------------------
    def _volume_layers(self, _widget=None) -> list:
        from napari.layers import Image, Labels

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image | Labels)]

    def _label_layers(self, _widget=None) -> list:
        from napari.layers import Labels

        return [NO_LAYER] + [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)]

    def pick_layers(self, names: dict[str, str]) -> None:
        """Preselect in each picker (attribute name) the layer of the given name, if there is one."""
        for attribute, name in names.items():
            if name in self.viewer.layers:
                getattr(self, attribute).value = self.viewer.layers[name]

    def pick_default_layers(self) -> None:
        """Preselect layers named like the sample pair's (``moving``, ``fixed``, ``* labels``)."""
        self.pick_layers({"moving": "moving", "fixed": "fixed", "moving_labels": "moving labels",
                          "fixed_labels": "fixed labels"})

    @staticmethod
    def image_volume(layer, role: str):
        """An Image layer as a volume; a clear InputError for none or a Labels layer."""
        from napari.layers import Labels

        if layer is None:
            raise InputError(f"pick the {role} image layer (File ▸ Open Sample has a brain pair)")
        if isinstance(layer, Labels):
            raise InputError(f"layer {layer.name!r} is a Labels layer; pick an Image layer as the {role} image "
                             f"(label maps go in '{role} labels')")
        return layer_to_volume(layer)

    def pair_volumes(self) -> dict[str, Any]:
        """The picked layers as volumes (``moving``, ``fixed``, ``moving_labels``, ``fixed_labels``)."""
        from napari.layers import Labels

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
        return volumes

    # --- the job -------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while a job runs or its result layers are still being added."""
        return self._showing or (self.job is not None and self.job.running)

    def start(self) -> JobHandle | None:
        """Start the job in a worker thread; None (and a notification) when the fields are wrong."""
        if self.busy:
            return self.job
        try:
            make_job, finish = self.prepare_job()
        except WarpsegError as error:
            self.report_error(error)
            return None
        self._clock = ProgressClock()
        self.set_running(True, "starting")
        self.job = JobHandle(make_job, finish=finish, on_progress=self.on_progress, on_done=self._on_done,
                             on_error=self._on_error, on_cancelled=self._on_cancelled)
        return self.job

    def prepare_job(self):
        """``(make_job, finish)`` from the widget's fields (subclasses); raise InputError when wrong."""
        raise NotImplementedError

    def can_finish_early(self) -> bool:
        """Whether the job being started can stop early with its best result (subclasses)."""
        return False

    def job_done(self, value: Any) -> None:
        """Called once the job's layers are all shown (subclasses)."""

    def job_stopped(self) -> None:
        """Called after a failed or cancelled job (subclasses clean up here)."""

    def cancel(self) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.log.value = "cancelling…"

    def finish_now(self) -> None:
        if self.job is not None and self.job.running:
            self.job.finish_now()
            self.finish_button.enabled = False
            self.log.value = "finishing with the best result so far…"

    def on_progress(self, progress) -> None:
        fraction = progress.fraction
        self.progress.value = int(1000 * fraction) if fraction is not None else 0
        parts = [progress.stage, progress.message, format_eta(self._clock.eta(progress))]
        if progress.loss is not None:
            parts.append(f"loss {progress.loss:.4f}")
        self.log.value = " · ".join(part for part in parts if part)

    def _on_done(self, finished) -> None:
        """Add the result layers one per turn of the event loop, so the viewer keeps drawing."""
        value, layers = finished
        self._pending, self._showing = list(layers), True
        self.log.value = f"adding {len(self._pending)} layers"
        self._add_pending(value)

    def _add_pending(self, value) -> None:
        from qtpy.QtCore import QTimer

        if self._pending:
            self.show_layer(self._pending.pop(0))
            QTimer.singleShot(0, lambda: self._add_pending(value))
            return
        self._showing = False
        self.progress.value = 1000
        self.set_running(False, "done")
        self.job_done(value)

    def _on_error(self, error: Exception) -> None:
        self.job_stopped()
        self.set_running(False, "failed")
        self.report_error(error)

    def _on_cancelled(self) -> None:
        self.job_stopped()
        self.set_running(False, "cancelled; no layers were changed")
        self.progress.value = 0

    def set_running(self, running: bool, message: str) -> None:
        self.run_button.enabled, self.cancel_button.enabled = not running, running
        self.finish_button.enabled = running and self.can_finish_early()
        self.log.value = message

    def report_error(self, error: Exception) -> None:
        """A notification (and the log line); unexpected errors also go to the log with their traceback."""
        from napari.utils.notifications import show_error

        self.log.value = f"error: {error}"
        if not isinstance(error, WarpsegError):
            logging.getLogger(__name__).error("warpseg job failed", exc_info=error)
        expected = isinstance(error, WarpsegError)
        show_error(f"warpseg: {error}" if expected else f"warpseg: {type(error).__name__}: {error}")

    # --- layers --------------------------------------------------------------------------------
    def show_layer(self, layer_data: tuple) -> None:
        """Add a layer, or update the one of the same name in place (same type)."""
        data, attributes, layer_type = layer_data
        name = attributes["name"]
        if name in self.viewer.layers and self.viewer.layers[name]._type_string == layer_type:
            layer = self.viewer.layers[name]
            if not np.allclose(layer.affine.affine_matrix, attributes["affine"]):  # each change re-slices the layer
                layer.affine = attributes["affine"]
            layer.data = data
            if "contrast_limits" in attributes:
                layer.contrast_limits = attributes["contrast_limits"]
            return
        self.remove_layer(name)
        getattr(self.viewer, f"add_{layer_type}")(data, **attributes)

    def remove_layer(self, name: str) -> None:
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)

    def slice_position(self, fixed) -> tuple[int | None, int]:
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
