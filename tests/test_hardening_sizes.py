"""Sizes that used to crash or wrap: each is now a clean error before anything is allocated.

Every input here crashed (SIGSEGV, heap overflow under ASan) or silently wrapped a size
before checked size arithmetic: an element count that wraps in dsc.empty, config fields
whose int32 sums wrap, a parameter count beyond int64, a model far larger than the
machine, a checkpoint whose tensors do not match its config. Each case runs in a child
process, so a regression shows up as a crash of the child, not of the test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import deepseek_c as dsc

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_child(body: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run `body` in a fresh interpreter (deepseek_c importable as in this run); the body
    prints OK when the expected exception came."""
    env = dict(os.environ)
    pkg_dir = os.path.dirname(os.path.dirname(os.path.abspath(dsc.__file__)))
    env["PYTHONPATH"] = pkg_dir + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    src = "import deepseek_c as dsc, numpy as np, pytest\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", src], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=_ROOT)


def assert_child_ok(p: subprocess.CompletedProcess) -> None:
    out = (p.stdout + p.stderr)[-3000:]
    assert p.returncode == 0, f"child exited with {p.returncode} (negative: killed by a signal):\n{out}"
    assert "OK" in p.stdout, out


def expect_raises(exc: str, match: str, stmt: str) -> str:
    """Child code: `stmt` must raise `exc` whose message matches `match`."""
    return f"""
with pytest.raises({exc}, match={match!r}):
    {stmt}
print("OK")
"""


# ----------------------------------------------------------------------------- dsc.empty


@pytest.mark.parametrize("shape", [(2**62 + 1, 4), (2**61, 4), (0, 2**62, 2**62), (2**32, 2**32)])
def test_empty_refuses_shapes_whose_bytes_overflow(shape):
    # (2**62 + 1, 4) float32 used to allocate 16 bytes (the element count wrapped) and the
    # next op walked off its end
    p = run_child(expect_raises("ValueError", r"shape: expected a shape whose size in bytes fits in 64 bits",
                                f"dsc.empty({shape!r})"))
    assert_child_ok(p)


def test_empty_names_the_shape_in_the_message():
    with pytest.raises(ValueError, match=r"got \(4611686018427387905, 4\) of float32"):
        dsc.empty((2**62 + 1, 4))


def test_empty_still_makes_ordinary_and_empty_tensors():
    for shape, n in (((3, 5), 15), ((0, 7), 0), ((), 1)):
        t = np.from_dlpack(dsc.empty(shape))
        assert t.shape == shape and t.size == n


def test_empty_too_large_for_memory_is_a_memory_error():
    with pytest.raises(MemoryError):
        dsc.empty((2**50,), "uint8")  # 1 PiB: fits in 64 bits, not in any machine


# ----------------------------------------------------------------------------- configs


def _cfg_stmt(**keys) -> str:
    kw = ", ".join(f"{k}={v!r}" for k, v in keys.items())
    return f"dsc.Model(dsc.ModelConfig.tiny({kw}))"


CRASH_CONFIGS = {
    # issue 14 item 1: the parameter count overflowed int64 -> heap overflow in dsc_model_create
    "moe_overflow": (dict(moe_intermediate_size=1969458275, n_routed_experts=29775, hidden_size=2**20,
                          n_group=1, topk_group=1), "moe_intermediate_size"),
    # item 2: int32 sums that wrapped
    "kv_lora_rank": (dict(kv_lora_rank=2**31 - 1), "kv_lora_rank"),
    "qk_nope_plus_v": (dict(qk_nope_head_dim=2**31 - 100, v_head_dim=200), "qk_nope_head_dim"),
    "layers_plus_mtp": (dict(num_hidden_layers=2**31 - 1, num_nextn_predict_layers=1), "num_hidden_layers"),
    "hidden_size": (dict(hidden_size=2**31 - 1), "hidden_size"),
    # touched 1.2 GB before its <= 8 check
    "mtp_depth": (dict(num_nextn_predict_layers=10**6), "num_nextn_predict_layers"),
    "vocab": (dict(vocab_size=2**31 - 1), "vocab_size"),
    "heads": (dict(num_attention_heads=2**31 - 1), "num_attention_heads"),
    "experts": (dict(n_routed_experts=2**31 - 1, n_group=1, topk_group=1), "n_routed_experts"),
}


@pytest.mark.parametrize("case", sorted(CRASH_CONFIGS))
def test_config_out_of_range_is_a_clean_error(case):
    keys, field = CRASH_CONFIGS[case]
    p = run_child(expect_raises("ValueError", field, _cfg_stmt(**keys)))
    assert_child_ok(p)


