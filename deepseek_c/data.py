"""Built-in data: small, automatically verifiable tasks with a character tokenizer, and
user data from a text file (bytes) or a NumPy token array.

    tok = dsc.data.CharTokenizer()
    task = dsc.data.Addition(digits=3)
    for batch in dsc.data.batches(task, tok, batch_size=32, seq_len=32, seed=0):
        model.train_step(batch.tokens, batch.targets)
    prompt, answer = task.sample(rng)           # "123+45=", "168"
    task.verify(prompt, generated_text)         # exact match

Every example is ``<bos> prompt answer <eos>``; targets are the next tokens, with the
prompt positions masked by IGNORE_INDEX so the loss measures the answer only.
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

__all__ = [
    "IGNORE_INDEX", "CharTokenizer", "ByteTokenizer", "VocabTokenizer", "save_vocab", "Task", "Addition", "Sorting", "Copy", "Reverse",
    "Mixture", "Batch", "batches", "heldout", "TokenStream", "TASKS",
]

IGNORE_INDEX = -100


def _escape(token: bytes) -> str:
    """One vocab.txt line for a token: printable ASCII as is (but a backslash), the rest
    as \\n, \\t, \\r or \\xHH escapes, so that every token is one line."""
    out = []
    for b in token:
        if b == 0x5C:
            out.append("\\\\")
        elif b == 0x0A:
            out.append("\\n")
        elif b == 0x09:
            out.append("\\t")
        elif b == 0x0D:
            out.append("\\r")
        elif 0x21 <= b <= 0x7E:
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out)


def _unescape(line: str, where: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(line):
        c = line[i]
        if c != "\\":
            out += c.encode("utf-8")
            i += 1
            continue
        nxt = line[i + 1:i + 2]
        if nxt in ("\\", "n", "t", "r"):
            out += {"\\": b"\\", "n": b"\n", "t": b"\t", "r": b"\r"}[nxt]
            i += 2
        elif nxt == "x" and len(line) >= i + 4:
            try:
                out.append(int(line[i + 2:i + 4], 16))
            except ValueError:
                raise ValueError(f"{where}: bad escape {line[i:i + 4]!r}") from None
            i += 4
        else:
            raise ValueError(f"{where}: bad escape {line[i:i + 2]!r}")
    return bytes(out)


def _is_special(line: str) -> bool:
    return len(line) >= 3 and line.startswith("<") and line.endswith(">")


def save_vocab(tok, path: str | os.PathLike) -> None:
    """Write the tokenizer's vocabulary as vocab.txt: line i holds token i; special tokens
    as <name>; token bytes escaped (\\\\, \\n, \\t, \\r, \\xHH). C programs
    (examples/c/generate.c) and VocabTokenizer read it back."""
    lines = []
    for i in range(tok.vocab_size):
        lines.append(tok.token_text(i))
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


class CharTokenizer:
    """Characters of the built-in tasks plus <pad>=0, <bos>=1, <eos>=2."""

    SPECIALS = ("<pad>", "<bos>", "<eos>")
    CHARS = "0123456789+=:|>abcdefghijklmnopqrstuvwxyz ,"

    def __init__(self) -> None:
        self.itos = list(self.SPECIALS) + list(self.CHARS)
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"CharTokenizer.encode: text: character {e.args[0]!r} is not in the vocabulary "
                             f"{self.CHARS!r}") from None

    def decode(self, ids: Sequence[int], stop_at_eos: bool = True) -> str:
        out = []
        for i in ids:
            i = int(i)
            if stop_at_eos and i == self.eos_id:
                break
            if 0 <= i < len(self.itos) and i >= len(self.SPECIALS):
                out.append(self.itos[i])
        return "".join(out)

    def token_text(self, i: int) -> str:
        """Token i as a vocab.txt line (see save_vocab)."""
        return self.itos[i] if i < len(self.SPECIALS) else _escape(self.itos[i].encode())


class ByteTokenizer:
    """Bytes 0..255 as ids 3..258, plus <pad>=0, <bos>=1, <eos>=2 (for user text)."""

    def __init__(self) -> None:
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    @property
    def vocab_size(self) -> int:
        return 259

    def encode(self, text: str | bytes) -> list[int]:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return [b + 3 for b in data]

    def decode(self, ids: Sequence[int], stop_at_eos: bool = True) -> str:
        out = bytearray()
        for i in ids:
            i = int(i)
            if stop_at_eos and i == self.eos_id:
                break
            if 3 <= i < 259:
                out.append(i - 3)
        return out.decode("utf-8", errors="replace")

    def token_text(self, i: int) -> str:
        """Token i as a vocab.txt line (see save_vocab)."""
        return ("<pad>", "<bos>", "<eos>")[i] if i < 3 else _escape(bytes([i - 3]))


class VocabTokenizer:
    """The tokenizer of a checkpoint's vocab.txt (save_vocab's format): encoding takes the
    longest vocabulary entry at each position, decoding joins the tokens' bytes; special
    tokens (<pad>, <bos>, <eos>) are never matched in text and never printed."""

    def __init__(self, path: str | os.PathLike) -> None:
        p = os.fspath(path)
        if os.path.isdir(p):
            p = os.path.join(p, "vocab.txt")
        with open(p, encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        self.tokens: list[Optional[bytes]] = []
        self.names: dict[str, int] = {}
        for i, line in enumerate(lines):
            if _is_special(line):
                self.tokens.append(None)
                self.names[line] = i
            else:
                self.tokens.append(_unescape(line, f"{p}: line {i + 1}"))
        self.pad_id = self.names.get("<pad>", -1)
        self.bos_id = self.names.get("<bos>", -1)
        self.eos_id = self.names.get("<eos>", -1)
        self._by_bytes = {t: i for i, t in enumerate(self.tokens) if t is not None}
        self._longest = max((len(t) for t in self._by_bytes), default=1)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str | bytes) -> list[int]:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        out, i = [], 0
        while i < len(data):
            for n in range(min(self._longest, len(data) - i), 0, -1):
                t = self._by_bytes.get(data[i:i + n])
                if t is not None:
                    out.append(t)
                    i += n
                    break
            else:
                raise ValueError(f"VocabTokenizer.encode: text: byte {data[i:i + 1]!r} at offset {i} is in no "
                                 f"token of the vocabulary")
        return out

    def decode(self, ids: Sequence[int], stop_at_eos: bool = True) -> str:
        out = bytearray()
        for i in ids:
            i = int(i)
            if stop_at_eos and i == self.eos_id:
                break
            if 0 <= i < len(self.tokens) and self.tokens[i] is not None:
                out += self.tokens[i]
        return out.decode("utf-8", errors="replace")


class Task(abc.ABC):
    """A generator of (prompt, answer) pairs with an exact-match verifier."""

    name = "task"

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator) -> tuple[str, str]:
        """One (prompt, answer) pair."""

    @abc.abstractmethod
    def answer(self, prompt: str) -> str:
        """The correct answer for a prompt (used by verify)."""

    def verify(self, prompt: str, output: str) -> bool:
        return output.strip() == self.answer(prompt)

    def held_out(self, prompt: str) -> Optional[bool]:
        """Which split a prompt is in: True for evaluation only (never trained on), False for
        training, None when the task has no split (evaluation problems only differ by seed)."""
        return None

    @property
    @abc.abstractmethod
    def max_len(self) -> int:
        """Characters of the longest prompt + answer."""


@dataclass
class Addition(Task):
    """"a+b=" -> "c" with up to `digits` digits per operand. With `pad`, every number has a
    fixed width: operands `digits` digits, the sum `digits` + 1 ("07+42=049"), so each answer
    digit sits at a fixed distance from the operand digits it depends on, which a small model
    learns far more reliably than the variable-width layout. With `reverse`, the sum is written
    least-significant digit first ("07+42=940"): each answer digit then needs only the two
    operand digits of its place and the carry out of the digit written just before it, instead
    of the whole carry chain at the first answer token. With `holdout` = k > 0, one problem in k
    (by a fixed hash of the operands) is kept for evaluation and never drawn for training."""

    digits: int = 3
    name: str = "addition"
    pad: bool = False
    reverse: bool = False
    holdout: int = 0

    def sample(self, rng: np.random.Generator) -> tuple[str, str]:
        a = int(rng.integers(0, 10 ** self.digits))
        b = int(rng.integers(0, 10 ** self.digits))
        w = self.digits if self.pad else 1
        p = f"{a:0{w}d}+{b:0{w}d}="
        return p, self.answer(p)

    def answer(self, prompt: str) -> str:
        a, b = prompt.rstrip("=").split("+")
        s = f"{int(a) + int(b):0{self.digits + 1 if self.pad else 1}d}"
        return s[::-1] if self.reverse else s

    def held_out(self, prompt: str) -> Optional[bool]:
        if self.holdout <= 0:
            return None
        a, b = prompt.rstrip("=").split("+")
        # a fixed multiplicative hash of the pair, the same on every machine and Python
        h = ((int(a) * 1_000_003 + int(b)) * 2_654_435_761) % (1 << 32)
        return (h >> 16) % self.holdout == 0

    @property
    def max_len(self) -> int:
        return 2 * self.digits + 2 + self.digits + 1


@dataclass
class Sorting(Task):
    """"s:3142=" -> "1234" (digits sorted ascending)."""

    length: int = 6
    name: str = "sorting"

    def sample(self, rng: np.random.Generator) -> tuple[str, str]:
        n = int(rng.integers(2, self.length + 1))
        p = "s:" + "".join(str(int(d)) for d in rng.integers(0, 10, n)) + "="
        return p, self.answer(p)

    def answer(self, prompt: str) -> str:
        return "".join(sorted(prompt[2:-1]))

    @property
    def max_len(self) -> int:
        return 2 * self.length + 3


@dataclass
class Copy(Task):
    """"c:abc=" -> "abc"."""

    length: int = 8
    name: str = "copy"

    def sample(self, rng: np.random.Generator) -> tuple[str, str]:
        n = int(rng.integers(1, self.length + 1))
        s = "".join(chr(ord("a") + int(c)) for c in rng.integers(0, 26, n))
        p = f"c:{s}="
        return p, self.answer(p)

    def answer(self, prompt: str) -> str:
        return prompt[2:-1]

    @property
    def max_len(self) -> int:
        return 2 * self.length + 3


@dataclass
class Reverse(Task):
    """"r:abc=" -> "cba"."""

    length: int = 8
    name: str = "reverse"

    def sample(self, rng: np.random.Generator) -> tuple[str, str]:
        n = int(rng.integers(1, self.length + 1))
        s = "".join(chr(ord("a") + int(c)) for c in rng.integers(0, 26, n))
        p = f"r:{s}="
        return p, self.answer(p)

    def answer(self, prompt: str) -> str:
        return prompt[2:-1][::-1]

    @property
    def max_len(self) -> int:
        return 2 * self.length + 3


class Mixture(Task):
    """Uniform mixture of tasks; the prompt's prefix tells which task answers it."""

    name = "mixture"

    def __init__(self, tasks: Sequence[Task]):
        if not tasks:
            raise ValueError("Mixture: tasks: expected at least one task, got none")
        self.tasks = list(tasks)

    def sample(self, rng: np.random.Generator) -> tuple[str, str]:
        return self.tasks[int(rng.integers(len(self.tasks)))].sample(rng)

    def _owner(self, prompt: str) -> Task:
        for t in self.tasks:
            if isinstance(t, Addition) and "+" in prompt:
                return t
            if isinstance(t, Sorting) and prompt.startswith("s:"):
                return t
            if isinstance(t, Copy) and prompt.startswith("c:"):
                return t
            if isinstance(t, Reverse) and prompt.startswith("r:"):
                return t
        raise ValueError(f"Mixture.answer: prompt: no task recognizes {prompt!r}")

    def answer(self, prompt: str) -> str:
        return self._owner(prompt).answer(prompt)

    @property
    def max_len(self) -> int:
        return max(t.max_len for t in self.tasks)


