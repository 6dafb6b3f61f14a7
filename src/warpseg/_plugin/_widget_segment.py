"""The segmentation dock widget: segment an image layer with any segmentation method.

The result is a Labels layer ``"<method>: segmentation"`` on the image's grid, with the label names
of the method (for atlas methods: the atlas's). With a reference label layer the widget fills a
Dice table, one row per label.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Label, LineEdit, Table

from warpseg._plugin._layers import layer_to_volume, volume_to_layer_data
from warpseg._plugin._widget_base import JobWidget
from warpseg.errors import InputError, WarpsegError
from warpseg.methods import METHODS, SEGMENTATION_METHODS
from warpseg.metrics import dice_headline, label_names_warning

if TYPE_CHECKING:
    import napari

    from warpseg.engine import SegmentationResult

DICE_COLUMNS = ("label", "name", "Dice")


class SegmentationWidget(JobWidget):
    """Plugins ▸ napari-warpseg ▸ Segment: a label map for an image, scored against a reference."""

    run_text = "Segment"

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self.image = self.image_picker("image")
        self.method = ComboBox(label="method", choices=list(SEGMENTATION_METHODS))
        self.about = Label(label="")
        self.atlas = self.image_picker("atlas image")
        self.atlas_labels = self.labels_picker("atlas labels")
        self.registration = ComboBox(label="registration", choices=list(METHODS), value="sitk-demons",
                                     tooltip="how atlas methods align the atlas to the image")
        self.method_options = LineEdit(label="options", value="", tooltip="KEY=VALUE pairs separated by spaces")
        self.reference = self.labels_picker("reference labels")
        self.scores = Label(label="", value="")
        self.table = Table(value=dice_columns([]))
        self.extend([self.image, self.method, self.about, self.atlas, self.atlas_labels, self.registration,
                     self.method_options, self.reference, *self.run_widgets(), self.scores, self.table])
        self.reserve_lines(self.about, 3)
        self.reserve_lines(self.log, 2)
        self.reserve_lines(self.scores, 1)
        self.result: SegmentationResult | None = None
        self.method.changed.connect(self._describe_method)
        self.pick_layers({"image": "fixed", "atlas": "moving", "atlas_labels": "moving labels",
                          "reference": "fixed labels"})
        self._describe_method()

    def _describe_method(self, *_: Any) -> None:
        method = SEGMENTATION_METHODS[self.method.value]
        self.about.value = method.description
        for widget in (self.atlas, self.atlas_labels, self.registration):
            widget.enabled = method.needs_atlas

    def request(self) -> dict[str, Any]:
        """The segment() arguments from the widget's fields; a clear InputError when they are wrong."""
        from warpseg.options import parse_options

        image = self.image_volume(self.image.value, "image")
        method = SEGMENTATION_METHODS[self.method.value]
        try:
            options = parse_options(self.method_options.value.split())
        except WarpsegError as error:
            raise InputError(str(error).replace("--option ", "")) from None
        atlas = None
        if method.needs_atlas:
            if self.atlas_labels.value is None:
                raise InputError(f"{method.name} needs an atlas: pick the atlas image and its labels layer")
            atlas = (self.image_volume(self.atlas.value, "atlas"), layer_to_volume(self.atlas_labels.value))
            options.setdefault("registration", self.registration.value)
        reference = None if self.reference.value is None else layer_to_volume(self.reference.value)
        return {"image": image, "method": method.name, "atlas": atlas, "reference": reference, "options": options}

    def prepare_job(self):
        from warpseg.engine import segment

        request = self.request()

        def make_job():
            return segment(request["image"], request["method"], atlas=request["atlas"],
                           reference=request["reference"], options=request["options"])

        def finish(result):  # in the worker thread
            layers = [volume_to_layer_data(result.segmentation, f"{result.method}: segmentation")]
            layers += [volume_to_layer_data(volume, f"{result.method}: {name}")  # e.g. atlas-istn's ITN labels
                       for name, volume in result.segmentations.items()]
            return result, layers

        return make_job, finish

    def job_done(self, result: SegmentationResult) -> None:
        self.result = result
        metrics = result.metrics
        self.log.value = f"{result.method}: done in {result.seconds:.1f} s"
        if "dice_mean" in metrics:
            shown = metrics.get("tissue_classes") or metrics  # a reference in other classes: compared by tissue
            scores, lines = f"mean {dice_headline(metrics)} · HD95 {shown['hd95_mean']:.2f} mm", 2
            if metrics.get("label_names_differ") and shown is metrics:
                warning = label_names_warning(metrics["label_names_differ"])
                scores, lines = scores + "\n" + warning, 2 + len(warning) // 30
            self.reserve_lines(self.scores, lines)  # the dock does not grow by itself
            self.scores.value = scores
            names = shown.get("names") or result.segmentation.label_names or {}
            rows = [[int(label), names.get(int(label), names.get(str(label), "")), round(score, 3)]
                    for label, score in shown["dice_per_label"].items()]
            self.table.value = dice_columns(rows)
        else:
            self.scores.value = "pick a reference label layer to score the segmentation"


def dice_columns(rows: list[list[Any]]) -> dict[str, list[Any]]:
    return {column: [row[index] for row in rows] for index, column in enumerate(DICE_COLUMNS)}
