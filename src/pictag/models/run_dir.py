"""Run directories: a trained encoder (and head) that loads anywhere a model spec does, without the training stack.

    RUN/best/model.safetensors   fp32 state dict: "encoder.<key>" (the Encoder module's keys) and "head.<key>"
    RUN/best/pictag.json         format, backbone spec, weights_id of the weights training started from, task,
                                 head config (`Head.config()`) or null, classes, preprocessing, metrics, version,
                                 the backbone's architecture where its name alone cannot rebuild it, and the
                                 learned embedding after the backbone (`EmbeddingEncoder`) or null
    RUN/best/backbone/           transformers backbones only: config, tokenizer and image processor files

`create_model("RUN")` (or "run:RUN") gives the encoder; `load_run` also gives the head and the metadata. A run's
architecture is rebuilt from its spec with random weights (no download), then its own weights are loaded, so a run
made on a machine with the hub works on one without it. Nothing here imports Lightning, and every file is read
with safetensors or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pictag.errors import PictagError, option
from pictag.models.registry import Backend
from pictag.storage.files import atomic_folder

if TYPE_CHECKING:
    import torch

    from pictag.heads.base import Head
    from pictag.models.base import Encoder

FORMAT = 1
META = "pictag.json"
WEIGHTS = "model.safetensors"
BACKBONE_DIR = "backbone"
SCHEME = "run"


@dataclass
class RunModel:
    """What a run directory holds, loaded.

    Attributes:
        encoder: The trained encoder; its `spec` is "run:<dir>", its `weights_id` a digest of the run's weights.
        head: The trained head, or None for tasks that keep zero-shot (`clip`).
        meta: The parsed `pictag.json`.
    """

    encoder: Encoder
    head: Head | None
    meta: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str] | None:
        """The classes the head scores, in its order, or None."""
        return self.meta.get("classes")


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a run directory: it, or its `best/`, holds a pictag.json."""
    path = Path(os.path.expanduser(os.fspath(path)))
    return (path / META).is_file() or (path / "best" / META).is_file()


def model_dir(path: str | os.PathLike) -> Path:
    """The folder that holds a run's model files: RUN/best, or RUN itself (e.g. RUN/wise-ft-0.5).

    Raises:
        PictagError: the path is not a run directory.
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    if (path / "best" / META).is_file():
        return path / "best"
    if (path / META).is_file():
        return path
    if any((fold / "best" / META).is_file() for fold in path.glob("fold*")):
        raise PictagError(
            f"{path} is a cross-validated run (a model per fold): classify a product table with --images IMAGES, "
            f"where every fold votes, or name one fold, e.g. --model {path / 'fold0'}"
        )
    if path.is_dir():
        raise PictagError(
            f"{path} is a folder but not a pictag run (no best/{META}): train one with `pictag train`, "
            "or use hf:DIR for a save_pretrained folder"
        )
    raise PictagError(f"run directory {path} does not exist")


def run_spec(path: str | os.PathLike) -> str:
    """The canonical model spec of a run: "run:" and the absolute path of RUN (not RUN/best)."""
    folder = model_dir(path).resolve()
    root = folder.parent if folder.name == "best" and not (folder.parent / META).is_file() else folder
    return f"{SCHEME}:{root}"


def read_meta(path: str | os.PathLike) -> dict:
    """The parsed pictag.json of a run.

    Raises:
        PictagError: not a run, an unreadable file, or a format newer than this pictag reads.
    """
    meta_path = model_dir(path) / META
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise PictagError(f"cannot read {meta_path}: {exc}") from None
    if not isinstance(meta, dict) or "backbone" not in meta:
        raise PictagError(f"{meta_path} is not a pictag run description (no backbone)")
    if meta.get("format", FORMAT) > FORMAT:
        raise PictagError(f"{meta_path} has format {meta['format']}; this pictag reads {FORMAT}: upgrade pictag")
    return meta


def save_run_model(
    out_dir: str | os.PathLike,
    encoder: Encoder,
    head: Head | None,
    *,
    task: str,
    classes: list[str] | None,
    metrics: dict,
    training: dict | None = None,
) -> Path:
    """Write `out_dir/{model.safetensors, pictag.json}` (and `backbone/` for transformers models) atomically.

    The files are written to a temporary folder beside `out_dir`, fsynced, and renamed over it, so a reader (or a
    crash) sees the old model or the new one, never half of one.

    Args:
        out_dir: The model folder, usually RUN/best.
        encoder: The trained encoder; its weights are stored in fp32 whatever it trained in.
        head: The trained head, or None (a `clip` run stays zero-shot).
        task: The task name, e.g. "classifier" or "clip".
        classes: The head's classes in its order, or None.
        metrics: JSON-able metrics of this model (validation top-1, epoch, ...).
        training: What the training run used where its options left the choice open (device, precision, batch,
            learning rates, ...; `pictag.train.engine.Engine.record`), or None.

    Returns:
        out_dir.

    Raises:
        PictagError: a head config or metrics that JSON cannot hold.
    """
    import pictag

    out_dir = Path(out_dir)
    preprocess = asdict(encoder.preprocess)
    meta = {
        "format": FORMAT,
        "backbone": backbone_spec(encoder),
        "weights_id": getattr(encoder, "base_weights_id", encoder.weights_id),
        "task": task,
        "head": None if head is None else head.config(),
        "classes": None if classes is None else list(classes),
        "preprocess": preprocess,
        "metrics": metrics,
        "pictag_version": getattr(pictag, "__version__", None),
        "architecture": _architecture(encoder),
        "embedding": encoder.embedding_config() if hasattr(encoder, "embedding_config") else None,
    }
    if training is not None:
        meta["training"] = training
    try:
        text = json.dumps(meta, indent=2, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise PictagError(f"run metadata is not JSON-able ({exc}): head.config() and metrics must be plain") from None
    tensors = _fp32_state(encoder, head)

    from safetensors.torch import save_file

    with atomic_folder(out_dir) as tmp:
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})
        (tmp / META).write_text(text + "\n")
        # safetensors creates its file owner-only; serving workers under another user must read it like the JSON.
        os.chmod(tmp / WEIGHTS, (tmp / META).stat().st_mode & 0o777)
        _save_backbone_files(encoder, tmp / BACKBONE_DIR)
    return out_dir


def backbone_spec(encoder: Encoder) -> str:
    """The architecture spec behind an encoder: its own spec, or for a run's encoder the backbone it came from."""
    return getattr(encoder, "backbone_spec", encoder.spec)


