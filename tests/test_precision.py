"""The precision/device policy (precision.py) and the SVF invariants in every dtype.

Tolerances. Exact statements (bit-exact) are asserted with torch.equal: merged identity and removal restore the
base because W' = W + U diag(σ' − σ) Vᵀ is W itself at σ' = σ, and removal is a pointer swap. Approximate
statements are measured against the error the dtype itself introduces: `noise` = max |logits(model in dtype) −
logits(model in float32)|, the rounding every forward pass of that dtype carries anyway. The factored path rounds
three more times per layer (Vᵀx, σ' ⊙ h, U h) in the same dtype, so we allow a few times that noise (FACTOR); in
float32 the noise is ~1e-6 and a 1e-4 floor covers the SVD's own reconstruction error.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_model, logits_of, noisy_z

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FACTOR = 4.0  # allowed error, in units of the dtype's own rounding noise (see the module docstring)
FLOOR = 1e-4  # float32: SVD reconstruction error of a 64×128 matrix is ~1e-6 relative
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch here)")


def _svf(dtype, device, cache):
    """A tiny Llama decomposed in float32 (as load_svf does), then cast once to `dtype` and moved to `device`."""
    from transformer_squared.precision import Precision, cast_model
    from transformer_squared.svd import decompose
    from transformer_squared.svf import SVFModel

    model = build_tiny_model("llama")
    decomposition = decompose(model, "mlp", cache_dir=cache, progress=False)
    cast_model(model, Precision(torch.device(device), dtype))
    return SVFModel(model, decomposition, model_id="tiny")


def _ids(device):
    return torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1)).to(device)


def _tolerance(dtype, device, cache) -> float:
    """FACTOR × the dtype's own noise on these logits (the model in `dtype` vs the same model in float32)."""
    ids = _ids(device)
    exact = logits_of(_svf(torch.float32, device, cache).model, ids).float()
    noise = (logits_of(_svf(dtype, device, cache).model, ids).float() - exact).abs().max().item()
    return max(FACTOR * noise, FLOOR)


def _expert(svf, seed=0):
    from transformer_squared.experts import Expert

    return Expert.for_model(svf, noisy_z(svf, 0.1, seed), name=f"e{seed}")


def check_invariants(dtype, device, cache):
    svf = _svf(dtype, device, cache)
    ids, tol = _ids(device), _tolerance(dtype, device, cache)
    base_weights = {n: w.clone() for n, w in svf.base_weights.items()}
    base = logits_of(svf.model, ids)
    assert svf.model.model.rotary_emb.inv_freq.dtype == torch.float32  # cast_model keeps RoPE in float32
    assert all(svf.decomposition.factors(n)[0].dtype == dtype for n in svf.names)  # U in the compute dtype
    assert all(svf.decomposition.factors(n)[1].dtype == torch.float32 for n in svf.names)  # σ float32

    # identity at init: merged is the base bit-exactly; factored within the dtype's noise
    from transformer_squared.experts import Expert

    identity = Expert.for_model(svf, name="identity")
    assert all(torch.equal(w, svf.base_weights[n]) for n, w in svf.compose(identity).items())
    with svf.factored() as layers:
        assert all(layer.svf_z.dtype == torch.float32 for layer in layers.values())  # z: float32 master copy
        assert (logits_of(svf.model, ids).float() - base.float()).abs().max() <= tol

    # merged ≡ factored for a z that changes the model
    expert = _expert(svf)
    with svf.applied(expert):
        merged = logits_of(svf.model, ids)
    assert (merged.float() - base.float()).abs().max() > tol  # the expert really changes the output
    with svf.factored(expert.z) as layers:
        factored = logits_of(svf.model, ids)
    assert (merged.float() - factored.float()).abs().max() <= tol

    # removal restores the base bit-exactly, in every dtype
    svf.apply(expert)
    svf.remove()
    assert all(torch.equal(svf.linears[n].weight, base_weights[n]) for n in svf.names)
    assert torch.equal(logits_of(svf.model, ids), base)

    # mixed batch ≡ solo: row 0 with the expert, row 1 with the base, in one factored pass with per-row σ'
    from transformer_squared.svf import sigma

    with svf.factored() as layers:
        for n, layer in layers.items():
            layer.row_sigma = torch.stack([sigma(expert.z[n].to(layer.S.device), layer.S), layer.S])  # (2, r)
        mixed = logits_of(svf.model, ids)
    assert (mixed[0].float() - merged[0].float()).abs().max() <= tol
    assert (mixed[1].float() - base[1].float()).abs().max() <= tol


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_invariants_per_dtype_cpu(dtype, tmp_path, one_thread):
    check_invariants(dtype, "cpu", tmp_path / "svd")


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_invariants_per_dtype_cuda(dtype, tmp_path):
    check_invariants(dtype, "cuda", tmp_path / "svd")


