"""Loading benchmark: course_lib.load_model vs transformers' from_pretrained, same files, same run.

    .venv/bin/python bench/loading.py [--repeats 5] [--layers 12]

Writes a roberta-base-sized checkpoint (real config, random weights, 12 layers by default,
~500 MB) with transformers' save_pretrained into a temporary folder, then, alternating the
two libraries, each in a fresh process so that nothing is shared:
- time of the load call alone (imports excluded), median over repetitions;
- peak resident memory of the process after the load minus before it (imports excluded),
  median — the float32 weights alone are the floor;
and prints both with ratios. Files are in the page cache after the first run (warm loads).

Both libraries leave float32 weights memory-mapped from model.safetensors (the OS reads a
page when it is first used), so the peak-memory figure is the loader's own overhead, not
the weights; course_lib builds the model on the meta device, so nothing is allocated or
randomly initialised only to be overwritten.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys, time

def vm_hwm_mb():  # peak resident memory of this process (reset at exec, unlike ru_maxrss)
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024

which, folder = sys.argv[1], sys.argv[2]
if which == "course_lib":
    import course_lib.loading  # imports done before timing, as for transformers below
    load = lambda: course_lib.loading.load_model(folder, task="masked-lm")
else:
    from transformers import AutoModelForMaskedLM, RobertaForMaskedLM  # noqa: F401 - import the model code now
    from transformers.utils import logging
    logging.set_verbosity_error(); logging.disable_progress_bar()
    load = lambda: AutoModelForMaskedLM.from_pretrained(folder).eval()
before = vm_hwm_mb()
start = time.perf_counter()
model = load()
seconds = time.perf_counter() - start
peak = vm_hwm_mb()
params = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"seconds": seconds, "peak_increase_mb": peak - before, "param_mb": params / 2**20}))
"""


def make_checkpoint(folder: Path, layers: int) -> None:
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=50265, hidden_size=768, num_hidden_layers=layers, num_attention_heads=12,
                           intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                           layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    RobertaForMaskedLM(config).save_pretrained(folder)


def probe(which: str, folder: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, which, str(folder)], capture_output=True, text=True,
                         cwd=ROOT, check=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                                    "OMP_NUM_THREADS": "2"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "roberta-base-random"
        make_checkpoint(folder, args.layers)
        size = (folder / "model.safetensors").stat().st_size / 2**20
        runs = {"course_lib": [], "transformers": []}
        probe("course_lib", folder), probe("transformers", folder)  # warm the page cache
        for _ in range(args.repeats):
            for which in runs:
                runs[which].append(probe(which, folder))
    med = {w: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for w, rs in runs.items()}
    ours, ref = med["course_lib"], med["transformers"]
    print(f"roberta-base config, {args.layers} layers, random weights, model.safetensors {size:.0f} MiB, "
          f"task masked-lm, float32, CPU; medians of {args.repeats} fresh processes each")
    for w, m in med.items():
        print(f"  {w:12} load {m['seconds'] * 1e3:7.0f} ms   peak RSS increase {m['peak_increase_mb']:6.0f} MB   "
              f"(parameters {m['param_mb']:.0f} MiB)")
    print(f"  speed ratio (transformers time / ours) {ref['seconds'] / ours['seconds']:.2f}x;  "
          f"peak memory ours / transformers {ours['peak_increase_mb'] / ref['peak_increase_mb']:.2f}")


if __name__ == "__main__":
    main()
