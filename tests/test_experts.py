"""experts: save/load round-trip, atomic writes, every way an expert can be wrong (each refused with an
ExpertError that says what, and the model left as it was), mixing, and the library over a folder."""

from __future__ import annotations

import json
import os

import pytest
import torch

from transformer_squared.experts import Expert, ExpertError, ExpertLibrary, ExpertMeta, check_name, mix


def saved(svf, folder, z=None, **meta):
    expert = Expert.for_model(svf, z, **meta)
    expert.save(folder)
    return folder


def weights_of(svf) -> dict[str, torch.Tensor]:
    return {n: lin.weight.detach().clone() for n, lin in svf.linears.items()}


def entries(folder) -> list[str]:
    return sorted(os.listdir(folder))


# -- disk round-trip ---------------------------------------------------------------------------------------------

def test_save_load_round_trip(svf, make_svf, tmp_path, random_z, input_ids, logits):
    expert = Expert.for_model(svf, random_z(svf), parametrization="paper", domain="math", description="d",
                              created_by={"method": "random", "seed": 0}, metrics={"acc": 0.5})
    path = expert.save(tmp_path / "math")
    assert entries(path) == ["expert.json", "z.safetensors"]
    loaded = Expert.load(path)
    assert set(loaded.z) == set(expert.z) == set(svf.names)
    assert all(torch.equal(loaded.z[n], expert.z[n]) and loaded.z[n].dtype == torch.float32 for n in svf.names)
    assert loaded.key == expert.key
    assert loaded.meta.name == "math" and expert.meta.name == "math"  # named after its folder
    for field in ("base_model", "fingerprint", "targets", "parametrization", "domain", "description",
                  "created_by", "metrics"):
        assert getattr(loaded.meta, field) == getattr(expert.meta, field), field
    raw = json.loads((path / "expert.json").read_text())
    assert raw["num_params"] == svf.num_z() and raw["matrices"] == sorted(svf.names) and raw["created_at"]
    with svf.applied(expert):
        original = logits(svf.model, input_ids)
    fresh = make_svf(svf.model)  # no cached weights: the loaded expert composes its own
    with fresh.applied(loaded):
        assert torch.equal(logits(svf.model, input_ids), original)


@pytest.mark.parametrize("max_mult", [1.0, 2.0])
def test_an_expert_json_that_records_max_mult_loads_as_a_new_one(svf, tmp_path, random_z, max_mult):
    """Experts saved before max_mult was dropped (it cancels: svf.py) record it; they load as the same expert with
    the same key, and the key is the one hashed then for the default 1.0 (so recorded results still match)."""
    import hashlib

    z = random_z(svf, scale=1.0, parametrization="reference")
    new = Expert.for_model(svf, z, parametrization="reference", name="r")
    new.save(tmp_path / "new")
    old = tmp_path / "old"
    new.save(old)
    raw = json.loads((old / "expert.json").read_text())
    assert "max_mult" not in raw
    (old / "expert.json").write_text(json.dumps({**raw, "max_mult": max_mult}))
    loaded = Expert.load(old)
    assert loaded.key == Expert.load(tmp_path / "new").key == new.key
    h = hashlib.blake2b(digest_size=16)
    h.update(b"reference|1.0")
    for n in sorted(z):
        h.update(n.encode())
        h.update(z[n].float().contiguous().numpy().data)
    assert new.key == h.hexdigest()  # the key before the change, for an expert with max_mult 1.0
    composed, expected = svf.compose(loaded, cache=False), svf.compose(new, cache=False)
    assert all(torch.equal(composed[n], expected[n]) for n in svf.names)
    assert mix([loaded, new], [0.5, 0.5]).parametrization == "reference"


