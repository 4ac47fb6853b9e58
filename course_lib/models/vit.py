"""Chapter 10: the Vision Transformer (ViT): an image is a sequence of patches, and then it is chapter 04.

Hold ``transformers/models/vit/modeling_vit.py`` beside this file. The attribute names are
the keys ``google/vit-base-patch16-224``'s ``model.safetensors`` holds (and ``save_pretrained``
of ``transformers``' ``ViTForImageClassification`` writes)::

    vit.embeddings.cls_token                          (1, 1, C)
    vit.embeddings.position_embeddings                (1, 1 + N, C)
    vit.embeddings.patch_embeddings.projection.weight (C, channels, P, P)  + .bias (C,)
    vit.encoder.layer.N.layernorm_before              LayerNorm before attention (pre-LN)
    vit.encoder.layer.N.attention.attention.query/key/value
    vit.encoder.layer.N.attention.output.dense
    vit.encoder.layer.N.layernorm_after               LayerNorm before the feed-forward block
    vit.encoder.layer.N.intermediate.dense / output.dense
    vit.layernorm                                     after the last layer (pre-LN models need one)
    vit.pooler.dense                                  only in checkpoints that have one
    classifier                                        (num_labels, C)

What is new compared with chapter 04 is only the input: no vocabulary, no token ids. The
image (B, channels, H, W) is cut into N = (H / P) * (W / P) squares of P x P pixels; each
square, flattened, goes through one linear map to C numbers: a "token" (``patchify`` +
``Linear``, or the same thing as one strided convolution). A learned ``[CLS]`` vector is put
in front, a learned position vector added to every token, and chapter 04's encoder layers
(here in pre-LN order) mix the tokens. The classifier reads the ``[CLS]`` token's final vector.

Shapes: B batch, channels image channels (3), H x W pixels, P patch size, N patches,
T = 1 + N tokens, C hidden size, Hd heads. Every tensor is float (the weights' dtype).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.layers import ACTIVATIONS, Dropout, LayerNorm, Linear, activation
from course_lib.models.base import CourseModel, PretrainedConfig
from course_lib.models.encoder import Intermediate, SelfAttention
from course_lib.vision import check_image_batch, conv2d

__all__ = [
    "ViTConfig", "patch_conv", "patchify", "unpatchify", "PatchProjection", "ViTPatchEmbeddings",
    "interpolate_positions", "ViTEmbeddings", "ViTSelfAttention", "ViTSelfOutput", "ViTAttention", "ViTOutput",
    "ViTLayer", "ViTEncoder", "ViTPooler", "check_pixel_values", "ViTModel", "ViTForImageClassification",
]


@dataclasses.dataclass
class ViTConfig(PretrainedConfig):
    """``config.json`` of a ViT checkpoint; defaults: ``transformers``' ``ViTConfig`` (= google/vit-base-patch16-224).

    ``id2label`` / ``num_labels`` are the classifier's classes (``PretrainedConfig.num_labels``);
    keys the model does not use (``encoder_stride``, ``label2id`` ...) are kept in ``extra``.
    """

    model_type: str = "vit"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True
    pooler_output_size: int | None = None  # None: hidden_size
    pooler_act: str = "tanh"

    def validate(self) -> None:
        if self.num_attention_heads < 1 or self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.patch_size >= 1 and self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}: "
                             f"the image must cut into whole patches (e.g. 224 = 14 x 16)")
        for name in ("hidden_act", "pooler_act"):
            if name == "pooler_act" and self.pooler_act == "tanh":
                continue
            try:
                activation(getattr(self, name))
            except ValueError as err:
                known = ", ".join(sorted(ACTIVATIONS) + (["tanh"] if name == "pooler_act" else []))
                raise ValueError(f"{name}: {err.args[0].split(';')[0]}; known names: {known}") from None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def grid_size(self) -> int:
        """Patches along each side of the training image: 224 / 16 = 14."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """N, the patch tokens of a training-size image: 14 * 14 = 196 for vit-base-patch16-224."""
        return self.grid_size ** 2


# --------------------------------------------------------------------------------------
# Patches as tokens: one strided convolution = cut into patches + one Linear

def patch_conv(pixel_values: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               patch_size: int) -> torch.Tensor:
    """The convolution of the patch embedding: kernel P x P, stride P (the windows do not overlap).

    pixel_values (B, channels, H, W), weight (C, channels, P, P), bias (C,) -> (B, C, H/P, W/P).
    The one place the model convolves: the course's own ``course_lib.vision.conv2d`` (im2col +
    one matmul, chapter 10), equal to ``torch.nn.functional.conv2d``.
    """
    return conv2d(pixel_values, weight, bias, stride=patch_size)


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping P x P patches, each flattened: (B, ch, H, W) -> (B, N, ch * P * P).

    Patches are numbered row by row (left to right, then down), N = (H / P) * (W / P); each is
    flattened channel-major, (channel, row, column), the order of a conv weight's
    (ch, P, P) dimensions, so ``patchify(x, P) @ weight.reshape(C, -1).T`` is the convolution.
    H and W must be multiples of P. A pure reshape: no copy of values is changed.
    """
    if pixel_values.dim() != 4:
        raise ValueError(f"patchify takes images (batch, channels, height, width), got shape "
                         f"{tuple(pixel_values.shape)}: add a batch dimension with [None] for one image")
    B, ch, H, W = pixel_values.shape
    if H % patch_size or W % patch_size:
        raise ValueError(f"an image of {H} x {W} pixels does not cut into whole {patch_size} x {patch_size} patches: "
                         f"resize or crop it to multiples of {patch_size}")
    gh, gw = H // patch_size, W // patch_size
    x = pixel_values.reshape(B, ch, gh, patch_size, gw, patch_size)  # (B, ch, gh, P, gw, P)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, ch, P, P): patch position first, then its pixels
    return x.reshape(B, gh * gw, ch * patch_size * patch_size)  # (B, N, ch*P*P)


