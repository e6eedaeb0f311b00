"""The small-M float32 GEMM of the CPU backend (cpu/gemm.c small_gemm: op(a) = a with at
most SMALL_M_MAX rows, the decode shapes; more rows go to sgemm, but for generation's decode
steps, which run every M on the small kernels), through matmul (trans_b and not,
alpha/beta) and linear:
  1. against the float64 reference, within the worst-case float32 error of its summation;
  2. the AVX2 kernels bitwise equal to the portable ones: the same calls are repeated in a
     subprocess with DSC_CPU_ISA=generic (read when the context is created, at import) and
     compared, every M;
  3. a row of C bitwise the same whether computed alone or among up to the small-M limit;
  4. generation's decode steps (every M on the small kernels, up to 8 rows per AVX2
     no-trans_b chunk): an fp8 model, where one different bit changes tokens, generates
     the same tokens with DSC_CPU_ISA=generic, batch 8, MTP verifying 3 rows per sequence.
Shapes cover K < 8, K % 8 != 0, N % 4 != 0, N across the 256-column blocks (and the
two-thread split of a large product). Inputs come from a fresh seed, printed (pytest shows
it with a failure)."""

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import deepseek_c as dsc
from _util import poisoned

SMALL_M_MAX, SMALL_M_MAX_AVX2 = 3, 8  # cpu/gemm.c: portable and AVX2 kernels
# (N, K): K < 8, K % 8 != 0, N % 4 != 0, N > 256 (two column blocks), decode shapes of the
# demo model; (1100, 1000) from M = 2 reaches SMALL_PAR_MIN = 2^21 multiply-adds: its
# column blocks are split over the context's threads (M = 1 runs on one).
SHAPES = [(1, 1), (3, 5), (5, 7), (7, 9), (4, 8), (13, 17), (46, 128), (96, 128), (130, 383),
          (384, 128), (257, 100), (600, 40), (1100, 1000)]
MS = [1, 2, 3, 4, 5, SMALL_M_MAX_AVX2, SMALL_M_MAX_AVX2 + 1]
# (alpha, beta): plain, scaled, accumulating, alpha = 0 (a and b not read)
SCALES = [(1.0, 0.0), (0.5, 0.0), (1.5, -0.75), (1.0, 1.0), (0.0, 2.0)]


@pytest.fixture(scope="module")
def seed():
    s = int(np.random.SeedSequence().entropy % (1 << 63))
    print(f"test_gemm_small seed: {s}")
    return s


def make_cases(seed):
    """(spec, arrays) for every case; spec is JSON-able, arrays a dict of float32 arrays."""
    rng = np.random.default_rng(seed)
    specs, arrays = [], {}
    for n, k in SHAPES:
        w = rng.standard_normal((n, k)).astype(np.float32)     # [N, K]
        wt = np.ascontiguousarray(w.T)                          # [K, N]
        arrays[f"w{n}x{k}"], arrays[f"wt{n}x{k}"] = w, wt
        x = rng.standard_normal((max(MS), k)).astype(np.float32)  # [M, K]
        arrays[f"x{n}x{k}"] = x
        for m in MS:
            if n * k > 200_000 and m not in (1, 2, 3, SMALL_M_MAX + 1, SMALL_M_MAX_AVX2):
                continue
            for tb in (True, False):
                for alpha, beta in SCALES:
                    i = len(specs)
                    arrays[f"c{i}"] = rng.standard_normal((m, n)).astype(np.float32)  # [M, N]
                    specs.append(dict(i=i, n=n, k=k, m=m, tb=tb, alpha=alpha, beta=beta))
    return specs, arrays


