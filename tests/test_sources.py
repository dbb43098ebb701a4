"""Dataset sources: IDX and CIFAR decoding, checksummed downloads from a 127.0.0.1 server, safe
extraction, the decoded cache, real Fashion-MNIST from the OS package, and the synthetic set."""
from __future__ import annotations

import dataclasses
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from _formats import cifar_batch, md5, serve, write_cifar_tar, write_idx, write_idx_dataset
from cifarlab.data import sources
from cifarlab.data.download import fetch, safe_extract
from cifarlab.data.formats import CIFAR10_LAYOUT, read_cifar, read_idx_images, read_idx_labels
from cifarlab.data.sources import channel_stats, dataset_available, list_datasets, load_dataset, resolve_data_dir
from cifarlab.errors import UserError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def point_source(monkeypatch, name: str, **changes) -> sources.Source:
    """Replace SOURCES[name] for this test (the documented way to use a mirror)."""
    source = dataclasses.replace(sources.SOURCES[name], **changes)
    monkeypatch.setitem(sources.SOURCES, name, source)
    return source


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# --- IDX --------------------------------------------------------------------------------------------


def test_idx_round_trip(tmp_path, rng):
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    got_images = read_idx_images(write_idx(tmp_path / "i.gz", images))
    got_labels = read_idx_labels(write_idx(tmp_path / "l.gz", labels))
    assert got_images.dtype == torch.uint8 and got_images.shape == (7, 1, 28, 28)
    assert np.array_equal(got_images[:, 0].numpy(), images)
    assert got_labels.dtype == torch.int64 and got_labels.tolist() == labels.tolist()


def test_truncated_idx_names_file_and_sizes(tmp_path, rng):
    path = write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
                     cut=100)
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz is truncated: "
                                        r"expected 2352 bytes of image data, got 2252"):
        read_idx_images(path)


@pytest.mark.parametrize("magic", [0x0803, 0x12345678])
def test_bad_magic_is_refused(tmp_path, magic):
    path = write_idx(tmp_path / "labels.gz", np.zeros(4, np.uint8), magic=magic)
    with pytest.raises(UserError, match=r"labels\.gz is not an IDX label file: expected magic number 0x00000801"):
        read_idx_labels(path)