def unpatchify(patches: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """The inverse of ``patchify``: (B, N, ch * P * P) -> (B, ch, height, width) (e.g. to draw patches)."""
    B, N, D = patches.shape
    gh, gw = height // patch_size, width // patch_size
    ch = D // (patch_size * patch_size)
    if gh * gw != N or ch * patch_size * patch_size != D:
        raise ValueError(f"{N} patches of {D} values do not make a {height} x {width} image with patch_size="
                         f"{patch_size}")
    x = patches.reshape(B, gh, gw, ch, patch_size, patch_size).permute(0, 3, 1, 4, 2, 5)  # (B, ch, gh, P, gw, P)
    return x.reshape(B, ch, height, width)


class PatchProjection(nn.Module):
    """The patch embedding's weights, ``weight`` (C, channels, P, P) and ``bias`` (C,), as ``nn.Conv2d`` holds them."""

    def __init__(self, in_channels: int, out_channels: int, patch_size: int, initializer_range: float = 0.02):
        super().__init__()
        self.patch_size = patch_size
        self.initializer_range = initializer_range
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, patch_size, patch_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight.is_meta:  # shapes only: a checkpoint will fill it
            return
        # transformers' ViT init: truncated normal (std initializer_range), bias 0
        nn.init.trunc_normal_(self.weight, std=self.initializer_range)
        nn.init.zeros_(self.bias)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, channels, H, W) -> feature map (B, C, H/P, W/P)."""
        return patch_conv(pixel_values, self.weight, self.bias, self.patch_size)

    def as_linear(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The same map as reshape + linear: (B, channels, H, W) -> (B, N, C), the tokens directly."""
        flat_weight = self.weight.reshape(self.weight.size(0), -1)  # (C, channels*P*P)
        return patchify(pixel_values, self.patch_size) @ flat_weight.T + self.bias  # (B, N, C)

    def extra_repr(self) -> str:
        C, ch, P, _ = self.weight.shape
        return f"{ch}, {C}, kernel_size={P}, stride={P}"