def load_run(path: str | os.PathLike, *, device: str | None = None, precision: str | None = None) -> RunModel:
    """Load a run directory's encoder, head and metadata, on `device` with `precision` (chosen when None).

    Raises:
        PictagError: not a run directory, or files that do not fit the backbone they name.
    """
    from pictag.device import resolve_device

    run = build_run(path)
    torch_device, run.encoder.autocast_dtype = resolve_device(device, precision)
    run.encoder.to(torch_device)
    if run.head is not None:
        run.head.to(torch_device)
    return run


def build_run(path: str | os.PathLike) -> RunModel:
    """`load_run` on the CPU in float32, for callers that place the model themselves (the model registry)."""
    from pictag.models.checkpoint import file_digest
    from pictag.models.preprocess import Preprocess

    folder = model_dir(path)
    meta = read_meta(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise PictagError(f"run {folder} has no {WEIGHTS}: the training did not finish an epoch; resume it")
    encoder = _random_backbone(folder, meta)
    if meta.get("embedding"):  # a metric-learning run: the backbone, then its trained embedding
        from pictag.models.embedding import EmbeddingEncoder

        encoder = EmbeddingEncoder(encoder, **meta["embedding"])
    load_strict(encoder, _read_weights(weights, "encoder."), f"{weights} (backbone {meta['backbone']})")
    encoder.preprocess = _preprocess(Preprocess, meta.get("preprocess"), encoder.preprocess)
    refresh_logit_scale(encoder)
    encoder.backbone_spec = meta["backbone"]
    encoder.base_weights_id = meta.get("weights_id")
    encoder.spec = run_spec(folder)
    encoder.weights_id = f"run:{file_digest(weights)}"
    encoder.eval()
    return RunModel(encoder, run_head(folder), meta)


def run_head(path: str | os.PathLike) -> Head | None:
    """A run's trained head alone, on the CPU, or None for a run without one (`clip`): its classes are in the meta.

    The head's tensors are read without the backbone's, so a caller that has the encoder (through `create_model`)
    pays nothing more for the head.

    Raises:
        PictagError: a head that does not load, or whose classes disagree with the run's class list.
    """
    folder = model_dir(path)
    meta = read_meta(folder)
    if not meta.get("head"):
        return None
    head = _load_head(meta["head"], _read_weights(folder / WEIGHTS, "head."))
    classes = meta.get("classes")
    if classes is None or len(classes) != head.num_classes:
        raise PictagError(
            f"run {folder}: its head scores {head.num_classes} classes but pictag.json lists "
            f"{'none' if classes is None else len(classes)}"
        )
    return head.eval()


def refresh_logit_scale(encoder: Encoder) -> None:
    """Copy the module's learned logit scale (and bias) into the encoder's float attributes after weights change."""
    import torch

    scale = getattr(encoder.module, "logit_scale", None)
    if isinstance(scale, torch.Tensor):
        encoder.logit_scale = scale.detach().float().exp().item()
    bias = getattr(encoder.module, "logit_bias", None)
    if isinstance(bias, torch.Tensor):
        encoder.logit_bias = bias.detach().float().item()


def _json_default(value: Any):
    # Head configs may hold tuples (fine) or numpy/torch scalars (converted); anything else is refused.
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-able")


def _fp32_state(encoder: Encoder, head: Head | None) -> dict[str, torch.Tensor]:
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    if head is not None:
        state.update({f"head.{k}": v for k, v in head.state_dict().items()})
    out, seen = {}, set()
    for key, value in state.items():
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        # safetensors refuses tensors that share memory (tied weights): each key gets its own copy.
        ptr = value.untyped_storage().data_ptr() if value.numel() else None
        out[key] = value.clone() if ptr in seen else value.contiguous()
        seen.add(ptr)
    return out


def _architecture(encoder: Encoder) -> dict | None:
    # open_clip rebuilds an architecture from its name, but only names it knows: a custom config registered in the
    # training process (tests' tiny models, a user's JSON) is kept here so the run loads in any process.
    from pictag.models.registry import parse_spec

    spec = parse_spec(backbone_spec(encoder))
    if spec.scheme != "open_clip":
        return None
    import open_clip

    config = open_clip.get_model_config(spec.name)
    return {"open_clip": {"name": spec.name, "config": config}} if config else None


def _save_backbone_files(encoder: Encoder, folder: Path) -> None:
    # A transformers architecture is its config.json plus tokenizer and processor files, which may come from the
    # hub: kept in the run so that loading it needs neither the hub nor the folder it was trained from.
    from pictag.models.registry import parse_spec

    own = getattr(encoder, "save_backbone_files", None)
    if own is not None:  # an encoder of several towers (pair:) keeps each tower's files itself
        folder.mkdir()
        own(folder)
        return
    if parse_spec(backbone_spec(encoder)).scheme != "hf":
        return
    folder.mkdir()
    encoder.module.config.save_pretrained(folder)
    encoder.tokenizer.save_pretrained(folder)
    processor = getattr(encoder, "processor", None)
    if processor is None:
        raise PictagError(f"{encoder.spec}: the encoder has no image processor to save with the run")
    processor.save_pretrained(folder)


def _random_backbone(folder: Path, meta: dict) -> Encoder:
    from pictag.models.registry import get_backend, parse_spec

    spec = parse_spec(meta["backbone"])
    rebuild = get_backend(spec.scheme).rebuild
    if rebuild is None:
        raise PictagError(f"run {folder}: backbone {meta['backbone']} cannot be rebuilt (scheme {spec.scheme})")
    return rebuild(spec, folder / BACKBONE_DIR, meta)


def _read_weights(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix`, with it removed; the others are not read."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            tensors = {k[len(prefix) :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    except Exception as exc:  # safetensors raises several types for a torn or foreign file
        raise PictagError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    # A diverged training's weights would label every image alike with score nan, and nan is not JSON for serve.
    bad = next((k for k, t in tensors.items() if t.is_floating_point() and not t.isfinite().all()), None)
    if bad is not None:
        raise PictagError(f"{path} holds non-finite weights ({prefix}{bad}): its training diverged; train it again")
    return tensors


def load_strict(module: torch.nn.Module, state: dict, what: str) -> None:
    """`module.load_state_dict(state)`, refusing in one line what does not fit: the first missing, unexpected or
    differently shaped tensor is named (torch's own message puts them on later lines).

    Raises:
        PictagError: `what` (the weights' description) does not fit `module`.
    """
    target = module.state_dict()
    missing = sorted(target.keys() - state.keys())
    unexpected = sorted(state.keys() - target.keys())
    if missing or unexpected:
        detail = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise PictagError(f"{what} does not fit its architecture: {detail}")
    for key, value in state.items():
        if value.shape != target[key].shape:
            raise PictagError(
                f"{what} does not fit its architecture: {key} is {tuple(value.shape)} in the file "
                f"but {tuple(target[key].shape)} in the model"
            )
    module.load_state_dict(state)


def _load_head(config: dict, state: dict) -> Head:
    from pictag.heads.base import load_head

    try:
        return load_head(config, state)
    except PictagError:
        raise
    except (TypeError, RuntimeError) as exc:
        raise PictagError(f"the run's head {config.get('name')!r} does not load: {str(exc).splitlines()[0]}") from None


def _preprocess(cls, fields: dict | None, default):
    if not fields:
        return default
    resize = fields["resize"]
    return cls(
        size=tuple(fields["size"]),
        resize=resize if isinstance(resize, int) else tuple(resize),
        interpolation=fields["interpolation"],
        mean=tuple(fields["mean"]),
        std=tuple(fields["std"]),
        backend=fields.get("backend", "pil"),
    )


def _create(spec, checkpoint=None, random_weights: bool = False) -> Encoder:
    if checkpoint is not None or random_weights:
        raise PictagError(
            f"{spec.name} is a run directory: it holds its own weights "
            f"(drop {option('checkpoint', 'FILE')} and {option('random_weights', True)})"
        )
    return build_run(spec.name).encoder


BACKEND = Backend(
    SCHEME, _create, list, "pictag run directories: RUN (or run:RUN) from `pictag train`", check=model_dir
)
