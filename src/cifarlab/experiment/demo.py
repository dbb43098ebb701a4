"""`cifarlab demo`: a real short training run, on CIFAR-10 when it can be had, else on Fashion-MNIST
(which the Debian package `dataset-fashion-mnist` provides offline). The choice is said in one line."""
from __future__ import annotations

from typing import Sequence

from cifarlab.errors import UserError
from cifarlab.messages import say

DEMO_PROBE_SECONDS = 5.0
DEMO_RECIPES = ("cifar10-quick", "fmnist-quick")


def demo(overrides: Sequence[str] = ()):
    """Train `cifar10-quick` if CIFAR-10 is cached or can be downloaded, else `fmnist-quick` (with
    `overrides`); returns the `Run`. A bad override is refused before any probe or announcement; offline
    (the server does not answer within DEMO_PROBE_SECONDS) no download is tried."""
    from cifarlab import experiment
    from cifarlab.config import read_with_overrides, validate
    from cifarlab.data import sources

    for recipe in DEMO_RECIPES:
        validate(read_with_overrides(recipe, list(overrides))[0])
    if sources.dataset_available("cifar10"):
        recipe, why = "cifar10-quick", "CIFAR-10 is in the data cache"
    elif not sources.download_server_answers("cifar10", DEMO_PROBE_SECONDS):  # offline: don't wait on a download
        recipe, why = "fmnist-quick", (f"CIFAR-10 is not cached and its server did not answer within "
                                       f"{DEMO_PROBE_SECONDS:g} s")
    else:
        try:
            sources.load_dataset("cifar10")
            recipe, why = "cifar10-quick", "CIFAR-10 was downloaded"
        except UserError as err:
            recipe, why = "fmnist-quick", f"CIFAR-10 is not cached and could not be downloaded ({err})"
    say(f"demo: training {recipe} because {why}")
    return experiment.train(recipe, list(overrides))
