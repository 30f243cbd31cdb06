"""The serving engine on tiny in-process models: batched decoding across experts is exact per row, the model always
returns to its base, the batching planner picks by cost, text streams honour stop strings, and the engine's queue
limits, pass 1 and shutdown behave. The HTTP layer on the real model is in test_serve_integration.py."""

from __future__ import annotations

import asyncio

import pytest
import torch
from conftest import VOCAB, noisy_z

from transformer_squared.experts import Expert
from transformer_squared.serve.batching import Costs, Planner, measure_costs
from transformer_squared.serve.decode import Row, decode_batch, next_tokens
from transformer_squared.serve.engine import Busy, Closed, Engine
from transformer_squared.serve.request import Event, Request, TextStream
from transformer_squared.serve.schemas import ChatRequest, CompletionRequest

PAD = 0
NO_EOS: set[int] = set()


def prompts(n: int, seed: int = 3) -> list[list[int]]:
    """n prompts of different lengths (3..3+n-1 tokens), ids 1..VOCAB-1 (0 is the pad)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (3 + i,), generator=g).tolist() for i in range(n)]


def experts_for(svf, n: int = 3, parametrizations=("paper", "reference", "paper")) -> list[Expert]:
    return [Expert.for_model(svf, noisy_z(svf, 0.3, seed=i, parametrization=p), p, name=f"e{i}")
            for i, p in zip(range(n), parametrizations)]


def assert_base(svf, base_weights):
    assert svf.active is None and not svf.factored_active
    for n, lin in svf.linears.items():
        assert lin.weight.data_ptr() == base_weights[n].data_ptr()  # the base tensor itself, not a copy
        assert type(lin).__name__ == "Linear" and svf.model.get_submodule(n) is lin


# -- decoding ------------------------------------------------------------------------------------------------------

def test_rows_batch_equals_each_row_alone_merged(svf):
    """Greedy tokens of a mixed batch (per-row σ', left padding) equal each request decoded alone with its expert
    merged — including a base row and both parametrizations. 12 tokens each."""
    experts = [None, *experts_for(svf)]
    ids = prompts(6)
    rows = [Row(p, 12, experts[i % 4]) for i, p in enumerate(ids)]
    base_weights = dict(svf.base_weights)
    decode_batch(svf, rows, "rows", PAD, NO_EOS)
    assert_base(svf, base_weights)
    for i, p in enumerate(ids):
        alone = Row(p, 12, experts[i % 4])
        decode_batch(svf, [alone], "merged", PAD, NO_EOS)
        assert rows[i].tokens == alone.tokens, f"row {i} (expert {experts[i % 4] and experts[i % 4].name})"
        assert rows[i].finish_reason == alone.finish_reason == "length"
    assert_base(svf, base_weights)
    outputs = {tuple(r.tokens) for r in rows[:4]}  # same-length prompts aside, the experts really change tokens
    assert len(outputs) == 4


def test_rows_that_stop_early_leave_the_batch_without_changing_the_others(svf):
    experts = [None, *experts_for(svf)]
    ids = prompts(4, seed=5)
    stop_after = {0: 2, 2: 5}  # rows 0 and 2 are stopped by the caller (as a stop string or a cancel would)

    def on_token(row):
        if row.finish_reason is None and len(row.tokens) == stop_after.get(row.owner, -1):
            row.finish_reason = "stop"

    rows = [Row(p, 10, experts[i], owner=i) for i, p in enumerate(ids)]
    decode_batch(svf, rows, "rows", PAD, NO_EOS, on_token)
    assert [len(r.tokens) for r in rows] == [2, 10, 5, 10]
    for i, p in enumerate(ids):
        alone = Row(p, 10, experts[i])
        decode_batch(svf, [alone], "merged", PAD, NO_EOS)
        assert rows[i].tokens == alone.tokens[: len(rows[i].tokens)]


def test_rows_joining_a_running_batch_decode_as_if_alone(svf):
    """Continuous batching: two rows start, two more (one with a longer prompt, so the running cache gets padded)
    join after 3 steps, the first ones leave early (their cache columns are trimmed); every row's tokens equal its
    tokens decoded alone with its expert merged."""
    from transformer_squared.serve.decode import Batch

    experts = [experts_for(svf, 1)[0], None, *experts_for(svf, 2, ("reference", "paper"))]
    ids = prompts(2, seed=7) + [prompts(9, seed=8)[-1], prompts(1, seed=9)[0]]  # 3, 4, 11 and 3 tokens
    rows = [Row(p, n, e) for p, n, e in zip(ids, (4, 5, 12, 9), experts)]
    with Batch(svf, PAD, NO_EOS) as batch:
        batch.add(rows[:2], "rows")
        for _ in range(3):
            batch.step("rows")
        width_before = batch.mask.shape[1]
        batch.add(rows[2:], "rows")
        assert batch.mask.shape[1] > width_before and len(batch) == 3  # row 0 already used its 4 tokens
        while batch.rows:
            batch.step("rows")
            if rows[1].finish_reason and len(batch) == 2:
                assert not batch.mask[:, 0].eq(0).all()  # columns nobody attends to are trimmed
    for i, row in enumerate(rows):
        alone = Row(row.ids, row.max_tokens, row.expert)
        decode_batch(svf, [alone], "merged", PAD, NO_EOS)
        assert row.tokens == alone.tokens, f"row {i}"
    assert svf.active is None and not svf.factored_active


def test_eos_finishes_a_row_and_is_not_returned(svf):
    ids = prompts(2)
    probe = Row(ids[0], 6)
    decode_batch(svf, [probe], "merged", PAD, NO_EOS)
    eos = probe.tokens[3]  # pretend the 4th generated token is eos
    row = Row(ids[0], 6)
    decode_batch(svf, [row], "merged", PAD, {eos})
    assert row.finish_reason == "stop" and row.tokens == probe.tokens[: probe.tokens.index(eos)]


@pytest.mark.parametrize("mode", ["merged", "rows"])
def test_model_returns_to_base_even_when_decoding_fails(svf, mode):
    base_weights = dict(svf.base_weights)
    expert = experts_for(svf, 1)[0]

    def boom(row):
        raise RuntimeError("client callback failed")

    with pytest.raises(RuntimeError, match="callback"):
        decode_batch(svf, [Row(prompts(1)[0], 4, expert)], mode, PAD, NO_EOS, boom)
    assert_base(svf, base_weights)


def test_merged_mode_refuses_rows_on_different_weights(svf):
    a, b = experts_for(svf, 2)
    with pytest.raises(ValueError, match="same weights"):
        decode_batch(svf, [Row([1, 2], 2, a), Row([1, 2], 2, b)], "merged", PAD, NO_EOS)


def test_sampling_is_seeded_per_row_and_top_p_tiny_is_greedy():
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(0))
    greedy = logits.argmax(-1).tolist()
    rows = [Row([1], 1), Row([1], 1, temperature=1.0, top_p=1e-6, generator=torch.Generator().manual_seed(1)),
            Row([1], 1, temperature=1.5, generator=torch.Generator().manual_seed(7))]
    first = next_tokens(logits, rows)
    assert first[:2] == greedy[:2]
    rows[2].generator = torch.Generator().manual_seed(7)
    assert next_tokens(logits, rows)[2] == first[2]


# -- planning ------------------------------------------------------------------------------------------------------

COSTS = Costs(merged={1: 0.09, 8: 0.15}, rows={1: 0.1, 8: 0.2}, compose=1.5)  # seconds, like SmolLM2 on 1 thread


def test_costs_interpolate_and_extrapolate():
    assert COSTS.step("merged", 1) == pytest.approx(0.09)
    assert COSTS.step("merged", 4) == pytest.approx(0.09 + 0.06 * 3 / 7)
    assert COSTS.step("rows", 16) == pytest.approx(0.2 + 0.1 * 8 / 7)


def test_planner_merges_uniform_cached_rows_and_runs_mixed_ones_together(svf):
    a, b = experts_for(svf, 2)
    planner = Planner(COSTS)
    cached = lambda e: True
    assert planner.mode([Row([1], 8, a)] * 4, cached) == "merged"
    mixed = [Row([1], 8, e) for e in (a, b, None, a)]
    assert not planner.by_groups(mixed, cached) and planner.mode(mixed, cached) == "rows"
    # when the factored pass is slow, grouping wins; the largest group goes first
    slow_rows = Planner(Costs(merged={1: 0.09, 8: 0.15}, rows={1: 0.5, 8: 0.9}, compose=1.5))
    assert slow_rows.by_groups(mixed, cached) and [len(g) for g in slow_rows.groups(mixed)] == [2, 1, 1]
    assert Planner(COSTS, "groups").by_groups([Row([1], 8, a)], cached)  # forced: the benchmark's baseline
    assert Planner(None, "rows").mode([Row([1], 8, a)], cached) == "rows"


def test_planner_amortizes_composing_an_uncached_expert_like_ski_rental(svf):
    """An uncached expert's rows run factored (no compose) until the extra they paid covers the compose."""
    a = experts_for(svf, 1)[0]
    planner = Planner(COSTS)
    batch = [Row([1], 64, a) for _ in range(8)]  # each step as rows costs 0.2 - 0.15 = 0.05 s extra; compose 1.5 s
    modes = [planner.mode(batch, lambda e: False) for _ in range(31)]
    assert modes[:29] == ["rows"] * 29 and "merged" in modes[29:]


def test_measure_costs_times_both_modes(svf):
    costs = measure_costs(svf, 4, PAD, steps=2, repeats=1)
    assert sorted(costs.merged) == sorted(costs.rows) == [1, 2, 4]
    assert all(t > 0 for t in [*costs.merged.values(), *costs.rows.values(), costs.compose])
    assert svf.active is None and not svf.factored_active and not svf._cache  # the probe left nothing behind


# -- text ----------------------------------------------------------------------------------------------------------

class CharTokenizer:
    """Token i is chr(i); id 0 is an unfinished UTF-8 sequence (decodes to U+FFFD at the end only)."""

    pad_token_id = eos_token_id = 0

    def decode(self, ids, **kwargs):
        text = "".join(chr(i) for i in ids if i)
        return text + ("\ufffd" if ids and ids[-1] == 0 else "")


def test_text_stream_holds_back_possible_stop_strings_and_cuts_at_them():
    stream, sent = TextStream(CharTokenizer(), ["END", "xx"]), []
    tokens = []
    for ch in "abEN":
        tokens.append(ord(ch))
        sent.append(stream.update(tokens, final=False))
    assert "".join(d for d, _ in sent) == "ab"  # "EN" could still become "END"
    tokens += [ord("D"), ord("z")]
    delta, stopped = stream.update(tokens, final=False)
    assert stopped and delta == "" and stream.text == "abEN"[:2]


def test_text_stream_flushes_everything_at_the_end_and_holds_incomplete_characters():
    stream = TextStream(CharTokenizer(), [])
    assert stream.update([ord("h"), 0], final=False) == ("h", False)
    assert stream.update([ord("h"), 0, ord("i")], final=True) == ("i", False)
    assert stream.text == "hi"


# -- schemas -------------------------------------------------------------------------------------------------------

def test_requests_we_cannot_honour_are_refused_not_ignored():
    msgs = [{"role": "user", "content": "hi"}]
    assert ChatRequest(model="m", messages=msgs).unsupported() is None
    assert ChatRequest(model="m", messages=msgs, user="u", tool_choice="none").unsupported() is None
    assert ChatRequest(model="m", messages=msgs, n=2).unsupported()[0] == "n"
    assert ChatRequest(model="m", messages=msgs, tools=[{"type": "function"}]).unsupported()[0] == "tools"
    assert ChatRequest(model="m", messages=msgs, presence_penalty=0.5).unsupported()[0] == "presence_penalty"
    assert CompletionRequest(model="m", prompt="x", echo=True).unsupported()[0] == "echo"
    assert CompletionRequest(model="m", prompt=[1, 2]).text() is None
    parts = ChatRequest(model="m", messages=[{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                                              {"type": "text", "text": "b"}]}])
    assert parts.messages[0].as_template_message() == {"role": "system", "content": "ab"}
    with pytest.raises(ValueError, match="only text"):
        ChatRequest(model="m", messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])


