"""Chapter 08: model surgery — change a trained model's shape and keep what it learned.

Two operations that ``transformers.PreTrainedModel`` offers beyond loading, done on the
course's models:

- ``resize_token_embeddings(model, n)``: after adding tokens to a tokenizer, give the
  embedding table ``n`` rows. Old rows are kept; new rows start as the **mean** of the old
  ones. A tied output head (GPT-2's ``lm_head``, the masked-LM decoder) follows the table
  because it *is* the table; the masked-LM head's per-token bias is resized beside it.
- ``prune_heads(model, {layer: [heads]})``: delete attention heads. Head h of a layer owns
  features h*D .. (h+1)*D - 1 of q, k and v and the same columns of the output
  projection, so removing it removes those rows and columns; nothing else changes, and
  the pruned model computes exactly what the full one computes with those heads' outputs
  set to zero (``mask_heads``). ``config.pruned_heads`` records it, so a saved model
  reloads with its smaller shapes.

``head_importance`` measures how much the loss rises when each head is masked on its own,
and ``least_important_heads`` picks which to prune. Shapes: L layers, H heads per layer
(before pruning), D = C / H features per head, V vocabulary.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from course_lib import layers
from course_lib.models.base import CourseModel
from course_lib.models.encoder import Attention, BertModel
from course_lib.models.gpt2 import GPT2Attention, GPT2Model, PrunedGPT2Attention

__all__ = ["input_embeddings", "mean_resized_rows", "resize_token_embeddings", "attention_blocks", "kept_features",
           "prune_linear", "prune_attention_heads", "prune_attention_state", "prune_heads", "mask_heads", "head_importance",
           "least_important_heads"]

# Where a bare model keeps its token embeddings: BERT/RoBERTa, GPT-2
_INPUT_EMBEDDINGS = ("embeddings.word_embeddings", "wte")


# --------------------------------------------------------------------------------------
# Resizing the vocabulary

def input_embeddings(model: CourseModel) -> tuple[str, nn.Module]:
    """(name, module) of ``model``'s token-embedding table, e.g. ("bert.embeddings.word_embeddings", Embedding)."""
    base = model.base_model
    prefix = "" if base is model else model.base_model_prefix + "."
    for name in _INPUT_EMBEDDINGS:
        try:
            return prefix + name, base.get_submodule(name)
        except AttributeError:
            continue
    raise TypeError(f"{type(model).__name__} has no token-embedding table where the course's models keep one "
                    f"({' or '.join(_INPUT_EMBEDDINGS)})")


def mean_resized_rows(weight: torch.Tensor, n: int) -> torch.Tensor:
    """(V, C) -> (n, C): the first min(V, n) rows kept; each added row the mean of the V old rows.

    The mean is taken in float32 and cast back to ``weight``'s dtype, as ``transformers``
    does. Why the mean: a new token's output score is then the average of the old scores
    (logits are dot products with these rows), so until it is trained it neither takes
    over the predictions nor gets a random direction (Hewitt 2021, "Initializing new word
    embeddings for pretrained language models").
    """
    old_n, width = weight.shape
    kept = weight.detach()[:n]
    if n <= old_n:
        return kept.clone()
    mean = weight.detach().to(torch.float32).mean(dim=0)  # (C,)
    added = mean[None, :].repeat(n - old_n, 1).to(weight.dtype)  # (n - V, C)
    return torch.cat([kept, added])  # (n, C)


