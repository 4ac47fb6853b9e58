"""How the course's tiny GPT-2 and tiny Llama were trained: a tokenizer and a small model from nothing, on a laptop CPU.

Run ``python -m course_lib.train_tiny`` to reproduce ``course_lib/assets/tiny-gpt2/``
(about 8 to 10 minutes on 2 CPU cores). Chapter 09's pair, trained on the larger
``python-stdlib`` corpus with one tokenizer, the same parameter budget and the same steps::

    python -m course_lib.train_tiny --corpus python-stdlib --arch gpt2    # -> assets/tiny-gpt2-stdlib
    python -m course_lib.train_tiny --corpus python-stdlib --arch llama   # -> assets/tiny-llama

(``--arch llama``: RMSNorm, RoPE, SwiGLU and grouped-query attention in the Hub's
``LlamaForCausalLM`` layout; ``intermediate_size`` 416 gives GPT-2's parameter count at width 128.)
The steps, one function each, in the order ``main`` calls them:

1. ``train_tokenizer``: a byte-level BPE (chapter 03's ``train_bpe``) on the corpus's
   train split, wrapped in GPT-2's ``tokenizers`` pipeline;
2. ``token_stream``: the whole split as one long 1-D tensor of token ids;
3. ``batches``: random windows of that stream, inputs and the same tokens shifted by one
   as targets;
4. ``build_model``: the course's own ``GPT2LMHeadModel`` (or ``LlamaForCausalLM``) with its
   Hub initialisation, switched to PyTorch's fused kernels (``course_lib.fused``) for speed;
5. ``train``: AdamW, a learning rate that warms up then decays along a cosine, gradient
   clipping; the held-out loss is measured as training goes and the best weights kept;
6. ``export``: the files of the Hub's ``gpt2`` repository (or of a ``LlamaForCausalLM`` one),
   in its exact layout, plus a model card and the training log that chapters 08 and 09 plot.

The corpus is small (about 100 thousand tokens; the default run passes over it 34 times),
so a model with a million parameters starts to learn it by heart: the training loss keeps
falling while the held-out loss flattens out, and with a higher learning rate it turns up
again. Dropout, weight decay and keeping the weights with the best held-out loss are the
defences; the loss curve in ``training_log.json`` shows the gap opening.

Everything is seeded (weights, dropout, data order) and runs on a fixed number of threads,
so the same command on the same kind of machine gives the same numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from course_lib.checkpoint import write_atomic, checkpoint_state_dict
from course_lib.corpus import DOCUMENT_SEPARATOR, corpus_documents, corpus_text
from course_lib.fused import fuse
from course_lib.metrics import next_token_loss, unigram_perplexity
from course_lib.models import llama as llama_model
from course_lib.models.gpt2 import GPT2Config, GPT2LMHeadModel
from course_lib.models.llama import LlamaConfig, LlamaForCausalLM
from course_lib.tokenization import train_bpe
from course_lib.tokenizer_loading import gpt2_tokenizer

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
DEFAULT_OUT = ASSETS_DIR / "tiny-gpt2"
ARCHITECTURES = ("gpt2", "llama")
# Where each (corpus, architecture) goes when --out is not given: the assets the chapters load.
DEFAULT_OUTS = {("python-docs", "gpt2"): DEFAULT_OUT, ("python-stdlib", "gpt2"): ASSETS_DIR / "tiny-gpt2-stdlib",
                ("python-stdlib", "llama"): ASSETS_DIR / "tiny-llama", ("python-docs", "llama"): ASSETS_DIR / "tiny-llama-docs"}
SAMPLE_PROMPTS = ("The for statement", "A function definition", "def ")
EXPORTED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
                  "README.md", "training_log.json", "loss.png")


@dataclasses.dataclass
class TrainSettings:
    """Every choice that shapes the result; all of it goes into ``training_log.json``."""

    seed: int = 0
    # data and architecture
    corpus: str = "python-docs"  # or "python-stdlib" (chapter 09: 11.9x the tokens)
    arch: str = "gpt2"  # or "llama": RMSNorm, RoPE, SwiGLU, grouped-query attention (chapter 09)
    # tokenizer
    vocab_size: int = 4096  # including <|endoftext|>
    tokenizer_from: str = ""  # a folder whose tokenizer.json to reuse ("" = train one; the same corpus gives the same)
    # model (GPT-2 with fewer, narrower layers and a shorter context)
    n_positions: int = 256
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    dropout: float = 0.1  # resid_pdrop = embd_pdrop = attn_pdrop (a Llama has only attention_dropout)
    # llama only: K and V heads, each shared by n_head // num_key_value_heads query heads, and the
    # SwiGLU width (three C x F matrices; 416 gives GPT-2's 1.35M parameters at n_embd 128, 4 layers)
    num_key_value_heads: int = 2
    intermediate_size: int = 416
    # optimisation
    batch_size: int = 16  # sequences of n_positions tokens per step
    max_steps: int = 800
    learning_rate: float = 1e-3  # the peak, reached after the warmup
    min_learning_rate: float = 1e-4  # the end of the cosine
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # evaluation and limits
    eval_every: int = 50
    sample_tokens: int = 60  # new tokens per sample in the model card
    minutes: float = 14.0  # stop early (and say so) if training takes longer than this
    threads: int = 2
    device: str = "cpu"

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.n_positions

    def __post_init__(self):
        from course_lib.corpus import CORPORA

        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown arch {self.arch!r}: use one of {', '.join(ARCHITECTURES)}")
        if self.corpus not in CORPORA:
            raise ValueError(f"unknown corpus {self.corpus!r}: use one of {', '.join(CORPORA)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} does not divide into {self.n_head} heads")
        if self.arch == "llama" and (self.num_key_value_heads < 1 or self.n_head % self.num_key_value_heads):
            raise ValueError(f"num_key_value_heads must divide n_head ({self.n_head}); got {self.num_key_value_heads}")


# --------------------------------------------------------------------------------------
# 1. The tokenizer

def train_tokenizer(documents: list[str], vocab_size: int, eos_token: str = DOCUMENT_SEPARATOR):
    """Learn a byte-level BPE of ``vocab_size`` tokens (``eos_token`` is id 0) on ``documents``.

    Trained on the documents one by one, not on the joined text, so that no merge learns
    the pieces of the separator "<|endoftext|>" (it is one special token).
    """
    vocab, merges = train_bpe(documents, vocab_size, special_tokens=(eos_token,))
    return gpt2_tokenizer(vocab, merges, eos_token)  # GPT-2's pipeline around it (chapter 03)


# --------------------------------------------------------------------------------------
# 2 and 3. The token stream and the batches

def token_stream(tok, text: str) -> torch.Tensor:
    """The whole ``text`` encoded as one 1-D int64 tensor (N,); separators become the eos id."""
    return torch.tensor(tok.encode(text).ids, dtype=torch.long)


def batches(stream: torch.Tensor, block_size: int, batch_size: int, seed: int):
    """Yield ``(x, y)`` batches forever: x (B, T) token ids, y (B, T) the tokens that follow.

    One epoch = one pass over the stream: it is cut into windows of ``block_size + 1``
    tokens, starting at a random offset (so the window edges move from epoch to epoch),
    and the windows are shuffled. A window gives the inputs ``w[:-1]`` and the targets
    ``w[1:]``. The order comes from a generator seeded with ``seed``: the same every run.
    The last incomplete batch of an epoch is dropped.
    """
    span = block_size + 1
    if stream.numel() < batch_size * span + block_size:
        raise ValueError(f"a stream of {stream.numel()} tokens is too short for batches of {batch_size} x "
                         f"{span} tokens: use a smaller batch_size or n_positions")
    g = torch.Generator().manual_seed(seed)
    while True:
        offset = int(torch.randint(block_size, (1,), generator=g))
        n_windows = (stream.numel() - offset) // span
        windows = stream[offset:offset + n_windows * span].view(n_windows, span)  # (n, T + 1)
        order = torch.randperm(n_windows, generator=g)
        for i in range(0, n_windows - batch_size + 1, batch_size):
            w = windows[order[i:i + batch_size]]  # (B, T + 1)
            yield w[:, :-1], w[:, 1:]


# --------------------------------------------------------------------------------------
# 4. The model

def model_config(settings: TrainSettings, vocab_size: int, eos_token_id: int) -> GPT2Config | LlamaConfig:
    """GPT-2's (or Llama's) config with the tiny sizes; ``<|endoftext|>`` is both bos and eos, as in GPT-2.

    The Llama has the same width, depth, heads, context and vocabulary; it has no position table
    (RoPE), so its SwiGLU is made a little wider to spend the same parameter budget. Its head is
    tied to the embedding, as in SmolLM2 and Llama 3.2 1B.
    """
    if settings.arch == "llama":
        return LlamaConfig(model_type="llama", vocab_size=vocab_size, hidden_size=settings.n_embd,
                           intermediate_size=settings.intermediate_size, num_hidden_layers=settings.n_layer,
                           num_attention_heads=settings.n_head, num_key_value_heads=settings.num_key_value_heads,
                           max_position_embeddings=settings.n_positions, rms_norm_eps=1e-5, rope_theta=10000.0,
                           attention_dropout=settings.dropout, tie_word_embeddings=True,
                           bos_token_id=eos_token_id, eos_token_id=eos_token_id)
    return GPT2Config(vocab_size=vocab_size, n_positions=settings.n_positions, n_embd=settings.n_embd,
                      n_layer=settings.n_layer, n_head=settings.n_head, resid_pdrop=settings.dropout,
                      embd_pdrop=settings.dropout, attn_pdrop=settings.dropout,
                      bos_token_id=eos_token_id, eos_token_id=eos_token_id)


def init_weights(model: GPT2LMHeadModel) -> GPT2LMHeadModel:
    """GPT-2's initialisation (``transformers``' ``_init_weights``), in place.

    Matrices and embeddings ~ N(0, 0.02), biases 0, LayerNorm scale 1 and shift 0. The
    projections that write into the residual stream (``attn.c_proj``, ``mlp.c_proj``) get
    a standard deviation divided by sqrt(2 * n_layer): the stream is a sum of 2 * n_layer
    such outputs, and this keeps its size independent of the depth.
    """
    config = model.config
    std = config.initializer_range
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "ln_" in name:
                p.fill_(1.0)
            elif name.endswith("c_proj.weight"):
                p.normal_(0.0, std / math.sqrt(2 * config.n_layer))
            else:
                p.normal_(0.0, std)
    return model


def build_model(settings: TrainSettings, vocab_size: int, eos_token_id: int) -> GPT2LMHeadModel | LlamaForCausalLM:
    """A freshly initialised, fused ``GPT2LMHeadModel`` or ``LlamaForCausalLM`` (seed the RNG before calling)."""
    config = model_config(settings, vocab_size, eos_token_id)
    if settings.arch == "llama":
        model = llama_model.init_weights(LlamaForCausalLM(config))  # transformers' Llama init
    else:
        model = init_weights(GPT2LMHeadModel(config))
    return fuse(model).to(settings.device)


# --------------------------------------------------------------------------------------
# 5. Training

def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warmup to the peak over ``warmup_steps``, then a cosine down to the minimum at ``max_steps``.

    The warmup keeps AdamW's first steps small, while its running averages of the
    gradients are still poor estimates; the decay lets the model settle at the end.
    """
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.max_steps - settings.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))  # 1 -> 0
    return settings.min_learning_rate + (settings.learning_rate - settings.min_learning_rate) * cosine


