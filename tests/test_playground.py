"""The playground page of `t2 serve` (GET /), in a real headless Chromium driven by Playwright: it loads the page,
lists the models, sends a prompt and sees the answer stream in with the expert that answered; a mixture from the
sliders; the API key field. Skipped, with the reason, where no browser or Playwright is installed. Plus the
server-side routes without a browser (GET / and GET /v1/experts, usage counted into the expert memory)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
uvicorn = pytest.importorskip("uvicorn")

from conftest import char_tokenizer, noisy_z  # noqa: E402
from transformer_squared.adapt.strategy import OTHER, Selection  # noqa: E402
from transformer_squared.experts import Expert, ExpertLibrary  # noqa: E402
from transformer_squared.experts.memory import ExpertMemory  # noqa: E402
from transformer_squared.serve import create_app  # noqa: E402
from transformer_squared.serve.batching import Costs  # noqa: E402

KEY = "pw-key"
CHROMIUM = os.environ.get("T2_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = os.environ.get("T2_PLAYGROUND_SCREENSHOT")  # set to a path to keep a screenshot of the page


class DigitStrategy:
    """Pass 1 for the test: prompts with a digit go to `math`, the others to the base."""

    name = "digits"

    def __init__(self, math):
        self.math = math

    def select(self, svf, prompts):
        texts = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
        return [Selection("arithmetic", self.math) if any(c.isdigit() for c in t) else Selection(OTHER) for t in texts]


@pytest.fixture
def server(svf, tmp_path):
    svf.tokenizer = char_tokenizer()
    lib = ExpertLibrary(tmp_path / "lib")
    lib.add(Expert.for_model(svf, noisy_z(svf, 0.3, seed=1), domain="arithmetic"), "math")
    lib.add(Expert.for_model(svf, noisy_z(svf, 0.3, seed=2), domain="language"), "words")
    app = create_app(svf, lib, strategy=DigitStrategy(lib.get("math")), api_key=KEY,
                     costs=Costs(merged={1: 0.01, 8: 0.02}, rows={1: 0.01, 8: 0.02}, compose=0.01))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", lib
    srv.should_exit = True
    thread.join(30)


def test_page_and_stats_routes(server):
    import httpx

    url, lib = server
    page = httpx.get(url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "t2 playground" in page.text and "/v1/chat/completions" in page.text
    assert "http://" not in page.text.replace(url, "") and "https://" not in page.text  # nothing from elsewhere
    assert httpx.get(url + "/v1/experts").status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(url + "/v1/chat/completions", headers=auth, timeout=60,
                   json={"model": "words", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert r.status_code == 200 and r.json()["expert"] == "words"
    stats = httpx.get(url + "/v1/experts", headers=auth).json()
    assert set(stats["experts"]) == {"math", "words"} and stats["experts"]["words"]["usage"] == 1
    assert stats["similarity"]["math"]["words"] is not None
    assert ExpertMemory(lib.root).usage() == {"words": 1}  # persisted in the expert memory


def _browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium installed (apt-get install chromium): the playground's browser test is skipped")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    return sync_api


def test_playground_streams_an_answer_with_its_expert(server, tmp_path):
    sync_api = _browser()
    url, _ = server
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                       args=ARGS, headless=True, viewport={"width": 1100, "height": 640})
        try:
            page = context.new_page()
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('status').textContent.includes('API key needed')")
            page.fill("#api-key", KEY)
            page.dispatch_event("#api-key", "change")
            page.wait_for_function("document.querySelectorAll('#model option').length >= 5")
            options = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
            assert options == ["auto", "math", "words", "mixture", "tiny"]
            assert page.evaluate("localStorage.getItem('t2-playground-api-key')") == KEY
            page.fill("#max-tokens", "40")
            # the answer's text must change in several separate tasks (one per network read), not all at once:
            # a MutationObserver callback runs once per task that changed it
            page.evaluate("""() => { window.reads = 0; new MutationObserver(ms => {
                if (ms.some(m => (m.target.nodeType === 1 ? m.target : m.target.parentElement).closest('.assistant .text')))
                    window.reads++; }).observe(document.getElementById('log'),
                                               {subtree: true, childList: true, characterData: true}); }""")
            page.fill("#prompt", "What is 2 + 3?")
            page.press("#prompt", "Enter")
            page.wait_for_selector(".assistant[data-done=true], .error", timeout=60000)
            assert not page.query_selector(".error"), page.inner_text(".error")
            meta = page.inner_text(".assistant .meta")
            assert "expert math" in meta and "pass 1: digits → arithmetic, pass1_ms" in meta, meta
            assert page.inner_text(".user") == "What is 2 + 3?"
            reads = page.evaluate("window.reads")
            assert reads >= 2, reads  # it streamed
            if SCREENSHOT:
                page.screenshot(path=SCREENSHOT)

            page.click("#clear")  # a new conversation: the tiny model's window is 128 tokens
            assert page.query_selector_all(".msg") == []
            page.select_option("#model", "mixture")
            assert page.is_visible("#mixture input[data-expert=math]")
            page.fill("#mixture input[data-expert=math]", "0.7")
            page.fill("#mixture input[data-expert=words]", "0.3")
            page.fill("#prompt", "hello")
            page.press("#prompt", "Enter")
            page.wait_for_function("document.querySelectorAll('.assistant[data-done=true]').length == 1 || "
                                   "document.querySelector('.error')", timeout=60000)
            assert not page.query_selector(".error"), page.inner_text(".error")
            meta = page.inner_text(".assistant .meta")
            assert "mixture math=0.70 words=0.30" in meta, meta
        finally:
            context.close()
