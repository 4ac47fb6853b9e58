"""Pictures for the notebooks: one function per figure, matplotlib imported only when drawing.

Each function draws into a new figure and returns nothing, so a notebook cell that ends
with the call prints no figure repr (nbval would compare it); ``plt.gcf()`` gets the figure.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from course_lib.tensor import Tensor, broadcast_shapes

def plot_layout(*tensors: Tensor, titles: Sequence[str] | None = None, cmap: str = "viridis"):
    """Draw 2-D tensors side by side: each as a grid of cells coloured and labelled by
    the storage position they read, with its flat storage as a strip underneath — the
    same colour marks the same memory.

    Returns nothing, so a notebook cell ending with this call prints no figure repr
    (``plt.gcf()`` gets the figure if you want to save it)."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(3.4 * len(tensors), 3.0))
    columns = fig.add_gridspec(1, len(tensors), wspace=0.35)
    for k, t in enumerate(tensors):
        if t.ndim != 2:
            raise ValueError(f"plot_layout draws 2-D tensors, got shape {t.shape}")
        # Which storage slot each logical element reads: the layout, with the values replaced by positions.
        position = Tensor(np.arange(t.storage.size), t.shape, t.strides, t.offset).numpy()
        vmax = max(t.storage.size - 1, 1)
        grid, strip = columns[0, k].subgridspec(2, 1, height_ratios=[max(t.shape[0], 1), 1], hspace=0.5)
        top, bottom = fig.add_subplot(grid), fig.add_subplot(strip)
        top.imshow(position, cmap=cmap, vmin=0, vmax=vmax)
        ink = {True: "black", False: "white"}  # dark text on the colour map's light end
        for (r, c), p in np.ndenumerate(position):
            top.text(c, r, f"s[{p}]", ha="center", va="center", color=ink[p > 0.6 * vmax], fontsize=8)
        top.set_xticks(range(t.shape[1]))
        top.set_yticks(range(t.shape[0]))
        title = titles[k] if titles else f"shape {t.shape}"
        top.set_title(f"{title}\nstrides {t.strides}, offset {t.offset}", fontsize=9)
        used = np.isin(np.arange(t.storage.size), position)
        bottom.imshow(np.where(used, np.arange(t.storage.size), np.nan)[None, :], cmap=cmap, vmin=0, vmax=vmax)
        for p in range(t.storage.size):
            colour = ink[p > 0.6 * vmax] if used[p] else "grey"
            bottom.text(p, 0, str(p), ha="center", va="center", color=colour, fontsize=8)
        bottom.set_yticks([])
        bottom.set_xticks([])
        bottom.set_xlabel("storage (flat buffer)", fontsize=8)


def plot_broadcast(shape_a: Sequence[int], shape_b: Sequence[int]):
    """Show two shapes lined up at the right, padded with 1s, and the broadcast result.
    Returns nothing (``plt.gcf()`` gets the figure)."""
    import matplotlib.pyplot as plt

    out = broadcast_shapes(shape_a, shape_b)
    ndim = len(out)
    rows = [("a", (1,) * (ndim - len(shape_a)) + tuple(shape_a), len(shape_a)),
            ("b", (1,) * (ndim - len(shape_b)) + tuple(shape_b), len(shape_b)),
            ("a op b", out, ndim)]
    fig, ax = plt.subplots(figsize=(1.1 * ndim + 1.6, 1.9))
    for r, (name, shape, real) in enumerate(rows):
        for d, size in enumerate(shape):
            padded = d < ndim - real
            stretched = r < 2 and size == 1 and out[d] != 1
            colour = "#dddddd" if padded else ("#f4a261" if stretched else "#8ecae6")
            ax.add_patch(plt.Rectangle((d, -r - 0.9), 0.9, 0.8, color=colour))
            ax.text(d + 0.45, -r - 0.5, str(size), ha="center", va="center", fontsize=11)
        ax.text(-0.15, -r - 0.5, name, ha="right", va="center", fontsize=10)
    ax.set_xlim(-1.4, ndim)
    ax.set_ylim(-3.1, 0.1)
    ax.axis("off")
    ax.set_title("grey: padded 1 · orange: size 1 stretched (stride 0) · blue: kept", fontsize=8)


def plot_activations(x_min: float = -4.0, x_max: float = 4.0):
    """Chapter 02: ReLU, exact GELU and GPT-2's tanh GELU, and the (tiny) gap between the
    two GELUs. Returns nothing (``plt.gcf()`` gets the figure)."""
    import matplotlib.pyplot as plt
    import torch

    from course_lib.layers import gelu, gelu_tanh, relu

    x = torch.linspace(x_min, x_max, 401)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    left.plot(x, relu(x), label="ReLU", color="grey", linestyle="--")
    left.plot(x, gelu(x), label="GELU (exact, erf)", linewidth=2.5)
    left.plot(x, gelu_tanh(x), label="GELU (tanh, GPT-2)", linewidth=1.2)
    left.axhline(0, color="black", linewidth=0.5)
    left.set_title("activations")
    left.set_xlabel("x")
    left.legend()
    right.plot(x, gelu(x) - gelu_tanh(x), color="tab:red")
    right.axhline(0, color="black", linewidth=0.5)
    right.set_title("exact GELU minus tanh GELU")
    right.set_xlabel("x")
    right.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    fig.tight_layout()


def plot_softmax_temperature(scores: Sequence[float], temperatures: Sequence[float] = (0.5, 1.0, 2.0),
                             labels: Sequence[str] | None = None):
    """Chapter 02 (and 06): softmax(scores / T) as bars for each temperature T — low T
    sharpens towards the maximum, high T flattens towards uniform. Returns nothing."""
    import matplotlib.pyplot as plt
    import torch

    from course_lib.layers import softmax

    scores_t = torch.tensor(list(scores), dtype=torch.float32)
    labels = list(labels) if labels is not None else [str(i) for i in range(len(scores_t))]
    fig, axes = plt.subplots(1, len(temperatures), figsize=(3.3 * len(temperatures), 2.8), sharey=True)
    for ax, t in zip(np.atleast_1d(axes), temperatures):
        p = softmax(scores_t / t)
        ax.bar(labels, p, color="tab:blue")
        ax.set_title(f"T = {t:g}   (max p = {float(p.max()):.2f})")
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", labelsize=8)
    np.atleast_1d(axes)[0].set_ylabel("probability")
    fig.tight_layout()


def plot_attention(weights: Sequence, tokens: Sequence[str], titles: Sequence[str], query_tokens: Sequence[str] | None = None):
    """Chapter 02: attention weight matrices (query rows x key columns) side by side, with
    the tokens on the axes; masked cells are exactly 0 and show white. Returns nothing."""
    import matplotlib.pyplot as plt

    query_tokens = list(query_tokens) if query_tokens is not None else list(tokens)
    fig, axes = plt.subplots(1, len(weights), figsize=(3.6 * len(weights), 3.6))
    for ax, w, title in zip(np.atleast_1d(axes), weights, titles):
        w = np.asarray(w, dtype=np.float64)
        ax.imshow(np.ma.masked_equal(w, 0.0), cmap="Blues", vmin=0, vmax=1)
        for (r, c), value in np.ndenumerate(w):
            if value > 0:
                ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value > 0.6 else "black")
        ax.set_xticks(range(len(tokens)), tokens, rotation=60, fontsize=8)
        ax.set_yticks(range(len(query_tokens)), query_tokens, fontsize=8)
        ax.set_xlabel("key (attended to)")
        ax.set_title(title, fontsize=10)
    np.atleast_1d(axes)[0].set_ylabel("query")
    fig.tight_layout()