def compute(specs, arrays):
    """Every case's C (float32), plus linear's y and a bfloat16 linear, in one process."""
    import ml_dtypes

    out = {}
    for s in specs:
        n, k, m = s["n"], s["k"], s["m"]
        a = arrays[f"x{n}x{k}"][:m]
        b = arrays[f"w{n}x{k}"] if s["tb"] else arrays[f"wt{n}x{k}"]
        c = arrays[f"c{s['i']}"].copy() if s["beta"] != 0.0 else poisoned((m, n))
        out[f"c{s['i']}"] = np.asarray(dsc.ops.matmul(a, b, trans_b=s["tb"], alpha=s["alpha"],
                                                      beta=s["beta"], out=c))
    for n, k in SHAPES:
        x, w = arrays[f"x{n}x{k}"], arrays[f"w{n}x{k}"]
        for m in MS:
            out[f"y{n}x{k}m{m}"] = np.asarray(dsc.ops.linear(x[:m], w))  # rows 0 .. m - 1
        for r in range(max(MS)):  # each row alone
            out[f"y{n}x{k}m1r{r}"] = np.asarray(dsc.ops.linear(x[r:r + 1], w))
        for m in (2, 3):  # rows r .. r + m - 1, at every offset in 3 rows
            for r in range(4 - m):
                out[f"y{n}x{k}m{m}r{r}"] = np.asarray(dsc.ops.linear(x[r:r + m], w))
        xb, wb = x.astype(ml_dtypes.bfloat16), w.astype(ml_dtypes.bfloat16)
        out[f"bf{n}x{k}"] = np.asarray(dsc.ops.linear(xb[:2], wb)).view(np.uint16)
    return out


def _has_avx2():
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx2" in line for line in f)
    except OSError:
        return False


def small_m_max():
    """The most rows the small-M kernels take in an op call (on every CPU)."""
    return SMALL_M_MAX


def _child(inp, outp):
    """Entry point of the DSC_CPU_ISA=generic subprocess."""
    with np.load(inp) as z:
        arrays = {key: z[key] for key in z.files}
    specs = json.loads(str(arrays.pop("specs")))
    np.savez(outp, **compute(specs, arrays))