def test_save_refuses_an_existing_folder_unless_overwrite(svf, tmp_path, random_z):
    first = saved(svf, tmp_path / "lib" / "e")
    second = Expert.for_model(svf, random_z(svf))
    with pytest.raises(ExpertError, match="already exists.*--overwrite"):
        second.save(first)
    assert Expert.load(first).key != second.key
    second.save(first, overwrite=True)
    assert Expert.load(first).key == second.key
    assert entries(tmp_path / "lib") == ["e"]  # the replaced expert is gone, no leftovers


@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
def test_failed_save_leaves_no_folder_and_no_temp_folder(svf, tmp_path, random_z, monkeypatch, overwrite):
    import safetensors.torch

    folder = tmp_path / "lib" / "e"
    if overwrite:
        old = Expert.for_model(svf, random_z(svf, seed=1))
        old.save(folder)

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        Expert.for_model(svf, random_z(svf, seed=2)).save(folder, overwrite=overwrite)
    if overwrite:
        assert entries(tmp_path / "lib") == ["e"] and Expert.load(folder).key == old.key
    else:
        assert entries(tmp_path / "lib") == []


def test_non_finite_expert_is_not_saved(svf, tmp_path):
    z = {n: torch.full_like(t, float("nan")) for n, t in svf.init_z().items()}
    with pytest.raises(ExpertError, match="non-finite"):
        Expert.for_model(svf, z).save(tmp_path / "lib" / "nan")
    assert not (tmp_path / "lib").exists() or entries(tmp_path / "lib") == []


def test_z_that_are_views_of_one_tensor_round_trip(svf, tmp_path):
    ranks = [svf.decomposition.rank(n) for n in svf.names]
    flat = torch.linspace(0.5, 1.5, sum(ranks))  # e.g. one flat vector split per matrix
    z = dict(zip(svf.names, flat.split(ranks)))
    loaded = Expert.load(Expert.for_model(svf, z).save(tmp_path / "flat"))
    assert all(torch.equal(loaded.z[n], z[n]) for n in svf.names)


# -- refusals: clear ExpertError, model untouched ----------------------------------------------------------------

def corrupt_z_garbage(svf, folder):
    (folder / "z.safetensors").write_bytes(b"\x07not a safetensors file" * 16)


def corrupt_z_truncated(svf, folder):
    data = (folder / "z.safetensors").read_bytes()
    (folder / "z.safetensors").write_bytes(data[: len(data) - 7])