def plot_token_lengths(lengths: dict[str, Sequence[int]], bins: int = 30, xlabel: str = "tokens per line"):
    """Chapter 03: histogram of sequence lengths per tokenizer, with each median marked.
    Returns nothing."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    top = max(max(v) for v in lengths.values())
    edges = np.linspace(0, top + 1, bins + 1)
    for (name, values), colour in zip(lengths.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        ax.hist(values, bins=edges, alpha=0.5, label=f"{name} (median {np.median(values):g})", color=colour)
        ax.axvline(np.median(values), color=colour, linestyle="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("lines")
    ax.legend()
    fig.tight_layout()


def plot_similarity(matrix, labels: Sequence[str], title: str = "cosine similarity"):
    """Chapter 04: a symmetric similarity matrix as a heatmap, values written in the cells.
    Returns nothing."""
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(labels), 0.6 + 0.6 * len(labels)))
    image = ax.imshow(m, cmap="viridis", vmin=min(0.0, m.min()), vmax=1.0)
    for (r, c), value in np.ndenumerate(m):
        ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=8,
                color="black" if value > 0.6 else "white")
    short = [label if len(label) <= 28 else label[:26] + "…" for label in labels]
    ax.set_xticks(range(len(labels)), range(len(labels)))
    ax.set_yticks(range(len(labels)), [f"{i}: {s}" for i, s in enumerate(short)], fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()


def plot_next_token_filters(distributions: dict[str, Sequence[float]], tokens: Sequence[str]):
    """Chapter 06: the next-token distribution as bars, once per sampling rule (full softmax,
    temperature, top-k, top-p ...); tokens a rule removes have probability 0 and show as gaps,
    the kept ones are renormalised. ``distributions``: {title: probabilities over ``tokens``}.
    Returns nothing."""
    import matplotlib.pyplot as plt

    n = len(distributions)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.0), sharey=True)
    for ax, (title, probs) in zip(np.atleast_1d(axes), distributions.items()):
        p = np.asarray(probs, dtype=np.float64)
        kept = p > 0
        ax.bar(range(len(p)), p, color=np.where(kept, "tab:blue", "lightgrey"))
        ax.set_title(f"{title}\n{int(kept.sum())} of {len(p)} kept", fontsize=9)
        ax.set_xticks(range(len(tokens)), tokens, rotation=70, fontsize=7)
    np.atleast_1d(axes)[0].set_ylabel("probability")
    fig.tight_layout()


def plot_kv_cache_speedup(lengths: Sequence[int], seconds_with: Sequence[float], seconds_without: Sequence[float]):
    """Chapter 06: time to generate n tokens with and without the KV cache (left) and the
    speed-up (right). Without the cache step i recomputes all i tokens, so the time grows like
    n²; with it each step is one token, so it grows like n. Returns nothing."""
    import matplotlib.pyplot as plt

    lengths = np.asarray(lengths)
    with_, without = np.asarray(seconds_with, dtype=float), np.asarray(seconds_without, dtype=float)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(lengths, without, "o-", label="without cache", color="tab:red")
    left.plot(lengths, with_, "o-", label="with KV cache", color="tab:green")
    left.set_xlabel("tokens generated")
    left.set_ylabel("seconds")
    left.legend()
    right.plot(lengths, without / with_, "o-", color="tab:blue")
    right.set_xlabel("tokens generated")
    right.set_ylabel("speed-up (×)")
    right.axhline(1, color="grey", linewidth=0.8)
    fig.tight_layout()


def plot_loss_curve(steps: Sequence[int], train_loss: Sequence[float], eval_steps: Sequence[int] | None = None,
                    eval_loss: Sequence[float] | None = None, best_step: int | None = None, title: str = "training",
                    train_label: str = "train (each batch, with dropout)"):
    """Chapters 06 and 08: training loss per step (and held-out loss where measured), in nats
    per token, with perplexity = e^loss on the right axis; ``best_step`` marks the weights
    kept. Returns nothing."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(steps, train_loss, color="tab:blue", lw=0.6, alpha=0.7, label=train_label)
    if eval_steps is not None and eval_loss is not None:
        ax.plot(eval_steps, eval_loss, "o-", ms=3, color="tab:orange", label="held out")
    if best_step:
        ax.axvline(best_step, color="grey", ls=":", lw=1, label=f"best held-out (step {best_step})")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    lo, hi = ax.get_ylim()
    ppl = ax.twinx()
    ppl.set_ylim(lo, hi)
    ticks = [t for t in ax.get_yticks() if lo <= t <= hi]
    ppl.set_yticks(ticks, [f"{np.exp(t):.0f}" for t in ticks])
    ppl.set_ylabel("perplexity")
    fig.tight_layout()


def plot_memory_bars(megabytes: dict[str, float], title: str = "parameter memory", reference: str | None = None):
    """Chapter 07: one bar per format (MB), labelled with its size and, if ``reference`` names
    one of them, its share of that one. Returns nothing."""
    import matplotlib.pyplot as plt

    names, values = list(megabytes), np.asarray(list(megabytes.values()), dtype=float)
    fig, ax = plt.subplots(figsize=(7, 3))
    bars = ax.bar(names, values, color=plt.cm.viridis(np.linspace(0.15, 0.85, len(names))))
    base = megabytes.get(reference) if reference else None
    for bar, value in zip(bars, values):
        label = f"{value:.0f} MB" + (f"\n{100 * value / base:.0f} %" if base else "")
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("MB")
    ax.set_ylim(0, values.max() * 1.25)
    ax.set_title(title)
    fig.tight_layout()


