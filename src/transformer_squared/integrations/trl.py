"""Train an SVF expert with TRL's trainers (GRPOTrainer, SFTTrainer, or any transformers.Trainer).

    from transformer_squared.integrations.trl import SVFExpertModel, trainer_args
    from trl import GRPOConfig, GRPOTrainer

    svf = SVFExpertModel.load("default")            # the model, z as its only trainable parameters
    trainer = GRPOTrainer(model=svf.model, processing_class=svf.tokenizer, reward_funcs=my_reward,
                          train_dataset=dataset, args=GRPOConfig("out/grpo", **trainer_args()))
    trainer.train()
    svf.save_expert("experts/my-task", domain="math")  # z.safetensors + expert.json: every t2 verb takes it
    svf.close()                                        # the base model is back, bit-exactly

What the trainer receives is the Hugging Face model itself, with each targeted linear swapped for a factored
`SVFLinear` (y = U (σ' ⊙ Vᵀx) + b, svf.py) and every other parameter frozen: `svf_z` (one vector per matrix) is the
only tensor with requires_grad, so TRL's optimizer, gradient clipping and logging see exactly the expert. The same
`SVFPolicy` (training/policy.py) that t2's own loop trains does the swapping; nothing here re-implements SVF.
`model.generate` is wrapped on the instance: each call composes W' = U diag(σ') Vᵀ once under no_grad, generates
with plain linears (as fast as the base), and drops W' again — the same switch t2 uses for its rollouts.

Why a thin wrapper and not a PEFT custom tuner. A PEFT tuner would re-state SVFLinear as a BaseTunerLayer
(update_layer, merge/unmerge written as in-place edits of the base weight) and save the expert as an
adapter_model.safetensors that t2 would then have to convert; it would buy one thing, TRL's vLLM weight sync (which
goes through PEFT's merge/unmerge). vLLM does not run on this CPU-first project's target machines, and TRL's
transformers generation path needs nothing but `generate`, so the wrapper keeps SVF in one place and writes the
expert folder directly. Known limits, stated rather than hidden:
- vLLM generation (use_vllm=True) is not supported: vLLM would receive the factored parameter names;
- with beta > 0 TRL loads a separate reference model from the config's path (a non-PEFT model has no adapter to
  disable); the base is equally `svf.policy.base()` here, but TRL does not know that. beta = 0 (TRL's default)
  needs none;
- TRL's own checkpoints hold the whole model under the factored names; `trainer_args()` turns them off, and
  `expert_callback()` writes an expert folder at each save and at the end instead.
"""

from __future__ import annotations

from pathlib import Path

INSTALL = 'TRL is not installed: pip install -e ".[trl]" (or: pip install trl)'


def require_trl():
    """The trl module, or an ImportError whose one line says what to install."""
    try:
        import trl
    except ImportError:
        raise ImportError(INSTALL) from None
    return trl


def trainer_args(**overrides) -> dict:
    """TRL config values that suit an SVF expert: no activation checkpointing (TRL turns it on; it trades compute
    for activation memory, which small models on CPU do not need), no full-model checkpoints (see
    expert_callback), CPU unless a GPU is there, float32, no hub, no reports. Pass the result into
    GRPOConfig(...) / SFTConfig(...); keyword arguments override."""
    import dataclasses

    import torch
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    values = {checkpointing: False, "save_strategy": "no", "report_to": [], "bf16": False, "fp16": False,
              "use_cpu": not torch.cuda.is_available(), "push_to_hub": False}
    return {**values, **overrides}


class SVFExpertModel:
    """A model whose only trainable parameters are SVF z-vectors, ready to hand to a TRL trainer."""

    def __init__(self, svf, parametrization: str = "paper", z: dict | None = None):
        from ..training.policy import SVFPolicy

        svf.remove()
        self.svf, self.parametrization = svf, parametrization
        self.policy = SVFPolicy(svf, parametrization, z)  # swaps in SVFLinear, freezes everything but svf_z
        self.model, self.tokenizer = svf.model, svf.tokenizer
        self._generate = self.model.generate
        self.model.generate = self._merged_generate  # instance attribute: shadows the class's generate

    @classmethod
    def load(cls, model: str = "default", targets: str = "mlp", parametrization: str = "paper",
             expert=None, progress: bool = True) -> "SVFExpertModel":
        """Load and decompose `model` (as --model does); start from `expert` (a folder or Expert) if given."""
        from ..experts import Expert
        from ..svf import load_svf

        svf = load_svf(model, targets=targets, progress=progress)
        z = None
        if expert is not None:
            expert = expert if isinstance(expert, Expert) else Expert.load(expert)
            expert.check_compatible(svf)
            z, parametrization = expert.z, expert.parametrization
        return cls(svf, parametrization, z)

    def _merged_generate(self, *args, **kwargs):
        with self.policy.sampling():  # W' composed once, plain linears, no_grad
            return self._generate(*args, **kwargs)

    def parameters(self):
        """The z vectors (what the trainer optimises)."""
        return self.policy.parameters()

    def z(self) -> dict:
        return self.policy.z()

    def expert(self, name: str = "", domain: str = "", description: str = "", metrics: dict | None = None,
               created_by: dict | None = None):
        """The current z as an Expert bound to this model's weights (fingerprint, targets, parametrization)."""
        from ..experts import Expert

        return Expert.for_model(self.svf, self.z(), self.parametrization, name=name, domain=domain,
                                description=description, metrics=metrics or {},
                                created_by=created_by or {"method": "trl"})

    def save_expert(self, folder, overwrite: bool = False, **meta) -> Path:
        """Write z.safetensors + expert.json atomically (experts/expert.py); the folder name is the expert's name."""
        folder = Path(folder)
        return self.expert(name=meta.pop("name", "") or folder.name, **meta).save(folder, overwrite=overwrite)

    def close(self) -> None:
        """Put the original linears and requires_grad flags back (the base model, bit-exactly)."""
        self.model.__dict__.pop("generate", None)
        self.policy.close()


def expert_callback(svf_model: SVFExpertModel, folder, **meta):
    """A transformers TrainerCallback that writes the expert to `folder` at the end of training and to
    `<output_dir>/checkpoint-<step>/expert` whenever the trainer saves."""
    from transformers import TrainerCallback

    class ExpertCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            out = Path(args.output_dir) / f"checkpoint-{state.global_step}" / "expert"
            svf_model.save_expert(out, overwrite=True, name=Path(folder).name,
                                  created_by={"method": "trl", "step": state.global_step}, **meta)

        def on_train_end(self, args, state, control, **kwargs):
            svf_model.save_expert(folder, overwrite=True, created_by={"method": "trl", "step": state.global_step},
                                  **meta)

    return ExpertCallback()
