"""Chapter 10's Vision Transformer against ``transformers`` on checkpoints in the layout the Hub publishes.

Every checkpoint here is made on the fly: a ``transformers`` ViT with google/vit-base-patch16-224's
published config.json, narrowed for speed (hidden_size 64, 2 layers, 4 heads, intermediate
4 x 64 as published 3072 = 4 x 768, image 32 x 32 with patches of 8, the first 5 ImageNet
classes; every other field as published), random seeded weights (every parameter, LayerNorm
scales included, so a tensor loaded into the wrong place shows), written by ``save_pretrained``
(``model.safetensors`` with the Hub's key names). Our classes read it through the course's
checkpoint helpers (``match_keys`` + ``load_state``), strictly: every key must map 1:1.

Bar: max |Δ| <= 1e-4 (float32, CPU). ``transformers`` is the test-only oracle.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from course_lib.checkpoint import CheckpointReader, load_state, match_keys
from course_lib.models.vit import (ViTConfig, ViTForImageClassification, ViTModel, check_pixel_values,
                                   interpolate_positions, patchify, unpatchify)
from helpers import assert_close

transformers = pytest.importorskip("transformers")

TOL = 1e-4

# google/vit-base-patch16-224's config.json as on the Hub, except its 1000 ImageNet classes (the first 5 here)
VIT_BASE_PATCH16_224 = {
    "_name_or_path": "google/vit-base-patch16-224", "architectures": ["ViTForImageClassification"],
    "attention_probs_dropout_prob": 0.0, "encoder_stride": 16, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
    "hidden_size": 768, "image_size": 224, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-12, "model_type": "vit", "num_attention_heads": 12, "num_channels": 3,
    "num_hidden_layers": 12, "patch_size": 16, "qkv_bias": True, "torch_dtype": "float32",
    "transformers_version": "4.13.0.dev0",
}
IMAGENET_FIRST_5 = ["tench, Tinca tinca", "goldfish, Carassius auratus",
                    "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias",
                    "tiger shark, Galeocerdo cuvieri", "hammerhead, hammerhead shark"]
SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
         "image_size": 32, "patch_size": 8,
         "id2label": {str(i): name for i, name in enumerate(IMAGENET_FIRST_5)},
         "label2id": {name: i for i, name in enumerate(IMAGENET_FIRST_5)}}


# --------------------------------------------------------------------------------------
# Helpers

def hf_config(**overrides):
    values = {k: v for k, v in {**VIT_BASE_PATCH16_224, **SMALL, **overrides}.items()
              if k not in ("_name_or_path", "architectures", "torch_dtype", "transformers_version")}
    return transformers.ViTConfig(**values)


def randomize_hf(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random: LayerNorm scales around 1, [CLS] and positions of order 1 (so that
    interpolating them matters), everything else around 0 (std 0.15: large enough that
    attention is far from uniform and each image gets its own logits). Eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith(("cls_token", "position_embeddings")):
                p.copy_(noise)
            else:
                p.copy_(0.15 * noise)
    return model.eval()


def hf_folder(tmp_path, hf_class, seed: int = 0, attn: str = "sdpa", **overrides):
    """(the transformers model, the folder its save_pretrained wrote)."""
    torch.manual_seed(seed)
    config = hf_config(**overrides)
    config._attn_implementation = attn  # "eager" to get the attention weights back
    model = hf_class(config)
    randomize_hf(model, seed)
    folder = tmp_path / hf_class.__name__
    model.save_pretrained(folder)
    return model, folder


def load_ours(cls, folder):
    """Our model filled from ``folder`` with the course's checkpoint helpers; every key must map 1:1."""
    config = ViTConfig.from_json_file(folder / "config.json")
    with CheckpointReader.from_folder(folder) as reader:
        shapes = reader.shapes()
        with torch.device("meta"):
            model = cls.for_checkpoint(config, shapes)
        report = match_keys(model, shapes)
        assert report.ok, report.problems()
        load_state(model, reader, report)
    model.load_report = report
    return model.eval()