def plot_decode_vs_context(report: dict, title: str = ""):
    """Chapter 07: decode tokens/s against the context length, one line per engine, from
    ``bench/scaling.py``'s JSON report (its ``decode`` part); the machine goes in the title.
    Returns nothing."""
    import matplotlib.pyplot as plt

    rows = report["decode"]
    contexts = [int(c) for c in rows]
    engines = [name for name in ("transformers", "course default", "llama.cpp f32")
               if all(name in row for row in rows.values())]
    labels = {"course default": "course (load_model's default path)", "llama.cpp f32": "llama.cpp f32"}
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for name, marker in zip(engines, "osd"):
        rates = [rows[str(c)][name]["decode_tok_s"] for c in contexts]
        ax.plot(contexts, rates, marker=marker, label=labels.get(name, name))
        ax.annotate(f"{rates[-1]:.1f}", (contexts[-1], rates[-1]), textcoords="offset points", xytext=(6, 0),
                    va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xticks(contexts, [str(c) for c in contexts])
    ax.set_xlabel("tokens already in the context (log scale)")
    ax.set_ylabel("decode tokens/s")
    ax.set_ylim(0, None)
    machine = report["machine"]
    ax.set_title(title or f"GPT-2 124M, batch 1, float32 — {machine['cpu']}, {machine['threads']} threads, "
                          f"{machine['date'][:10]}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()


def plot_error_histograms(errors: dict[str, Sequence[float]], bins: int = 80, xlabel: str = "w_hat − w"):
    """Chapter 07: a histogram of the weight errors of each scheme, on one shared x axis, each
    titled with its RMS error. Returns nothing."""
    import matplotlib.pyplot as plt

    arrays = {name: np.asarray(e, dtype=float).ravel() for name, e in errors.items()}
    limit = max(np.abs(a).max() for a in arrays.values()) or 1.0
    fig, axes = plt.subplots(1, len(arrays), figsize=(2.6 * len(arrays), 2.6), sharex=True)
    for ax, (name, a) in zip(np.atleast_1d(axes), arrays.items()):
        ax.hist(a, bins=np.linspace(-limit, limit, bins), color="tab:purple")
        ax.set_title(f"{name}\nRMS {np.sqrt(np.mean(a ** 2)):.2e}", fontsize=9)
        ax.set_yticks([])
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()


def plot_quality_vs_bits(bits: dict[str, float], quality: dict[str, dict[str, float]]):
    """Chapter 07: for each quality measure (one panel each: {measure: {scheme: value}}), its value
    against the bits stored per weight (scales and zero points included). Returns nothing."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(quality), figsize=(4.2 * len(quality), 3.2))
    for ax, (measure, values) in zip(np.atleast_1d(axes), quality.items()):
        names = [n for n in bits if n in values]
        ax.plot([bits[n] for n in names], [values[n] for n in names], "o", color="tab:blue")
        for n in names:
            ax.annotate(n, (bits[n], values[n]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log", base=2)
        ax.set_xticks([4, 8, 16, 32], ["4", "8", "16", "32"])
        ax.set_xlabel("bits per weight (stored)")
        ax.set_title(measure, fontsize=10)
    fig.tight_layout()


# --- chapter 06


def plot_masks(masks: dict, xlabel: str = "key (position)", ylabel: str = "query (position)"):
    """Chapter 06: attention masks side by side, one panel per ``{title: bool (T_query, T_key)}``;
    green = may attend. The queries are the *last* T_query tokens, so row i is labelled with its
    absolute position i + T_key - T_query (a KV cache's new tokens come after the cached ones).
    Returns nothing."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    panels = {title: np.asarray(m, dtype=bool) for title, m in masks.items()}
    widths = [max(m.shape[1], 2) for m in panels.values()]
    fig, axes = plt.subplots(1, len(panels), figsize=(0.42 * sum(widths) + 1.2 * len(panels), 2.9),
                             gridspec_kw={"width_ratios": widths})
    for ax, (title, m) in zip(np.atleast_1d(axes), panels.items()):
        t_query, t_key = m.shape
        ax.imshow(m, cmap=ListedColormap(["#e6e6e6", "tab:green"]), vmin=0, vmax=1)
        ax.set_xticks(range(t_key))
        ax.set_yticks(range(t_query), [str(i + t_key - t_query) for i in range(t_query)])
        ax.set_xticks(np.arange(-0.5, t_key), minor=True)
        ax.set_yticks(np.arange(-0.5, t_query), minor=True)
        ax.grid(which="minor", color="white", linewidth=1.5)
        ax.tick_params(which="both", length=0, labelsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
    fig.tight_layout()


def plot_fused_qkv(n_embd: int, n_head: int):
    """Chapter 06: the last axis of GPT-2's fused projection ``c_attn`` (3C features): the C
    query features, then the C key features, then the C value features, each cut into H heads of
    D = C / H features. Returns nothing."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    d = n_embd // n_head
    colors = {"q": "tab:blue", "k": "tab:orange", "v": "tab:green"}
    fig, ax = plt.subplots(figsize=(9, 1.9))
    for part, name in enumerate("qkv"):
        for h in range(n_head):
            start = part * n_embd + h * d
            shade = 0.35 + 0.5 * h / max(n_head - 1, 1)
            ax.add_patch(Rectangle((start, 0), d, 1, facecolor=colors[name], alpha=shade, edgecolor="white",
                                   linewidth=2))
            ax.text(start + d / 2, 0.5, f"{name} head {h}", ha="center", va="center", fontsize=8)
        ax.annotate("", xy=(part * n_embd, -0.25), xytext=((part + 1) * n_embd, -0.25),
                    arrowprops={"arrowstyle": "<->", "color": colors[name]})
        label = f"{name}: features {part * n_embd}..{(part + 1) * n_embd - 1} (C = {n_embd})"
        ax.text((part + 0.5) * n_embd, -0.55, label, ha="center", va="center", fontsize=8, color=colors[name])
    ax.set_xlim(0, 3 * n_embd)
    ax.set_ylim(-0.8, 1.1)
    ax.set_xticks([0, n_embd, 2 * n_embd, 3 * n_embd])
    ax.set_yticks([])
    ax.set_title(f"c_attn's output, last axis: 3C = {3 * n_embd} features, H = {n_head} heads of D = {d}", fontsize=9)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()


# --- chapter 07


def plot_quantization_levels(w, schemes: Sequence[str], qmax: int = 7):
    """Chapter 07: where each weight of one group lands, one panel per scheme: the levels as grey
    lines, each weight (a dot, above) joined to the level it becomes (a cross, below), the clipped
    ones in red. ``w``: 1-D, an even number of values. ``schemes``: ``"absmax"`` (levels
    -qmax..qmax times max|w| / qmax), ``"clip R"`` (the same with the scale R max|w| / qmax: the
    weights beyond the last level are clipped) and ``"zero point"`` (16 levels spanning
    [min(w, 0), max(w, 0)]). The levels come from ``course_lib.quantization``. Returns nothing."""
    import matplotlib.pyplot as plt
    import torch

    from course_lib import quantization as Q

    w = torch.as_tensor(w, dtype=torch.float32).reshape(-1)
    fig, axes = plt.subplots(len(schemes), 1, figsize=(9, 1.5 * len(schemes) + 0.3), sharex=True, squeeze=False)
    for ax, scheme in zip(axes[:, 0], schemes):
        if scheme == "zero point":
            q, scale, zero = Q.quantize_int4(w[None], group_size=w.numel(), zero_point=True)
            levels = (torch.arange(16) - zero.float()) * scale.float()
            w_hat = Q.dequantize_int4(q, scale, zero)[0]
        else:
            ratio = float(scheme.split()[1]) if scheme.startswith("clip") else 1.0
            scale = Q.absmax_scale(w * ratio, qmax)
            levels = torch.arange(-qmax, qmax + 1) * scale.float()
            w_hat = Q.quantize_absmax(w, scale, qmax).float() * scale.float()
        step = float(scale.float().reshape(-1)[0])
        clipped = (w - w_hat).abs() > step / 2 * (1 + 1e-3)
        for level in levels.reshape(-1).tolist():
            ax.axvline(level, color="0.85", lw=1, zorder=0)
        for a, b, c in zip(w.tolist(), w_hat.tolist(), clipped.tolist()):
            ax.plot([a, b], [0.75, 0.25], color="tab:red" if c else "tab:blue", lw=0.8, alpha=0.7)
        ax.scatter(w, torch.full_like(w, 0.75), s=14, color=np.where(clipped.numpy(), "tab:red", "tab:blue"),
                   zorder=3)
        ax.scatter(w_hat, torch.full_like(w, 0.25), marker="x", s=22, color="black", zorder=3)
        ax.set_ylim(0, 1)
        ax.set_yticks([0.25, 0.75], ["level", "w"], fontsize=8)
        err = float((w - w_hat).abs().max())
        text = f"{scheme}: {levels.numel()} levels, step {step:.3g}, max |w - ŵ| {err:.3g}"
        ax.set_title(text + (f", {int(clipped.sum())} clipped" if bool(clipped.any()) else ""), fontsize=9)
        for side in ("left", "right", "top"):
            ax.spines[side].set_visible(False)
    axes[-1, 0].set_xlabel("value")
    fig.tight_layout()


def plot_clip_errors(ratios: Sequence[float], errors: dict[str, Sequence[float]]):
    """Chapter 07: the squared error of a few groups against the clipping ratio (scale = ratio
    max|group| / 7), each curve relative to its own ratio-1 error, its minimum marked. Returns nothing."""
    import matplotlib.pyplot as plt

    r = np.asarray(ratios, dtype=float)
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for name, e in errors.items():
        e = np.asarray(e, dtype=float)
        rel = e / e[np.argmax(r)]  # 1 at ratio 1 (plain absmax)
        line, = ax.plot(r, rel, "o-", ms=3, label=name)
        best = int(np.argmin(e))
        ax.plot(r[best], rel[best], "*", ms=12, color=line.get_color())
    ax.axhline(1.0, color="0.7", lw=0.8, ls="--")
    ax.set_xlabel("clipping ratio (1 = plain absmax)")
    ax.set_ylabel("squared error / absmax's")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    fig.tight_layout()


# --- chapter 02

def plot_normalisation(before, after, labels: Sequence[str] | None = None, title_after: str = "after LayerNorm"):
    """Chapter 02: a few token vectors (rows of ``before``, (tokens, features)) feature by feature, before and
    after a normalisation (``after``, same shape): each token's mean and spread are marked. Returns nothing."""
    import matplotlib.pyplot as plt

    before, after = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    labels = list(labels) if labels is not None else [f"token {i}" for i in range(len(before))]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    features = np.arange(before.shape[1])
    for ax, values, title in zip(axes, (before, after), ("before", title_after)):
        for i, (row, label) in enumerate(zip(values, labels)):
            color = f"C{i}"
            mean = round(float(row.mean()), 1) + 0.0  # + 0.0: no "-0.0"
            ax.plot(features, row, "o-", color=color, ms=3, lw=1, label=f"{label}: mean {mean:+.1f}, std {row.std():.1f}")
            ax.axhline(row.mean(), color=color, lw=0.8, ls="--")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("feature")
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()



# --- chapter 05

def plot_safetensors_layout(data: bytes, zoom_bytes: int | None = None):
    """Chapter 05: a safetensors file (``data``, its bytes) as a strip of bytes. Top: the whole
    file, each tensor's byte range a block, the largest one named. Bottom: the file's first
    ``zoom_bytes`` bytes, where the 8-byte length and the JSON header sit (too thin to see at
    the top). Returns nothing."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    from course_lib.checkpoint import read_safetensors_header

    ranges = sorted((start, end, name) for name, (_, _, (start, end)) in read_safetensors_header(data).items())
    size = len(data)
    data_start = size - max((end for _, end, _ in ranges), default=0)  # the tensors fill the file's end
    header_length = data_start - 8
    zoom = zoom_bytes or min(size, 3 * data_start)
    fig, axes = plt.subplots(2, 1, figsize=(10, 3.0), gridspec_kw={"hspace": 1.0})
    for ax, right in zip(axes, (size, zoom)):
        ax.broken_barh([(0, 8)], (0, 1), color="tab:red")
        ax.broken_barh([(8, header_length)], (0, 1), color="tab:orange")
        for i, (start, end, _) in enumerate(ranges):
            ax.broken_barh([(data_start + start, end - start)], (0, 1), color=plt.cm.Blues(0.35 + 0.45 * (i % 2)))
        ax.set_xlim(0, right)
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
    axes[0].xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:g} MB"))
    if ranges:
        start, end, name = max(ranges, key=lambda r: r[1] - r[0])
        axes[0].text(data_start + (start + end) / 2, 0.5, f"{name}\n{end - start:,} bytes", ha="center",
                     va="center", fontsize=7, color="white")
    axes[0].set_title(f"the whole file: {size:,} bytes, {len(ranges)} tensors (blue, alternating shades)",
                      fontsize=9, loc="left")
    axes[1].set_title(f"its first {zoom:,} bytes: the length N (red, 8 bytes, little-endian), the JSON header "
                      f"(orange), the first tensors", fontsize=9, loc="left", pad=16)
    axes[1].text(8 + header_length / 2, 0.5, f"JSON header: N = {header_length:,} bytes", ha="center",
                 va="center", fontsize=8)
    axes[1].axvline(data_start, color="black", lw=1.5)
    axes[1].text(data_start, 1.04, f" byte 8 + N = {data_start:,}: data_offsets count from here", ha="left",
                 va="bottom", fontsize=7)
    axes[1].set_xlabel("byte offset in the file", fontsize=8)


# --- chapter 08

def plot_bias_correction(beta1: float = 0.9, beta2: float = 0.999, steps: int = 60):
    """Chapter 08: AdamW's running means for a constant gradient g = 1, with and without bias
    correction: m and v start at 0, so uncorrected they are far too small for the first steps
    (v for hundreds of steps); divided by 1 - beta^t they are exactly 1 from step 1. Returns nothing."""
    import matplotlib.pyplot as plt

    t = np.arange(1, steps + 1)
    fig, ax = plt.subplots(figsize=(7, 3.0))
    for beta, name, colour in ((beta1, "m", "tab:blue"), (beta2, "v", "tab:orange")):
        raw = 1 - beta ** t  # the running mean of g = 1 (or g² = 1) after t steps from 0
        ax.plot(t, raw, color=colour, label=f"{name} (beta = {beta:g}), raw")
        ax.plot(t, raw / (1 - beta ** t), color=colour, ls="--", label=f"{name} / (1 - beta^t)")
    ax.set_xlabel("step t")
    ax.set_ylabel("running mean of g = 1")
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()


def plot_lr_schedules(curves: dict[str, tuple[Sequence[int], Sequence[float]]], log: bool = False):
    """Chapter 08: learning rate against the optimizer step, one line per schedule
    ``{name: (steps, lrs)}``. Returns nothing."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.0), squeeze=False)
    for ax, (name, (steps, lrs)) in zip(axes[0], curves.items()):
        ax.plot(steps, lrs, color="tab:blue")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        if log:
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes[0, 0].set_ylabel("learning rate")
    fig.tight_layout()


def plot_grad_norms(steps: Sequence[int], norms: Sequence[float], max_norm: float, title: str = "gradient norm"):
    """Chapter 08: the global gradient norm of each step (before clipping) with the clipping
    threshold; the steps above it were scaled down to it. Returns nothing."""
    import matplotlib.pyplot as plt

    steps, norms = np.asarray(steps), np.asarray(norms, dtype=float)
    above = norms > max_norm
    fig, ax = plt.subplots(figsize=(7, 3.0))
    ax.plot(steps, norms, lw=0.8, color="tab:blue", label="global norm before clipping")
    ax.plot(steps[above], norms[above], "o", ms=3, color="tab:red", label=f"clipped ({int(above.sum())} of {len(norms)} steps)")
    ax.axhline(max_norm, color="tab:red", ls="--", lw=1, label=f"max_norm = {max_norm:g}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("‖g‖ (log scale)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()


def plot_training_runs(runs: dict[str, dict], metric: str = "macro_f1", metric_label: str = "validation macro-F1"):
    """Chapter 08: fine-tuning runs side by side: the training loss per step (left, log scale)
    and the validation metric at each evaluation (right), the kept step marked.

    ``runs``: ``{name: history}`` with ``"step"``, ``"loss"``, ``"eval_step"``, ``metric`` (or
    ``"eval": {metric: ...}``) and optionally ``"best_step"``: lists of numbers as
    ``course_lib.training.train``'s history holds them. Returns nothing."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.3))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (name, run), colour in zip(runs.items(), colours):
        loss = np.asarray(run["loss"], dtype=float)
        left.plot(run["step"], loss, lw=0.5, alpha=0.35, color=colour)
        if len(loss) >= 10:  # a moving average over 10 steps shows the trend through the batch noise
            smooth = np.convolve(loss, np.ones(10) / 10, mode="valid")
            left.plot(np.asarray(run["step"])[9:], smooth, lw=1.5, color=colour, label=name)
        else:
            left.plot(run["step"], loss, lw=1.5, color=colour, label=name)
        values = run[metric] if metric in run else run["eval"][metric]  # a train() history keeps them under "eval"
        right.plot(run["eval_step"], values, "o-", ms=3, color=colour, label=name)
        if run.get("best_step"):
            right.axvline(run["best_step"], color=colour, ls=":", lw=1)
    left.set_yscale("log")
    left.set_xlabel("step")
    left.set_ylabel("training loss (10-step mean)")
    left.legend(fontsize=8)
    right.set_xlabel("step")
    right.set_ylabel(metric_label)
    right.legend(fontsize=8)
    fig.tight_layout()


def plot_confusion_matrices(matrices: dict[str, Sequence[Sequence[int]]], labels: Sequence[str]):
    """Chapter 08: one confusion matrix per model (rows: the true class, columns: the
    predicted one), counts written in the cells. Returns nothing."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(2.9 * len(matrices), 2.9), squeeze=False)
    for ax, (name, matrix) in zip(axes[0], matrices.items()):
        m = np.asarray(matrix)
        rates = m / np.maximum(m.sum(axis=1, keepdims=True), 1)  # colour: the share of each true class
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for (r, c), n in np.ndenumerate(m):
            ax.text(c, r, f"{n}", ha="center", va="center", color="white" if rates[r, c] > 0.5 else "black")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_title(name, fontsize=9)
    axes[0, 0].set_ylabel("true")
    fig.tight_layout()


def plot_lora_parameters(ranks: Sequence[int], trainable: Sequence[int], full: int, title: str = ""):
    """Chapter 08: trainable parameters of LoRA against its rank, beside full fine-tuning's
    (log scale), each bar labelled with its share of full. Returns nothing."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.0))
    names = [f"r = {r}" for r in ranks] + ["full"]
    values = list(trainable) + [full]
    bars = ax.bar(names, values, color=["tab:green"] * len(ranks) + ["tab:grey"])
    for bar, v in zip(bars, values):
        share = 100 * v / full
        ax.text(bar.get_x() + bar.get_width() / 2, v * 1.15, f"{share:.2g} %" if share < 10 else f"{share:.0f} %",
                ha="center", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(top=full * 4)
    ax.set_ylabel("trainable parameters")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()


def plot_head_slices(num_heads: int, head_dim: int, pruned: Sequence[int] = ()):
    """Chapter 08: which rows of q, k, v (each (H*D, C)) and which columns of the output
    projection ((C, H*D)) belong to each head; the pruned heads' slices are hatched. Returns nothing."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    width = num_heads * head_dim
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.8), gridspec_kw={"width_ratios": [1, 1, 1, 1.6]})
    for ax, name in zip(axes[:3], ("query", "key", "value")):
        for h in range(num_heads):
            gone = h in pruned
            ax.add_patch(Rectangle((0, width - (h + 1) * head_dim), 1, head_dim, facecolor=colours(h % 10),
                                   alpha=0.25 if gone else 0.8, hatch="xx" if gone else None, edgecolor="white"))
            ax.text(0.5, width - (h + 0.5) * head_dim, f"head {h}" + (" (pruned)" if gone else ""), ha="center",
                    va="center", fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, width)
        ax.set_xticks([])
        ax.set_yticks([0, width], [f"{width}", "0"])
        ax.set_title(f"{name}.weight rows", fontsize=9)
    ax = axes[3]
    for h in range(num_heads):
        gone = h in pruned
        ax.add_patch(Rectangle((h * head_dim, 0), head_dim, 1, facecolor=colours(h % 10), alpha=0.25 if gone else 0.8,
                               hatch="xx" if gone else None, edgecolor="white"))
        ax.text((h + 0.5) * head_dim, 0.5, f"{h}", ha="center", va="center", fontsize=8)
    ax.set_xlim(0, width)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_xticks([0, width])
    ax.set_title("output.dense.weight columns", fontsize=9)
    fig.tight_layout()


def plot_pruning_cost(ks: Sequence[int], curves: dict[str, Sequence[float]], ylabel: str,
                      total_heads: int | None = None, reference: float | None = None, title: str = ""):
    """Chapter 08: a score against the number of heads pruned, one line per way of choosing
    them (e.g. least important first vs at random); ``reference`` draws the unpruned model's
    score. Returns nothing."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, values in curves.items():
        ax.plot(ks, values, "o-", ms=3, label=name)
    if reference is not None:
        ax.axhline(reference, color="0.6", ls="--", lw=1, label="unpruned")
    ax.set_xlabel("heads pruned" + (f" (of {total_heads})" if total_heads else ""))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()


def _as_image(image) -> np.ndarray:
    """(H, W) or (H, W, 3) as a NumPy array; a (C, H, W) tensor or array is moved channels-last."""
    array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def plot_image_grid(images: Sequence, titles: Sequence[str] | None = None, columns: int = 8, cmap: str = "gray",
                    size: float = 1.3, title: str = "", symmetric: bool = False):
    """Chapter 10: pictures side by side in rows of ``columns``. Each is (H, W) (drawn with
    ``cmap``), (H, W, 3) or a (C, H, W) tensor (moved channels-last); ``symmetric`` centres the
    colour scale on 0 (feature maps with signs). Returns nothing."""
    import matplotlib.pyplot as plt

    rows = (len(images) + columns - 1) // columns
    fig, axes = plt.subplots(rows, min(columns, len(images)), figsize=(size * min(columns, len(images)), size * rows + 0.3),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= len(images):
            continue
        array = _as_image(images[k])
        if array.ndim == 2 and symmetric:
            bound = float(np.abs(array).max()) or 1.0
            ax.imshow(array, cmap="RdBu_r", vmin=-bound, vmax=bound)
        elif array.ndim == 2:
            ax.imshow(array, cmap=cmap)
        elif array.dtype == np.uint8:
            ax.imshow(array)
        elif array.min() >= 0 and array.max() > 1.5:  # 0..255 floats
            ax.imshow(np.clip(array, 0, 255).astype(np.uint8))
        else:  # e.g. normalised pixel_values (about -1..1): stretched to 0..1 to be drawn
            low, high = float(array.min()), float(array.max())
            ax.imshow((array - low) / (high - low) if high > low else np.zeros_like(array))
        if titles:
            ax.set_title(titles[k], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()


def plot_kernel_sliding(image, kernel, output, positions: Sequence[tuple[int, int]], stride: int = 1,
                        padding: int = 0, title: str = ""):
    """Chapter 10: a kernel sliding over an image. Left: the (H, W) input (with its zero
    padding drawn grey) and the window read for each output position in ``positions``
    (row, column of the output), one colour each; middle: the kernel's weights; right: the
    output, the same positions outlined in the same colours. Returns nothing."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    image, kernel, output = (_as_image(a).astype(float) for a in (image, kernel, output))
    kh, kw = kernel.shape
    padded = np.pad(image, padding, constant_values=np.nan)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6), gridspec_kw={"width_ratios": [padded.shape[1], kw * 2.2, output.shape[1]]})
    axes[0].imshow(np.where(np.isnan(padded), 0.5 * np.nanmax(image), padded), cmap="gray")
    if padding:
        axes[0].add_patch(Rectangle((padding - 0.5, padding - 0.5), image.shape[1], image.shape[0], fill=False,
                                    edgecolor="0.4", ls="--", lw=0.8))
    colours = plt.get_cmap("tab10")
    for n, (r, c) in enumerate(positions):
        axes[0].add_patch(Rectangle((c * stride - 0.5, r * stride - 0.5), kw, kh, fill=False, edgecolor=colours(n % 10), lw=2))
        axes[2].add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor=colours(n % 10), lw=2))
    axes[0].set_title(f"input {image.shape[0]}×{image.shape[1]}" + (f", padding {padding}" if padding else ""), fontsize=9)
    bound = float(np.abs(kernel).max()) or 1.0
    axes[1].imshow(kernel, cmap="RdBu_r", vmin=-bound, vmax=bound)
    for (r, c), v in np.ndenumerate(kernel):
        axes[1].text(c, r, f"{v:g}", ha="center", va="center", fontsize=8)
    axes[1].set_title(f"kernel {kh}×{kw}", fontsize=9)
    bound = float(np.abs(output).max()) or 1.0
    axes[2].imshow(output, cmap="RdBu_r", vmin=-bound, vmax=bound)
    axes[2].set_title(f"output {output.shape[0]}×{output.shape[1]}" + (f" (stride {stride})" if stride > 1 else ""),
                      fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()


def plot_im2col(height: int, width: int, kernel: int, stride: int = 1, padding: int = 0):
    """Chapter 10: what im2col does, on a one-channel ``height`` × ``width`` input whose pixels
    are numbered. Left: the input with the first two windows; right: the column matrix, one
    column per output position, each column the pixel numbers its window reads (· for
    padding). The convolution is then one matrix product: (out channels, k·k) @ this. Returns nothing."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    numbers = np.pad(np.arange(height * width).reshape(height, width), padding, constant_values=-1)
    out_h = (numbers.shape[0] - kernel) // stride + 1
    out_w = (numbers.shape[1] - kernel) // stride + 1
    columns = np.stack([numbers[r * stride:r * stride + kernel, c * stride:c * stride + kernel].reshape(-1)
                        for r in range(out_h) for c in range(out_w)], axis=1)
    fig, axes = plt.subplots(1, 2, figsize=(3 + 0.45 * columns.shape[1], 3.4),
                             gridspec_kw={"width_ratios": [numbers.shape[1], 0.8 * columns.shape[1]]})
    colours = plt.get_cmap("tab10")
    for ax, grid in ((axes[0], numbers), (axes[1], columns)):
        ax.imshow(np.where(grid < 0, 0.25, 1.0), cmap="gray", vmin=0, vmax=1)
        for (r, c), v in np.ndenumerate(grid):
            ax.text(c, r, "·" if v < 0 else f"{v}", ha="center", va="center", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    for n in range(min(2, columns.shape[1])):
        r, c = divmod(n, out_w)
        axes[0].add_patch(Rectangle((c * stride - 0.5, r * stride - 0.5), kernel, kernel, fill=False,
                                    edgecolor=colours(n), lw=2))
        axes[1].add_patch(Rectangle((n - 0.5, -0.5), 1, kernel * kernel, fill=False, edgecolor=colours(n), lw=2))
    axes[0].set_title(f"input {height}×{width}" + (f", padding {padding}" if padding else ""), fontsize=9)
    axes[1].set_title(f"columns: ({kernel}·{kernel}, {out_h}·{out_w}) — one per output position", fontsize=9)
    axes[1].set_ylabel("position in the window")
    fig.tight_layout()


def plot_patches(image, patch_size: int, max_tokens: int = 16):
    """Chapter 10: an image cut into ``patch_size`` squares, numbered in reading order (left),
    and the first ``max_tokens`` of them laid out as the sequence the Transformer reads, after
    a [CLS] slot (right). ``image``: (H, W, 3) uint8 or (C, H, W). Returns nothing."""
    import matplotlib.pyplot as plt

    array = _as_image(image)
    h, w = array.shape[:2]
    gh, gw = h // patch_size, w // patch_size
    fig = plt.figure(figsize=(10, 3.6))
    grid = fig.add_gridspec(2, max_tokens + 1, width_ratios=[1] * (max_tokens + 1))
    left = fig.add_subplot(grid[:, : (max_tokens + 1) // 2])
    left.imshow(array, cmap="gray" if array.ndim == 2 else None)
    for k in range(1, gh):
        left.axhline(k * patch_size - 0.5, color="white", lw=1)
    for k in range(1, gw):
        left.axvline(k * patch_size - 0.5, color="white", lw=1)
    for r in range(gh):
        for c in range(gw):
            left.text(c * patch_size + patch_size / 2 - 0.5, r * patch_size + patch_size / 2 - 0.5, f"{r * gw + c + 1}",
                      ha="center", va="center", color="yellow", fontsize=7)
    left.set_title(f"{h}×{w} image → {gh}×{gw} = {gh * gw} patches of {patch_size}×{patch_size} (numbered by position)",
                   fontsize=9)
    left.axis("off")
    shown = min(max_tokens, gh * gw)
    slots = (max_tokens + 1) - (max_tokens + 1) // 2
    for k in range(min(shown + 1, 2 * slots)):
        ax = fig.add_subplot(grid[k // slots, (max_tokens + 1) // 2 + k % slots])
        ax.set_xticks([])
        ax.set_yticks([])
        if k == 0:
            ax.text(0.5, 0.5, "[CLS]", ha="center", va="center", fontsize=7)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_aspect("equal")
            ax.set_title("0", fontsize=7)
            continue
        r, c = divmod(k - 1, gw)
        ax.imshow(array[r * patch_size:(r + 1) * patch_size, c * patch_size:(c + 1) * patch_size],
                  cmap="gray" if array.ndim == 2 else None)
        ax.set_title(f"{k}", fontsize=7)
    fig.suptitle("patches as tokens: position 0 is [CLS], then the patches in reading order", fontsize=10)
    fig.tight_layout()


def plot_cls_attention(image, maps: Sequence, titles: Sequence[str], alpha: float = 0.6):
    """Chapter 10: where [CLS] looks. ``maps``: one (grid_h, grid_w) array per panel (the
    attention from [CLS] to each patch, e.g. averaged over heads), drawn over ``image``
    (upsampled to its size, nearest). Returns nothing."""
    import matplotlib.pyplot as plt

    array = _as_image(image)
    h, w = array.shape[:2]
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(2.3 * (len(maps) + 1), 2.6), squeeze=False)
    axes[0, 0].imshow(array, cmap="gray" if array.ndim == 2 else None)
    axes[0, 0].set_title("input", fontsize=9)
    for ax, m, t in zip(axes[0, 1:], maps, titles):
        m = np.asarray(m, dtype=float)
        ax.imshow(array, cmap="gray" if array.ndim == 2 else None)
        ax.imshow(m, cmap="inferno", alpha=alpha, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
        ax.set_title(t, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()


def plot_position_similarity(positions, grid_height: int, grid_width: int, title: str = ""):
    """Chapter 10: what a ViT's learned positions learned. ``positions``: (grid_h·grid_w, D)
    patch position embeddings ([CLS]'s removed). Panel (r, c): the cosine similarity of patch
    (r, c)'s position to every other position, as a grid_h × grid_w picture — trained positions
    are most similar to their neighbours, row and column. Returns nothing."""
    import matplotlib.pyplot as plt

    p = np.asarray(positions.detach().cpu() if hasattr(positions, "detach") else positions, dtype=float)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    similarity = p @ p.T
    fig, axes = plt.subplots(grid_height, grid_width, figsize=(0.55 * grid_width + 0.8, 0.55 * grid_height + 0.5),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        image = ax.imshow(similarity[k].reshape(grid_height, grid_width), cmap="viridis", vmin=-1, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="cosine similarity")
    fig.suptitle(title or "position embedding similarity (panel = one patch's position)", fontsize=9)


def plot_accuracy_bytes(rows: dict[str, tuple[float, float]], title: str = ""):
    """Chapter 10: test accuracy against weight bytes, one labelled point per model
    (``rows``: name → (bytes, accuracy)). Returns nothing."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.0))
    for name, (size, accuracy) in rows.items():
        ax.scatter([size / 1e3], [100 * accuracy], s=30)
        ax.annotate(name, (size / 1e3, 100 * accuracy), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("weights (kB)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()


def plot_operator_counts(counts: dict[str, int], num_layers: int | None = None, title: str = ""):
    """Chapter 11: how many nodes of each ONNX operator a graph holds (horizontal bars, most
    first); with ``num_layers`` each bar also says how many that is per layer. Returns nothing."""
    import matplotlib.pyplot as plt

    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(items) + 0.9))
    names, values = [k for k, _ in items][::-1], [v for _, v in items][::-1]
    ax.barh(names, values, color="tab:blue")
    for y, v in enumerate(values):
        per = f"  ({v / num_layers:.3g} per layer)" if num_layers else ""
        ax.text(v, y, f" {v}{per}", va="center", fontsize=7)
    ax.set_xlim(0, max(values) * 1.45)
    ax.set_xlabel("nodes in the graph")
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()


def plot_gguf_layout(layout: dict, file_size: int, max_tensors: int = 12):
    """Chapter 11: a GGUF file as a strip of bytes (top: the whole file; bottom: its first
    ``data_offset`` + a few tensors' bytes): header, metadata, tensor descriptions, the
    alignment padding, then each tensor's data coloured by its type. ``layout``:
    ``read_gguf_layout``'s dict. Returns nothing."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    colours = {"header": "0.35", "metadata": "tab:purple", "tensor infos": "tab:cyan", "padding": "0.85",
               "F32": "tab:orange", "F16": "tab:olive", "Q8_0": "tab:green", "Q4_0": "tab:red"}
    meta_start = layout["metadata"][0]["offset"] if layout["metadata"] else layout["tensor_infos_offset"]
    tensors = sorted(layout["tensors"], key=lambda t: t["data_offset"])
    data = [(t["type"], t["data_offset"], t["data_offset"] + (t["nbytes"] or 0), t["name"]) for t in tensors]
    spans = [("header", 0, meta_start), ("metadata", meta_start, layout["tensor_infos_offset"]),
             ("tensor infos", layout["tensor_infos_offset"], layout["header_end"]),
             ("padding", layout["header_end"], layout["data_offset"])] + [(k, s, e) for k, s, e, _ in data]
    fig, axes = plt.subplots(2, 1, figsize=(10, 2.8))
    zoom = data[min(max_tensors, len(data)) - 1][2] if data else layout["data_offset"]
    for ax, limit in ((axes[0], file_size), (axes[1], zoom)):
        for kind, start, end in spans:
            if start >= limit:
                continue
            ax.add_patch(Rectangle((start, 0), min(end, limit) - start, 1, facecolor=colours.get(kind, "0.5"),
                                   edgecolor="white", lw=0.3))
        ax.set_xlim(0, limit)
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.set_xlabel("byte offset")
    for kind, start, end, name in data[:max_tensors]:
        axes[1].text((start + end) / 2, 0.5, name.replace(".weight", ".w").replace(".bias", ".b"), ha="center",
                     va="center", fontsize=6, rotation=90)
    axes[0].set_title(f"the whole file: {file_size:,} bytes; tensor data starts at byte {layout['data_offset']:,}",
                      fontsize=9)
    axes[1].set_title(f"zoom: the header and the first {min(max_tensors, len(data))} tensors", fontsize=9)
    handles = [Rectangle((0, 0), 1, 1, facecolor=c) for c in colours.values()]
    fig.legend(handles, list(colours), loc="lower center", ncol=len(colours), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))


def plot_quant_block(qtype: str, values, codes, scale: float):
    """Chapter 11: one GGUF block of 32 weights and its bytes. Top: the weights (bars) and the
    value each one is stored as; bottom: the block's bytes — 2 bytes of float16 scale, then
    32 int8 (Q8_0) or 16 bytes of two 4-bit codes each (Q4_0: weight j in the low nibble of
    byte j, weight j + 16 in the high nibble). ``codes``: the stored integers per weight
    (int8 values for Q8_0, codes 0..15 for Q4_0). Returns nothing."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    values, codes = np.asarray(values, dtype=float), np.asarray(codes, dtype=int)
    restored = codes * scale if qtype == "Q8_0" else (codes - 8) * scale
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 3.8), gridspec_kw={"height_ratios": [2.2, 1]})
    top.bar(range(32), values, color="0.7", label="weight")
    top.plot(range(32), restored, "_", color="tab:red", ms=10, mew=2, label="stored value")
    top.axhline(0, color="0.5", lw=0.5)
    top.set_xticks(range(0, 32, 4))
    top.set_xlabel("weight index in the block")
    top.legend(fontsize=8)
    top.set_title(f"{qtype}: 32 weights, scale d = {scale:.4g}", fontsize=10)
    n_bytes = 34 if qtype == "Q8_0" else 18
    for b in range(n_bytes):
        if b < 2:
            colour, text = "tab:purple", "d" if b == 0 else "d"
        elif qtype == "Q8_0":
            colour, text = "tab:green", f"{codes[b - 2]}"
        else:
            j = b - 2
            colour, text = "tab:red", f"{codes[j + 16]:x}|{codes[j]:x}"
        bottom.add_patch(Rectangle((b, 0), 1, 1, facecolor=colour, alpha=0.35, edgecolor="white"))
        bottom.text(b + 0.5, 0.5, text, ha="center", va="center", fontsize=6 if qtype == "Q8_0" else 7)
    bottom.set_xlim(0, n_bytes)
    bottom.set_ylim(0, 1)
    bottom.set_yticks([])
    bottom.set_xticks(range(0, n_bytes + 1, 2))
    bottom.set_xlabel("byte" + ("" if qtype == "Q8_0" else "  (each Q4_0 byte: high nibble = code j+16 | low nibble = code j, hex)"))
    fig.tight_layout()


