"""Image datasets: built-in sources, on-disk formats, and the streaming pipeline that feeds training.

Every dataset gives uint8 images (C, H, W) with C in {1, 3} and int64 labels: the models predict
discrete 0..255 pixel values, so data stays exactly as stored and any conversion (channels, size) is
explicit. `open_dataset` streams image folders and tar shards (decoded in DataLoader workers);
`load_dataset` returns everything in memory.

Modules: `dataset` (the interface, in-memory sets), `sources` (Fashion-MNIST, MNIST-5k, digits,
photos), `formats` (IDX, CIFAR, .npz), `images` (decoding, centre crop), `folder` and `shards`
(streaming formats), `streaming` (their base), `pipeline` (per-rank batches, DataLoader), `load`.
"""
from .dataset import ImageDataset, ImageSource, check_images, take
from .folder import ImageFolder
from .formats import read_idx
from .images import IMAGE_EXTENSIONS, BadImage, center_crop_arr, decode_image, read_image
from .load import is_streamable, load_dataset, open_dataset
from .pipeline import BadDataError, BatchFeed, BatchPlan, epoch_order
from .shards import ShardWriter, TarShards
from .sources import BUILTIN_DATASETS, DEFAULT_DATASET, FASHION_CLASSES, FASHION_MD5, SPLITS
from .streaming import StreamingDataset

__all__ = ["BadDataError", "BadImage", "BatchFeed", "BatchPlan", "DEFAULT_DATASET", "FASHION_CLASSES",
           "FASHION_MD5", "IMAGE_EXTENSIONS", "ImageDataset", "ImageFolder", "ImageSource", "BUILTIN_DATASETS", "SPLITS",
           "ShardWriter", "StreamingDataset", "TarShards", "center_crop_arr", "check_images", "decode_image",
           "epoch_order", "is_streamable", "load_dataset", "open_dataset", "read_idx", "read_image", "take"]
