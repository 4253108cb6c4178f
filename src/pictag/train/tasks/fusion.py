"""The `fusion` task: products classified from an image and a text together (`pictag train TABLE --task fusion`).

The image embedding and the text embedding, each L2-normalised, are concatenated and classified by the fusion MLP
head (`pictag.heads.fusion`). Both towers come from one CLIP spec (--model), or the text tower from another spec
(--text-model, e.g. a sentence-transformers folder) beside any image model. Parameter groups: "image", "text" and
"head".

Stage 1 (`--freeze-encoders`) never runs the towers while training: every view of every product image and every
text is embedded once before the first step (`embed_products`), in the frozen-feature cache (`pictag.train.features`:
the folds of a K-fold run, and a resumed run, embed nothing again), and the head trains on the cached rows, from the
head stage's swept and fitted head. Stage 2 (`--init-from RUN_S1`) trains the towers too, through the images'
training crops, from stage 1's best of the same fold; without `--init-from`, from the head stage's head. `--ablate` trains an image-only and a text-only head beside the fusion head, on the same (detached)
features, so the run reports what each modality is worth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from pictag.data.crops import DecodedImages, Decoder
from pictag.data.products import (
    Products,
    embed_views,
    join_products,
    offsets_of,
    pool_views,
    read_products,
    view_shard,
)
from pictag.data.splits import column_split, kfold_split, stratified_split
from pictag.errors import PictagError
from pictag.heads.fusion import FusionHead
from pictag.models.base import Encoder
from pictag.train.data import CachedRows, Split, TrainData
from pictag.train.features import at_training_precision
from pictag.train.task import Task
from pictag.train.tasks.clip import _IMAGE


@dataclass
class ProductData(TrainData):
    """Training data of a product table: a split's `refs` are (0, row of the product in `products`)."""

    products: Products | None = None
    fold: str | None = None
    missing: list[str] = field(default_factory=list)

    def facts(self) -> dict:
        return {"missing_images": len(self.missing)}  # products trained on a black placeholder


def _rows(split: Split) -> list[int]:
    return [row for _, row in split.refs]


def load_products(cfg) -> ProductData:
    """The product table of a `TrainConfig`, split by --fold (with --folds K or its fold column), --val-split, or
    validated on a second table (--val), whose images are in the same --images folder.

    Raises:
        PictagError: no --images, a bad table (see `read_products`), fewer than two classes, a fold whose training
            rows lack a class, or a --val table with folds, with ids of the training table or with other classes.
    """
    if not cfg.images:
        raise PictagError("--task fusion reads a product table with its images: pass --images DIR (<id>.jpg files)")
    if cfg.val and (cfg.folds or cfg.fold is not None or cfg.val_split):
        raise PictagError("--val TABLE validates on a second table: drop --folds, --fold and --val-split")

    def read(table: str) -> Products:
        return read_products(
            table,
            images=cfg.images,
            id_col=cfg.id_column,
            label_col=cfg.label_column,
            text_cols=cfg.text_columns,
            need_text=True,
            missing_image=cfg.missing_image,
        )

    products = read(cfg.data)
    trained = len(products)
    if cfg.val:
        if products.folds is not None:
            raise PictagError(f"{cfg.data} has a fold column, which chooses the validation rows: drop --val or it")
        products = join_products(products, read(cfg.val))
    classes = sorted(set(products.labels[:trained]))
    if len(classes) < 2:
        raise PictagError(f"{cfg.data} has {len(classes)} class ({', '.join(classes)}): a classifier needs two or more")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(products.labels[trained:]) - set(classes))
    if unknown:
        raise PictagError(
            f"--val {cfg.val} has classes {cfg.data} lacks ({', '.join(unknown[:5])}): a classifier can only be "
            "validated on classes it trains on"
        )
    labels = tuple(index[label] for label in products.labels)
    split = Split((), tuple((0, i) for i in range(len(products))), products.ids, labels, products.texts)
    val = None
    if cfg.fold is not None:
        if cfg.folds:
            if not str(cfg.fold).isdigit():
                raise PictagError(f"--fold {cfg.fold}: with --folds {cfg.folds} give a number 0..{cfg.folds - 1}")
            train_pos, val_pos = kfold_split(labels, cfg.folds, int(cfg.fold), cfg.seed, classes)
        elif products.folds is not None:
            train_pos, val_pos = column_split(products.folds, cfg.fold)
        else:
            raise PictagError("--fold needs --folds K, or a table with a 'fold' column")
        lacking = sorted(set(labels[i] for i in val_pos) - set(labels[i] for i in train_pos))
        if lacking:
            names = ", ".join(classes[i] for i in lacking[:5])
            raise PictagError(
                f"fold {cfg.fold}: class(es) {names} have no training rows outside this fold (the folds' label sets "
                "differ): spread each class over the folds, or use --folds K"
            )
        split, val = split.subset(train_pos), split.subset(val_pos)
    elif cfg.val_split:
        train_pos, val_pos = stratified_split(labels, cfg.val_split, cfg.seed, classes)
        split, val = split.subset(train_pos), split.subset(val_pos)
    elif cfg.val:
        split, val = split.subset(range(trained)), split.subset(range(trained, len(products)))
    missing = products.missing
    if missing:
        print(
            f"{len(missing)} product(s) have no image in {cfg.images} (e.g. id {missing[0]}): black placeholders; "
            "--missing-image error refuses them",
            flush=True,
        )
    return ProductData(classes, split, val, products=products, fold=cfg.fold, missing=missing)