def images(batch: int = 2, size: tuple[int, int] = (32, 32), seed: int = 1) -> torch.Tensor:
    """Normalised-looking pixels (B, 3, H, W), float32."""
    return torch.randn((batch, 3, *size), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def classifier_pair(tmp_path_factory):
    hf, folder = hf_folder(tmp_path_factory.mktemp("vit"), transformers.ViTForImageClassification)
    return hf, load_ours(ViTForImageClassification, folder), folder


# --------------------------------------------------------------------------------------
# Config

def test_config_reads_the_published_fields():
    config = ViTConfig.from_dict({**VIT_BASE_PATCH16_224, **{k: SMALL[k] for k in ("id2label", "label2id")}})
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    assert (config.image_size, config.patch_size, config.num_channels, config.qkv_bias) == (224, 16, 3, True)
    assert config.num_patches == 196 and config.layer_norm_eps == 1e-12 and config.hidden_act == "gelu"
    assert config.num_labels == 5 and config.id2label[1] == "goldfish, Carassius auratus"
    assert config.extra["encoder_stride"] == 16  # kept, written back on save
    defaults = ViTConfig()  # transformers' ViTConfig defaults are vit-base-patch16-224's values
    assert {k: getattr(defaults, k) for k in ("hidden_size", "image_size", "patch_size", "layer_norm_eps",
                                              "hidden_dropout_prob", "qkv_bias")} == \
        {k: VIT_BASE_PATCH16_224[k] for k in ("hidden_size", "image_size", "patch_size", "layer_norm_eps",
                                              "hidden_dropout_prob", "qkv_bias")}


@pytest.mark.parametrize("change, words", [
    ({"num_attention_heads": 5}, "not divisible by num_attention_heads=5"),
    ({"image_size": 30}, "image_size=30 is not a multiple of patch_size=8"),
    ({"hidden_act": "swishy"}, "hidden_act: unknown activation 'swishy'"),
    ({"patch_size": 0}, "patch_size must be at least 1"),
    ({"num_channels": "3"}, "num_channels must be an integer"),
])
def test_config_errors_name_the_field(change, words):
    with pytest.raises(ValueError, match=words):
        ViTConfig.from_dict({**VIT_BASE_PATCH16_224, **SMALL, **change})


# --------------------------------------------------------------------------------------
# Patches as tokens

def test_patchify_numbers_patches_row_by_row_and_inverts():
    x = images(2, (16, 24))
    patches = patchify(x, 8)  # (2, 2*3, 3*8*8)
    assert patches.shape == (2, 6, 192)
    for k in range(6):
        r, c = divmod(k, 3)  # 3 patches per row
        assert torch.equal(patches[:, k], x[:, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8].reshape(2, -1))
    assert torch.equal(unpatchify(patches, 8, 16, 24), x)
    with pytest.raises(ValueError, match="resize or crop it to multiples of 8"):
        patchify(images(1, (16, 20)), 8)
    with pytest.raises(ValueError, match=r"add a batch dimension with \[None\]"):
        patchify(x[0], 8)


def test_patch_embedding_conv_equals_patchify_linear_values_and_gradients():
    config = ViTConfig.from_dict({**VIT_BASE_PATCH16_224, **SMALL})
    torch.manual_seed(0)
    model = ViTModel(config)
    patch_embeddings = model.embeddings.patch_embeddings
    x = images(2, (32, 40)).requires_grad_()
    by_conv = patch_embeddings(x, method="conv")  # (2, 20, 64)
    # torch's own Conv2d with the same weights: the reference for the values and the patch order
    reference = torch.nn.Conv2d(3, 64, 8, stride=8)
    with torch.no_grad():
        reference.weight.copy_(patch_embeddings.projection.weight)
        reference.bias.copy_(patch_embeddings.projection.bias)
    assert_close("conv vs nn.Conv2d", by_conv, reference(x).flatten(2).transpose(1, 2), tol=1e-6)
    by_linear = patch_embeddings(x, method="linear")
    assert by_linear.shape == (2, 20, 64)
    assert_close("patchify + linear vs conv", by_linear, by_conv, tol=1e-5)
    out_grad = torch.randn(by_conv.shape, generator=torch.Generator().manual_seed(3))
    params = [x, patch_embeddings.projection.weight, patch_embeddings.projection.bias]
    grads_conv = torch.autograd.grad(by_conv, params, out_grad)
    grads_linear = torch.autograd.grad(by_linear, params, out_grad)
    for name, a, b in zip(("pixels", "weight", "bias"), grads_linear, grads_conv):
        assert_close(f"grad {name}", a, b, tol=1e-5)
    # the whole model gives the same tokens either way
    with torch.no_grad():
        assert_close("embeddings conv vs linear", model.embeddings(x, True, method="linear"),
                     model.embeddings(x, True, method="conv"), tol=1e-5)


# --------------------------------------------------------------------------------------
# Parity with transformers

def test_image_classification_parity_logits_and_gradients(classifier_pair):
    hf, ours, folder = classifier_pair
    keys = set(CheckpointReader.from_folder(folder).keys())
    assert keys == set(ours.state_dict())  # the Hub's names are our parameter names, 1:1
    assert "vit.encoder.layer.1.attention.attention.query.weight" in keys and not ours.load_report.renamed
    x = images(3)
    x_ours, x_hf = x.clone().requires_grad_(), x.clone().requires_grad_()
    logits = ours(x_ours)
    expected = hf(pixel_values=x_hf).logits
    assert logits.shape == (3, 5)
    assert_close("logits", logits, expected, TOL)
    assert (expected[0] - expected[1]).abs().max() > 0.1  # each image its own logits: the pixels matter
    assert_close("hidden states", ours.vit(x), hf.vit(pixel_values=x).last_hidden_state, TOL)
    logits.square().sum().backward()
    expected.square().sum().backward()
    scale = x_hf.grad.abs().max()  # of order 1 with these weights; compared relative to it
    assert scale > 0.1
    assert_close("d logits / d pixels (relative)", x_ours.grad / scale, x_hf.grad / scale, TOL)
    assert ours.config.id2label[int(logits[0].argmax())] in IMAGENET_FIRST_5


def test_bare_model_with_pooler_parity(tmp_path):
    hf, folder = hf_folder(tmp_path, transformers.ViTModel, seed=4)  # transformers' ViTModel saves a pooler
    ours = load_ours(ViTModel, folder)
    assert ours.pooler is not None
    x = images(2, seed=5)
    expected = hf(pixel_values=x)
    with torch.no_grad():
        hidden = ours(x)
        assert hidden.shape == (2, 1 + 16, 64)
        assert_close("last_hidden_state", hidden, expected.last_hidden_state, TOL)
        assert_close("pooler_output", ours.pooler(hidden), expected.pooler_output, TOL)


def test_bare_model_loads_from_a_classification_checkpoint(classifier_pair):
    hf, _, folder = classifier_pair
    bare = load_ours(ViTModel, folder)  # 'vit.' stripped, the classifier skipped
    assert bare.pooler is None and set(bare.load_report.skipped) == {"classifier.weight", "classifier.bias"}
    x = images(1, seed=6)
    with torch.no_grad():
        assert_close("bare from classifier file", bare(x), hf.vit(pixel_values=x).last_hidden_state, TOL)


@pytest.mark.parametrize("size", [(48, 48), (48, 40), (16, 32)])
def test_interpolate_pos_encoding_parity_at_another_image_size(classifier_pair, size):
    hf, ours, _ = classifier_pair
    x = images(2, size, seed=7)
    with torch.no_grad():
        logits = ours(x, interpolate_pos_encoding=True)
        expected = hf(pixel_values=x, interpolate_pos_encoding=True).logits
        assert_close(f"logits at {size}", logits, expected, TOL)
        # the test can fail: bilinear positions (not transformers' bicubic) give other logits
        table = ours.vit.embeddings.position_embeddings
        gh, gw = size[0] // 8, size[1] // 8
        cls_pos, grid = table[:, :1], table[:, 1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
        bilinear = F.interpolate(grid, size=(gh, gw), mode="bilinear", align_corners=False)
        bilinear = torch.cat([cls_pos, bilinear.permute(0, 2, 3, 1).reshape(1, gh * gw, 64)], dim=1)
        assert (bilinear - interpolate_positions(table, gh, gw)).abs().max() > 1e-3


def test_interpolation_at_the_training_size_is_the_learned_table(classifier_pair):
    _, ours, _ = classifier_pair
    table = ours.vit.embeddings.position_embeddings
    assert ours.vit.embeddings.positions(32, 32, interpolate_pos_encoding=True) is table
    assert_close("bicubic to the same grid", interpolate_positions(table, 4, 4), table, tol=1e-5)


def test_qkv_bias_false_parity(tmp_path):
    hf, folder = hf_folder(tmp_path, transformers.ViTForImageClassification, seed=8, qkv_bias=False)
    ours = load_ours(ViTForImageClassification, folder)
    assert ours.vit.encoder.layer[0].attention.attention.query.bias is None
    x = images(2, seed=9)
    with torch.no_grad():
        assert_close("logits, qkv_bias=False", ours(x), hf(pixel_values=x).logits, TOL)


def test_attention_weights_parity(tmp_path):
    hf, folder = hf_folder(tmp_path, transformers.ViTModel, seed=10, attn="eager")
    ours = load_ours(ViTModel, folder)
    x = images(1, seed=11)
    with torch.no_grad():
        hidden, weights = ours(x, return_attentions=True)
        expected = hf(pixel_values=x, output_attentions=True).attentions
    assert len(weights) == len(expected) == 2 and weights[0].shape == (1, 4, 17, 17)
    for i, (a, b) in enumerate(zip(weights, expected)):
        assert_close(f"attention weights layer {i}", a, b, TOL)
    assert_close("hidden with weights", hidden, ours(x), tol=0)


def test_save_pretrained_loads_in_transformers(classifier_pair, tmp_path):
    _, ours, _ = classifier_pair
    folder = ours.save_pretrained(tmp_path / "ours")
    saved = json.loads((folder / "config.json").read_text())
    assert saved["model_type"] == "vit" and saved["architectures"] == ["ViTForImageClassification"]
    hf = transformers.ViTForImageClassification.from_pretrained(folder).eval()
    x = images(2, seed=12)
    with torch.no_grad():
        assert_close("transformers on our save", hf(pixel_values=x).logits, ours(x), TOL)


def test_pixels_take_the_weights_dtype(classifier_pair):
    _, ours, _ = classifier_pair
    double = copy.deepcopy(ours).double()
    x = images(2, seed=13)  # float32 pixels into a float64 model: cast at the entry, as transformers does
    with torch.no_grad():
        logits = double(x)
        assert logits.dtype == torch.float64
        assert_close("float64 vs float32 model", logits, ours(x), TOL)


def test_same_seed_same_model():
    config = ViTConfig.from_dict({**VIT_BASE_PATCH16_224, **SMALL})
    torch.manual_seed(0)
    a = ViTForImageClassification(config)
    torch.manual_seed(0)
    b = ViTForImageClassification(config)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.vit.embeddings.position_embeddings.std() < 0.05  # truncated normal, std initializer_range


# --------------------------------------------------------------------------------------
# Bad input: a clear error that names the fix

@pytest.mark.parametrize("pixels, kwargs, error, words", [
    (torch.randn(1, 3, 48, 48), {}, ValueError, "interpolate_pos_encoding=True"),
    (torch.randn(1, 1, 32, 32), {}, ValueError, "1 channels .* expects 3 .*grayscale.*convert it to RGB"),
    (torch.randn(1, 32, 32, 3), {}, ValueError, r"channels-last.*permute\(0, 3, 1, 2\)"),
    (torch.randn(1, 4, 32, 32), {}, ValueError, "4 channels .* expects 3"),
    (torch.randn(3, 32, 32), {}, ValueError, r"without a batch dimension.*pixel_values\[None\]"),
    (torch.randn(32, 32), {}, ValueError, "must be 4-D"),
    (torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8), {}, TypeError, "must be float.*rescale"),
    ([[0.0]], {}, TypeError, "must be a torch.Tensor"),
    (torch.randn(1, 3, 36, 36), {"interpolate_pos_encoding": True}, ValueError, "not a multiple of patch_size=8"),
])
def test_bad_pixel_values_name_the_fix(classifier_pair, pixels, kwargs, error, words):
    _, ours, _ = classifier_pair
    with pytest.raises(error, match=words):
        ours(pixels, **kwargs)


def test_checks_read_no_values_and_accept_good_input(classifier_pair):
    _, ours, _ = classifier_pair
    check_pixel_values(torch.empty(2, 3, 32, 32, device="meta"), ours.config)  # metadata only
    check_pixel_values(torch.empty(2, 3, 64, 48, device="meta"), ours.config, interpolate_pos_encoding=True)
    with pytest.raises(ValueError, match="method must be 'conv' or 'linear'"):
        ours.vit.embeddings.patch_embeddings(images(1), method="fft")


def test_load_model_dispatches_on_model_type_vit(classifier_pair, tmp_path):
    """``load_model`` reads model_type "vit": auto = image-classification, "base", a new head, int8."""
    from course_lib import load_model

    hf, _, folder = classifier_pair
    x = images()
    with torch.no_grad():
        reference = hf(pixel_values=x).logits
        auto = load_model(folder)
        assert isinstance(auto, ViTForImageClassification)
        assert (auto(x) - reference).abs().max().item() <= 1e-4
        assert tuple(load_model(folder, task="base")(x).shape) == (2, 1 + (32 // 8) ** 2, 64)
        quantized = load_model(folder, quantize="int8")
        assert (quantized(x) - reference).abs().max().item() < 0.05  # int8 weights: close, not equal
    torch.manual_seed(0)
    _, base = hf_folder(tmp_path, transformers.ViTModel, seed=3)  # a bare ViT: no classifier in the file
    new_head = load_model(base, task="image-classification", id2label=["cat", "dog"])
    assert sorted(new_head.load_report.initialised) == ["classifier.bias", "classifier.weight"]
    assert tuple(new_head(x).shape) == (2, 2)
