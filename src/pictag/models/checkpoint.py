"""Loading local weight files into an architecture, including files whose key names differ from ours."""

from __future__ import annotations

import hashlib
import logging
import os

import torch

from pictag.config import cache_dir
from pictag.errors import PictagError
from pictag.storage.files import write_file

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_PREFIXES = ("module.", "model.", "_orig_mod.")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a .pt/.pth/.bin/.safetensors file into a flat name→tensor dict, unwrapping the usual containers."""
    path = os.fspath(path)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean the same to the user
        raise PictagError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PictagError(f"checkpoint {path} holds no state dict of tensors")
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_checkpoint(module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load weights by name or, when names differ but every shape matches in order, by position (and say so).

    Raises:
        PictagError: the file's tensors fit neither way; the message names the first mismatch.
    """
    state = read_state_dict(path)
    target = module.state_dict()
    if state.keys() == target.keys():
        mismatched = [k for k in target if state[k].shape != target[k].shape]
        if mismatched:
            k = mismatched[0]
            raise PictagError(
                f"checkpoint {path} does not fit this architecture: {k} is {tuple(state[k].shape)} in the file "
                f"but {tuple(target[k].shape)} in the model"
            )
        module.load_state_dict(state)
        return
    if len(state) != len(target):
        missing = sorted(target.keys() - state.keys())[:3]
        raise PictagError(
            f"checkpoint {path} has {len(state)} tensors, the architecture has {len(target)} "
            f"(missing e.g. {', '.join(missing)}): is it for another model?"
        )
    for (src_key, src), (dst_key, dst) in zip(state.items(), target.items()):
        if src.shape != dst.shape:
            raise PictagError(
                f"checkpoint {path} does not fit this architecture by name or by position: "
                f"{src_key} {tuple(src.shape)} would go to {dst_key} {tuple(dst.shape)}"
            )
    log.info("checkpoint %s: key names differ, loaded %d tensors by position (all shapes match)", path, len(state))
    module.load_state_dict(dict(zip(target.keys(), state.values())))


def file_digest(path: str | os.PathLike) -> str:
    """A short hash of a weights file's whole content, for cache keys (fine-tuning may change only its tail).

    Remembered in the cache by (path, size, mtime), so a large file is read once, not on every run.
    """
    stat = os.stat(path)
    identity = f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}"
    memo = cache_dir() / "digests" / hashlib.sha1(identity.encode()).hexdigest()
    if memo.is_file():
        return memo.read_text()
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    digest = h.hexdigest()[:16]
    write_file(memo, digest.encode())  # whole or absent: a torn memo would name other weights
    return digest