@pytest.mark.cuda
@CUDA
def test_load_svf_on_cuda_generates(tiny_folder, tmp_path):
    from transformer_squared.generation import GenerationConfig, generate
    from transformer_squared.svf import load_svf

    svf = load_svf(str(tiny_folder), cache_dir=tmp_path, progress=False, device="cuda", dtype="bfloat16")
    assert svf.model.device.type == "cuda" and svf.decomposition.factors(svf.names[0])[0].is_cuda
    with svf.applied(_expert(svf)):
        assert len(generate(svf.model, svf.tokenizer, ["hi"], GenerationConfig(max_new_tokens=3))) == 1


# -- the policy itself ---------------------------------------------------------------------------------------------

def test_resolve_device_and_errors(monkeypatch):
    from transformer_squared.precision import PrecisionError, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(PrecisionError, match="no CUDA GPU"):
            resolve_device(spec)
    with pytest.raises(PrecisionError, match="not a device|unsupported"):
        resolve_device("tpu")
    if not (torch.backends.mps.is_available()):
        with pytest.raises(PrecisionError, match="MPS is not available"):
            resolve_device("mps")


def test_resolve_dtype_auto_follows_the_hardware(monkeypatch):
    from transformer_squared import precision

    assert precision.resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert precision.resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(precision.PrecisionError, match="--dtype 'int8'"):
        precision.resolve_dtype("int8", "cpu")
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: "avx512_bf16")
    monkeypatch.setenv("T2_CPU_AUTO_BF16", "1")
    assert precision.resolve_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setenv("T2_CPU_AUTO_BF16", "0")
    assert precision.resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setenv("T2_CPU_AUTO_BF16", "1")
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: None)
    assert precision.resolve_dtype("auto", "cpu") == torch.float32  # no bf16 units: float32
    assert precision.resolve_dtype("auto", "mps") == torch.float32


# -- one SVD for every dtype, portable experts ---------------------------------------------------------------------

def test_svd_cache_is_shared_by_every_dtype(tiny_folder, tmp_path, one_thread):
    from transformer_squared.svf import load_svf

    cache = tmp_path / "svd"
    loaded = {d: load_svf(str(tiny_folder), cache_dir=cache, progress=False, device="cpu", dtype=d)
              for d in ("float32", "bfloat16", "float16")}
    assert len(list(cache.glob("*.safetensors"))) == 1  # one float32 file, not one per dtype
    assert len({s.decomposition.fingerprint for s in loaded.values()}) == 1
    assert loaded["bfloat16"].model.dtype == torch.bfloat16 and loaded["float32"].model.dtype == torch.float32
    U32 = loaded["float32"].decomposition.factors(loaded["float32"].names[0])[0]
    U16 = loaded["bfloat16"].decomposition.factors(loaded["bfloat16"].names[0])[0]
    assert torch.equal(U16, U32.to(torch.bfloat16))  # the held bf16 factors are the float32 SVD, cast once


