"""The napari side of warpseg: one private module per npe2 contribution (see ``napari.yaml``).

This package is the only part of warpseg that may import napari, qtpy or magicgui, and only
inside its modules, never here: npe2 imports these modules lazily, when a command first runs.
"""