class ViTPatchEmbeddings(nn.Module):
    """Image -> one vector per patch: (B, channels, H, W) -> (B, N, C), patches row by row."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.num_patches = config.num_patches
        self.projection = PatchProjection(config.num_channels, config.hidden_size, config.patch_size,
                                          config.initializer_range)

    def forward(self, pixel_values: torch.Tensor, method: str = "conv") -> torch.Tensor:
        """``method="conv"``: strided conv, then flatten the grid; ``"linear"``: ``patchify`` + matmul. Equal."""
        if method == "linear":
            return self.projection.as_linear(pixel_values)  # (B, N, C)
        if method != "conv":
            raise ValueError(f"method must be 'conv' or 'linear', got {method!r}")
        grid = self.projection(pixel_values)  # (B, C, H/P, W/P)
        return grid.flatten(2).transpose(1, 2)  # (B, N, C): row-major over the grid, as patchify


# --------------------------------------------------------------------------------------
# [CLS] + learned positions (interpolated for another image size)

def interpolate_positions(position_embeddings: torch.Tensor, grid_height: int, grid_width: int) -> torch.Tensor:
    """Resize a learned square grid of patch positions to ``grid_height`` x ``grid_width`` patches, bicubic.

    position_embeddings (1, 1 + n*n, C) -> (1, 1 + grid_height * grid_width, C). The [CLS] row
    has no place in the image and is kept as is; the n x n patch rows are treated as a
    C-channel n x n picture and resized the way ``transformers`` (after DINO) does it
    (``F.interpolate``, bicubic, ``align_corners=False``). A model trained at 224 x 224 can so
    read 384 x 384 images: the neighbouring positions it learned stay neighbours.
    """
    cls_pos, patch_pos = position_embeddings[:, :1], position_embeddings[:, 1:]  # (1, 1, C), (1, n*n, C)
    n = math.isqrt(patch_pos.size(1))
    C = patch_pos.size(-1)
    if n * n != patch_pos.size(1):
        raise ValueError(f"{patch_pos.size(1)} patch positions are not a square grid: cannot interpolate them")
    grid = patch_pos.reshape(1, n, n, C).permute(0, 3, 1, 2)  # (1, C, n, n): a C-channel picture
    grid = F.interpolate(grid, size=(grid_height, grid_width), mode="bicubic", align_corners=False)
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, C)  # (1, gh*gw, C), row by row
    return torch.cat([cls_pos, patch_pos], dim=1)  # (1, 1 + gh*gw, C)


class ViTEmbeddings(nn.Module):
    """pixel_values (B, channels, H, W) -> tokens (B, 1 + N, C): [CLS], patch vectors, + positions, dropout."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        C = config.hidden_size
        self.cls_token = nn.Parameter(torch.empty(1, 1, C))  # one learned vector, the same for every image
        self.patch_embeddings = ViTPatchEmbeddings(config)
        self.position_embeddings = nn.Parameter(torch.empty(1, config.num_patches + 1, C))  # row 0: [CLS]
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.patch_size = config.patch_size
        self.image_size = config.image_size
        self.initializer_range = config.initializer_range
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.cls_token.is_meta:
            return
        nn.init.trunc_normal_(self.cls_token, std=self.initializer_range)
        nn.init.trunc_normal_(self.position_embeddings, std=self.initializer_range)

    def positions(self, height: int, width: int, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """The position vectors for an image of height x width pixels: (1, 1 + N, C).

        The learned table as is when no interpolation is asked, or when it already fits (as
        ``transformers``: the same number of patches and a square image).
        """
        if not interpolate_pos_encoding:
            return self.position_embeddings
        gh, gw = height // self.patch_size, width // self.patch_size
        if gh * gw == self.position_embeddings.size(1) - 1 and height == width:
            return self.position_embeddings
        return interpolate_positions(self.position_embeddings, gh, gw)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False,
                method: str = "conv") -> torch.Tensor:
        B, _, H, W = pixel_values.shape
        patches = self.patch_embeddings(pixel_values, method)  # (B, N, C)
        cls = self.cls_token.expand(B, -1, -1)  # (B, 1, C), no copy
        tokens = torch.cat([cls, patches], dim=1)  # (B, 1 + N, C)
        tokens = tokens + self.positions(H, W, interpolate_pos_encoding)  # (1, 1 + N, C) broadcasts over B
        return self.dropout(tokens)


