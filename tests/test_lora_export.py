"""LoRA export (lora_export.py): a full-rank adapter loaded by PEFT reproduces the SVF expert, a rank-K adapter's
error is exactly the norm of the dropped |σ' − σ| components (and no other K components do better), mixtures export
like any expert, and bad input fails in one line with nothing written."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import build_tiny_model
from transformer_squared.experts import Expert, ExpertError, mix
from transformer_squared.lora_export import delta_sigma, export_lora, lora_factors, parse_rank

peft = pytest.importorskip("peft")


def peft_logits(folder, input_ids, arch="llama"):
    base = build_tiny_model(arch)  # same seed: the same weights as the SVF model's, untouched
    model = peft.PeftModel.from_pretrained(base, str(folder)).eval()
    with torch.no_grad():
        return model(input_ids).logits


def svf_logits(svf, expert, input_ids):
    with torch.no_grad(), svf.applied(expert):
        return svf.model(input_ids).logits


@pytest.mark.parametrize("parametrization,targets", [("paper", "mlp"), ("reference", "all-linear")])
def test_full_rank_adapter_loaded_by_peft_gives_the_expert_logits(tiny_model, make_svf, random_z, input_ids,
                                                                  tmp_path, parametrization, targets):
    svf = make_svf(tiny_model("llama"), targets)
    expert = Expert.for_model(svf, random_z(svf, 0.3, parametrization=parametrization), parametrization, name="e")
    report = export_lora(svf, expert, tmp_path / "lora", rank=None)
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 64 and config["peft_type"] == "LORA"
    assert report.relative_error == 0.0
    base = build_tiny_model("llama")
    with torch.no_grad():
        base_out = base(input_ids).logits
    want = svf_logits(svf, expert, input_ids)
    assert (want - base_out).abs().max() > 1e-2  # the expert visibly changes the model
    # W + BA vs U diag(σ') Vᵀ: equal up to the float32 SVD's reconstruction error (~1e-6 relative per weight)
    # carried through two layers; measured max |Δlogit| 2.4e-7 (paper) and 6.0e-7 (reference) on logits up to 0.55.
    torch.testing.assert_close(peft_logits(tmp_path / "lora", input_ids), want, atol=2e-5, rtol=1e-5)


def test_rank_k_error_is_the_dropped_components_norm_and_optimal(svf, random_z, tmp_path):
    from safetensors.torch import load_file

    expert = Expert.for_model(svf, random_z(svf, 0.2), name="e")
    K = 10
    report = export_lora(svf, expert, tmp_path / "lora", rank=K)
    tensors = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    total_sq, dropped_sq = 0.0, 0.0
    for n in svf.names:
        U, S, Vh = (t.double() for t in svf.decomposition.factors(n))
        d = delta_sigma(svf, expert, n).double()
        delta = (U * d) @ Vh  # ΔW, exactly
        A = tensors[f"base_model.model.{n}.lora_A.weight"].double()
        B = tensors[f"base_model.model.{n}.lora_B.weight"].double()
        assert A.shape == (K, Vh.shape[1]) and B.shape == (U.shape[0], K)
        err = float((delta - B @ A).norm())
        dropped = float(d.abs().sort(descending=True).values[K:].norm())
        assert err == pytest.approx(dropped, rel=1e-5)
        assert report.matrices[n].error == pytest.approx(dropped, rel=1e-5)
        # any other choice of K components is no better (here: the K of largest σ, the usual truncation)
        B2, A2 = lora_factors(U, torch.cat([d[:K], torch.zeros_like(d[K:])]), Vh, K)
        assert float((delta - B2 @ A2).norm()) >= err - 1e-9
        total_sq, dropped_sq = total_sq + float(d.norm()) ** 2, dropped_sq + dropped ** 2
    assert report.relative_error == pytest.approx((dropped_sq / total_sq) ** 0.5, rel=1e-5)
    assert 0 < report.relative_error < 1
    record = json.loads((tmp_path / "lora" / "t2_lora.json").read_text())
    assert record["rank"] == K and record["relative_error"] == pytest.approx(report.relative_error)
    assert set(record["matrices"]) == set(svf.names)


def test_ranks_below_k_are_zero_padded_exactly(tiny_model, make_svf, random_z, input_ids, tmp_path):
    # all-linear: k/v have rank 32, the rest 64; K = 48 keeps every k/v component and pads them with zeros
    svf = make_svf(tiny_model("llama"), "all-linear")
    expert = Expert.for_model(svf, random_z(svf, 0.2), name="e")
    report = export_lora(svf, expert, tmp_path / "lora", rank=48)
    kv = [n for n in svf.names if n.endswith(("k_proj", "v_proj"))]
    assert kv and all(report.matrices[n].rank == 32 and report.matrices[n].error == 0.0 for n in kv)
    assert all(report.matrices[n].error > 0 for n in svf.names if n not in kv)


def test_mixture_exports_like_any_expert(svf, random_z, input_ids, tmp_path):
    a = Expert.for_model(svf, random_z(svf, 0.3, seed=1), name="a")
    b = Expert.for_model(svf, random_z(svf, 0.3, seed=2), name="b")
    mixed = mix([a, b], [0.7, 0.4])
    mixed.meta.name = "ab"
    mixed.save(tmp_path / "lib" / "ab")
    loaded = Expert.load(tmp_path / "lib" / "ab")  # as `t2 export` sees it: z and α on disk, no components
    export_lora(svf, loaded, tmp_path / "lora", rank=None)
    record = json.loads((tmp_path / "lora" / "t2_lora.json").read_text())
    assert record["alpha"] == {"a": 0.7, "b": 0.4}
    torch.testing.assert_close(peft_logits(tmp_path / "lora", input_ids), svf_logits(svf, mixed, input_ids),
                               atol=2e-5, rtol=1e-5)


def test_target_modules_are_short_names_unless_a_regex_picks_some_layers(tiny_model, make_svf, tmp_path):
    svf = make_svf(tiny_model("llama"), r"layers\.0\.mlp\.")
    expert = Expert.for_model(svf, name="e")
    export_lora(svf, expert, tmp_path / "lora", rank=4)
    modules = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["target_modules"]
    assert modules == sorted(svf.names) and all(m.startswith("model.layers.0.") for m in modules)


@pytest.mark.parametrize("value,message", [("0", "must be at least 1"), ("-3", "must be at least 1"),
                                           ("abc", "give a positive integer")])
def test_bad_rank_values(value, message):
    with pytest.raises(ExpertError, match=message):
        parse_rank(value)
    assert parse_rank("full") is None and parse_rank("16") == 16


def test_rank_above_the_matrices_and_existing_out_refused_with_nothing_written(svf, tmp_path):
    expert = Expert.for_model(svf, name="e")
    with pytest.raises(ExpertError, match=r"--rank 65: larger than the matrices' rank \(64\)"):
        export_lora(svf, expert, tmp_path / "lora", rank=65)
    assert not (tmp_path / "lora").exists()
    (tmp_path / "lora").mkdir()
    with pytest.raises(ExpertError, match="already exists; pass --overwrite"):
        export_lora(svf, expert, tmp_path / "lora", rank=4)


def test_failed_write_leaves_nothing(svf, tmp_path, monkeypatch):
    import safetensors.torch

    def failing(tensors, path, metadata=None):
        open(path, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        export_lora(svf, Expert.for_model(svf, name="e"), tmp_path / "out" / "lora", rank=4)
    assert list((tmp_path / "out").iterdir()) == []


def test_cli_export_lora(tiny_folder, one_thread, tmp_path, capsys):
    from transformer_squared.cli import main

    model, cache, lib = str(tiny_folder), str(tmp_path / "svd"), str(tmp_path / "lib")
    assert main(["experts", "--library", lib, "init", "--model", model, "--cache-dir", cache, "--name", "noisy",
                 "--noise", "0.1"]) == 0
    capsys.readouterr()
    out = tmp_path / "lora"
    args = ["export", "--library", lib, "--cache-dir", cache, "--expert", "noisy", "--format", "lora"]
    assert main([*args, "--rank", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rank-8 LoRA adapter" in printed and "relative error" in printed
    assert {p.name for p in out.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "t2_lora.json"}
    assert main([*args, "--rank", "0", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rank 0: must be at least 1" in err and not (tmp_path / "bad").exists()
