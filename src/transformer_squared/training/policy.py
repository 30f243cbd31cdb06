"""What the training loop trains: SVF z-vectors, or a LoRA adapter (the paper's baseline), behind one contract.

A policy exposes the model with its trainable parameters in place and three switches:
- ``sampling()``: fast weights for rollouts under no_grad (SVF: W' composed once per step; LoRA: adapter merged);
- ``base()``: the untouched base model, for the KL reference;
- ``state_dict()/load_state_dict()``: what a checkpoint holds.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ..errors import MissingDependency


class Policy(Protocol):
    model: nn.Module
    tokenizer: object

    def parameters(self) -> list[nn.Parameter]: ...
    def sampling(self): ...
    def base(self): ...
    def state_dict(self) -> dict[str, torch.Tensor]: ...
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...
    def num_trainable(self) -> int: ...
    def close(self) -> None: ...


class SVFPolicy:
    """z per targeted matrix, trained through the factored path (no dense weight gradient ever exists)."""

    def __init__(self, svf, parametrization: str = "paper", z: dict[str, torch.Tensor] | None = None):
        self.svf, self.model, self.tokenizer = svf, svf.model, svf.tokenizer
        self.parametrization = parametrization
        self._stack = ExitStack()
        self.layers = self._stack.enter_context(svf.factored(z, parametrization))

    def parameters(self) -> list[nn.Parameter]:
        return [layer.svf_z for layer in self.layers.values()]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @contextmanager
    def sampling(self):
        for layer in self.layers.values():
            layer.merge()
        try:
            with torch.no_grad():
                yield
        finally:
            for layer in self.layers.values():
                layer.unmerge()

    @contextmanager
    def base(self):
        for layer in self.layers.values():
            layer.use_base = True
        try:
            yield
        finally:
            for layer in self.layers.values():
                layer.use_base = False

    def z(self) -> dict[str, torch.Tensor]:
        return {n: layer.svf_z.detach().clone() for n, layer in self.layers.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.z()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, layer in self.layers.items():
                layer.svf_z.copy_(state[n])

    def close(self) -> None:
        self._stack.close()


class LoRAPolicy:
    """PEFT LoRA on the given modules (paper baseline: rank 16, alpha 32, dropout 0.05 on q/v)."""

    def __init__(self, model, tokenizer, rank: int = 16, alpha: int = 32, dropout: float = 0.05,
                 targets: list[str] | None = None, seed: int = 0):
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise MissingDependency("the LoRA baseline needs PEFT: run `pip install 'transformer-squared[lora]'`") from None
        torch.manual_seed(seed)
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets or ["q_proj", "v_proj"],
                            task_type="CAUSAL_LM")
        # the adapter is float32 (PEFT upcasts it over a bf16/fp16 base): the trained copy and AdamW stay float32
        self.model = get_peft_model(model, config, autocast_adapter_dtype=True)
        self.tokenizer = tokenizer
        # merge/unmerge round the base weight twice per step; in bf16/fp16 that drift would add up over a run,
        # so below float32 rollouts run the adapter unmerged (exact, a little slower)
        self.merge_for_sampling = next(model.parameters()).dtype == torch.float32
        self.model.eval()  # dropout only while computing the loss (see train mode in the trainer)

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @contextmanager
    def sampling(self):
        if not self.merge_for_sampling:
            with torch.no_grad():
                yield
            return
        self.model.merge_adapter()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.unmerge_adapter()

    @contextmanager
    def base(self):
        with self.model.disable_adapter():
            yield

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, t in state.items():
                params[n].copy_(t)

    def save(self, folder: str | Path) -> None:
        self.model.save_pretrained(str(folder))

    def close(self) -> None:
        pass
