"""`export`: a run directory written in other ecosystems' formats, loadable without pictag.

- `hf`: a `save_pretrained` folder (config.json, model.safetensors, preprocessor_config.json, tokenizer files) that
  transformers' `CLIPModel.from_pretrained` and `CLIPProcessor.from_pretrained` load, and `--model hf:DIR` too.
  An hf-backed run is saved as it is; an open_clip ViT CLIP is converted to transformers' CLIP layout, as
  transformers' own `convert_clip_original_pytorch_to_hf.py` maps it (fused q/k/v split into three projections,
  projections transposed into Linear weights).
- `open_clip`: `open_clip_model.safetensors` and `open_clip_config.json`, as open_clip's hub folders hold them:
  `open_clip.create_model_and_transforms(ARCH, pretrained=DIR/open_clip_model.safetensors)` and
  `create_model_and_transforms("local-dir:DIR")` load it. An hf-backed CLIP is converted the other way.

A backbone that has no such form (a timm image model, a CLIP variant the layouts do not share) is refused in one
line before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from pictag.errors import PictagError
from pictag.models.registry import parse_spec
from pictag.models.run_dir import load_run

FORMATS = ("hf", "open_clip")
# PIL resample codes, as transformers' image processors store them.
_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}


@dataclass
class ExportResult:
    out: Path
    format: str
    source: str

    def summary(self) -> str:
        how = {
            "hf": "transformers.CLIPModel.from_pretrained / CLIPProcessor.from_pretrained, or --model hf:DIR",
            "open_clip": 'open_clip.create_model_and_transforms("local-dir:DIR")',
        }[self.format]
        return f"exported {self.source} as {self.format} -> {self.out} (load with {how})"


def export_run(run: str | os.PathLike, format: str, out: str | os.PathLike, *, overwrite: bool = False) -> ExportResult:
    """Write a run directory's encoder as a transformers `save_pretrained` folder or an open_clip checkpoint.

    Args:
        run: The run directory (RUN, RUN/best or RUN/wise-ft-A).
        format: "hf" or "open_clip".
        out: The folder to write; written to a temporary name and renamed, so it is whole or absent.
        overwrite: Replace an existing `out`.

    Raises:
        PictagError: unknown format, an existing output, or a backbone that this format cannot hold.
    """
    if format not in FORMATS:
        raise PictagError(f"unknown export format {format!r}: use one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise PictagError(f"{out} already exists: pass --overwrite to replace it")
    loaded = load_run(run, device="cpu", precision="fp32")
    encoder, scheme = loaded.encoder, parse_spec(loaded.meta["backbone"]).scheme
    writer = _WRITERS.get((scheme, format))
    if writer is None:
        raise PictagError(
            f"{run} has a {loaded.meta['backbone']} backbone, which has no {format} form: only CLIP models "
            "(open_clip or hf backbones) export to hf and open_clip"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        writer(encoder, loaded.meta, tmp)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, format, encoder.spec)


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
            "export it with --format open_clip"
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
            f"{meta['backbone']} is a transformers {type(model).__name__}, not a CLIPModel: export it with --format hf"
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


_WRITERS = {
    ("hf", "hf"): _hf_from_hf,
    ("open_clip", "hf"): _hf_from_open_clip,
    ("open_clip", "open_clip"): _open_clip_from_open_clip,
    ("hf", "open_clip"): _open_clip_from_hf,
}
