"""course_lib.classify_image (chapter 10): a picture in, the top-k labels with probabilities out, offline on the
course's digit models; the Hub's microsoft/resnet-50 is known to the downloader (its cell needs the network)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import course_lib
from course_lib import classify_image, image_data, load_model
from course_lib import download, hub
from course_lib.assets import asset_path
from course_lib.image_processing import ImageProcessorConfig, preprocess
from course_lib.vision_training import build_model, read_results


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """A test digit both shipped models classify correctly (results.json), saved as a PNG: (path, label, picture)."""
    results = read_results()
    wrong = {i for m in results["models"].values() for i in m["test"]["misclassified"] + m["int8"]["misclassified"]}
    test = image_data.load_split("test")
    position = next(i for i in range(len(test)) if i not in wrong and test.labels[i] == 7)
    picture, label = test[position]
    path = tmp_path_factory.mktemp("digit") / "seven.png"
    picture.save(path)
    return path, str(label), picture


@pytest.mark.parametrize("asset", ["digits-resnet", "digits-vit"])
def test_a_held_out_digit_saved_as_png_gets_the_right_label_first(held_out, asset):
    path, label, picture = held_out
    top = classify_image(asset, path)  # the source: loaded, its preprocessor_config.json found beside config.json
    assert len(top) == 5 and top[0][0] == label == "7"
    probabilities = [p for _, p in top]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
    assert all(isinstance(name, str) and name in image_data.LABEL2ID for name, _ in top)
    assert len({name for name, _ in top}) == 5
    # the pipeline written out: the model's preprocessing, forward, softmax, top-k
    model = load_model(asset_path(asset))
    config = ImageProcessorConfig.from_file(asset_path(asset) / "preprocessor_config.json")
    with torch.no_grad():
        probs = torch.softmax(model(preprocess(picture, config)), dim=-1)[0]
    assert [(image_data.ID2LABEL[int(i)], float(p)) for p, i in zip(*torch.topk(probs, 5))] == top
    # a loaded model, a Pillow image, a uint8 array: the same answer
    assert classify_image(model, picture) == top
    assert classify_image(model, np.array(picture)) == top
    everything = classify_image(model, path, top_k=50)  # more than the classes: all of them (as transformers)
    assert len(everything) == 10 and abs(sum(p for _, p in everything) - 1) < 1e-5


@pytest.mark.parametrize("quantize", ["int8", "int4"])
@pytest.mark.parametrize("asset", ["digits-resnet", "digits-vit"])
def test_quantized_models_classify_the_digit_too(held_out, asset, quantize):
    path, label, _ = held_out
    model = load_model(asset, quantize=quantize)  # int4: Linears only (every width a multiple of 32)
    top = classify_image(model, path, top_k=3)
    assert top[0][0] == label and len(top) == 3


def test_classify_image_is_exported_lazily():
    assert "classify_image" in course_lib.__all__ and course_lib.classify_image is classify_image


def test_a_model_without_a_preprocessor_config_gets_an_error_naming_the_fix(held_out, tmp_path):
    path, label, _ = held_out
    in_memory = build_model("resnet", seed=0)
    with pytest.raises(FileNotFoundError, match="not loaded with load_model.*Pass processor="):
        classify_image(in_memory, path)
    top = classify_image(in_memory, path, processor=image_data.DIGITS_PREPROCESSOR)  # untrained, but it runs
    assert len(top) == 5
    folder = tmp_path / "no-preprocessor"
    shutil.copytree(asset_path("digits-vit"), folder)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no preprocessor_config.json.*processor="):
        classify_image(str(folder), path)
    assert classify_image(str(folder), path, processor=asset_path("digits-vit"))[0][0] == label


def test_bad_arguments_get_clear_errors(held_out):
    path, _, _ = held_out
    model = load_model("digits-resnet")
    for top_k in (0, -1, 2.5, "5", True):
        with pytest.raises(ValueError, match="top_k must be an int >= 1"):
            classify_image(model, path, top_k=top_k)
    with pytest.raises(TypeError, match="one picture"):
        classify_image(model, [path, path])
    with pytest.raises(TypeError, match="needs an image classifier"):
        classify_image(torch.nn.Linear(2, 2), path)
    with pytest.raises(TypeError, match="image-classification model or a source"):
        classify_image(42, path)
    with pytest.raises(FileNotFoundError, match="no image file"):
        classify_image(model, path.parent / "missing.png")
    with pytest.raises(TypeError, match="processor= must be"):
        classify_image(model, path, processor=3)


def test_resnet_50_is_known_to_the_downloader_with_its_preprocessor_config(monkeypatch):
    assert "microsoft/resnet-50" in download.COURSE_MODELS
    assert "preprocessor_config.json" in hub.DEFAULT_FILES  # python -m course_lib.download fetches it
    asked = []

    def fake_resolve(src, revision=None, filenames=None):
        asked.append(filenames)
        return asset_path("digits-resnet")

    monkeypatch.setattr(hub, "resolve_source", fake_resolve)
    model = load_model("microsoft/resnet-50")
    assert "preprocessor_config.json" in asked[0]  # load_model asks the Hub for it with the weights
    assert model.source_folder == asset_path("digits-resnet")


def test_resnet_50_offline_without_a_cache_names_the_download(held_out, monkeypatch, tmp_path):
    path, _, _ = held_out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(hub.HubError, match="course_lib.download microsoft/resnet-50"):
        classify_image("microsoft/resnet-50", path)


def test_a_convnext_style_preprocessor_as_microsoft_resnet_50_publishes(held_out, tmp_path):
    """resnet-50's preprocessor_config.json (shortest edge 256 * crop 224, ImageNet mean/std) on a course model."""
    path, _, picture = held_out
    folder = tmp_path / "resnet-50-like"
    shutil.copytree(asset_path("digits-resnet"), folder)
    resnet50 = {"crop_pct": 0.875, "do_normalize": True, "do_resize": True, "image_processor_type":
                "ConvNextImageProcessor", "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
                "resample": 3, "size": {"shortest_edge": 224}}
    (folder / "preprocessor_config.json").write_text(json.dumps(resnet50))
    model = load_model(folder)
    top = classify_image(model, path)
    with torch.no_grad():
        logits = model(preprocess(picture, ImageProcessorConfig.from_dict(resnet50)))
    assert tuple(preprocess(picture, ImageProcessorConfig.from_dict(resnet50)).shape) == (1, 3, 224, 224)
    assert top[0] == (image_data.ID2LABEL[int(logits.argmax())], pytest.approx(float(logits.softmax(-1).max())))
