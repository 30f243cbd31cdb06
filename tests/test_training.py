"""Training: the policies (training/policy.py), the loop (training/trainer.py) and evaluation (evaluation.py),
on a tiny random Llama saved as a Hugging Face folder with the character tokenizer and a chat template
(`tiny_llama_dir` in conftest.py), so every run goes through the same loading path as `--model FOLDER`.

The random model never answers an addition correctly, so on `arithmetic` every score is 0: reinforce then pushes
all samples down (z moves), rloo sees only unanimous groups and skips every step (z stays). A registered `parity`
task with a reward a random model can earn gives rloo something to learn from."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import VOCAB
from torch import nn
from torch.testing import assert_close

from transformer_squared.tasks import TASKS, ArcTask, ArithmeticTask
from transformer_squared.training.config import TrainConfig
from transformer_squared.evaluation import EvalResult, evaluate, wilson_interval, write_results

TINY_RANKS = 2 * 3 * 64  # 2 layers × (gate, up, down), each of rank min(64, 128) = 64


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def t2_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("t2-cache")  # SVD factors of the tiny model, computed once for the module


@pytest.fixture(autouse=True)
def _cache_env(t2_cache, monkeypatch):
    monkeypatch.setenv("T2_CACHE", str(t2_cache))


@pytest.fixture
def tiny_svf(tiny_llama_dir):
    """A fresh SVFModel over the tiny model's MLP matrices (policies swap its modules, so one per test)."""
    from transformer_squared.svf import load_svf

    return load_svf(str(tiny_llama_dir), progress=False)


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))  # (B, T)


def logits_of(model, ids):
    with torch.no_grad():
        return model(ids).logits  # (B, T, vocab)


# -- policies ------------------------------------------------------------------------------------------------------

def test_svf_policy_trains_exactly_the_z_vectors(tiny_svf):
    from transformer_squared.svf import SVFLinear
    from transformer_squared.training.policy import SVFPolicy

    model = tiny_svf.model
    policy = SVFPolicy(tiny_svf)
    try:
        params = policy.parameters()
        swapped = {n: m for n, m in model.named_modules() if isinstance(m, SVFLinear)}
        assert sorted(swapped) == sorted(tiny_svf.names) == sorted(policy.layers)
        assert [id(p) for p in params] == [id(layer.svf_z) for layer in policy.layers.values()]
        assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in params}
        assert policy.num_trainable() == sum(tiny_svf.decomposition.rank(n) for n in tiny_svf.names) == TINY_RANKS
        assert all(torch.equal(p, torch.ones(64)) for p in params)  # identity at init (paper parametrization)
        assert sorted(policy.state_dict()) == sorted(tiny_svf.names)
    finally:
        policy.close()


def test_svf_policy_switches_and_close_restore_the_base(tiny_svf, ids):
    from transformer_squared.training.policy import SVFPolicy

    model = tiny_svf.model
    requires = [p.requires_grad for p in model.parameters()]
    base = logits_of(model, ids)
    g = torch.Generator().manual_seed(0)
    z = {n: 1 + 0.2 * torch.randn(z.shape, generator=g) for n, z in tiny_svf.init_z().items()}  # not the identity
    policy = SVFPolicy(tiny_svf, z=z)
    try:
        factored = logits_of(model, ids)
        assert not torch.allclose(factored, base, atol=1e-3)  # this z changes the model
        with policy.sampling():
            assert all(layer.merged_weight is not None for layer in policy.layers.values())
            merged = logits_of(model, ids)
        assert all(layer.merged_weight is None for layer in policy.layers.values())
        assert_close(merged, factored, atol=1e-4, rtol=1e-4)  # merged ≡ factored
        with policy.base():
            assert torch.equal(logits_of(model, ids), base)
        with torch.no_grad():
            for p in policy.parameters():
                p.mul_(3.0)
        with policy.base():
            assert torch.equal(logits_of(model, ids), base)  # whatever z is
        assert not torch.allclose(logits_of(model, ids), factored, atol=1e-3)
    finally:
        policy.close()
    for name, linear in tiny_svf.linears.items():
        assert model.get_submodule(name) is linear and type(linear) is nn.Linear
    assert [p.requires_grad for p in model.parameters()] == requires
    assert torch.equal(logits_of(model, ids), base)


