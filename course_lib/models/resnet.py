"""Chapter 10: ResNet: convolutions with a shortcut around every pair (or triple) of them.

Hold ``transformers/models/resnet/modeling_resnet.py`` beside this file. The attribute names
are the keys ``microsoft/resnet-50``'s ``model.safetensors`` holds (and ``save_pretrained`` of
``transformers``' ``ResNetForImageClassification`` writes)::

    resnet.embedder.embedder.convolution.weight          (E, channels, 7, 7)  the stem, stride 2
    resnet.embedder.embedder.normalization.*             BatchNorm: weight, bias, running_mean/var, ...
    resnet.encoder.stages.N.layers.M.shortcut.convolution.weight   1 x 1 projection (first block of a stage)
    resnet.encoder.stages.N.layers.M.shortcut.normalization.*
    resnet.encoder.stages.N.layers.M.layer.K.convolution.weight    K = 0, 1 (basic) or 0, 1, 2 (bottleneck)
    resnet.encoder.stages.N.layers.M.layer.K.normalization.*
    classifier.1.weight / .bias                          (num_labels, C) — ``classifier.0`` is a Flatten

The stem (7 x 7 conv, stride 2, BN, ReLU, 3 x 3 max pool, stride 2) shrinks the image 4x.
Then ``len(depths)`` stages; stage N has ``depths[N]`` blocks and ``hidden_sizes[N]`` output
channels, and every stage after the first halves the height and width in its first block
(the first one only with ``downsample_in_first_stage``: the stem has already shrunk it).

A block computes ``relu(F(x) + shortcut(x))``: ``F`` is two 3 x 3 convs ("basic", ResNet-18/34)
or 1 x 1 (narrow to C/4) -> 3 x 3 -> 1 x 1 (widen to C) ("bottleneck", ResNet-50 and up);
the last BN has no ReLU before the sum. ``shortcut`` is the identity, or a 1 x 1 conv + BN
where the block changes the width or the resolution. The stride sits in the 3 x 3 conv of a
bottleneck (the "v1.5" layout of torchvision and the Hub), in its first 1 x 1 conv with
``downsample_in_bottleneck`` (the original paper's layout).

Shapes: B batch, channels image channels (3), H x W pixels, E ``embedding_size``, C a stage's
width (``hidden_sizes[-1]`` at the end). Every tensor is float (the weights' dtype).
Layers: ``course_lib.vision`` (Conv2d, BatchNorm2d, MaxPool2d, AdaptiveAvgPool2d), equal to torch's.
"""

from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple

import torch
from torch import nn

from course_lib.layers import ACTIVATIONS, Linear, activation
from course_lib.models.base import CourseModel, PretrainedConfig
from course_lib.vision import AdaptiveAvgPool2d, BatchNorm2d, Conv2d, MaxPool2d, check_image_batch

__all__ = [
    "ResNetConfig", "ResNetConvLayer", "ResNetEmbeddings", "ResNetShortCut", "ResNetBasicLayer",
    "ResNetBottleNeckLayer", "ResNetStage", "ResNetEncoder", "ResNetOutput", "check_resnet_pixel_values",
    "ResNetModel", "ResNetForImageClassification", "torchvision_to_hub_key", "torchvision_to_hub",
    "config_from_torchvision",
]

LAYER_TYPES = ("basic", "bottleneck")