# --------------------------------------------------------------------------------------
# One pre-LN encoder layer:  a = x + Attn(LN_before(x));  out = a + FFN(LN_after(a))
# The same order as chapter 04's ``pre_ln_layer_forward``; ViT's checkpoints name the two
# LayerNorms ``layernorm_before`` / ``layernorm_after`` and keep them on the layer itself.

class ViTSelfAttention(SelfAttention):
    """Chapter 04's ``SelfAttention`` (query, key, value, heads, scaled dot-product), biases per ``qkv_bias``."""

    def __init__(self, config: ViTConfig):
        super().__init__(config)  # reads hidden_size, num_attention_heads, attention_probs_dropout_prob
        if not config.qkv_bias:
            C = config.hidden_size
            self.query = Linear(C, C, bias=False)
            self.key = Linear(C, C, bias=False)
            self.value = Linear(C, C, bias=False)


class ViTSelfOutput(nn.Module):
    """Attention's output projection + dropout; no residual, no LayerNorm here (pre-LN: the layer adds the residual)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(hidden_states))  # (B, T, C)


class ViTAttention(nn.Module):
    """``attention`` (the heads), then ``output`` (the projection).

    Keys ``attention.attention.query/key/value`` and ``attention.output.dense``.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.attention = ViTSelfAttention(config)
        self.output = ViTSelfOutput(config)

    def forward(self, hidden_states: torch.Tensor, return_weights: bool = False):
        """(B, T, C) -> (B, T, C) [, weights (B, Hd, T, T)]. No mask: every image has all its patches."""
        if return_weights:
            heads, weights = self.attention(hidden_states, None, return_weights=True)
            return self.output(heads), weights
        return self.output(self.attention(hidden_states))


class ViTOutput(nn.Module):
    """Second half of the feed-forward block: intermediate_size -> C, dropout, + the residual (no LayerNorm)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.dense = Linear(config.intermediate_size, config.hidden_size)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return input_tensor + self.dropout(self.dense(hidden_states))  # (B, T, C)


class ViTLayer(nn.Module):
    """One pre-LN layer; ``intermediate`` is chapter 04's ``Intermediate`` (dense C -> 4C, then ``hidden_act``)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.attention = ViTAttention(config)
        self.intermediate = Intermediate(config)
        self.output = ViTOutput(config)
        self.layernorm_before = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, return_weights: bool = False):
        """(B, T, C) -> (B, T, C) [, attention weights (B, Hd, T, T)]."""
        out = self.attention(self.layernorm_before(hidden_states), return_weights)
        attended, weights = out if return_weights else (out, None)
        attended = hidden_states + attended  # residual: the raw stream, never normalised
        widened = self.intermediate(self.layernorm_after(attended))  # (B, T, 4C)
        out = self.output(widened, attended)  # (B, T, C)
        return (out, weights) if return_weights else out


