"""`CifarlabModel`: a cifarlab model as the Hugging Face Hub's users load and share models, through
huggingface_hub's `PyTorchModelHubMixin` (the library made for this; needs the `hf` extra).

    from cifarlab.use.hf_folder import CifarlabModel

    model = CifarlabModel.from_pretrained("runs/x/checkpoints/best-hf")  # a folder, or "user/repo" on the Hub
    model(images)                       # logits, like any nn.Module (a cifarlab.load_model model)
    cifarlab.predict(model, ["cat.png"])
    model.push_to_hub("user/my-cifar-model")  # or save_pretrained(folder): the folder export_hf writes

The folder is the one `cifarlab export --format hf` writes (use/export_hf.py); reading it, with the checks
every model file gets, is run/model_file.read_model's, so `from_pretrained` and `cifarlab.load_model` give
the same model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from huggingface_hub import PyTorchModelHubMixin, hf_hub_download

from cifarlab.run.model_file import FOLDER_CONFIG, FOLDER_WEIGHTS
from cifarlab.use.export_hf import write_folder
from cifarlab.use.load import LoadedModel, load_model


class CifarlabModel(LoadedModel, PyTorchModelHubMixin, library_name="cifarlab", pipeline_tag="image-classification",
                    tags=["image-classification", "cifarlab"]):
    """A `LoadedModel` (an nn.Module with its card and precision) with the Hub mixin's `from_pretrained`,
    `save_pretrained` and `push_to_hub`."""

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: Optional[str], cache_dir: Union[str, Path, None],
                         force_download: bool, local_files_only: bool, token: Union[str, bool, None],
                         map_location: Optional[str] = None, precision: Optional[str] = None,
                         **config) -> "CifarlabModel":
        """The model of a folder, or of a Hub repository (its two files downloaded into the Hub's cache).
        `map_location`: the device (default: CUDA if there is one, else the CPU); `precision` as in
        `cifarlab.load_model`. The config.json values the mixin passes in (`config`) are read from the
        folder itself."""
        folder = Path(model_id)
        if not folder.is_dir():
            for name in (FOLDER_CONFIG, FOLDER_WEIGHTS):
                downloaded = hf_hub_download(repo_id=model_id, filename=name, revision=revision, cache_dir=cache_dir,
                                             force_download=force_download, local_files_only=local_files_only,
                                             token=token)
            folder = Path(downloaded).parent
        return load_model(folder, device=map_location, precision=precision, model_class=cls)

    def _save_pretrained(self, save_directory: Path) -> None:
        write_folder(Path(save_directory), self.module, self.card, self.config, self.epoch)
