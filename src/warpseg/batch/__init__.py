"""Many registrations at once: one task per row of a pairs CSV, on a Dask cluster or local processes."""
from warpseg.batch.pairs import BatchJob, PairRow, read_pairs
from warpseg.batch.run import open_client, run_batch
from warpseg.batch.summary import SUMMARY_COLUMNS, write_summary

__all__ = ["BatchJob", "PairRow", "read_pairs", "open_client", "run_batch", "SUMMARY_COLUMNS", "write_summary"]