def test_lora_policy(tiny_llama_dir, ids):
    from transformer_squared.models import load_model
    from transformer_squared.training.policy import LoRAPolicy

    loaded = load_model(str(tiny_llama_dir))
    base = logits_of(loaded.model, ids)
    policy = LoRAPolicy(loaded.model, loaded.tokenizer, rank=4, alpha=8, targets=["q_proj", "v_proj"])
    model = policy.model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # per layer: A is (4, 64) for q and v; B is (64, 4) for q (4 heads × 16) and (32, 4) for v (2 KV heads × 16)
    assert policy.num_trainable() == 2 * (256 + 256 + 256 + 128)
    assert sorted(policy.state_dict()) == sorted(trainable)
    assert_close(logits_of(model, ids), base)  # B = 0 at init: identity
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    unmerged = logits_of(model, ids)  # eval mode: the 0.05 dropout is off
    assert not torch.allclose(unmerged, base, atol=1e-3)
    with policy.base():
        assert torch.equal(logits_of(model, ids), base)
    with policy.sampling():
        merged = logits_of(model, ids)
    assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)  # merged ≡ unmerged
    assert_close(logits_of(model, ids), unmerged, atol=1e-5, rtol=1e-5)  # unmerged again after sampling
    with policy.base():  # PEFT's unmerge subtracts BA again: the base comes back up to float rounding only
        assert_close(logits_of(model, ids), base, atol=1e-5, rtol=1e-5)


# -- the training loop ---------------------------------------------------------------------------------------------

def run_config(model_dir: Path, root: Path, name: str, **overrides) -> TrainConfig:
    """A few-second run: 2 prompts × 2 samples of 4 tokens per step, validated on 4 examples at the last step."""
    values = dict(model=str(model_dir), task="arithmetic", out=str(root / "experts" / name),
                  run_dir=str(root / "runs" / name), steps=3, batch_size=2, group_size=2, valid_n=4,
                  max_new_tokens=4, lr=0.5)
    return TrainConfig(**{**values, **overrides})


def train(cfg: TrainConfig, resume: bool = False):
    from transformer_squared.training.trainer import train_expert

    return train_expert(cfg, resume=resume, progress=False)


def metrics(cfg: TrainConfig) -> list[dict]:
    return [json.loads(line) for line in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]


def saved_z(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    from transformer_squared.experts import Expert

    return Expert.load(cfg.out).z


def moved(z: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(t, torch.ones_like(t)) for t in z.values())


def test_reinforce_run_writes_expert_metrics_checkpoint_and_plot(tiny_llama_dir, tmp_path):
    cfg = run_config(tiny_llama_dir, tmp_path, "reinforce", objective="reinforce", kl_coef=0.1, temperature=1.0)
    result = train(cfg)
    assert (result.out, result.steps, result.num_trainable, result.best_step) == (Path(cfg.out), 3, TINY_RANKS, 3)

    meta = json.loads((Path(cfg.out) / "expert.json").read_text())
    assert {"valid_accuracy", "valid_ci95", "valid_n", "step", "trainable_params"} <= set(meta["metrics"])
    assert meta["metrics"]["step"] == 3 and meta["metrics"]["valid_n"] == 4
    assert meta["metrics"]["trainable_params"] == TINY_RANKS
    assert meta["metrics"]["valid_accuracy"] == result.best_valid
    assert meta["created_by"]["config"]["objective"] == "reinforce" and meta["domain"] == "arithmetic"
    assert moved(saved_z(cfg))  # all-wrong samples get advantage −1: the gradient is not zero

    rows = metrics(cfg)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all("kl" in r and r["kl"] >= 0 and "pg_loss" in r and r["reward"] == 0.0 for r in rows)
    assert [("valid_accuracy" in r) for r in rows] == [False, False, True]  # valid_every=10: only the last step
    run = Path(cfg.run_dir)
    assert (run / "checkpoint.pt").is_file()
    assert json.loads((run / "config.json").read_text()) == {**cfg.to_dict(), "owner": cfg.owner()}
    assert (run / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rloo_skips_unanimous_batches(tiny_llama_dir, tmp_path):
    cfg = run_config(tiny_llama_dir, tmp_path, "rloo", objective="rloo")
    train(cfg)
    rows = metrics(cfg)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["reward"] == 0.0 and r.get("skipped") is True for r in rows)  # every group scored 0 → no signal
    assert not moved(saved_z(cfg))  # no optimizer step was taken


class ParityTask(ArithmeticTask):
    """Arithmetic prompts, rewarded for an even-length reply: a random model earns it about half the time."""

    name = "parity"

    def score(self, completion, example):
        return float(len(completion) % 2 == 0)


def test_rloo_learns_from_mixed_groups(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "parity", ParityTask)  # the registry is a plain dict
    cfg = run_config(tiny_llama_dir, tmp_path, "rloo-parity", task="parity", objective="rloo")
    train(cfg)
    rows = metrics(cfg)
    assert any(not r.get("skipped") and "pg_loss" in r for r in rows)
    assert moved(saved_z(cfg))


def test_sft_run(tiny_llama_dir, tmp_path):
    cfg = run_config(tiny_llama_dir, tmp_path, "sft", objective="sft")
    train(cfg)
    rows = metrics(cfg)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["nll"] > 0 and "reward" not in r for r in rows)
    assert moved(saved_z(cfg))


