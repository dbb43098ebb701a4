"""Test helpers: tiny datasets written in the real on-disk formats, and a counting HTTP server on 127.0.0.1."""
from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x08<ndim>, big-endian uint32 dims, raw bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim if magic is None else magic
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, cut: int = 0) -> Path:
    """Gzipped IDX file; `cut` drops that many bytes from the end of the uncompressed payload."""
    payload = idx_bytes(array, magic)
    Path(path).write_bytes(gzip.compress(payload[: len(payload) - cut]))
    return Path(path)


def write_idx_dataset(folder: Path, rng: np.random.Generator, num_train: int = 30, num_test: int = 10) -> dict:
    """The four MNIST-style files in `folder`; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, num_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, num_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(folder / name, array)
    return arrays


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_cifar_tar(path: Path, folder: str, batches: dict[str, dict], extra: dict[str, bytes] | None = None) -> Path:
    """A tar.gz in the CIFAR python layout: `folder/<batch name>` holding each pickled dict.

    `extra` adds raw members by exact name (e.g. "../evil") to test safe extraction."""
    with tarfile.open(path, "w:gz") as tar:
        for name, batch in batches.items():
            _add_bytes(tar, f"{folder}/{name}", pickle.dumps(batch, protocol=2))
        for name, data in (extra or {}).items():
            _add_bytes(tar, name, data)
    return Path(path)


def cifar_batch(images: np.ndarray, labels: np.ndarray, label_key: bytes = b"labels") -> dict:
    """A batch dict as the CIFAR files hold it: bytes keys, b"data" rows = R plane, G plane, B plane."""
    return {b"batch_label": b"test batch", b"data": images.reshape(len(images), -1),
            label_key: [int(x) for x in labels]}


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, format, *args):  # keep pytest output clean
        pass


@contextlib.contextmanager
def serve(directory: Path):
    """Serve `directory` on 127.0.0.1 (free port) in a thread; yields (base_url, list of paths requested)."""
    handler = functools.partial(_CountingHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", server.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