@dataclasses.dataclass
class ResNetConfig(PretrainedConfig):
    """``config.json`` of a ResNet checkpoint; defaults: ``transformers``' ``ResNetConfig`` (= microsoft/resnet-50).

    ``id2label`` / ``num_labels`` are the classifier's classes (``PretrainedConfig.num_labels``);
    keys the model does not use (``out_features``, ``stage_names`` ...) are kept in ``extra``.
    """

    model_type: str = "resnet"
    num_channels: int = 3
    embedding_size: int = 64
    hidden_sizes: list = dataclasses.field(default_factory=lambda: [256, 512, 1024, 2048])
    depths: list = dataclasses.field(default_factory=lambda: [3, 4, 6, 3])
    layer_type: str = "bottleneck"
    hidden_act: str = "relu"
    downsample_in_first_stage: bool = False
    downsample_in_bottleneck: bool = False

    def validate(self) -> None:
        for name in ("hidden_sizes", "depths"):
            value = getattr(self, name)
            if (not isinstance(value, (list, tuple)) or not value
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
                raise ValueError(f"{name} must be a non-empty list of positive integers (one per stage), "
                                 f"got {value!r}")
        if len(self.hidden_sizes) != len(self.depths):
            raise ValueError(f"hidden_sizes has {len(self.hidden_sizes)} stages but depths has {len(self.depths)}: "
                             f"give one width and one block count per stage (resnet-50: hidden_sizes "
                             f"[256, 512, 1024, 2048], depths [3, 4, 6, 3])")
        if self.layer_type not in LAYER_TYPES:
            raise ValueError(f"layer_type={self.layer_type!r} is not one of 'basic' (ResNet-18/34) or "
                             f"'bottleneck' (ResNet-50 and up)")
        if self.layer_type == "bottleneck":
            narrow = [c for c in self.hidden_sizes if c < 4]
            if narrow:
                raise ValueError(f"hidden_sizes {self.hidden_sizes}: a bottleneck block narrows a stage's width "
                                 f"by 4 (reduction), so every width must be at least 4; got {narrow}")
        try:
            activation(self.hidden_act)
        except ValueError as err:
            raise ValueError(f"hidden_act: {err.args[0].split(';')[0]}; known names: "
                             f"{', '.join(sorted(ACTIVATIONS))}") from None
        self.hidden_sizes, self.depths = list(self.hidden_sizes), list(self.depths)


# --------------------------------------------------------------------------------------
# The pieces

class ResNetConvLayer(nn.Module):
    """conv (no bias, padding ``kernel_size // 2``) -> BatchNorm -> activation (None: none).

    (B, C_in, H, W) -> (B, C_out, H / stride, W / stride) (rounded up). Keys ``convolution``, ``normalization``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 activation_name: str | None = "relu"):
        super().__init__()
        self.convolution = Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                  padding=kernel_size // 2, bias=False)
        self.normalization = BatchNorm2d(out_channels)
        self.activation_name = activation_name
        self.activation = activation(activation_name) if activation_name is not None else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = self.normalization(self.convolution(hidden_states))
        return out if self.activation is None else self.activation(out)

    def extra_repr(self) -> str:
        return f"activation={self.activation_name}"


class ResNetEmbeddings(nn.Module):
    """The stem: 7 x 7 conv stride 2 + BN + act, then 3 x 3 max pool stride 2.

    (B, channels, H, W) -> (B, E, H', W') with H' = ceil(ceil(H / 2) / 2): 224 -> 112 -> 56.
    """

    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.embedder = ResNetConvLayer(config.num_channels, config.embedding_size, kernel_size=7, stride=2,
                                        activation_name=config.hidden_act)
        self.pooler = MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.pooler(self.embedder(pixel_values))


class ResNetShortCut(nn.Module):
    """The projection shortcut: 1 x 1 conv (stride ``stride``, no bias) + BN, no activation.

    (B, C_in, H, W) -> (B, C_out, H / stride, W / stride): makes x the shape of F(x) so they add.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        self.convolution = Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)
        self.normalization = BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalization(self.convolution(x))


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """A projection where the width or the resolution changes, else the identity (no weights)."""
    if in_channels != out_channels or stride != 1:
        return ResNetShortCut(in_channels, out_channels, stride)
    return nn.Identity()


