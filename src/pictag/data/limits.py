"""Limits on the images pictag decodes, as plain numbers: the option defaults read them without importing PIL."""

DEFAULT_MAX_PIXELS = 100_000_000
# Every model resizes the short side to its input size (224-518 px) and centre-crops a square, so the work and memory
# of the resize grow with the aspect ratio: a 143-byte 20000x1 PNG became a 4,480,000x224 image (3 GB) before the
# crop kept 224x224 of it. At 50:1 the resize stays below 518 x 25,900 px (40 MB of uint8), and the crop still sees
# 1/50 of the image; beyond that a classifier sees a sliver, so such images are refused rather than half-read.
DEFAULT_MAX_ASPECT_RATIO = 50.0