@pytest.mark.parametrize("made, used", [("bfloat16", "float32"), ("float32", "bfloat16")])
def test_expert_is_portable_across_dtypes(made, used, tiny_folder, tmp_path, one_thread):
    from transformer_squared.experts import Expert
    from transformer_squared.svf import load_svf

    cache = tmp_path / "svd"
    maker = load_svf(str(tiny_folder), cache_dir=cache, progress=False, device="cpu", dtype=made)
    _expert(maker).save(tmp_path / "e")
    meta = json.loads((tmp_path / "e" / "expert.json").read_text())
    assert (meta["dtype"], meta["device"]) == (made, "cpu")
    expert = Expert.load(tmp_path / "e")
    assert all(t.dtype == torch.float32 for t in expert.z.values())
    user = load_svf(str(tiny_folder), cache_dir=cache, progress=False, device="cpu", dtype=used)
    ids = _ids("cpu")
    outs = {}
    for d, svf in (("made", maker), ("used", user)):
        with svf.applied(expert):  # the fingerprint check passes: it is taken from the float32 weights
            outs[d] = logits_of(svf.model, ids).float()
    # the two differ only by bf16 rounding (one side is float32): allow FACTOR × that noise
    tol = _tolerance(torch.bfloat16, "cpu", tmp_path / "svd2")
    assert (outs["made"] - outs["used"]).abs().max() <= tol


def test_old_expert_without_precision_fields_loads(svf, tmp_path):
    from transformer_squared.experts import Expert

    _expert(svf).save(tmp_path / "old")
    path = tmp_path / "old" / "expert.json"
    meta = json.loads(path.read_text())
    del meta["dtype"], meta["device"]
    path.write_text(json.dumps(meta))
    assert Expert.load(tmp_path / "old").meta.dtype == ""


# -- flags reach the model ----------------------------------------------------------------------------------------

def test_cli_dtype_flag_reaches_the_model(tiny_folder, tmp_path, capsys, monkeypatch):
    from transformer_squared.cli import main

    monkeypatch.setenv("T2_CACHE", str(tmp_path))
    assert main(["decompose", "--model", str(tiny_folder), "--dtype", "bfloat16", "--device", "cpu"]) == 0
    assert "held on cpu / bfloat16" in capsys.readouterr().out
    assert main(["generate", "--model", str(tiny_folder), "--dtype", "bfloat16", "--max-new-tokens", "3", "hi"]) == 0
    assert main(["decompose", "--model", str(tiny_folder), "--dtype", "float32"]) == 0
    assert "held on cpu / float32" in capsys.readouterr().out
    assert main(["decompose", "--model", str(tiny_folder), "--dtype", "bfloat16", "--force"]) == 0  # from float32
    assert len(list((tmp_path / "svd").glob("*.safetensors"))) == 1


