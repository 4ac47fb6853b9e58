"""Make (or check) the reference activations chapters 04 and 06 compare their models against.

    .venv/bin/python tests/reference_activations.py [NAME ...]   # rewrite the committed files

- ``minilm-reference`` (chapter 04): ``transformers``' BertModel on the real all-MiniLM-L6-v2
  weights over a small padded batch, every intermediate the chapter builds: embeddings,
  layer 0's attention weights, attention context, attention block output, intermediate and
  output, every layer's hidden states, the pooler and the sentence embeddings.
- ``tiny-gpt2-reference`` (chapter 06): ``transformers``' GPT2LMHeadModel on the course's
  tiny GPT-2 over two left-padded prompts: embeddings, layer 0's attention weights, every
  block's output, the last position's logits, and the greedy continuation of the first
  prompt from ``generate``.

The notebooks cannot import ``transformers`` (slow, and a test-only oracle), so they compare
with these stored tensors (as the candle tutorial compares with the reference
implementation's test slices); ``tests/test_reference_activations.py`` regenerates them and
checks the committed files are still what ``transformers`` computes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "course_lib" / "assets"
SENTENCES = ["The cat sits on the mat.", "A transformer reads every token of the sentence at once."]
# the second prompt is the longest: it has no padding, so its attention weights are all meaningful
PROMPTS = ["The for statement", "Dictionaries map keys to values, and the keys"]


def compute_minilm() -> dict[str, torch.Tensor]:
    from transformers import AutoModel

    from course_lib.assets import asset_path
    from course_lib.tokenizer_loading import encode_batch, load_tokenizer

    folder = asset_path("all-MiniLM-L6-v2")
    tok = load_tokenizer(folder)
    batch = encode_batch(tok, SENTENCES)
    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    captured = {}

    def keep(name, pick=lambda out: out):
        return lambda module, args, out: captured.__setitem__(name, pick(out).detach().clone())

    layer0 = model.encoder.layer[0]
    hooks = [model.embeddings.register_forward_hook(keep("embeddings")),
             layer0.attention.self.register_forward_hook(keep("layer0.attention.self", lambda out: out[0])),
             layer0.attention.register_forward_hook(keep("layer0.attention", lambda out: out[0])),
             layer0.intermediate.register_forward_hook(keep("layer0.intermediate")),
             layer0.output.register_forward_hook(keep("layer0.output"))]
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=True, output_attentions=True)
    for h in hooks:
        h.remove()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
    tensors = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], **captured,
               "layer0.attention_weights": out.attentions[0],
               **{f"hidden_states.{i}": h for i, h in enumerate(out.hidden_states) if i},  # 0 = embeddings
               "pooler_output": out.pooler_output,
               "sentence_embeddings": torch.nn.functional.normalize(pooled, dim=-1)}
    return {k: v.contiguous() for k, v in tensors.items()}


def compute_tiny_gpt2() -> dict[str, torch.Tensor]:
    from transformers import GPT2LMHeadModel

    from course_lib.assets import asset_path
    from course_lib.tokenizer_loading import encode_batch, load_tokenizer

    folder = asset_path("tiny-gpt2")
    tok = load_tokenizer(folder)
    batch = encode_batch(tok, PROMPTS, pad_token="<|endoftext|>", padding_side="left")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what generate() passes: real tokens count from 0
    model = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    first = torch.tensor([tok.encode(PROMPTS[0]).ids])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True,
                    output_attentions=True)
        greedy = model.generate(first, max_new_tokens=40, do_sample=False, pad_token_id=model.config.eos_token_id)
    tensors = {"input_ids": ids, "attention_mask": mask, "embeddings": out.hidden_states[0],
               "layer0.attention_weights": out.attentions[0],
               **{f"hidden_states.{i}": h for i, h in enumerate(out.hidden_states) if i},  # the last after ln_f
               "last_logits": out.logits[:, -1], "greedy_ids": greedy}
    return {k: v.contiguous() for k, v in tensors.items()}


# asset name -> (how to compute it, the texts it was computed for, the model it comes from)
REFERENCES = {
    "minilm-reference": (compute_minilm, SENTENCES, "sentence-transformers/all-MiniLM-L6-v2"),
    "tiny-gpt2-reference": (compute_tiny_gpt2, PROMPTS, "the course's tiny-gpt2 (course_lib/assets/tiny-gpt2)"),
}


def compute(name: str = "minilm-reference") -> dict[str, torch.Tensor]:
    return REFERENCES[name][0]()


def metadata(name: str) -> dict[str, str]:
    import transformers

    _, texts, model = REFERENCES[name]
    return {"sentences": json.dumps(texts), "model": model,
            "made_with": f"transformers {transformers.__version__}, torch {torch.__version__.split('+')[0]}, "
                         "eager attention, float32, CPU"}


def write(name: str) -> Path:
    from safetensors.torch import save_file

    target = ASSETS / name / "activations.safetensors"
    save_file(compute(name), str(target), metadata=metadata(name))
    return target


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    for name in sys.argv[1:] or REFERENCES:
        path = write(name)
        print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
