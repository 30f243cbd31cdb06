"""`t2 chat` through a real pseudo-terminal (pexpect): an answer streams with its pass-1 choice and times, /expert
pins, Ctrl-C stops an answer but not the session (and the weights come back), readline recalls history, /quit
exits 0. Plus ChatSession's context window handling, in-process."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from conftest import SHAPE, char_tokenizer, forward_counter

pexpect = pytest.importorskip("pexpect")
SRC = Path(__file__).resolve().parents[1] / "src"
END = re.compile(r"\[(?:prompt: \w+|pinned) -> ([\w()=.,-]+); pass 1 (\d+) ms, pass 2 (\d+) ms, (\d+) tokens")


@pytest.fixture(scope="module")
def long_window_folder(tmp_path_factory) -> Path:
    """The tiny Llama + character tokenizer, with a 4096-token window so that an answer can run for seconds."""
    import torch
    import transformers as hf

    folder = tmp_path_factory.mktemp("tiny-long")
    torch.manual_seed(0)
    hf.LlamaForCausalLM(hf.LlamaConfig(**{**SHAPE, "max_position_embeddings": 4096})).float().eval() \
        .save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


def t2(*argv, cwd, env):
    return pexpect.spawn(sys.executable, ["-c", "import sys; from transformer_squared.cli import main; "
                                                "sys.exit(main())", *argv], cwd=str(cwd), env=env,
                         encoding="utf-8", timeout=120, dimensions=(40, 200))


@pytest.fixture(scope="module")
def chat_dir(long_window_folder, tmp_path_factory) -> Path:
    """A working folder with lib/math (a noisy expert of domain arithmetic) and the SVD cache under cache/."""
    from conftest import noisy_z
    from transformer_squared.experts import Expert, ExpertLibrary
    from transformer_squared.svf import load_svf

    root = tmp_path_factory.mktemp("chat")
    svf = load_svf(str(long_window_folder), cache_dir=root / "cache" / "svd", progress=False)
    ExpertLibrary(root / "lib").add(Expert.for_model(svf, noisy_z(svf, 0.3, seed=1), domain="arithmetic"), "math")
    return root


@pytest.fixture
def chat_env(chat_dir):
    return {**os.environ, "PYTHONPATH": str(SRC), "T2_CACHE": str(chat_dir / "cache"), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "TERM": "xterm"}


def test_chat_streams_pins_interrupts_and_quits(long_window_folder, chat_dir, chat_env, tmp_path):
    history = tmp_path / "history"
    child = t2("chat", "--model", str(long_window_folder), "--library", "lib", "--strategy", "prompt",
               "--max-new-tokens", "2000", "--history-file", str(history), cwd=chat_dir, env=chat_env)
    try:
        child.expect("t2 chat: .*strategy prompt, experts: math")
        child.expect_exact("you> ")
        child.sendline("What is 2+2?")
        child.expect(r"\[(base|math)\] ")  # pass 1's choice, shown before the answer streams
        child.expect(END)
        first = child.before  # the answer
        chosen, tokens = child.match.group(1), int(child.match.group(4))
        assert chosen == "base" and 0 < tokens < 2000  # the random model ends this one early (eos)
        child.expect_exact("you> ")

        child.sendline("/expert mathX\x7f")  # a typo, erased with backspace before Enter
        child.expect_exact("pinned math")
        child.expect_exact("you> ")
        child.sendline("hello")
        child.expect_exact("[math] ")
        child.expect(r"\S{20}")  # text arrives while the answer is still being generated ...
        child.sendintr()  # ... and Ctrl-C stops it
        assert child.expect([r"\[interrupted", END]) == 0, "the answer finished before Ctrl-C"
        child.expect_exact("you> ")

        child.sendline("/clear")
        child.expect_exact("conversation cleared")
        child.expect_exact("you> ")
        child.send("\x1b[A\r")  # readline history: up-arrow recalls /clear
        child.expect_exact("conversation cleared")
        child.expect_exact("you> ")
        child.sendline("/auto")
        child.expect_exact("you> ")
        child.sendline("What is 2+2?")
        child.expect(END)
        # the session went on, and the interrupted expert did not stay applied: the same answer as at first
        assert child.match.group(1) == "base" and child.before.split("] ", 1)[-1] == first.split("] ", 1)[-1]
        child.expect_exact("you> ")
        for line, message in (("/expert nope", "no expert 'nope'"), ("/mix math", "bad weight 'math'"),
                              ("/strategy magic", "choose one of"), ("/frobnicate", "unknown command")):
            child.sendline(line)  # errors are reported, the session goes on
            child.expect_exact("error: ")
            child.expect_exact(message)
            child.expect_exact("you> ")
        child.sendline("/mix math=0.5")
        child.expect_exact("pinned mix(math=0.5)")
        child.expect_exact("you> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert "/expert math" in history.read_text()
    from transformer_squared.experts.memory import ExpertMemory

    # usage persisted on exit: the two finished answers (base); the interrupted one (math) does not count
    assert ExpertMemory(chat_dir / "lib").usage() == {"base": 2}


def test_help_lists_the_flags(capsys):
    from transformer_squared.cli import main

    for verb, flags in (("chat", ["--library", "--strategy", "--expert", "--system", "--max-new-tokens",
                                  "--history-file", "--encoder", "--model"]),
                        ("discover", ["--prompts", "--out", "--k", "--k-max", "--library", "--encoder", "--overwrite"])):
        with pytest.raises(SystemExit) as exit_:
            main([verb, "-h"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert all(re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", out) for f in flags), out


def test_chat_refuses_cem_and_an_empty_library_before_loading_a_model(tmp_path, capsys):
    from transformer_squared.cli import main

    assert main(["chat", "--library", str(tmp_path / "none"), "--strategy", "cem"]) == 2
    assert "adapts to a task" in capsys.readouterr().err
    assert main(["chat", "--library", str(tmp_path / "none"), "--strategy", "prompt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("t2 chat: error: no expert with a domain label") and err.count("\n") == 1


def test_context_keeps_the_newest_turns_that_fit(svf):
    from transformer_squared.adapt.chat import ChatError, ChatSession
    from transformer_squared.experts import ExpertLibrary
    from transformer_squared.generation import GenerationConfig

    svf.tokenizer = char_tokenizer()  # no chat template: one character per token, messages joined by newlines
    session = ChatSession(svf, ExpertLibrary("missing"), "base", config=GenerationConfig(max_new_tokens=20))
    assert session.window == 128
    session.history = [{"role": "user", "content": "a" * 30}, {"role": "assistant", "content": "b" * 30},
                       {"role": "user", "content": "c" * 20}, {"role": "assistant", "content": "d" * 20}]
    messages, ids, max_new, dropped = session._fit("e" * 10)
    assert dropped == 1 and [m["content"][0] for m in messages] == ["c", "d", "e"]  # 94 tokens with a+b: too many
    assert len(ids) + max_new <= 128 and max_new == 20
    messages, ids, max_new, dropped = session._fit("f" * 120)  # alone it leaves 7 tokens: the answer gets those
    assert dropped == 2 and max_new == 128 - len(ids) == 7
    with pytest.raises(ChatError, match="window is 128"):
        session._fit("g" * 200)
    turn = session.ask("hi", on_text=lambda t: None)
    assert session.history[-1] == {"role": "assistant", "content": turn.text} and turn.selection.name == "base"


def test_prompt_lookup_streams_the_same_answer_in_fewer_forward_passes(svf):
    """`t2 chat --lookup N`: the session passes prompt lookup to generate; the streamed text is the plain answer
    (the tiny model's answers repeat themselves, so proposals are accepted: fewer forward passes than tokens)."""
    from transformer_squared.adapt.chat import ChatSession
    from transformer_squared.experts import ExpertLibrary
    from transformer_squared.generation import GenerationConfig

    svf.tokenizer = char_tokenizer()
    calls = forward_counter(svf.model)
    turns, streamed = {}, {}
    for lookup in (0, 5):
        session = ChatSession(svf, ExpertLibrary("missing"), "base",
                              config=GenerationConfig(max_new_tokens=40, lookup=lookup))
        pieces: list[str] = []
        calls[0] = 0
        turns[lookup] = session.ask("the cat the cat", on_text=pieces.append), calls[0]
        streamed[lookup] = "".join(pieces)
    (plain, plain_calls), (fast, fast_calls) = turns[0], turns[5]
    assert fast.text == plain.text == streamed[5] and fast.completion_tokens == plain.completion_tokens
    assert plain_calls >= plain.completion_tokens and fast_calls < 0.75 * plain_calls, (fast_calls, plain_calls)
