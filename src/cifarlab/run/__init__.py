"""The run directory, one owner per file: `layout` (every name), `records` (metrics.csv rows, summary.json,
the model card), `checkpoint` (what a checkpoint holds, saved and loaded as one mapping), `lock`."""
