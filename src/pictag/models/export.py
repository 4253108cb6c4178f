"""`export`: a run directory written in other ecosystems' formats, loadable without pictag, with a model card.

- `hf`: a `save_pretrained` folder.
  - A CLIP run (open_clip or hf backbone, `clip` task): transformers' `CLIPModel.from_pretrained` and
    `CLIPProcessor.from_pretrained` load it, and `--model hf:DIR` too. An hf-backed run is saved as it is; an
    open_clip ViT CLIP is converted to transformers' CLIP layout, as transformers' own
    `convert_clip_original_pytorch_to_hf.py` maps it (fused q/k/v split into three projections, projections
    transposed into Linear weights).
  - A timm classifier run: `AutoModelForImageClassification.from_pretrained(DIR, trust_remote_code=True)` and
    `pipeline("image-classification", model=DIR, trust_remote_code=True)` load it, with `id2label`. It is
    transformers' `TimmWrapperForImageClassification` whose classifier takes the L2-normalised features, as pictag
    trains its heads (`modeling_pictag_timm.py`, copied into the folder): no timm classifier normalises. The
    backbone alone is also written in timm's own format (`timm/`: config.json with its `pretrained_cfg`, and
    model.safetensors), which `timm.create_model("local-dir:DIR/timm")` loads.
- `open_clip`: `open_clip_model.safetensors` and `open_clip_config.json`, as open_clip's hub folders hold them:
  `open_clip.create_model_and_transforms(ARCH, pretrained=DIR/open_clip_model.safetensors)` and
  `create_model_and_transforms("local-dir:DIR")` load it. An hf-backed CLIP is converted the other way.
- `onnx` / `openvino`: any run as one graph from uint8 crops to its scores and its embedding (`model.onnx` or
  `model.xml`), and `pipeline.json` with the crop to make, the graph's inputs and outputs, and the labels.

Every export has a README.md model card made from pictag.json and the run's config: data, recipe, metrics, labels.
What a format cannot hold (a CLIP run's classifier head in a CLIP folder, a learned embedding in a timm folder) is
refused in one line that names what would be lost, before anything is written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from pictag.errors import PictagError, option
from pictag.heads.base import scores_from_logits
from pictag.models.registry import parse_spec
from pictag.models.run_dir import RunModel, load_run, model_dir
from pictag.storage.files import atomic_folder

FORMATS = ("hf", "open_clip", "onnx", "openvino")
# PIL resample codes, as transformers' image processors store them.
_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}
PIPELINE = "pipeline.json"
TIMM_MODELING = "modeling_pictag_timm.py"


@dataclass
class ExportResult:
    out: Path
    format: str
    source: str
    how: str

    def summary(self) -> str:
        return f"exported {self.source} as {self.format} -> {self.out} (load with {self.how})"


Writer = Callable[[RunModel, Path], str]


def export_run(run: str | os.PathLike, format: str, out: str | os.PathLike, *, overwrite: bool = False) -> ExportResult:
    """Write a run directory in another ecosystem's format, with a README.md model card.

    Args:
        run: The run directory (RUN, RUN/best or RUN/wise-ft-A).
        format: "hf", "open_clip", "onnx" or "openvino".
        out: The folder to write; written to a temporary name and renamed, so it is whole or absent.
        overwrite: Replace an existing `out`.

    Raises:
        PictagError: unknown format, an existing output, a corrupt run, or a run that this format cannot hold
            whole (the message names what would be lost).
    """
    if format not in FORMATS:
        raise PictagError(f"unknown export format {format!r}: use one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise PictagError(f"{out} already exists: pass {option('overwrite', True)} to replace it")
    loaded = load_run(run, device="cpu", precision="fp32")
    writer = _writer(loaded, format, run)
    with atomic_folder(out) as tmp:
        how = writer(loaded, tmp)
        (tmp / "README.md").write_text(model_card(run, loaded, format, how))
    return ExportResult(out, format, loaded.encoder.spec, how)


def _writer(loaded: RunModel, format: str, run) -> Writer:
    """The writer of `format` for this run, or a one-line refusal naming what the format would lose."""
    meta = loaded.meta
    if format in ("onnx", "openvino"):
        if meta.get("task") == "fusion":
            raise PictagError(
                f"{run} is a fusion run: it scores an image together with its product text, and a graph from the "
                "image alone would drop the text tower; serve it with pictag instead"
            )
        return partial(_write_graph, format)
    scheme = parse_spec(meta["backbone"]).scheme
    if scheme == "timm" and format == "hf":
        return _hf_from_timm
    lost = _learned_parts(loaded)
    if scheme in ("open_clip", "hf") and lost:
        raise PictagError(
            f"{run} ({meta.get('task')} run): a {format} CLIP folder would keep the towers but drop {lost} "
            "(transformers' CLIPForImageClassification pools patch tokens without CLIP's projection, and open_clip "
            f"has no classifier): export it with {option('format', 'onnx')} or openvino"
        )
    writer = _CLIP_WRITERS.get((scheme, format))
    if writer is None:
        raise PictagError(
            f"{run} has a {meta['backbone']} backbone, which has no {format} form: open_clip exports CLIP models "
            "(open_clip or hf backbones), hf exports those and timm classifiers, onnx and openvino export any run"
        )
    return writer


def _learned_parts(loaded: RunModel) -> str:
    """What a run learned beyond its backbone, in words ("" for none)."""
    parts = []
    embedding = loaded.meta.get("embedding")
    if embedding:
        parts.append(f"its learned {embedding['in_dim']}->{embedding['dim']} embedding")
    if loaded.head is not None:
        parts.append(f"its {loaded.head.name} head and the names of its {loaded.head.num_classes} classes")
    return " and ".join(parts)


# --- model card -------------------------------------------------------------------------------------------------------


# Where a run's config.yaml says what it learned from; runtime options (where it ran, where it wrote) are neither.
_DATA_KEYS = ("data", "images", "val", "val_split", "folds", "fold", "label_column", "text_column", "id_col")
_RUNTIME_KEYS = ("out", "device", "workers", "fresh", "max_pixels", "max_aspect_ratio", "decode", "save_every")


def model_card(run, loaded: RunModel, format: str, how: str) -> str:
    """README.md of an export: what the run was trained on and how, its metrics and labels, and how to load it."""
    import yaml

    meta, folder = loaded.meta, model_dir(run)
    root = folder.parent if folder.name == "best" else folder
    config_path = root / "config.yaml"
    config = (yaml.safe_load(config_path.read_text()) if config_path.is_file() else None) or {}
    config = {k: v for k, v in config.items() if v not in (None, "", []) and k not in _RUNTIME_KEYS}
    data = {k: v for k, v in config.items() if k in _DATA_KEYS}
    recipe = {k: v for k, v in config.items() if k not in _DATA_KEYS}
    metrics = {**_epoch_metrics(root / "metrics.csv", (meta.get("metrics") or {}).get("epoch")), **meta["metrics"]}
    classes = meta.get("classes") or []
    lines = [
        "---",
        "library_name: " + {"hf": "transformers", "open_clip": "open_clip"}.get(format, format),
        "tags: [pictag, image-classification]" if classes else "tags: [pictag, image-feature-extraction]",
        "---",
        f"# {root.name}",
        "",
        f"A pictag `{meta.get('task')}` run on `{meta['backbone']}`, exported as `{format}`.",
        "",
        f"Load it with {how}.",
        "",
        "## Data",
        "",
        *([f"- {k}: `{v}`" for k, v in data.items()] or ["- not recorded (the run has no config.yaml)"]),
        f"- classes: {len(classes)}" if classes else "- no classes (an embedding or zero-shot model)",
        "",
        "## Recipe",
        "",
        *[f"- {k}: `{v}`" for k, v in recipe.items()],
        f"- head: `{json.dumps(meta.get('head'))}`",
        f"- preprocessing: `{json.dumps(meta.get('preprocess'))}`",
        f"- pictag version: {meta.get('pictag_version')}",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()],
        "",
    ]
    if classes:
        lines += ["## Labels", "", "| id | label |", "|---|---|", *[f"| {i} | {c} |" for i, c in enumerate(classes)]]
    return "\n".join(lines) + "\n"


def _epoch_metrics(path: Path, epoch) -> dict:
    """The metrics.csv row of the kept epoch (the last row when the epoch is unknown), as numbers where they are."""
    import csv

    if not path.is_file():
        return {}
    rows = list(csv.DictReader(path.open()))
    row = next((r for r in rows if r.get("epoch") == str(epoch)), rows[-1] if rows else {})
    out = {}
    for key, value in row.items():
        if value in ("", None):
            continue
        try:
            out[key] = int(value) if value.isdigit() else float(value)
        except ValueError:
            out[key] = value
    return out


# --- onnx and openvino ------------------------------------------------------------------------------------------------


class _ImageGraph(torch.nn.Module):
    """uint8 (N, H, W, 3) RGB crops -> (scores, embedding), or the embedding alone for a run without a head.

    The embedding is what `pictag embed` stores (L2-normalised); the scores are what `classify` reports.
    """

    def __init__(self, encoder, head):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, images: torch.Tensor):
        features = self.encoder.forward_image(self.encoder.preprocess.normalize(images)).float()
        embedding = F.normalize(features, dim=-1)
        if self.head is None:
            return embedding
        logits = self.head(embedding if self.head.normalized_input else features)
        return scores_from_logits(logits, bias=self.head.logit_bias), embedding


def _write_graph(engine: str, loaded: RunModel, folder: Path) -> str:
    from pictag.models.engines.encoder import runtime
    from pictag.models.engines.towers import Tower

    encoder, head = loaded.encoder, loaded.head
    onnx, target = runtime("onnx"), runtime(engine)
    onnx.require()
    target.require()
    height, width = encoder.preprocess.size
    outputs = ("embedding",) if head is None else ("scores", "embedding")
    example = {"images": torch.zeros(2, height, width, 3, dtype=torch.uint8)}
    tower = Tower("image", _ImageGraph(encoder, head).eval(), example, {"images": {0: "batch"}}, outputs)
    onnx.export(tower, folder)
    if engine == "openvino":
        target.export(tower, folder, onnx=folder / onnx.file)
        (folder / onnx.file).unlink()
    _check_graph(target, folder, tower.module, height, width)
    preprocess = encoder.preprocess
    pipeline = {
        "model": target.file,
        "input": {"name": "images", "dtype": "uint8", "layout": "NHWC", "color": "RGB", "size": [height, width]},
        "crop": {
            "resize": preprocess.resize,
            "how": "the short side to resize, then a centre crop of size"
            if isinstance(preprocess.resize, int)
            else "resize to (height, width), then a centre crop of size",
            "interpolation": preprocess.interpolation,
        },
        "normalize_in_graph": {"mean": list(preprocess.mean), "std": list(preprocess.std), "scale": 1 / 255},
        "outputs": {
            **({"scores": "softmax over labels" if head.logit_bias is None else "sigmoid per label"} if head else {}),
            "embedding": f"L2-normalised {encoder.embed_dim}-d embedding",
        },
        "labels": loaded.classes,
        "backbone": loaded.meta["backbone"],
    }
    (folder / PIPELINE).write_text(json.dumps(pipeline, indent=2) + "\n")
    runner = "onnxruntime.InferenceSession" if engine == "onnx" else "openvino.Core().compile_model"
    return f"{runner}(DIR/{target.file}) on uint8 crops made as DIR/{PIPELINE} says"


def _check_graph(target, folder: Path, module: torch.nn.Module, height: int, width: int) -> None:
    """Run the written graph on a batch of another size than the traced one, against the module: a shape the
    tracer froze into a constant would otherwise give wrong results, or fail, only in the user's hands."""
    images = torch.randint(0, 256, (3, height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = module(images)
    expected = (expected if isinstance(expected, torch.Tensor) else expected[0]).numpy()
    try:
        got = target.load(folder, "fp32", threads=1)({"images": images.numpy()})
    except Exception as exc:  # the runtimes raise their own types
        raise PictagError(f"the exported {target.name} graph does not run: {str(exc).splitlines()[0][:200]}") from None
    delta = float(abs(got - expected).max())
    if delta > 1e-4:
        raise PictagError(f"the exported {target.name} graph differs from the run by {delta:.2g}: please report it")


# --- timm -------------------------------------------------------------------------------------------------------------


def _linear_on_normalised(head) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(W, b) with head(f) = W f + b for L2-normalised f, when the head is one linear map; None otherwise."""
    c = head.num_classes
    if head.name == "linear":
        return head.weight, head.bias
    if head.name in ("cosine", "finetuned"):
        weight = head.weight if head.name == "finetuned" else F.normalize(head.weight, dim=-1)
        return head.log_scale.exp() * weight, torch.zeros(c)
    return None


def _hf_from_timm(loaded: RunModel, folder: Path) -> str:
    import timm
    from safetensors.torch import save_file

    meta, encoder, head = loaded.meta, loaded.encoder, loaded.head
    if meta.get("embedding"):
        raise PictagError(
            f"{meta['backbone']}: a transformers timm folder would drop {_learned_parts(loaded)}: "
            f"export it with {option('format', 'onnx')} or openvino"
        )
    linear = None if head is None else _linear_on_normalised(head)
    if head is not None and linear is None and head.normalized_input:
        raise PictagError(
            f"the run's {head.name} head is not one linear map, which is all a timm classifier holds: "
            f"export it with {option('format', 'onnx')} or openvino"
        )
    if head is not None and not head.normalized_input:  # the backbone's own classifier: timm's format as it is
        linear = head.weight, head.bias
    arch = parse_spec(meta["backbone"]).name.split(".")[0]
    num_classes = 0 if head is None else head.num_classes
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    state = {k: v for k, v in encoder.module.state_dict().items()}
    if linear is not None:
        name = next(n for n, m in model.named_modules() if m is model.get_classifier())
        state.update({f"{name}.weight": linear[0], f"{name}.bias": linear[1]})
    model.load_state_dict(state)  # strict: the backbone and the classifier are all of it
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    pretrained_cfg = _timm_pretrained_cfg(model, encoder.preprocess, num_classes)
    timm_config = {"architecture": arch, "num_classes": num_classes, "num_features": model.num_features,
                   "pretrained_cfg": pretrained_cfg}  # fmt: skip
    # timm's own format holds the backbone alone: its classifiers take unnormalised features.
    (folder / "timm").mkdir()
    backbone = {k: v.detach().float().contiguous() for k, v in encoder.module.state_dict().items()}
    save_file(backbone, folder / "timm" / "model.safetensors", metadata={"format": "pt"})
    headless = {**timm_config, "num_classes": 0, "pretrained_cfg": {**pretrained_cfg, "num_classes": 0}}
    (folder / "timm" / "config.json").write_text(json.dumps(headless, indent=2) + "\n")
    if linear is None:  # no head: the backbone's features, as TimmWrapperModel gives them
        config = {**timm_config, "model_type": "timm_wrapper", "architectures": ["TimmWrapperModel"]}
    elif head.normalized_input:
        config = {
            **timm_config,
            "model_type": "pictag_timm",
            "architectures": ["PictagTimmForImageClassification"],
            "auto_map": {
                "AutoConfig": f"{TIMM_MODELING[:-3]}.PictagTimmConfig",
                "AutoModelForImageClassification": f"{TIMM_MODELING[:-3]}.PictagTimmForImageClassification",
            },
        }
        shutil.copy(Path(__file__).with_name(TIMM_MODELING), folder / TIMM_MODELING)
    else:
        config = {**timm_config, "model_type": "timm_wrapper", "architectures": ["TimmWrapperForImageClassification"]}
    if loaded.classes:
        config["label_names"] = list(loaded.classes)
    # transformers' timm image processor reads its pretrained_cfg from config.json, as timm's hub folders hold it.
    config["image_processor_type"] = "TimmWrapperImageProcessor"
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({f"timm_model.{k}": v for k, v in state.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    remote = ", trust_remote_code=True" if TIMM_MODELING in os.listdir(folder) else ""
    load = (
        f'transformers.AutoModelForImageClassification.from_pretrained(DIR{remote}) or pipeline("image-classification", '
        f"model=DIR{remote})"
        if linear is not None
        else "transformers.AutoModel.from_pretrained(DIR)"
    )
    return f'{load}; the backbone alone: timm.create_model("local-dir:DIR/timm", pretrained=True)'


def _timm_pretrained_cfg(model, preprocess, num_classes: int) -> dict:
    """timm's pretrained_cfg of the model, with the run's preprocessing (the crop pictag makes)."""
    height, width = preprocess.size
    cfg = dict(model.pretrained_cfg)
    cfg = {k: v for k, v in cfg.items() if k not in ("hf_hub_id", "url", "file", "source", "tag", "hf_hub_filename")}
    # timm resizes to floor(side / crop_pct): the model's own crop_pct where it gives the run's resize, else one
    # half a pixel off, which floors to it whatever the float rounding.
    if isinstance(preprocess.resize, int):
        side, target, crop_mode = max(height, width), preprocess.resize, "center"
    else:
        side, target, crop_mode = height, preprocess.resize[0], "squash"
    crop_pct = cfg.get("crop_pct") or 1.0
    if math.floor(side / crop_pct) != target:
        crop_pct = side / (target + 0.5)
    return {
        **cfg,
        "input_size": [3, height, width],
        "interpolation": preprocess.interpolation,
        "mean": list(preprocess.mean),
        "std": list(preprocess.std),
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
        "num_classes": num_classes,
    }


# --- hf ---------------------------------------------------------------------------------------------------------------


def _hf_from_hf(encoder, meta: dict, folder: Path) -> None:
    encoder.module.save_pretrained(folder)
    encoder.tokenizer.save_pretrained(folder)
    encoder.processor.save_pretrained(folder)


def _hf_from_open_clip(encoder, meta: dict, folder: Path) -> None:
    from transformers import CLIPModel

    config = _hf_config(encoder.module, meta)
    state = open_clip_to_hf(encoder.module.state_dict(), config.vision_config.num_hidden_layers,
                            config.text_config.num_hidden_layers)  # fmt: skip
    model = CLIPModel(config)
    missing = sorted(model.state_dict().keys() - state.keys())
    if missing:
        raise PictagError(
            f"the converted weights lack {', '.join(missing[:3])}: this open_clip model is not a plain CLIP"
        )
    model.load_state_dict(state)
    model.save_pretrained(folder)
    _clip_tokenizer(encoder, folder)
    _image_processor(encoder.preprocess).save_pretrained(folder)


def _hf_config(model, meta: dict):
    """transformers' CLIPConfig of an open_clip CLIP, or a refusal naming what transformers' CLIP cannot express."""
    import open_clip
    from transformers import CLIPConfig

    arch = parse_spec(meta["backbone"]).name
    cfg = ((meta.get("architecture") or {}).get("open_clip") or {}).get("config") or open_clip.get_model_config(arch)
    if not cfg:
        raise PictagError(f"open_clip:{arch} has no known config to convert")
    vision, text = dict(cfg.get("vision_cfg", {})), dict(cfg.get("text_cfg", {}))
    unsupported = [
        what
        for what, bad in (
            ("a timm image tower", vision.get("timm_model_name")),
            ("a ResNet image tower", isinstance(vision.get("layers"), (list, tuple))),
            ("a transformers text tower", text.get("hf_model_name")),
            ("a non-default tokenizer", text.get("hf_tokenizer_name")),
            ("attentional pooling", vision.get("attentional_pool")),
            ("image pooling other than the class token", vision.get("pool_type", "tok") != "tok"),
            ("text pooling other than the end token", text.get("pool_type", "argmax") != "argmax"),
            ("no pre-LayerNorm", vision.get("no_ln_pre")),
            ("LayerNorm after pooling", vision.get("final_ln_after_pool") or text.get("final_ln_after_pool")),
            ("projection biases", text.get("proj_bias") or vision.get("proj_bias")),
            ("a SigLIP bias", cfg.get("init_logit_bias") is not None),
            ("layer scale", vision.get("ls_init_value") or text.get("ls_init_value")),
        )
        if bad
    ]
    if unsupported or not hasattr(model, "visual") or not hasattr(model.visual, "class_embedding"):
        raise PictagError(
            f"open_clip:{arch} cannot be written as a transformers CLIP ({', '.join(unsupported) or 'not a CLIP'}): "
            f"export it with {option('format', 'open_clip')}"
        )
    act = "quick_gelu" if cfg.get("quick_gelu") else "gelu"
    v_width, t_width = vision["width"], text.get("width", 512)
    return CLIPConfig(
        projection_dim=cfg["embed_dim"],
        logit_scale_init_value=float(model.logit_scale.item()),
        vision_config=dict(
            hidden_size=v_width,
            intermediate_size=int(v_width * vision.get("mlp_ratio", 4.0)),
            num_hidden_layers=vision["layers"],
            num_attention_heads=v_width // vision.get("head_width", 64),
            image_size=vision["image_size"],
            patch_size=vision["patch_size"],
            hidden_act=act,
            layer_norm_eps=1e-5,
        ),
        text_config=dict(
            hidden_size=t_width,
            intermediate_size=int(t_width * text.get("mlp_ratio", 4.0)),
            num_hidden_layers=text.get("layers", 12),
            num_attention_heads=text.get("heads", 8),
            max_position_embeddings=text.get("context_length", 77),
            vocab_size=text.get("vocab_size", 49408),
            hidden_act=act,
            layer_norm_eps=1e-5,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        ),
    )


def _clip_tokenizer(encoder, folder: Path) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    bpe = encoder.tokenizer if isinstance(encoder.tokenizer, SimpleTokenizer) else None
    save_clip_tokenizer(folder, bpe)


def save_clip_tokenizer(folder: str | os.PathLike, bpe=None):
    """Write CLIP's BPE vocabulary (open_clip's `SimpleTokenizer`, its bundled one by default) as transformers'
    CLIPTokenizer files in `folder`, and return that tokenizer."""
    import tempfile

    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    bpe = bpe or SimpleTokenizer()
    specials = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    with tempfile.TemporaryDirectory() as scratch:
        vocab, merges = Path(scratch) / "vocab.json", Path(scratch) / "merges.txt"
        vocab.write_text(json.dumps({specials.get(k, k): v for k, v in bpe.encoder.items()}))
        ranked = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
        merges.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in ranked) + "\n")
        tokenizer = CLIPTokenizer(str(vocab), str(merges))
    tokenizer.model_max_length = bpe.context_length
    tokenizer.save_pretrained(folder)
    return tokenizer


def _image_processor(preprocess):
    from transformers import CLIPImageProcessor

    height, width = preprocess.size
    crop = preprocess.resize != (height, width)
    size = {"shortest_edge": preprocess.resize} if isinstance(preprocess.resize, int) else {
        "height": preprocess.resize[0], "width": preprocess.resize[1]}  # fmt: skip
    return CLIPImageProcessor(
        size=size,
        crop_size={"height": height, "width": width},
        do_center_crop=crop,
        resample=_RESAMPLE[preprocess.interpolation],
        image_mean=list(preprocess.mean),
        image_std=list(preprocess.std),
    )


# --- open_clip --------------------------------------------------------------------------------------------------------


def _open_clip_from_open_clip(encoder, meta: dict, folder: Path) -> None:
    import open_clip

    arch = parse_spec(meta["backbone"]).name
    config = ((meta.get("architecture") or {}).get("open_clip") or {}).get("config") or open_clip.get_model_config(arch)
    _write_open_clip(folder, arch, config, dict(encoder.module.state_dict()), encoder.preprocess)


def _open_clip_from_hf(encoder, meta: dict, folder: Path) -> None:
    model = encoder.module
    if type(model).__name__ != "CLIPModel":
        raise PictagError(
            f"{meta['backbone']} is a transformers {type(model).__name__}, not a CLIPModel: "
            f"export it with {option('format', 'hf')}"
        )
    v, t = model.config.vision_config, model.config.text_config
    if v.hidden_act != t.hidden_act or v.hidden_act not in ("gelu", "quick_gelu"):
        raise PictagError(f"{meta['backbone']}: activation {v.hidden_act}/{t.hidden_act} has no open_clip form")
    config = {
        "embed_dim": model.config.projection_dim,
        "quick_gelu": v.hidden_act == "quick_gelu",
        "vision_cfg": {
            "image_size": v.image_size,
            "layers": v.num_hidden_layers,
            "width": v.hidden_size,
            "head_width": v.hidden_size // v.num_attention_heads,
            "mlp_ratio": v.intermediate_size / v.hidden_size,
            "patch_size": v.patch_size,
        },
        "text_cfg": {
            "context_length": t.max_position_embeddings,
            "vocab_size": t.vocab_size,
            "width": t.hidden_size,
            "heads": t.num_attention_heads,
            "layers": t.num_hidden_layers,
            "mlp_ratio": t.intermediate_size / t.hidden_size,
        },
    }
    state = hf_to_open_clip(model.state_dict(), v.num_hidden_layers, t.num_hidden_layers)
    _write_open_clip(folder, "pictag-exported", config, state, encoder.preprocess)


def _write_open_clip(folder: Path, arch: str, config: dict, state: dict, preprocess) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().float().contiguous() for k, v in state.items()}, folder / "open_clip_model.safetensors")
    resize_mode = "shortest" if isinstance(preprocess.resize, int) else "squash"
    preprocess_cfg = {
        "size": list(preprocess.size),
        "mean": list(preprocess.mean),
        "std": list(preprocess.std),
        "interpolation": preprocess.interpolation,
        "resize_mode": resize_mode,
    }
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": config, "preprocess_cfg": preprocess_cfg, "architecture": arch}, indent=2) + "\n"
    )


# --- the two layouts --------------------------------------------------------------------------------------------------

_COPY, _TRANSPOSE = "copy", "transpose"


def _pairs(vision_layers: int, text_layers: int) -> Iterator[tuple[str, str, str | int]]:
    """(open_clip key, transformers key, how): copied, transposed, or the q/k/v chunk `how` of a fused projection."""
    yield "visual.class_embedding", "vision_model.embeddings.class_embedding", _COPY
    yield "visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight", _COPY
    yield "visual.positional_embedding", "vision_model.embeddings.position_embedding.weight", _COPY
    for p in ("weight", "bias"):
        yield f"visual.ln_pre.{p}", f"vision_model.pre_layrnorm.{p}", _COPY  # transformers' spelling
        yield f"visual.ln_post.{p}", f"vision_model.post_layernorm.{p}", _COPY
        yield f"ln_final.{p}", f"text_model.final_layer_norm.{p}", _COPY
    yield "visual.proj", "visual_projection.weight", _TRANSPOSE
    yield "token_embedding.weight", "text_model.embeddings.token_embedding.weight", _COPY
    yield "positional_embedding", "text_model.embeddings.position_embedding.weight", _COPY
    yield "text_projection", "text_projection.weight", _TRANSPOSE
    yield "logit_scale", "logit_scale", _COPY
    for src, dst, layers in (("visual.", "vision_model.", vision_layers), ("", "text_model.", text_layers)):
        for i in range(layers):
            s, d = f"{src}transformer.resblocks.{i}.", f"{dst}encoder.layers.{i}."
            for p in ("weight", "bias"):
                for chunk, name in enumerate("qkv"):
                    yield f"{s}attn.in_proj_{p}", f"{d}self_attn.{name}_proj.{p}", chunk
                yield f"{s}attn.out_proj.{p}", f"{d}self_attn.out_proj.{p}", _COPY
                yield f"{s}ln_1.{p}", f"{d}layer_norm1.{p}", _COPY
                yield f"{s}ln_2.{p}", f"{d}layer_norm2.{p}", _COPY
                yield f"{s}mlp.c_fc.{p}", f"{d}mlp.fc1.{p}", _COPY
                yield f"{s}mlp.c_proj.{p}", f"{d}mlp.fc2.{p}", _COPY


def open_clip_to_hf(state: dict[str, torch.Tensor], vision_layers: int, text_layers: int) -> dict[str, torch.Tensor]:
    """An open_clip ViT CLIP state dict in transformers' CLIPModel layout.

    Raises:
        PictagError: a tensor the layout needs is missing (the model is not a plain CLIP).
    """
    out = {}
    for src, dst, how in _pairs(vision_layers, text_layers):
        if src not in state:
            raise PictagError(f"the open_clip weights have no {src}: not a plain CLIP")
        value = state[src]
        out[dst] = value.T if how == _TRANSPOSE else value.chunk(3)[how] if isinstance(how, int) else value
    return {k: v.contiguous() for k, v in out.items()}


def hf_to_open_clip(state: dict[str, torch.Tensor], vision_layers: int, text_layers: int) -> dict[str, torch.Tensor]:
    """A transformers CLIPModel state dict in open_clip's CLIP layout (the inverse of `open_clip_to_hf`)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, list] = {}
    for src, dst, how in _pairs(vision_layers, text_layers):
        if dst not in state:
            raise PictagError(f"the transformers weights have no {dst}: not a plain CLIPModel")
        if isinstance(how, int):
            fused.setdefault(src, [None, None, None])[how] = state[dst]
        else:
            out[src] = state[dst].T if how == _TRANSPOSE else state[dst]
    out.update({k: torch.cat(parts) for k, parts in fused.items()})
    return {k: v.contiguous() for k, v in out.items()}


def _clip(write: Callable, how: str) -> Writer:
    def writer(loaded: RunModel, folder: Path) -> str:
        write(loaded.encoder, loaded.meta, folder)
        return how

    return writer


_HF_HOW = "transformers.CLIPModel.from_pretrained / CLIPProcessor.from_pretrained, or --model hf:DIR"
_OPEN_CLIP_HOW = 'open_clip.create_model_and_transforms("local-dir:DIR")'
_CLIP_WRITERS = {
    ("hf", "hf"): _clip(_hf_from_hf, _HF_HOW),
    ("open_clip", "hf"): _clip(_hf_from_open_clip, _HF_HOW),
    ("open_clip", "open_clip"): _clip(_open_clip_from_open_clip, _OPEN_CLIP_HOW),
    ("hf", "open_clip"): _clip(_open_clip_from_hf, _OPEN_CLIP_HOW),
}
