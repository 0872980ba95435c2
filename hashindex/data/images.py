"""Decoding one image: bytes -> PIL image -> the uint8 array a net takes; skips counted by reason.

Broken files never crash a run: decoding raises `BadImage` with a short reason
(empty, truncated, not-an-image, ...), and callers count and report them.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger("hashindex")
ORIENTATION = 0x0112  # the EXIF orientation tag: 1 upright, 2-8 mirrored and/or rotated


@lru_cache(maxsize=1)
def register_optional_formats() -> bool:
    """Teach Pillow the formats optional packages decode: HEIC / HEIF, the format phones store photos in,
    through pillow-heif (``pip install 'hashindex[heif]'``; it applies the rotation a phone stores in the file
    and clears the EXIF tag, so `upright` does not turn it twice). Runs when this module is imported, in every
    process that decodes; True when HEIF files can be read."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


register_optional_formats()


class BadImage(Exception):
    """An item that cannot be used as an image; ``reason`` is a short tag."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def decode_image(data: bytes, max_side: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """Decode image bytes fully; raise BadImage(reason) for anything unusable.

    ``max_side`` lets JPEG decoding use DCT scaling (``draft``) so a 4000x3000
    photo bound for a 32x32 net is decoded at a fraction of the cost.
    ``max_pixels`` refuses (``too-large``) an image whose header declares more
    pixels, before anything is decoded: a 12000x12000 PNG of a few kilobytes
    would otherwise take 430 MB to decode.
    """
    if not data:
        raise BadImage("empty", "0 bytes")
    try:
        with warnings.catch_warnings():
            # Pillow warns above 89 MP and refuses above 179 MP (DecompressionBombError);
            # big photos between the two are decoded (JPEGs at reduced scale via draft).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = _open(data, max_side)
            if max_side and img.format == "JPEG":
                img.draft(None, (max_side, max_side))  # (the size is now the reduced one, what is decoded)
            if Image.MAX_IMAGE_PIXELS and img.width * img.height > 2 * Image.MAX_IMAGE_PIXELS:  # Pillow's bound on
                raise Image.DecompressionBombError(f"{img.width}x{img.height} pixels")  # what is decoded (`_open`)
            if max_pixels and img.width * img.height > max_pixels:
                raise BadImage("too-large", f"{img.width}x{img.height} pixels, more than {max_pixels:,}")
            img.load()
    except UnidentifiedImageError as e:
        raise BadImage("not-an-image", str(e)) from None
    except Image.DecompressionBombError as e:
        raise BadImage("too-large", str(e)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = "truncated" if "truncated" in str(e).lower() else "corrupt"
        raise BadImage(reason, str(e)) from None
    if img.width < 1 or img.height < 1:
        raise BadImage("corrupt", f"size {img.size}")
    return upright(img)


def _open(data: bytes, max_side: int | None) -> Image.Image:
    """`Image.open` of the bytes, except a JPEG that Pillow refuses as a decompression bomb (over 179 MP: a 200 MP
    phone photo) while it will be decoded at reduced scale (``max_side``): opened as a JPEG all the same, since
    its scaled decode is down to 1/64 of the pixels; `decode_image` applies the same limit to the size it decodes
    at (a 65535-pixel-square header still decodes to 8192 x 8192 at 1/8, under it)."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        if not (max_side and data.startswith(b"\xff\xd8\xff")):
            raise
    from PIL import JpegImagePlugin

    return JpegImagePlugin.JpegImageFile(io.BytesIO(data))  # (Image.open's bomb check is on the declared size)


GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")  # Pillow's modes of one colour channel


