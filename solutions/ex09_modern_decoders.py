"""Chapter 09 exercises: the pieces that turn GPT-2 into Llama, Mistral and Qwen.

GPT-2 adds a learned vector per position to each token. Today's decoders **rotate** queries
and keys instead (RoPE): the D features of a head form D/2 pairs, and pair i of the token at
position p turns by the angle ``p * inv_freq[i]``, so a query-key dot product only depends on
how far apart the two tokens are. In the half-split layout of ``transformers`` (and so of the
Hub's checkpoints) pair i is features i and i + D/2. Around RoPE: **grouped-query attention**,
where several query heads share one key/value head (so the KV cache shrinks), the **SwiGLU**
feed-forward, and Mistral's **sliding window**, a causal mask that also forgets keys too far
back.

Shapes: B batch, H query heads, KV key/value heads, n_rep = H / KV query heads per KV head,
T tokens (Tq queries, Tk keys), D head size (even), C hidden size, F intermediate size,
L the context length a model was trained with.

The exercises follow ``notebooks/09_modern_decoders.ipynb``: 1-3 RoPE (``rotate_half``,
``rope_cos_sin``, ``apply_rope``), 4 the SwiGLU feed-forward (``swiglu``), 5 grouped-query
attention (``repeat_kv``), 6 the sliding-window mask. The last two are stretch exercises that go past what
the chapter shows: Llama 3's long-context frequencies (``"llama3"`` ``rope_scaling``), and
converting Meta's interleaved q/k weights to the Hub's half-split layout.

You may use any ``torch`` operation (not its private ``torch._*`` functions), including
``torch.sigmoid`` and ``torch.exp``, ``torch.cat`` / ``torch.stack``, ``expand``,
``repeat_interleave``, ``torch.tril`` / ``torch.triu``, ``torch.where`` and indexing, and
``math``; but not the ready-made activations that are the answer: ``F.silu`` /
``torch.nn.SiLU`` and ``F.glu`` / ``torch.nn.GLU``. The grader switches them off while your
code runs and tells you if you called one. ``course_lib`` is the answer key: importing it
scores 0. Functions later in this file may call earlier ones (``apply_rope`` may call your
``rotate_half``). Every function leaves its inputs as they were.

Write the body of each function below, replacing ``raise NotImplementedError``. Then grade:

* in the notebook: ``check("ex09.apply_rope")`` (one cell per exercise; each failure shows
  the next hint, ``check(key, hint=2)`` asks for one) — grading runs in a fresh process, so
  save this file and run the cell again;
* in a terminal: ``python -m course_lib.grade ex09`` (all) or ``python -m course_lib.grade
  ex09.repeat_kv`` (one).

The checks call your functions on random inputs (float32, float64 and bfloat16; odd sizes,
one token, batch 1, one head and many; positions that do not start at 0 and fewer queries
than keys, as in cached decoding; non-contiguous views such as heads split off with a
transpose) and compare with ``course_lib``'s versions, themselves tested against
``transformers``: to 1e-5 in float32, 1e-10 in float64, exactly where the answer is a
selection of values (``rotate_half``, ``repeat_kv``, the mask, the permutation).
"""

from __future__ import annotations

