"""Tasks: datasets in their upstream formats, prompt formats, and scoring (see base.py for the contract)."""

from __future__ import annotations

from .antonyms import AntonymsTask
from .arc import ArcChallengeTask, ArcChallengeTextTask, ArcTask, ArcTextTask, answer_distribution
from .arithmetic import ArithmeticTask, SubtractionTask, ThreeDigitAdditionTask
from .base import (
    REWARDS,
    TASKS,
    Example,
    Reward,
    RewardTask,
    Task,
    get_reward,
    get_task,
)
from .code import HumanEvalTask, MBPPTask
from .gsm8k import GSM8KTask
from .math_task import MathTask
from .rewards import (
    boxed_answer,
    extract_code,
    extract_letter,
    first_number,
    last_number,
    math_answer,
    normalize_math_answer,
    normalize_number,
    stated_result,
)

TASKS.update(
    {
        cls.name: cls
        for cls in (ArithmeticTask, SubtractionTask, ThreeDigitAdditionTask, AntonymsTask, GSM8KTask, MathTask, ArcTask, ArcChallengeTask, ArcTextTask, ArcChallengeTextTask, MBPPTask, HumanEvalTask, RewardTask)
    }
)

__all__ = [
    "REWARDS",
    "TASKS",
    "AntonymsTask",
    "ArcChallengeTask",
    "ArcChallengeTextTask",
    "ArcTextTask",
    "ArcTask",
    "ArithmeticTask",
    "Example",
    "GSM8KTask",
    "HumanEvalTask",
    "MBPPTask",
    "MathTask",
    "Reward",
    "RewardTask",
    "SubtractionTask",
    "Task",
    "ThreeDigitAdditionTask",
    "answer_distribution",
    "boxed_answer",
    "extract_code",
    "extract_letter",
    "first_number",
    "get_reward",
    "get_task",
    "last_number",
    "math_answer",
    "normalize_math_answer",
    "normalize_number",
    "stated_result",
]
