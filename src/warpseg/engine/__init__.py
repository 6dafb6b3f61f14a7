"""Headless pipelines: register (and later segment, train, build atlases), as generators."""
from warpseg.engine.outputs import write_result
from warpseg.engine.register import register, run_to_end
from warpseg.engine.result import RegistrationResult

__all__ = ["register", "run_to_end", "write_result", "RegistrationResult"]
