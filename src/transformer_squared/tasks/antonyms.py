"""Antonyms: a built-in, data-free language task ("Give the antonym of 'hot'. Answer with the word only.").

The small default model knows many antonyms but does not answer as asked ("The antonym of "hot" is "cold"."),
so, like `arithmetic`, it is a task where a 135M model can move, and a second domain for self-adaptation.

The word pairs below are asked in both directions. Pairs (not questions) are permuted once with a fixed seed and
cut into test (25%), valid (10%) and train; a word that also occurs in a test (or valid) pair is asked only there,
so no test question is ever trained on.
Scoring is strict: the reply's first word (letters only, case-insensitive) must be an antonym the list gives for
the word; replies that restate the question fail, as for `arithmetic`.
"""

from __future__ import annotations

import random
import re

from .base import Example, Task

PAIRS = """
hot cold, big small, up down, fast slow, happy sad, light dark, open closed, full empty, early late, young old,
rich poor, strong weak, hard soft, high low, long short, wet dry, loud quiet, clean dirty, thick thin, heavy light,
push pull, win lose, buy sell, begin end, first last, love hate, true false, give take, inside outside, above below,
north south, east west, day night, black white, front back, left right, top bottom, alive dead, friend enemy,
question answer, cheap expensive, deep shallow, wide narrow, sweet sour, near far, safe dangerous, asleep awake,
entrance exit, arrive leave, accept refuse, add subtract, always never, ancient modern, angry calm, asleep awake,
beautiful ugly, before after, best worst, bitter sweet, bright dim, brave cowardly, broad narrow, busy idle,
careful careless, certain uncertain, come go, correct wrong, cruel kind, dangerous safe, dark bright, deny admit,
difficult easy, dull sharp, empty full, enter exit, even odd, evil good, export import, fail succeed, fake real,
famous unknown, fat thin, fertile barren, few many, forget remember, found lost, freeze melt, frequent rare,
full hungry, generous selfish, gentle rough, giant tiny, guilty innocent, happy unhappy, hard easy, healthy sick,
hello goodbye, here there, hide show, horizontal vertical, humble proud, husband wife, include exclude,
increase decrease, inner outer, joy sorrow, junior senior, king queen, knowledge ignorance, large small, lazy busy,
lend borrow, less more, lie truth, like dislike, loose tight, major minor, male female, max min, maximum minimum,
mean kind, morning evening, narrow wide, natural artificial, negative positive, new old, noisy quiet, none all,
normal strange, obey disobey, offer refuse, often seldom, on off, optimist pessimist, order chaos, past future,
patient impatient, peace war, plural singular, polite rude, possible impossible, present absent, private public,
profit loss, quick slow, raise lower, rapid slow, raw cooked, receive send, rough smooth, rural urban, sad glad,
same different, shut open, simple complex, sink float, sit stand, sleep wake, slim fat, smart stupid, solid liquid,
sour sweet, spend save, stale fresh, start finish, stop go, straight crooked, success failure, sunny cloudy,
tall short, tame wild, teacher student, temporary permanent, thick thin, tight loose, tired energetic, together apart,
tough tender, transparent opaque, under over, upper lower, useful useless, vacant occupied, valid invalid,
victory defeat, visible invisible, warm cool, wealth poverty, whole part, wise foolish, wrong right, yes no
"""

SEED = 0
TEST_FRACTION, VALID_FRACTION = 0.25, 0.10
HELD_OUT = {"train": ("test", "valid"), "valid": ("test",), "test": ()}  # splits whose words a split must not ask


def word_pairs() -> list[tuple[str, str]]:
    """The unique (a, b) pairs of the list, in list order."""
    seen, pairs = set(), []
    for item in PAIRS.replace("\n", " ").split(","):
        a, b = item.split()
        if frozenset((a, b)) not in seen:
            seen.add(frozenset((a, b)))
            pairs.append((a, b))
    return pairs


def antonyms_of() -> dict[str, set[str]]:
    """Every antonym the list gives for each word (so 'light' accepts 'dark' and 'heavy')."""
    table: dict[str, set[str]] = {}
    for a, b in word_pairs():
        table.setdefault(a, set()).add(b)
        table.setdefault(b, set()).add(a)
    return table


class AntonymsTask(Task):
    name = "antonyms"
    domain = "language"
    description = "language: give the antonym (opposite) of an English word, replying with the word only"
    max_new_tokens = 12

    def __init__(self, data: None = None):
        if data is not None:
            raise ValueError("task 'antonyms' is built in and takes no data")
        super().__init__()

    def pairs(self, split: str) -> list[tuple[str, str]]:
        self.check_split(split)
        pairs = word_pairs()
        random.Random(SEED).shuffle(pairs)
        n_test, n_valid = round(len(pairs) * TEST_FRACTION), round(len(pairs) * VALID_FRACTION)
        bounds = {"test": (0, n_test), "valid": (n_test, n_test + n_valid), "train": (n_test + n_valid, len(pairs))}
        start, stop = bounds[split]
        return pairs[start:stop]

    def examples(self, split: str) -> list[Example]:
        table = antonyms_of()
        held_out = {w for s in HELD_OUT[split] for pair in self.pairs(s) for w in pair}
        examples, asked = [], set()
        for a, b in self.pairs(split):
            for word, answer in ((a, b), (b, a)):
                if word in held_out or word in asked:  # a word shared with a held-out pair is only asked there
                    continue
                asked.add(word)
                prompt = f"Give the antonym of '{word}'. Answer with the word only."
                examples.append({"prompt": prompt, "answer": answer, "reference": answer, "word": word,
                                 "accepted": sorted(table[word])})
        return examples

    def extract(self, completion: str) -> str | None:
        words = re.findall(r"[A-Za-z]+", completion)
        return words[0].lower() if words else None

    def score(self, completion: str, example: Example) -> float:
        accepted = example.get("accepted") or antonyms_of().get(example.get("word", ""), {example["answer"]})
        return float(self.extract(completion) in set(accepted))
