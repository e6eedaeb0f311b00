"""Multi-process tests on the CPU (MPI): every collective against NumPy, data-parallel and
expert-parallel training against the one-process model on the concatenated batch, sharded
checkpoints loaded at other world sizes, expert-parallel generation, and failures (a rank that
dies, ranks that disagree) that end with a clear error on every rank instead of a hang.

They launch tests/_dist_worker.py with ``mpirun -n W`` (oversubscribed: CI has 2 cores), one
OpenMP thread per rank; each rank writes what it computed and the test compares it here.
Skipped with the reason when mpirun, mpi4py or the build's MPI backend is missing."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import deepseek_c as dsc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _dist_worker as W  # noqa: E402


def _skip_reason():
    if shutil.which("mpirun") is None:
        return "mpirun not found (apt-get install openmpi-bin libopenmpi-dev)"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py not installed (pip install mpi4py)"
    if not dsc.info().get("mpi"):
        return "this build of deepseek_c has no MPI backend (no mpi.h when it was built)"
    return None


NO_MPI = _skip_reason()  # the MPI tests skip with it (the NCCL test below does not need MPI)


def mpirun(tmp_path, n, scenario, *args, timeout=240, expect_fail=False):
    """Run the scenario on n ranks; returns ([rank r's npz dict], [rank r's error text or None])."""
    if NO_MPI:
        pytest.skip(NO_MPI)
    out = tmp_path / f"{scenario}-{n}-{time.monotonic_ns()}"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PYTHONPATH=HERE)
    cmd = ["mpirun", "--oversubscribe", "-n", str(n), sys.executable, os.path.join(HERE, "_dist_worker.py"),
           scenario, str(out), *map(str, args)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    res, errs = [], []
    for r in range(n):
        f = out / f"rank{r}.npz"
        res.append(dict(np.load(f)) if f.exists() else None)
        e = out / f"rank{r}.err"
        errs.append(e.read_text() if e.exists() else None)
    if not expect_fail:
        assert p.returncode == 0 and all(x is not None for x in res), \
            f"mpirun failed ({p.returncode}): {errs}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return res, errs, p


def one_process(grad_accum, steps=W.STEPS, seed=3):
    """The reference: one process, the global batch, split into grad_accum micro-batches as the
    ranks split it (the distributed loss and gradient are the mean of the ranks' means)."""
    cfg = W.small_cfg()
    m = dsc.Model(cfg, seed=seed)
    W.perturb(m.parameters())
    init = {k: np.array(v) for k, v in m.parameters().items()}
    stats = []
    for tok, y in W.batches(cfg, W.B, W.T, steps):
        st = m.train_step(tok, y, grad_accum=grad_accum, **W.TRAIN)
        stats.append([st["loss"], st["mtp_loss"], st["aux_loss"], st["grad_norm"]])
    return m, init, np.array(stats)


def held(res, prefix):
    return {k[len(prefix):]: v for k, v in res.items() if k.startswith(prefix)}


# ------------------------------------------------------------------ collectives


@pytest.mark.parametrize("n", [2, 3])
def test_collectives_match_numpy(tmp_path, n):
    res, _, _ = mpirun(tmp_path, n, "collectives")
    xs = [np.random.default_rng(100 + r).standard_normal((5, 7)).astype(np.float32) for r in range(n)]
    acc = xs[0].copy()
    for x in xs[1:]:
        acc = acc + x  # rank order, float32: bitwise what every MPI rank computes
    scat = [np.random.default_rng(200 + r).standard_normal((n, 3)).astype(np.float32) for r in range(n)]
    bc = np.random.default_rng(300 + n - 1).standard_normal(4).astype(np.float32)
    sends = [np.random.default_rng(400 + r).standard_normal((sum((r + q) % 3 for q in range(n)), 2))
             .astype(np.float32) for r in range(n)]
    for r, got in enumerate(res):
        np.testing.assert_array_equal(got["sum"], acc)
        np.testing.assert_array_equal(got["max"], np.max(xs, axis=0))
        np.testing.assert_array_equal(got["gather"], np.stack(xs))
        s = scat[0][r].copy()
        for q in range(1, n):
            s = s + scat[q][r]
        np.testing.assert_array_equal(got["scatter"], s)
        np.testing.assert_array_equal(got["bcast"], bc)
        # rank q's rows for rank r: after the rows q sends to ranks 0..r-1
        want = [sends[q][sum((q + p) % 3 for p in range(r)):][:(q + r) % 3] for q in range(n)]
        np.testing.assert_array_equal(got["a2a_counts"], [(q + r) % 3 for q in range(n)])
        np.testing.assert_array_equal(got["a2a"], np.concatenate(want))


# ------------------------------------------------------------------ training


def _check_training(res, ep, dp, n, rtol=1e-5, atol=2e-6):
    # Not bitwise: the ranks sum gradients in another order than one process accumulates its
    # micro-batches (differences ~2e-7 after 3 steps here). Adam's eps is 1e-4 in these runs
    # (W.TRAIN) so that an element with a near-zero gradient does not turn a rounding
    # difference into a move of up to lr; a misrouted or missing gradient moves many elements
    # by O(lr) = 3e-3.
    m, init, stats = one_process(grad_accum=n)
    want = {k: np.array(v) for k, v in m.parameters().items()}
    E = W.small_cfg().n_routed_experts
    covered = set()
    for r, got in enumerate(res):
        world, ep_, dp_, n_local, first = got["parallel"]
        assert (world, ep_, dp_, n_local, first) == (n, ep, dp, E // ep, (r % ep) * (E // ep))
        gi, gf = held(got, "init/"), held(got, "final/")
        assert set(gi) <= set(want)
        covered |= set(gi)
        for k in gi:  # the same initial weights as one process: the same seed, by name
            np.testing.assert_array_equal(gi[k], init[k], err_msg=k)
        for k in gf:
            np.testing.assert_allclose(gf[k], want[k], rtol=rtol, atol=atol, err_msg=f"rank {r}: {k}")
        np.testing.assert_allclose(got["stats"], stats, rtol=1e-5, atol=1e-6)
    assert covered == set(want)  # every expert is somewhere
    for k in want:  # ... and moved during training
        assert not np.array_equal(want[k], init[k]) or k.endswith("bias"), k


@pytest.mark.parametrize("n", [2, 3])
def test_data_parallel_matches_one_process(tmp_path, n):
    res, _, _ = mpirun(tmp_path, n, "train", 1, n)
    _check_training(res, 1, n, n)
    # replicas stay bitwise identical (checked by the model each step too)
    for got in res[1:]:
        for k, v in held(got, "final/").items():
            np.testing.assert_array_equal(v, held(res[0], "final/")[k])


def test_data_parallel_without_overlap_matches(tmp_path):
    res, _, _ = mpirun(tmp_path, 2, "train", 1, 2, json.dumps({"overlap": False}))
    _check_training(res, 1, 2, 2)


def test_expert_parallel_matches_one_process(tmp_path):
    res, _, _ = mpirun(tmp_path, 2, "train", 2, 1)
    _check_training(res, 2, 1, 2)


def test_expert_parallel_two_micro_batches_matches(tmp_path):
    res, _, _ = mpirun(tmp_path, 2, "train", 2, 1, json.dumps({"ep_micro_batches": 2}))
    _check_training(res, 2, 1, 2)


def test_expert_and_data_parallel_matches_one_process(tmp_path):
    res, _, _ = mpirun(tmp_path, 4, "train", 2, 2)
    _check_training(res, 2, 2, 4)


# ------------------------------------------------------------------ checkpoints


def test_sharded_checkpoint_loads_at_other_world_sizes(tmp_path):
    ck = tmp_path / "ckpt"
    res, _, _ = mpirun(tmp_path, 2, "save", 2, 1, ck)
    files = sorted(os.listdir(ck))
    for f in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
              "optimizer-00001-of-00002.safetensors", "optimizer-00002-of-00002.safetensors", "config.json"):
        assert f in files, files
    # one process: every rank's experts, bitwise what the ranks held, and the step
    one = dsc.Model.from_pretrained(ck)
    p1 = {k: np.array(v) for k, v in one.parameters().items()}
    assert set(p1) == set().union(*(held(g, "final/") for g in res))
    for got in res:
        for k, v in held(got, "final/").items():
            np.testing.assert_array_equal(p1[k], v, err_msg=k)
    assert one.step == W.STEPS
    # resume at 2 ranks data-parallel and 4 ranks expert-parallel: the loaded weights and moments
    # are the one-process ones, and the next step is the one-process step on the same batch
    tok, y = W.batches(W.small_cfg(), W.B, W.T, 1, seed=9)[0]
    for n, ep, dp in ((2, 1, 2), (4, 4, 1)):
        ref = dsc.Model.from_pretrained(ck)
        st = ref.train_step(tok, y, grad_accum=n, **W.TRAIN)
        want = {k: np.array(v) for k, v in ref.parameters().items()}
        r2, _, _ = mpirun(tmp_path, n, "resume", ep, dp, ck)
        for got in r2:
            for k, v in held(got, "loaded/").items():
                np.testing.assert_array_equal(v, p1[k], err_msg=k)
                if "m/" + k in got:
                    np.testing.assert_array_equal(got["m/" + k], one.optimizer_state(k)[0], err_msg=k)
            for k, v in held(got, "final/").items():
                np.testing.assert_allclose(v, want[k], rtol=1e-5, atol=2e-6, err_msg=f"{n} ranks: {k}")
            np.testing.assert_allclose(got["stats"][:2], [st["loss"], st["grad_norm"]], rtol=1e-5)
            assert got["stats"][2] == W.STEPS + 1


# ------------------------------------------------------------------ generation


def test_expert_parallel_generation_matches_one_process(tmp_path):
    res, _, _ = mpirun(tmp_path, 2, "generate")
    cfg = W.small_cfg()
    m = dsc.Model(cfg, seed=3)
    W.perturb(m.parameters())
    rng = np.random.default_rng(5)
    prompts = [list(rng.integers(0, cfg.vocab_size, n)) for n in (3, 5, 4, 6, 2, 7)]
    for r, got in enumerate(res):
        want = m.generate(prompts[r::2], max_new_tokens=[6, 3][r])
        assert len(got) == len(want)
        for i, w in enumerate(want):
            np.testing.assert_array_equal(got[f"gen{i}"], w)


# ------------------------------------------------------------------ failures


def test_mismatched_models_fail_on_every_rank(tmp_path):
    t0 = time.monotonic()
    _, errs, p = mpirun(tmp_path, 2, "mismatch", expect_fail=True, timeout=120)
    assert p.returncode != 0
    assert time.monotonic() - t0 < 60  # refused at the agreement, not after a timeout
    for r, e in enumerate(errs):
        assert e is not None, f"rank {r} did not fail: {p.stderr[-2000:]}"
        assert e.startswith("CommError: dsc_model_create: comm: the 2 ranks disagree on the model config"), e


def test_unresponsive_rank_gives_comm_error_not_hang(tmp_path):
    timeout, sleep = 4.0, 40.0
    t0 = time.monotonic()
    _, errs, p = mpirun(tmp_path, 2, "hang", timeout, sleep, expect_fail=True, timeout=120)
    took = time.monotonic() - t0
    assert p.returncode != 0
    assert took < sleep, f"rank 0 waited for rank 1 ({took:.0f} s): no deadline"
    e = errs[0]
    assert e is not None and e.startswith("CommError"), (e, p.stderr[-2000:])
    assert "rank 1" in e or "timed out" in e or "timeout" in e, e


# ------------------------------------------------------------------ the command line


def test_cli_train_under_mpirun(tmp_path):
    if NO_MPI:
        pytest.skip(NO_MPI)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    out = tmp_path / "run"
    outs = {}
    for n, extra in ((1, []), (2, ["--dp", "2"]), (2, ["--ep", "2"])):
        cmd = ["mpirun", "--oversubscribe", "-n", str(n)] if n > 1 else []
        cmd += [sys.executable, "-m", "deepseek_c", "train", "--steps", "4", "--batch", "4", "--seq", "16",
                "--quiet", "--eval", "4", "--out", str(out), *extra]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
        outs[(n, *extra)] = json.loads((out / "summary.json").read_text())
        if n > 1:
            assert "distributed: 2 ranks (mpi)" in p.stdout
            sharded = "--ep" in extra  # a shard per expert-parallel rank; data-parallel replicas: one file
            assert (out / "model-00002-of-00002.safetensors").exists() == sharded
            assert (out / "model.safetensors").exists() == (not sharded)
        shutil.rmtree(out)
    base = outs[(1,)]
    for k, s in outs.items():
        assert s["train_tokens"] == base["train_tokens"] == 4 * 4 * 16
        # the world's loss is the mean of the ranks' means: close to one process's, not equal
        assert abs(s["final_loss"] - base["final_loss"]) < 0.02, (k, s["final_loss"], base["final_loss"])


# ------------------------------------------------------------------ NCCL (GPU machines only)
# Never run where this was written (no GPU): the NCCL backend is only compiled and linked there.


def _has_nccl_gpu():
    d = dsc.info()
    return bool(d.get("nccl")) and bool(d.get("devices"))


@pytest.mark.cuda
@pytest.mark.skipif("not _has_nccl_gpu()", reason="needs a CUDA device and a build with NCCL")
def test_nccl_world_of_one_collectives_and_training():
    c = dsc.Comm.from_nccl_unique_id(dsc.Comm.nccl_unique_id(), 0, 1, device=0)
    assert (c.backend, c.rank, c.size, c.device) == ("nccl", 0, 1, "cuda:0")
    x = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    for op in ("sum", "max"):
        y = c.all_reduce(dsc.tensor(x, device="cuda:0"), op)
        c.synchronize()
        np.testing.assert_array_equal(dsc.to_numpy(y), x)
    g = c.all_gather(dsc.tensor(x, device="cuda:0"))
    c.synchronize()
    np.testing.assert_array_equal(dsc.to_numpy(g), x[None])
    # a distributed model on a world of one: the one-process model's steps
    cfg = W.small_cfg()
    tok, y = W.batches(cfg, W.B, W.T, 1)[0]
    m1 = dsc.Model(cfg, device="cuda:0", seed=3)
    md = dsc.Model(cfg, device="cuda:0", seed=3, comm=c, expert_parallel=1, data_parallel=1)
    for _ in range(2):
        s1 = m1.train_step(tok, y, **W.TRAIN)
        sd = md.train_step(tok, y, **W.TRAIN)
        np.testing.assert_allclose(sd["loss"], s1["loss"], rtol=1e-6)
    p1, pd = m1.parameters(), md.parameters()
    for k in p1:
        np.testing.assert_allclose(dsc.to_numpy(pd[k]), dsc.to_numpy(p1[k]), rtol=1e-5, atol=2e-6, err_msg=k)