class ViTEncoder(nn.Module):
    """``num_hidden_layers`` layers in turn (keys ``encoder.layer.0`` ... ``encoder.layer.N-1``)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.layer = nn.ModuleList(ViTLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: torch.Tensor, return_weights: bool = False):
        """(B, T, C) -> (B, T, C) [, a list of every layer's weights (B, Hd, T, T)]."""
        all_weights = []
        for layer in self.layer:
            if return_weights:
                hidden_states, weights = layer(hidden_states, True)
                all_weights.append(weights)
            else:
                hidden_states = layer(hidden_states)
        return (hidden_states, all_weights) if return_weights else hidden_states


class ViTPooler(nn.Module):
    """The [CLS] token's final vector through dense + ``pooler_act`` (tanh): (B, T, C) -> (B, pooler_output_size)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.pooler_output_size or config.hidden_size)
        self.activation = torch.tanh if config.pooler_act == "tanh" else activation(config.pooler_act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


# --------------------------------------------------------------------------------------
# Checking the image where it enters the model

def check_pixel_values(pixel_values, config: ViTConfig, interpolate_pos_encoding: bool = False) -> None:
    """``pixel_values`` must be a float tensor (B, num_channels, H, W) with H, W multiples of ``patch_size``,
    and H = W = ``image_size`` unless ``interpolate_pos_encoding``; a clear error naming the fix otherwise.
    Reads only the shape and dtype (no pass over the values)."""
    ch, size, P = config.num_channels, config.image_size, config.patch_size
    expected = f"(batch, {ch}, {size}, {size})"
    check_image_batch(pixel_values, ch, expected)
    shape = tuple(pixel_values.shape)
    H, W = shape[2], shape[3]
    if H % P or W % P:
        raise ValueError(f"pixel_values is {H} x {W} pixels, not a multiple of patch_size={P} on each side: "
                         f"resize or crop the image to {size} x {size} (the image processor does), or to "
                         f"multiples of {P} with interpolate_pos_encoding=True")
    if (H, W) != (size, size) and not interpolate_pos_encoding:
        raise ValueError(f"pixel_values is {H} x {W} pixels, but the model's position embeddings are learned for "
                         f"{size} x {size} (image_size in config.json): resize the image to {size} x {size}, or pass "
                         f"interpolate_pos_encoding=True to interpolate the positions (bicubic) to a "
                         f"{H // P} x {W // P} grid of patches")


# --------------------------------------------------------------------------------------
# The models

class ViTModel(CourseModel):
    """pixel_values (B, channels, H, W) float -> last_hidden_state (B, 1 + N, C) after the final ``layernorm``.

    Token 0 is [CLS]; tokens 1..N the patches, row by row. ``pooler`` (dense + tanh on [CLS])
    only when built with ``add_pooling_layer`` (a checkpoint that has ``pooler.dense``).
    """

    base_model_prefix = "vit"
    unused_checkpoint_prefixes = ("classifier.",)

    def __init__(self, config: ViTConfig, add_pooling_layer: bool = False):
        super().__init__(config)
        self.embeddings = ViTEmbeddings(config)
        self.encoder = ViTEncoder(config)
        self.layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = ViTPooler(config) if add_pooling_layer else None

    @classmethod
    def for_checkpoint(cls, config: ViTConfig, checkpoint_keys) -> "ViTModel":
        """With a pooler exactly when the file has one (a bare ``transformers`` ViTModel saves one by default)."""
        return cls(config, add_pooling_layer=any(k.endswith("pooler.dense.weight") for k in checkpoint_keys))

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False,
                return_attentions: bool = False):
        """pixel_values (B, num_channels, H, W) float -> (B, 1 + N, C) [, every layer's weights (B, Hd, T, T)].

        H = W = ``image_size``, or any multiples of ``patch_size`` with ``interpolate_pos_encoding=True``.
        """
        check_pixel_values(pixel_values, self.config, interpolate_pos_encoding)
        pixel_values = pixel_values.to(self.embeddings.cls_token.dtype)  # as transformers: the weights' dtype
        tokens = self.embeddings(pixel_values, interpolate_pos_encoding)  # (B, 1 + N, C)
        if return_attentions:
            hidden_states, weights = self.encoder(tokens, return_weights=True)
            return self.layernorm(hidden_states), weights
        return self.layernorm(self.encoder(tokens))  # (B, 1 + N, C)


class ViTForImageClassification(CourseModel):
    """pixel_values (B, channels, H, W) float -> logits (B, num_labels): ``classifier`` on the [CLS] token's vector.

    The classes are config.json's ``id2label`` (ImageNet's 1000 for google/vit-base-patch16-224).
    """

    base_model_prefix = "vit"
    unused_checkpoint_prefixes = ("vit.pooler.",)
    head_modules = ("classifier",)

    def __init__(self, config: ViTConfig):
        super().__init__(config)
        self.vit = ViTModel(config, add_pooling_layer=False)
        self.classifier = Linear(config.hidden_size, config.num_labels)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """pixel_values (B, num_channels, H, W) float -> logits (B, num_labels), float."""
        hidden_states = self.vit(pixel_values, interpolate_pos_encoding)  # (B, 1 + N, C), already normalised
        return self.classifier(hidden_states[:, 0])  # (B, num_labels): the [CLS] token only
