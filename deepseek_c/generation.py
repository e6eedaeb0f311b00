"""Generation with the C model and its paged MLA latent cache (``dsc_model_generate``).

    out = dsc.generate(model, [[1, 5, 6], [2, 3]], max_new_tokens=32)          # greedy
    out = dsc.generate(model, prompts, temperature=0.8, top_p=0.95, seed=1)    # sampling
    out = dsc.generate(model, prompts, speculative="mtp", num_draft=2)         # MTP drafts
    out.tokens, out.accept_rate, out.tokens_per_s
    for tok in dsc.stream(model, [1, 5, 6], max_new_tokens=32): ...

All prompts are prefilled together (ragged, one batch), then decoded step by step; a
sequence stops after ``eos_token_id`` (kept in its output) or ``max_new_tokens``.
Sampling applies temperature, then top_k, then top_p (the smallest set of most likely
tokens whose probability reaches top_p); each prompt draws from its own seeded stream.
With ``speculative="mtp"`` the model's first MTP module drafts ``num_draft`` tokens per step
(draft 1 from the main model's hidden state, the next ones by chaining the module) and the
main model verifies them in one multi-token step: greedy output is identical to plain
greedy decoding, and sampled output follows the main model's distribution (speculative
sampling). See ``dsc_model_generate`` in deepseek_c.h for the details.
"""

from __future__ import annotations

import math
import numbers
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np

from . import _C
from ._arrays import parse_dtype

__all__ = ["GenerateOutput", "generate", "stream"]

_CACHE_DTYPES = ("float32", "bfloat16", "float8_e4m3fn")
_MAX_DRAFT = 16
_EOS_FROM_CONFIG = -2


@dataclass(eq=False)
class GenerateOutput:
    """The new tokens of each prompt and the statistics of the call.

    Behaves as the list ``tokens`` too (``len(out)``, ``out[0]``, iteration, ``out == [[...]]``).
    ``accept_rate`` is accepted / drafted with speculative decoding (None without drafts)."""

    tokens: list
    new_tokens: int = 0
    prompt_tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    main_forwards: int = 0
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    accept_rate: Optional[float] = None

    def __len__(self) -> int:
        return len(self.tokens)

    def __iter__(self):
        return iter(self.tokens)

    def __getitem__(self, i):
        return self.tokens[i]

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, GenerateOutput):
            return self.tokens == other.tokens
        if isinstance(other, list):
            return self.tokens == other
        return NotImplemented

    def __ne__(self, other: Any) -> bool:
        r = self.__eq__(other)
        return r if r is NotImplemented else not r


# ----------------------------------------------------------------------------- arguments


def _int(name: str, v: Any, lo: Optional[int] = None, hi: Optional[int] = None, what: str = "") -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"generate: {name}: expected an int{what}, got {v!r}")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"generate: {name}: expected an int {rng}{what}, got {v}")
    return v


def _prompt_list(p: Any, name: str) -> list:
    if isinstance(p, (str, bytes)):
        raise ValueError(f"generate: {name}: expected token ids, got a {type(p).__name__} "
                         "(encode the text with a tokenizer first)")
    if hasattr(p, "__array__") or hasattr(p, "__dlpack__"):
        a = np.asarray(p)
        if a.ndim != 1:
            raise ValueError(f"generate: {name}: expected a 1-D sequence of token ids, got {a.ndim} dims")
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"generate: {name}: expected integer token ids, got dtype {a.dtype}")
        return [int(x) for x in a]
    try:
        seq = list(p)
    except TypeError:
        raise ValueError(f"generate: {name}: expected a sequence of token ids, got {type(p).__name__}") from None
    for i, x in enumerate(seq):
        if isinstance(x, bool) or not isinstance(x, numbers.Integral):
            raise ValueError(f"generate: {name}: expected integer token ids, got {x!r} at index {i}")
    return [int(x) for x in seq]


