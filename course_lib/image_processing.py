"""Chapter 10's image preprocessing: from a photo to ``pixel_values`` as the Hub's image processors do it.

A vision model on the Hub publishes, next to its weights, a ``preprocessor_config.json`` that says
how a picture becomes the tensor the model was trained on. This module reads that file
(``ImageProcessorConfig.from_dict``) and runs the steps one function each, in the order the
``transformers`` image processors (their Pillow backend) run them:

1. ``load_image``: decode with Pillow, turn it upright by its EXIF orientation tag, make it RGB
   (grayscale, palette, CMYK; transparency composited onto white);
2. ``resize`` to a fixed (height, width), or ``resize_shortest_edge`` keeping the aspect ratio —
   done by Pillow on the 8-bit image with the config's ``resample`` filter, sizes truncated with
   ``int()`` exactly as ``transformers.image_transforms.get_resize_output_image_size`` does;
   ConvNeXt-style configs (``microsoft/resnet-50``) first resize the shortest edge to
   ``int(shortest_edge / crop_pct)`` and then crop (``convnext_resize``);
3. ``to_channels_first``: (H, W, 3) uint8 -> (3, H, W) uint8 tensor;
4. ``center_crop`` (offsets ``(H - h) // 2``, zero padding when the image is smaller);
5. ``rescale``: uint8 -> float32 times ``rescale_factor`` (1/255), computed in float64 first;
6. ``normalize``: ``(x - mean) / std`` per channel, in float32.

``preprocess(images, config)`` chains them and stacks a batch: (B, 3, H, W) float32.
``tests/test_image_processing.py`` checks the result against ``transformers``' ViT, ConvNeXt and
BiT/CLIP processors (≤ 1e-5; in practice bit for bit).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "RESAMPLE_FILTERS", "IMAGENET_STANDARD_MEAN", "IMAGENET_STANDARD_STD",
    "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD",
    "ImageProcessorConfig", "resample_filter",
    "load_image", "shortest_edge_size", "resize", "resize_shortest_edge", "convnext_resize",
    "to_channels_first", "center_crop", "rescale", "normalize", "preprocess_one", "preprocess",
]

# Pillow's filter numbers, which preprocessor_config.json stores as "resample".
RESAMPLE_FILTERS = {
    0: Image.Resampling.NEAREST, 1: Image.Resampling.LANCZOS, 2: Image.Resampling.BILINEAR,
    3: Image.Resampling.BICUBIC, 4: Image.Resampling.BOX, 5: Image.Resampling.HAMMING,
}
_RESAMPLE_NAMES = {f.name.lower(): f for f in RESAMPLE_FILTERS.values()}

IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# What each processor class assumes for a field its preprocessor_config.json leaves out
# (the class attributes of transformers' ViT/ConvNext/Bit/CLIP image processors).
_CLASS_DEFAULTS = {
    "ViTImageProcessor": dict(
        do_resize=True, size={"height": 224, "width": 224}, resample=2, do_center_crop=False,
        do_rescale=True, do_normalize=True, image_mean=IMAGENET_STANDARD_MEAN, image_std=IMAGENET_STANDARD_STD,
        default_to_square=True),
    "ConvNextImageProcessor": dict(
        do_resize=True, size={"shortest_edge": 384}, resample=3, crop_pct=224 / 256, do_center_crop=False,
        do_rescale=True, do_normalize=True, image_mean=IMAGENET_STANDARD_MEAN, image_std=IMAGENET_STANDARD_STD,
        default_to_square=False),
    "BitImageProcessor": dict(
        do_resize=True, size={"shortest_edge": 224}, resample=3, do_center_crop=True,
        crop_size={"height": 224, "width": 224}, do_rescale=True, do_normalize=True,
        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD, default_to_square=False),
}
_CLASS_DEFAULTS["CLIPImageProcessor"] = dict(_CLASS_DEFAULTS["BitImageProcessor"])
# Any other processor: transformers' base class leaves every switch off (None), resamples bilinearly.
_BASE_DEFAULTS = dict(do_resize=False, resample=2, do_center_crop=False, do_rescale=False, do_normalize=False,
                      default_to_square=True)

_FIELDS = ("do_resize", "size", "resample", "crop_pct", "do_center_crop", "crop_size", "do_rescale",
           "rescale_factor", "do_normalize", "image_mean", "image_std")


def resample_filter(value) -> Image.Resampling:
    """``preprocessor_config.json``'s ``resample`` (an int 0-5, or a name such as ``"bicubic"``) -> Pillow's filter."""
    if isinstance(value, Image.Resampling):
        return value
    if isinstance(value, str) and value.lower() in _RESAMPLE_NAMES:
        return _RESAMPLE_NAMES[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and value in RESAMPLE_FILTERS:
        return RESAMPLE_FILTERS[value]
    known = ", ".join(f"{k} ({f.name.lower()})" for k, f in RESAMPLE_FILTERS.items())
    raise ValueError(f"unknown resample filter {value!r}; preprocessor_config.json's 'resample' must be one of "
                     f"Pillow's filters: {known}")


def _canonical_type(values: dict) -> str | None:
    """``image_processor_type`` (or the older ``feature_extractor_type``) without ``Fast``/``Pil`` suffixes."""
    name = values.get("image_processor_type") or values.get("feature_extractor_type")
    if not name:
        return None
    name = name.replace("FeatureExtractor", "ImageProcessor")
    for suffix in ("Fast", "Pil"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _size_dict(value, name: str, default_to_square: bool, where: str) -> dict:
    """An int, [h, w] or dict -> ``{"height", "width"}`` or ``{"shortest_edge"}`` (as ``get_size_dict``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return {"height": value, "width": value} if default_to_square else {"shortest_edge": value}
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return {"height": int(value[0]), "width": int(value[1])}
    if isinstance(value, dict):
        keys = set(value)
        if keys in ({"height", "width"}, {"shortest_edge"}) and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value.values()):
            return dict(value)
        raise ValueError(f"{where}: '{name}' must have the keys {{'height', 'width'}} or {{'shortest_edge'}} with "
                         f"positive integer values, got {value!r}; fix the config (e.g. "
                         f"\"{name}\": {{\"height\": 224, \"width\": 224}})")
    raise ValueError(f"{where}: '{name}' must be an int, [height, width] or a dict such as "
                     f"{{\"height\": 224, \"width\": 224}}, got {value!r}")


