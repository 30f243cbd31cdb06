"""`t2 chat`: an interactive, multi-turn, streaming chat with self-adaptation (the terminal side of adapt/chat.py).

Line editing and history come from the standard library's readline (history kept in --history-file). Ctrl-C while
an answer streams stops that answer and returns to the prompt; Ctrl-C at the prompt clears the line; Ctrl-D or
/quit leaves (exit code 0).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .options import (add_generation_args, add_library_arg, add_model_args, add_strategy_args, config_from_args,
                      load_strategy_model, strategy_options)


def register(sub) -> None:
    p = sub.add_parser("chat", help="interactive multi-turn chat; pass 1 picks the expert of every answer",
                       description="Streams each answer and shows which expert (or mixture) pass 1 chose and how long "
                                   "each pass took. Commands: /expert NAME, /mix A=W B=W, /auto, /strategy NAME, "
                                   "/clear, /help, /quit. Ctrl-C stops the current answer.")
    add_model_args(p)
    add_library_arg(p)
    add_generation_args(p, max_new_tokens=256)
    add_strategy_args(p)
    p.add_argument("--expert", default=None, help="start with this expert pinned (no pass 1)")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--history-file", default=str(Path.home() / ".t2_chat_history"),
                   help="readline history (default: ~/.t2_chat_history; '' for none)")
    p.set_defaults(func=chat_cmd)


def _readline(history_file: str):
    try:
        import readline
    except ImportError:  # not on every platform: input() still works, without editing
        return None
    if history_file and os.path.exists(history_file):
        try:
            readline.read_history_file(history_file)
        except OSError:
            pass
    return readline


def chat_cmd(args: argparse.Namespace) -> int:
    from ..adapt.chat import ChatSession, Quit
    from ..adapt.routes import answer_experts
    from ..decoding import prepacked
    from ..experts import ExpertLibrary
    from ..experts.memory import ExpertMemory, UsageCounter
    from ..generation import GenerationConfig

    config = config_from_args(args, GenerationConfig)
    library = ExpertLibrary(args.library)
    routes = answer_experts(library)
    strategy = args.strategy or ("embedding" if routes else "base")
    if strategy == "cem":
        raise ValueError("t2 chat: --strategy cem adapts to a task, not to a conversation; choose another")
    if strategy != "base" and not routes:
        raise ValueError(f"no expert with a domain label in {library.root} for --strategy {strategy}; "
                         "train some (t2 train), or use --strategy base")
    svf = load_strategy_model(args, library, routes)
    usage = UsageCounter(ExpertMemory(library.root), "chat")
    options = {k: v for k, v in strategy_options(args).items() if v is not None}
    session = ChatSession(svf, library, strategy, {**options, "routes": routes},
                          config, args.system, usage)
    if args.expert:
        session.pin(args.expert)
    readline = _readline(args.history_file)
    print(f"t2 chat: {svf.model_id}, strategy {strategy}, experts: {', '.join(library.names()) or 'none'}. "
          "/help for commands, Ctrl-C stops an answer, Ctrl-D quits.", flush=True)
    try:
        with prepacked(svf.model, config.prepack):  # one set of packs for the whole session
            while True:
                try:
                    line = input("you> ")
                    if not line.strip():
                        continue
                    if line.startswith("/"):
                        print(session.command(line), flush=True)
                    else:
                        _answer(session, line)
                except KeyboardInterrupt:  # at the prompt, or during a command: the session goes on
                    print("^C", flush=True)
                except EOFError:
                    print(flush=True)
                    break
                except Quit:
                    break
                except ValueError as e:  # ChatError, ExpertError: a bad command, name or incompatible expert
                    print(f"error: {e}", flush=True)
    finally:
        usage.flush()
        if readline is not None and args.history_file:
            try:
                readline.write_history_file(args.history_file)
            except OSError:
                pass
    return 0


def _answer(session, line: str) -> None:
    def selected(selection):
        print(f"[{selection.name}] ", end="", flush=True)

    def text(piece: str):
        sys.stdout.write(piece)
        sys.stdout.flush()

    try:
        turn = session.ask(line, on_text=text, on_selection=selected)
    except KeyboardInterrupt:
        print("\n[interrupted: answer discarded]", flush=True)
        return
    how = "pinned" if turn.pinned else f"{session.strategy_name}: {turn.selection.label}"
    dropped = f"; {turn.dropped_turns} oldest turns left out" if turn.dropped_turns else ""
    print(f"\n[{how} -> {turn.selection.name}; pass 1 {turn.pass1_s * 1e3:.0f} ms, pass 2 {turn.pass2_s * 1e3:.0f} ms, "
          f"{turn.completion_tokens} tokens{dropped}]", flush=True)
