"""`cifarlab export CHECKPOINT --format safetensors|torchscript|onnx`: the trained network for other tools.

Each export writes the network file and, beside it, `<file>.json` with what a user of it needs: the model
card (class names, mean/std, image size, channels, the model's name and options, its classifier) plus
the format's extras. The network takes float32
(N, C, H, W) input normalised as `(pixel / 255 - mean) / std` (pixels of images whose shorter side was
resized to `image_size`, then centre-cropped) and returns logits (N, num_classes).

- safetensors: the weights (EMA weights where the run kept them); rebuild the network with
  `cifarlab.models.create_model(**json["model"])` and `load_state_dict(safetensors.torch.load_file(f))`.
  The JSON is also stored in the file's own header under `cifarlab`.
- torchscript: a traced module, `torch.jit.load(f)`; the JSON is also stored as its extra file `cifarlab.json`.
  (torch deprecates TorchScript in favour of torch.export; it is here because deployment tools still read it.)
- onnx: opset from the torch exporter, batch dimension dynamic; the JSON is also stored in the model's
  metadata_props. Needs the extra `pip install cifarlab[onnx]`. When onnxruntime is installed the export
  is run once against PyTorch and refused if any output differs by more than `ONNX_TOLERANCE`.

TTA: a run that evaluated with test-time augmentation (`train.tta`) scores higher than its bare network.
`tta=` (`--tta`) puts it inside the TorchScript or ONNX graph (`WithTTA`): the graph then returns the log
of the views' averaged class probabilities, which are still logits (softmax gives those probabilities, and
the argmax is the run's answer). Without it the sidecar's `tta_in_graph` is null and its `note` says what is
left out. safetensors holds weights only, so it cannot carry TTA.

An existing output file is never replaced: the export is refused with one line.
"""
from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path
from typing import NamedTuple, Optional, Union

import torch
from torch import nn

from cifarlab.atomic import atomic_path, atomic_write_text
from cifarlab.errors import UserError
from cifarlab.run import layout

FORMATS = {"safetensors": ".safetensors", "torchscript": ".torchscript.pt", "onnx": ".onnx"}
ONNX_TOLERANCE = 1e-4
TTA_CHOICES = ("flip", "flip_translate")


class WithTTA(nn.Module):
    """`model` with test-time augmentation in its forward: the log of the weighted mean of the views'
    softmaxes (models/inference.log_probs, the run's own evaluation), so an exported graph scores as the
    run reported."""

    def __init__(self, model: nn.Module, tta: str):
        super().__init__()
        self.model, self.tta = model, tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from cifarlab.models.inference import log_probs

        return log_probs(self.model, images, tta=self.tta)


def metadata(model, source: str, export_format: str, tta: Optional[str] = None) -> dict:
    """The sidecar JSON: the model card (run/model_card.ModelCard.to_dict) plus what this format adds: how to
    rebuild the network (`model`: create_model's keywords), its input and output, the TTA put in the
    graph (`tta_in_graph`), where it came from and the versions that wrote it."""
    from cifarlab._version import __version__

    output = ("log of the TTA views' mean class probabilities (N, num_classes): logits, softmax gives the "
              "probabilities" if tta else "logits (N, num_classes); softmax gives class probabilities")
    return {
        **model.card.to_dict(), "format": export_format, "channels": model.in_channels,
        "model": model.card.model_kwargs(),
        "input": "float32 (N, C, H, W) = (pixel / 255 - mean) / std; shorter side resized to image_size, centre crop",
        "output": output, "tta_in_graph": tta, "note": tta_note(model.tta, tta),
        "checkpoint": source, "cifarlab": __version__, "torch": str(torch.__version__),
    }


def tta_name(tta: Union[str, bool, None]) -> Optional[str]:
    """A TTA setting by name: `train.tta: true` is flip; false or None is no TTA."""
    return "flip" if tta is True else (tta or None)


def tta_note(run_tta: Union[str, bool, None], graph_tta: Optional[str]) -> Optional[str]:
    """What a user of the file must know about TTA, or None when the file scores as the run did."""
    if graph_tta or not run_tta:
        return None
    return (f"the run evaluated with {tta_name(run_tta)} TTA (train.tta); this network does not include it and scores "
            f"a little lower: average the views yourself, or export with --tta to put it in the graph")


def _write_safetensors(model: nn.Module, tmp: Path, meta: dict) -> None:
    from safetensors.torch import save

    weights = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    # safetensors' save_file creates its file 0600; written as bytes here, it gets the umask's permissions
    # like every other export.
    tmp.write_bytes(save(weights, metadata={"cifarlab": json.dumps(meta)}))


def _write_torchscript(model: nn.Module, tmp: Path, meta: dict, example: torch.Tensor) -> None:
    with warnings.catch_warnings():  # the user asked for TorchScript; its deprecation notice is noise here
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, example)
    # Into memory first, then written by Python: torch.jit.save's own file writer, failing (a full disk),
    # throws a C++ exception that terminates the whole process and leaves the temporary file behind.
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={"cifarlab.json": json.dumps(meta)})
    tmp.write_bytes(buffer.getbuffer())


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


