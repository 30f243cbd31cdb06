"""Answer extraction and TRL-style rewards, shared by the tasks.

Three kinds of functions live here:
- pure extractors over a completion's text: `first_number`, `last_number`, `stated_result`, `boxed_answer`,
  `math_answer`, `normalize_math_answer`, `extract_letter`, `extract_code`;
- scorers, one per rule, `(completion text, gold) -> 1.0 | 0.0`: `score_exact_number`, `score_stated_result`,
  `score_boxed`, `score_letter`. The built-in tasks' `score()` and the rewards below both call them;
- rewards with the TRL signature `(prompts, completions, **columns) -> list[float]`, registered by name in
  `tasks.base.REWARDS`. Columns are lists aligned with `completions` (e.g. `answer=[...]`); a completion may be a
  string or, as TRL passes conversational data, a list of chat messages (the last message's content is scored).

Code is only ever run through `transformer_squared.sandbox` (a subprocess with resource limits), never in-process,
and judged by `tasks.judge` from the values it produces, never from its exit status. Threat model (stated in full
in judge.py): the candidate owns its whole sandboxed process (exits, patches, forged output, threads, frames), so
that process is never believed; it only ever holds the tests' inputs, the expected values stay in this process
(or in runs without the candidate), and this process compares type-exact plain values.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

# A number: optional minus, digits with optional 3-digit comma groups, optional decimals (or a bare ".5").
# Not preceded by a letter, digit or '.', so "x2", "v1.2.3"'s tail and "10-5"'s minus are not misread.
_NUMBER = re.compile(r"(?<![A-Za-z0-9.])[-−]?(?:\d+(?:,\d{3}(?!\d))*(?:\.\d+)?|\.\d+)")


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or a list of chat messages whose last content is the reply."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


# ---------------------------------------------------------------------------------------------------- numbers


def normalize_number(text: str) -> str:
    """Canonical form of a number: commas dropped, trailing decimal zeros dropped ("1,234.50" -> "1234.5")."""
    text = text.strip().replace(",", "").replace("−", "-")
    try:
        value = Decimal(text)
    except InvalidOperation:
        return text
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def numbers(text: str) -> list[str]:
    """Every number in `text`, in order, normalised."""
    return [normalize_number(match) for match in _NUMBER.findall(text)]


def first_number(text: str) -> str | None:
    """The first number in `text`, normalised, or None."""
    found = numbers(text)
    return found[0] if found else None


def last_number(text: str) -> str | None:
    """The last number in `text`, normalised, or None (GSM8K style: the answer comes last)."""
    found = numbers(text)
    return found[-1] if found else None


def stated_result(text: str) -> str | None:
    """The result a short reply states: the first number after its first '=', else its first number.

    "42" -> 42, "17 + 25 = 42" -> 42, "The answer is 42." -> 42; "17 plus 25 is 42" -> 17 (answer as asked).
    """
    _, equals, after = text.partition("=")
    return first_number(after if equals else text)


# ---------------------------------------------------------------------------------------------------- MATH


def boxed_answer(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, nested braces included, or None."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    if text.startswith(" ", i):  # "\boxed 5": the argument is the next token
        match = re.match(r"\s*([^\s$]+)", text[i:])
        return match.group(1) if match else None
    if not text.startswith("{", i):
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None  # unbalanced: the completion was cut off inside the box


def math_answer(text: str) -> str | None:
    """A MATH completion's answer: its last boxed answer, else its last number."""
    boxed = boxed_answer(text)
    return boxed if boxed is not None else last_number(text)


def normalize_math_answer(answer: str) -> str:
    """Light LaTeX normalisation so equal answers compare equal as strings.

    Drops spaces, `$`, `\\left`/`\\right`, thin spaces (`\\! \\, \\; \\:`), degrees, `\\%`, `\\text{}` wrappers, a
    trailing '.', and a leading "x =". `\\dfrac`/`\\tfrac` become `\\frac`; a `\\frac` of two simple tokens becomes
    "a/b" ("\\frac{1}{2}", "\\frac12" and "1/2" all compare equal); plain numbers are normalised ("1,000" = "1000").
    Not a full equivalence checker: "0.5" and "1/2" still differ.
    """
    text = answer.strip()
    text = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", text)
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "^{\\circ}", "^\\circ", "\\%", "%", "$", " "):
        text = text.replace(token, "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac\{(-?[\w.]+)\}\{(-?[\w.]+)\}", r"\1/\2", text)
    text = re.sub(r"^[A-Za-z]=", "", text).rstrip(".")
    if _NUMBER.fullmatch(text):
        text = normalize_number(text)
    return text


def same_math_answer(predicted: str | None, gold: str) -> bool:
    """Whether a predicted MATH answer equals the gold one after normalisation (None never does)."""
    return predicted is not None and normalize_math_answer(predicted) == normalize_math_answer(gold)


# ---------------------------------------------------------------------------------------------------- letters

_PROSE_AFTER_A = re.compile(r"\s+(?!(?:is|and|or)\b)[a-z]")  # "A plant ..." is an article, "A is right" is not


