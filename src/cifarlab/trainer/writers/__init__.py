"""What the trainer writes as it runs: CSV, TensorBoard, progress lines, checkpoints, MLflow, W&B.

Each is a `cifarlab.trainer.callbacks.Callback`; `cifarlab.trainer.build.default_callbacks` puts them together.
"""