def export(checkpoint: Union[str, Path], export_format: str, out: Union[str, Path, None] = None,
           tta: Union[str, bool, None] = None) -> Path:
    """Write the checkpoint's network as `export_format` to `out` (default `default_out`) plus `<out>.json`;
    `tta` as in `export_model`."""
    from cifarlab.use.load import load_model

    checkpoint = Path(checkpoint)
    if not checkpoint.name:  # "." or "/": no file name to put the export beside
        raise UserError(f"checkpoint {checkpoint} is a directory; give a .pt file such as "
                        f"{layout.CHECKPOINTS}/{layout.BEST}")
    out = Path(out) if out is not None else default_out(checkpoint, _checked_format(export_format))
    _checked_tta(tta, export_format)
    _refuse_existing(out)
    loaded = load_model(checkpoint, device="cpu", precision="fp32")
    return export_model(loaded, export_format, out, source=str(checkpoint), tta=tta)


class Exported(NamedTuple):
    """What `export_checkpoint` wrote: the file (the folder, for hf), its JSON sidecar (None for hf, whose
    folder holds its config.json) and the sidecar's note (what the export leaves out, e.g. the run's TTA)."""
    path: Path
    metadata: Optional[Path]
    note: Optional[str]


def export_checkpoint(checkpoint: Union[str, Path], export_format: str, out: Union[str, Path, None] = None,
                      tta: Union[str, bool, None] = None) -> Exported:
    """`cifarlab export`: `export` for safetensors, torchscript and onnx, `export_hf` for "hf" (a Hugging
    Face-style model folder, which holds weights and no graph, so no `tta`)."""
    if export_format == "hf":
        if tta:
            raise UserError("--tta needs --format onnx or torchscript: an hf folder holds weights, not a graph")
        from cifarlab.use.export_hf import export_hf

        return Exported(export_hf(checkpoint, out), None, None)
    path = export(checkpoint, export_format, out, tta=tta)
    sidecar = path.with_name(path.name + ".json")
    return Exported(path, sidecar, json.loads(sidecar.read_text()).get("note"))


def _checked_tta(tta: Union[str, bool, None], export_format: str) -> None:
    if tta and export_format == "safetensors":
        raise UserError("--tta needs --format onnx or torchscript: safetensors holds weights only, not a graph")
    if tta not in (None, False, True, *TTA_CHOICES):
        raise UserError(f"--tta must be one of {', '.join(TTA_CHOICES)}, got {tta!r}")


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


def export_model(loaded, export_format: str, out: Union[str, Path], source: str = "",
                 tta: Union[str, bool, None] = None) -> Path:
    """Export a model from `cifarlab.load_model` (its card says how to feed it; fine-tuned or not) to `out`
    plus `<out>.json`. Its network is put in eval mode and float32 first. `tta`: put test-time augmentation
    in the graph (onnx, torchscript): True for the run's own (`loaded.tta`, flip if it had none), or a name."""
    out = Path(out)
    _checked_format(export_format)
    _checked_tta(tta, export_format)
    _refuse_existing(out)
    model = loaded.module.float().eval()
    _refuse_non_finite(model, source or "the model")
    tta = tta_name(loaded.tta or "flip") if tta is True else tta_name(tta)
    meta = metadata(loaded, source, export_format, tta)
    network = WithTTA(model, tta).eval() if tta else model  # what is written: the network, with TTA if asked
    sidecar = out.with_name(out.name + ".json")
    # Through cifarlab.atomic: a failed or killed export leaves no half-written file under either name, and
    # a killed one's temporaries are swept by the next export to the same name. The network is renamed
    # first, so a sidecar never describes a file that is not there.
    with atomic_path(out) as tmp:
        if export_format == "safetensors":
            _write_safetensors(network, tmp, meta)
        elif export_format == "torchscript":
            _write_torchscript(network, tmp, meta, _example(loaded, 1))
        else:
            _write_onnx(network, tmp, meta, _example(loaded, 2))
            diff = onnx_max_abs_diff(tmp, network, _example(loaded, 16))
            if diff is not None and not diff <= ONNX_TOLERANCE:
                raise UserError(f"the ONNX export of {source or 'the model'} differs from PyTorch by {diff:.3g} "
                                f"(allowed {ONNX_TOLERANCE}); nothing was written: export as safetensors or "
                                f"torchscript instead")
            meta["onnxruntime_max_abs_diff"] = diff
    atomic_write_text(sidecar, json.dumps(meta, indent=2, allow_nan=False) + "\n")
    return out


def _refuse_non_finite(model: nn.Module, source: str) -> None:
    """A network with NaN or inf weights would export fine and predict garbage. A model file's weights were
    checked when it was read (run/model_file.py); this checks a model changed in memory since (fine-tuned)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{source} has non-finite (NaN or inf) values in {name}; a diverged model cannot be "
                            f"exported: export a checkpoint from before the divergence")