TASKS = {"addition": Addition, "sorting": Sorting, "copy": Copy, "reverse": Reverse}


@dataclass
class Batch:
    """tokens [B, T] int32, targets [B, T] int32 (IGNORE_INDEX where no loss is taken)."""

    tokens: np.ndarray
    targets: np.ndarray


def _pack(task: Task, tok, rng: np.random.Generator, batch_size: int, seq_len: int) -> Batch:
    """Fill each row with whole examples <bos> prompt answer <eos>, pad the rest."""
    tokens = np.full((batch_size, seq_len), tok.pad_id, np.int32)
    targets = np.full((batch_size, seq_len), IGNORE_INDEX, np.int32)
    for b in range(batch_size):
        pos = 0
        while True:
            p, a = task.sample(rng)
            while task.held_out(p):  # evaluation problems are never trained on
                p, a = task.sample(rng)
            ids_p = [tok.bos_id] + tok.encode(p)
            ids_a = tok.encode(a) + [tok.eos_id]
            ex = ids_p + ids_a
            if pos + len(ex) > seq_len:
                if pos == 0:
                    raise ValueError(f"batches: seq_len: expected at least {len(ex)} to hold one example, got {seq_len}")
                break
            tokens[b, pos:pos + len(ex)] = ex
            # position i predicts token i+1: answer tokens (and <eos>) are targets
            start = pos + len(ids_p) - 1
            targets[b, start:start + len(ids_a)] = ids_a
            pos += len(ex)
    return Batch(tokens, targets)