def make_optimizer(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices (embeddings included), not on biases or LayerNorm."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=settings.learning_rate, betas=(settings.beta1, settings.beta2))


def training_step(model, optimizer, x: torch.Tensor, y: torch.Tensor, lr: float, grad_clip: float) -> float:
    """One update: forward, cross-entropy against the next tokens, backward, clip, step. Returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    logits = model(x)  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)  # one bad batch cannot throw the model off
    optimizer.step()
    return loss.item()


def evaluate(model, stream: torch.Tensor, settings: TrainSettings) -> float:
    """Mean next-token loss on ``stream`` (eval mode, no dropout): ``metrics.next_token_loss``
    in blocks of the full context, about 4096 tokens per forward pass."""
    batch_size = max(1, 4096 // settings.n_positions)
    return next_token_loss(model, stream, block_size=settings.n_positions, batch_size=batch_size)


def train(model, train_ids: torch.Tensor, heldout_ids: torch.Tensor, settings: TrainSettings,
          progress: bool = True) -> dict:
    """Train ``model`` in place and leave it holding the weights with the lowest held-out loss.

    Returns the log: the training loss of every step, the held-out loss every
    ``eval_every`` steps (and at the end), the best step and the wall time.
    """
    from tqdm.auto import tqdm

    optimizer = make_optimizer(model, settings)
    data = batches(train_ids, settings.n_positions, settings.batch_size, settings.seed)
    log = {"step": [], "train_loss": [], "lr": [], "eval_step": [], "heldout_loss": [],
           "best_step": None, "best_heldout_loss": float("inf"), "stopped_early": False}
    best_state = None
    start = time.perf_counter()
    bar = tqdm(range(settings.max_steps), desc="training", disable=not progress)
    model.train()
    for step in bar:
        x, y = (t.to(settings.device) for t in next(data))
        lr = learning_rate(step, settings)
        loss = training_step(model, optimizer, x, y, lr, settings.grad_clip)
        log["step"].append(step + 1)
        log["train_loss"].append(round(loss, 5))
        log["lr"].append(lr)

        last = step + 1 == settings.max_steps
        out_of_time = time.perf_counter() - start > settings.minutes * 60
        if (step + 1) % settings.eval_every == 0 or last or out_of_time:
            heldout = evaluate(model, heldout_ids, settings)
            log["eval_step"].append(step + 1)
            log["heldout_loss"].append(round(heldout, 5))
            if heldout < log["best_heldout_loss"]:  # keep a copy of the best weights so far
                log["best_step"], log["best_heldout_loss"] = step + 1, heldout
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            bar.set_postfix(loss=f"{loss:.3f}", heldout=f"{heldout:.3f}")
        elif step % 10 == 0:
            last_heldout = f"{log['heldout_loss'][-1]:.3f}" if log["heldout_loss"] else "-"
            bar.set_postfix(loss=f"{loss:.3f}", heldout=last_heldout)
        if out_of_time and not last:
            log["stopped_early"] = True
            print(f"stopped after {step + 1} of {settings.max_steps} steps: the {settings.minutes}-minute limit "
                  f"was reached (pass --minutes to allow more)", file=sys.stderr)
            break
    bar.close()
    log["wall_seconds"] = round(time.perf_counter() - start, 1)
    model.load_state_dict(best_state)
    model.eval()
    return log


# --------------------------------------------------------------------------------------
# 6. Export: the Hub's gpt2 layout

def hub_state_dict(model: GPT2LMHeadModel | LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors`` exactly as the Hub's ``gpt2`` file holds them.

    A Llama's file is its state dict as it is (``model.embed_tokens.weight``,
    ``model.layers.N.self_attn.q_proj.weight`` ...), without ``lm_head.weight`` when tied,
    as SmolLM2's and Llama 3.2 1B's files are.

    ``checkpoint_state_dict`` gives the file layout (the tied ``lm_head.weight`` left out,
    Conv1D weights back to (in, out)); the Hub file has no ``transformer.`` prefix, and it
    carries each layer's causal-mask buffer ``h.N.attn.bias``: float32 (1, 1, P, P),
    ones on and below the diagonal. Loaders ignore that buffer, but a file that "looks
    like gpt2" has it.
    """
    if isinstance(model, LlamaForCausalLM):
        return dict(sorted((k, v.float()) for k, v in checkpoint_state_dict(model).items()))
    P = model.config.n_positions
    state = {k.removeprefix("transformer."): v.float() for k, v in checkpoint_state_dict(model).items()}
    mask = torch.tril(torch.ones(P, P, dtype=torch.float32)).view(1, 1, P, P)
    for i in range(model.config.n_layer):
        state[f"h.{i}.attn.bias"] = mask.clone()  # one tensor per key: safetensors refuses shared memory
    return dict(sorted(state.items()))


def hub_config(model: GPT2LMHeadModel | LlamaForCausalLM) -> dict:
    """``config.json`` in the form of the Hub's ``gpt2/config.json``: every GPT-2 config field.

    A Llama's is the form of a Hub ``LlamaForCausalLM`` config.json (Llama 3.2's fields).
    """
    config = model.config.to_dict()
    if isinstance(model, LlamaForCausalLM):
        config.update({"architectures": ["LlamaForCausalLM"], "pretraining_tp": 1, "torch_dtype": "float32",
                       "use_cache": True})
        for internal in ("use_sliding_window", "max_window_layers", "sliding_window"):  # Mistral's/Qwen's, not a Llama's
            config.pop(internal, None)
        return dict(sorted(config.items()))
    config.update({
        "architectures": ["GPT2LMHeadModel"],
        "n_ctx": config["n_positions"],  # an old name for n_positions, still in every GPT-2 config
        # the sequence-summary head of GPT2DoubleHeadsModel: unused here, present in the Hub's file
        "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
        "summary_type": "cls_index", "summary_use_proj": True,
        "use_cache": True,
    })
    return dict(sorted(config.items()))


def write_json(path: Path, value) -> None:
    write_atomic(path, lambda p: p.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8"))


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def plot_loss(log: dict, path: Path, title: str = "course tiny GPT-2: loss", dropout: float = 0.1) -> bool:
    """Save the loss curve (``plots.plot_loss_curve``) as a small PNG; returns False (and writes
    nothing) if it is 60 KB or more."""
    import io

    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from course_lib.plots import plot_loss_curve

    plot_loss_curve(log["step"], log["train_loss"], log["eval_step"], log["heldout_loss"],
                    best_step=log["best_step"], title=title,
                    train_label="train (each batch, with dropout)" if dropout else "train (each batch)")
    fig = plt.gcf()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    if buffer.tell() >= 60_000:
        return False
    write_atomic(path, lambda p: p.write_bytes(buffer.getvalue()))
    return True


def machine_description() -> str:
    """The CPU (or GPU) and thread count, for the model card."""
    from course_lib.timing import cpu_name

    cpu = cpu_name()
    return f"{cpu}, {torch.get_num_threads()} threads, {platform.system()}, torch {torch.__version__}"


def samples(model, tok, prompts=SAMPLE_PROMPTS, max_new_tokens: int = 60) -> list[dict]:
    """Greedy and top-k (k=40, seed 0) continuations of each prompt."""
    from course_lib.generation import generate

    out = []
    for prompt in prompts:
        out.append({"prompt": prompt, "how": "greedy",
                    "text": generate(model, tok, prompt, max_new_tokens=max_new_tokens)})
        out.append({"prompt": prompt, "how": "top_k=40, seed=0",
                    "text": generate(model, tok, prompt, max_new_tokens=max_new_tokens, top_k=40, seed=0)})
    return out


HOW_CHOSEN = """These are the script's default settings. The sizes and the learning rate were chosen by
held-out loss at equal compute (about 9 minutes of a 2-core CPU): a wider model (n_embd 192) or a
deeper one (6 layers) trained for the same time reached the same held-out loss, and this one is
the smallest and the fastest to run. Longer runs gain little: at twice the learning rate for 1,200
steps, the held-out loss turned up after about 300 steps while the training loss kept falling (the
model memorises the small corpus).

"""


def _is_default(settings: dict) -> bool:
    """Were the settings that shape the model the defaults? (Limits, threads and device do not.)"""
    ignored = {"minutes", "threads", "device", "sample_tokens", "eval_every"}
    default = dataclasses.asdict(TrainSettings())
    return all(settings.get(k) == v for k, v in default.items() if k not in ignored)


def model_card(results: dict) -> str:
    """README.md of the asset: what it is, how it was made, how good it is, its limits."""
    s, r = results["settings"], results
    llama, stdlib = s.get("arch", "gpt2") == "llama", s.get("corpus", "python-docs") == "python-stdlib"
    name = r.get("asset", "tiny-gpt2")
    sample_text = "\n\n".join(f"**{x['prompt']!r}**, {x['how']}:\n\n```text\n{x['text']}\n```" for x in r["samples"])
    if llama:
        kv = s["num_key_value_heads"]
        head = f"""# {name}: the course's own tiny Llama

A {r['parameters'] / 1e6:.2f}M-parameter Llama (RMSNorm, rotary positions, SwiGLU, grouped-query
attention) and its byte-level BPE tokenizer, trained from scratch by `course_lib/train_tiny.py`
(`--arch llama`) with the same tokenizer, corpus, parameter budget and steps as its twin
`tiny-gpt2-stdlib`, for chapter 09's comparison. The files have the layout of a Hub
`LlamaForCausalLM` repository (as SmolLM2-135M's): `transformers.LlamaForCausalLM.from_pretrained(folder)`
and `course_lib.load_model("{name}")` both load them unchanged.

| file | what |
|---|---|
| `config.json` | Llama config (`model_type` "llama", `hidden_act` "silu", `rope_theta` {r.get('rope_theta', 10000.0):g}, `tie_word_embeddings` true) |
| `model.safetensors` | float32 weights, {r['file_bytes'] / 1e6:.1f} MB: the Hub's keys (`model.embed_tokens.weight`, `model.layers.0.self_attn.q_proj.weight`, `model.layers.0.mlp.gate_proj.weight`, `model.norm.weight`, ...), no `lm_head.weight` (tied) |
| `tokenizer.json` | byte-level BPE, {r['vocab_size']} tokens; the end-of-text token is id {r['eos_token_id']} |
| `tokenizer_config.json`, `generation_config.json` | bos/eos, as a Hub Llama repository has them |
| `training_log.json` | settings, results, training loss per step, held-out loss per evaluation (chapter 09 plots it) |
| `loss.png` | that loss curve, drawn (shipped when it is under 60 KB) |

## Model

Llama architecture (pre-norm blocks with RMSNorm, RoPE on q and k, SwiGLU feed-forward, no biases,
tied LM head): {s['n_layer']} layers, {s['n_head']} query heads sharing {kv} key/value heads (head size
{s['n_embd'] // s['n_head']}), width {s['n_embd']}, SwiGLU width {s['intermediate_size']}, context
{s['n_positions']} tokens, vocabulary {r['vocab_size']}, `<|endoftext|>` (id {r['eos_token_id']}) as bos and eos.
**{r['parameters']:,} parameters** (tied embedding counted once); `model.safetensors` is {r['file_bytes']:,} bytes.
The KV cache holds {r['kv_cache_bytes_per_token']:,} bytes per token in float32.

"""
    else:
        head = f"""# {name}: the course's own tiny GPT-2

A {r['parameters'] / 1e6:.2f}M-parameter GPT-2 and its byte-level BPE tokenizer, trained from scratch by
`course_lib/train_tiny.py` on the course corpus ({"the Python standard library's docstrings and the documentation topics" if stdlib else "Python documentation topics"}) so that every
GPT-2 chapter works offline. The files have the exact layout of the Hub's `gpt2` repository:
`transformers.GPT2LMHeadModel.from_pretrained(folder)` and `course_lib.load_model("{name}")`
both load them unchanged.

| file | what |
|---|---|
| `config.json` | GPT-2 config (`model_type` "gpt2", `gelu_new`, n_ctx = n_positions = {s['n_positions']}) |
| `model.safetensors` | float32 weights, {r['file_bytes'] / 1e6:.1f} MB: bare keys (`wte.weight`, `h.0.attn.c_attn.weight`, ...), Conv1D weights stored (in, out), the `h.N.attn.bias` mask buffers, no `lm_head.weight` (tied to `wte.weight`) |
| `tokenizer.json` | byte-level BPE, {r['vocab_size']} tokens, GPT-2's pipeline; the end-of-text token is id {r['eos_token_id']} |
| `training_log.json` | settings, results, training loss per step, held-out loss per evaluation (chapter 08 plots it) |
| `loss.png` | that loss curve, drawn (shipped when it is under 60 KB) |

## Model

GPT-2 architecture (pre-LN blocks, tanh-GELU, learned positions, tied LM head), smaller:
{s['n_layer']} layers, {s['n_head']} heads, width {s['n_embd']}, context {s['n_positions']} tokens,
vocabulary {r['vocab_size']}, with `<|endoftext|>` (id {r['eos_token_id']}) as both bos and eos, as in GPT-2.
**{r['parameters']:,} parameters** (tied embedding counted once);
`model.safetensors` is {r['file_bytes']:,} bytes.

"""
    if stdlib:
        data = f"""## Data

The course corpus `course_lib/assets/python-stdlib` (the standard library's module, class and function
docstrings and longer comments beside the documentation's "topics" pages, CPython 3.11.7; split by module
family, deduplicated, pinned by hash), train split: {r['train_tokens']:,} tokens ({r['train_chars']:,}
characters). Held out for evaluation: {r['heldout_tokens']:,} tokens ({r['heldout_chars']:,} characters)
of other module families. The text is © Python Software Foundation, distributed under the PSF License
Agreement (see `course_lib/assets/python-stdlib/LICENSE.txt`).
"""
    else:
        data = f"""## Data

The course corpus `course_lib/assets/python-docs` (the text of the Python documentation's
"topics" pages, CPython 3.11.7), train split: {r['train_tokens']:,} tokens
({r['train_chars']:,} characters). Held out for evaluation: {r['heldout_tokens']:,} tokens
({r['heldout_chars']:,} characters) of other topics. The documentation is © Python Software
Foundation, distributed under the PSF License Agreement (see
`course_lib/assets/python-docs/LICENSE.txt`).
"""
    return head + data + f"""
## Training

- tokenizer: `course_lib.tokenization.train_bpe` (the course's own byte-level BPE), {r['vocab_size']} tokens;
- {r['steps_done']} steps of {s['batch_size']} sequences x {s['n_positions']} tokens
  ({s['batch_size'] * s['n_positions']:,} tokens per step, {r['epochs']:.1f} passes over the train split);
- AdamW (betas {s['beta1']}, {s['beta2']}; weight decay {s['weight_decay']} on matrices), peak learning rate
  {s['learning_rate']:g} after {s['warmup_steps']} warmup steps, cosine decay to {s['min_learning_rate']:g}
  at step {s['max_steps']}; gradients clipped to norm {s['grad_clip']}; dropout {s['dropout']};
- held-out loss every {s['eval_every']} steps; the weights with the lowest one are kept (step {r['best_step']});
- seed {s['seed']}; on {r['machine']};
- wall time {r['wall_seconds'] / 60:.1f} minutes for the training loop ({r['total_seconds'] / 60:.1f} minutes in all, with
  the tokenizer, evaluation and export).

{HOW_CHOSEN if _is_default(s) else ""}Reproduce (same numbers on the same kind of machine): `python -m course_lib.train_tiny{r.get('command_flags', '')}`
(`--out DIR` to write elsewhere, `--help` for the settings).

## Results

| | cross-entropy (nats/token) | perplexity |
|---|---|---|
| held-out split | {r['heldout_loss']:.4f} | **{r['heldout_perplexity']:.2f}** |
| train split (eval mode) | {r['train_eval_loss']:.4f} | {math.exp(r['train_eval_loss']):.2f} |
| unigram baseline on held-out (token frequencies, no context) | {math.log(r['unigram_perplexity']):.4f} | {r['unigram_perplexity']:.2f} |

Mean training loss of the last 20 steps (training mode{', with dropout' if s['dropout'] else ''}): {r['final_train_loss']:.3f}. Perplexities are
`course_lib.metrics.perplexity(model, ids, block_size={s['n_positions']})` over the whole split
encoded as one stream, in non-overlapping blocks.

## Samples

Continuations of {len(SAMPLE_PROMPTS)} prompts, {s['sample_tokens']} new tokens each (`course_lib.generate`):

{sample_text}

## Limitations

- It has read only ~{r['train_chars'] // 1000} KB of text: it imitates the style of the Python
  documentation{' and docstrings' if stdlib else ''} (prose, grammar productions, code examples) but what it says is often wrong, repetitive or
  nonsense. A teaching model, not a source of facts or code.
- English and Python documentation only; anything else is out of distribution.
- The context is {s['n_positions']} tokens: prompt + generated tokens must fit.
- Its perplexities are not comparable with GPT-2's: another tokenizer, another text{'' if not stdlib else ' (they are comparable between tiny-gpt2-stdlib and tiny-llama: one tokenizer, one held-out text)'}.

## Licence

The weights and the tokenizer are released under the course's licence (MIT). They were
trained on text under the PSF License; its copyright notice is in
`course_lib/assets/{s.get('corpus', 'python-docs')}/LICENSE.txt`.
"""


def llama_tokenizer_files(model: LlamaForCausalLM, tok) -> tuple[dict, dict]:
    """``tokenizer_config.json`` and ``generation_config.json`` as a Hub Llama repository has them.

    The tokenizer itself is ``tokenizer.json`` (a ``PreTrainedTokenizerFast``, as Llama 3's);
    ``<|endoftext|>`` is its bos and eos, and no bos is added in front of a text (GPT-2's habit,
    which the comparison with ``tiny-gpt2-stdlib`` needs).
    """
    eos_id = model.config.eos_token_id
    eos = tok.id_to_token(eos_id)
    tokenizer_config = {
        "added_tokens_decoder": {str(eos_id): {"content": eos, "lstrip": False, "normalized": False, "rstrip": False,
                                               "single_word": False, "special": True}},
        "bos_token": eos, "eos_token": eos, "unk_token": None, "clean_up_tokenization_spaces": False,
        "model_max_length": model.config.max_position_embeddings, "tokenizer_class": "PreTrainedTokenizerFast",
    }
    generation_config = {"bos_token_id": eos_id, "eos_token_id": eos_id, "do_sample": False}
    return tokenizer_config, generation_config


def export(model: GPT2LMHeadModel | LlamaForCausalLM, tok, folder: str | os.PathLike, results: dict,
           log: dict) -> Path:
    """Write the asset: config.json, model.safetensors, tokenizer.json, training_log.json, README.md (+ loss.png;
    a Llama also gets tokenizer_config.json and generation_config.json).

    Each file is written to a temporary name and renamed, so an interrupted export never
    leaves a half-written file behind.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = hub_state_dict(model)
    write_atomic(folder / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    write_json(folder / "config.json", hub_config(model))
    write_atomic(folder / "tokenizer.json", lambda p: tok.save(str(p), pretty=True))
    if isinstance(model, LlamaForCausalLM):
        tokenizer_config, generation_config = llama_tokenizer_files(model, tok)
        write_json(folder / "tokenizer_config.json", tokenizer_config)
        write_json(folder / "generation_config.json", generation_config)
    results["file_bytes"] = (folder / "model.safetensors").stat().st_size
    write_json(folder / "training_log.json", {
        "settings": results["settings"],
        "results": {k: v for k, v in results.items() if k not in ("settings", "samples")},
        "log": log,  # per step: step, train_loss, lr; per evaluation: eval_step, heldout_loss
        "samples": results["samples"],
    })
    write_text(folder / "README.md", model_card(results))
    title = f"course {results.get('asset', 'tiny GPT-2')}: loss"
    if not plot_loss(log, folder / "loss.png", title, results["settings"]["dropout"]):
        (folder / "loss.png").unlink(missing_ok=True)  # too big to ship: the notebook plots the log instead
    for path in folder.iterdir():  # temporary files are private (0600); the asset is for everyone to read
        if path.name in EXPORTED_FILES:
            path.chmod(0o644)
    return folder


# --------------------------------------------------------------------------------------
# The whole recipe

def default_out(settings: TrainSettings) -> Path:
    """The asset folder a run writes when no ``--out`` is given (``DEFAULT_OUTS``)."""
    return DEFAULT_OUTS[(settings.corpus, settings.arch)]


def command_flags(settings: TrainSettings) -> str:
    """The flags that differ from the defaults, as a command line would give them (for the model card)."""
    default = TrainSettings()
    ignored = {"threads", "device", "minutes", "tokenizer_from"}
    return "".join(f" --{f.name.replace('_', '-')} {getattr(settings, f.name)}" for f in dataclasses.fields(settings)
                   if f.name not in ignored and getattr(settings, f.name) != getattr(default, f.name))


def load_or_train_tokenizer(settings: TrainSettings):
    """The tokenizer: trained on the corpus's train split, or read from ``settings.tokenizer_from``."""
    if settings.tokenizer_from:
        from tokenizers import Tokenizer

        path = Path(settings.tokenizer_from) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"--tokenizer-from {settings.tokenizer_from}: no tokenizer.json there; "
                                    f"pass a folder a previous run wrote, or leave it out to train a tokenizer")
        tok = Tokenizer.from_file(str(path))
        if tok.token_to_id(DOCUMENT_SEPARATOR) is None or tok.get_vocab_size() != settings.vocab_size:
            raise ValueError(f"{path} has {tok.get_vocab_size()} tokens and {DOCUMENT_SEPARATOR!r} "
                             f"{'missing' if tok.token_to_id(DOCUMENT_SEPARATOR) is None else 'present'}; this run "
                             f"needs {settings.vocab_size} tokens with {DOCUMENT_SEPARATOR!r}: pass --vocab-size to match")
        return tok
    return train_tokenizer(corpus_documents("train", settings.corpus), settings.vocab_size)


def run(settings: TrainSettings, out: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Tokenizer, data, model, training, evaluation, export: the whole recipe. Returns the results."""
    started = time.perf_counter()
    out = Path(out) if out is not None else default_out(settings)
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)

    train_text, heldout_text = corpus_text("train", settings.corpus), corpus_text("heldout", settings.corpus)
    tok = load_or_train_tokenizer(settings)
    eos_id = tok.token_to_id(DOCUMENT_SEPARATOR)
    train_ids, heldout_ids = token_stream(tok, train_text), token_stream(tok, heldout_text)

    model = build_model(settings, tok.get_vocab_size(), eos_id)
    log = train(model, train_ids, heldout_ids, settings, progress=progress)

    model = model.cpu()
    heldout_loss = evaluate(model, heldout_ids, settings)
    train_eval_loss = evaluate(model, train_ids, settings)
    steps_done = log["step"][-1]
    results = {
        "settings": dataclasses.asdict(settings),
        "asset": out.name,
        "command_flags": command_flags(settings),
        "parameters": model.num_parameters(),
        "kv_cache_bytes_per_token": llama_model.kv_cache_bytes_per_token(model.config),
        "rope_theta": getattr(model.config, "rope_theta", None),
        "vocab_size": tok.get_vocab_size(),
        "eos_token_id": eos_id,
        "train_tokens": train_ids.numel(), "heldout_tokens": heldout_ids.numel(),
        "train_chars": len(train_text), "heldout_chars": len(heldout_text),
        "steps_done": steps_done,
        "epochs": steps_done * settings.tokens_per_step / train_ids.numel(),
        "best_step": log["best_step"],
        "heldout_loss": heldout_loss,
        "heldout_perplexity": math.exp(heldout_loss),
        "train_eval_loss": train_eval_loss,
        "final_train_loss": sum(log["train_loss"][-20:]) / len(log["train_loss"][-20:]),
        "unigram_perplexity": unigram_perplexity(train_ids, heldout_ids, tok.get_vocab_size()),
        "machine": machine_description() if settings.device == "cpu" else f"{settings.device}: "
                   f"{torch.cuda.get_device_name() if settings.device.startswith('cuda') else settings.device}",
        "wall_seconds": log["wall_seconds"],
        "samples": samples(model, tok, max_new_tokens=settings.sample_tokens),
    }
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    export(model, tok, out, results, log)
    return results


def parse_args(argv=None) -> tuple[TrainSettings, Path, bool]:
    """Command-line flags: one per ``TrainSettings`` field, plus ``--out`` and ``--quiet``."""
    parser = argparse.ArgumentParser(prog="python -m course_lib.train_tiny", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default: {DEFAULT_OUT} for GPT-2 on python-docs; with --corpus "
                             f"python-stdlib, assets/tiny-gpt2-stdlib or assets/tiny-llama by --arch)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    for field in dataclasses.fields(TrainSettings):
        flag = "--" + field.name.replace("_", "-")
        choices = {"arch": ARCHITECTURES, "corpus": ("python-docs", "python-stdlib")}.get(field.name)
        parser.add_argument(flag, type=type(field.default), default=field.default, dest=field.name, choices=choices,
                            help=f"(default: {field.default})")
    args = vars(parser.parse_args(argv))
    out, quiet = args.pop("out"), args.pop("quiet")
    return TrainSettings(**args), out, quiet


def main(argv=None) -> dict:
    settings, out, quiet = parse_args(argv)
    out = out if out is not None else default_out(settings)
    results = run(settings, out, progress=not quiet)
    print(f"wrote {out}: {results['parameters']:,} parameters, {results['file_bytes'] / 1e6:.1f} MB, "
          f"held-out perplexity {results['heldout_perplexity']:.2f} (best step {results['best_step']}), "
          f"training {results['wall_seconds'] / 60:.1f} min")
    return results


if __name__ == "__main__":
    main()
