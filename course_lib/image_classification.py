"""Chapter 10: the source material's pipeline, ``classify_image``: a picture in, the top-k classes out.

The source material runs ``microsoft/resnet-50`` end to end: load the picture, resize it and
normalise it with the ImageNet statistics, forward, softmax, print the top five labels with
their probabilities. Every step here is the course's own:

1. the model: a loaded image classifier, or a source ``load_model`` takes (a folder, a course
   asset such as ``"digits-resnet"``, a Hub id such as ``"microsoft/resnet-50"``);
2. the preprocessing: the model's published ``preprocessor_config.json``
   (``course_lib.image_processing``), found beside its ``config.json`` (``load_model`` records
   the folder in ``model.source_folder``), or given as ``processor=``;
3. forward -> logits (1, num_labels); softmax in float32; the ``top_k`` largest with their
   names from ``config.json``'s ``id2label``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from course_lib.image_processing import ImageProcessorConfig, load_image, preprocess

__all__ = ["classify_image", "image_processor_config"]

PREPROCESSOR_FILE = "preprocessor_config.json"


def image_processor_config(model: nn.Module, processor=None) -> ImageProcessorConfig:
    """The preprocessing of ``model``: ``processor`` when given (an ``ImageProcessorConfig``, a dict as in
    ``preprocessor_config.json``, that file's path or a folder holding it), else the
    ``preprocessor_config.json`` in the folder ``load_model`` read the model from.

    A model built in memory (or a folder without the file) gets a ``FileNotFoundError`` naming the fix.
    """
    if processor is not None:
        if isinstance(processor, ImageProcessorConfig):
            return processor
        if isinstance(processor, dict):
            return ImageProcessorConfig.from_dict(processor, where="processor=")
        if isinstance(processor, (str, os.PathLike)):
            return ImageProcessorConfig.from_file(processor)
        raise TypeError(f"processor= must be an ImageProcessorConfig, a dict of preprocessor_config.json's fields, "
                        f"or the path of such a file (or of its folder), got {type(processor).__name__}")
    folder = getattr(model, "source_folder", None)
    if folder is None:
        raise FileNotFoundError(
            f"this {type(model).__name__} was not loaded with load_model, so there is no folder to find its "
            f"{PREPROCESSOR_FILE} in (how to resize and normalise a picture for it). Pass processor= (the file's "
            f"path, its folder, or a dict such as course_lib.image_data.DIGITS_PREPROCESSOR), or load the model "
            f"with load_model(folder) from a folder that holds {PREPROCESSOR_FILE}")
    path = Path(folder) / PREPROCESSOR_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {PREPROCESSOR_FILE}, so how a picture must be resized and normalised for this model "
            f"is unknown. Download it with the model (`python -m course_lib.download MODEL` fetches it; "
            f"`hf download MODEL {PREPROCESSOR_FILE}`), copy it into the folder, or pass processor= (its path "
            f"or a dict of its fields)")
    return ImageProcessorConfig.from_file(path)


def _image_model(model) -> nn.Module:
    """A loaded model, or ``load_model(model)`` for a source; checked to be an image classifier."""
    if isinstance(model, (str, os.PathLike)):
        from course_lib.loading import load_model

        model = load_model(model, task="image-classification")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an image-classification model or a source for load_model (a folder, "
                        f"an asset name such as 'digits-resnet', a Hub id such as 'microsoft/resnet-50'), got "
                        f"{type(model).__name__}")
    config = getattr(model, "config", None)
    architectures = getattr(type(model), "__name__", "")
    if config is None or not architectures.endswith("ForImageClassification"):
        raise TypeError(f"classify_image needs an image classifier (ResNetForImageClassification, "
                        f"ViTForImageClassification), got a {type(model).__name__}: load it with "
                        f"load_model(src, task='image-classification')")
    return model


def classify_image(model, image, top_k: int = 5, processor=None) -> list[tuple[str, float]]:
    """The ``top_k`` most probable classes of one picture: ``[(label, probability), ...]``, most probable first.

    ``model``: an image classifier (``load_model(...)``), or its source (a folder, a course asset
    name, a Hub id), loaded here. ``image``: a file path, a Pillow image, or a uint8 array
    (H, W[, C]) (``image_processing.load_image``: made RGB, EXIF orientation applied).
    ``processor``: the preprocessing (see ``image_processor_config``; default the model's own
    ``preprocessor_config.json``). ``top_k``: an int >= 1; more than the model's classes gives
    them all (as the ``transformers`` pipeline does).

    Probabilities are the softmax over all classes (float32, as Python floats), so the ``top_k``
    of them sum to at most 1; labels are ``config.json``'s ``id2label`` names.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1 (how many classes to return), got {top_k!r}")
    if isinstance(image, (list, tuple)):
        raise TypeError(f"classify_image takes one picture, got a {type(image).__name__} of {len(image)}: call it "
                        f"once per picture")
    model = _image_model(model)
    config = image_processor_config(model, processor)
    pixel_values = preprocess(load_image(image), config)  # (1, 3, H, W) float32
    if not pixel_values.is_floating_point():
        raise ValueError("the preprocessor config neither rescales nor normalises (do_rescale and do_normalize are "
                         "false): the model needs float pixel values; fix preprocessor_config.json")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(pixel_values)  # (1, num_labels)
    finally:
        model.train(was_training)
    probabilities = torch.softmax(logits.float(), dim=-1)[0]  # (num_labels,)
    names = model.config.id2label
    if len(names) != probabilities.numel():
        raise ValueError(f"config.json's id2label names {len(names)} classes but the model outputs "
                         f"{probabilities.numel()} logits: the config does not belong to these weights")
    top = torch.topk(probabilities, min(top_k, probabilities.numel()))
    return [(names[int(i)], float(p)) for p, i in zip(top.values, top.indices)]
