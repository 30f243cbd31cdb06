"""Export an expert merged into its base model as an ordinary Hugging Face folder.

The folder (config.json, model.safetensors, tokenizer files, generation_config.json) loads with plain
``AutoModelForCausalLM`` / ``AutoTokenizer``, so vLLM, lm-eval and the rest can use an expert without knowing this
project. ``t2_expert.json`` beside them records which expert and base it came from. The weights are saved in
`dtype` (default: the dtype the model is held in); W' is composed in float32 and cast once (precision.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .atomic import atomic_folder
from .experts import Expert, ExpertError
from .svf import SVFModel


def export_merged(svf: SVFModel, expert: Expert, out: str | os.PathLike, overwrite: bool = False,
                  dtype=None) -> Path:
    from .precision import cast_state_dict

    out = Path(out)
    if out.exists() and not (overwrite and out.is_dir()):
        raise ExpertError(f"{out} already exists; pass --overwrite or choose another folder")
    with atomic_folder(out) as tmp:
        with svf.applied(expert):
            state = None if dtype is None else cast_state_dict(svf.model, dtype)
            svf.model.save_pretrained(tmp, safe_serialization=True, state_dict=state)
        if dtype is not None:  # config.json must say what the weights are, not what the live model holds
            config = json.loads((tmp / "config.json").read_text())
            config["dtype"] = str(dtype).removeprefix("torch.")
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if svf.tokenizer is not None:
            svf.tokenizer.save_pretrained(tmp)
        provenance = {"expert": expert.name, "base_model": expert.meta.base_model,
                      "fingerprint": expert.meta.fingerprint, "parametrization": expert.parametrization,
                      "targets": expert.meta.targets, "dtype": str(dtype or svf.precision.dtype).removeprefix("torch.")}
        (tmp / "t2_expert.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return out
