"""SVF inside TRL (integrations/trl.py): the model TRL receives trains only z, generates on merged weights, and the
trained z lands as an ordinary expert folder. GRPOTrainer and SFTTrainer run a few steps on CPU on the tiny Llama
with the character tokenizer (`tiny_folder` in conftest.py)."""

from __future__ import annotations

import sys

import pytest
import torch
from torch.testing import assert_close

from transformer_squared.integrations.trl import INSTALL, SVFExpertModel, require_trl


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(autouse=True)
def _cache_env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("T2_CACHE", str(tmp_path_factory.getbasetemp() / "t2-cache-trl"))


@pytest.fixture
def trl():
    return pytest.importorskip("trl", reason='TRL not installed: pip install -e ".[trl]"')


@pytest.fixture
def svf_model(tiny_folder):
    model = SVFExpertModel.load(str(tiny_folder), progress=False)
    yield model
    model.close()


IDS = torch.tensor([[5, 17, 40, 22, 9, 61, 3]])


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def moved(before: dict, after: dict) -> bool:
    return any(not torch.equal(before[n], after[n]) for n in before)


def test_only_z_is_trainable_and_close_restores_the_base(tiny_folder):
    from transformer_squared.svf import SVFLinear

    wrapped = SVFExpertModel.load(str(tiny_folder), progress=False)
    model, svf = wrapped.model, wrapped.svf
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".svf_z") for n in trainable)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == svf.num_z() == 2 * 3 * 64
    assert sorted(n.removesuffix(".svf_z") for n in trainable) == sorted(svf.names)
    assert all(isinstance(model.get_submodule(n), SVFLinear) for n in svf.names)
    factored = logits(model)
    wrapped.close()
    assert all(type(model.get_submodule(n)) is torch.nn.Linear for n in svf.names)
    assert "generate" not in model.__dict__
    assert all(p.requires_grad for p in model.parameters())  # as from_pretrained left them
    assert_close(logits(model), factored, atol=1e-4, rtol=1e-4)  # identity z ≡ the base


def test_generate_runs_on_merged_weights_and_matches_the_applied_expert(tiny_folder, random_z):
    from transformer_squared.svf import SVFLinear

    probe = SVFExpertModel.load(str(tiny_folder), progress=False)
    z = random_z(probe.svf, scale=0.3)
    probe.close()
    wrapped = SVFExpertModel.load(str(tiny_folder), progress=False)
    with torch.no_grad():
        for n, p in zip(wrapped.svf.names, wrapped.parameters()):
            p.copy_(z[n])
    seen = []
    layer = next(m for m in wrapped.model.modules() if isinstance(m, SVFLinear))
    hook = layer.register_forward_pre_hook(lambda m, args: seen.append(m.merged_weight is not None))
    out = wrapped.model.generate(input_ids=IDS, max_new_tokens=5, do_sample=False, pad_token_id=0)
    hook.remove()
    assert seen and all(seen)  # every forward during generate ran on W'
    assert layer.merged_weight is None  # dropped afterwards: training goes through the factored path again
    expert = wrapped.expert(name="probe")
    wrapped.close()
    svf = wrapped.svf
    with svf.applied(expert):  # t2's own merged mode gives the same greedy continuation
        again = svf.model.generate(input_ids=IDS, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(out, again)


def parity_reward(prompts, completions, **columns):
    return [float(len(c) % 2 == 0) for c in completions]  # a random model earns it about half the time


def test_grpo_trainer_trains_z_and_the_expert_loads(trl, svf_model, tmp_path):
    from datasets import Dataset

    from transformer_squared.experts import ExpertLibrary
    from transformer_squared.integrations.trl import expert_callback, trainer_args

    before = svf_model.z()
    dataset = Dataset.from_dict({"prompt": ["1+1=", "2+3=", "4+4=", "5+1=", "7+2=", "3+3="]})
    args = trl.GRPOConfig(str(tmp_path / "grpo"), **trainer_args(
        per_device_train_batch_size=4, num_generations=4, max_completion_length=6, max_steps=3, learning_rate=0.5,
        logging_steps=1, seed=0))
    trainer = trl.GRPOTrainer(model=svf_model.model, processing_class=svf_model.tokenizer, reward_funcs=parity_reward,
                              train_dataset=dataset, args=args,
                              callbacks=[expert_callback(svf_model, tmp_path / "lib" / "parity", domain="parity")])
    optimised = [p for group in trainer.create_optimizer().param_groups for p in group["params"]]
    assert {id(p) for p in optimised} == {id(p) for p in svf_model.parameters()}
    trainer.train()
    after = svf_model.z()
    assert moved(before, after)

    expert = ExpertLibrary(tmp_path / "lib").get("parity")  # written by the callback at the end of training
    assert expert.meta.domain == "parity" and expert.meta.created_by["method"] == "trl"
    assert all(torch.equal(expert.z[n], after[n]) for n in after)
    factored = logits(svf_model.model)
    svf_model.close()
    svf = svf_model.svf
    base = logits(svf.model)
    with svf.applied(expert):  # check_compatible passes: same fingerprint, targets, ranks
        applied = logits(svf.model)
    assert not torch.allclose(applied, base, atol=1e-4)
    assert_close(applied, factored, atol=1e-4, rtol=1e-4)


def test_sft_trainer_trains_z_and_saves_an_expert(trl, svf_model, tmp_path):
    from datasets import Dataset

    from transformer_squared.experts import Expert
    from transformer_squared.integrations.trl import trainer_args

    before = svf_model.z()
    dataset = Dataset.from_dict({"prompt": ["1+1=", "2+2=", "3+3=", "4+4="], "completion": ["2", "4", "6", "8"]})
    args = trl.SFTConfig(str(tmp_path / "sft"), **trainer_args(per_device_train_batch_size=2, max_steps=4,
                                                                 learning_rate=0.1, logging_steps=1, seed=0))
    trainer = trl.SFTTrainer(model=svf_model.model, processing_class=svf_model.tokenizer, train_dataset=dataset,
                             args=args)
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert moved(before, svf_model.z())
    folder = svf_model.save_expert(tmp_path / "sft-expert", description="tiny SFT")
    loaded = Expert.load(folder)
    assert loaded.name == "sft-expert" and loaded.meta.targets == "mlp"
    loaded.check_compatible(svf_model.svf)


def test_missing_trl_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl now raises ImportError
    with pytest.raises(ImportError) as info:
        require_trl()
    assert str(info.value) == INSTALL and 'pip install -e ".[trl]"' in INSTALL and "\n" not in INSTALL