def _prompts(prompts: Any) -> list:
    if hasattr(prompts, "__array__") or hasattr(prompts, "__dlpack__"):
        a = np.asarray(prompts)
        if a.ndim != 2:
            raise ValueError(f"generate: prompts: expected a list of token-id lists or a 2-D array, "
                             f"got an array with {a.ndim} dims")
        return [_prompt_list(r, f"prompts[{j}]") for j, r in enumerate(a)]
    if isinstance(prompts, (str, bytes)):
        raise ValueError("generate: prompts: expected a list of token-id lists, got a string")
    try:
        plist = list(prompts)
    except TypeError:
        raise ValueError(f"generate: prompts: expected a list of token-id lists, got "
                         f"{type(prompts).__name__}") from None
    if not plist:
        raise ValueError("generate: prompts: expected at least one prompt, got none")
    if all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in plist):
        raise ValueError("generate: prompts: expected a list of token-id lists, got a flat list of ints "
                         "(pass one prompt as [prompt], or use stream())")
    return [_prompt_list(p, f"prompts[{j}]") for j, p in enumerate(plist)]


def _options(model: Any, max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any, seed: Any,
             eos_token_id: Any, speculative: Any, num_draft: Any, cache_dtype: Any,
             block_size: Any) -> tuple:
    cap = getattr(model, "_cap", None)
    if cap is None:
        raise TypeError(f"generate: model: expected a deepseek_c.Model, got {type(model).__name__}")
    cfg = getattr(model, "cfg", None)
    max_new_tokens = _int("max_new_tokens", max_new_tokens, 0)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
            or not math.isfinite(float(temperature)) or float(temperature) < 0:
        raise ValueError(f"generate: temperature: expected a finite number >= 0 (0: greedy), got {temperature!r}")
    temperature = float(temperature)
    top_k = 0 if top_k is None else _int("top_k", top_k, 0, what=" (None or 0: off)")
    if top_p is None:
        top_p = 1.0
    elif isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not (0.0 < float(top_p) <= 1.0):
        raise ValueError(f"generate: top_p: expected a number in (0, 1] (None or 1: off), got {top_p!r}")
    top_p = float(top_p)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"generate: seed: expected an int, got {seed!r}")
    seed = int(seed) & (2**64 - 1)
    vocab = int(cfg.vocab_size) if cfg is not None else None
    if eos_token_id is None:
        eos = _EOS_FROM_CONFIG
    else:
        e = eos_token_id
        if isinstance(e, (list, tuple)):
            if len(e) != 1:
                raise ValueError(f"generate: eos_token_id: expected one id (or None, -1), got {e!r}")
            e = e[0]
        eos = _int("eos_token_id", e, -1, (vocab - 1) if vocab else None, " (-1: none)")
    if speculative in (None, False, "none", "off", 0):
        spec = 0
    elif speculative in ("mtp", True, 1):
        spec = 1
        if cfg is not None and not int(cfg.num_nextn_predict_layers or 0):
            raise ValueError("generate: speculative: 'mtp' needs a model with MTP modules, got "
                             "num_nextn_predict_layers = 0")
    else:
        raise ValueError(f"generate: speculative: expected None or 'mtp', got {speculative!r}")
    num_draft = _int("num_draft", num_draft, 1, _MAX_DRAFT)
    cdt = parse_dtype(cache_dtype, "generate", "cache_dtype", allowed=_CACHE_DTYPES)
    block_size = _int("block_size", block_size, 1, 65536)
    return cap, (max_new_tokens, temperature, top_k, top_p, seed, eos, spec, num_draft, cdt, block_size)


def _output(tokens: list, st: dict, spec: int) -> GenerateOutput:
    rate = (st["accepted"] / st["drafted"]) if spec and st["drafted"] > 0 else None
    return GenerateOutput(tokens=tokens, new_tokens=int(st["new_tokens"]), prompt_tokens=int(st["prompt_tokens"]),
                          drafted=int(st["drafted"]), accepted=int(st["accepted"]),
                          main_forwards=int(st["main_forwards"]), seconds=float(st["seconds"]),
                          tokens_per_s=float(st["tokens_per_s"]), accept_rate=rate)


# ----------------------------------------------------------------------------- API