# -- engine ----------------------------------------------------------------------------------------------------------

@pytest.fixture
def engine_svf(svf):
    svf.tokenizer = CharTokenizer()
    return svf


class FixedStrategy:
    name = "fixed"

    def __init__(self, expert, fail: bool = False):
        self.expert, self.fail, self.calls = expert, fail, []

    def select(self, svf, prompts):
        from transformer_squared.adapt.strategy import Selection

        assert svf.active is None and not svf.factored_active  # pass 1 sees the base model
        self.calls.append(list(prompts))
        if self.fail:
            raise RuntimeError("strategy broke")
        return [Selection("math", self.expert) for _ in prompts]


async def _collect(req: Request) -> list[tuple]:
    events = []
    while True:
        events.append(await asyncio.wait_for(req.events.get(), 30))
        if events[-1].kind in ("end", "error"):
            return events


def test_engine_serves_auto_and_named_requests_in_one_batch(engine_svf):
    a, b = experts_for(engine_svf, 2)
    strategy = FixedStrategy(b)
    engine = Engine(engine_svf, strategy=strategy, costs=COSTS, batch_window_s=0.2)
    ids = prompts(2)

    async def main():
        reqs = [Request(ids[0], 5, expert=a).bind(), Request(ids[1], 5, prompt="2+2?", auto=True).bind()]
        for r in reqs:
            engine.submit(r)
        engine.start()
        return [await _collect(r) for r in reqs]

    named, auto = asyncio.run(main())
    engine.close()
    assert named[0] == Event("start", info={"expert": "e0"})
    assert auto[0].info["expert"] == "e1" and auto[0].info["selection"]["label"] == "math"
    assert strategy.calls == [["2+2?"]]
    assert engine.served["rows_steps"] >= 1 and engine.served["largest_batch"] == 2
    for events, expert, p in ((named, a, ids[0]), (auto, b, ids[1])):
        alone = Row(p, 5, expert)
        decode_batch(engine_svf, [alone], "merged", PAD, NO_EOS)
        text = "".join(e.text for e in events if e.kind == "delta")
        assert text == CharTokenizer().decode(alone.tokens)
        assert events[-1] == Event("end", info={"finish_reason": "length", "prompt_tokens": len(p),
                                               "completion_tokens": 5})


