"""Image sources: every collection hashindex reads, behind one interface.

A source is an ordered list of items. Item ``i`` has the stable id
``id_offset + i``; the order is fixed by the collection itself (sorted paths
for a folder, member order for a tar, line order for a list, record order for
IDX / CIFAR batches), so the same collection gives the same ids on every run.

``source.read(i)`` returns a decoded PIL image or raises `BadImage` with a
short reason; callers skip and count those, they never crash on them.

Supported (``open_source(spec)`` picks by what the path is):
  * a folder tree: label = name of the image's parent folder, images lying
    directly in the root are unlabelled (-1);
  * a tar / tar.gz of images (WebDataset-style), read in place, label = parent
    folder name of the member;
  * a text / CSV list of ``path[,label]`` lines, a Caffe list of ``path label``
    lines (DLBHC's and SSDH's ``train-file.txt``) or a one-hot list (HashNet's);
  * MNIST / Fashion-MNIST IDX files (``DIR`` or ``DIR:test``);
  * the official CIFAR-10 / CIFAR-100 python files, STL-10 binaries and SVHN .mat
    files (``DIR`` or ``DIR:test``; a .mat file alone);
  * ``torchvision:cifar10[:test]``, ``torchvision:cifar100``, ``torchvision:stl10``,
    ``torchvision:svhn``, ``torchvision:fashion-mnist``, ``torchvision:mnist``: downloaded through torchvision into the user's cache
    (for users on a connected machine; the tests never download).
"""

from .formats import cifar_source, idx_source, read_idx
from .images import (BadImage, SkipLog, as_net_input, decode_image, net_array, skip_summary, thumbnail_jpeg, to_array,
                     to_mode)
from .lists import ListSource
from .archives import TarSource, ZipSource
from .folders import FolderSource
from .sources import (IMAGE_EXTENSIONS, ArraySource, FilesSource, ImageSource, shared_folder_names,
                      warn_shared_folder_names)
from .spec import open_source, reopen_source


def __getattr__(name: str):
    """The torch-backed loaders are imported on first use (``import hashindex.data`` stays light)."""
    if name in ("iter_batches", "load_arrays", "ImageDataset"):
        from . import loading

        return getattr(loading, name)
    raise AttributeError(name)


__all__ = ["IMAGE_EXTENSIONS", "ArraySource", "BadImage", "FilesSource", "FolderSource", "ImageDataset",
           "ImageSource", "ListSource", "SkipLog", "TarSource", "ZipSource", "cifar_source", "decode_image",
           "idx_source",
           "iter_batches", "load_arrays", "open_source", "read_idx", "reopen_source", "skip_summary", "thumbnail_jpeg",
           "net_array", "shared_folder_names", "to_array", "to_mode", "warn_shared_folder_names"]
