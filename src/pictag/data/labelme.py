"""labelme annotations to a folder of classes: every box, polygon and circle becomes ``OUT/<label>/<stem>_<n>.jpg``.

Reads the JSON that labelme 3.x to 5.x writes, and the labelme-compatible JSON of X-AnyLabeling. What differs
between them, and how it is read:

- ``shape_type`` is missing on shapes of early 3.x files: they are polygons, the only shape those versions drew.
- rectangles hold 2 corners (labelme) or 4 (X-AnyLabeling); the box is the bounds of all of them.
- circles hold the centre and one point of the rim.
- X-AnyLabeling's ``rotation`` shapes hold the 4 corners of a rotated box (its ``direction`` angle is redundant).
- labelme 5's ``mask`` shapes hold the 2 corners of the mask's box; they are cropped to it.
- ``point``/``points``, ``line`` and ``linestrip`` enclose nothing: they are skipped and counted.
- extra keys (``group_id``, ``flags``, ``description``, 3.x's ``line_color``/``fill_color``, X-AnyLabeling's
  ``score``, ``difficult``, ``attributes``, ``kie_linking``, ``direction``) do not change a crop and are ignored.

Coordinates are pixels of the upright image (labelme applies EXIF orientation before annotating), so the image is
decoded upright too. The output is a folder of classes that ``open_source(OUT, labelled=True)`` and ``pictag train``
read; ``crops.csv`` and ``crops.errors.csv`` beside the class folders are not images, so they are not read as data.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from pictag.data._io import inside, read_file, safe_key
from pictag.data.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from pictag.errors import PictagError

CROPS_CSV = "crops.csv"
ERRORS_CSV = "crops.errors.csv"
CONFIG_YAML = "crops.config.yaml"
CROP_COLUMNS = ("crop", "label", "source", "shape", "shape_type", "x0", "y0", "x1", "y1")
ERROR_COLUMNS = ("source", "shape", "reason")

# Shapes that enclose an area, and those that do not (skipped and counted, never an error).
_AREA_SHAPES = frozenset({"rectangle", "polygon", "circle", "rotation", "mask"})
_NO_AREA_SHAPES = frozenset({"point", "points", "line", "linestrip"})
# Shapes whose outside --mask blanks; a rectangle has no outside within its box.
_MASKED_SHAPES = frozenset({"polygon", "rotation", "circle"})
# Characters a folder name cannot hold on some system, and "%" itself so that the escaping stays reversible.
_UNSAFE = frozenset('/\\%:*?"<>|') | {chr(c) for c in range(32)} | {"\x7f"}
# The longest file or folder name, in bytes, that Linux, macOS and Windows all accept.
_NAME_MAX = 255
# Coordinates beyond this many pixels are no image's (the pixel limit keeps sides far below); refusing them keeps the
# box arithmetic finite, where 1e308 - -1e308 is inf.
_MAX_COORDINATE = 2.0**31
_MAX_PAD = 100.0


class ShapeError(Exception):
    """One shape or one file cannot be cropped; the message is the reason written to the errors file."""


class ImageError(ShapeError):
    """The image of a file cannot be had: every shape of the file is skipped, with one error row."""


@dataclass
class LabelmeCrops:
    """What `crop_labelme` wrote.

    Attributes:
        out: The folder of classes.
        crops_csv: One row per crop: crop (path inside `out`), label, source JSON, shape index, shape type, box.
        errors_csv: One row per file or shape that could not be cropped, with the reason.
        per_label: Crops written per label.
        files: Annotation files read.
        skipped: Shapes left out on purpose, by reason ("point", "line", "not in --labels", "below --min-size").
        errors: Rows of `errors_csv`.
        seconds: Wall time.
    """

    out: Path
    crops_csv: Path
    errors_csv: Path
    per_label: dict[str, int] = field(default_factory=dict)
    files: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    seconds: float = 0.0

    @property
    def crops(self) -> int:
        return sum(self.per_label.values())

    def summary(self) -> str:
        width = max([len(label) for label in self.per_label] + [5])
        lines = [f"{self.crops} crops of {len(self.per_label)} labels from {self.files} files in {self.seconds:.1f} s"]
        lines += [f"  {label:<{width}}  {count}" for label, count in self.per_label.items()]
        if self.skipped:
            lines.append("skipped: " + ", ".join(f"{count} {why}" for why, count in self.skipped.items()))
        if self.errors:
            lines.append(f"{self.errors} errors (see {self.errors_csv})")
        lines.append(f"crops: {self.crops_csv}")
        return "\n".join(lines)


def crop_labelme(
    annotations: str | os.PathLike,
    out: str | os.PathLike,
    *,
    pad: float = 0.0,
    min_size: int = 1,
    labels: list[str] | str | None = None,
    label_map: dict[str, str] | list[str] | str | None = None,
    mask: bool = False,
    overwrite: bool = False,
    quality: int = 95,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> LabelmeCrops:
    """Cut every area shape of the labelme files under `annotations` into ``out/<label>/<json stem>_<n>.jpg``.

    `n` is the shape's index in its file, so names do not change when filters do. A file in a subfolder is named
    by its path, ``sub__stem_<n>.jpg``. A bad JSON, a missing image, a shape without a label or a box outside the
    image is written to ``crops.errors.csv`` with its reason and skipped; nothing else stops the run.

    Args:
        annotations: A folder of labelme .json files (searched recursively), or one .json file.
        out: The output folder; it must be empty or hold an earlier run's crops (with `overwrite`).
        pad: Margin added on each side of a box, as a fraction of its width and height, kept within the image.
        min_size: Crops whose shorter side is below this many pixels are skipped and counted.
        labels: Keep only these labels (named after `label_map`): a list, or comma-separated.
        label_map: Renames: {"old": "new"}, or "old=new" items (a list, or comma-separated).
        mask: Blank (black) the outside of polygons, rotated boxes and circles within their box.
        overwrite: Replace the crops of an earlier run in `out`.
        quality: JPEG quality of the crops.
        max_pixels: Larger images are refused as decompression bombs.

    Raises:
        PictagError: `annotations` does not exist or holds no .json file; `out` holds other files; bad options.
    """
    started = time.perf_counter()
    root = Path(annotations)
    files = _annotation_files(root)
    renames = parse_label_map(label_map)
    keep = _parse_list(labels)
    if not 0 <= pad <= _MAX_PAD or min_size < 1 or not 1 <= quality <= 100:  # a NaN --pad fails 0 <= pad too
        raise PictagError(
            f"--pad must be 0 to {_MAX_PAD:g}, --min-size >= 1 and --quality 1-100 (got {pad}, {min_size}, {quality})"
        )
    out = Path(out)
    _prepare_output(out, overwrite)
    base = root if root.is_dir() else root.parent
    result = LabelmeCrops(out, out / CROPS_CSV, out / ERRORS_CSV, files=len(files))
    per_label: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    with (
        open(result.crops_csv, "w", newline="", encoding="utf-8") as crops_file,
        open(result.errors_csv, "w", newline="", encoding="utf-8") as err_file,
    ):
        crops, errors = csv.writer(crops_file), csv.writer(err_file)
        crops.writerow(CROP_COLUMNS)
        errors.writerow(ERROR_COLUMNS)
        for path in files:
            relative = path.relative_to(base).as_posix()
            source = safe_key(relative)  # a non-UTF-8 file name, as the CSV can hold it
            stem = folder_name(safe_key(relative[: -len(path.suffix)]))  # sub/a -> sub%2Fa, never sub__a's name
            try:
                if len(stem.encode()) > _NAME_MAX - len("_999999.jpg"):
                    raise ShapeError(f"its crops' names would be longer than {_NAME_MAX} bytes: shorten the file name")
                doc = _read_json(path)
            except ShapeError as exc:
                errors.writerow((source, "", safe_key(str(exc))))
                result.errors += 1
                continue
            image = None
            for index, shape in enumerate(doc["shapes"]):
                try:
                    kind, label, outline = _read_shape(shape)
                    if kind in _NO_AREA_SHAPES:
                        skipped[kind] += 1
                        continue
                    label = renames.get(label, label)
                    if keep is not None and label not in keep:
                        skipped["not in --labels"] += 1
                        continue
                    if image is None:
                        image = _load_image(path, doc, max_pixels)
                    box = _box(outline, kind, pad, image.size)
                    if min(box[2] - box[0], box[3] - box[1]) < min_size:
                        skipped["below --min-size"] += 1
                        continue
                    crop = image.crop(box)
                    if mask and kind in _MASKED_SHAPES:
                        crop = _masked(crop, outline, kind, box)
                    name = f"{folder_name(label)}/{stem}_{index}.jpg"
                    _save(crop, out, name, quality)
                    crops.writerow((name, label, source, index, kind, *box))
                    per_label[label] += 1
                except ImageError as exc:
                    errors.writerow((source, "", safe_key(str(exc))))
                    result.errors += 1
                    break
                except ShapeError as exc:
                    errors.writerow((source, index, safe_key(str(exc))))
                    result.errors += 1
    result.per_label = dict(sorted(per_label.items()))
    result.skipped = dict(sorted(skipped.items()))
    result.seconds = time.perf_counter() - started
    return result


def _save(crop: Image.Image, out: Path, name: str, quality: int) -> None:
    """Write one crop, never over another: OUT was emptied first, so a file already there is a collision (names
    that differ only in case, on a file system that ignores case).

    Raises:
        ShapeError: the name is taken.
        PictagError: OUT cannot be written (full, read-only): the run stops.
    """
    target = Path(inside(out, name))
    if os.path.lexists(target):
        raise ShapeError(f"crop {name} would replace another crop of the same name: rename one of the files")
    try:
        target.parent.mkdir(exist_ok=True)
        crop.save(target, quality=quality)
    except OSError as exc:
        raise PictagError(f"cannot write {target}: {exc.strerror or exc}") from None


def folder_name(label: str) -> str:
    """The folder of a label: itself, with path separators, "%", characters Windows refuses and a leading dot
    escaped as %XX, so that no label leaves OUT ("../x", "a/b") and two labels never share a folder.
    """
    escaped = "".join(f"%{ord(c):02X}" if c in _UNSAFE else c for c in label)
    return f"%{ord('.'):02X}{escaped[1:]}" if escaped.startswith(".") else escaped


def parse_label_map(label_map: dict[str, str] | list[str] | str | None) -> dict[str, str]:
    """{old: new} from a dict, or from "old=new" items in a list or a comma-separated string.

    Raises:
        PictagError: an item without "=", or with an empty side.
    """
    if isinstance(label_map, dict):
        items = [f"{old}={new}" for old, new in label_map.items()]
    else:
        items = _parse_list(label_map) or []
    renames = {}
    for item in items:
        old, sep, new = (part.strip() for part in item.partition("="))
        if not sep or not old or not new:
            raise PictagError(f"--label-map item {item!r} must read old=new, e.g. --label-map 'aple=apple,pear=pear'")
        renames[old] = new
    return renames


def _parse_list(value: list[str] | str | None) -> list[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item.strip()]


def _annotation_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise PictagError(f"annotations {root} do not exist: pass the folder of labelme .json files")
    files = sorted(root.rglob("*.json"), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise PictagError(f"{root} holds no .json files: pass the folder labelme saved its annotations in")
    return files


def _prepare_output(out: Path, overwrite: bool) -> None:
    """An empty output folder; with `overwrite`, an earlier run's crops are removed first, and nothing else."""
    if out.exists() and not out.is_dir():
        raise PictagError(f"--out {out} is a file: name a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise PictagError(f"--out {out} is not empty: pass --overwrite to replace an earlier run's crops")
        ours = {out / name for name in (CROPS_CSV, ERRORS_CSV, CONFIG_YAML)}
        if (out / CROPS_CSV).is_file():
            ours.update(Path(inside(out, name)) for name in _listed_crops(out / CROPS_CSV))
        # Checked before anything is removed: a folder holding anything else was not ours to empty.
        foreign = sorted(p for p in out.rglob("*") if not _real_folder(p) and p not in ours)
        if foreign:
            raise PictagError(
                f"--out {out} holds {foreign[0].relative_to(out)}, which no earlier labelme-crops run wrote: "
                "choose an empty folder"
            )
        for path in ours:
            Path(inside(out, path.relative_to(out).as_posix())).unlink(missing_ok=True)
        for folder in out.iterdir():
            if _real_folder(folder) and not any(folder.iterdir()):
                folder.rmdir()
    out.mkdir(parents=True, exist_ok=True)


def _listed_crops(crops_csv: Path) -> list[str]:
    """The crops an earlier run's crops.csv lists (bounded read; a damaged file is refused, not half-trusted)."""
    try:
        text = read_file(crops_csv, "crops.csv").decode("utf-8")
        return [row["crop"] for row in csv.DictReader(io.StringIO(text, newline="")) if row.get("crop")]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise PictagError(f"{crops_csv} is damaged ({exc}): choose an empty folder") from None


def _real_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(read_file(path, "annotation"))
    except PictagError as exc:
        raise ShapeError(str(exc)) from None
    except RecursionError:
        raise ShapeError("JSON nested too deeply to be a labelme file") from None
    except ValueError as exc:  # invalid JSON or UTF-8, an integer of thousands of digits
        raise ShapeError(f"not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
        raise ShapeError("not a labelme file: no list of shapes")
    return doc


def _read_shape(shape) -> tuple[str, str, list[tuple[float, float]]]:
    """(shape type, label, points) of one shape, checked."""
    if not isinstance(shape, dict):
        raise ShapeError("shape is not an object")
    kind = shape.get("shape_type") or "polygon"  # labelme 3.x wrote no shape_type: everything was a polygon
    if not isinstance(kind, str) or kind not in _AREA_SHAPES | _NO_AREA_SHAPES:
        raise ShapeError(f"shape_type {kind!r:.80} is not one pictag crops ({', '.join(sorted(_AREA_SHAPES))})")
    label = shape.get("label")
    label = label.strip() if isinstance(label, str) else ""
    if not label:
        raise ShapeError("shape has no label")
    if not label.isascii():
        try:
            label.encode("utf-8")
        except UnicodeEncodeError:
            raise ShapeError(f"label {safe_key(label)!r:.80} is not valid Unicode (a lone surrogate)") from None
    if len(folder_name(label).encode()) > _NAME_MAX:
        raise ShapeError(f"label {label[:40]!r}... is longer than a folder name can be ({_NAME_MAX} bytes)")
    try:
        points = [(float(x), float(y)) for x, y in shape.get("points") or []]
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer like 10**400
        raise ShapeError("points are not [x, y] pairs of numbers") from None
    if not all(abs(v) <= _MAX_COORDINATE for p in points for v in p):  # NaN fails this too
        raise ShapeError(f"points hold a number beyond ±{_MAX_COORDINATE:,.0f} pixels or not finite")
    least = {"polygon": 3, "rotation": 3, "rectangle": 2, "circle": 2, "mask": 2}.get(kind, 0)
    if len(points) < least:
        raise ShapeError(f"a {kind} needs at least {least} points, this one has {len(points)}")
    return kind, label, points


def _bounds(points: list[tuple[float, float]], kind: str) -> tuple[float, float, float, float]:
    if kind == "circle":
        (cx, cy), (px, py) = points[:2]
        r = math.hypot(px - cx, py - cy)
        return cx - r, cy - r, cx + r, cy + r
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _box(points, kind: str, pad: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The integer pixel box (x0, y0, x1, y1), end exclusive, padded and clipped to the image.

    Raises:
        ShapeError: the shape has no area, or lies wholly outside the image.
    """
    x0, y0, x1, y1 = _bounds(points, kind)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        raise ShapeError(f"the {kind} has no area (box {x0:g},{y0:g},{x1:g},{y1:g})")
    dx, dy = pad * (x1 - x0), pad * (y1 - y0)
    width, height = size
    box = (
        max(0, math.floor(x0 - dx)),
        max(0, math.floor(y0 - dy)),
        min(width, math.ceil(x1 + dx)),
        min(height, math.ceil(y1 + dy)),
    )
    if box[0] >= box[2] or box[1] >= box[3]:
        raise ShapeError(f"box {x0:g},{y0:g},{x1:g},{y1:g} lies outside the {width}x{height} image")
    return box


def _masked(crop: Image.Image, points, kind: str, box: tuple[int, int, int, int]) -> Image.Image:
    """The crop with everything outside the shape black."""
    inside = Image.new("L", crop.size, 0)
    draw = ImageDraw.Draw(inside)
    shifted = [(x - box[0], y - box[1]) for x, y in points]
    if kind == "circle":
        x0, y0, x1, y1 = _bounds(shifted, kind)
        draw.ellipse((x0, y0, x1, y1), fill=255)
    else:
        draw.polygon(shifted, fill=255)
    return Image.composite(crop, Image.new("RGB", crop.size), inside)


def _load_image(path: Path, doc: dict, max_pixels: int) -> Image.Image:
    """The annotated image, upright: from imagePath relative to the JSON, then beside the JSON, then imageData.

    A file that is missing, does not decode, or is not the size the JSON records (when it records one) is the
    wrong image; the embedded imageData, when there is some, is then used instead.

    Raises:
        ImageError: no candidate gives the image; the reason names what was tried.
    """
    expected = (doc.get("imageWidth"), doc.get("imageHeight"))
    expected = expected if all(isinstance(v, int) and v > 0 for v in expected) else None
    tried = []
    image_path = doc.get("imagePath")
    candidates = []
    if isinstance(image_path, str) and image_path.strip():
        relative = image_path.replace("\\", "/")  # labelme on Windows writes ..\\images\\a.jpg
        candidates = list(dict.fromkeys([path.parent / relative, path.parent / relative.rsplit("/", 1)[-1]]))
    for candidate in candidates:
        try:
            return _checked(decode_image(read_file(candidate, "image"), None, max_pixels), expected)
        except (DecodeError, PictagError) as exc:
            tried.append(f"{safe_key(str(candidate))[:300]}: {exc}" if isinstance(exc, DecodeError) else str(exc))
    data = doc.get("imageData")
    if isinstance(data, str) and data:
        try:
            return _checked(decode_image(base64.b64decode(data, validate=False), None, max_pixels), expected)
        except binascii.Error as exc:
            tried.append(f"imageData is not base64: {exc}")
        except DecodeError as exc:
            tried.append(f"imageData: {exc}")
    else:
        tried.append("no imageData")
    if not candidates:
        tried.insert(0, "no imagePath")
    raise ImageError("image not found: " + "; ".join(tried))


def _checked(image: Image.Image, expected: tuple[int, int] | None) -> Image.Image:
    if expected is not None and image.size != expected:
        raise DecodeError(
            f"it is {image.width}x{image.height}, the annotation is of a {expected[0]}x{expected[1]} image"
        )
    return image