def tower_params(encoder: Encoder) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(image tower's parameters, text tower's): a pair's two encoders, or a CLIP model's two towers."""
    if hasattr(encoder, "text_dim"):
        return list(encoder.image.parameters()), list(encoder.text.parameters())
    image, text = [], []
    for name, p in encoder.module.named_parameters():
        (image if name.startswith(_IMAGE) else text).append(p)
    return image, text


def check_towers(encoder: Encoder) -> None:
    """Refuse an encoder without a text tower, naming the fix."""
    if not encoder.has_text:
        raise PictagError(
            f"{encoder.spec} has no text tower: the fusion task needs a CLIP --model, or --text-model SPEC beside "
            "an image model"
        )


def embed_products(products: Products, encoder: Encoder, cfg, skipped: list) -> dict[str, torch.Tensor]:
    """{"views", "offsets", "text"}: every image view and every text of the table embedded once, in the frozen-feature
    cache (`pictag.train.features`)."""
    from pictag.train.features import cached, file_stats, weights_key

    key = [
        "products",
        weights_key(encoder),
        str(encoder.autocast_dtype),
        asdict(encoder.preprocess),
        [file_stats(paths) for paths in products.images],
        products.texts,
    ]
    result = cached(key, lambda: _embed_products(products, encoder, cfg))
    skipped += [tuple(s) for s in result["skipped"]]
    return result


def _embed_products(products: Products, encoder: Encoder, cfg) -> dict:
    unreadable: list[tuple[str, str]] = []
    (views,) = embed_views(
        products.images,
        encoder,
        workers=cfg.workers or 0,
        batch_size=cfg.batch_size,
        max_pixels=cfg.max_pixels,
        skipped=unreadable,
        desc="embedding product images once",
    )
    text = encoder.encode_text(list(products.texts), batch_size=max(cfg.batch_size, 64)).cpu()
    return {"views": views, "offsets": offsets_of(products.images), "text": text, "skipped": unreadable}


class FusionTask(Task):
    """Image tower + text tower + fusion MLP head, cross-entropy; groups "image", "text" and "head".

    Args:
        encoder: Both towers (a CLIP model, or a `pair:` of an image and a text model).
        class_names: What each of the head's outputs is.
        label_smoothing: Cross-entropy label smoothing.
        ablate: Also train image-only and text-only heads.
        multi_image: How a product's several images are used (see `ProductOptions`).
        cache: Stage 1's embeddings (`embed_products`), or None when the towers run.
        rows: The product row of each position of the "train" and "val" splits (with `cache`).
        images: Each product row's image paths (read when the towers run).
        val_keys: The validation rows' ids and `fold`: written to oof.csv at each new best epoch.
    """

    name = "fusion"
    group_names = ("image", "text", "head")
    defaults = {"patience": 2, "label_smoothing": 0.0}
    cross_validates = True
    # A random crop of 8 % of a product photo (timm's default) often loses the product.
    augment = {"scale": (0.5, 1.0), "color_jitter": 0.2}

    def __init__(
        self,
        encoder: Encoder,
        class_names: list[str],
        *,
        label_smoothing: float = 0.0,
        ablate: bool = False,
        multi_image: str = "first",
        cache: dict | None = None,
        rows: dict[str, list[int]] | None = None,
        images: tuple[tuple[str, ...], ...] = (),
        val_keys: tuple[str, ...] = (),
        fold: str | None = None,
    ):
        super().__init__()
        check_towers(encoder)
        self.encoder = encoder
        self.class_names = list(class_names)
        self.label_smoothing, self.multi_image = label_smoothing, multi_image
        self.image_dim, self.text_dim = encoder.embed_dim, getattr(encoder, "text_dim", encoder.embed_dim)
        self.head = FusionHead(len(class_names), self.image_dim, self.text_dim)
        self.ablation = (
            torch.nn.ModuleDict(
                {m: FusionHead(len(class_names), self.image_dim, self.text_dim, modality=m) for m in ("image", "text")}
            )
            if ablate
            else None
        )
        self.val_keys, self.fold, self.images = val_keys, fold, images
        self.cached = cache is not None
        if cache is not None:
            # Buffers follow the task to its device, and stay out of checkpoints (they are rebuilt from the cache).
            views, offsets = cache["views"].float(), cache["offsets"]
            self.register_buffer("views", views, persistent=False)
            self.register_buffer("offsets", offsets, persistent=False)
            self.register_buffer("pooled", pool_views(views, offsets, multi_image), persistent=False)
            self.register_buffer("texts", cache["text"].float(), persistent=False)
            for name in ("train", "val"):
                self.register_buffer(f"rows_{name}", torch.tensor(rows[name], dtype=torch.long), persistent=False)

    @classmethod
    def load_data(cls, cfg) -> ProductData:
        return load_products(cfg)

    @classmethod
    def fold_names(cls, cfg) -> list[str] | None:
        if cfg.folds:
            return [str(i) for i in range(cfg.folds)]
        if cfg.images is None or cfg.val:  # a second table validates: one run (`load_products` checks the rest)
            return None
        products = read_products(
            cfg.data, id_col=cfg.id_column, label_col=cfg.label_column, text_cols=cfg.text_columns, quiet=True
        )
        return sorted(set(products.folds), key=lambda f: (len(f), f)) if products.folds is not None else None

    @classmethod
    def create_encoder(cls, cfg) -> Encoder:
        from pictag.models.pair import pair_spec
        from pictag.models.registry import create_model, default_model

        if cfg.init_from and cfg.model == default_model() and not cfg.text_model and not cfg.checkpoint:
            # Stage 2 without --model: the towers of the run it starts from (their weights are loaded next anyway).
            from pictag.models.run_dir import build_run

            return build_run(cfg.init_from).encoder
        spec = pair_spec(cfg.model, cfg.text_model) if cfg.text_model else cfg.model
        return create_model(
            spec, checkpoint=cfg.checkpoint, random_weights=cfg.random_weights, device="cpu", precision=cfg.precision
        )

    @classmethod
    def build(cls, encoder, data: ProductData, cfg) -> FusionTask:
        check_towers(encoder)
        cache, rows = None, None
        if cfg.freeze_encoders:
            for p in encoder.parameters():
                p.requires_grad_(False)
            at_training_precision(encoder, cfg)
            encoder.eval()
            cache = embed_products(data.products, encoder, cfg, data.skipped)
            rows = {"train": _rows(data.train), "val": _rows(data.val) if data.val is not None else []}
        return cls(
            encoder,
            data.classes,
            label_smoothing=cfg.label_smoothing,
            ablate=cfg.ablate,
            multi_image=cfg.multi_image,
            cache=cache,
            rows=rows,
            images=data.products.images,
            val_keys=data.val.keys if data.val is not None else (),
            fold=data.fold,
        )

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        if self.cached:  # frozen towers are rebuilt from their spec on resume: last.ckpt need not carry them
            for key in [k for k in state if k.startswith("encoder.")]:
                del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.cached:
            state_dict = {**{f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}, **state_dict}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        image, text = tower_params(self.encoder)
        head = list(self.head.parameters()) + (list(self.ablation.parameters()) if self.ablation is not None else [])
        return {"image": image, "text": text, "head": head}

    def dataset(self, split, transform, *, train: bool, seed: int, max_pixels: int):
        if self.cached:
            return CachedRows(split)
        # One view per product, cropped for training or validation: the first, or in training one drawn per item.
        shard, views = view_shard(self.images)
        return DecodedImages(
            (shard,),
            [views[row] for _, row in split.refs],
            Decoder(self.encoder.preprocess, transform, max_pixels),
            seed=seed,
            random_view=train and self.multi_image != "first",
            fields={"label": split.labels, "text": split.texts},
        )

    def features(self, batch: dict, stage: str) -> torch.Tensor:
        """(N, image_dim + text_dim): [image | text] embeddings of a batch, each L2-normalised."""
        if self.cached:
            rows = getattr(self, f"rows_{stage}")[batch["index"]]
            if stage == "train" and self.multi_image == "random":
                start = self.offsets[rows]
                count = self.offsets[rows + 1] - start
                image = self.views[start + (torch.rand(len(rows), device=rows.device) * count).long()]
            else:
                image = self.pooled[rows]
            return torch.cat([image, self.texts[rows]], dim=-1)
        pixels = self.encoder.preprocess.normalize(batch["images"])
        image = F.normalize(self.encoder.forward_image(pixels).float(), dim=-1)
        text = F.normalize(self.encoder.forward_text(list(batch["texts"])).float(), dim=-1)
        return torch.cat([image, text], dim=-1)

    def head_features(self, data: ProductData, cfg) -> tuple[torch.Tensor, torch.Tensor]:
        """[image | text] embeddings of the training products (a product's views pooled), from the cache."""
        if self.cached:
            pooled, texts, rows = self.pooled, self.texts, self.rows_train
        else:  # the towers will train: their frozen features first, in the cache stage 1 uses
            with torch.no_grad():
                training = self.encoder.training
                at_training_precision(self.encoder, cfg)
                cache = embed_products(data.products, self.encoder.eval(), cfg, [])
                self.encoder.train(training)
            pooled = pool_views(cache["views"].float(), cache["offsets"], self.multi_image)
            texts, rows = cache["text"].float(), torch.tensor(_rows(data.train), dtype=torch.long)
        features = torch.cat([pooled[rows], texts[rows]], dim=-1)
        return features, torch.tensor(data.train.labels, dtype=torch.long)

    def head_step(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss = F.cross_entropy(self.head(features), labels, label_smoothing=self.label_smoothing)
        logs = {"loss": loss.detach()}
        if self.ablation is not None:
            # Detached: the towers learn from the fusion head alone; the one-modality heads only measure. Each head's
            # loss is logged on its own: "loss" is the fusion head's, not the sum that is backpropagated.
            for name, head in self.ablation.items():
                alone = F.cross_entropy(head(features.detach()), labels, label_smoothing=self.label_smoothing)
                logs[f"{name}_loss"] = alone.detach()
                loss = loss + alone
        return loss, logs

    def head_outputs(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"logits": self.head(features).float(), "labels": labels}
        if self.ablation is not None:
            out.update({f"logits_{name}": head(features).float() for name, head in self.ablation.items()})
        return out

    def training_step(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        return self.head_step(self.features(batch, "train"), batch["labels"])

    def validation_step(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.head_outputs(self.features(batch, "val"), batch["labels"])

    def inference_model(self) -> tuple[Encoder, FusionHead]:
        return self.encoder, self.head

    def classes(self) -> list[str]:
        return self.class_names

    def after_best(self, out: Path, predictions: dict) -> None:
        """Write this fold's out-of-fold predictions (RUN/fold<i>/oof.csv) of the new best epoch."""
        if self.fold is None:
            return
        from pictag.train.kfold import OOF, write_oof

        scores, predicted = predictions["logits"].softmax(dim=-1).max(dim=-1)
        write_oof(
            Path(out) / OOF,
            [self.val_keys[i] for i in predictions["index"].tolist()],
            [self.class_names[i] for i in predictions["labels"].tolist()],
            [self.class_names[i] for i in predicted.tolist()],
            scores.tolist(),
            str(self.fold),
        )