def batches(task: Task, tok, batch_size: int, seq_len: int, seed: int = 0,
            steps: Optional[int] = None) -> Iterator[Batch]:
    """An endless (or `steps`-long) stream of packed training batches."""
    if batch_size < 1 or seq_len < 2:
        raise ValueError(f"batches: batch_size, seq_len: expected >= 1 and >= 2, got {batch_size}, {seq_len}")
    rng = np.random.default_rng(seed)
    i = 0
    while steps is None or i < steps:
        yield _pack(task, tok, rng, batch_size, seq_len)
        i += 1


def heldout(task: Task, n: int, seed: int = 12345, exclude: Optional[set] = None) -> list[tuple[str, str]]:
    """n distinct (prompt, answer) pairs for evaluation, from a separate seed and, where the task
    has a split (`Task.held_out`), from its evaluation split only."""
    rng = np.random.default_rng(seed)
    out, seen = [], set(exclude or ())
    tries = 0
    while len(out) < n and tries < 1000 * n:
        p, a = task.sample(rng)
        tries += 1
        if p in seen or task.held_out(p) is False:
            continue
        seen.add(p)
        out.append((p, a))
    return out


class TokenStream:
    """Random training windows from a token array (a text file's bytes, or user ids)."""

    def __init__(self, ids: np.ndarray, vocab_size: int):
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise ValueError(f"TokenStream: ids: expected a 1-D integer array, got {ids.dtype} with shape {ids.shape}")
        if ids.size < 2:
            raise ValueError(f"TokenStream: ids: expected at least 2 tokens, got {ids.size}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"TokenStream: ids: expected values in [0, {vocab_size}), got [{lo}, {hi}]")
        self.ids = ids.astype(np.int32)
        self.vocab_size = vocab_size

    @classmethod
    def from_text_file(cls, path: str | os.PathLike) -> "TokenStream":
        with open(path, "rb") as f:
            data = f.read()
        tok = ByteTokenizer()
        return cls(np.frombuffer(data, np.uint8).astype(np.int32) + 3, tok.vocab_size)

    def batches(self, batch_size: int, seq_len: int, seed: int = 0) -> Iterator[Batch]:
        if self.ids.size < seq_len + 1:
            raise ValueError(f"TokenStream.batches: seq_len: expected at most {self.ids.size - 1} for this data, got {seq_len}")
        rng = np.random.default_rng(seed)
        while True:
            starts = rng.integers(0, self.ids.size - seq_len, batch_size)
            win = np.stack([self.ids[s:s + seq_len + 1] for s in starts])
            yield Batch(np.ascontiguousarray(win[:, :-1]), np.ascontiguousarray(win[:, 1:]))
