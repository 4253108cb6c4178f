"""`pictag labelme-crops`: labelme annotations to a folder of classes, one crop per box, polygon or circle."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pictag.cli.common import add_command

if TYPE_CHECKING:
    from pictag.data.options import LabelmeCropsConfig

EXAMPLES = """examples:
  pictag labelme-crops annotations/ --out ClassDataset/
  pictag labelme-crops annotations/ --out ClassDataset/ --pad 0.1 --min-size 32 --mask
  pictag labelme-crops annotations/ --out ClassDataset/ --labels apple,pear --label-map "aple=apple,Pear=pear"
  pictag train ClassDataset/ --model timm:tf_efficientnet_lite0 --checkpoint w.pth --val-split 0.2 --out runs/parts
"""


def add_parser(sub) -> None:
    add_command(
        sub,
        "labelme-crops",
        "pictag.data.options:LabelmeCropsConfig",
        "pictag.cli.labelme_crops:run",
        help="cut labelme boxes, polygons and circles into a folder of classes",
        description="Crop every rectangle, polygon, circle (and X-AnyLabeling rotated box) of labelme JSON files "
        "(3.x to 5.x, X-AnyLabeling) to OUT/<label>/<json stem>_<n>.jpg, with OUT/crops.csv listing each crop's "
        "label, source and box. The image comes from imagePath (relative to the JSON) or the embedded imageData; "
        "EXIF orientation is applied. Points and lines are skipped and counted; a bad JSON, a missing image or a "
        "box outside its image goes to OUT/crops.errors.csv and is skipped. Labels become folder names with /, \\, "
        "% and a leading dot escaped as %XX.",
        examples=EXAMPLES,
    )


def run(cfg: LabelmeCropsConfig):
    """`crop_labelme` on the command's options, its config written beside the crops."""
    from pictag.config import dump_config
    from pictag.data.labelme import CONFIG_YAML, crop_labelme

    result = crop_labelme(
        cfg.annotations,
        cfg.out,
        pad=cfg.pad,
        min_size=cfg.min_size,
        labels=cfg.labels,
        label_map=cfg.label_map,
        mask=cfg.mask,
        overwrite=cfg.overwrite,
        quality=cfg.quality,
        max_pixels=cfg.max_pixels,
    )
    dump_config(cfg, result.out / CONFIG_YAML)
    return result