@dataclasses.dataclass
class ImageProcessorConfig:
    """The fields of a ``preprocessor_config.json`` that turn a picture into ``pixel_values``.

    ``size`` is ``{"height": h, "width": w}`` (resize to exactly that) or ``{"shortest_edge": s}``
    (keep the aspect ratio). ``crop_pct`` is only set for ConvNeXt-style processors (see
    ``convnext_resize``). ``image_mean``/``image_std`` have one value per RGB channel.
    """

    do_resize: bool = True
    size: dict | None = None
    resample: Image.Resampling = Image.Resampling.BILINEAR
    crop_pct: float | None = None
    do_center_crop: bool = False
    crop_size: dict | None = None
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = IMAGENET_STANDARD_MEAN
    image_std: tuple[float, ...] = IMAGENET_STANDARD_STD
    processor_type: str | None = None

    @classmethod
    def from_dict(cls, values: dict, where: str = "preprocessor_config.json") -> "ImageProcessorConfig":
        """Read the published fields; a missing field takes the default of its processor class.

        Known classes: ViT, ConvNext, Bit, CLIP image processors (and their ``FeatureExtractor`` names).
        Another class (or none named) gets transformers' base-class defaults: every step off unless
        the file switches it on. Raises ``ValueError`` naming the field and the fix.
        ``do_convert_rgb`` is not read: ``load_image`` always makes RGB (transformers' ViT/ConvNext
        processors leave it off, and then fail on a grayscale or RGBA picture).
        """
        if not isinstance(values, dict):
            raise ValueError(f"{where} must hold a JSON object, found {type(values).__name__}")
        kind = _canonical_type(values)
        defaults = dict(_CLASS_DEFAULTS.get(kind, _BASE_DEFAULTS))
        default_to_square = defaults.pop("default_to_square")
        merged = {**defaults, **{k: values[k] for k in _FIELDS if values.get(k) is not None}}

        if merged.get("crop_pct") is not None and kind not in (None, "ConvNextImageProcessor"):
            # Other processors (PoolFormer, ...) use crop_pct differently: refuse rather than guess.
            raise ValueError(f"{where}: 'crop_pct' is only understood for ConvNextImageProcessor here, the "
                             f"config names {kind}; remove crop_pct or preprocess with that class's own rule")
        convnext = kind == "ConvNextImageProcessor" or (kind is None and merged.get("crop_pct") is not None)
        if convnext:
            default_to_square = False
            merged.setdefault("crop_pct", 224 / 256)

        size = merged.get("size")
        if size is not None:
            size = _size_dict(size, "size", default_to_square, where)
        if merged.get("do_resize"):
            if size is None:
                raise ValueError(f"{where}: do_resize is true but there is no 'size'; add e.g. "
                                 f"\"size\": {{\"height\": 224, \"width\": 224}} or {{\"shortest_edge\": 224}}")
            if convnext and "shortest_edge" not in size:
                raise ValueError(f"{where}: a ConvNeXt-style config (crop_pct) needs size {{\"shortest_edge\": N}}, "
                                 f"got {size!r}")
        crop_size = merged.get("crop_size")
        if crop_size is not None:
            crop_size = _size_dict(crop_size, "crop_size", True, where)
        if merged.get("do_center_crop"):
            if crop_size is None or "height" not in crop_size:
                raise ValueError(f"{where}: do_center_crop is true, so 'crop_size' must be "
                                 f"{{\"height\": h, \"width\": w}} (or an int), got {crop_size!r}")

        image_mean = merged.get("image_mean")
        image_std = merged.get("image_std")
        if merged.get("do_normalize"):
            for name, vals in (("image_mean", image_mean), ("image_std", image_std)):
                if vals is None:
                    raise ValueError(f"{where}: do_normalize is true but '{name}' is missing; add three values, "
                                     f"one per RGB channel")
            image_mean, image_std = _per_channel(image_mean, "image_mean", where), \
                _per_channel(image_std, "image_std", where)
            if any(s == 0 for s in image_std):
                raise ValueError(f"{where}: 'image_std' has a zero ({image_std}); normalising would divide by zero")
        rescale_factor = merged.get("rescale_factor", 1 / 255)
        is_number = isinstance(rescale_factor, (int, float)) and not isinstance(rescale_factor, bool)
        if not (is_number and rescale_factor > 0):
            raise ValueError(f"{where}: 'rescale_factor' must be a positive number (1/255 = 0.00392156862745098 for "
                             f"8-bit pictures), got {rescale_factor!r}")
        crop_pct = merged.get("crop_pct")
        if convnext and not (isinstance(crop_pct, (int, float)) and 0 < crop_pct <= 1):
            raise ValueError(f"{where}: 'crop_pct' must be a number in (0, 1], got {crop_pct!r}")
        return cls(
            do_resize=bool(merged.get("do_resize")), size=size, resample=resample_filter(merged.get("resample")),
            crop_pct=float(crop_pct) if convnext else None,
            do_center_crop=bool(merged.get("do_center_crop")), crop_size=crop_size,
            do_rescale=bool(merged.get("do_rescale")), rescale_factor=float(rescale_factor),
            do_normalize=bool(merged.get("do_normalize")),
            image_mean=image_mean if image_mean is not None else IMAGENET_STANDARD_MEAN,
            image_std=image_std if image_std is not None else IMAGENET_STANDARD_STD,
            processor_type=kind)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ImageProcessorConfig":
        """A ``preprocessor_config.json`` file (or a model folder that holds one) -> the config."""
        path = Path(path)
        if path.is_dir():
            path = path / "preprocessor_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; download it with the model "
                                    f"(`hf download MODEL preprocessor_config.json`)")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON ({err}); download it again") from err
        return cls.from_dict(values, where=str(path))


