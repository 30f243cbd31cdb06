"""HumanEval-style records in the upstream format, written for these tests (not copied from the dataset).

They cover the shapes of the real file's tests: METADATA dicts, imports in the prompt and inside check(), helper
functions in the prompt, `assert candidate(...) == ...` with and without messages, `assert True`, tolerance checks
(`abs(...) < 1e-6`, `math.isclose`), loops over inputs, unseeded `random` inputs, and a property check through a
prompt helper (several right answers). The canonical solutions are correct, so each must score 1.
"""

from __future__ import annotations

RECORDS = [
    {
        "task_id": "Fixture/0",
        "prompt": "from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
                  '    """ Check if in given list of numbers, are any two numbers closer to each other than\n'
                  "    given threshold.\n    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n    False\n    \"\"\"\n",
        "canonical_solution": "    for i, a in enumerate(numbers):\n        for j, b in enumerate(numbers):\n"
                              "            if i != j and abs(a - b) < threshold:\n                return True\n"
                              "    return False\n",
        "test": "\n\nMETADATA = {\n    'author': 'jt',\n    'dataset': 'test'\n}\n\n\ndef check(candidate):\n"
                "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n"
                "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False\n"
                "    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True\n"
                "    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False\n\n",
        "entry_point": "has_close_elements",
    },
    {
        "task_id": "Fixture/1",
        "prompt": 'def truncate_number(number: float) -> float:\n    """ The decimal part of a positive number.\n'
                  "    >>> truncate_number(3.5)\n    0.5\n    \"\"\"\n",
        "canonical_solution": "    return number % 1.0\n",
        "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate(3.5) == 0.5\n"
                "    assert abs(candidate(1.33) - 0.33) < 1e-6\n    assert abs(candidate(123.456) - 0.456) < 1e-6\n",
        "entry_point": "truncate_number",
    },
    {
        "task_id": "Fixture/2",
        "prompt": 'def add(x: int, y: int):\n    """Add two numbers x and y\n    >>> add(2, 3)\n    5\n    """\n',
        "canonical_solution": "    return x + y\n",
        "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    import random\n\n"
                "    assert candidate(0, 1) == 1\n    assert candidate(1, 0) == 1\n    assert candidate(2, 3) == 5\n\n"
                "    for i in range(100):\n        x, y = random.randint(0, 1000), random.randint(0, 1000)\n"
                "        assert candidate(x, y) == x + y\n\n",
        "entry_point": "add",
    },
    {
        "task_id": "Fixture/3",
        "prompt": "def encode_cyclic(s: str):\n    \"\"\"returns encoded string by cycling groups of three characters.\"\"\"\n"
                  "    groups = [s[(3 * i):min((3 * i + 3), len(s))] for i in range((len(s) + 2) // 3)]\n"
                  "    groups = [(group[1:] + group[0]) if len(group) == 3 else group for group in groups]\n"
                  '    return "".join(groups)\n\n\ndef decode_cyclic(s: str):\n'
                  '    """takes as input string encoded with encode_cyclic function. Returns decoded string."""\n',
        "canonical_solution": "    return encode_cyclic(encode_cyclic(s))\n",
        "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    from random import randint, choice\n"
                "    import string\n\n    letters = string.ascii_lowercase\n    for _ in range(100):\n"
                "        str = ''.join(choice(letters) for i in range(randint(10, 20)))\n"
                "        encoded_str = encode_cyclic(str)\n        assert candidate(encoded_str) == str\n\n",
        "entry_point": "decode_cyclic",
    },
    {
        "task_id": "Fixture/4",
        "prompt": "import math\n\n\ndef poly(xs: list, x: float):\n"
                  '    """Evaluates polynomial with coefficients xs at point x."""\n'
                  "    return sum([coeff * math.pow(x, i) for i, coeff in enumerate(xs)])\n\n\n"
                  "def find_zero(xs: list):\n"
                  '    """ xs are coefficients of a polynomial with an even number of coefficients.\n'
                  '    find_zero returns a point x where poly(xs, x) = 0 (only one, even if there are many).\n    """\n',
        "canonical_solution": "    begin, end = -1., 1.\n    while poly(xs, begin) * poly(xs, end) > 0:\n"
                              "        begin *= 2.0\n        end *= 2.0\n    while end - begin > 1e-10:\n"
                              "        center = (begin + end) / 2.0\n"
                              "        if poly(xs, center) * poly(xs, begin) > 0:\n            begin = center\n"
                              "        else:\n            end = center\n    return begin\n",
        "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    import math\n    import random\n"
                "    rng = random.Random(42)\n    import copy\n    for _ in range(100):\n"
                "        ncoeff = 2 * rng.randint(1, 4)\n        coeffs = []\n        for _ in range(ncoeff):\n"
                "            coeff = rng.randint(-10, 10)\n            if coeff == 0:\n                coeff = 1\n"
                "            coeffs.append(coeff)\n        solution = candidate(copy.deepcopy(coeffs))\n"
                "        assert math.fabs(poly(coeffs, solution)) < 1e-4\n\n",
        "entry_point": "find_zero",
    },
    {
        "task_id": "Fixture/5",
        "prompt": 'def change_base(x: int, base: int):\n    """Change numerical base of input number x to base.\n'
                  "    base numbers are less than 10.\n    >>> change_base(8, 3)\n    '22'\n    \"\"\"\n",
        "canonical_solution": '    ret = ""\n    while x > 0:\n        ret = str(x % base) + ret\n'
                              "        x //= base\n    return ret\n",
        "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate(8, 3) == \"22\"\n"
                "    assert candidate(9, 3) == \"100\"\n    assert candidate(234, 2) == \"11101010\"\n"
                "    for x in range(2, 8):\n        assert candidate(x, x + 1) == str(x)\n\n",
        "entry_point": "change_base",
    },
    {
        "task_id": "Fixture/6",
        "prompt": 'def vowels_count(s):\n    """Count the vowels in s; \'y\' counts only at the end of the word.\n'
                  '    >>> vowels_count("abcde")\n    2\n    """\n',
        "canonical_solution": '    n_vowels = sum(c in "aeiouAEIOU" for c in s)\n'
                              "    if s and s[-1] in 'yY':\n        n_vowels += 1\n    return n_vowels\n",
        "test": "def check(candidate):\n\n    # Check some simple cases\n"
                '    assert candidate("abcde") == 2, "Test 1"\n    assert candidate("Alone") == 3, "Test 2"\n'
                '    assert candidate("key") == 2, "Test 3"\n    assert candidate("bye") == 1, "Test 4"\n\n'
                "    # Check some edge cases that are easy to work out by hand.\n"
                '    assert True, "This prints if this assert fails 2 (also good for debugging!)"\n\n',
        "entry_point": "vowels_count",
    },
    {
        "task_id": "Fixture/7",
        "prompt": 'def triangle_area(a, h):\n    """Given length of a side and high return area for a triangle.\n'
                  '    >>> triangle_area(5, 3)\n    7.5\n    """\n',
        "canonical_solution": "    return a * h / 2.0\n",
        "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    import math\n"
                "    assert math.isclose(candidate(5, 3), 7.5)\n    assert math.isclose(candidate(2, 2), 2.0, rel_tol=1e-9)\n"
                "    assert candidate(10, 8) == 40.0\n\n",
        "entry_point": "triangle_area",
    },
    {
        "task_id": "Fixture/8",
        "prompt": "from typing import List, Tuple\n\n\ndef sum_product(numbers: List[int]) -> Tuple[int, int]:\n"
                  '    """ A tuple of the sum and the product of all the integers in a list.\n'
                  "    >>> sum_product([1, 2, 3, 4])\n    (10, 24)\n    \"\"\"\n",
        "canonical_solution": "    sum_value = 0\n    prod_value = 1\n\n    for n in numbers:\n"
                              "        sum_value += n\n        prod_value *= n\n    return sum_value, prod_value\n",
        "test": "\n\nMETADATA = {\n    'author': 'jt',\n    'dataset': 'test'\n}\n\n\ndef check(candidate):\n"
                "    assert candidate([]) == (0, 1)\n    assert candidate([1, 1, 1]) == (3, 1)\n"
                "    assert candidate([100, 0]) == (100, 0)\n    assert candidate([3, 5, 7]) == (3 + 5 + 7, 3 * 5 * 7)\n"
                "    assert candidate([10]) == (10, 10)\n",
        "entry_point": "sum_product",
    },
    {
        "task_id": "Fixture/9",
        "prompt": "def flip_case(string: str) -> str:\n"
                  '    """ For a given string, flip lowercase characters to uppercase and uppercase to lowercase.\n'
                  "    >>> flip_case('Hello')\n    'hELLO'\n    \"\"\"\n",
        "canonical_solution": "    return string.swapcase()\n",
        "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate('') == ''\n"
                "    assert candidate('Hello!') == 'hELLO!'\n"
                "    assert candidate('These violent delights have violent ends') == "
                "'tHESE VIOLENT DELIGHTS HAVE VIOLENT ENDS'\n",
        "entry_point": "flip_case",
    },
    {
        "task_id": "Fixture/10",
        "prompt": 'def unique(l: list):\n    """Return sorted unique elements in a list\n'
                  "    >>> unique([5, 3, 5, 2])\n    [2, 3, 5]\n    \"\"\"\n",
        "canonical_solution": "    return sorted(list(set(l)))\n",
        "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n"
                "    assert candidate([5, 3, 5, 2, 3, 3, 9, 0, 123]) == [0, 2, 3, 5, 9, 123]\n"
                "    assert sorted(candidate([3, 1, 3])) == [1, 3]\n    assert not candidate([])\n"
                "    assert len(candidate([1, 1])) == 1\n",
        "entry_point": "unique",
    },
]
