"""`t2 demo`'s output: the per-prompt table shows answers and experts whole, aligned."""

from __future__ import annotations

from transformer_squared.cli.demo import PROMPT_WIDTH, answer_table


def _records(experts, scores):
    prompts = ["Give the antonym of 'answer'. Reply with the word only, nothing else please.", "What is 2 + 2?"]
    answers = ["question", 4]
    return [{"prompt": p, "answer": a, "expert": e, "score": s} for p, a, e, s in zip(prompts, answers, experts, scores)]


def test_answers_and_experts_are_shown_whole_and_aligned():
    table = answer_table({"base": _records(["base", "base"], [0, 0]),
                          "classifier": _records(["antonyms", "arithmetic"], [1, 1]),
                          "embedding": _records(["a-very-long-expert-name", "arithmetic"], [1, 0])})
    header, first, second = table
    assert header.split() == ["prompt", "answer", "base", "classifier", "embedding"]
    assert " question " in first and "a-very-long-expert-name ok" in first and "antonyms ok" in first
    assert "What is 2 + 2?" in second and "arithmetic --" in second
    # the answer column starts at the same place on every line, and every line ends at the same column
    start = header.index("answer")
    assert first[start:].startswith("question") and second[start:].startswith("4 ")
    assert len(header) == len(first) == len(second)
    cut = first[2:2 + PROMPT_WIDTH]
    assert cut.endswith("…") and len(cut) == PROMPT_WIDTH  # a long prompt is visibly cut, not silently


def test_the_demo_ends_with_commands_that_use_its_experts(tmp_path):
    import shlex

    from transformer_squared.cli.demo import next_steps
    from transformer_squared.cli import build_parser

    root = tmp_path / "my cache" / "demo" / "experts"  # a space: the commands must quote it
    lines = next_steps(root)
    assert str(root) in lines[0]
    commands = [shlex.split(line.strip()) for line in lines if line.strip().startswith("t2 ")]
    assert len(commands) == 3
    for argv in commands:
        args = build_parser().parse_args(argv[1:])
        assert args.library == str(root)
    assert build_parser().parse_args(commands[0][1:]).expert == "arithmetic"
    export = lines[-1].split("export ", 1)[1]
    assert shlex.split(export) == [f"T2_EXPERTS={root}"]
