"""Headless pipelines: register and segment (and later build atlases), as generators."""
from warpseg.engine.outputs import write_result
from warpseg.engine.register import register, run_to_end
from warpseg.engine.result import RegistrationResult
from warpseg.engine.segment import SegmentationResult, segment, write_segmentation

__all__ = ["register", "run_to_end", "write_result", "RegistrationResult", "segment", "write_segmentation",
           "SegmentationResult"]
