"""Many registrations or segmentations at once: one task per row of a CSV, on a Dask cluster or local processes."""
from warpseg.batch.pairs import BatchJob, ImageRow, PairRow, read_images, read_pairs
from warpseg.batch.run import open_client, run_batch
from warpseg.batch.summary import SUMMARY_COLUMNS, write_summary

__all__ = ["BatchJob", "ImageRow", "PairRow", "read_images", "read_pairs", "open_client", "run_batch", "SUMMARY_COLUMNS", "write_summary"]