# --- chapter 09


def plot_rope_rotations(inv_freq, positions: Sequence[int] = tuple(range(8)), pairs: Sequence[int] = (0, 1, 3),
                        vector=(1.0, 0.0)):
    """Chapter 09: RoPE as rotations. One panel per feature pair i: the same 2-D vector rotated by
    position x ``inv_freq[i]`` radians for each position (darker = later), on the unit circle.
    Fast pairs (i = 0) turn a lot per token, slow ones barely move. Returns nothing."""
    import matplotlib.pyplot as plt

    inv_freq = np.asarray(inv_freq, dtype=float)
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.0 * len(pairs), 3.1))
    colors = plt.cm.viridis(np.linspace(0.0, 0.9, len(positions)))
    for ax, i in zip(np.atleast_1d(axes), pairs):
        theta = inv_freq[i]
        circle = np.linspace(0, 2 * np.pi, 200)
        ax.plot(np.cos(circle), np.sin(circle), color="#dddddd", linewidth=1)
        for m, color in zip(positions, colors):
            a = m * theta
            x = vector[0] * np.cos(a) - vector[1] * np.sin(a)
            y = vector[0] * np.sin(a) + vector[1] * np.cos(a)
            ax.annotate("", xy=(x, y), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": color, "lw": 1.6})
            ax.text(1.13 * x, 1.13 * y, str(m), ha="center", va="center", fontsize=7, color=color)
        ax.set_xlim(-1.3, 1.3)
        ax.set_ylim(-1.3, 1.3)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"pair {i}: {theta:.3g} rad per token", fontsize=9)
    fig.suptitle("one (x, y) feature pair of q or k at positions " + ", ".join(map(str, positions)), fontsize=10)
    fig.tight_layout()