def test_cli_absent_device_is_a_one_line_error(tiny_folder, tmp_path, capsys, monkeypatch):
    from transformer_squared.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("T2_CACHE", str(tmp_path))
    code = main(["decompose", "--model", str(tiny_folder), "--device", "cuda:1"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "no CUDA GPU" in err and len(err.splitlines()) == 1


def test_every_verb_has_device_and_dtype():
    from transformer_squared.cli import build_parser

    parser = build_parser()
    for verb in (["decompose"], ["generate", "x"], ["train", "--out", "o"], ["eval"], ["adapt", "--task", "t", "--out", "o"],
                 ["export", "--expert", "e", "--out", "o"], ["serve"], ["demo"]):
        args = parser.parse_args([*verb, "--device", "cpu", "--dtype", "bfloat16"])
        assert (args.device, args.dtype) == ("cpu", "bfloat16"), verb


def test_train_config_rejects_a_bad_dtype():
    from transformer_squared.training.config import TrainConfig

    with pytest.raises(ValueError, match="--dtype 'int4'"):
        TrainConfig(out="x", dtype="int4")


def test_export_in_a_chosen_dtype(tiny_folder, tmp_path, one_thread):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from transformer_squared.export import export_merged
    from transformer_squared.svf import load_svf

    svf = load_svf(str(tiny_folder), cache_dir=tmp_path / "svd", progress=False, device="cpu", dtype="float32")
    expert = _expert(svf)
    out = export_merged(svf, expert, tmp_path / "out", dtype=torch.bfloat16)
    files = list(out.glob("*.safetensors"))
    with safe_open(str(files[0]), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict) == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert svf.model.dtype == torch.float32  # the live model is untouched
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    name = svf.names[0]
    with svf.applied(expert):
        want = svf.linears[name].weight.to(torch.bfloat16)
    assert torch.equal(reloaded.get_submodule(name).weight, want)  # W' composed in float32, cast once


# -- training in bf16: float32 master copies, base untouched -------------------------------------------------------

def _tokenized(svf):
    from transformer_squared.logprobs import teacher_forced

    return teacher_forced(svf.tokenizer, ["1+1=", "2+3="], ["2", "5"])


def test_svf_policy_step_in_bf16_keeps_float32_master_copy(tiny_folder, tmp_path, one_thread):
    from transformer_squared.svf import load_svf
    from transformer_squared.training.objectives import sft_loss
    from transformer_squared.training.policy import SVFPolicy
    from transformer_squared.logprobs import token_logprobs

    svf = load_svf(str(tiny_folder), cache_dir=tmp_path, progress=False, device="cpu", dtype="bfloat16")
    base = {n: w.clone() for n, w in svf.base_weights.items()}
    policy = SVFPolicy(svf)
    try:
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
        rollout = _tokenized(svf)
        logp = token_logprobs(svf.model, rollout)
        assert logp.dtype == torch.float32  # log-probs in float32 from bf16 logits
        loss, _ = sft_loss(logp, rollout.completion_mask)
        loss.backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0
                   for p in policy.parameters())
        opt.step()
        assert all(s.dtype == torch.float32 for st in opt.state.values() for s in st.values() if s.dim())
        with policy.sampling():
            assert all(layer.merged_weight.dtype == torch.bfloat16 for layer in policy.layers.values())
    finally:
        policy.close()
    assert all(torch.equal(svf.linears[n].weight, base[n]) for n in svf.names)  # the base weights never moved


def test_lora_policy_in_bf16_has_a_float32_adapter_and_leaves_the_base_alone(tiny_folder, one_thread):
    pytest.importorskip("peft")
    from transformer_squared.models import load_model
    from transformer_squared.training.policy import LoRAPolicy

    loaded = load_model(str(tiny_folder), device="cpu", dtype="bfloat16")
    base = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    policy = LoRAPolicy(loaded.model, loaded.tokenizer, rank=4, alpha=8, targets=["q_proj", "v_proj"])
    assert {p.dtype for p in policy.parameters()} == {torch.float32}
    with torch.no_grad():  # a trained adapter (B = 0 at init would make merging a no-op)
        for n, p in policy.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        with policy.sampling():
            pass
    after = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
             for n, p in policy.model.named_parameters() if "lora_" not in n}
    assert all(torch.equal(after[n], w) for n, w in base.items())


