"""The built-in tasks' layouts and the addition task's train/evaluation split: the answers
against Python's own arithmetic, the split's size, and that no packed training batch ever
holds an evaluation problem."""

import numpy as np
import pytest

from deepseek_c import data as D
from deepseek_c import train as TR

TOK = D.CharTokenizer()


@pytest.mark.parametrize("pad,reverse", [(False, False), (True, False), (True, True)])
def test_addition_answers_match_python(pad, reverse):
    rng = np.random.default_rng()
    task = D.Addition(digits=3, pad=pad, reverse=reverse)
    for _ in range(200):
        p, a = task.sample(rng)
        x, y = (int(v) for v in p.rstrip("=").split("+"))
        want = str(x + y).zfill(4 if pad else 1)
        assert a == (want[::-1] if reverse else want), (p, a)
        if pad:
            assert len(p) == 8 and len(a) == 4
        assert task.verify(p, " " + a + "\n") and not task.verify(p, a + "1")


def _problems(digits):
    return [f"{a:0{digits}d}+{b:0{digits}d}=" for a in range(10 ** digits) for b in range(10 ** digits)]


@pytest.mark.parametrize("k", [10, 25])
def test_addition_split_size_and_stability(k):
    task = D.Addition(digits=2, pad=True, holdout=k)
    held = [p for p in _problems(2) if task.held_out(p)]
    assert abs(len(held) - 10_000 / k) < 4 * np.sqrt(10_000 / k)  # a fair hash: about 1 in k
    # the split depends on the operands only, not on the layout of the answer
    rev = D.Addition(digits=2, pad=True, reverse=True, holdout=k)
    assert held == [p for p in _problems(2) if rev.held_out(p)]
    assert D.Addition(digits=2, pad=True).held_out("07+42=") is None  # no split without holdout


def test_training_batches_never_hold_evaluation_problems():
    task = TR.make_task("addition")
    evalset = D.heldout(task, 200)
    assert len({p for p, _ in evalset}) == 200
    assert all(task.held_out(p) for p, _ in evalset)
    seen = set()
    for batch in D.batches(task, TOK, 32, 48, seed=int(np.random.default_rng().integers(1 << 30)), steps=40):
        for row in batch.tokens:
            text = "".join(TOK.decode([int(t)]) if int(t) > 2 else "|" for t in row)
            for piece in text.split("|"):
                if "=" in piece:
                    seen.add(piece[:piece.index("=") + 1])
    assert len(seen) > 3000  # 40 batches of about 4 problems a row cover much of the 10,000
    assert not any(task.held_out(p) for p in seen)
    assert not seen & {p for p, _ in evalset}