def plot_rope_frequencies(curves: dict[str, Sequence[float]], context: int | None = None):
    """Chapter 09: RoPE's frequencies (radians per token) of each feature pair, log scale, one line
    per ``{label: inv_freq}``; with ``context``, the frequency below which a pair turns less than
    one full circle over that many tokens is marked. Returns nothing."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    for label, values in curves.items():
        values = np.asarray(values, dtype=float)
        ax.plot(np.arange(len(values)), values, marker=".", markersize=3, label=label)
    if context:
        ax.axhline(2 * np.pi / context, color="grey", linestyle="--", linewidth=1)
        ax.text(0, 2 * np.pi / context * 1.3, f"one full turn over {context:,} tokens", fontsize=8, color="grey")
    ax.set_yscale("log")
    ax.set_xlabel("feature pair i")
    ax.set_ylabel("radians per token")
    ax.legend(fontsize=8)
    fig.tight_layout()


def plot_swiglu_gate(x_min: float = -5.0, x_max: float = 5.0):
    """Chapter 09: the gate. Left: SiLU x·σ(x) beside GELU and ReLU; right: σ(x), the share of each
    value a SiLU lets through. Returns nothing."""
    import matplotlib.pyplot as plt
    import torch
    import torch.nn.functional as F

    x = torch.linspace(x_min, x_max, 400)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.0))
    left.plot(x, F.silu(x), label="SiLU  x·σ(x)", linewidth=2)
    left.plot(x, F.gelu(x), label="GELU (GPT-2)", linestyle="--")
    left.plot(x, F.relu(x), label="ReLU", linestyle=":")
    left.axhline(0, color="#cccccc", linewidth=0.8)
    left.set_title("the activation", fontsize=10)
    left.legend(fontsize=8)
    right.plot(x, torch.sigmoid(x), color="tab:green", linewidth=2)
    right.set_ylim(-0.05, 1.05)
    right.set_title("σ(x): how much of x passes", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("x")
    fig.tight_layout()


def plot_gqa_heads(num_heads: int, num_kv_heads: int):
    """Chapter 09: which key/value head each query head reads. Multi-head attention (one K/V head per
    query head), grouped-query attention (``num_heads // num_kv_heads`` query heads per K/V head) and
    multi-query attention (one K/V head for all). Returns nothing."""
    import matplotlib.pyplot as plt

    layouts = [("multi-head (GPT-2)", num_heads), (f"grouped-query ({num_kv_heads} K/V heads)", num_kv_heads),
               ("multi-query (1 K/V head)", 1)]
    fig, axes = plt.subplots(1, 3, figsize=(11, 2.6))
    colors = plt.cm.tab10(np.arange(10))
    for ax, (title, kv) in zip(axes, layouts):
        group = num_heads // kv
        for h in range(num_heads):
            g = h // group
            ax.add_patch(plt.Rectangle((h, 1.6), 0.8, 0.6, color=colors[g % 10], alpha=0.85))
            ax.plot([h + 0.4, (g + 0.5) * num_heads / kv - 0.1], [1.6, 0.7], color=colors[g % 10], linewidth=1)
        for g in range(kv):
            x = (g + 0.5) * num_heads / kv - 0.5
            ax.add_patch(plt.Rectangle((x, 0.1), 0.8, 0.6, color=colors[g % 10], hatch="//", alpha=0.85))
        ax.text(-0.6, 1.9, "q", ha="right", va="center", fontsize=9)
        ax.text(-0.6, 0.4, "k, v", ha="right", va="center", fontsize=9)
        ax.set_xlim(-1.6, num_heads + 0.2)
        ax.set_ylim(0, 2.4)
        ax.axis("off")
        ax.set_title(f"{title}\nthe cache keeps {kv} K/V head{'s' if kv > 1 else ''} for {num_heads} query heads", fontsize=9)
    fig.tight_layout()


def plot_kv_cache_vs_heads(kv_heads: Sequence[int], megabytes: Sequence[float], context: int, title: str = "",
                           marked: int | None = None):
    """Chapter 09: KV-cache size of one sequence of ``context`` tokens against the number of K/V heads
    (bars, MB); ``marked`` highlights the checkpoint's own choice. Returns nothing."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.0))
    names = [str(k) for k in kv_heads]
    colors = ["tab:orange" if k == marked else "tab:blue" for k in kv_heads]
    bars = ax.bar(names, megabytes, color=colors)
    for bar, mb in zip(bars, megabytes):
        ax.text(bar.get_x() + bar.get_width() / 2, mb, f"{mb:,.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("K/V heads (num_key_value_heads)")
    ax.set_ylabel(f"MB for {context:,} tokens")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()


def plot_loss_curves(runs: dict[str, dict], title: str = ""):
    """Chapter 09: training and held-out loss of several runs on one axis, ``{label: training_log["log"]}``
    (train loss smoothed over 20 steps, thin; held-out loss, thick with markers). Returns nothing."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.4))
    for i, (label, log) in enumerate(runs.items()):
        color = plt.cm.tab10(i)
        train = np.asarray(log["train_loss"], dtype=float)
        k = min(20, len(train))
        smooth = np.convolve(train, np.ones(k) / k, mode="valid")
        ax.plot(np.asarray(log["step"])[k - 1:], smooth, color=color, alpha=0.45, linewidth=1,
                label=f"{label}: train (mean of {k} steps)")
        ax.plot(log["eval_step"], log["heldout_loss"], color=color, marker="o", markersize=3, linewidth=2,
                label=f"{label}: held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