def test_not_gzip_is_refused(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte\.gz is not a valid gzip file"):
        read_idx_labels(path)


def test_mnist_download_then_cache(tmp_path, monkeypatch, rng):
    served = tmp_path / "server"
    arrays = write_idx_dataset(served, rng)
    with serve(served) as (url, requests):
        files = tuple((name, md5(served / name)) for name, _ in sources.SOURCES["mnist"].files)
        point_source(monkeypatch, "mnist", base_url=url, files=files, os_dir=None)
        data_dir = tmp_path / "data"
        assert not dataset_available("mnist", data_dir)
        first = load_dataset("mnist", data_dir)
        assert len(requests) == 4 and first.origin.startswith(f"downloaded from {url}")
        second = load_dataset("mnist", data_dir)
        assert len(requests) == 4, "the second load must come from the cache"
    assert second.origin.startswith(f"cache {data_dir / 'mnist' / 'mnist-uint8.pt'}")
    assert dataset_available("mnist", data_dir)
    for ds in (first, second):
        assert ds.classes == tuple("0123456789") and ds.image_size == 28 and ds.in_channels == 1
        assert np.array_equal(ds.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte.gz"])
        assert ds.test.labels.tolist() == arrays["t10k-labels-idx1-ubyte.gz"].tolist()
        pixels = arrays["train-images-idx3-ubyte.gz"] / 255.0
        assert ds.mean[0] == pytest.approx(pixels.mean(), abs=1e-12)
        assert ds.std[0] == pytest.approx(pixels.std(), abs=1e-12)


def test_missing_files_without_download_say_where_and_how(tmp_path, monkeypatch):
    point_source(monkeypatch, "fashion_mnist", os_dir=tmp_path / "no-os-package")
    with pytest.raises(UserError) as err:
        load_dataset("fashion_mnist", tmp_path / "data", download=False)
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz not found in" in message and str(tmp_path / "data" / "fashion_mnist") in message
    assert "apt-get install dataset-fashion-mnist" in message and "fashion-mnist.s3-website" in message


def test_network_failure_is_a_user_error(tmp_path, monkeypatch):
    with serve(tmp_path) as (url, _):
        pass  # the port is closed again: connections are refused
    point_source(monkeypatch, "mnist", base_url=url, os_dir=None)
    with pytest.raises(UserError, match=rf"could not download {url}train-images-idx3-ubyte\.gz"):
        load_dataset("mnist", tmp_path / "data")
    assert not list((tmp_path / "data").rglob("*.part"))


# --- CIFAR ------------------------------------------------------------------------------------------


def cifar10_images(rng, n):
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def write_cifar10(path: Path, rng, per_batch: int = 4, extra=None) -> dict:
    batches, arrays = {}, {"train": [], "train_labels": []}
    for i in range(1, 6):
        images, labels = cifar10_images(rng, per_batch), rng.integers(0, 10, per_batch)
        batches[f"data_batch_{i}"] = cifar_batch(images, labels)
        arrays["train"].append(images)
        arrays["train_labels"].append(labels)
    arrays["test"], arrays["test_labels"] = cifar10_images(rng, 3), rng.integers(0, 10, 3)
    # Orientation marker: (red, row 0, col 1) and (blue, row 1, col 0) of test image 0.
    arrays["test"][0, :, :2, :2] = 0
    row = arrays["test"][0].reshape(-1)
    row[1], row[2 * 1024 + 32] = 200, 100
    batches["test_batch"] = cifar_batch(arrays["test"], arrays["test_labels"])
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    batches["batches.meta"] = {b"label_names": names, b"num_cases_per_batch": per_batch}
    write_cifar_tar(path, "cifar-10-batches-py", batches, extra)
    return arrays


def test_cifar10_download_decode_and_cache(tmp_path, monkeypatch, rng):
    served = tmp_path / "server"
    served.mkdir()
    arrays = write_cifar10(served / "cifar-10-python.tar.gz", rng)
    data_dir = tmp_path / "data"
    with serve(served) as (url, requests):
        point_source(monkeypatch, "cifar10", base_url=url,
                     files=(("cifar-10-python.tar.gz", md5(served / "cifar-10-python.tar.gz")),))
        ds = load_dataset("cifar10", data_dir)
        assert requests == ["/cifar-10-python.tar.gz"]
        again = load_dataset("cifar10", data_dir)
        assert len(requests) == 1, "the second load must come from the cache"
    assert again.origin.startswith("cache ") and "cifar10-uint8.pt" in again.origin
    for d in (ds, again):
        assert d.classes[:3] == ("airplane", "automobile", "bird") and d.num_classes == 10
        assert d.train.images.shape == (20, 3, 32, 32) and d.train.images.is_contiguous()
        assert np.array_equal(d.train.images.numpy(), np.concatenate(arrays["train"]))
        assert d.train.labels.tolist() == np.concatenate(arrays["train_labels"]).tolist()
        assert np.array_equal(d.test.images.numpy(), arrays["test"])
        assert d.test.labels.tolist() == arrays["test_labels"].tolist()
        # Row layout is R plane, G plane, B plane, each 32x32 row-major.
        assert d.test.images[0, 0, 0, 1] == 200 and d.test.images[0, 2, 1, 0] == 100
        assert d.test.images[0, 0, 1, 0] == 0 and d.test.images[0, 1, 0, 1] == 0
    stacked = np.concatenate(arrays["train"]) / 255.0
    assert ds.mean == pytest.approx(tuple(stacked.mean(axis=(0, 2, 3))), abs=1e-12)
    assert ds.std == pytest.approx(tuple(stacked.std(axis=(0, 2, 3))), abs=1e-12)


def test_cifar100_uses_fine_labels(tmp_path, monkeypatch, rng):
    root = tmp_path / "data" / "cifar100"
    root.mkdir(parents=True)
    train, test = cifar10_images(rng, 6), cifar10_images(rng, 2)
    batches = {
        "train": {**cifar_batch(train, [0, 1, 2, 3, 4, 99], b"fine_labels"), b"coarse_labels": [0] * 6},
        "test": {**cifar_batch(test, [5, 6], b"fine_labels"), b"coarse_labels": [1, 1]},
        "meta": {b"fine_label_names": [f"fine{i}".encode() for i in range(100)], b"coarse_label_names": [b"c"] * 20},
    }
    archive = write_cifar_tar(root / "cifar-100-python.tar.gz", "cifar-100-python", batches)
    point_source(monkeypatch, "cifar100", files=(("cifar-100-python.tar.gz", md5(archive)),))
    assert dataset_available("cifar100", tmp_path / "data")
    ds = load_dataset("cifar100", tmp_path / "data", download=False)
    assert ds.train.labels.tolist() == [0, 1, 2, 3, 4, 99] and ds.test.labels.tolist() == [5, 6]
    assert ds.num_classes == 100 and ds.classes[99] == "fine99"
    assert np.array_equal(ds.test.images.numpy(), test)


def test_wrong_md5_removes_the_download(tmp_path, monkeypatch, rng):
    served = tmp_path / "server"
    served.mkdir()
    archive = served / "cifar-10-python.tar.gz"
    write_cifar10(archive, rng)
    data_dir = tmp_path / "data"
    with serve(served) as (url, _):
        point_source(monkeypatch, "cifar10", base_url=url, files=(("cifar-10-python.tar.gz", "0" * 32),))
        with pytest.raises(UserError, match=rf"expected md5 0{{32}}, got {md5(archive)}"):
            load_dataset("cifar10", data_dir)
    leftovers = files_under(data_dir) if data_dir.exists() else set()
    assert leftovers <= {"cifar10"}, f"corrupt download left behind: {leftovers}"


def test_archive_escaping_target_is_refused(tmp_path, monkeypatch, rng):
    root = tmp_path / "data" / "cifar10"
    root.mkdir(parents=True)
    archive = root / "cifar-10-python.tar.gz"
    write_cifar10(archive, rng, extra={"../evil": b"pwned"})
    point_source(monkeypatch, "cifar10", files=(("cifar-10-python.tar.gz", md5(archive)),))
    with pytest.raises(UserError, match=r"unsafe: member '\.\./evil' would be written outside"):
        load_dataset("cifar10", tmp_path / "data", download=False)
    assert not (tmp_path / "data" / "evil").exists()
    assert files_under(root) == {"cifar-10-python.tar.gz"}, "nothing may be extracted from an unsafe archive"


def write_extracted_cifar10(root: Path, rng, transform=lambda raw: raw) -> np.ndarray:
    """An already-extracted CIFAR-10 folder whose pickles pass through `transform` (bytes -> bytes)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images = cifar10_images(rng, 2)
    batches = {name: cifar_batch(images, [1, 2]) for name in [*CIFAR10_LAYOUT.train_files, "test_batch"]}
    batches["batches.meta"] = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    for name, batch in batches.items():
        (folder / name).write_bytes(transform(pickle.dumps(batch, protocol=2)))
    return images


def test_python2_numpy_names_are_understood(tmp_path, rng):
    # The real files were pickled by Python 2 numpy, which named its module `numpy.core`.
    images = write_extracted_cifar10(tmp_path, rng, lambda raw: raw.replace(b"numpy._core", b"numpy.core"))
    decoded = read_cifar(tmp_path, CIFAR10_LAYOUT)
    assert np.array_equal(decoded["test"][0].numpy(), images) and decoded["classes"][9] == "c9"


def test_tampered_pickle_cannot_run_code(tmp_path, rng):
    # Swap numpy's array constructor for os.system: a plain pickle.load would call it.
    write_extracted_cifar10(tmp_path, rng,
                            lambda raw: raw.replace(b"numpy._core.multiarray\n_reconstruct", b"os\nsystem"))
    with pytest.raises(UserError, match=r"data_batch_1 is not a valid CIFAR batch \(global os.system is not allowed"):
        read_cifar(tmp_path, CIFAR10_LAYOUT)


@pytest.mark.parametrize("kind", ["symlink", "device"])
def test_links_outside_and_devices_are_refused(tmp_path, kind):
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("folder/member")
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "../../outside"
        else:
            info.type = tarfile.CHRTYPE
        tar.addfile(info)
    with pytest.raises(UserError, match="bad.tar is unsafe"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "folder").exists()


def test_fetch_verifies_and_renames(tmp_path):
    (tmp_path / "file.bin").write_bytes(b"payload")
    with serve(tmp_path) as (url, _):
        dest = fetch(url + "file.bin", tmp_path / "got" / "file.bin", md5(tmp_path / "file.bin"))
    assert dest.read_bytes() == b"payload" and files_under(tmp_path / "got") == {"file.bin"}


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, rng):
    root = tmp_path / "data" / "mnist"
    write_idx_dataset(root, rng)
    point_source(monkeypatch, "mnist", os_dir=None)
    (root / "mnist-uint8.pt").write_bytes(b"garbage")
    ds = load_dataset("mnist", tmp_path / "data", download=False)
    assert ds.origin == f"{root} (local IDX files)"
    assert load_dataset("mnist", tmp_path / "data", download=False).origin.startswith("cache ")


def test_image_and_label_counts_must_agree(tmp_path, monkeypatch, rng):
    root = tmp_path / "data" / "mnist"
    write_idx_dataset(root, rng)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.zeros(9, np.uint8))
    point_source(monkeypatch, "mnist", os_dir=None)
    with pytest.raises(UserError, match="the test split has 10 images but 9 labels"):
        load_dataset("mnist", tmp_path / "data", download=False)


# --- real Fashion-MNIST -----------------------------------------------------------------------------


@pytest.mark.skipif(not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason=f"Fashion-MNIST OS package not installed at {FASHION_DIR} "
                           "(apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_from_os_package(tmp_path):
    started = time.perf_counter()
    ds = load_dataset("fashion_mnist", tmp_path, download=False)
    first_seconds = time.perf_counter() - started
    assert ds.origin == f"{FASHION_DIR} (OS package dataset-fashion-mnist)"
    assert ds.train.images.shape == (60000, 1, 28, 28) and ds.test.images.shape == (10000, 1, 28, 28)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and ds.num_classes == 10
    assert ds.train.labels.bincount().tolist() == [6000] * 10
    assert ds.test.labels.bincount().tolist() == [1000] * 10
    assert ds.mean[0] == pytest.approx(0.2860, abs=1e-3) and ds.std[0] == pytest.approx(0.3530, abs=1e-3)
    started = time.perf_counter()
    cached = load_dataset("fashion_mnist", tmp_path, download=False)
    cached_seconds = time.perf_counter() - started
    assert cached.origin.startswith(f"cache {tmp_path / 'fashion_mnist'}")
    assert torch.equal(cached.train.images, ds.train.images) and torch.equal(cached.test.labels, ds.test.labels)
    assert cached.mean == ds.mean
    assert cached_seconds < first_seconds, (cached_seconds, first_seconds)


# --- synthetic, options, data dir -------------------------------------------------------------------


def test_synthetic_is_deterministic_and_shaped():
    a = load_dataset("synthetic", seed=3, num_train=64, num_test=32, image_size=16, channels=1, num_classes=4)
    b = load_dataset("synthetic", seed=3, num_train=64, num_test=32, image_size=16, channels=1, num_classes=4)
    c = load_dataset("synthetic", seed=4, num_train=64, num_test=32, image_size=16, channels=1, num_classes=4)
    assert a.train.images.shape == (64, 1, 16, 16) and a.test.images.shape == (32, 1, 16, 16)
    assert a.num_classes == 4 and a.train.labels.bincount().tolist() == [16] * 4
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, c.train.images)


def test_synthetic_defaults_are_fast_and_learnable():
    started = time.perf_counter()
    ds = load_dataset("synthetic")
    # About 0.15 s on an idle 2-core machine; the bound only catches per-image Python loops, not noise.
    assert time.perf_counter() - started < 5.0
    assert ds.train.images.shape == (2000, 3, 32, 32) and ds.test.images.shape == (500, 3, 32, 32)
    # Nearest class mean on the train split classifies the test split far above chance (10%).
    train, test = ds.train.images.flatten(1).float(), ds.test.images.flatten(1).float()
    centroids = torch.stack([train[ds.train.labels == k].mean(0) for k in range(ds.num_classes)])
    accuracy = (torch.cdist(test, centroids).argmin(1) == ds.test.labels).float().mean().item()
    assert accuracy > 0.5


def test_options_are_checked():
    with pytest.raises(UserError, match="unknown option 'num_img' for dataset 'synthetic'"):
        load_dataset("synthetic", num_img=3)
    with pytest.raises(UserError, match="image_size must be an integer in 8..256, got 4"):
        load_dataset("synthetic", image_size=4)
    with pytest.raises(UserError, match="dataset 'cifar10' takes no options, got seed"):
        load_dataset("cifar10", seed=1)
    with pytest.raises(UserError, match="unknown dataset 'cifar11'; choose from: cifar10, cifar100"):
        load_dataset("cifar11")


def test_list_datasets():
    assert list_datasets() == ["cifar10", "cifar100", "fashion_mnist", "folder", "hf", "mnist", "synthetic"]
    assert dataset_available("synthetic")


def test_resolve_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CIFARLAB_DATA", raising=False)
    assert resolve_data_dir(None) == tmp_path / "home" / ".cache" / "cifarlab"
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir("~/x") == tmp_path / "home" / "x"
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file, expected a directory"):
        resolve_data_dir(tmp_path / "file")


def test_channel_stats_are_exact():
    images = torch.tensor([0, 255, 51, 51, 0, 255, 51, 51], dtype=torch.uint8).view(2, 2, 1, 2)
    mean, std = channel_stats(images)
    assert mean == pytest.approx((0.5, 0.2)) and std == pytest.approx((0.5, 0.0), abs=1e-7)