def test_engine_keeps_serving_after_pass_1_fails(engine_svf):
    engine = Engine(engine_svf, strategy=FixedStrategy(None, fail=True), costs=COSTS)
    engine.start()

    async def main():
        bad = Request(prompts(1)[0], 3, prompt="x", auto=True).bind()
        engine.submit(bad)
        first = await _collect(bad)
        good = Request(prompts(1)[0], 3).bind()
        engine.submit(good)
        return first, await _collect(good)

    failed, ok = asyncio.run(main())
    engine.close()
    assert (failed[-1].kind, failed[-1].status) == ("error", 500) and "strategy broke" in failed[-1].message
    assert ok[-1].kind == "end"
    assert engine_svf.active is None and not engine_svf.factored_active


def test_engine_queue_limit_and_shutdown(engine_svf):
    engine = Engine(engine_svf, costs=COSTS, max_queue=2)  # not started: everything stays queued

    async def main():
        reqs = [Request([1, 2], 3).bind() for _ in range(2)]
        for r in reqs:
            engine.submit(r)
        with pytest.raises(Busy, match="2 requests queued"):
            engine.submit(Request([1], 3).bind())
        engine.close()
        with pytest.raises(Closed):
            engine.submit(Request([1], 3).bind())
        return [await _collect(r) for r in reqs]

    for events in asyncio.run(main()):
        assert events == [Event("error", status=503, message="the server is shutting down", code="shutting_down")]