class ResNetBasicLayer(nn.Module):
    """ResNet-18/34's block: ``act(BN(conv3x3(act(BN(conv3x3_stride(x))))) + shortcut(x))``.

    (B, C_in, H, W) -> (B, C_out, H / stride, W / stride); keys ``shortcut``, ``layer.0``, ``layer.1``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, activation_name: str = "relu"):
        super().__init__()
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.layer = nn.Sequential(
            ResNetConvLayer(in_channels, out_channels, stride=stride, activation_name=activation_name),
            ResNetConvLayer(out_channels, out_channels, activation_name=None),  # activation after the sum
        )
        self.activation = activation(activation_name)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.layer(hidden_states) + self.shortcut(hidden_states))


class ResNetBottleNeckLayer(nn.Module):
    """ResNet-50's block: 1 x 1 to C_out / ``reduction`` -> 3 x 3 -> 1 x 1 back to C_out, plus the shortcut.

    (B, C_in, H, W) -> (B, C_out, H / stride, W / stride). The stride sits in the 3 x 3 conv
    (``layer.1``), or in the first 1 x 1 conv (``layer.0``) with ``downsample_in_bottleneck``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, activation_name: str = "relu",
                 reduction: int = 4, downsample_in_bottleneck: bool = False):
        super().__init__()
        narrow = out_channels // reduction  # resnet-50's first stage: 256 // 4 = 64
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.layer = nn.Sequential(
            ResNetConvLayer(in_channels, narrow, kernel_size=1, stride=stride if downsample_in_bottleneck else 1,
                            activation_name=activation_name),
            ResNetConvLayer(narrow, narrow, kernel_size=3, stride=1 if downsample_in_bottleneck else stride,
                            activation_name=activation_name),
            ResNetConvLayer(narrow, out_channels, kernel_size=1, activation_name=None),
        )
        self.activation = activation(activation_name)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.layer(hidden_states) + self.shortcut(hidden_states))


class ResNetStage(nn.Module):
    """``depth`` blocks (keys ``layers.0`` ...); only the first changes the width and uses ``stride``.

    (B, C_in, H, W) -> (B, C_out, H / stride, W / stride).
    """

    def __init__(self, config: ResNetConfig, in_channels: int, out_channels: int, stride: int = 2, depth: int = 2):
        super().__init__()
        act = config.hidden_act
        if config.layer_type == "bottleneck":
            first = ResNetBottleNeckLayer(in_channels, out_channels, stride, act,
                                          downsample_in_bottleneck=config.downsample_in_bottleneck)
            rest = [ResNetBottleNeckLayer(out_channels, out_channels, 1, act) for _ in range(depth - 1)]
        else:
            first = ResNetBasicLayer(in_channels, out_channels, stride, act)
            rest = [ResNetBasicLayer(out_channels, out_channels, 1, act) for _ in range(depth - 1)]
        self.layers = nn.Sequential(first, *rest)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layers(hidden_states)


class ResNetEncoder(nn.Module):
    """The stages in turn (keys ``stages.0`` ...): (B, E, H, W) -> (B, hidden_sizes[-1], H / 2^k, W / 2^k).

    k = ``len(depths) - 1``, plus one with ``downsample_in_first_stage``.
    """

    def __init__(self, config: ResNetConfig):
        super().__init__()
        widths = [config.embedding_size] + list(config.hidden_sizes)
        self.stages = nn.ModuleList(
            ResNetStage(config, widths[n], widths[n + 1],
                        stride=(2 if config.downsample_in_first_stage else 1) if n == 0 else 2, depth=depth)
            for n, depth in enumerate(config.depths))

    def forward(self, hidden_states: torch.Tensor, output_hidden_states: bool = False):
        """(B, E, H, W) -> last (B, C, h, w) [, (the input and every stage's output)]."""
        all_states = [hidden_states]
        for stage in self.stages:
            hidden_states = stage(hidden_states)
            all_states.append(hidden_states)
        return (hidden_states, tuple(all_states)) if output_hidden_states else hidden_states


# --------------------------------------------------------------------------------------
# Checking the image where it enters the model

def check_resnet_pixel_values(pixel_values, config: ResNetConfig) -> None:
    """``pixel_values`` must be a float tensor (B, num_channels, H, W); a clear error naming the fix otherwise.

    Any H, W >= 1 work (the convolutions pad and the final pool is adaptive); the published
    models were trained on 224 x 224. Reads only the shape and dtype.
    """
    ch = config.num_channels
    expected = f"(batch, {ch}, height, width)"
    check_image_batch(pixel_values, ch, expected)
    shape = tuple(pixel_values.shape)
    if shape[0] == 0 or shape[2] == 0 or shape[3] == 0:
        raise ValueError(f"pixel_values has shape {shape}: an empty batch or an image of 0 pixels")


