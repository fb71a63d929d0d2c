"""Convert the assembled GGUF chat model into the safetensors directory vLLM loads.

vLLM refuses GGUF files, and no registry package ships the small chat model as safetensors, so
the tests' vLLM serves a conversion of the very weights llama.cpp serves: transformers reads the
GGUF (dequantizing Q4_1), its tokenizer and the chat template inside it, and writes them out.

Runs with the vLLM environment's Python (transformers, torch and gguf live there, not in .venv):
    python scripts/gguf_to_safetensors.py GGUF OUT_DIR
OUT_DIR appears whole or not at all (written beside it, then renamed).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise SystemExit(f"{gguf} carries no chat template; vLLM would have none to apply")
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.bfloat16,
        # Plain dense weights: vLLM reads no GGUF blocks from safetensors.
        quantization_config=GgufConfig(dequantize=True),
    )
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
