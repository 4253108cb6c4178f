"""`pictag models`: the model specs and weight tags pictag can build, or those whose weights are cached."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pictag.cli.common import add_command

if TYPE_CHECKING:
    from pictag.models.options import ModelsConfig


def add_parser(sub) -> None:
    add_command(
        sub,
        "models",
        "pictag.models.options:ModelsConfig",
        "pictag.cli.models:run",
        help="list model specs and weight tags, or with --cached what the cache holds",
        description="List model specs usable with --model. open_clip specs end in /TAG (the weights); "
        "hf: takes any hub id or a local save_pretrained directory; timm: lists pretrained names. "
        "--cached lists the models whose weights are in the local Hugging Face cache, with their sizes.",
    )


def run(cfg: ModelsConfig) -> str:
    needle = (cfg.grep or "").lower()
    if cfg.cached:
        from pictag.models.download import cached_models, hub_cache

        rows = [
            (", ".join(c.specs), human_size(c.size), c.repo)
            for c in cached_models()
            if any(needle in s.lower() and (cfg.scheme is None or s.startswith(f"{cfg.scheme}:")) for s in c.specs)
        ]
        if not rows:
            return f"no model weights in {hub_cache()}: fetch them with `pictag download --model SPEC`"
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{spec:<{width}}  {size:>9}  {repo}" for spec, size, repo in rows)
    from pictag.models.registry import list_models

    return "\n".join(spec for spec in list_models(cfg.scheme) if needle in spec.lower())


def human_size(size: float) -> str:
    """Bytes as people read them: 812 B, 10.5 MB."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