# --------------------------------------------------------------------------------------
# The models

class ResNetOutput(NamedTuple):
    """What ``ResNetModel`` returns (the order of ``transformers``' ``return_dict=False`` tuple)."""

    last_hidden_state: torch.Tensor  # (B, C, h, w): the last stage's feature maps
    pooler_output: torch.Tensor  # (B, C, 1, 1): their average over h x w
    hidden_states: tuple | None = None  # stem output + every stage's, with output_hidden_states=True


class ResNetModel(CourseModel):
    """pixel_values (B, channels, H, W) float -> ``ResNetOutput(last_hidden_state (B, C, h, w), pooler_output
    (B, C, 1, 1))`` with C = ``hidden_sizes[-1]``, h = H / 32 for the published configs (224 -> 7)."""

    base_model_prefix = "resnet"
    unused_checkpoint_prefixes = ("classifier.",)

    def __init__(self, config: ResNetConfig):
        super().__init__(config)
        self.embedder = ResNetEmbeddings(config)
        self.encoder = ResNetEncoder(config)
        self.pooler = AdaptiveAvgPool2d((1, 1))

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> ResNetOutput:
        """pixel_values (B, num_channels, H, W) float -> ResNetOutput (float, the weights' dtype)."""
        check_resnet_pixel_values(pixel_values, self.config)
        # the stem's BatchNorm scale, not its conv weight: an int8 model (quantize_model) keeps int8 filters
        weight = self.embedder.embedder.normalization.weight
        pixel_values = pixel_values.to(device=weight.device, dtype=weight.dtype)
        stem = self.embedder(pixel_values)  # (B, E, H/4, W/4)
        if output_hidden_states:
            last, states = self.encoder(stem, output_hidden_states=True)
            return ResNetOutput(last, self.pooler(last), states)
        last = self.encoder(stem)  # (B, C, h, w)
        return ResNetOutput(last, self.pooler(last))