def resize_token_embeddings(model: CourseModel, new_num_tokens: int) -> nn.Module:
    """Give ``model``'s token embeddings ``new_num_tokens`` rows, in place; returns the embedding module.

    Growing: rows 0 .. V-1 are kept, new rows are the mean of the old rows. Shrinking:
    the last rows are dropped (their tokens must no longer occur). A tied output head
    stays tied (it is the same Parameter, now (n, C)); an output bias with one entry
    per token (``model.vocab_biases``: the masked-LM head's) keeps its entries and gets
    0 for the new ones; ``config.vocab_size`` becomes ``new_num_tokens``. A
    ``padding_idx`` beyond the new table is dropped.

    ``transformers`` 5.23 (``PreTrainedModel.resize_token_embeddings``, ``mean_resizing=True``,
    its default) does the same, except that when the old rows' covariance is positive
    definite it *samples* each new row from N(mean, 1e-9 * covariance) instead of taking
    the mean: a perturbation of about 3e-5 standard deviations, drawn from the global RNG.
    Here the new rows are exactly the mean, so the result needs no seed. Its new
    masked-LM bias entries are 0 as here: it re-ties the decoder's bias to the head's
    bias and pads it with zeros. Resize before quantizing: a quantized table has no
    float rows to average.
    """
    if isinstance(new_num_tokens, bool) or not isinstance(new_num_tokens, int) or new_num_tokens < 1:
        raise ValueError(f"new_num_tokens must be a positive integer (the tokenizer's len()), got {new_num_tokens!r}")
    name, table = input_embeddings(model)
    if not isinstance(table, layers.Embedding):
        raise TypeError(f"{name} is a {type(table).__name__}, not an Embedding with float rows: resize the "
                        f"embeddings before quantizing (load without quantize=, resize, save, reload quantized)")
    old_weight = table.weight
    with torch.no_grad():
        table.weight = nn.Parameter(mean_resized_rows(old_weight, new_num_tokens),
                                    requires_grad=old_weight.requires_grad)
        table.num_embeddings = new_num_tokens
        if table.padding_idx is not None and table.padding_idx >= new_num_tokens:
            table.padding_idx = None
        for key in getattr(model, "vocab_biases", ()):
            module_path, _, bias_name = key.rpartition(".")
            owner = model.get_submodule(module_path)
            bias = getattr(owner, bias_name)
            resized = torch.zeros(new_num_tokens, dtype=bias.dtype, device=bias.device)  # new tokens: 0
            keep = min(bias.numel(), new_num_tokens)
            resized[:keep] = bias.detach()[:keep]
            setattr(owner, bias_name, nn.Parameter(resized, requires_grad=bias.requires_grad))
    for key in getattr(model, "tied_weights", {}):  # the heads that are the table: their size attribute
        head = model.get_submodule(key.rpartition(".")[0])
        if hasattr(head, "out_features"):
            head.out_features = new_num_tokens
    model.tie_weights()  # the head's weight becomes the new Parameter
    model.config.vocab_size = new_num_tokens
    return table


# --------------------------------------------------------------------------------------
# Pruning attention heads

def attention_blocks(model: CourseModel) -> list[nn.Module]:
    """Every layer's attention block, layer 0 first: ``Attention`` (BERT/RoBERTa) or ``GPT2Attention``."""
    base = model.base_model
    if isinstance(base, BertModel):
        return [layer.attention for layer in base.encoder.layer]
    if isinstance(base, GPT2Model):
        return [block.attn for block in base.h]
    raise TypeError(f"{type(model).__name__}: head pruning and masking know the course's encoder (BERT/RoBERTa) "
                    f"and GPT-2")


def _heads_now(block: nn.Module) -> int:
    return block.self.num_attention_heads if isinstance(block, Attention) else block.n_head


def _output_projection(block: nn.Module) -> nn.Module:
    """The Linear that mixes the heads' outputs back into C features (its input columns are per head)."""
    return block.output.dense if isinstance(block, Attention) else block.c_proj


def kept_features(pruned: set[int], heads: Iterable[int], num_heads: int, head_dim: int) -> torch.Tensor:
    """Positions of the features that stay when ``heads`` are removed from a block, int64 (H' * D,).

    Heads are numbered as in the unpruned model (0 .. ``num_heads`` - 1); ``pruned`` are
    those already gone, so the block now holds the others, in order, D features each.
    """
    present = [h for h in range(num_heads) if h not in pruned]  # original numbers, in the block's order
    drop = set(heads)
    positions = [i for i, h in enumerate(present) if h not in drop]
    return (torch.tensor(positions, dtype=torch.long)[:, None] * head_dim
            + torch.arange(head_dim)[None, :]).reshape(-1)  # (H' * D,)