def _per_channel(values, name: str, where: str) -> tuple[float, ...]:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        return (float(values),) * 3
    if isinstance(values, (list, tuple)) and len(values) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return tuple(float(v) for v in values)
    raise ValueError(f"{where}: '{name}' must be three numbers (one per RGB channel), got {values!r}")


# --------------------------------------------------------------------------------------
# 1. decode


def load_image(source, background: tuple[int, int, int] | None = (255, 255, 255)) -> Image.Image:
    """A file path, Pillow image or (H, W[, C]) uint8 array -> an upright RGB Pillow image.

    - EXIF orientation is applied (``ImageOps.exif_transpose``), as ``transformers.image_utils.load_image``
      does: a phone photo stored sideways comes out the way it was taken.
    - Grayscale, palette and CMYK images become RGB.
    - Transparency (RGBA, LA, a palette with a transparent colour) is composited onto ``background``,
      white by default, as the processors' ``convert_to_rgb`` does (``do_convert_rgb``); with
      ``background=None`` the alpha channel is simply dropped, as ``transformers``' ``load_image``
      (and so its pipelines) does.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no image file at {path}; check the path")
        try:
            image = Image.open(path)
            image.load()
        except UnidentifiedImageError as err:
            raise ValueError(f"{path} is not an image Pillow can decode (JPEG, PNG, GIF, WebP, ...); "
                             f"pass a picture file") from err
    elif isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        channels_ok = source.ndim == 2 or (source.ndim == 3 and source.shape[2] in (1, 3, 4))
        if source.dtype != np.uint8 or not channels_ok:
            raise ValueError(f"an array image must be uint8 with shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                             f"got {source.dtype} {source.shape}; convert it with (x * 255).round().astype(np.uint8)")
        image = Image.fromarray(source[..., 0] if source.ndim == 3 and source.shape[2] == 1 else source)
    else:
        raise TypeError(f"load_image takes a file path, a PIL.Image.Image or a uint8 numpy array, got "
                        f"{type(source).__name__}")

    image = ImageOps.exif_transpose(image)
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha and background is not None:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


# --------------------------------------------------------------------------------------
# 2. resize (Pillow, on the 8-bit image)


def shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """(height, width) after scaling the shorter side to ``shortest_edge``; the longer side is truncated
    with ``int()``, as ``get_resize_output_image_size(..., default_to_square=False)`` does.

    A square keeps being a square; for a tie the width counts as the short side.
    """
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (new_long, shortest_edge) if width <= height else (shortest_edge, new_long)


def resize(image: Image.Image, height: int, width: int, resample=Image.Resampling.BILINEAR) -> Image.Image:
    """Resize to exactly (height, width) with the Pillow filter ``resample`` (aspect ratio not kept)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"resize target must be positive, got height={height}, width={width}")
    return image.resize((width, height), resample=resample_filter(resample))  # Pillow takes (width, height)


