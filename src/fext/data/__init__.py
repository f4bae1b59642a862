"""The image data pipeline: discovery, decoding, the decoded-image cache, augmentation, batches.

``discovery`` finds, samples and splits the images of a folder (``select_images``: a run's
train/validation images); ``decode`` turns one file into RGB pixels; ``cache`` keeps decoded
training images on disk (its folder's index: ``cache_index``); ``augment`` randomises training
batches; ``loader`` yields batches from the cache or straight from files.
"""

from fext.data.augment import augment_batch
from fext.data.cache import CachedImages, open_readonly, prepare_images
from fext.data.decode import ImageDecodeError, image_size, load_image, open_rgb, thumbnail
from fext.data.discovery import (
    IMAGE_EXTENSIONS,
    Split,
    discover_split,
    draw_sample,
    find_images,
    select_images,
    split_images,
)
from fext.data.loader import DecodedBatch, decode_batches, iterate_batches, to_float

__all__ = [
    "IMAGE_EXTENSIONS",
    "CachedImages",
    "DecodedBatch",
    "ImageDecodeError",
    "Split",
    "augment_batch",
    "decode_batches",
    "discover_split",
    "draw_sample",
    "find_images",
    "image_size",
    "iterate_batches",
    "load_image",
    "open_readonly",
    "open_rgb",
    "prepare_images",
    "select_images",
    "split_images",
    "thumbnail",
    "to_float",
]
