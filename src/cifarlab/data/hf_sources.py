"""Opening a Hugging Face dataset for `data/hf.py`: a save_to_disk folder, a folder of parquet files or a Hub
name, as {split: parts}, with every read error one line (`reading`): a truncated arrow file, a broken parquet
or JSON metadata file, an empty saved split, a name the Hub does not have.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from cifarlab.errors import UserError


def datasets_module():
    try:
        import datasets
    except ImportError:
        raise UserError("data.dataset=hf needs Hugging Face datasets: pip install 'cifarlab[hf]'") from None
    return datasets


@contextmanager
def reading(what: str, hint: str = "write it again (save_to_disk or to_parquet) from a dataset that loads"):
    """Whatever `datasets` or pyarrow raise while reading `what` as one line: a truncated arrow file, a broken
    parquet file or JSON metadata file, a missing shard. They raise OSError, ValueError, KeyError, TypeError,
    pyarrow's and datasets' own types (with the real reason in the cause): too many to list, and each means
    "this dataset cannot be read", so any Exception from inside the block is a user error. Keep blocks to
    library reads, so that a bug of ours still raises."""
    try:
        yield
    except (UserError, MemoryError):
        raise
    except Exception as err:
        root = err
        while root.__cause__ is not None and root.__cause__ is not root:  # DatasetGenerationError wraps the reason
            root = root.__cause__
        reason = (str(root).strip().splitlines() or [""])[0][:200]
        raise UserError(f"cannot read {what}: {type(root).__name__}{': ' * bool(reason)}{reason}; {hint}") from None


@contextmanager
def quiet():
    """No progress bars or error logs from `datasets` while it reads a local folder (it logs a bad parquet file
    before raising, and `reading` says so in one line); restored afterwards."""
    datasets = datasets_module()
    verbosity, bars_off = datasets.logging.get_verbosity(), datasets.are_progress_bars_disabled()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not bars_off:
            datasets.enable_progress_bars()


def _check_saved_metadata(path: Path) -> None:
    """save_to_disk's JSON files (dataset_dict.json, each split's state.json and dataset_info.json) are JSON
    objects: `datasets` reports a broken one as a bare JSONDecodeError or TypeError naming no file."""
    files = [Path("dataset_dict.json")]
    try:
        splits = json.loads((path / files[0]).read_text()).get("splits")
    except (OSError, ValueError, AttributeError):
        splits = None
    for name in splits if isinstance(splits, list) else []:
        if isinstance(name, str) and (path / name).is_dir():
            files += [Path(name) / "state.json", Path(name) / "dataset_info.json"]
    for file in files:
        try:
            ok = isinstance(json.loads((path / file).read_text()), dict)
            reason = "not a JSON object"
        except FileNotFoundError:
            continue  # the load names a missing file itself
        except (OSError, ValueError) as err:
            ok, reason = False, (str(err).splitlines() or [type(err).__name__])[0][:120]
        if not ok:
            raise UserError(f"cannot read the save_to_disk folder {path}: its {file} is broken ({reason}); write it "
                            f"again (save_to_disk) from a dataset that loads")


def _refuse_empty_saved_splits(path: Path) -> None:
    """A split saved with no rows has no data file, and `datasets.load_from_disk` then fails with an
    IndexError that names nothing; say which split is empty. Anything else unreadable is left to the load,
    whose errors are reported as they are (`reading`)."""
    try:
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        empty = [name for name in splits if isinstance(name, str)
                 and json.loads((path / name / "state.json").read_text()).get("_data_files") == []]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    if empty:
        raise UserError(f"the save_to_disk folder {path} has an empty split ({', '.join(map(repr, empty))}: no "
                        f"images); every split needs images: save it again without that split or with its images")


def open_hf(where: str, cache_root: Path, download: bool) -> dict[str, list[tuple[str, object]]]:
    """{split name: its parts}, the dataset `where` names (see the module doc). A part is (how messages name it,
    a `datasets.Dataset` with its own features): the whole split, or for a parquet folder one file, because
    `datasets` reads every parquet file with the first file's features, so a test file whose ClassLabel lists
    the names in another order would keep its numbers under the train file's names."""
    datasets = datasets_module()
    path = Path(where).expanduser()
    arrow_cache = str(cache_root / "hf" / "arrow")
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        _check_saved_metadata(path)
        _refuse_empty_saved_splits(path)
        with quiet(), reading(f"the save_to_disk folder {path}"):
            return {name: [(f"the {name!r} split", split)]
                    for name, split in datasets.load_from_disk(str(path)).items()}
    if path.is_dir() and any(path.rglob("*.parquet")):
        with quiet():
            with reading(f"the parquet folder {path}"):
                files = datasets.load_dataset_builder("parquet", data_dir=str(path), cache_dir=arrow_cache
                                                      ).config.data_files
            parts = {}
            for name, split_files in files.items():
                for file in split_files:
                    with reading(f"the parquet file {file}"):
                        part = datasets.Dataset.from_parquet(str(file), cache_dir=arrow_cache)
                    parts.setdefault(str(name), []).append((f"the {str(name)!r} split (file {file})", part))
            return parts
    if not path.exists() and where.startswith((".", "/", "~")):
        raise UserError(f"data.dir {where} does not exist; give a save_to_disk folder, a folder of parquet files or "
                        f"a Hub dataset name")
    if path.exists():
        raise UserError(f"data.dir {where} is neither a save_to_disk folder (dataset_dict.json) nor a folder of "
                        f"parquet files")
    if not download:
        raise UserError(f"data.dir {where!r} is not a local folder, and data.download=false forbids fetching it "
                        f"from the Hugging Face Hub")
    files = hub_files(where, cache_root / "hf" / "hub")
    if not any(files.rglob("*.parquet")) and not (files / "dataset_dict.json").is_file():
        raise UserError(f"the Hugging Face dataset {where!r} has no parquet files (on its main branch nor in the "
                        f"Hub's parquet conversion); download it, save it with save_to_disk and give that folder")
    return open_hf(str(files), cache_root, download=False)


HUB_FILES = ["*.parquet", "dataset_dict.json", "*/dataset_info.json", "*/state.json", "*.arrow"]
HUB_PARQUET_REVISION = "refs/convert/parquet"  # the Hub's own parquet copy of a dataset stored in other formats


def hub_files(name: str, hub_cache: Path) -> Path:
    """The Hub dataset `name`'s files, downloaded into `hub_cache`: its parquet (or save_to_disk) files, else
    those of the Hub's parquet conversion. They are then read as a local folder is, file by file with each
    file's own features (`datasets.load_dataset` would read every file under the features the repository
    publishes, so a test file whose ClassLabel lists the names in another order would keep its numbers under
    the published names), and with the same checks."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError("data.dataset=hf needs Hugging Face datasets: pip install 'cifarlab[hf]'") from None
    folder = None
    for revision in (None, HUB_PARQUET_REVISION):
        with reading(f"the Hugging Face dataset {name!r}", hint="check the name and the network (HF_HUB_OFFLINE)"):
            folder = Path(snapshot_download(name, repo_type="dataset", revision=revision, cache_dir=str(hub_cache),
                                            allow_patterns=HUB_FILES))
        if any(folder.rglob("*.parquet")) or (folder / "dataset_dict.json").is_file():
            break
    return folder