def test_sft_warm_start_then_the_objective(tiny_llama_dir, tmp_path):
    """--sft-steps N: the first N steps are SFT on the references (an nll, no reward), the rest the objective."""
    cfg = run_config(tiny_llama_dir, tmp_path, "warm", objective="rloo", steps=3, sft_steps=2)
    train(cfg)
    rows = metrics(cfg)
    assert [("nll" in r, "reward" in r) for r in rows] == [(True, False), (True, False), (False, True)]
    with pytest.raises(ValueError, match=r"--sft-steps must be in \[0, --steps 3\]"):
        TrainConfig(out="x", steps=3, sft_steps=4)


def test_valid_split_dev_trains_on_the_whole_train_file(tmp_path):
    """--valid-split dev: checkpoints are chosen on ARC's Dev file, and the odd half of Train that 'valid' held out
    is trained on too; the test split (or train) can never choose checkpoints, and an unknown split is refused."""
    from transformer_squared.training.trainer import training_and_validation

    rows = [{"id": f"q{i}", "question": {"stem": f"Q{i}?", "choices": [{"text": t, "label": l} for t, l in
             zip(("yes", "no"), "AB")]}, "answerKey": "A"} for i in range(10)]
    for role, n in (("Train", 10), ("Dev", 4), ("Test", 3)):
        (tmp_path / f"ARC-Easy-{role}.jsonl").write_text("".join(json.dumps({**r, "id": f"{role}{i}"}) + "\n"
                                                                 for i, r in enumerate(rows[:n])))
    task = ArcTask(str(tmp_path))
    train_set, valid_set = training_and_validation(task, TrainConfig(out="x", valid_n=3))
    assert (len(train_set), len(valid_set)) == (5, 3)  # even / odd halves of Train
    train_set, valid_set = training_and_validation(task, TrainConfig(out="x", valid_n=3, valid_split="dev"))
    assert sorted(e["id"] for e in train_set) == [f"Train{i}" for i in range(10)]
    assert [e["id"] for e in valid_set] == ["Dev0", "Dev1", "Dev2"]
    for split in ("test", "train"):
        with pytest.raises(ValueError, match=f"--valid-split {split}: checkpoints are chosen on held-out data"):
            TrainConfig(out="x", valid_split=split)
    with pytest.raises(ValueError, match="has no split 'holdout'"):
        training_and_validation(task, TrainConfig(out="x", valid_split="holdout"))


