"""The image data pipeline: discovery, decoding, the decoded-image cache, augmentation, batches.

``discovery`` decides what in a folder is an image (``list_folder``, by content, for every
command) and samples and splits them (``select_images``: a run's train/validation images);
``decode`` turns one file into RGB pixels; ``cache`` keeps decoded training images on disk (its
folder's manifest: ``cache_manifest``); ``augment`` randomises training batches; ``loader`` yields
batches from the cache or straight from files.
"""

from fext.data.augment import augment_batch
from fext.data.cache import CachedImages, open_readonly, prepare_images
from fext.data.decode import ImageDecodeError, image_size, load_image, open_rgb, thumbnail
from fext.data.discovery import (
    IMAGE_EXTENSIONS,
    SKIPPED,
    Listing,
    Split,
    count_notes,
    discover_split,
    draw_sample,
    find_images,
    list_folder,
    select_images,
    split_images,
)
from fext.data.loader import DecodedBatch, decode_batches, iterate_batches, to_float

__all__ = [
    "IMAGE_EXTENSIONS",
    "SKIPPED",
    "CachedImages",
    "DecodedBatch",
    "ImageDecodeError",
    "Listing",
    "Split",
    "augment_batch",
    "count_notes",
    "decode_batches",
    "discover_split",
    "draw_sample",
    "find_images",
    "image_size",
    "iterate_batches",
    "list_folder",
    "load_image",
    "open_readonly",
    "open_rgb",
    "prepare_images",
    "select_images",
    "split_images",
    "thumbnail",
    "to_float",
]