def resize_shortest_edge(image: Image.Image, shortest_edge: int, resample=Image.Resampling.BILINEAR) -> Image.Image:
    """Resize so that the shorter side is ``shortest_edge``, keeping the aspect ratio (see ``shortest_edge_size``)."""
    height, width = shortest_edge_size(image.height, image.width, shortest_edge)
    return resize(image, height, width, resample)


def convnext_resize(image: Image.Image, shortest_edge: int, crop_pct: float,
                    resample=Image.Resampling.BICUBIC) -> torch.Tensor:
    """ConvNeXt's rule (used by ``microsoft/resnet-50``): returns (3, S, S) uint8.

    For ``shortest_edge < 384``: resize the shorter side to ``int(shortest_edge / crop_pct)``
    (224 / 0.875 = 256) and centre-crop ``shortest_edge`` x ``shortest_edge``; from 384 on, warp the
    whole image to (S, S) without cropping.
    """
    if shortest_edge < 384:
        resized = resize_shortest_edge(image, int(shortest_edge / crop_pct), resample)
        return center_crop(to_channels_first(resized), shortest_edge, shortest_edge)
    return to_channels_first(resize(image, shortest_edge, shortest_edge, resample))


# --------------------------------------------------------------------------------------
# 3-6. tensor steps


def to_channels_first(image) -> torch.Tensor:
    """A Pillow image or an (H, W, C) array/tensor -> (C, H, W), dtype unchanged (uint8 for an image)."""
    if isinstance(image, Image.Image):
        image = np.asarray(image)
    pixels = torch.as_tensor(np.array(image, copy=True) if isinstance(image, np.ndarray) else image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3:
        raise ValueError(f"to_channels_first expects (H, W, C), got shape {tuple(pixels.shape)}")
    return pixels.permute(2, 0, 1).contiguous()  # (H, W, C) -> (C, H, W)


def center_crop(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(..., H, W) -> (..., height, width), cut from the middle.

    The offset is ``(H - height) // 2`` (for an odd difference the extra row goes to the bottom,
    as in ``transformers.image_transforms.center_crop``). An image smaller than the crop is first
    padded with zeros around it (the extra pad row, ``ceil``, at the top), as transformers does.
    """
    in_h, in_w = pixels.shape[-2:]
    if in_h < height or in_w < width:
        new_h, new_w = max(height, in_h), max(width, in_w)
        top_pad, left_pad = -(-(new_h - in_h) // 2), -(-(new_w - in_w) // 2)  # ceil division
        padded = pixels.new_zeros((*pixels.shape[:-2], new_h, new_w))
        padded[..., top_pad:top_pad + in_h, left_pad:left_pad + in_w] = pixels
        top, left = (in_h - height) // 2 + top_pad, (in_w - width) // 2 + left_pad
        return padded[..., max(0, top):min(new_h, top + height), max(0, left):min(new_w, left + width)]
    top, left = (in_h - height) // 2, (in_w - width) // 2
    return pixels[..., top:top + height, left:left + width]


def rescale(pixels: torch.Tensor, factor: float = 1 / 255) -> torch.Tensor:
    """uint8 (or any) pixels -> float32 ``pixels * factor``; multiplied in float64 and rounded once to
    float32, as ``transformers.image_transforms.rescale`` does."""
    return (pixels.to(torch.float64) * factor).to(torch.float32)


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(C, H, W) or (B, C, H, W) float -> ``(x - mean[c]) / std[c]`` per channel, in the input's float dtype."""
    if not pixels.is_floating_point():
        pixels = pixels.to(torch.float32)
    channels = pixels.shape[-3]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"normalize: the image has {channels} channels but mean has {len(mean)} and std "
                         f"{len(std)} values; give one per channel")
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device)[:, None, None]  # (C, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device)[:, None, None]
    return (pixels - mean_t) / std_t