def generate(model: Any, prompts: Any, max_new_tokens: int = 16, temperature: float = 0.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, seed: int = 0,
             eos_token_id: Optional[int] = None, speculative: Optional[str] = None, num_draft: int = 1,
             cache_dtype: str = "float32", block_size: int = 64,
             on_token: Optional[Callable[[int, int], Any]] = None) -> GenerateOutput:
    """New tokens for each prompt (a list of token-id lists, or a 2-D array).

    max_new_tokens: per prompt (prompt length + max_new_tokens <= max_position_embeddings).
    temperature: 0 = greedy (argmax, ties to the lowest id); top_k / top_p: None = off.
    seed: sampling seed (each prompt has its own stream: its tokens do not depend on the
    other prompts). eos_token_id: None = the config's, -1 = none; the eos is kept.
    speculative: None or "mtp" (MTP drafts verified by the main model); num_draft: drafts
    per step, 1..16. cache_dtype: "float32", "bfloat16" or "float8_e4m3fn" (the latent
    cache); block_size: tokens per cache block. on_token(seq, token): called for each new
    token in order (plain decoding hands tokens over from the device once per 16 steps, so
    calls come in bursts; DSC_DEVICE_DECODE=0: every step); return True to stop that
    sequence, a negative int to stop all;
    an exception stops generation and is re-raised. It runs in the calling thread, with the
    GIL, while the model's call is paused: it may call ops (dsc.matmul, ...) and other
    models; a call on this same model from it raises deepseek_c.Error (it could only wait
    for itself).

    Returns a GenerateOutput: ``tokens`` (list of lists; the object also acts as that list),
    ``new_tokens``, ``drafted``, ``accepted``, ``accept_rate``, ``seconds``, ``tokens_per_s``."""
    plist = _prompts(prompts)
    cap, opts = _options(model, max_new_tokens, temperature, top_k, top_p, seed, eos_token_id, speculative,
                         num_draft, cache_dtype, block_size)
    if on_token is not None and not callable(on_token):
        raise ValueError(f"generate: on_token: expected a callable or None, got {type(on_token).__name__}")
    tokens, st = _C.model_generate(cap, plist, *opts, on_token)
    return _output(tokens, st, opts[6])


def stream(model: Any, prompt: Any, max_new_tokens: int = 16, **kw: Any) -> Iterator[int]:
    """The new tokens of one prompt (a list of token ids), yielded as they are generated.

    Takes the options of generate(). Generation runs in a background thread; closing the
    generator early stops it. The loop body runs in your thread meanwhile: a call on the
    same model from it waits until the generation has ended (it never waits for the loop). The generator's return value (StopIteration.value) is the
    GenerateOutput of the call. Arguments are checked here, before the first token."""
    if "on_token" in kw:
        raise ValueError("stream: on_token: not accepted (stream yields the tokens itself)")
    p = _prompt_list(prompt, "prompt")
    if not p:
        raise ValueError("stream: prompt: expected at least one token, got an empty prompt")
    cap, opts = _options(model, max_new_tokens, kw.pop("temperature", 0.0), kw.pop("top_k", None),
                         kw.pop("top_p", None), kw.pop("seed", 0), kw.pop("eos_token_id", None),
                         kw.pop("speculative", None), kw.pop("num_draft", 1), kw.pop("cache_dtype", "float32"),
                         kw.pop("block_size", 64))
    if kw:
        raise TypeError(f"stream: unexpected keyword argument(s): {', '.join(sorted(kw))}")
    # from the model's own callback the worker thread would wait for this thread forever
    _C.model_check_reentry(cap, "stream")
    return _stream(cap, p, opts)


_DONE = object()


def _stream(cap: Any, prompt: list, opts: tuple) -> Iterator[int]:
    q: "queue.Queue[Any]" = queue.Queue()
    stop = threading.Event()
    result: dict = {}

    def on_token(seq: int, tok: int) -> int:
        q.put(tok)
        return -1 if stop.is_set() else 0

    def work() -> None:
        try:
            result["out"] = _C.model_generate(cap, [prompt], *opts, on_token)
        except BaseException as e:  # noqa: BLE001  (re-raised in the consumer)
            result["error"] = e
        finally:
            q.put(_DONE)

    t = threading.Thread(target=work, name="deepseek_c.stream", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                break
            yield item
    finally:
        stop.set()
        t.join()
    if "error" in result:
        raise result["error"]
    tokens, st = result["out"]
    return _output(tokens, st, opts[6])
