"""`data.dataset: hf` against the built-in source on the same images: decode once, then train alike.

Builds a Hugging Face dataset (PNG-encoded PIL images, a ClassLabel column) from the first N Fashion-MNIST
train and test images of the OS package, saves it with save_to_disk, and reports
- the first load (decode into the uint8 cache) and the second (cache read) of `load_dataset("hf", ...)`;
- images/s of one training epoch on `data.dataset=hf` and on `fashion_mnist` with the same subset,
  alternated, so a busy machine slows both alike.

    python bench/hf_data.py [N_TRAIN] [N_TEST]
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts src on sys.path)

import cifarlab
from cifarlab.data.sources import load_dataset


def build(folder: Path, n_train: int, n_test: int) -> None:
    import datasets
    from PIL import Image

    fm = load_dataset("fashion_mnist")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(fm.classes))})

    def rows(split, n):
        return {"image": [Image.fromarray(img[0].numpy()) for img in split.images[:n]],
                "label": split.labels[:n].tolist()}

    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows(fm.train, n_train), features=features),
                          "test": datasets.Dataset.from_dict(rows(fm.test, n_test), features=features)}
                         ).save_to_disk(str(folder))


def main(n_train: int = 6000, n_test: int = 1000) -> None:
    print(common.machine())
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CIFARLAB_DATA"] = str(Path(tmp) / "cache")
        build(Path(tmp) / "saved", n_train, n_test)
        for label in ("first load (decode)", "second load (cache)"):
            started = time.perf_counter()
            load_dataset("hf", Path(tmp) / "saved")
            print(f"{label}: {time.perf_counter() - started:.2f} s for {n_train + n_test} images")
        common_overrides = [f"output.dir={tmp}/runs", "train.epochs=1", "schedule.peak_epoch=0.5", "train.threads=1",
                            "output.tensorboard=false", "output.progress=none", "output.report=false",
                            "train.device=cpu", f"data.train_subset={n_train}", f"data.test_subset={n_test}"]
        sources = {"hf": ["data.dataset=hf", f"data.dir={tmp}/saved"], "fashion_mnist": []}
        rates: dict[str, list[float]] = {name: [] for name in sources}
        for _ in range(2):
            for name, extra in sources.items():
                run = cifarlab.train("fmnist-quick", [*common_overrides, *extra])
                rates[name].append(run.summary.train_images_per_second)
        for name, values in rates.items():
            print(f"{name}: train images/s {', '.join(f'{v:.0f}' for v in values)} (1 thread, fp32)")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:3]))
