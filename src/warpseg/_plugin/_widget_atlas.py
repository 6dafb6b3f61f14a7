"""The atlas dock widget: build an Atlas-ISTN atlas and watch it evolve, epoch by epoch.

The job is :func:`warpseg.learning.atlas_build.build_atlas` on a data folder laid out like the shared
data. After every epoch the layers ``atlas: image`` and ``atlas: labels`` are updated in place (created
on the first epoch, on the atlas grid), with the epoch's sharpness and held-out Dice in the log.
*Finish now* ends training after the current step and writes the atlas built so far; *Cancel* stops
and writes nothing (the output folder is only filled at the end); *continue* resumes a finished
build in the output folder up to the new number of epochs.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, Label, SpinBox

from warpseg._plugin._widget_base import JobWidget
from warpseg.errors import InputError

if TYPE_CHECKING:
    import napari

ATLAS_LAYERS = {"image": "atlas: image", "labels": "atlas: labels"}


class AtlasWidget(JobWidget):
    """Plugins ▸ napari-warpseg ▸ Build atlas: Atlas-ISTN training with the atlas shown live."""

    run_text = "Build atlas"

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        from warpseg.bench.pairs import default_data_dir

        super().__init__(napari_viewer)
        self.data = FileEdit(label="data folder", mode="d", value=str(default_data_dir()),
                             tooltip="a folder laid out like ../shared/data (oasis2d, oasis3d, synthseg, labels)")
        self.ndim = ComboBox(label="dimensions", choices=[2, 3], value=2)
        self.label_set = ComboBox(label="label set", choices=["seg4", "seg35"], value="seg4")
        self.epochs = SpinBox(label="epochs", min=1, max=2000, value=50)
        self.steps = SpinBox(label="steps / epoch", min=1, max=10000, value=100)
        self.rate = FloatSpinBox(label="atlas rate η", min=0.001, max=1.0, step=0.01, value=0.05)
        self.learning_rate = FloatSpinBox(label="learning rate", min=1e-5, max=1e-2, step=1e-4, value=1e-3,
                                          tooltip="Adam's learning rate (seg35: 2e-4; at 1e-3 its ITN collapsed, README)")
        self.extra_loss = CheckBox(text="add Dice + cross-entropy to the ITN loss", value=False,
                                   tooltip="not the paper's loss; without cross-entropy the 3D ITN collapsed to "
                                           "background (README, Atlas-ISTN)")
        self.out = FileEdit(label="output folder", mode="d", value=str(Path.cwd() / "atlas"))
        self.resume = CheckBox(text="continue the build in the output folder", value=False)
        self.epoch_log = Label(label="", value="")
        self.extend([self.data, self.ndim, self.label_set, self.epochs, self.steps, self.rate, self.learning_rate,
                     self.extra_loss, self.out, self.resume, *self.run_widgets(), self.epoch_log])
        self.reserve_lines(self.log, 2)
        self.reserve_lines(self.epoch_log, 2)
        self.history: list[dict] = []
        self.label_names: dict[int, str] = {}

    def config(self):
        """The :class:`AtlasConfig` of the fields; an InputError when the data folder is not usable."""
        from warpseg.learning.atlas_build import AtlasConfig
        from warpseg.learning.data import REAL_SUBJECTS

        data = Path(self.data.value)
        folder = data / ("oasis2d" if self.ndim.value == 2 else "oasis3d")
        if not folder.is_dir() or not (data / "labels").is_dir():
            raise InputError(f"{data} is not a data folder like ../shared/data (needs {folder.name}/ and labels/); "
                             "pick the shared data folder")
        if not any(folder.glob(f"{REAL_SUBJECTS[0]}_*")):
            raise InputError(f"{folder} holds no {REAL_SUBJECTS[0]} images; pick the shared data folder")
        extra = 1.0 if self.extra_loss.value else 0.0
        return AtlasConfig(data=str(data), ndim=int(self.ndim.value), labels=self.label_set.value,
                           epochs=int(self.epochs.value), steps_per_epoch=int(self.steps.value),
                           atlas_rate=float(self.rate.value), learning_rate=float(self.learning_rate.value),
                           dice_weight=extra, cross_entropy_weight=extra)

    def prepare_job(self):
        from warpseg.learning.atlas_build import build_atlas
        from warpseg.learning.label_maps import label_set_names

        config, out, resume = self.config(), Path(self.out.value), bool(self.resume.value)
        if resume and not (out / "model.pt").is_file():
            raise InputError(f"{out} holds no finished build to continue; untick 'continue' or pick its folder")
        if not resume and out.exists() and any(out.iterdir()):
            raise InputError(f"{out} is not empty; pick a new output folder (or tick 'continue' to resume it)")
        self.history, self.label_names = [], label_set_names(config.data, config.labels)

        def make_job():
            return build_atlas(config, out, resume=resume)

        def finish(paths):  # in the worker thread
            return paths, []

        return make_job, finish

    def can_finish_early(self) -> bool:
        return True

    def on_progress(self, progress) -> None:
        from warpseg.learning.atlas_build import AtlasProgress

        super().on_progress(progress)
        if isinstance(progress, AtlasProgress):
            self.history.append(progress.record)
            self.epoch_log.value = progress.message
            self.show_atlas(progress)

    def show_atlas(self, progress) -> None:
        """Update (or create) the atlas image and label layers with this epoch's atlas."""
        from warpseg._plugin._layers import volume_to_layer_data
        from warpseg.io import Volume

        volumes = {"image": Volume(progress.preview, progress.affine),
                   "labels": Volume(progress.labels, progress.affine, is_labels=True, label_names=self.label_names)}
        for kind, volume in volumes.items():
            name = ATLAS_LAYERS[kind]
            data, attributes, layer_type = volume_to_layer_data(volume, name)
            if name in self.viewer.layers:
                self.viewer.layers[name].data = data
            else:
                getattr(self.viewer, f"add_{layer_type}")(data, **attributes)

    def job_done(self, value: Any) -> None:
        self.log.value = f"atlas written to {self.out.value} ({len(value)} files: image, labels, model, history)"
