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


def test_the_demo_runs_its_four_steps_in_order(tmp_path, monkeypatch):
    """run_demo's plumbing with every heavy part stubbed: the steps run in order, a second run uses the cache."""
    import io
    import types

    import torch

    import transformer_squared.adapt as adapt
    import transformer_squared.adapt.cem as cem
    import transformer_squared.adapt.two_pass as two_pass
    import transformer_squared.svf as svf_module
    from transformer_squared.adapt.two_pass import StrategyReport, TaskReport
    from transformer_squared.cli import demo
    from transformer_squared.experts import Expert, ExpertMeta

    svf = types.SimpleNamespace(names=["m"], num_z=lambda: 4, precision=types.SimpleNamespace(describe=lambda: "f32"))
    trained = []

    def train(svf, library, runs, name, fields, task=None, log=print):
        from transformer_squared.tasks import get_task

        trained.append(name)
        domain = "dispatch" if name == "dispatcher" else get_task(fields["task"]).domain
        meta = ExpertMeta(name=name, domain=domain, metrics={"valid_accuracy": 0.5},
                          created_by={"method": "train", "config": {"task": fields["task"]}})
        Expert({"m": torch.ones(4)}, meta).save(library.root / name, overwrite=True)

    def report(svf, tasks, strategy, n=None, **kwargs):
        rows = [TaskReport(t.name, n, 0.5, (0.1, 0.9), t.domain, None) for t in tasks]
        records = [{"prompt": f"{t.name} {i}", "answer": "1", "expert": "base", "score": 1.0}
                   for t in tasks for i in range(n)]
        return StrategyReport(getattr(strategy, "name", "s"), rows, 0.1, 0.2, records)

    class FewShot:
        def __init__(self, experts, task, shots, config, progress=True):
            self.experts = experts

        def adapt(self, svf):
            return Expert({"m": torch.ones(4)}, ExpertMeta(alpha={e.name: 0.5 for e in self.experts}))

    monkeypatch.setattr(svf_module, "load_svf", lambda *a, **k: svf)
    monkeypatch.setattr(demo, "_train", train)
    monkeypatch.setattr(demo, "_cached", lambda library, name, svf: name in library)
    monkeypatch.setattr(adapt, "build_strategy", lambda name, *a, **k: types.SimpleNamespace(name=name))
    monkeypatch.setattr(two_pass, "evaluate_strategy", report)
    monkeypatch.setattr(cem, "FewShotStrategy", FewShot)
    out = io.StringIO()
    assert demo.run_demo(workdir=tmp_path, n=2, out=out) == 0
    text = out.getvalue()
    steps = [text.index(f"[{i}/4]") for i in range(1, 5)]
    assert steps == sorted(steps) and text.index("Results") > steps[-1] and "Done in" in text
    assert trained == [*demo.EXPERT_RUNS, "dispatcher"]
    assert f"Unseen task {demo.UNSEEN} (n=2):" in text and "CEM α: {'antonyms': 0.5, 'arithmetic': 0.5}" in text
    assert demo.run_demo(workdir=tmp_path, n=2, out=io.StringIO()) == 0
    assert trained == [*demo.EXPERT_RUNS, "dispatcher"]  # the second run trains nothing