def corrupt_json_truncated(svf, folder):
    text = (folder / "expert.json").read_text()
    (folder / "expert.json").write_text(text[: len(text) // 2])


def corrupt_json_binary(svf, folder):
    (folder / "expert.json").write_bytes(b"\xff\xfe\x00\x81garbage")


def missing_json(svf, folder):
    (folder / "expert.json").unlink()


def edit_json(**changes):
    def edit(svf, folder):
        raw = json.loads((folder / "expert.json").read_text())
        raw.update(changes)
        (folder / "expert.json").write_text(json.dumps(raw))
    edit.__name__ = "json_" + "_".join(changes)
    return edit


def rewrite_z(change):
    def rewrite(svf, folder):
        from safetensors.torch import load_file, save_file

        z = change(load_file(str(folder / "z.safetensors")))
        save_file(z, str(folder / "z.safetensors"))
        raw = json.loads((folder / "expert.json").read_text())
        raw["matrices"] = sorted(z)  # keep the two files consistent: the error must come from the check under test
        (folder / "expert.json").write_text(json.dumps(raw))
    return rewrite


def _first(z, value):
    z = dict(z)
    z[sorted(z)[0]] = value(z[sorted(z)[0]])
    return z


def _renamed(z):
    z = dict(z)
    z["model.layers.0.mlp.not_a_proj"] = z.pop(sorted(z)[0])
    return z


def _dropped(z):
    z = dict(z)
    z.pop(sorted(z)[0])
    return z


def _disagree(svf, folder):
    raw = json.loads((folder / "expert.json").read_text())
    raw["matrices"] = raw["matrices"][1:]
    (folder / "expert.json").write_text(json.dumps(raw))


REFUSALS = {
    "z-garbage": (corrupt_z_garbage, r"z\.safetensors is corrupt"),
    "z-truncated": (corrupt_z_truncated, r"z\.safetensors is corrupt"),
    "json-truncated": (corrupt_json_truncated, r"expert\.json is corrupt"),
    "json-binary": (corrupt_json_binary, r"expert\.json is corrupt"),
    "json-missing": (missing_json, r"is not an expert \(needs expert\.json and z\.safetensors\)"),
    "json-future-schema": (edit_json(schema_version=99), r"schema 99; upgrade"),
    "json-parametrization": (edit_json(parametrization="lora"), r"unknown parametrization 'lora'"),
    "json-matrices-disagree": (_disagree, r"disagree on the matrices"),
    "fingerprint": (edit_json(fingerprint="0" * 32), r"made for other weights"),
    "z-nan": (rewrite_z(lambda z: _first(z, lambda t: t * float("nan"))), r"non-finite"),
    "z-inf": (rewrite_z(lambda z: _first(z, lambda t: t / 0)), r"non-finite"),
    "z-too-long": (rewrite_z(lambda z: _first(z, lambda t: torch.cat([t, t[:1]]))), r"has 65 values.*rank 64"),
    "z-matrix": (rewrite_z(lambda z: _first(z, lambda t: t.repeat(2, 1))), r"expected a vector"),
    "z-wrong-name": (rewrite_z(_renamed), r"adapts 6 matrices .*decomposed for 6"),
    "z-missing-matrix": (rewrite_z(_dropped), r"adapts 5 matrices .*decomposed for 6"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_broken_experts_are_refused_and_the_model_is_untouched(case, svf, tmp_path, random_z, input_ids, logits):
    damage, message = REFUSALS[case]
    active = Expert.for_model(svf, random_z(svf, seed=1))
    svf.apply(active)
    before, weights = logits(svf.model, input_ids), weights_of(svf)
    folder = saved(svf, tmp_path / "broken", random_z(svf, seed=2))
    damage(svf, folder)
    with pytest.raises(ExpertError, match=message):
        svf.apply(Expert.load(folder))
    assert svf.active == active.key
    assert all(torch.equal(svf.linears[n].weight, w) for n, w in weights.items())
    assert torch.equal(logits(svf.model, input_ids), before)


@pytest.mark.parametrize("content", ["[]", "null", '{"schema_version": "1"}'], ids=["list", "null", "schema-str"])
def test_expert_json_that_is_not_an_object_is_refused(svf, tmp_path, content):
    folder = saved(svf, tmp_path / "e")
    (folder / "expert.json").write_text(content)
    with pytest.raises(ExpertError, match="corrupt"):
        Expert.load(folder)


def test_library_refuses_a_binary_expert_json(svf, tmp_path):
    lib = ExpertLibrary(tmp_path)
    lib.add(Expert.for_model(svf), "e")
    (tmp_path / "e" / "expert.json").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ExpertError, match="corrupt"):
        lib.get("e")


def test_expert_for_other_weights_is_refused(tiny_model, make_svf, random_z, input_ids, logits):
    made_for = make_svf(tiny_model("llama"))
    expert = Expert.for_model(made_for, random_z(made_for))
    other = tiny_model("llama")  # the same model with one weight changed
    with torch.no_grad():
        other.get_submodule("model.layers.0.mlp.gate_proj").weight[3, 5] += 1e-3
    svf = make_svf(other)
    before, weights = logits(other, input_ids), weights_of(svf)
    with pytest.raises(ExpertError, match=r"made for other weights .*use it with the model it was trained on"):
        svf.apply(expert)
    assert svf.active is None
    assert all(torch.equal(svf.linears[n].weight, w) for n, w in weights.items())
    assert torch.equal(logits(other, input_ids), before)
    made_for.apply(expert)  # ...while the model it was made for takes it
    assert made_for.active == expert.key
    # a passed check is remembered per decomposition; it must not let the expert into the other model afterwards
    with pytest.raises(ExpertError, match="made for other weights"):
        svf.apply(expert)
    assert svf.active is None


def test_passed_check_is_remembered_only_for_its_decomposition(svf, random_z, monkeypatch):
    expert = Expert.for_model(svf, random_z(svf))
    svf.apply(expert)
    calls = []
    monkeypatch.setattr(Expert, "validate", lambda self: calls.append(1))
    svf.apply(expert)  # switching back: no second validation
    assert calls == []
    expert._compatible_with = "another decomposition"
    svf.apply(expert)
    assert calls == [1]


def test_expert_for_other_targets_is_refused(tiny_model, make_svf, svd_cache):
    from transformer_squared.svd import decompose
    from transformer_squared.svf import SVFModel

    model = tiny_model("llama")
    mlp = make_svf(model)
    attn = SVFModel(model, decompose(model, "attn", cache_dir=svd_cache, progress=False), targets="attn")
    with pytest.raises(ExpertError, match=r"adapts 6 matrices \('mlp'\) but the model was decomposed for 8.*--targets mlp"):
        attn.apply(Expert.for_model(mlp))


# -- mixing ------------------------------------------------------------------------------------------------------

def test_mix_is_the_weighted_sum_of_z(svf, random_z):
    experts = [Expert.for_model(svf, random_z(svf, seed=s), name=f"e{s}") for s in range(3)]
    mixed = mix(experts, [0.5, 0.3, 0.2])
    for n in svf.names:
        expected = 0.5 * experts[0].z[n] + 0.3 * experts[1].z[n] + 0.2 * experts[2].z[n]
        torch.testing.assert_close(mixed.z[n], expected, atol=1e-7, rtol=0)  # z ~1: float32 summation order
    assert mixed.meta.alpha == {"e0": 0.5, "e1": 0.3, "e2": 0.2}
    assert mixed.meta.fingerprint == experts[0].meta.fingerprint and mixed.meta.created_by == {"method": "mix"}
    assert [(e.key, a) for e, a in mixed.components] == [(e.key, a) for e, a in zip(experts, [0.5, 0.3, 0.2])]


def test_mix_with_per_matrix_weights(svf, random_z):
    a, b = (Expert.for_model(svf, random_z(svf, seed=s), name=f"e{s}") for s in (1, 2))
    wa = {n: i / 10 for i, n in enumerate(svf.names)}
    wb = {n: 1 - i / 10 for i, n in enumerate(svf.names)}
    mixed = mix([a, b], [wa, wb])
    for n in svf.names:
        torch.testing.assert_close(mixed.z[n], wa[n] * a.z[n] + wb[n] * b.z[n], atol=1e-7, rtol=0)


def test_mix_refuses_what_cannot_be_mixed(tiny_model, make_svf, svf, random_z):
    a, b = (Expert.for_model(svf, random_z(svf, seed=s), name=f"e{s}") for s in (1, 2))
    with pytest.raises(ExpertError, match="one weight per expert"):
        mix([a, b], [1.0])
    with pytest.raises(ExpertError, match="one weight per expert"):
        mix([], [])
    with pytest.raises(ExpertError, match="finite number"):
        mix([a, b], [0.5, float("nan")])
    with pytest.raises(ExpertError, match="finite number"):
        mix([a, b], [0.5, float("inf")])
    with pytest.raises(ExpertError, match="must name every matrix"):
        mix([a, b], [0.5, {svf.names[0]: 1.0}])
    ref = Expert.for_model(svf, parametrization="reference", name="ref")
    with pytest.raises(ExpertError, match=r"cannot mix 'e1' \(paper\) and 'ref' \(reference\)"):
        mix([a, ref], [0.5, 0.5])
    other = make_svf(tiny_model("llama", seed=7))
    with pytest.raises(ExpertError, match="made for different matrices or weights"):
        mix([a, Expert.for_model(other, name="o")], [0.5, 0.5])


# -- library -----------------------------------------------------------------------------------------------------

def test_library_add_list_get_remove(svf, tmp_path, random_z):
    lib = ExpertLibrary(tmp_path / "lib")
    assert lib.names() == [] and len(lib) == 0  # a missing folder is an empty library
    for name in ("math", "code", "b.v2"):
        lib.add(Expert.for_model(svf, random_z(svf, seed=len(name)), domain=name), name)
    (tmp_path / "lib" / "not-an-expert").mkdir()
    (tmp_path / "lib" / "notes.txt").write_text("x")
    assert lib.names() == ["b.v2", "code", "math"] and len(lib) == 3
    assert "math" in lib and "not-an-expert" not in lib
    assert lib.info("math")["domain"] == "math"
    by_name, by_path = lib.get("code"), lib.get(tmp_path / "lib" / "code")
    assert by_name.key == by_path.key and by_name.name == "code"
    with pytest.raises(ExpertError, match=r"no expert 'physics' in .*have: b\.v2, code, math"):
        lib.get("physics")
    lib.remove("code")
    assert lib.names() == ["b.v2", "math"]
    assert sorted(entries(tmp_path / "lib")) == ["b.v2", "math", "not-an-expert", "notes.txt"]  # no trash left
    with pytest.raises(ExpertError, match="no expert 'code'"):
        lib.remove("code")


def test_library_add_refuses_existing_name_unless_overwrite(svf, tmp_path, random_z):
    lib = ExpertLibrary(tmp_path)
    lib.add(Expert.for_model(svf), "e")
    replacement = Expert.for_model(svf, random_z(svf))
    with pytest.raises(ExpertError, match="already exists"):
        lib.add(replacement, "e")
    lib.add(replacement, "e", overwrite=True)
    assert lib.get("e").key == replacement.key


@pytest.mark.parametrize("name", ["", ".hidden", "../escape", "a/b", "a b", "-dash", "x" * 101, "é"])
def test_invalid_names_are_refused(svf, tmp_path, name):
    lib = ExpertLibrary(tmp_path / "lib")
    with pytest.raises(ExpertError, match="invalid expert name"):
        lib.add(Expert.for_model(svf), name)
    with pytest.raises(ExpertError, match="invalid expert name"):
        lib.mix({"a": 1.0}, name=name)
    assert not (tmp_path / "lib").exists() or entries(tmp_path / "lib") == []
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("name", ["math", "Math_2", "v1.0-rc", "0", "x" * 100])
def test_valid_names(name):
    assert check_name(name) == name


def test_library_mix_saves_the_weighted_sum(svf, tmp_path, random_z):
    lib = ExpertLibrary(tmp_path)
    for s, name in enumerate(("math", "code")):
        lib.add(Expert.for_model(svf, random_z(svf, seed=s)), name)
    mixed = lib.mix({"math": 0.6, "code": 0.4}, name="blend")
    assert lib.names() == ["blend", "code", "math"]
    loaded, math, code = lib.get("blend"), lib.get("math"), lib.get("code")
    assert loaded.key == mixed.key
    for n in svf.names:
        torch.testing.assert_close(loaded.z[n], 0.6 * math.z[n] + 0.4 * code.z[n], atol=1e-7, rtol=0)
    assert lib.info("blend")["alpha"] == {"math": 0.6, "code": 0.4}
    assert lib.info("blend")["description"] == "mixture of math, code"
    with pytest.raises(ExpertError, match="'blend' already exists"):
        lib.mix({"math": 1.0}, name="blend")
    assert lib.mix({"math": 1.0}, name=None).name == ""  # an unnamed mixture is not saved
    assert lib.names() == ["blend", "code", "math"]


def test_expert_meta_defaults_are_the_identity_paper_expert(svf):
    meta = ExpertMeta()
    assert (meta.parametrization, meta.targets) == ("paper", "mlp")
    expert = Expert.for_model(svf)
    assert all(torch.equal(z, torch.ones_like(z)) for z in expert.z.values())
