"""The run's report: the mIoU summary table, its bar charts and per-image overlay sheets."""
