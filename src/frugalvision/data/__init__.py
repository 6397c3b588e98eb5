"""Image data sets: decoding images robustly and reading common annotation layouts.

- :func:`load_image` decodes any image file to upright 8-bit RGB and raises clear errors on bad files.
- :class:`ImageDataset` (a ``torch.utils.data.Dataset``) holds :class:`Sample` objects and class names;
  :func:`collate_images` batches it while reporting skipped (corrupt) images.
- Readers: :func:`read_folder` (class-per-folder), :func:`read_manifest` (CSV / JSON Lines),
  :func:`read_coco` (COCO JSON), :func:`read_yolo` (YOLO txt), and :func:`open_dataset` to pick one
  from the path.

Example:
    >>> from frugalvision import data
    >>> ds = data.open_dataset("photos/")  # doctest: +SKIP
    >>> loader = torch.utils.data.DataLoader(ds.with_transform(tf), collate_fn=data.collate_images)  # doctest: +SKIP
"""

from frugalvision._fs import IMAGE_EXTENSIONS
from frugalvision.data._image import image_size, load_image
from frugalvision.data.auto import FORMATS, detect_format, open_dataset
from frugalvision.data.coco import read_coco
from frugalvision.data.dataset import ImageDataset, OnCorrupt, Sample, collate_images, load_for_transform
from frugalvision.data.folder import read_folder
from frugalvision.data.manifest import read_manifest
from frugalvision.data.yolo import read_class_names, read_yolo

__all__ = [
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "OnCorrupt",
    "Sample",
    "collate_images",
    "detect_format",
    "image_size",
    "load_for_transform",
    "load_image",
    "open_dataset",
    "read_class_names",
    "read_coco",
    "read_folder",
    "read_manifest",
    "read_yolo",
]
