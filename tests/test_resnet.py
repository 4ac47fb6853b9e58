"""Chapter 10's ResNet against ``transformers`` on checkpoints in the layout the Hub publishes.

Every checkpoint here is made on the fly: a ``transformers`` ResNet with microsoft/resnet-50's or
microsoft/resnet-18's published config.json, narrowed for speed (smaller ``hidden_sizes`` and
``depths``, the first 5 ImageNet classes; ``layer_type`` and every other field as published),
random seeded weights *and* random BatchNorm running statistics (so a BN loaded into the wrong
place, or used in training mode, shows), written by ``save_pretrained``. Our classes read it
through the course's checkpoint helpers (``match_keys`` + ``load_state``), strictly: every key
maps 1:1. Images are 32 x 32 (the convolutions and the adaptive pool take any size).

Bar: max |Δ| <= 1e-4 (float32, CPU). ``transformers`` is the test-only oracle. torchvision does not
install here: its layout is written by hand below from its documented module names.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from course_lib.checkpoint import CheckpointReader, load_state, match_keys
from course_lib.models.resnet import (ResNetConfig, ResNetForImageClassification, ResNetModel,
                                      config_from_torchvision, torchvision_to_hub, torchvision_to_hub_key)

transformers = pytest.importorskip("transformers")

TOL = 1e-4

IMAGENET_FIRST_5 = ["tench, Tinca tinca", "goldfish, Carassius auratus",
                    "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias",
                    "tiger shark, Galeocerdo cuvieri", "hammerhead, hammerhead shark"]
LABELS = {"id2label": {str(i): name for i, name in enumerate(IMAGENET_FIRST_5)},
          "label2id": {name: i for i, name in enumerate(IMAGENET_FIRST_5)}}

# The published config.json fields (less their 1000 ImageNet classes)
RESNET_50 = {
    "architectures": ["ResNetForImageClassification"], "depths": [3, 4, 6, 3], "downsample_in_first_stage": False,
    "embedding_size": 64, "hidden_act": "relu", "hidden_sizes": [256, 512, 1024, 2048], "layer_type": "bottleneck",
    "model_type": "resnet", "num_channels": 3, "torch_dtype": "float32", "transformers_version": "4.18.0.dev0",
}
RESNET_18 = {
    "architectures": ["ResNetForImageClassification"], "depths": [2, 2, 2, 2], "downsample_in_first_stage": False,
    "embedding_size": 64, "hidden_act": "relu", "hidden_sizes": [64, 128, 256, 512], "layer_type": "basic",
    "model_type": "resnet", "num_channels": 3, "torch_dtype": "float32", "transformers_version": "4.18.0.dev0",
}
# Narrowed for speed: widths / 8 (bottleneck widths stay multiples of 4), fewer blocks; >= 2 blocks in
# some stages so the identity-shortcut blocks are exercised too.
SHRINK = {
    "resnet-50": {"hidden_sizes": [32, 64, 128, 256], "depths": [2, 2, 1, 1], "embedding_size": 8},
    "resnet-18": {"hidden_sizes": [8, 16, 32, 64], "depths": [2, 1, 2, 1], "embedding_size": 8},
}
PUBLISHED = {"resnet-50": RESNET_50, "resnet-18": RESNET_18}


# --------------------------------------------------------------------------------------
# Helpers

def hf_config(name: str, **overrides):
    values = {k: v for k, v in {**PUBLISHED[name], **SHRINK[name], **LABELS, **overrides}.items()
              if k not in ("architectures", "torch_dtype", "transformers_version")}
    return transformers.ResNetConfig(**values)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and BN statistic random, scaled so activations stay of order 1 through the
    stages (convs ~ N(0, 1 / fan_in), BN scales 0.4..0.8, running means ~ N(0, 0.2²), running variances
    0.5..1.5): errors of float32 rounding stay far below the bar, a misplaced tensor does not. Eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("num_batches_tracked"):
                t.fill_(int(torch.randint(1, 1000, (), generator=g)))
            elif t.dim() == 4:  # conv weight
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(t[0].numel()))
            elif name.endswith("running_mean"):
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
            elif name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.dim() == 1 and name.endswith("weight"):  # BN scales (Linear weights are 2-D, convs 4-D)
                t.copy_(0.4 + 0.4 * torch.rand(t.shape, generator=g))
            else:  # BN shifts, classifier
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
    return model.eval()


def hf_folder(tmp_path, hf_class, name: str, seed: int = 0, **overrides):
    """(the transformers model, the folder its save_pretrained wrote)."""
    torch.manual_seed(seed)
    model = randomize(hf_class(hf_config(name, **overrides)), seed)
    folder = tmp_path / f"{hf_class.__name__}-{name}-{seed}"
    model.save_pretrained(folder)
    return model, folder


def load_ours(cls, folder):
    """Our model filled from ``folder`` with the course's checkpoint helpers; every key must map 1:1."""
    config = ResNetConfig.from_json_file(folder / "config.json")
    with CheckpointReader.from_folder(folder) as reader:
        shapes = reader.shapes()
        with torch.device("meta"):
            model = cls.for_checkpoint(config, shapes)
        report = match_keys(model, shapes)
        assert report.ok, report.problems()
        assert not report.skipped, report.skipped  # 1:1: nothing in the file is left out
        assert set(report.loaded) == set(model.state_dict()), "a tensor of ours was not in the file"
        load_state(model, reader, report)
    return model.eval()