def _run_generic(call: str, cwd) -> None:
    """Run `call` (on this module as t) in a subprocess with DSC_CPU_ISA=generic, importing
    the deepseek_c this process imports."""
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(dsc.__file__)))
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join([pkg_parent, tests_dir, os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, DSC_CPU_ISA="generic", PYTHONPATH=path)
    r = subprocess.run([sys.executable, "-c", f"import test_gemm_small as t; {call}"], env=env, cwd=cwd,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def cases(seed):
    specs, arrays = make_cases(seed)
    return specs, arrays, compute(specs, arrays)


def test_against_float64(cases, seed):
    specs, arrays, got = cases
    small = small_m_max()
    for s in specs:
        n, k, m, alpha, beta = s["n"], s["k"], s["m"], s["alpha"], s["beta"]
        a = arrays[f"x{n}x{k}"][:m].astype(np.float64)
        b = arrays[f"w{n}x{k}"].astype(np.float64).T                       # op(b) [K, N]
        c0 = arrays[f"c{s['i']}"].astype(np.float64)
        want = alpha * (a @ b) + (beta * c0 if beta != 0.0 else 0.0)
        bound = abs(alpha) * (np.abs(a) @ np.abs(b)) + abs(beta) * np.abs(c0)
        # worst-case float32 rounding: ceil(K/8) + 3 additions (lanes + tree) for small M,
        # K for sgemm, + the product, the scaling and the beta term
        adds = -(-k // 8) + 3 if m <= small else k
        rel = (adds + 4) * 2.0 ** -24 * 1.01
        g = got[f"c{s['i']}"].astype(np.float64)
        err = np.abs(g - want)
        bad = ~(err <= rel * bound + 1e-30)
        assert not bad.any(), (f"seed {seed}, case {s}: {bad.sum()} of {bad.size} off, worst "
                               f"|err|/bound {np.max(err / np.maximum(bound, 1e-30))} > {rel}")
    for n, k in SHAPES:  # linear: y = x @ w^T
        x, w = arrays[f"x{n}x{k}"].astype(np.float64), arrays[f"w{n}x{k}"].astype(np.float64)
        for m in MS:
            want, bound = x[:m] @ w.T, np.abs(x[:m]) @ np.abs(w.T)
            adds = -(-k // 8) + 3 if m <= small else k
            err = np.abs(got[f"y{n}x{k}m{m}"] - want)
            assert (err <= (adds + 2) * 2.0 ** -24 * 1.01 * bound + 1e-30).all(), \
                f"seed {seed}: linear N={n} K={k} M={m}"


def test_row_alone_equals_row_among_others(cases, seed):
    """Rows of C computed with any M up to the small-M limit (at any offset) are bitwise
    those computed alone."""
    specs, _, got = cases
    small = small_m_max()
    for n, k in SHAPES:
        alone = [got[f"y{n}x{k}m1r{r}"][0] for r in range(max(MS))]  # [N] each
        among = [(m, 0, got[f"y{n}x{k}m{m}"]) for m in MS if 1 < m <= small]
        among += [(m, r, got[f"y{n}x{k}m{m}r{r}"]) for m in (2, 3) for r in range(4 - m)]
        for m, r, y in among:  # y: rows r .. r + m - 1
            for j in range(m):
                assert y[j].tobytes() == alone[r + j].tobytes(), \
                    f"seed {seed}: N={n} K={k}: row {r + j} alone != row {j} of M={m} at {r}"
    # the same through matmul (trans_b and not, alpha applied): row 0 of every M
    first = {}
    for s in specs:
        if s["m"] > small or s["beta"] != 0.0:  # beta != 0 reads a different c per case
            continue
        key = (s["n"], s["k"], s["tb"], s["alpha"])
        row0 = got[f"c{s['i']}"][0]
        first.setdefault(key, row0)
        assert row0.tobytes() == first[key].tobytes(), f"seed {seed}: {s}: row 0 depends on M"


@pytest.mark.skipif(not _has_avx2(), reason="no AVX2 here: both runs take the portable path")
def test_avx2_bitwise_equals_portable(cases, seed, tmp_path):
    specs, arrays, got = cases
    inp, outp = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(inp, specs=np.array(json.dumps(specs)), **arrays)
    _run_generic(f"t._child({str(inp)!r}, {str(outp)!r})", tmp_path)
    with np.load(outp) as z:
        assert sorted(z.files) == sorted(got)
        diff = [key for key in z.files if z[key].tobytes() != got[key].tobytes()]
    assert not diff, f"seed {seed}: AVX2 != portable (DSC_CPU_ISA=generic) for {diff[:20]}"


def _generate_fp8(seed):
    """Tokens of a frozen fp8 model: batch 8, plain and MTP with 2 drafts (verify steps of
    24 rows; the experts' shares vary)."""
    cfg = dsc.ModelConfig.tiny(vocab_size=512, hidden_size=192, intermediate_size=256, moe_intermediate_size=64,
                               num_hidden_layers=2, n_routed_experts=8, n_group=4, topk_group=2,
                               num_experts_per_tok=2, q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32,
                               qk_rope_head_dim=16, v_head_dim=32, num_attention_heads=4, initializer_range=0.05,
                               eos_token_id=None)
    m = dsc.Model(cfg, seed=seed % (1 << 31), fp8=True).freeze_fp8()
    P = np.random.default_rng(seed).integers(0, cfg.vocab_size, (8, 12)).tolist()
    kw = dict(max_new_tokens=12, eos_token_id=-1)
    return [list(m.generate(P, **kw)), list(m.generate(P, speculative="mtp", num_draft=2, **kw))]


def _child_generate(seed, outp):
    """Entry point of the DSC_CPU_ISA=generic generation subprocess."""
    with open(outp, "w") as f:
        json.dump(_generate_fp8(seed), f)


@pytest.mark.skipif(not _has_avx2(), reason="no AVX2 here: both runs take the portable path")
def test_avx2_generation_equals_portable(seed, tmp_path):
    """Decode steps run every M on the small kernels: the AVX2 ones (3-row tiles over any M,
    8-row no-trans_b chunks) give the portable kernels' bits there too."""
    got = _generate_fp8(seed)
    assert got[0] == got[1]  # greedy MTP == plain (row invariance within one ISA)
    outp = tmp_path / "gen.json"
    _run_generic(f"t._child_generate({seed}, {str(outp)!r})", tmp_path)
    assert json.loads(outp.read_text()) == got, f"seed {seed}: AVX2 and portable decode steps differ"