import math

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Turn every feature pair of ``x`` by 90 degrees, half-split layout: (..., D) -> (..., D).

    In the half-split layout the D/2 pairs are features ``(i, i + D/2)``: the first half of
    the last dimension holds the first member of every pair, the second half the second.
    ``rotate_half`` is the vector that ``sin`` multiplies in RoPE: for a pair (a, b) and its
    angle θ, ``x * cos + rotate_half(x) * sin`` must give the rotated pair
    ``(a cos θ - b sin θ, b cos θ + a sin θ)``. Work out from that which value, with which
    sign, sits at feature i and at feature i + D/2 of the result. Any number of leading
    dimensions; same shape and dtype as ``x``.

    Raise ``ValueError`` when the last dimension D is odd: its features do not form pairs.

    Hint: cut the last dimension into its two halves and put them back together in the other
    order, one of them negated.
    """
    if x.dim() == 0 or x.size(-1) % 2:
        raise ValueError(f"rotate_half turns pairs of features: the last dimension must be even, got shape "
                         f"{tuple(x.shape)}")
    half = x.size(-1) // 2
    first, second = x[..., :half], x[..., half:]
    return torch.cat((-second, first), dim=-1)


def rope_cos_sin(position_ids: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cos and sin of every token's rotation angles, half-split layout: (..., T) -> two (..., T, D) float32.

    ``position_ids``: an integer tensor (..., T), usually (B, T): each token's position
    (0, 1, 2, ... for a prompt; P, P + 1, ... for the new tokens after P cached ones; they
    need not start at 0). ``inv_freq``: (D / 2,) floats, ``theta ** (-2i / D)``: how far
    pair i turns per position.

    Pair i of the token at position p turns by the angle ``p * inv_freq[i]``. In the
    half-split layout pair i is features i and i + D/2, so both carry that angle::

        angle[..., t, i] = angle[..., t, i + D/2] = position_ids[..., t] * inv_freq[i]    (i < D/2)

    Return ``(cos, sin)`` of those angles, each (..., T, D) and float32 whatever the integer
    dtype of ``position_ids`` and the float dtype of ``inv_freq``: compute the angles in
    float32, both factors converted to float32 first, as ``transformers`` does (the
    arithmetic the checkpoints were trained with).

    Raise ``TypeError`` when ``position_ids`` are not integers (floats, bools): positions
    count tokens.

    Example: ``position_ids = [[0, 1, 2]]`` and ``inv_freq = [1.0, 0.01]`` (D = 4) give cos
    of shape (1, 3, 4); its row for position 2 is ``cos([2.0, 0.02, 2.0, 0.02])``.

    Hint: every (position, frequency) pair multiplied is an outer product, (..., T, D/2);
    the half-split layout wants those D/2 angles twice along the last dimension.
    """
    if position_ids.dtype.is_floating_point or position_ids.dtype.is_complex or position_ids.dtype == torch.bool:
        raise TypeError(f"position_ids must be integers (token positions), got {position_ids.dtype}")
    angles = position_ids.float().unsqueeze(-1) * inv_freq.float()  # (..., T, D/2)
    both_halves = torch.cat((angles, angles), dim=-1)  # (..., T, D): pair i is features i and i + D/2
    return torch.cos(both_halves), torch.sin(both_halves)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys by their tokens' angles, half-split layout: x (B, H, T, D) -> (B, H, T, D).

    ``cos`` and ``sin``: (B, T, D) from ``rope_cos_sin`` — or (1, T, D), shared by the whole
    batch — the same angles for every head. A pair (a, b) = (x[..., i], x[..., i + D/2]) of
    a token whose angle is θ becomes::

        (a cos θ - b sin θ,  b cos θ + a sin θ)

    For the whole vector that is a sum of two elementwise products: ``x`` with ``cos``, and
    your ``rotate_half(x)`` (which holds (-b, a) where x holds (a, b)) with ``sin``.

    Return x's dtype: cast ``cos`` and ``sin`` to it first, as ``transformers`` does
    (bfloat16 queries stay bfloat16). ``x`` may be a non-contiguous view (heads split off
    with a transpose).

    Raise ``ValueError`` when ``x`` is not 4-D, or when ``cos`` and ``sin`` are not both of
    shape (B or 1, T, D) for x's B, T and D.

    Example: x (2, 12, 5, 64) queries, cos and sin (2, 5, 64) -> (2, 12, 5, 64); a token at
    position 0 comes out unchanged (cos 1, sin 0).

    Hint: cos has no heads dimension; give it one of size 1 so that it broadcasts over the
    H heads and lines up with x's tokens.
    """
    if x.dim() != 4:
        raise ValueError(f"apply_rope rotates queries or keys of shape (batch, heads, tokens, head_dim), got "
                         f"shape {tuple(x.shape)}")
    B, H, T, D = x.shape
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dim() != 3 or tuple(t.shape[1:]) != (T, D) or t.size(0) not in (1, B):
            raise ValueError(f"{name} must be (batch, tokens, head_dim) = ({B} or 1, {T}, {D}) for x of shape "
                             f"{tuple(x.shape)}, got {tuple(t.shape)}")
    c = cos.to(x.dtype).unsqueeze(1)  # (B, 1, T, D): the same angles for every head
    s = sin.to(x.dtype).unsqueeze(1)
    return x * c + rotate_half(x) * s


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Grouped-query attention: give every query head its key/value head: (B, KV, T, D) -> (B, KV * n_rep, T, D).

    A model with H query heads and KV < H key/value heads lets each KV head serve
    n_rep = H / KV consecutive query heads: query head h uses KV head ``h // n_rep``. So head
    h of the result is KV head ``h // n_rep`` of ``x``: each KV head repeated n_rep times in
    a row — for KV = 2 and n_rep = 2 the heads are (k0, k0, k1, k1), not (k0, k1, k0, k1).
    The order of ``transformers``' ``repeat_kv`` and of Meta's code; with it the query heads
    of a checkpoint meet the keys they were trained with.

    Same dtype; the values are copies of x's (exactly). ``n_rep = 1`` gives x's values back
    (returning ``x`` itself is fine). ``x`` may be a non-contiguous view.

    Raise ``ValueError`` when ``n_rep`` is less than 1 or ``x`` is not 4-D.

    Example: x (1, 2, 3, 4) and n_rep = 4 -> (1, 8, 3, 4); heads 0-3 equal ``x[:, 0]``,
    heads 4-7 equal ``x[:, 1]``.

    Hint: a new axis of size n_rep right after the KV heads, then merge it with them: the
    axis that varies faster ends up as the faster-changing part of the head index.
    """
    if n_rep < 1:
        raise ValueError(f"n_rep (query heads per key/value head) must be at least 1, got {n_rep}")
    if x.dim() != 4:
        raise ValueError(f"repeat_kv takes keys or values of shape (batch, kv_heads, tokens, head_dim), got shape "
                         f"{tuple(x.shape)}")
    B, KV, T, D = x.shape
    copies = x.unsqueeze(2).expand(B, KV, n_rep, T, D)  # (B, KV, n_rep, T, D), a view: no memory yet
    return copies.reshape(B, KV * n_rep, T, D)