def images(batch: int = 2, size: tuple[int, int] = (32, 32), seed: int = 1) -> torch.Tensor:
    """Normalised-looking pixels (B, 3, H, W), float32."""
    return torch.randn((batch, 3, *size), generator=torch.Generator().manual_seed(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# --------------------------------------------------------------------------------------
# Config

@pytest.mark.parametrize("name", ["resnet-50", "resnet-18"])
def test_config_reads_the_published_fields(name):
    published = PUBLISHED[name]
    config = ResNetConfig.from_dict({**published, **LABELS})
    for field in ("depths", "hidden_sizes", "layer_type", "embedding_size", "downsample_in_first_stage",
                  "hidden_act", "num_channels"):
        assert getattr(config, field) == published[field], field
    assert config.downsample_in_bottleneck is False  # not in the published files: transformers' default
    assert config.num_labels == 5 and config.id2label[1] == "goldfish, Carassius auratus"
    assert config.extra["architectures"] == ["ResNetForImageClassification"]  # kept, written back on save
    assert config.to_dict()["hidden_sizes"] == published["hidden_sizes"]


def test_config_defaults_are_transformers_defaults():
    ours, theirs = ResNetConfig(), transformers.ResNetConfig()
    for field in ("num_channels", "embedding_size", "hidden_sizes", "depths", "layer_type", "hidden_act",
                  "downsample_in_first_stage", "downsample_in_bottleneck"):
        mine, published = getattr(ours, field), getattr(theirs, field)
        if field in ("hidden_sizes", "depths"):  # transformers keeps a tuple default for depths
            mine, published = list(mine), list(published)
        assert mine == published, field


@pytest.mark.parametrize("change, words", [
    ({"layer_type": "preact"}, "layer_type='preact' is not one of 'basic'"),
    ({"depths": [2, 2, 2]}, "hidden_sizes has 4 stages but depths has 3"),
    ({"hidden_sizes": [64, 0, 256, 512]}, "hidden_sizes must be a non-empty list of positive integers"),
    ({"depths": "3,4,6,3"}, "depths must be a non-empty list"),
    ({"hidden_act": "swishy"}, "hidden_act: unknown activation 'swishy'"),
    ({"embedding_size": 0}, "embedding_size must be at least 1"),
    ({"num_channels": "3"}, "num_channels must be an integer"),
    ({"layer_type": "bottleneck", "hidden_sizes": [2, 8, 16, 32]}, "at least 4"),
])
def test_config_errors_name_the_field(change, words):
    with pytest.raises(ValueError, match=words):
        ResNetConfig.from_dict({**RESNET_18, **change})


# --------------------------------------------------------------------------------------
# Keys: the full-size models have exactly the Hub's tensors, shape for shape

@pytest.mark.parametrize("name", ["resnet-50", "resnet-18"])
def test_full_size_state_dict_is_the_hubs(name):
    hf_cfg = transformers.ResNetConfig(**{k: v for k, v in PUBLISHED[name].items()
                                          if k not in ("architectures", "torch_dtype", "transformers_version")},
                                       num_labels=1000)
    with torch.device("meta"):
        theirs = transformers.ResNetForImageClassification(hf_cfg)
        ours = ResNetForImageClassification(ResNetConfig.from_dict({**PUBLISHED[name], "num_labels": 1000}))
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(ours) == shapes(theirs)
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())
    assert ours.num_parameters() == {"resnet-50": 25_557_032, "resnet-18": 11_689_512}[name]  # as published


# --------------------------------------------------------------------------------------
# Parity on the Hub's layout

VARIANTS = [
    ("resnet-50", {}),
    ("resnet-18", {}),
    ("resnet-50", {"downsample_in_bottleneck": True}),  # stride in the first 1 x 1 conv (the paper's layout)
    ("resnet-50", {"downsample_in_first_stage": True}),
    ("resnet-18", {"downsample_in_first_stage": True}),
]


@pytest.mark.parametrize("name, overrides", VARIANTS)
def test_classifier_logits_match_transformers(tmp_path, name, overrides):
    hf, folder = hf_folder(tmp_path, transformers.ResNetForImageClassification, name, **overrides)
    ours = load_ours(ResNetForImageClassification, folder)
    x = images(3)
    with torch.no_grad():
        expected, got = hf(x).logits, ours(x)
    assert got.shape == (3, 5) and got.dtype == torch.float32
    assert expected.abs().max() > 0.1 and (expected[0] - expected[1]).abs().max() > 1e-2  # not a degenerate check
    assert max_diff(got, expected) <= TOL
    assert ours.config.id2label[int(got[0].argmax())] == hf.config.id2label[int(expected[0].argmax())]


@pytest.mark.parametrize("name", ["resnet-50", "resnet-18"])
def test_base_model_matches_transformers_stage_by_stage(tmp_path, name):
    hf, folder = hf_folder(tmp_path, transformers.ResNetModel, name, seed=3)
    ours = load_ours(ResNetModel, folder)
    x = images(2, (40, 36), seed=4)  # not square, not a power of 2: the padding and pooling rounding matter
    with torch.no_grad():
        expected = hf(x, output_hidden_states=True)
        got = ours(x, output_hidden_states=True)
    hidden = SHRINK[name]["hidden_sizes"][-1]
    assert got.last_hidden_state.shape == (2, hidden, 2, 2) and got.pooler_output.shape == (2, hidden, 1, 1)
    assert max_diff(got.last_hidden_state, expected.last_hidden_state) <= TOL
    assert max_diff(got.pooler_output, expected.pooler_output) <= TOL
    assert len(got.hidden_states) == len(expected.hidden_states) == 5  # stem + 4 stages
    for mine, theirs in zip(got.hidden_states, expected.hidden_states):
        assert max_diff(mine, theirs) <= TOL
    plain = ours(x)  # without output_hidden_states
    assert plain.hidden_states is None and torch.equal(plain.pooler_output, got.pooler_output)


def test_a_classifier_file_loads_into_the_bare_model(tmp_path):
    """A ResNetForImageClassification file fills ResNetModel; its classifier is skipped, and said so."""
    hf, folder = hf_folder(tmp_path, transformers.ResNetForImageClassification, "resnet-18")
    config = ResNetConfig.from_json_file(folder / "config.json")
    with CheckpointReader.from_folder(folder) as reader:
        with torch.device("meta"):
            model = ResNetModel(config)
        report = match_keys(model, reader.shapes())
        assert report.ok and set(report.skipped) == {"classifier.1.weight", "classifier.1.bias"}
        load_state(model, reader, report)
    x = images(1)
    with torch.no_grad():
        assert max_diff(model.eval()(x).pooler_output, hf.resnet(x).pooler_output) <= TOL


def test_training_mode_and_gradients_match_transformers(tmp_path):
    """In train mode BN normalises with the batch's statistics and updates the running ones; the loss's
    gradients reach every parameter as in transformers. In float64: with a batch of 4 and the last
    stages at 2 x 2 and 1 x 1 pixels, BN's batch statistics come from 4-16 numbers, and float32
    rounding in them grows to ~1e-4 of the stem's gradient in either implementation."""
    hf, folder = hf_folder(tmp_path, transformers.ResNetForImageClassification, "resnet-50", seed=5)
    ours = load_ours(ResNetForImageClassification, folder)
    # load_state may leave tensors memory-mapped from the file: give ours its own trainable copies
    ours.load_state_dict({k: v.clone() for k, v in ours.state_dict().items()}, assign=True)
    hf.double().train(), ours.double().train()
    x, labels = images(4, seed=6).double(), torch.tensor([0, 1, 2, 3])
    loss_hf = nn.functional.cross_entropy(hf(x).logits, labels)
    loss_ours = nn.functional.cross_entropy(ours(x), labels)
    assert abs(loss_hf.item() - loss_ours.item()) <= TOL
    loss_hf.backward(), loss_ours.backward()
    theirs = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, name
        scale = max(1.0, theirs[name].grad.abs().max().item())
        assert max_diff(p.grad, theirs[name].grad) <= TOL * scale, name
    for name, b in ours.named_buffers():
        assert max_diff(b.float(), dict(hf.named_buffers())[name].float()) <= TOL, name


def test_save_pretrained_round_trip_loads_in_transformers(tmp_path):
    _, folder = hf_folder(tmp_path, transformers.ResNetForImageClassification, "resnet-18", seed=7)
    ours = load_ours(ResNetForImageClassification, folder)
    out = ours.save_pretrained(tmp_path / "ours")
    again = transformers.ResNetForImageClassification.from_pretrained(out).eval()
    x = images(2, seed=8)
    with torch.no_grad():
        assert max_diff(again(x).logits, ours(x)) <= TOL
    assert again.config.id2label[4] == "hammerhead, hammerhead shark"


# --------------------------------------------------------------------------------------
# Bad input

@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return randomize(ResNetForImageClassification(ResNetConfig.from_dict({**RESNET_18, **SHRINK["resnet-18"],
                                                                         **LABELS})))


@pytest.mark.parametrize("make, error, words", [
    (lambda: images(1)[0], ValueError, r"without a batch dimension.*unsqueeze\(0\)"),
    (lambda: images(1).permute(0, 2, 3, 1), ValueError, r"channels-last.*permute\(0, 3, 1, 2\)"),
    (lambda: images(1)[:, :1], ValueError, "grayscale image: convert it to RGB"),
    (lambda: (images(1) * 50 + 128).to(torch.uint8), TypeError, "must be float"),
    (lambda: images(1).numpy(), TypeError, "must be a torch.Tensor"),
    (lambda: images(1)[None], ValueError, "must be 4-D"),
    (lambda: torch.zeros(0, 3, 32, 32), ValueError, "empty batch"),
])
def test_bad_pixel_values_get_a_clear_error(small_model, make, error, words):
    with pytest.raises(error, match=words):
        small_model(make())


def test_any_image_size_and_dtype_of_the_weights(small_model):
    with torch.no_grad():
        assert small_model(images(1, (7, 9))).shape == (1, 5)  # tiny images still reach a 1 x 1 map
        assert small_model(images(2).double()).dtype == torch.float32  # cast to the weights' dtype


# --------------------------------------------------------------------------------------
# torchvision's layout, written by hand from torchvision.models.resnet's module names

class TVBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TVBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # torchvision: stride in the 3 x 3
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TVResNet(nn.Module):
    """torchvision.models.ResNet's structure (conv1, bn1, maxpool, layer1..4, avgpool, fc), width ``base``."""

    def __init__(self, block, layers, num_classes=5, base=64):
        super().__init__()
        self.inplanes = base
        self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, blocks in enumerate(layers):
            setattr(self, f"layer{i + 1}", self._make_layer(block, base * 2 ** i, blocks, 1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(base * 2 ** (len(layers) - 1) * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


# Keys of torchvision's resnet18().state_dict() (its documentation / model card), a sample
TORCHVISION_RESNET18_KEYS = {
    "conv1.weight": "resnet.embedder.embedder.convolution.weight",
    "bn1.running_var": "resnet.embedder.embedder.normalization.running_var",
    "layer1.0.conv1.weight": "resnet.encoder.stages.0.layers.0.layer.0.convolution.weight",
    "layer1.1.bn2.num_batches_tracked": "resnet.encoder.stages.0.layers.1.layer.1.normalization.num_batches_tracked",
    "layer2.0.downsample.0.weight": "resnet.encoder.stages.1.layers.0.shortcut.convolution.weight",
    "layer4.0.downsample.1.bias": "resnet.encoder.stages.3.layers.0.shortcut.normalization.bias",
    "layer4.1.conv2.weight": "resnet.encoder.stages.3.layers.1.layer.1.convolution.weight",
    "fc.weight": "classifier.1.weight",
    "fc.bias": "classifier.1.bias",
}


def test_torchvision_keys_map_to_the_hubs():
    for tv, hub in TORCHVISION_RESNET18_KEYS.items():
        assert torchvision_to_hub_key(tv) == hub
    with pytest.raises(ValueError, match="already"):
        torchvision_to_hub_key("resnet.embedder.embedder.convolution.weight")


@pytest.mark.parametrize("block, layers, name", [(TVBasicBlock, [2, 1, 2, 1], "resnet-18"),
                                                  (TVBottleneck, [2, 2, 1, 1], "resnet-50")])
def test_torchvision_layout_loads_into_the_same_class(block, layers, name):
    torch.manual_seed(0)
    tv = randomize(TVResNet(block, layers, base=8), seed=9)
    state = tv.state_dict()
    config = config_from_torchvision(state, id2label=IMAGENET_FIRST_5)
    assert config.layer_type == PUBLISHED[name]["layer_type"] and config.depths == layers
    assert config.hidden_sizes == SHRINK[name]["hidden_sizes"] and config.embedding_size == 8
    assert config.id2label[0] == "tench, Tinca tinca"
    ours = ResNetForImageClassification(config)
    converted = torchvision_to_hub(state)
    assert set(converted) == set(ours.state_dict())  # 1:1
    ours.load_state_dict(converted, strict=True)
    x = images(2, seed=10)
    with torch.no_grad():
        expected = tv.eval()(x)
        assert expected.abs().max() > 0.1
        assert max_diff(ours.eval()(x), expected) <= TOL


def test_config_from_torchvision_rejects_other_layouts():
    with pytest.raises(ValueError, match="no 'conv1.weight'"):
        config_from_torchvision({"resnet.embedder.embedder.convolution.weight": torch.zeros(1)})


def test_load_model_dispatches_on_model_type_resnet(tmp_path):
    """``load_model`` reads model_type "resnet": auto = image-classification, "base", int8, a new head."""
    from course_lib import load_model

    hf, folder = hf_folder(tmp_path, transformers.ResNetForImageClassification, "resnet-18")
    x = images()
    with torch.no_grad():
        reference = hf(pixel_values=x).logits
        auto = load_model(folder)
        assert isinstance(auto, ResNetForImageClassification)
        assert max_diff(auto(x), reference) <= 1e-4
        assert isinstance(load_model(folder, task="base"), ResNetModel)
        assert max_diff(load_model(folder, quantize="int8")(x), reference) < 0.1  # int8 weights: close, not equal
    torch.manual_seed(0)
    _, bare = hf_folder(tmp_path / "bare", transformers.ResNetModel, "resnet-18", seed=2)
    new_head = load_model(bare, task="image-classification", id2label=["cat", "dog"])
    assert sorted(new_head.load_report.initialised) == ["classifier.1.bias", "classifier.1.weight"]
    with torch.no_grad():
        assert tuple(new_head(x).shape) == (2, 2)
