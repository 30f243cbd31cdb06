"""The public classes print as what they are (name, path, counts), not as an object address or a module tree."""

from __future__ import annotations


def test_reprs_of_a_library_its_experts_and_the_model(svf, random_z, tmp_path):
    from transformer_squared.experts import Expert, ExpertLibrary

    lib = ExpertLibrary(tmp_path / "lib")
    assert repr(lib) == f"ExpertLibrary({str(tmp_path / 'lib')!r}, 0 experts: none)"
    lib.add(Expert.for_model(svf, random_z(svf, seed=1), domain="math", created_by={"method": "train"}), "math")
    lib.add(Expert.for_model(svf, random_z(svf, seed=2), domain="code"), "code")
    assert repr(lib) == f"ExpertLibrary({str(tmp_path / 'lib')!r}, 2 experts: code, math)"

    math = lib.get("math")
    text = repr(math)
    assert text.startswith("Expert('math', domain='math', 384 z values over 6 matrices, targets='mlp'"), text
    meta = repr(math.meta)
    assert meta.startswith("ExpertMeta(name='math', domain='math'") and "method='train'" in meta, meta
    assert math.meta.fingerprint[:12] in meta and math.meta.fingerprint not in meta

    d = repr(svf.decomposition)
    assert d.startswith("Decomposition(6 matrices, fingerprint=") and str(svf.decomposition.path) in d
    assert repr(svf).startswith("SVFModel('tiny', LlamaForCausalLM, targets='mlp', 6 matrices, base weights")
    with svf.applied(math):
        assert f"expert {math.key[:12]} merged" in repr(svf)
    for text in (repr(lib), repr(math), meta, d, repr(svf)):
        assert " at 0x" not in text and "\n" not in text


def test_many_experts_are_cut_short(svf, random_z, tmp_path):
    from transformer_squared.experts import Expert, ExpertLibrary

    lib = ExpertLibrary(tmp_path / "lib")
    expert = Expert.for_model(svf, random_z(svf))
    for i in range(10):
        lib.add(expert, f"e{i}")
    assert repr(lib).endswith("e7, ... (2 more))") and "10 experts" in repr(lib)


def test_svf_linear_and_loaded_model(tiny_folder, one_thread):
    from transformer_squared.models import load_model
    from transformer_squared.svf import SVFLinear
    import torch

    loaded = load_model(str(tiny_folder))
    n = sum(p.numel() for p in loaded.model.parameters())
    assert repr(loaded) == f"LoadedModel({str(tiny_folder)!r}, LlamaForCausalLM, {n / 1e6:.1f}M parameters)"
    base = torch.nn.Linear(4, 3)
    U, S, Vh = torch.linalg.svd(base.weight.detach(), full_matrices=False)
    layer = SVFLinear(base, U, S, Vh, torch.ones(3))
    assert "rank=3, parametrization='paper', mode=factored" in repr(layer)
    layer.merge()
    assert "mode=merged" in repr(layer)
