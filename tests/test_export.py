"""`cifarlab export`: safetensors, TorchScript and ONNX files that reproduce the trained model, with metadata."""
from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

import cifarlab
from _folders import FASHION_NAMES, fashion_test_arrays, needs_fashion, train_fashion_folder
from cifarlab.cli import build_parser
from cifarlab.config import load_config
from cifarlab.data.normalize import normalize, to_float
from cifarlab.errors import UserError
from cifarlab.export import ONNX_TOLERANCE, export, export_model
from cifarlab.models.registry import create_model, list_models
from cifarlab.runtime import Precision
from cifarlab.use.load import LoadedModel, ModelCard

pytestmark = needs_fashion


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run, _ = train_fashion_folder(tmp_path_factory.mktemp("export"), 30, 10, 2)
    return run.run_dir / "checkpoints" / "best.pt"


def real_inputs(model, count=64) -> torch.Tensor:
    """Real Fashion-MNIST test images (not seen in training), normalised as the JSON says."""
    images = torch.from_numpy(fashion_test_arrays()[0][-count:]).unsqueeze(1)
    return normalize(to_float(images), model.mean, model.std, channels_last=False)


def run_cli(*argv: str) -> int:
    """`cifarlab export ...` through the CLI's own parser (a UserError is raised, not printed)."""
    args = build_parser().parse_args(["export", *argv])
    return args.run(args)


def check_metadata(meta: dict) -> None:
    assert meta["classes"] == sorted(FASHION_NAMES) and meta["image_size"] == 28 and meta["channels"] == 1
    assert len(meta["mean"]) == len(meta["std"]) == 1 and meta["model"]["name"] == "convnet"


@pytest.mark.slow
def test_safetensors_rebuilds_the_same_network(checkpoint, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from cifarlab.models.registry import create_model

    out = export(checkpoint, "safetensors", tmp_path / "net.safetensors")
    meta = json.loads((tmp_path / "net.safetensors.json").read_text())
    check_metadata(meta)
    with safe_open(str(out), "pt") as handle:
        assert json.loads(handle.metadata()["cifarlab"])["classes"] == meta["classes"]
    rebuilt = create_model(**meta["model"]).eval()
    rebuilt.load_state_dict(load_file(str(out)))
    model = cifarlab.load_model(checkpoint, device="cpu")
    assert model.channels_last  # the run's memory format, which picks other (equally exact) conv kernels
    rebuilt = rebuilt.to(memory_format=torch.channels_last)
    inputs = real_inputs(model)
    with torch.no_grad():
        assert torch.equal(rebuilt(inputs), model.module(inputs))


@pytest.mark.slow
def test_torchscript_runs_without_cifarlab_code(checkpoint, tmp_path):
    assert run_cli(str(checkpoint), "--format", "torchscript", "--out", str(tmp_path / "net.pt")) == 0
    extra = {"cifarlab.json": ""}
    scripted = torch.jit.load(str(tmp_path / "net.pt"), _extra_files=extra)
    check_metadata(json.loads(extra["cifarlab.json"]))
    model = cifarlab.load_model(checkpoint, device="cpu")
    inputs = real_inputs(model, 50)  # another batch size than the one traced
    with torch.no_grad():
        assert torch.allclose(scripted(inputs), model.module(inputs), atol=1e-5)


@pytest.mark.slow  # the ONNX exporter and onnxruntime
def test_onnx_matches_pytorch_on_real_images(checkpoint):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    out = export(checkpoint, "onnx")  # default: beside the checkpoint
    assert out == checkpoint.with_name("best.onnx")
    meta = json.loads(out.with_name("best.onnx.json").read_text())
    check_metadata(meta)
    assert meta["onnxruntime_max_abs_diff"] <= ONNX_TOLERANCE
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["cifarlab"])["classes"] == meta["classes"]
    model = cifarlab.load_model(checkpoint, device="cpu")
    inputs = real_inputs(model, 200)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": inputs.numpy()})[0])
    with torch.no_grad():
        expected = model.module(inputs)
    assert (got - expected).abs().max().item() <= ONNX_TOLERANCE
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_an_existing_file_is_never_replaced(checkpoint, tmp_path):
    out = tmp_path / "net.safetensors"
    out.write_text("keep me")
    with pytest.raises(UserError) as err:
        run_cli(str(checkpoint), "--format", "safetensors", "--out", str(out))
    assert str(err.value) == (f"{out} already exists; give another --out or remove it first (exports never overwrite)")
    assert out.read_text() == "keep me" and not (tmp_path / "net.safetensors.json").exists()
    sidecar_only = tmp_path / "other.onnx.json"
    sidecar_only.write_text("mine")
    with pytest.raises(UserError, match="other.onnx.json already exists"):
        export(checkpoint, "onnx", tmp_path / "other.onnx")
    assert sidecar_only.read_text() == "mine" and not (tmp_path / "other.onnx").exists()


def test_bad_requests_give_one_line(checkpoint, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="unknown export format 'keras'; choose from: safetensors, torchscript, onnx"):
        export(checkpoint, "keras")
    with pytest.raises(UserError, match="output folder .*/no/such does not exist"):
        export(checkpoint, "safetensors", tmp_path / "no" / "such" / "net.safetensors")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the [onnx] extra were not installed
    with pytest.raises(UserError, match=r"--format onnx needs the onnx extra: pip install 'cifarlab\[onnx\]'"):
        export(checkpoint, "onnx", tmp_path / "net.onnx")
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind
    with pytest.raises(SystemExit):
        run_cli(str(checkpoint), "--format", "keras")


@pytest.mark.slow  # ONNX export of every model, resnet34 included
@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_exports_faithfully(name, tmp_path):
    """TorchScript and ONNX files of each model give its PyTorch logits (fixed random weights and inputs)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=3, norm="batch", dropout=0.0)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode differs from train mode
        model.train()(torch.randn(32, 3, 32, 32))
    model.eval()
    card = ModelCard(architecture=name, options={}, classes=tuple("abcdefghij"), in_channels=3, image_size=32,
                     mean=(0.5,) * 3, std=(0.25,) * 3, precision="fp32", tta=None)
    loaded = LoadedModel(model, card, Precision("fp32", "cpu"), load_config(None, [f"model.name={name}"]), epoch=0,
                         channels_last=False)
    inputs = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected = model(inputs)
    traced = torch.jit.load(str(export_model(loaded, "torchscript", tmp_path / "m.pt")))
    assert torch.allclose(traced(inputs), expected, atol=1e-5)
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime not installed (pip install 'cifarlab[onnx]')")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(export_model(loaded, "onnx", tmp_path / "m.onnx")))
    got = torch.from_numpy(session.run(None, {"images": inputs.numpy()})[0])
    assert (got - expected).abs().max().item() <= ONNX_TOLERANCE
