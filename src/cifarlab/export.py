"""`cifarlab export CHECKPOINT --format safetensors|torchscript|onnx`: the trained network for other tools.

Each export writes the network file and, beside it, `<file>.json` with what a user of it needs: class
names, mean/std, image size, channels, the model's name and options. The network takes float32
(N, C, H, W) input normalised as `(pixel / 255 - mean) / std` (pixels of images whose shorter side was
resized to `image_size`, then centre-cropped) and returns logits (N, num_classes).

- safetensors: the weights (EMA weights where the run kept them); rebuild the network with
  `cifarlab.models.registry.create_model(**json["model"])` and `load_state_dict(safetensors.torch.load_file(f))`.
  The JSON is also stored in the file's own header under `cifarlab`.
- torchscript: a traced module, `torch.jit.load(f)`; the JSON is also stored as its extra file `cifarlab.json`.
  (torch deprecates TorchScript in favour of torch.export; it is here because deployment tools still read it.)
- onnx: opset from the torch exporter, batch dimension dynamic; the JSON is also stored in the model's
  metadata_props. Needs the extra `pip install cifarlab[onnx]`. When onnxruntime is installed the export
  is run once against PyTorch and refused if any output differs by more than `ONNX_TOLERANCE`.

An existing output file is never replaced: the export is refused with one line.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from cifarlab.errors import UserError

FORMATS = {"safetensors": ".safetensors", "torchscript": ".torchscript.pt", "onnx": ".onnx"}
ONNX_TOLERANCE = 1e-4


def metadata(model, source: str, export_format: str) -> dict:
    """The sidecar JSON: enough to feed the exported network and read its output."""
    from cifarlab._version import __version__

    cfg = model.config
    return {
        "format": export_format, "classes": list(model.classes), "mean": list(model.mean), "std": list(model.std),
        "image_size": model.image_size, "channels": model.in_channels,
        "model": {"name": cfg.model.name, "num_classes": len(model.classes), "in_channels": model.in_channels,
                  "norm": cfg.model.norm, "dropout": cfg.model.dropout, **cfg.model.options},
        "input": "float32 (N, C, H, W) = (pixel / 255 - mean) / std; shorter side resized to image_size, centre crop",
        "output": "logits (N, num_classes); softmax gives class probabilities",
        "tta": model.tta, "checkpoint": source, "cifarlab": __version__, "torch": str(torch.__version__),
    }


def _write_safetensors(model: nn.Module, tmp: Path, meta: dict) -> None:
    from safetensors.torch import save_file

    weights = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    save_file(weights, str(tmp), metadata={"cifarlab": json.dumps(meta)})


def _write_torchscript(model: nn.Module, tmp: Path, meta: dict, example: torch.Tensor) -> None:
    with warnings.catch_warnings():  # the user asked for TorchScript; its deprecation notice is noise here
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(tmp), _extra_files={"cifarlab.json": json.dumps(meta)})


def _write_onnx(model: nn.Module, tmp: Path, meta: dict, example: torch.Tensor) -> None:
    try:
        import onnx
    except ImportError:
        raise UserError("--format onnx needs the onnx extra: pip install 'cifarlab[onnx]'") from None
    batch = torch.export.Dim("batch", min=1)
    # torch's exporter logs a warning per torchvision op it cannot register; no cifarlab model uses them.
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration_log.level
    registration_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch-internal pytree deprecations
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=["images"],
                                        output_names=["logits"], dynamic_shapes=({0: batch},), verbose=False)
    finally:
        registration_log.setLevel(level)
    program.save(str(tmp))
    proto = onnx.load(str(tmp))
    onnx.helper.set_model_props(proto, {"cifarlab": json.dumps(meta)})
    onnx.save(proto, str(tmp))


def onnx_max_abs_diff(onnx_path: Union[str, Path], model: nn.Module, inputs: torch.Tensor) -> Optional[float]:
    """Largest |logit difference| between onnxruntime on `onnx_path` and `model`, or None without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
    with torch.no_grad():
        expected = model(inputs)
    return float((torch.from_numpy(got) - expected).abs().max())


def _example(model, count: int) -> torch.Tensor:
    """`count` normalised inputs from fixed random pixels: shapes for tracing, values for the ONNX check."""
    from cifarlab.data.normalize import normalize

    pixels = torch.rand(count, model.in_channels, model.image_size, model.image_size,
                        generator=torch.Generator().manual_seed(0))
    return normalize(pixels, model.mean, model.std, channels_last=False)


def default_out(checkpoint: Path, export_format: str) -> Path:
    """runs/x/checkpoints/best.pt -> runs/x/checkpoints/best.onnx (best.safetensors, best.torchscript.pt)."""
    return checkpoint.with_name(checkpoint.stem + FORMATS[export_format])


def export(checkpoint: Union[str, Path], export_format: str, out: Union[str, Path, None] = None) -> Path:
    """Write the checkpoint's network as `export_format` to `out` (default `default_out`) plus `<out>.json`."""
    from cifarlab.use.load import load_model

    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else default_out(checkpoint, _checked_format(export_format))
    _refuse_existing(out)
    loaded = load_model(checkpoint, device="cpu", precision="fp32")
    return export_model(loaded, export_format, out, source=str(checkpoint))


def _checked_format(export_format: str) -> str:
    if export_format not in FORMATS:
        raise UserError(f"unknown export format {export_format!r}; choose from: {', '.join(FORMATS)}")
    return export_format


def _refuse_existing(out: Path) -> None:
    for path in (out, out.with_name(out.name + ".json")):
        if path.exists():
            raise UserError(f"{path} already exists; give another --out or remove it first (exports never overwrite)")
    if not out.parent.is_dir():
        raise UserError(f"output folder {out.parent} does not exist")


def export_model(loaded, export_format: str, out: Union[str, Path], source: str = "") -> Path:
    """Export a model from `cifarlab.load_model` (its card says how to feed it; fine-tuned or not) to `out`
    plus `<out>.json`. Its network is put in eval mode and float32 first."""
    out = Path(out)
    _checked_format(export_format)
    _refuse_existing(out)
    model = loaded.module.float().eval()
    meta = metadata(loaded, source, export_format)
    sidecar = out.with_name(out.name + ".json")
    tmp, tmp_sidecar = (path.with_name(f".{path.name}.tmp-{os.getpid()}") for path in (out, sidecar))
    try:
        if export_format == "safetensors":
            _write_safetensors(model, tmp, meta)
        elif export_format == "torchscript":
            _write_torchscript(model, tmp, meta, _example(loaded, 1))
        else:
            _write_onnx(model, tmp, meta, _example(loaded, 2))
            diff = onnx_max_abs_diff(tmp, model, _example(loaded, 16))
            if diff is not None and diff > ONNX_TOLERANCE:
                raise RuntimeError(f"the ONNX export differs from PyTorch by {diff:.3g} > {ONNX_TOLERANCE}")
            meta["onnxruntime_max_abs_diff"] = diff
        tmp_sidecar.write_text(json.dumps(meta, indent=2) + "\n")
        # Renames last: a failed export leaves no half-written file under either name.
        os.replace(tmp, out)
        os.replace(tmp_sidecar, sidecar)
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror or err}") from None
    finally:
        tmp.unlink(missing_ok=True)
        tmp_sidecar.unlink(missing_ok=True)
    return out
