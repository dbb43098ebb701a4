"""The run directory, one owner per file: `layout` (every name), `metrics` (metrics.csv rows), `summary`
(summary.json), `outcomes` (how a run stopped), `model_card` (the model card), `evaluation` (`cifarlab eval`'s
result), `checkpoint` (what a checkpoint holds, saved and loaded as one mapping), `lock`."""