def prune_linear(linear: nn.Module, index: torch.Tensor, dim: int) -> None:
    """Keep only entries ``index`` of ``linear``'s outputs (dim=0: weight rows and bias) or inputs (dim=1), in place.

    The module keeps its class (a fused layer stays fused); the new weight is contiguous.
    """
    if not isinstance(linear, layers.Linear):
        raise TypeError(f"cannot prune a {type(linear).__name__}: prune heads before quantizing the model")
    weight = linear.weight
    index = index.to(weight.device)
    with torch.no_grad():
        linear.weight = nn.Parameter(weight.detach().index_select(dim, index).contiguous(),
                                     requires_grad=weight.requires_grad)
        if dim == 0 and linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias.detach().index_select(0, index).contiguous(),
                                       requires_grad=linear.bias.requires_grad)
    if dim == 0:
        linear.out_features = index.numel()
    else:
        linear.in_features = index.numel()


def prune_attention_heads(block: nn.Module, heads: Iterable[int], num_heads: int) -> None:
    """Remove ``heads`` (numbered as in the unpruned block, which had ``num_heads``) from one attention block.

    Encoder (``Attention``): rows of ``self.query``, ``self.key``, ``self.value`` and
    columns of ``output.dense``. GPT-2 (``GPT2Attention``): the fused ``c_attn`` holds q,
    k, v one after the other, so the same rows go from each third, and columns of
    ``c_proj``; the block becomes a ``PrunedGPT2Attention`` (it cuts q, k, v at H' * D).
    Heads already pruned are skipped. The block's head count and ``pruned_heads`` (a set
    of original numbers) are updated; the model's config is not (``prune_heads`` does that).
    """
    heads = {int(h) for h in heads}
    wrong = sorted(h for h in heads if not 0 <= h < num_heads)
    if wrong:
        raise ValueError(f"heads {wrong} do not exist: a layer has heads 0 .. {num_heads - 1}")
    pruned = set(getattr(block, "pruned_heads", set()))
    new = heads - pruned
    if not new:
        return
    if len(pruned | new) == num_heads:
        raise ValueError(f"pruning heads {sorted(new)} would leave no head in this layer (it had {num_heads}); keep "
                         f"at least one, or switch a whole layer's attention off with mask_heads")
    projection = _output_projection(block)
    head_dim = projection.in_features // _heads_now(block)
    index = kept_features(pruned, new, num_heads, head_dim)  # (H' * D,)
    if isinstance(block, Attention):
        for linear in (block.self.query, block.self.key, block.self.value):
            prune_linear(linear, index, dim=0)
        block.self.num_attention_heads = index.numel() // head_dim
    elif isinstance(block, GPT2Attention):
        width = projection.in_features  # H * D now: q, k and v each take this many of c_attn's outputs
        prune_linear(block.c_attn, torch.cat([index, index + width, index + 2 * width]), dim=0)
        block.n_head = index.numel() // head_dim
        block.__class__ = PrunedGPT2Attention  # same state, a forward that cuts q, k, v at H' * D
    else:
        raise TypeError(f"cannot prune heads of a {type(block).__name__}")
    prune_linear(projection, index, dim=1)
    block.pruned_heads = pruned | new


# The tensors of one attention block that hold heads: (rows of the projections into heads,
# columns of the projection back out), in the course's module names (a block's state_dict())
_ENCODER_HEAD_ROWS = ("self.query.weight", "self.query.bias", "self.key.weight", "self.key.bias",
                      "self.value.weight", "self.value.bias")
_ENCODER_HEAD_COLUMNS = ("output.dense.weight",)
_GPT2_HEAD_ROWS = ("c_attn.weight", "c_attn.bias")
_GPT2_HEAD_COLUMNS = ("c_proj.weight",)