def image_header(data: bytes) -> tuple[str, int, int] | None:
    """(mode, width, height) as an image file's header declares them (nothing is decoded), or None for bytes that
    are not an image Pillow opens."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return img.mode, img.width, img.height
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return None  # (UnidentifiedImageError is an OSError)


DRAFT_FACTOR = 2  # JPEGs are decoded at reduced scale down to this many times the net's side, never less


def net_array(data: bytes, size: int, channels: int, max_pixels: int | None = None) -> np.ndarray:
    """Image file bytes as the net's (channels, size, size) uint8 input, the one way every path reads a file:
    extraction, training, `query IMAGE`, the service's uploads and ``encode`` of paths or bytes (JPEG decoding
    at reduced scale changes the pixels, so two scales would give one file two codes). Raises BadImage."""
    return array_of(decode_image(data, max_side=DRAFT_FACTOR * size, max_pixels=max_pixels), size, channels)


def array_of(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """`to_array` of a decoded image, a colour mode Pillow cannot convert raised as BadImage("unsupported")."""
    try:
        return to_array(img, size, channels)
    except (ValueError, OSError) as e:
        raise BadImage("unsupported", f"mode {img.mode}: {e}") from None


def upright(img: Image.Image) -> Image.Image:
    """The image as viewers show it: its EXIF orientation applied (a phone's portrait photo is stored
    sideways with a tag saying so). Every decode goes through here, so a photo is encoded, and drawn in
    a results grid, the same way up whichever way its file stores it; an unreadable EXIF block is ignored."""
    try:
        if img.getexif().get(ORIENTATION, 1) in range(2, 9):
            return ImageOps.exif_transpose(img)
    except Exception:  # Pillow raises many types on malformed EXIF; the pixels are still good
        pass
    return img


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to 8-bit greyscale (channels=1) or RGB (channels=3).

    Transparent images are composited on white (not black, which is what a
    bare ``convert('RGB')`` gives); 16-bit and float greyscale are rescaled;
    greyscale goes to RGB by replicating the channel.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("L" if channels == 1 else "RGB")


def thumbnail_jpeg(data: bytes, side: int, max_pixels: int | None = None, quality: int = 85) -> bytes:
    """Image file bytes as a JPEG at most ``side`` pixels a side, upright, transparency on white: what a page of
    results shows (a 12 MP photo's file is megabytes, its 300-px JPEG tens of kilobytes, and a TIFF or a 16-bit
    PNG becomes a picture every browser draws). JPEGs decode at reduced scale. Raises BadImage."""
    img = decode_image(data, max_side=side, max_pixels=max_pixels)
    img = to_mode(img, 1 if img.mode in GREY_MODES else 3)
    img.thumbnail((side, side), Image.LANCZOS)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def to_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """The net's input: a (channels, size, size) uint8 array, whole image squashed."""
    img = to_mode(img, channels)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def as_net_input(images, size: int, channels: int) -> np.ndarray:
    """Images as users hold them -> the net's uint8 (N, channels, size, size) batch.

    Takes image files (a path or the file's bytes) or PIL images, one or a list; one image as an HW or HWC
    uint8 array (or CHW); a batch as NHWC or NCHW uint8 (numpy or a torch tensor). A file is read as
    extraction reads it (`net_array`), so its code equals the one `extract` stores for it. Pixels of another
    size or mode go through `to_array`, as extraction prepares a decoded file (whole image squashed,
    bilinear; greyscale / RGB): the same pixels, the same code. (A large JPEG that you decode yourself holds
    more pixels than extraction decodes, so pass its path for the stored code.)
    """
    if isinstance(images, (Image.Image, str, bytes, os.PathLike)):
        images = [images]
    if isinstance(images, (list, tuple)):
        return np.stack([_one(im, size, channels) for im in images]) if images else \
            np.zeros((0, channels, size, size), np.uint8)
    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if arr.dtype != np.uint8:
        raise ValueError(f"images: expected uint8 pixels (0-255), got {arr.dtype}")
    if arr.ndim in (2, 3):
        return _one(arr, size, channels)[None]
    if arr.ndim != 4:
        raise ValueError(f"images: expected HW, HWC, CHW, NHWC or NCHW, got shape {arr.shape}")
    if arr.shape[1:] == (channels, size, size):
        return np.ascontiguousarray(arr)  # already the net's input
    return np.stack([_one(a, size, channels) for a in arr])


def _one(image, size: int, channels: int) -> np.ndarray:
    """One image (a file's path or bytes, PIL, HW, HWC or CHW uint8) -> (channels, size, size) uint8."""
    if isinstance(image, (str, os.PathLike)):
        try:
            return net_array(Path(image).read_bytes(), size, channels)
        except OSError as e:
            raise BadImage("missing", f"{image}: {e.strerror}") from None
        except BadImage as e:
            raise BadImage(e.reason, str(image)) from None
    if isinstance(image, bytes):
        return net_array(image, size, channels)
    if isinstance(image, Image.Image):
        return to_array(upright(image), size, channels)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"images: cannot read an image of shape {arr.shape} (expected HW, HWC or CHW)")
    if arr.shape[:2] == (size, size) and (arr.ndim == 2) == (channels == 1) and (arr.ndim == 2 or arr.shape[-1] == 3):
        return np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    return to_array(Image.fromarray(np.ascontiguousarray(arr)), size, channels)


class SkipLog:
    """Counts skipped items by reason and remembers which they were."""

    def __init__(self, max_warnings: int = 20):
        self.counts: Counter[str] = Counter()
        self.items: list[tuple[int, str, str]] = []  # (id, path, reason)
        self.max_warnings = max_warnings

    def add(self, item_id: int, path: str, reason: str) -> None:
        self.counts[reason] += 1
        self.items.append((item_id, path, reason))
        if len(self.items) <= self.max_warnings:
            log.warning("skipped %s: %s", path, reason)
        elif len(self.items) == self.max_warnings + 1:
            log.warning("more skipped images; warnings stop here, the count goes on")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        return skip_summary(self.counts)


def skip_summary(counts: dict[str, int]) -> str:
    """'0 skipped' or '3 skipped (1 empty, 2 truncated)'."""
    total = sum(counts.values())
    if not total:
        return "0 skipped"
    return f"{total} skipped (" + ", ".join(f"{n} {r}" for r, n in sorted(counts.items())) + ")"