def swiglu(x: torch.Tensor, gate_weight: torch.Tensor, up_weight: torch.Tensor,
           down_weight: torch.Tensor) -> torch.Tensor:
    """The feed-forward of Llama, Mistral and Qwen: ``down(silu(gate(x)) * up(x))``: (..., C) -> (..., C).

    ``gate``, ``up`` and ``down`` are linear maps without biases, their weights stored as in
    ``torch.nn.Linear`` (out, in) — so ``gate(x)`` is x times the *transpose* of
    ``gate_weight``: ``gate_weight`` and ``up_weight`` are (F, C), ``down_weight`` (C, F).
    SiLU ("swish") is ``silu(z) = z * sigmoid(z) = z / (1 + exp(-z))``, elementwise. The
    product is elementwise too: ``silu(gate(x))`` decides, feature by feature, how much of
    ``up(x)`` passes (a gated linear unit).

    ``x`` (..., C), any number of leading dimensions. Returns (..., C) in x's dtype (all
    four tensors share it). Write SiLU yourself: ``F.silu``, ``torch.nn.SiLU`` and ``F.glu``
    are switched off; ``torch.sigmoid`` and ``torch.exp`` are fine.

    Raise ``ValueError`` when the shapes do not fit: ``gate_weight`` not (F, C) with C the
    last dimension of x, ``up_weight`` not the same shape, or ``down_weight`` not (C, F).

    Example: Llama 3.2 1B has C = 2048 and F = 8192: x (1, 5, 2048) -> (1, 5, 2048), through
    (1, 5, 8192) twice.

    Hint: two projections up, one elementwise product of the activated gate with the other,
    one projection down; ``@`` with a transposed weight is a linear layer without bias.
    """
    C = x.size(-1)
    if gate_weight.dim() != 2 or gate_weight.size(1) != C:
        raise ValueError(f"gate_weight must be (F, C) with C = {C}, the last dimension of x {tuple(x.shape)}; got "
                         f"{tuple(gate_weight.shape)}")
    F = gate_weight.size(0)
    if tuple(up_weight.shape) != (F, C):
        raise ValueError(f"up_weight must have gate_weight's shape ({F}, {C}), got {tuple(up_weight.shape)}")
    if tuple(down_weight.shape) != (C, F):
        raise ValueError(f"down_weight must be (C, F) = ({C}, {F}), got {tuple(down_weight.shape)}")
    gate = x @ gate_weight.T  # (..., F)
    up = x @ up_weight.T  # (..., F)
    hidden = gate * torch.sigmoid(gate) * up  # (..., F): silu(gate), then the gating
    return hidden @ down_weight.T  # (..., C)