def prune_attention_state(state: dict[str, torch.Tensor], heads: Iterable[int], num_heads: int
                          ) -> dict[str, torch.Tensor]:
    """One attention block's tensors with ``heads`` removed: a new dict, ``state`` unchanged.

    The same rows and columns ``prune_attention_heads`` removes from the modules, on plain
    tensors: ``state`` is an attention block's ``state_dict()`` in the course's names,

    - encoder (``Attention``): ``self.query.weight`` / ``self.key.weight`` / ``self.value.weight``
      (H*D, C) and their biases (H*D,), ``output.dense.weight`` (C, H*D), ``output.dense.bias``
      (C,), ``output.LayerNorm.*``;
    - GPT-2 (``GPT2Attention``, weights stored (out, in)): ``c_attn.weight`` (3*H*D, C) holding
      q, k and v one after the other, ``c_attn.bias`` (3*H*D,), ``c_proj.weight`` (C, H*D),
      ``c_proj.bias`` (C,).

    ``heads``: numbers 0 .. ``num_heads`` - 1 of the heads ``state`` holds now (no earlier
    pruning). Head h owns features h*D .. (h+1)*D - 1 of q, k and v and the same input columns
    of the output projection; the other tensors (output bias, LayerNorm) do not depend on
    heads and come back as copies. Every returned tensor is contiguous.
    """
    drop = {int(h) for h in heads}
    wrong = sorted(h for h in drop if not 0 <= h < num_heads)
    if wrong:
        raise ValueError(f"heads {wrong} do not exist: the block has heads 0 .. {num_heads - 1}")
    if len(drop) == num_heads:
        raise ValueError(f"removing all {num_heads} heads would leave the block with no attention; keep at least one")
    fused = "c_attn.weight" in state
    row_keys, column_keys = (_GPT2_HEAD_ROWS, _GPT2_HEAD_COLUMNS) if fused else \
        (_ENCODER_HEAD_ROWS, _ENCODER_HEAD_COLUMNS)
    absent = [k for k in (*row_keys, *column_keys) if k not in state]
    if absent:
        raise KeyError(f"the state has no {absent}: pass an attention block's state_dict() (encoder: self.query, "
                       f"self.key, self.value, output.dense; GPT-2: c_attn, c_proj)")
    inner = state[column_keys[0]].shape[1]  # H * D: the projections' width into the heads
    if inner % num_heads:
        raise ValueError(f"{column_keys[0]} has {inner} input columns, not a multiple of num_heads={num_heads}")
    columns = kept_features(set(), drop, num_heads, inner // num_heads)  # (H' * D,) features that stay
    rows = torch.cat([columns + part * inner for part in range(3)]) if fused else columns  # q, k, v thirds
    pruned = {}
    for key, tensor in state.items():
        if key in row_keys:
            pruned[key] = tensor.index_select(0, rows.to(tensor.device)).contiguous()
        elif key in column_keys:
            pruned[key] = tensor.index_select(1, columns.to(tensor.device)).contiguous()
        else:
            pruned[key] = tensor.clone()
    return pruned


def _check_heads_argument(heads_by_layer: dict, num_layers: int) -> dict[int, list[int]]:
    if not isinstance(heads_by_layer, dict):
        raise TypeError(f"pass {{layer: [heads]}}, e.g. {{0: [1, 2], 5: [0]}}; got {type(heads_by_layer).__name__}")
    out = {}
    for layer, heads in heads_by_layer.items():
        if not 0 <= int(layer) < num_layers:
            raise ValueError(f"layer {layer} does not exist: the model has layers 0 .. {num_layers - 1}")
        out[int(layer)] = [int(h) for h in heads]
    return out


def prune_heads(model: CourseModel, heads_to_prune: dict[int, list[int]]) -> CourseModel:
    """Remove attention heads, in place: ``{layer: [heads]}``, heads numbered as in the unpruned model.

    Each layer keeps its other heads, in order; ``config.pruned_heads`` records what is
    gone (merged with earlier pruning), so ``save_pretrained`` + ``load_model`` rebuild the
    pruned shapes. Exact: the result equals the unpruned model with those heads masked
    (``mask_heads``). Returns ``model``. Prune before quantizing.
    """
    blocks = attention_blocks(model)
    num_heads = model.config._layers_and_heads()[1]
    for layer, heads in _check_heads_argument(heads_to_prune, len(blocks)).items():
        prune_attention_heads(blocks[layer], heads, num_heads)
        model.config.add_pruned_heads(layer, heads)
    return model


@contextlib.contextmanager
def mask_heads(model: CourseModel, heads_to_mask: dict[int, list[int]]):
    """Within the ``with`` block, ``model`` runs with these heads' outputs set to 0: ``{layer: [heads]}``.

    A head's output is its D columns of the merged attention output (B, T, H * D), the
    input of the output projection, so a hook on that projection multiplies those columns
    by 0 (``transformers``' head mask does the same to the attention weights). Heads are
    numbered as in the unpruned model; masking a pruned head is an error. The hooks are
    removed on leaving the block, even after an exception.
    """
    blocks = attention_blocks(model)
    num_heads = model.config._layers_and_heads()[1]
    handles = []
    try:
        for layer, heads in _check_heads_argument(heads_to_mask, len(blocks)).items():
            block = blocks[layer]
            pruned = set(getattr(block, "pruned_heads", set()))
            gone = sorted(set(heads) & pruned)
            if gone:
                raise ValueError(f"heads {gone} of layer {layer} were pruned: there is nothing left to mask")
            wrong = sorted(h for h in heads if not 0 <= h < num_heads)
            if wrong:
                raise ValueError(f"heads {wrong} do not exist: a layer has heads 0 .. {num_heads - 1}")
            projection = _output_projection(block)
            head_dim = projection.in_features // _heads_now(block)
            keep = torch.zeros(projection.in_features)
            keep[kept_features(pruned, heads, num_heads, head_dim)] = 1.0  # (H * D,) 0 for the masked heads

            def zero_heads(module, args, keep=keep):
                x = args[0]
                return (x * keep.to(device=x.device, dtype=x.dtype),) + tuple(args[1:])

            handles.append(projection.register_forward_pre_hook(zero_heads))
        yield model
    finally:
        for handle in handles:
            handle.remove()


# --------------------------------------------------------------------------------------
# Which heads matter

@torch.no_grad()
def _mean_loss(model: nn.Module, batches: list, loss_fn: Callable) -> float:
    return sum(float(loss_fn(model, batch)) for batch in batches) / len(batches)


def head_importance(model: CourseModel, batches: Iterable, loss_fn: Callable, *, progress: bool = True
                    ) -> torch.Tensor:
    """How much the loss rises when each head alone is masked: (L, H) float64, NaN for pruned heads.

    ``importance[l, h] = mean loss with head h of layer l masked - mean loss of the model``,
    both the mean of ``loss_fn(model, batch)`` (a scalar tensor or float) over ``batches``
    (kept in a list: every one of the L * H + 1 passes sees the same data). Large means
    the model needs that head; near 0 or negative means it can go (Michel et al. 2019,
    "Are sixteen heads really better than one?", measure the same with a gradient proxy).
    Runs in eval mode, without gradients; the model's mode is restored afterwards.
    """
    from tqdm.auto import tqdm

    batches = list(batches)
    if not batches:
        raise ValueError("head_importance needs at least one batch to measure the loss on")
    blocks = attention_blocks(model)
    num_layers, num_heads = len(blocks), model.config._layers_and_heads()[1]
    importance = torch.full((num_layers, num_heads), float("nan"), dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        base = _mean_loss(model, batches, loss_fn)
        if not math.isfinite(base):
            raise ValueError(f"the model's loss on these batches is {base}: check loss_fn and the data")
        todo = [(layer, head) for layer, block in enumerate(blocks) for head in range(num_heads)
                if head not in getattr(block, "pruned_heads", set())]
        for layer, head in tqdm(todo, desc="masking heads", unit="head", disable=not progress):
            with mask_heads(model, {layer: [head]}):
                importance[layer, head] = _mean_loss(model, batches, loss_fn) - base
    finally:
        model.train(was_training)
    return importance


def least_important_heads(importance: torch.Tensor, k: int) -> dict[int, list[int]]:
    """The ``k`` heads with the lowest importance, as ``{layer: [heads]}`` for ``prune_heads``.

    ``importance``: (L, H) from ``head_importance`` (NaN = already pruned, never chosen).
    Ties go to the lower (layer, head). The last head of a layer is never chosen (a layer
    keeps at least one), so fewer than ``k`` come back when only last heads are left.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    num_layers, num_heads = importance.shape
    left = {layer: int((~importance[layer].isnan()).sum()) for layer in range(num_layers)}
    order = sorted(((float(importance[l, h]), l, h) for l in range(num_layers) for h in range(num_heads)
                    if not math.isnan(float(importance[l, h]))))
    chosen: dict[int, list[int]] = {}
    for _, layer, head in order:
        if sum(map(len, chosen.values())) == k:
            break
        if left[layer] > 1:
            chosen.setdefault(layer, []).append(head)
            left[layer] -= 1
    return {layer: sorted(heads) for layer, heads in sorted(chosen.items())}
