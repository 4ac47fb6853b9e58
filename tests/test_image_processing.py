"""Chapter 10's image preprocessing against ``transformers``' image processors (Pillow backend) as the oracle.

Each processor is built the way the Hub ships it: a ``preprocessor_config.json`` written by hand
with the published fields, read by ``from_pretrained`` on their side and by
``ImageProcessorConfig.from_file`` on ours; the ``pixel_values`` must agree to 1e-5 (they agree
bit for bit). Pictures: scikit-image's sample photos when it is installed, and always a set made
here deterministically (gradients, noise, odd sizes, portrait/landscape, grayscale, RGBA, palette).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from course_lib.image_processing import (ImageProcessorConfig, center_crop, convnext_resize, load_image, normalize,
                                         preprocess, resample_filter, rescale, resize, resize_shortest_edge,
                                         shortest_edge_size, to_channels_first)

tf = pytest.importorskip("transformers")
from transformers import image_transforms as T  # noqa: E402
from transformers.image_utils import ChannelDimension  # noqa: E402

FIRST = ChannelDimension.FIRST

# --------------------------------------------------------------------- the published configs (by hand)

VIT_BASE_PATCH16_224 = {  # the fields google/vit-base-patch16-224 publishes, written by hand
    "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "ViTImageProcessor",
    "image_std": [0.5, 0.5, 0.5], "resample": 2, "rescale_factor": 0.00392156862745098,
    "size": {"height": 224, "width": 224}}
RESNET_50 = {  # the fields microsoft/resnet-50 publishes, written by hand
    "crop_pct": 0.875, "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406], "image_processor_type": "ConvNextImageProcessor",
    "image_std": [0.229, 0.224, 0.225], "resample": 3, "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224}}
RESNET_50_LEGACY = {  # the older feature-extractor form of the same file: size as a bare int
    "crop_pct": 0.875, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "ConvNextFeatureExtractor",
    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": 224}
BIT_50 = {  # BitImageProcessor's fields as google/bit-50 uses them: resize shortest edge, centre crop
    "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
    "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_processor_type": "BitImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224}}
CLIP_VIT_B32 = {  # a CLIP feature-extractor file in the old form: bare ints for size and crop_size
    "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3, "size": 224}
VIT_LEGACY = {  # the old ViT feature-extractor form: a bare int size means a square
    "do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor",
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 224}
CONVNEXT_384 = {**RESNET_50, "size": {"shortest_edge": 384}}  # >= 384: warp to a square, no crop
CONVNEXT_CROP_09 = {**RESNET_50, "crop_pct": 0.9}  # 224 / 0.9 = 248.9: int() makes it 248, round() would say 249

ORACLES = {"vit": ("ViTImageProcessorPil", VIT_BASE_PATCH16_224), "vit-legacy": ("ViTImageProcessorPil", VIT_LEGACY),
           "resnet-50": ("ConvNextImageProcessorPil", RESNET_50),
           "resnet-50-legacy": ("ConvNextImageProcessorPil", RESNET_50_LEGACY),
           "convnext-384": ("ConvNextImageProcessorPil", CONVNEXT_384),
           "convnext-crop-0.9": ("ConvNextImageProcessorPil", CONVNEXT_CROP_09),
           "bit": ("BitImageProcessorPil", BIT_50), "clip": ("CLIPImageProcessorPil", CLIP_VIT_B32)}


def write_config(folder: Path, values: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(values), encoding="utf-8")
    return folder


def oracle_pixels(name: str, folder: Path, images) -> torch.Tensor:
    class_name, _ = ORACLES[name]
    processor = getattr(tf, class_name).from_pretrained(folder)
    # do_convert_rgb: the oracle composites transparency onto white and makes grayscale RGB, as load_image does
    return processor(images, do_convert_rgb=True, return_tensors="pt")["pixel_values"]


# --------------------------------------------------------------------- pictures


def made_images() -> dict[str, Image.Image]:
    """Deterministic pictures covering the cases a processor must handle."""
    rng = np.random.default_rng(10)
    y, x = np.mgrid[0:301, 0:457]  # landscape, both sides odd
    gradient = np.stack([x * 255 // 456, y * 255 // 300, (x + y) * 255 // 756], axis=-1).astype(np.uint8)
    noise_portrait = rng.integers(0, 256, (333, 199, 3), dtype=np.uint8)
    smooth = np.cumsum(rng.normal(size=(250, 250, 3)), axis=1)  # a square, blotchy "texture"
    smooth = ((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8)
    gray = Image.fromarray(((np.sin(np.mgrid[0:180, 0:517][1] / 9.0) + 1) * 127.5).astype(np.uint8), mode="L")
    rgba = np.concatenate([rng.integers(0, 256, (211, 300, 3)), (np.mgrid[0:211, 0:300][1] * 255 // 299)[..., None]],
                          axis=-1).astype(np.uint8)
    palette = Image.fromarray(gradient).quantize(colors=16)
    palette_transparent = palette.copy()
    palette_transparent.info["transparency"] = 3  # palette index 3 is see-through
    tiny = rng.integers(0, 256, (37, 61, 3), dtype=np.uint8)  # smaller than every target: upsampling
    return {"gradient-landscape": Image.fromarray(gradient), "noise-portrait": Image.fromarray(noise_portrait),
            "smooth-square": Image.fromarray(smooth), "grayscale": gray, "rgba": Image.fromarray(rgba, mode="RGBA"),
            "palette": palette, "palette-transparent": palette_transparent, "tiny": Image.fromarray(tiny)}


MADE = made_images()


def skimage_photos() -> dict[str, Path]:
    skimage_data = pytest.importorskip("skimage.data")
    folder = Path(skimage_data.__file__).parent
    # photos (RGB), a grayscale photo, and the RGBA logo; all shipped inside the scikit-image wheel (BSD)
    return {name: folder / f"{name}.png" for name in ("astronaut", "chelsea", "coffee", "camera", "coins",
                                                      "logo")}


# --------------------------------------------------------------------- the whole pipeline


@pytest.mark.parametrize("processor", sorted(ORACLES))
def test_preprocess_equals_transformers_on_made_images(processor, tmp_path):
    folder = write_config(tmp_path, ORACLES[processor][1])
    names = sorted(MADE)
    expected = oracle_pixels(processor, folder, [MADE[n] for n in names])
    ours = preprocess([MADE[n] for n in names], ImageProcessorConfig.from_file(folder))
    side = 384 if processor == "convnext-384" else 224
    assert ours.dtype == torch.float32 and ours.shape == expected.shape == (len(names), 3, side, side)
    for i, name in enumerate(names):
        torch.testing.assert_close(ours[i], expected[i], atol=1e-5, rtol=0, msg=lambda m: f"{processor}/{name}: {m}")


@pytest.mark.parametrize("processor", ["vit", "resnet-50", "bit", "clip"])
def test_preprocess_equals_transformers_on_skimage_photos(processor, tmp_path):
    photos = skimage_photos()
    folder = write_config(tmp_path, ORACLES[processor][1])
    for name, path in photos.items():
        expected = oracle_pixels(processor, folder, Image.open(path))
        ours = preprocess(path, ImageProcessorConfig.from_file(folder))  # decoded from the file by load_image
        assert ours.shape == expected.shape == (1, 3, 224, 224)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0, msg=lambda m: f"{processor}/{name}: {m}")


def test_resnet_50_pixel_values_shape_and_statistics():
    config = ImageProcessorConfig.from_dict(RESNET_50)
    pixels = preprocess([MADE["gradient-landscape"], MADE["noise-portrait"]], config)
    assert pixels.shape == (2, 3, 224, 224) and pixels.dtype == torch.float32
    # normalised with ImageNet statistics: black -> -mean/std, white -> (1 - mean)/std
    low = -torch.tensor(RESNET_50["image_mean"]) / torch.tensor(RESNET_50["image_std"])
    high = (1 - torch.tensor(RESNET_50["image_mean"])) / torch.tensor(RESNET_50["image_std"])
    assert (pixels.amin(dim=(0, 2, 3)) >= low - 1e-6).all() and (pixels.amax(dim=(0, 2, 3)) <= high + 1e-6).all()


# --------------------------------------------------------------------- config


def test_config_reads_each_published_form():
    vit = ImageProcessorConfig.from_dict(VIT_BASE_PATCH16_224)
    assert vit.size == {"height": 224, "width": 224} and vit.resample == Image.Resampling.BILINEAR
    assert vit.crop_pct is None and not vit.do_center_crop and vit.image_mean == (0.5, 0.5, 0.5)
    for resnet in (RESNET_50, RESNET_50_LEGACY):
        config = ImageProcessorConfig.from_dict(resnet)
        assert config.size == {"shortest_edge": 224} and config.crop_pct == 0.875
        assert config.resample == Image.Resampling.BICUBIC and config.processor_type == "ConvNextImageProcessor"
        assert config.do_rescale and config.rescale_factor == 1 / 255  # the legacy file leaves them to the class
    clip = ImageProcessorConfig.from_dict(CLIP_VIT_B32)
    assert clip.size == {"shortest_edge": 224} and clip.crop_size == {"height": 224, "width": 224}
    assert clip.processor_type == "CLIPImageProcessor"
    fast = ImageProcessorConfig.from_dict({**VIT_BASE_PATCH16_224, "image_processor_type": "ViTImageProcessorFast"})
    assert fast.processor_type == "ViTImageProcessor"
    # ViT keeps an int size square; a class that is not known gets the base class's defaults (all steps off)
    assert ImageProcessorConfig.from_dict({"image_processor_type": "ViTImageProcessor", "size": 384}).size == \
        {"height": 384, "width": 384}
    bare = ImageProcessorConfig.from_dict({"image_processor_type": "SomethingElseImageProcessor"})
    assert not (bare.do_resize or bare.do_rescale or bare.do_normalize or bare.do_center_crop)


def test_missing_fields_take_the_class_defaults_as_transformers_does(tmp_path):
    # crop_pct, resample, mean and std left out: both sides must fall back to ConvNext's class defaults
    values = {"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 224}}
    expected = tf.ConvNextImageProcessorPil.from_pretrained(write_config(tmp_path, values))(
        MADE["smooth-square"], return_tensors="pt")["pixel_values"]
    ours = preprocess(MADE["smooth-square"], ImageProcessorConfig.from_dict(values))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("values, message", [
    ({**VIT_BASE_PATCH16_224, "size": {"heigth": 224, "width": 224}}, "'size' must have the keys"),
    ({**VIT_BASE_PATCH16_224, "size": {"height": 224}}, "'size' must have the keys"),
    ({**VIT_BASE_PATCH16_224, "size": {"height": -3, "width": 224}}, "positive integer"),
    ({**VIT_BASE_PATCH16_224, "size": "224"}, "'size' must be an int"),
    ({"image_processor_type": "SomethingImageProcessor", "do_resize": True}, "there is no 'size'"),
    ({**RESNET_50, "size": {"height": 224, "width": 224}}, "needs size {\"shortest_edge\""),
    ({**RESNET_50, "crop_pct": 1.5}, "'crop_pct' must be a number in"),
    ({**VIT_BASE_PATCH16_224, "crop_pct": 0.9}, "only understood for ConvNextImageProcessor"),
    ({**VIT_BASE_PATCH16_224, "resample": 7}, "unknown resample filter 7"),
    ({**VIT_BASE_PATCH16_224, "resample": "cubic"}, "unknown resample filter 'cubic'"),
    ({**VIT_BASE_PATCH16_224, "do_center_crop": True, "crop_size": {"shortest_edge": 224}}, "'crop_size' must be"),
    ({**VIT_BASE_PATCH16_224, "image_mean": [0.5, 0.5]}, "'image_mean' must be three numbers"),
    ({**VIT_BASE_PATCH16_224, "image_std": [0.5, 0.0, 0.5]}, "divide by zero"),
    ({"image_processor_type": "SomethingImageProcessor", "do_normalize": True}, "'image_mean' is missing"),
    ({**VIT_BASE_PATCH16_224, "rescale_factor": "1/255"}, "'rescale_factor' must be a positive number"),
    ([1, 2, 3], "must hold a JSON object"),
])
def test_bad_configs_are_clear_errors(values, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("{", r"\{")):
        ImageProcessorConfig.from_dict(values)


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="hf download"):
        ImageProcessorConfig.from_file(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        ImageProcessorConfig.from_file(tmp_path)


def test_resample_names_and_numbers():
    assert resample_filter(3) == resample_filter("bicubic") == Image.Resampling.BICUBIC
    assert [resample_filter(i).name for i in range(6)] == ["NEAREST", "LANCZOS", "BILINEAR", "BICUBIC", "BOX",
                                                          "HAMMING"]
    with pytest.raises(ValueError, match="Pillow's filters"):
        resample_filter(True)


# --------------------------------------------------------------------- each step against its transformers function


def chw(image: Image.Image) -> np.ndarray:
    return np.moveaxis(np.asarray(image), -1, 0)


@pytest.mark.parametrize("height, width", [(301, 457), (457, 301), (224, 224), (37, 61), (1000, 999), (255, 256),
                                           (3, 1000)])
@pytest.mark.parametrize("edge", [224, 256, int(224 / 0.9), 384])
def test_shortest_edge_size_truncates_like_transformers(height, width, edge):
    expected = T.get_resize_output_image_size(np.zeros((3, height, width), np.uint8), size=edge,
                                              default_to_square=False, input_data_format=FIRST)
    assert shortest_edge_size(height, width, edge) == tuple(expected)


@pytest.mark.parametrize("resample", range(6))
def test_resize_equals_transformers_for_every_filter(resample):
    image = MADE["gradient-landscape"]
    expected = T.resize(chw(image), (199, 287), resample=resample, input_data_format=FIRST)
    np.testing.assert_array_equal(to_channels_first(resize(image, 199, 287, resample)).numpy(), expected)
    size = T.get_resize_output_image_size(chw(image), size=150, default_to_square=False, input_data_format=FIRST)
    expected = T.resize(chw(image), size, resample=resample, input_data_format=FIRST)
    np.testing.assert_array_equal(to_channels_first(resize_shortest_edge(image, 150, resample)).numpy(), expected)


@pytest.mark.parametrize("crop", [(224, 224), (5, 8), (6, 7), (300, 100), (400, 500), (301, 457), (302, 458)])
def test_center_crop_offsets_and_padding_equal_transformers(crop):
    pixels = chw(MADE["gradient-landscape"])  # (3, 301, 457): odd sizes, so the odd offsets matter
    expected = T.center_crop(pixels, crop, input_data_format=FIRST)
    ours = center_crop(torch.from_numpy(pixels.copy()), *crop)
    assert tuple(ours.shape) == (3, *crop)
    np.testing.assert_array_equal(ours.numpy(), expected)


def test_convnext_resize_crops_below_384_and_warps_from_384():
    image = MADE["noise-portrait"]  # (333, 199)
    small = convnext_resize(image, 224, 0.875)
    # shortest edge -> int(224 / 0.875) = 256: (428, 256), then the middle 224 x 224
    by_hand = center_crop(to_channels_first(image.resize((256, 428), Image.Resampling.BICUBIC)), 224, 224)
    assert torch.equal(small, by_hand)
    big = convnext_resize(image, 384, 0.875)
    assert torch.equal(big, to_channels_first(image.resize((384, 384), Image.Resampling.BICUBIC)))


def test_rescale_and_normalize_equal_transformers():
    pixels = chw(MADE["smooth-square"])
    expected = T.rescale(pixels, 1 / 255, input_data_format=FIRST)
    ours = rescale(torch.from_numpy(pixels.copy()), 1 / 255)
    assert ours.dtype == torch.float32
    np.testing.assert_array_equal(ours.numpy(), expected)
    mean, std = RESNET_50["image_mean"], RESNET_50["image_std"]
    expected = T.normalize(expected, mean, std, input_data_format=FIRST)
    np.testing.assert_array_equal(normalize(ours, mean, std).numpy(), expected)
    batched = normalize(ours[None].repeat(2, 1, 1, 1), mean, std)  # (B, C, H, W) works too
    assert torch.equal(batched[1], normalize(ours, mean, std))
    with pytest.raises(ValueError, match="3 channels but mean has 2"):
        normalize(ours, mean[:2], std)


def test_to_channels_first():
    image = MADE["noise-portrait"]
    pixels = to_channels_first(image)
    assert pixels.shape == (3, 333, 199) and pixels.dtype == torch.uint8
    assert torch.equal(pixels[:, 10, 20], torch.from_numpy(np.array(image)[10, 20]))
    assert to_channels_first(np.zeros((4, 5), np.uint8)).shape == (1, 4, 5)
    with pytest.raises(ValueError, match=r"expects \(H, W, C\)"):
        to_channels_first(torch.zeros(1, 2, 3, 4))


# --------------------------------------------------------------------- decoding


def test_load_image_applies_exif_orientation_like_transformers(tmp_path):
    path = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: "rotate 90 CW to view" - how phones store portrait shots
    MADE["gradient-landscape"].save(path, exif=exif, quality=95)
    ours = load_image(path)
    assert ours.size == (301, 457) and ours.mode == "RGB"  # upright: (width, height) swapped
    from transformers.image_utils import load_image as tf_load_image
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(tf_load_image(str(path))))


@pytest.mark.parametrize("name", ["grayscale", "rgba", "palette", "palette-transparent"])
def test_load_image_makes_rgb_like_transformers(name):
    image = MADE[name]
    ours = load_image(image)
    assert ours.mode == "RGB" and ours.size == image.size
    expected = T.convert_to_rgb(image, return_numpy=True)  # what do_convert_rgb does: alpha onto white
    np.testing.assert_array_equal(np.asarray(ours), expected)
    from transformers.image_utils import load_image as tf_load_image  # the pipelines' loader: alpha dropped
    np.testing.assert_array_equal(np.asarray(load_image(image, background=None)), np.asarray(tf_load_image(image)))


def test_load_image_from_array_and_file(tmp_path):
    array = np.asarray(MADE["tiny"])
    assert np.array_equal(np.asarray(load_image(array)), array)
    assert load_image(array[..., 0]).mode == "RGB"
    MADE["rgba"].save(tmp_path / "a.png")
    assert np.array_equal(np.asarray(load_image(tmp_path / "a.png")), np.asarray(load_image(MADE["rgba"])))


def test_load_image_errors_name_the_problem(tmp_path):
    (tmp_path / "notes.txt").write_text("not a picture", encoding="utf-8")
    with pytest.raises(ValueError, match="not an image Pillow can decode"):
        load_image(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="no image file at"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(TypeError, match="file path, a PIL.Image.Image or a uint8 numpy array"):
        load_image(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="must be uint8"):
        load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="not an image Pillow can decode"):
        preprocess(str(tmp_path / "notes.txt"), ImageProcessorConfig.from_dict(VIT_BASE_PATCH16_224))


def test_preprocess_errors():
    config = ImageProcessorConfig.from_dict(VIT_BASE_PATCH16_224)
    with pytest.raises(TypeError, match="ImageProcessorConfig.from_dict"):
        preprocess(MADE["tiny"], VIT_BASE_PATCH16_224)
    with pytest.raises(ValueError, match="at least one image"):
        preprocess([], config)
    no_resize = ImageProcessorConfig.from_dict({**VIT_BASE_PATCH16_224, "do_resize": False})
    with pytest.raises(ValueError, match="different sizes"):
        preprocess([MADE["tiny"], MADE["noise-portrait"]], no_resize)
    assert preprocess(MADE["tiny"], no_resize).shape == (1, 3, 37, 61)