def sliding_window_mask(t_query: int, t_key: int | None = None, window: int | None = None) -> torch.Tensor:
    """Mistral's mask: causal, and only the last ``window`` positions: bool (t_query, t_key), True = may attend.

    The queries are the *last* t_query of the t_key positions (with a KV cache, the keys
    include the tokens before them): query i sits at the absolute position
    ``p = i + t_key - t_query``. ``t_key = None`` means as many keys as queries. Key j is
    allowed when both hold:

    * ``j <= p``: no key from the query's future (the causal mask);
    * ``j > p - window``: the key is one of the last ``window`` positions, the query's own
      included — each token sees itself and the ``window - 1`` tokens before it
      (``transformers``' rule for Mistral's ``sliding_window``).

    ``window = None``: no window, the plain causal mask. A window at least as long as
    t_key changes nothing either.

    Raise ``ValueError`` when ``t_key < t_query`` (every query needs its own key) or
    ``window < 1``.

    Example: ``sliding_window_mask(4, window=2)`` is::

        [[ True, False, False, False],
         [ True,  True, False, False],
         [False,  True,  True, False],
         [False, False,  True,  True]]

    and ``sliding_window_mask(1, 5, 3)`` (one new token after 4 cached ones) is
    ``[[False, False, True, True, True]]``.

    Hint: compare a column of query positions with a row of key positions (broadcasting
    gives the whole table); the two conditions combine with ``&``.
    """
    if t_key is None:
        t_key = t_query
    if t_key < t_query:
        raise ValueError(f"t_key={t_key} < t_query={t_query}: every query needs its own key")
    if window is not None and window < 1:
        raise ValueError(f"the sliding window must hold at least 1 token (the query itself), got {window}")
    query_pos = torch.arange(t_key - t_query, t_key).unsqueeze(1)  # (Tq, 1) absolute positions
    key_pos = torch.arange(t_key).unsqueeze(0)  # (1, Tk)
    allowed = key_pos <= query_pos  # (Tq, Tk) causal
    if window is not None:
        allowed = allowed & (key_pos > query_pos - window)
    return allowed