# --------------------------------------------------------------------------------------
# the whole pipeline


def preprocess_one(image, config: ImageProcessorConfig) -> torch.Tensor:
    """One picture (path, Pillow image or uint8 array) -> (3, H, W): float32 when rescaled or
    normalised, else uint8."""
    image = load_image(image)
    if config.do_resize and config.crop_pct is not None:
        pixels = convnext_resize(image, config.size["shortest_edge"], config.crop_pct, config.resample)
    else:
        if config.do_resize and "shortest_edge" in config.size:
            image = resize_shortest_edge(image, config.size["shortest_edge"], config.resample)
        elif config.do_resize:
            image = resize(image, config.size["height"], config.size["width"], config.resample)
        pixels = to_channels_first(image)  # (3, H, W) uint8
    if config.do_center_crop:
        pixels = center_crop(pixels, config.crop_size["height"], config.crop_size["width"])
    if config.do_rescale:
        pixels = rescale(pixels, config.rescale_factor)
    if config.do_normalize:
        pixels = normalize(pixels, config.image_mean, config.image_std)
    return pixels


def preprocess(images, config: ImageProcessorConfig) -> torch.Tensor:
    """One picture or a list of them -> ``pixel_values`` (B, 3, H, W), float32 (uint8 if neither
    rescaled nor normalised). All pictures must come out the same size (a fixed ``size``, or a crop)."""
    if not isinstance(config, ImageProcessorConfig):
        raise TypeError(f"preprocess needs an ImageProcessorConfig (ImageProcessorConfig.from_dict(json)), got "
                        f"{type(config).__name__}")
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        images = [images]
    images = list(images) if isinstance(images, Iterable) else images
    if not isinstance(images, list) or not images:
        raise ValueError("preprocess needs at least one image")
    batch = [preprocess_one(image, config) for image in images]
    shapes = {tuple(p.shape) for p in batch}
    if len(shapes) > 1:
        raise ValueError(f"the images came out in different sizes {sorted(shapes)}; they cannot be stacked into "
                         f"one batch. Use a config that resizes to a fixed size or centre-crops, or preprocess "
                         f"them one at a time")
    return torch.stack(batch)  # (B, 3, H, W)
