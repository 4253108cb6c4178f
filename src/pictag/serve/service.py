"""The serving contract: what a model must offer to be served (`Service`), and the registry that picks one by
the `service` name in serve.yaml.

Free of torch: the worker and the API import this module; the registry names each service's module without importing
it, and `create_service` imports it, only in the processes that run a model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar

from pictag.errors import PictagError
from pictag.registry import Registry
from pictag.serve.config import ServeConfig

Item = TypeVar("Item")
Output = TypeVar("Output")


class Service(ABC, Generic[Item, Output]):
    """The model side of serving, in the four steps of LitServe's LitAPI; the worker calls nothing else.

    The worker calls `decode` on each request, `predict` on the batch of items it decoded, and `encode` on each
    output. A request that `decode` refuses gets an error reply of its own (`PictagError`: 400, `DecodeError`:
    422) and never reaches `predict`. When `predict` fails on a batch, the worker runs its items one at a time, so
    only the item that fails alone gets an error (500).

    An implementation sets its `name` and is listed as "module:Class" in `SERVICES`.

    Args:
        cfg: The serving config.
    """

    name: str = ""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg

    def __str__(self) -> str:
        return f"{self.name} service, {self.cfg.model}"

    @abstractmethod
    def setup(self) -> None:
        """Load the model, once, before the first request."""

    @abstractmethod
    def decode(self, image: bytes, params: dict) -> Item:
        """One request (encoded image bytes and the request's options) to the item `predict` takes.

        Raises:
            PictagError: the options are wrong (answered 400).
            DecodeError: the image cannot be decoded (answered 422).
        """

    @abstractmethod
    def predict(self, batch: list[Item]) -> list[Output]:
        """One output per item, in order, from one pass of the model over the whole batch."""

    @abstractmethod
    def encode(self, output: Output) -> dict:
        """The JSON body of a successful answer."""


# The `service:` names of serve.yaml. Resolving one imports its module, and torch: only processes that run a model
# get there. A plug-in adds its own with `SERVICES.register(name, "module:Class")`.
SERVICES: Registry[type[Service]] = Registry(
    "service",
    {
        "zero-shot": "pictag.serve.zero_shot:ZeroShotService",
        "trained": "pictag.serve.trained:TrainedService",
        "gallery": "pictag.serve.gallery:GalleryService",
    },
)


def create_service(cfg: ServeConfig) -> Service[Any, Any]:
    """The service `cfg.service` names, not yet set up.

    Raises:
        PictagError: unknown service; the message lists the known ones.
    """
    if cfg.service not in SERVICES:
        raise PictagError(f"serve config: {SERVICES.unknown(cfg.service)}")
    return SERVICES.get(cfg.service)(cfg)