def llama3_frequencies(head_dim: int, theta: float = 500000.0, factor: float = 32.0, low_freq_factor: float = 1.0,
                       high_freq_factor: float = 4.0, original_max_position_embeddings: int = 8192) -> torch.Tensor:
    """Llama 3.1/3.2's inverse frequencies for long contexts (``"llama3"`` rope_scaling): (head_dim / 2,) float32.

    Start from the plain frequencies ``inv_freq[i] = theta ** (-2i / head_dim)``, computed in
    float32 (``torch.arange(0, head_dim, 2)`` as float32 divided by ``head_dim``; ``1 / theta
    ** that``). Pair i turns once every ``wavelen[i] = 2 pi / inv_freq[i]`` tokens. With
    L = ``original_max_position_embeddings`` (the context the model was first trained on):

    * fast pairs, ``wavelen < L / high_freq_factor``: unchanged (they encode local order,
      which a longer context does not change);
    * slow pairs, ``wavelen > L / low_freq_factor``: divided by ``factor`` (turning
      ``factor`` times slower, they cover a context ``factor`` times longer);
    * in between (both edges included), a blend of the two: the weighted average of the
      unchanged value (weight ``smooth``) and the divided one (weight ``1 - smooth``), where
      ``smooth`` grows linearly with ``L / wavelen``, from 0 where ``L / wavelen`` equals
      ``low_freq_factor`` (the slow edge) to 1 where it equals ``high_freq_factor`` (the fast
      edge). So the curve has no jumps.

    The same numbers as ``transformers``' ``ROPE_INIT_FUNCTIONS["llama3"]``. Return float32.

    Raise ``ValueError`` when ``head_dim`` is odd or less than 2, or when
    ``high_freq_factor <= low_freq_factor``.

    Example: Llama 3.2 1B (head_dim 64, theta 500000, factor 32, low 1, high 4, L 8192): the
    first pairs are unchanged (``inv_freq[0] == 1``), the last ones 32 times slower, and a
    few in the middle blended.

    Hint: compute every pair's wavelength once; then two masks (fast, slow) choose, pair by
    pair, among three candidate values.
    """
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"RoPE turns pairs of features: head_dim must be even and at least 2, got {head_dim}")
    if high_freq_factor <= low_freq_factor:
        raise ValueError(f"high_freq_factor ({high_freq_factor}) must be greater than low_freq_factor "
                         f"({low_freq_factor})")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim  # (D/2,) 0, 2/D, 4/D, ...
    inv_freq = 1.0 / (theta ** exponents)  # (D/2,) float32
    wavelen = 2 * math.pi / inv_freq  # tokens per turn
    L = original_max_position_embeddings
    fast = wavelen < L / high_freq_factor
    slow = wavelen > L / low_freq_factor
    smooth = (L / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    new = torch.where(fast, inv_freq, torch.where(slow, inv_freq / factor, blended))
    return new.to(torch.float32)


def interleaved_to_half(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's q_proj / k_proj weight (H * D, C) or bias (H * D,) -> the half-split layout of the Hub's checkpoints.

    Meta's original Llama code rotates *interleaved* pairs: within each head, pair i is the
    output features (2i, 2i + 1). ``transformers`` (and every Hub checkpoint) uses the
    half-split pairs (i, i + D/2). Permuting the rows of the q and k projections converts
    one into the other: within each head (D = rows / n_heads rows, one block after the
    other), the row of feature j of pair i moves from ``2i + j`` to ``j * D/2 + i``
    (j = 0 or 1). All first members of the pairs come first, in pair order, then all second
    members. Heads stay where they are, and so do the columns.

    With both q_proj and k_proj converted this way, ``apply_rope`` on the new weights gives
    exactly the attention of Meta's interleaved rotation on the old ones (the same
    permutation on both sides leaves every dot product unchanged). For k_proj, ``n_heads``
    is the number of key/value heads.

    Same shape and dtype; the values are the rows of ``weight``, moved. ``weight`` may be a
    non-contiguous view.

    Raise ``ValueError`` when the number of rows does not split into ``n_heads`` heads of an
    even head size.

    Example: one head of D = 6 rows r0..r5: the result's rows are (r0, r2, r4, r1, r3, r5).

    Hint: within a head, the row index 2i + j is a position in a (D/2, 2) grid read row by
    row; the half-split index j * D/2 + i reads the same grid column by column.
    """
    rows = weight.size(0) if weight.dim() else 0
    if weight.dim() not in (1, 2) or n_heads < 1 or rows % n_heads or (rows // n_heads) % 2:
        raise ValueError(f"a q/k projection of shape {tuple(weight.shape)} cannot be {n_heads} heads of an even "
                         f"head size: its rows must be n_heads * head_dim with head_dim even")
    D = rows // n_heads
    order = torch.arange(rows).reshape(n_heads, D // 2, 2).transpose(1, 2).reshape(-1)  # new row -> old row
    return weight[order]