def test_engine_close_cancels_the_running_batch(engine_svf):
    engine = Engine(engine_svf, costs=COSTS)
    engine.start()

    async def main():
        req = Request([1, 2], 10_000).bind()  # would run for minutes
        engine.submit(req)
        assert (await req.events.get()).kind == "start"
        await asyncio.to_thread(engine.close, True, 30)
        return await _collect(req)

    events = asyncio.run(main())
    assert (events[-1].kind, events[-1].status) == ("error", 503) and "cancelled" in events[-1].message
    assert not engine._thread.is_alive()
    assert engine_svf.active is None and not engine_svf.factored_active


# -- command line ----------------------------------------------------------------------------------------------------

def test_cli_serve_flags_and_missing_extra(monkeypatch, capsys):
    import sys

    from transformer_squared.cli import main
    from transformer_squared.cli.serve import _is_loopback

    with pytest.raises(SystemExit) as e:
        main(["serve", "-h"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--api-key", "--library", "--strategy", "--batching", "--max-queue",
                 "--max-tokens", "--max-prompt-tokens", "--max-batch-size", "--shutdown-timeout"):
        assert flag in out
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if the serve extra were not installed
    assert main(["serve"]) == 2
    assert capsys.readouterr().err.strip() == "t2 serve needs the serve extra: pip install 'transformer-squared[serve]'"
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0")