def test_parameter_count_beyond_int64_is_refused():
    # every field within its bound, the total over layers past 2^63
    keys = dict(hidden_size=2**20, n_routed_experts=2**16, moe_intermediate_size=2**22,
                num_hidden_layers=2**12, n_group=1, topk_group=1, first_k_dense_replace=0)
    p = run_child(expect_raises("ValueError", "parameter count fits in 64 bits", _cfg_stmt(**keys)))
    assert_child_ok(p)


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


def test_v3_on_this_machine_fails_fast_with_the_sizes():
    """ModelConfig() / v3() needs 2.7 TB of float32 parameters: the error says so before
    allocating (the message only comes from the check that runs before any allocation)."""
    if not 0 < _ram_bytes() < 2 * 2**40:
        pytest.skip("a machine with 2 TiB of RAM or more (or of unknown size) might hold V3")
    for cfg in (dsc.ModelConfig.v3(), dsc.ModelConfig()):
        with pytest.raises(MemoryError, match=r"the model needs 2\.\d+ TiB of float32 parameters, "
                                              r"this machine has .* of RAM"):
            dsc.Model(cfg)


def test_real_deepseek_configs_validate():
    # the C parser validates what it parses: V3 and V2-Lite stay valid under the bounds
    for cfg in (dsc.ModelConfig.v3(), dsc.ModelConfig.v2_lite()):
        d = json.loads(dsc._C.config_normalize(cfg.to_json()))
        assert d["hidden_size"] == cfg.hidden_size and d["num_hidden_layers"] == cfg.num_hidden_layers
    v3 = dict(dsc.ModelConfig.v3().to_dict())
    # with room: 8x the hidden size, 16x the experts, 4x the layers still validate
    v3.update(hidden_size=7168 * 8, n_routed_experts=256 * 16, num_hidden_layers=61 * 4)
    dsc._C.config_normalize(json.dumps(v3))


# ----------------------------------------------------------------------------- checkpoints


def _write_checkpoint(tmp_path, cfg_updates: dict) -> str:
    """A tiny model's checkpoint with its config.json replaced by one with cfg_updates."""
    d = tmp_path / "ckpt"
    m = dsc.Model(dsc.ModelConfig.tiny(num_nextn_predict_layers=0))
    m.save(str(d))
    with open(d / "config.json") as f:
        c = json.load(f)
    c.update(cfg_updates)
    with open(d / "config.json", "w") as f:
        json.dump(c, f)
    return str(d)


def test_from_pretrained_with_a_crash_config_is_a_clean_error(tmp_path):
    d = _write_checkpoint(tmp_path, dict(moe_intermediate_size=1969458275, n_routed_experts=29775,
                                         hidden_size=2**20, n_group=1, topk_group=1))
    p = run_child(expect_raises("ValueError", "moe_intermediate_size", f"dsc.Model.from_pretrained({d!r})"))
    assert_child_ok(p)


def test_from_pretrained_checks_tensors_before_allocating(tmp_path):
    """config.json says ~4 GiB of parameters, the shards hold a tiny model's tensors. The
    shapes are checked from the headers before the arena is allocated: under a 2 GiB
    address-space limit the load fails on the first wrong shape, not on the allocation
    (before the fix: MemoryError from allocating the arena first)."""
    if sys.platform != "linux":
        pytest.skip("RLIMIT_AS semantics are Linux's")
    if _ram_bytes() < 8 * 2**30:
        pytest.skip("the 4 GiB config must pass the RAM check to reach the tensor checks")
    d = _write_checkpoint(tmp_path, dict(vocab_size=2**20, hidden_size=512, num_attention_heads=4,
                                         tie_word_embeddings=False))
    body = f"""
import resource
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
try:
    dsc.Model.from_pretrained({d!r})
except ValueError as e:
    assert "expected shape" in str(e), e
    print("OK")
"""
    p = run_child(body)
    assert_child_ok(p)


def test_from_pretrained_v3_config_fails_fast(tmp_path):
    if not 0 < _ram_bytes() < 2 * 2**40:
        pytest.skip("a machine with 2 TiB of RAM or more (or of unknown size) might hold V3")
    d = tmp_path / "v3"
    os.makedirs(d)
    (d / "config.json").write_text(dsc.ModelConfig.v3().to_json())
    with pytest.raises(MemoryError, match="of float32 parameters"):
        dsc.Model.from_pretrained(str(d))
