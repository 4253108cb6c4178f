"""Weights for offline machines: fetched ahead of time on a connected one, and listed from the cache.

Every backend fetches through huggingface_hub (open_clip and timm tags name hub repositories), so one cache, the
Hugging Face one ($HF_HUB_CACHE, else $HF_HOME/hub), holds every spec's weights. `download(SPEC)` builds the model
once, which fetches exactly what `--model SPEC` reads; `download(SPEC, to=DIR)` also writes it as a run directory,
which loads with no hub and no cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pictag.errors import PictagError, option
from pictag.models.hub import FetchError, endpoint, hub_online


@dataclass
class Downloaded:
    spec: str
    to: Path | None
    cache: Path
    tokenizer: str | None = None  # an open_clip model's transformers tokenizer, which stays in the cache

    def summary(self) -> str:
        if self.to is not None and self.tokenizer:
            return (
                f"{self.spec} -> {self.to} ({option('model', str(self.to))} loads it offline with the tokenizer "
                f"{self.tokenizer} from the cache {self.cache}: copy that too)"
            )
        if self.to is not None:
            return f"{self.spec} -> {self.to} (self-contained: {option('model', str(self.to))} loads it offline)"
        return f"{self.spec} is in the cache {self.cache}; offline machines that share it load {option('model', self.spec)}"


def download(spec: str, to: str | os.PathLike | None = None, *, overwrite: bool = False) -> Downloaded:
    """Fetch what `create_model(spec)` needs into the Hugging Face cache, or into a self-contained folder.

    Args:
        spec: "open_clip:ARCH/TAG", "hf:ORG/NAME" or "timm:NAME".
        to: Also write the model as a run directory here (weights, architecture, tokenizer and processor files,
            and a timm model's own classifier with its classes), which `create_model(to)` loads with no hub.
        overwrite: Replace an existing `to`.

    Raises:
        PictagError: an unknown spec, a spec with nothing to fetch (a run directory, a local folder), an existing
            `to`, or weights that cannot be fetched (the hub unreachable and the weights not cached).
    """
    from pictag.models.registry import create_model, parse_spec

    parsed = parse_spec(spec)
    if parsed.scheme not in ("open_clip", "hf", "timm") or (parsed.scheme == "hf" and os.path.isdir(parsed.name)):
        raise PictagError(f"{spec} is local already: download takes open_clip:ARCH/TAG, hf:ORG/NAME or timm:NAME")
    if to is not None and Path(to).exists() and not overwrite:
        raise PictagError(f"{to} already exists: pass {option('overwrite', True)} to replace it")
    try:
        encoder = create_model(str(parsed), device="cpu", precision="fp32")
    except FetchError:
        if hub_online():
            raise
        raise PictagError(
            f"cannot download {parsed}: the hub ({endpoint()}) does not answer from this machine and the weights "
            f"are not cached; run this where it answers, then copy {hub_cache()} or the {option('to', 'DIR')} "
            "folder here"
        ) from None
    if to is not None:
        from pictag.heads.pretrained import PretrainedHead
        from pictag.models.run_dir import save_run_model

        head = PretrainedHead(encoder) if encoder.pretrained_classifier is not None else None
        save_run_model(to, encoder, head, task="download", classes=None if head is None else head.classes, metrics={})
    return Downloaded(str(parsed), None if to is None else Path(to), hub_cache(), _hf_tokenizer(parsed))


def _hf_tokenizer(spec) -> str | None:
    # A run directory keeps open_clip's architecture but not a transformers tokenizer (SigLIP's, for one).
    if spec.scheme != "open_clip":
        return None
    import open_clip

    return ((open_clip.get_model_config(spec.name) or {}).get("text_cfg") or {}).get("hf_tokenizer_name")


def hub_cache() -> Path:
    """The Hugging Face cache folder this process reads and writes."""
    import huggingface_hub.constants

    return Path(huggingface_hub.constants.HF_HUB_CACHE)


@dataclass
class Cached:
    """One model repository in the cache: the specs that read it, its size in bytes and its files."""

    repo: str
    specs: list[str]
    size: int
    files: int


def cached_models() -> list[Cached]:
    """The model repositories in the Hugging Face cache, with the pictag specs that use each, largest first."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(hub_cache())
    except CacheNotFound:
        return []
    open_clip_tags = _open_clip_repos()
    out = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        specs = list(open_clip_tags.get(repo.repo_id, []))
        if repo.repo_id.startswith("timm/"):
            specs.append(f"timm:{repo.repo_id.removeprefix('timm/')}")
        elif not specs:
            specs.append(f"hf:{repo.repo_id}")
        out.append(Cached(repo.repo_id, specs, repo.size_on_disk, repo.nb_files))
    return sorted(out, key=lambda c: -c.size)


def _open_clip_repos() -> dict[str, list[str]]:
    """Hub repository -> the open_clip specs whose weights it holds."""
    try:
        import open_clip
    except ImportError:
        return {}
    repos: dict[str, list[str]] = {}
    for arch, tag in open_clip.list_pretrained():
        repo = (open_clip.get_pretrained_cfg(arch, tag).get("hf_hub") or "").strip("/")
        if repo:
            repos.setdefault(repo, []).append(f"open_clip:{arch}/{tag}")
    return repos