def test_lm_head_gets_a_contiguous_input_and_the_same_logits(tiny_folder, one_thread):
    from transformer_squared.models import load_model

    model = load_model(str(tiny_folder), device="cpu", dtype="float32").model
    head = model.get_output_embeddings()
    assert head._t2_contiguous_input and len(head._forward_pre_hooks) == 1
    ids = torch.randint(0, 128, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fixed = model(input_ids=ids, logits_to_keep=4).logits
        hooks = dict(head._forward_pre_hooks)
        head._forward_pre_hooks.clear()
        try:
            sliced = model(input_ids=ids, logits_to_keep=4).logits
        finally:
            head._forward_pre_hooks.update(hooks)
    torch.testing.assert_close(fixed, sliced, rtol=1e-5, atol=1e-5)  # same maths, only the memory layout differs


def check_target_logprobs(dtype, device, rows: int, vocab: int):
    """The chunked log-prob (logprobs._TargetLogProb) against log_softmax(x.float()).gather(t): values and
    gradients agree to float32 rounding order (1e-5 on logits of magnitude ~10), over several chunks with a last one
    cut short. Gradients are compared in the logits' dtype, where both are rounded once: within one unit of that
    dtype's rounding (half an ulp each side) of values ≤ 1."""
    from transformer_squared.logprobs import _rows_per_chunk, target_logprobs

    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(rows, vocab, generator=g)).to(device, dtype).requires_grad_()
    target = torch.randint(0, vocab, (rows,), generator=g).to(device)
    weight = torch.randn(rows, generator=g).to(device)
    assert rows % _rows_per_chunk(logits) != 0 and _rows_per_chunk(logits) < rows  # several chunks, the last short
    ref = torch.log_softmax(logits.float(), -1).gather(-1, target[:, None]).squeeze(-1)
    (ref * weight).sum().backward()
    ref_grad, logits.grad = logits.grad.clone(), None
    got = target_logprobs(logits, target)
    (got * weight).sum().backward()
    assert got.dtype == torch.float32
    assert (got - ref.detach()).abs().max() <= 1e-5
    ulp = {torch.float32: 1e-6, torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
    assert (logits.grad.float() - ref_grad.float()).abs().max() <= ulp * weight.abs().max()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_target_logprobs_equal_log_softmax_and_its_gradient(dtype, one_thread):
    check_target_logprobs(dtype, "cpu", rows=23, vocab=50_000)  # ~10 rows a chunk on the CPU


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_target_logprobs_equal_log_softmax_and_its_gradient_cuda(dtype):
    check_target_logprobs(dtype, "cuda", rows=1500, vocab=50_000)  # 1,342 rows a chunk on a GPU


def test_cpu_training_attention_is_the_math_kernel_only_under_grad():
    """Precision rule 7: with autograd on, the CPU forward runs SDPA's math kernel, differentiated op by op (not the
    fused flash kernel, whose backward is the slow one in bf16); without grad, and on other devices, nothing is
    forced."""
    import contextlib

    import torch.nn.functional as F

    from transformer_squared.precision import attention_for

    q, k, v = (torch.randn(1, 2, 4, 8, requires_grad=True) for _ in range(3))
    assert "Flash" in type(F.scaled_dot_product_attention(q, k, v).grad_fn).__name__  # PyTorch's own choice
    with attention_for("cpu"):
        assert "Flash" not in type(F.scaled_dot_product_attention(q, k, v).grad_fn).__name__
    with torch.no_grad():
        assert isinstance(attention_for("cpu"), contextlib.nullcontext)
    assert isinstance(attention_for("cuda"), contextlib.nullcontext)
    from transformer_squared.precision import MATH_ATTENTION_MAX

    with attention_for("cpu", MATH_ATTENTION_MAX + 1):  # large attention: the math kernel would keep too much
        assert "Flash" in type(F.scaled_dot_product_attention(q, k, v).grad_fn).__name__


def test_attention_size_of_a_rollout_counts_heads_rows_and_lengths():
    """The size rule 7 compares: B × H × Lq × Lk of the largest attention of the log-prob forward."""
    from types import SimpleNamespace

    from transformer_squared.logprobs import Rollout, _attention_size

    model = SimpleNamespace(config=SimpleNamespace(num_attention_heads=9))
    ids, mask = torch.zeros(8, 50, dtype=torch.long), torch.ones(8, 50, dtype=torch.long)
    flat = Rollout(ids, mask, torch.ones(8, 20), 30, [""] * 8)
    assert _attention_size(model, flat) == 9 * 8 * 50 * 50
    grouped = Rollout(ids, mask, torch.ones(8, 20), 30, [""] * 8, 4)  # 2 prompts prefilled once, 8 × 20 completions
    assert _attention_size(model, grouped) == 9 * max(2 * 30 * 30, 8 * 20 * 50)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=lambda d: str(d).removeprefix("torch."))
def test_composed_weight_below_float32_is_the_float32_sum_rounded_once(dtype):
    """compose_weight adds W and the change in the compute dtype directly: the same bits as (W.float() + change.float())
    cast once, since elementwise bf16/fp16 arithmetic computes in float32 and rounds once."""
    from transformer_squared.svf import compose_weight

    g = torch.Generator().manual_seed(0)
    W = torch.randn(48, 32, generator=g) * 0.05
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    s2 = S * (1 + 0.1 * torch.randn(S.shape, generator=g))
    Wd, Ud, Vd = W.to(dtype), U.to(dtype), Vh.to(dtype)
    change = (Ud * (s2 - S).to(dtype)) @ Vd
    expected = (Wd.float() + change.float()).to(dtype)
    assert torch.equal(compose_weight(Ud, s2, Vd, dtype, base=Wd, S=S), expected)
