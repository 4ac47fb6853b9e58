"""Make (or check) the reference activations chapter 04 compares its encoder against.

    .venv/bin/python tests/reference_activations.py      # rewrite the committed file

Runs ``transformers``' BertModel on the real all-MiniLM-L6-v2 weights over a small padded
batch and records every intermediate the chapter builds: embeddings, layer 0's attention
weights, attention context, attention block output, intermediate and output, every
layer's hidden states, the pooler and the sentence embeddings. The notebook cannot import
``transformers`` (slow, and a test-only oracle), so it compares with these stored tensors
(as the candle tutorial compares with the reference implementation's test slices);
``tests/test_reference_activations.py`` regenerates them and checks the committed file is
still what ``transformers`` computes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "course_lib" / "assets" / "minilm-reference" / "activations.safetensors"
SENTENCES = ["The cat sits on the mat.", "A transformer reads every token of the sentence at once."]


def compute() -> dict[str, torch.Tensor]:
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


def metadata() -> dict[str, str]:
    import transformers

    return {"sentences": json.dumps(SENTENCES), "model": "sentence-transformers/all-MiniLM-L6-v2",
            "made_with": f"transformers {transformers.__version__}, torch {torch.__version__.split('+')[0]}, "
                         "eager attention, float32, CPU"}


def write() -> Path:
    from safetensors.torch import save_file

    save_file(compute(), str(TARGET), metadata=metadata())
    return TARGET


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(f"wrote {write()} ({TARGET.stat().st_size / 1e3:.0f} kB)")