class ResNetForImageClassification(CourseModel):
    """pixel_values (B, channels, H, W) float -> logits (B, num_labels): ``classifier`` on the pooled features.

    ``classifier`` is (Flatten, Linear) so that the Linear's keys are ``classifier.1.*`` as on the Hub;
    the classes are config.json's ``id2label`` (ImageNet's 1000 for microsoft/resnet-50).
    """

    base_model_prefix = "resnet"
    head_modules = ("classifier",)

    def __init__(self, config: ResNetConfig):
        super().__init__(config)
        self.resnet = ResNetModel(config)
        self.classifier = nn.Sequential(nn.Flatten(), Linear(config.hidden_sizes[-1], config.num_labels))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, num_channels, H, W) float -> logits (B, num_labels), float."""
        pooled = self.resnet(pixel_values).pooler_output  # (B, C, 1, 1)
        return self.classifier(pooled)  # (B, num_labels)


# --------------------------------------------------------------------------------------
# torchvision / timm's layout -> the Hub's

_TV_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_TV_RULES = (
    (re.compile(r"^conv1\.weight$"), lambda m: "resnet.embedder.embedder.convolution.weight"),
    (re.compile(rf"^bn1\.{_TV_BN}$"), lambda m: f"resnet.embedder.embedder.normalization.{m[1]}"),
    (re.compile(r"^layer(\d+)\.(\d+)\.conv(\d+)\.weight$"),
     lambda m: f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.convolution.weight"),
    (re.compile(rf"^layer(\d+)\.(\d+)\.bn(\d+)\.{_TV_BN}$"),
     lambda m: f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.normalization.{m[4]}"),
    (re.compile(r"^layer(\d+)\.(\d+)\.downsample\.0\.weight$"),
     lambda m: f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.convolution.weight"),
    (re.compile(rf"^layer(\d+)\.(\d+)\.downsample\.1\.{_TV_BN}$"),
     lambda m: f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.normalization.{m[3]}"),
    (re.compile(r"^fc\.(weight|bias)$"), lambda m: f"classifier.1.{m[1]}"),
)


def torchvision_to_hub_key(key: str) -> str:
    """One torchvision/timm ResNet key -> the Hub's: ``layer1.0.conv1.weight`` ->
    ``resnet.encoder.stages.0.layers.0.layer.0.convolution.weight``; ``fc.weight`` -> ``classifier.1.weight``.

    torchvision numbers stages ``layer1..4`` and convs ``conv1..3`` from 1, the Hub from 0;
    torchvision's ``downsample`` (Sequential conv, BN) is the Hub's ``shortcut``.
    A ``ValueError`` for a key that is not part of a torchvision ResNet.
    """
    for pattern, rename in _TV_RULES:
        found = pattern.match(key)
        if found:
            return rename(found)
    raise ValueError(f"{key!r} is not a key of a torchvision/timm ResNet (conv1, bn1, layerN.M.convK/bnK/"
                     f"downsample.0/1, fc); is this file in the Hub's layout already (keys 'resnet.…')?")


def torchvision_to_hub(state_dict: dict) -> dict:
    """A torchvision/timm ResNet state dict (keys ``conv1.weight``, ``layer1.0.bn1.running_mean``, ``fc.bias``)
    -> the same tensors (not copied) under the Hub's keys, which ``ResNetForImageClassification`` has."""
    converted = {}
    for key, tensor in state_dict.items():
        new = torchvision_to_hub_key(key)
        if new in converted:
            raise ValueError(f"two keys map to {new!r}; the state dict mixes layouts")
        converted[new] = tensor
    return converted


def config_from_torchvision(state_dict: dict, id2label=None) -> ResNetConfig:
    """The ``ResNetConfig`` a torchvision/timm ResNet state dict describes, read from its shapes.

    ``layer_type``: "bottleneck" when blocks have a ``conv3``; ``depths``: blocks per ``layerN``;
    ``hidden_sizes``: each stage's output width; ``num_labels``: rows of ``fc.weight`` (names from
    ``id2label`` if given). torchvision puts a bottleneck's stride in its 3 x 3 conv (the Hub's
    default, ``downsample_in_bottleneck=False``) and does not downsample in the first stage.
    """
    for needed in ("conv1.weight", "layer1.0.conv1.weight", "fc.weight"):
        if needed not in state_dict:
            raise ValueError(f"not a torchvision/timm ResNet state dict: it has no {needed!r}")
    stem = state_dict["conv1.weight"]  # (E, channels, 7, 7)
    bottleneck = "layer1.0.conv3.weight" in state_dict
    last_conv = "conv3" if bottleneck else "conv2"
    depths, hidden_sizes = [], []
    stage = 1
    while f"layer{stage}.0.conv1.weight" in state_dict:
        blocks = {int(k.split(".")[1]) for k in state_dict if k.startswith(f"layer{stage}.")}
        depths.append(max(blocks) + 1)
        hidden_sizes.append(int(state_dict[f"layer{stage}.0.{last_conv}.weight"].shape[0]))
        stage += 1
    config = ResNetConfig.from_dict({
        "model_type": "resnet", "num_channels": int(stem.shape[1]), "embedding_size": int(stem.shape[0]),
        "hidden_sizes": hidden_sizes, "depths": depths, "layer_type": "bottleneck" if bottleneck else "basic",
        "hidden_act": "relu", "downsample_in_first_stage": False, "downsample_in_bottleneck": False,
        "architectures": ["ResNetForImageClassification"]})
    num_labels = int(state_dict["fc.weight"].shape[0])
    config.set_labels(num_labels=None if id2label is not None else num_labels, id2label=id2label)
    if config.num_labels != num_labels:
        raise ValueError(f"id2label names {config.num_labels} classes but fc.weight has {num_labels} rows")
    return config