def arc_folder(root: Path, n: int = 12) -> Path:
    """An ARC-Easy folder of n four-option questions (keys rotating over A-D in each half) in the upstream layout."""
    options = ("red", "a cat", "water", "the sun", "ice", "seven", "iron", "a tree")
    rows = [{"id": f"q{i}", "question": {"stem": f"What is {i} like?", "choices": [
             {"text": options[(i + j) % len(options)], "label": l} for j, l in enumerate("ABCD")]},
             "answerKey": "ABCD"[(i // 2) % 4]} for i in range(n)]
    root.mkdir(parents=True, exist_ok=True)
    for role in ("Train", "Dev", "Test"):
        (root / f"ARC-Easy-{role}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_option_scores_are_the_log_likelihood_of_each_option_after_its_question(tiny_model):
    """training/known.py scores options as lm-eval scores ARC: the summed log-probability of " option" after
    "Question: q\nAnswer:", raw text. Checked against one unpadded forward per option (batching pads and sorts
    rows, which must not change a score beyond float32 rounding)."""
    from conftest import char_tokenizer
    from transformer_squared.training.known import CONTEXT, is_known, option_scores

    model, tok = tiny_model("llama"), char_tokenizer()
    examples = [{"question": q, "choices": c} for q, c in (("Why?", ["no", "because it is"]),
                                                           ("A long question, really?", ["x", "yes", "maybe not"]))]
    scores = option_scores(model, tok, examples, progress=False)
    for e, got in zip(examples, scores):
        for text, score in zip(e["choices"], got):
            context = tok(CONTEXT.format(question=e["question"]), add_special_tokens=False)["input_ids"]
            option = tok(" " + text, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = model(torch.tensor([context + option])).logits[0].log_softmax(-1)
            expected = sum(float(logp[len(context) - 1 + t, token]) for t, token in enumerate(option))
            assert math.isclose(score, expected, abs_tol=1e-4), (text, score, expected)
    assert is_known([-1.0, -2.0, -3.0], 0) and not is_known([-1.0, -2.0, -3.0], 1)
    assert not is_known([-1.0, -1.0], 0)  # a tie is not knowledge


def test_train_filter_known_trains_on_the_questions_the_base_model_ranks_right(tiny_llama_dir, tmp_path,
                                                                               monkeypatch):
    """--train-filter known: the run scores every training question once with the base model, keeps those whose
    key ranks first (known.json in the run folder: indices and scores) and samples its batches from them only; a
    resumed run reads known.json back; a task without options is refused before the model loads, and a known.json
    made for other examples is refused, not trusted."""
    from transformer_squared.training.known import is_known

    data = arc_folder(tmp_path / "arc")
    cfg = run_config(tiny_llama_dir, tmp_path, "known", task="arc_text", data=str(data), objective="sft", steps=2,
                     train_filter="known", valid_n=2, max_new_tokens=8)
    train(cfg)
    saved = json.loads((Path(cfg.run_dir) / "known.json").read_text())
    examples = ArcTask(str(data)).examples("train")
    keys = [e["labels"].index(e["answer"]) for e in examples]
    assert saved["known"] == [i for i, (s, k) in enumerate(zip(saved["scores"], keys)) if is_known(s, k)]
    assert 0 < len(saved["known"]) < len(examples)  # the random model knows some questions, not all

    import transformer_squared.training.trainer as trainer

    seen, original = [], trainer.teacher_forced
    def spy(tokenizer, prompts, completions, system=None):  # the SFT batches' prompts
        seen.extend(prompts)
        return original(tokenizer, prompts, completions, system)
    monkeypatch.setattr(trainer, "teacher_forced", spy)
    train(TrainConfig(out=cfg.out, run_dir=cfg.run_dir, steps=5), resume=True)
    known_stems = {examples[i]["question"] for i in saved["known"]}
    assert seen and all(any(p.endswith(f"Question: {stem}") for stem in known_stems) for p in seen)

    (Path(cfg.run_dir) / "known.json").write_text(json.dumps({**saved, "examples": 99}))
    with pytest.raises(ValueError, match="was made for other training examples"):
        train(TrainConfig(out=cfg.out, run_dir=cfg.run_dir, steps=6), resume=True)
    bad = run_config(tiny_llama_dir, tmp_path, "notchoice", objective="sft", steps=1, train_filter="known")
    with pytest.raises(ValueError, match="--train-filter known needs a multiple-choice task"):
        train(bad)
    assert not Path(bad.out).exists() and not Path(bad.run_dir).exists()
    with pytest.raises(ValueError, match="--train-filter 'some'"):
        TrainConfig(out="x", train_filter="some")


def test_init_starts_from_an_expert_and_bad_inits_change_nothing(tiny_llama_dir, tmp_path):
    """--init E: z starts at E's z (with a learning rate too small to move it, the run ends where E was, not at the
    identity); an expert for other matrices, another parametrization or LoRA is refused before anything is written;
    resuming does not read E again."""
    first = run_config(tiny_llama_dir, tmp_path, "first", objective="sft", steps=2)
    train(first)
    start = saved_z(first)
    assert moved(start)
    cont = run_config(tiny_llama_dir, tmp_path, "cont", objective="sft", steps=1, lr=1e-12, init=first.out)
    train(cont)
    assert all(torch.allclose(saved_z(cont)[n], start[n], atol=1e-6) for n in start)
    for bad, message in ((dict(targets="attn"), "adapts"), (dict(parametrization="reference"), "parametrization")):
        cfg = run_config(tiny_llama_dir, tmp_path, "bad", objective="sft", steps=1, init=first.out, **bad)
        with pytest.raises(ValueError, match=message):
            train(cfg)
        assert not Path(cfg.out).exists() and not (Path(cfg.run_dir) / "metrics.jsonl").exists()
    with pytest.raises(ValueError, match="--init starts z from an SVF expert"):
        TrainConfig(out="x", method="lora", init=first.out)
    import shutil

    shutil.rmtree(first.out)  # a resumed run takes z from its checkpoint: the init expert is no longer needed
    train(TrainConfig(out=cont.out, run_dir=cont.run_dir, steps=2), resume=True)
    assert [r["step"] for r in metrics(cont)] == [1, 2]


TRAINING_KEYS = ("reward", "completion_tokens", "pg_loss", "kl", "grad_norm")


def test_resumed_run_equals_a_straight_run(tiny_llama_dir, tmp_path):
    common = dict(objective="reinforce", kl_coef=0.1, temperature=1.0, lr=0.05)
    straight = run_config(tiny_llama_dir, tmp_path, "straight", steps=4, **common)
    train(straight)

    broken = run_config(tiny_llama_dir, tmp_path, "broken", steps=2, **common)
    train(broken)
    # a crash after step 3 was logged but before its checkpoint: the log runs ahead of checkpoint.pt (step 2)
    with (Path(broken.run_dir) / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"reward": 99.0, "step": 3, "seconds": 1.0}) + "\n")
    train(TrainConfig(out=broken.out, run_dir=broken.run_dir, steps=4), resume=True)

    a = torch.load(Path(straight.run_dir) / "checkpoint.pt", weights_only=False)
    b = torch.load(Path(broken.run_dir) / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 4 and b["config"]["steps"] == 4 and b["config"]["objective"] == "reinforce"
    assert sorted(a["policy"]) == sorted(b["policy"])
    for name, z in a["policy"].items():
        assert moved({name: z})
        assert torch.equal(b["policy"][name], z), name  # bitwise: each step is seeded from (seed, step)

    rows_a, rows_b = metrics(straight), metrics(broken)
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
    assert rows_b[2]["reward"] != 99.0
    for ra, rb in zip(rows_a, rows_b):
        assert {k: ra[k] for k in TRAINING_KEYS} == {k: rb[k] for k in TRAINING_KEYS}


def test_resume_drops_a_line_cut_short_by_a_crash(tiny_llama_dir, tmp_path):
    cfg = run_config(tiny_llama_dir, tmp_path, "cut", steps=1, objective="sft")
    train(cfg)
    with (Path(cfg.run_dir) / "metrics.jsonl").open("a") as f:
        f.write('{"nll": 10.5, "grad_no')  # killed while writing step 2's record
    train(TrainConfig(out=cfg.out, run_dir=cfg.run_dir, steps=2), resume=True)
    assert [r["step"] for r in metrics(cfg)] == [1, 2]


def test_existing_out_is_refused_and_left_alone(tiny_llama_dir, tmp_path):
    cfg = run_config(tiny_llama_dir, tmp_path, "taken")
    Path(cfg.out).mkdir(parents=True)
    (Path(cfg.out) / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="--out .*--resume.*--overwrite"):
        train(cfg)
    assert [p.name for p in Path(cfg.out).iterdir()] == ["keep.txt"]
    assert not Path(cfg.run_dir).exists()


def test_resume_without_a_checkpoint_is_refused(tiny_llama_dir, tmp_path):
    cfg = run_config(tiny_llama_dir, tmp_path, "never-ran")
    with pytest.raises(ValueError, match="--resume: no checkpoint"):
        train(cfg, resume=True)


def test_lora_run_writes_an_adapter_folder(tiny_llama_dir, tmp_path):
    from peft import PeftModel

    from transformer_squared.models import load_model

    cfg = run_config(tiny_llama_dir, tmp_path, "lora", method="lora", objective="sft", steps=2, lora_rank=4, lr=0.05)
    result = train(cfg)
    out = Path(cfg.out)
    assert (out / "adapter_config.json").is_file()
    record = json.loads((out / "t2_train.json").read_text())
    assert record["config"] == cfg.to_dict()
    assert record["metrics"]["trainable_params"] == result.num_trainable == 2 * (256 + 256 + 256 + 128)
    assert [r["step"] for r in metrics(cfg)] == [1, 2]
    model = PeftModel.from_pretrained(load_model(str(tiny_llama_dir)).model, str(out))
    lora_b = [p for n, p in model.named_parameters() if ".lora_B." in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained away from the zero init


# -- evaluation ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("correct, n, expected", [
    # 95% Wilson intervals as tabulated by statsmodels' proportion_confint(method="wilson"), rounded to 4 places
    (0, 10, (0.0, 0.2775)),
    (5, 10, (0.2366, 0.7634)),
    (10, 10, (0.7225, 1.0)),
])
def test_wilson_interval_known_values(correct, n, expected):
    lo, hi = wilson_interval(correct, n)
    assert (lo, hi) == pytest.approx(expected, abs=1e-4)
    # independently: the bounds are the p where the score test is exactly at z = 1.96, (p̂ − p)² = z² p (1 − p) / n
    p_hat = correct / n
    for bound in (lo, hi):
        assert (p_hat - bound) ** 2 == pytest.approx(1.96**2 * bound * (1 - bound) / n, abs=1e-12)


def test_wilson_interval_of_nothing():
    assert wilson_interval(0, 0) == (0.0, 0.0)


ARC_RECORDS = [
    {"id": f"q{i}", "question": {"stem": stem, "choices": [{"text": t, "label": l} for t, l in zip(texts, "ABCD")]},
     "answerKey": key}
    for i, (stem, texts, key) in enumerate([
        ("Which is a mammal?", ["trout", "whale", "frog", "crow"], "B"),
        ("What melts ice fastest?", ["salt", "sand", "shade", "wind"], "A"),
        ("Which is a planet?", ["Moon", "Sun", "Mars", "Vega"], "C"),
    ])
]


def test_evaluate_label_task_reports_the_answer_distribution(tiny_llama_dir, tmp_path):
    from transformer_squared.models import load_model

    (tmp_path / "ARC-Easy-Test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ARC_RECORDS))
    loaded = load_model(str(tiny_llama_dir))
    result = evaluate(loaded.model, loaded.tokenizer, ArcTask(tmp_path), "test", max_new_tokens=3, progress=False)
    assert (result.task, result.split, result.n) == ("arc", "test", 3)
    assert [r["answer"] for r in result.records] == ["B", "A", "C"]
    assert result.accuracy == sum(r["score"] for r in result.records) / 3
    assert result.ci95 == wilson_interval(sum(r["score"] for r in result.records), 3)
    assert result.answers and math.isclose(sum(result.answers.values()), 1.0)
    assert set(result.answers) == {r["extracted"] or "none" for r in result.records}
    assert "answers " in result.summary()

    path = write_results(result, tmp_path / "out", "arc_base")
    summary = json.loads(path.read_text())
    assert "records" not in summary and summary["answers"] == result.answers and summary["n"] == 3
    lines = path.with_suffix(".jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == result.records


def test_evaluate_plain_task_has_no_answer_distribution():
    result = EvalResult("arithmetic", "test", 4, 0.25, wilson_interval(1, 4))
    assert result.answers == {} and "answers" not in result.summary()
    assert result.summary().startswith("arithmetic/test: 25.0% [")