def extract_letter(completion: str, labels: Sequence[str] | str = "ABCDE") -> str | None:
    """The option letter a completion picks, among `labels`, or None (never a guess).

    In order: a letter opening the reply ("B", "B.", "(B)", "**B**"), a letter right after "answer"
    ("Answer: B", "The answer is (B)"), else the first standalone capital label. Lower-case letters never count
    (the prose word "a" is not option A), nor does "A" used as an article ("A plant needs ...").
    """
    letters = "".join(label for label in labels if len(label) == 1)
    if not letters:
        return None
    label = f"([{re.escape(letters)}])(?![A-Za-z0-9])"
    patterns = (
        rf"^\W*{label}",  # opens the reply
        rf"(?i:answer)\W*(?:(?i:is)\W*)?(?:(?i:option)\W*)?{label}",  # follows "answer"
        rf"(?<![A-Za-z0-9]){label}",  # stands alone anywhere
    )
    for pattern in patterns:
        for match in re.finditer(pattern, completion):
            if match.group(1) == "A" and _PROSE_AFTER_A.match(completion, match.end()):
                continue
            return match.group(1)
    return None


# ---------------------------------------------------------------------------------------------------- code

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(completion: str) -> str | None:
    """The first ```python fenced block, else the first ``` block, else the whole completion; None if empty.

    An unclosed fence (a cut-off reply) runs to the end. Windows line endings become "\\n".
    """
    text = completion.replace("\r\n", "\n")
    blocks = _FENCE.findall(text)
    python = [code for lang, code in blocks if lang.lower() in ("python", "py", "python3")]
    code = python[0] if python else blocks[0][1] if blocks else text
    return code if code.strip() else None


def indent_body(code: str) -> str:
    """Indent a function body that a model wrote flush-left, so it can follow a `def` line."""
    lines = [line for line in code.splitlines() if line.strip()]
    if lines and not any(line[0].isspace() for line in lines):
        return textwrap.indent(code, "    ")
    return code


# ---------------------------------------------------------------------------------------------------- rewards


def _column(name: str, values: Sequence[Any] | None, n: int) -> Sequence[Any]:
    if values is None or len(values) != n:
        raise ValueError(f"reward needs a column {name!r} with one value per completion ({n})")
    return values


def gold_number(answer: Any, pick=last_number) -> str:
    """The gold number of an answer column, normalised: `pick`'s number of its text ("#### 42" -> 42), else the text."""
    return pick(str(answer)) or str(answer).strip()


# One scorer per rule, (completion text, gold) -> 1.0 | 0.0: the built-in tasks' `score()` and the registered rewards
# both call these, so a task and its reward never disagree.


def score_exact_number(completion: str, answer: Any) -> float:
    """1.0 where the completion's last number equals the gold number (GSM8K), else 0.0."""
    return float(last_number(completion) == gold_number(answer))


def score_stated_result(completion: str, answer: Any) -> float:
    """1.0 where the reply's stated result (see `stated_result`) equals the gold number (arithmetic), else 0.0."""
    return float(stated_result(completion) == gold_number(answer, first_number))


def score_boxed(completion: str, answer: Any) -> float:
    """1.0 where the boxed answer (else last number) equals the gold answer after normalisation (MATH), else 0.0."""
    return float(same_math_answer(math_answer(completion), str(answer)))


def score_letter(completion: str, answer: Any, labels: Sequence[str] | str = "ABCDE") -> float:
    """1.0 where the option letter picked among `labels` is the gold letter (ARC); no letter found scores 0.0."""
    return float(extract_letter(completion, labels) == answer)


def exact_number_reward(prompts: list, completions: list, answer: list | None = None, **_: Any) -> list[float]:
    """`score_exact_number` per completion (GSM8K)."""
    answer = _column("answer", answer, len(completions))
    return [score_exact_number(completion_text(c), a) for c, a in zip(completions, answer)]


def first_number_reward(prompts: list, completions: list, answer: list | None = None, **_: Any) -> list[float]:
    """`score_stated_result` per completion (arithmetic)."""
    answer = _column("answer", answer, len(completions))
    return [score_stated_result(completion_text(c), a) for c, a in zip(completions, answer)]


def boxed_reward(prompts: list, completions: list, answer: list | None = None, **_: Any) -> list[float]:
    """`score_boxed` per completion (MATH)."""
    answer = _column("answer", answer, len(completions))
    return [score_boxed(completion_text(c), a) for c, a in zip(completions, answer)]


def letter_reward(
    prompts: list, completions: list, answer: list | None = None, labels: list | None = None, **_: Any
) -> list[float]:
    """`score_letter` per completion (ARC, letter format); `labels` defaults to A-E."""
    answer = _column("answer", answer, len(completions))
    labels = labels or ["ABCDE"] * len(completions)
    return [score_letter(completion_text(c), a, ls) for c, a, ls in zip(completions, answer, labels)]


def unit_tests_reward(
    prompts: list, completions: list, tests: list | None = None, setup: list | None = None, **_: Any
) -> list[float]:
    """1.0 where every assert in `tests` holds for the extracted code after `setup` (MBPP), as judged by
    tasks.judge from the values the code produces in the sandbox, else 0.0."""
    from .judge import Judge, unit_test_plan

    tests = _column("tests", tests, len(completions))
    setup = setup or [""] * len(completions)
    jobs = [(unit_test_plan(t, s), extract_code(completion_text(c))) for c, s, t in zip(completions, setup, tests)]
    return [float(ok) for ok in Judge().verdicts(jobs)]
