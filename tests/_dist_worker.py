"""One rank of a multi-process test (tests/test_dist.py launches it with mpirun):

    mpirun -n W python tests/_dist_worker.py SCENARIO OUTDIR [ARGS...]

Every rank writes OUTDIR/rank<r>.npz (what the test compares with its one-process reference)
or, when the scenario raised, OUTDIR/rank<r>.err (the exception's type and message: the test
checks that every rank failed alike). The inputs are drawn from seeds the test knows, so the
test recomputes them without talking to the ranks."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deepseek_c as dsc  # noqa: E402

# ------------------------------------------------------------------ shared with test_dist.py


def small_cfg(**kw):
    keys = dict(vocab_size=64, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
                n_routed_experts=8, n_group=4, topk_group=2, num_experts_per_tok=2, q_lora_rank=32,
                kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, num_attention_heads=2,
                initializer_range=0.1)
    keys.update(kw)
    return dsc.ModelConfig.tiny(**keys)


def perturb(params: dict) -> None:
    """Norms and correction biases away from their init values (every path matters), the same
    values for a name on every rank and in the one-process model (seeded by the name)."""
    for k, v in params.items():
        if v.ndim == 1:
            rng = np.random.default_rng(zlib.crc32(k.encode()))
            v[...] = 0.05 * rng.standard_normal(v.shape) if k.endswith("bias") else 1 + 0.2 * rng.standard_normal(v.shape)


def batches(cfg, B: int, T: int, steps: int, seed: int = 0):
    """The global batches of a run: tokens and targets [B, T] per step (a few ignored targets)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        tok = rng.integers(0, cfg.vocab_size, (B, T))
        y = rng.integers(0, cfg.vocab_size, (B, T))
        y[:, :2] = -100
        out.append((tok, y))
    return out


def rows(x, rank: int, world: int):
    n = x.shape[0] // world
    return x[rank * n:(rank + 1) * n]


TRAIN = dict(lr=3e-3, bias_update_rate=1e-2, aux_alpha=1e-3, eps=1e-4)  # eps: see test_dist._check_training
B, T, STEPS = 12, 10, 3  # B divisible by 2, 3 and 4 ranks

# ------------------------------------------------------------------ scenarios


def sc_collectives(comm, out, args):
    """Every collective on inputs drawn from (rank, seed); the test recomputes them."""
    r, W = comm.rank, comm.size
    x = np.random.default_rng(100 + r).standard_normal((5, 7)).astype(np.float32)
    res = dict(sum=comm.all_reduce(x), max=comm.all_reduce(x, "max"), gather=comm.all_gather(x))
    xs = np.random.default_rng(200 + r).standard_normal((W, 3)).astype(np.float32)
    res["scatter"] = comm.reduce_scatter(xs)
    b = np.random.default_rng(300 + r).standard_normal(4).astype(np.float32)
    res["bcast"] = comm.broadcast(b, root=W - 1).copy()
    counts = [(r + q) % 3 for q in range(W)]  # rank r sends (r + q) % 3 rows to rank q
    send = np.random.default_rng(400 + r).standard_normal((sum(counts), 2)).astype(np.float32)
    y, rc = comm.all_to_all_v(send, counts)
    res["a2a"], res["a2a_counts"] = y, np.array(rc)
    comm.barrier()
    return res


def _model(comm, cfg, ep, dp, seed=3, **kw):
    m = dsc.Model(cfg, seed=seed, comm=comm, expert_parallel=ep, data_parallel=dp, **kw)
    perturb(m.parameters())
    return m


def sc_train(comm, out, args):
    return _train(comm, args)[0]


def _train(comm, args):
    """STEPS train steps of a model with expert_parallel=args[0], data_parallel=args[1], each rank on
    its rows of the global batch; returns the parameters this rank holds and the step statistics."""
    ep, dp = int(args[0]), int(args[1])
    extra = json.loads(args[2]) if len(args) > 2 else {}
    cfg = small_cfg()
    m = _model(comm, cfg, ep, dp, **extra)
    res = {"init/" + k: np.array(v) for k, v in m.parameters().items()}
    stats = []
    for tok, y in batches(cfg, B, T, STEPS):
        st = m.train_step(rows(tok, comm.rank, comm.size), rows(y, comm.rank, comm.size), **TRAIN)
        stats.append([st["loss"], st["mtp_loss"], st["aux_loss"], st["grad_norm"]])
    res.update({"final/" + k: np.array(v) for k, v in m.parameters().items()})
    res["stats"] = np.array(stats)
    res["parallel"] = np.array([m.parallel[k] for k in ("world", "expert_parallel", "data_parallel",
                                                          "n_local_experts", "first_expert")])
    return res, m


def sc_save(comm, out, args):
    """Train STEPS steps (ep=args[0], dp=args[1]), then save into args[2] (every rank its shard)."""
    res, m = _train(comm, args[:2])
    m.save(args[2])
    return res


def sc_resume(comm, out, args):
    """Load args[2] (saved at any world size) with ep=args[0], dp=args[1], then one more train step."""
    ep, dp = int(args[0]), int(args[1])
    m = dsc.Model.from_pretrained(args[2], comm=comm, expert_parallel=ep, data_parallel=dp)
    res = {"loaded/" + k: np.array(v) for k, v in m.parameters().items()}
    res.update({"m/" + k: np.array(m.optimizer_state(k)[0]) for k in m.parameters()
                if not k.endswith("e_score_correction_bias")})  # no gradient, no moments
    tok, y = batches(small_cfg(), B, T, 1, seed=9)[0]
    st = m.train_step(rows(tok, comm.rank, comm.size), rows(y, comm.rank, comm.size), **TRAIN)
    res.update({"final/" + k: np.array(v) for k, v in m.parameters().items()})
    res["stats"] = np.array([st["loss"], st["grad_norm"], m.step])
    return res


def sc_generate(comm, out, args):
    """Greedy generation, expert parallel over every rank: each rank its own prompts."""
    cfg = small_cfg()
    m = _model(comm, cfg, comm.size, 1)
    rng = np.random.default_rng(5)
    prompts = [list(rng.integers(0, cfg.vocab_size, n)) for n in (3, 5, 4, 6, 2, 7)]
    mine = prompts[comm.rank::comm.size]
    n_new = [6, 3][comm.rank % 2]  # ranks finish at different times: the early one keeps serving experts
    g = m.generate(mine, max_new_tokens=n_new)
    return {f"gen{i}": np.array(t) for i, t in enumerate(g)}


def sc_mismatch(comm, out, args):
    """Rank 1 asks for a different model: every rank must refuse (no rank may wait)."""
    cfg = small_cfg(n_routed_experts=8 if comm.rank != 1 else 4, n_group=4 if comm.rank != 1 else 2)
    _model(comm, cfg, comm.size, 1)
    return {}


def sc_hang(comm, out, args):
    """Rank 1 stops answering after the first step (hung, or gone without a word) for longer
    than the timeout args[0]; the others must fail with CommError within it."""
    comm.set_timeout(float(args[0]))
    cfg = small_cfg()
    m = _model(comm, cfg, comm.size, 1)
    for i, (tok, y) in enumerate(batches(cfg, B, T, STEPS)):
        if i == 1 and comm.rank == 1:
            time.sleep(float(args[1]))
            return {}
        m.train_step(rows(tok, comm.rank, comm.size), rows(y, comm.rank, comm.size), **TRAIN)
    return {}


# ------------------------------------------------------------------ FP8 dispatch, node-limited routing
# (tests/test_dist_routing.py)


def sc_routing_train(comm, out, args):
    """Expert parallel over every rank with args[0] = JSON {"cfg": small_cfg overrides,
    "model": Model options (fp8, ...)}. Records this rank's routing of its rows of the first
    batch, the logits of one forward of them and the bytes that forward sent (stats reset
    just before), then STEPS train steps as sc_train, and the routing of the last batch with
    the trained weights and biases."""
    spec = json.loads(args[0])
    cfg = small_cfg(**spec.get("cfg", {}))
    m = _model(comm, cfg, comm.size, 1, **spec.get("model", {}))
    r, n = comm.rank, comm.size
    res = {"init/" + k: np.array(v) for k, v in m.parameters().items()}
    bt = batches(cfg, B, T, STEPS)
    tok0 = rows(bt[0][0], r, n)
    for layer, rt in m.routing(tok0).items():
        res[f"route0/{layer}"] = rt["indices"]
    m.comm_stats(reset=True)
    res["logits"] = np.array(m.forward(tok0))
    res["fwd_bytes"] = np.array([m.comm_stats()["bytes_sent"]])
    res["max_ranks"] = np.array([m.max_ranks_per_token])
    stats = []
    for tok, y in bt:
        st = m.train_step(rows(tok, r, n), rows(y, r, n), **TRAIN)
        stats.append([st["loss"], st["mtp_loss"], st["aux_loss"], st["grad_norm"]])
    for layer, rt in m.routing(rows(bt[-1][0], r, n)).items():
        res[f"route1/{layer}"] = rt["indices"]
    res.update({"final/" + k: np.array(v) for k, v in m.parameters().items()})
    res["stats"] = np.array(stats)
    return res



def sc_routing_grads(comm, out, args):
    """As sc_routing_train, but no training: the routing, logits and forward bytes of this
    rank's rows of the first batch, then one forward + backward of them (loss_and_grads): the
    loss and the gradients this rank holds (before any reduction over ranks)."""
    spec = json.loads(args[0])
    cfg = small_cfg(**spec.get("cfg", {}))
    m = _model(comm, cfg, comm.size, 1, **spec.get("model", {}))
    tok, y = batches(cfg, B, T, 1)[0]
    tok, y = rows(tok, comm.rank, comm.size), rows(y, comm.rank, comm.size)
    res = {f"route0/{layer}": rt["indices"] for layer, rt in m.routing(tok).items()}
    m.comm_stats(reset=True)
    res["logits"] = np.array(m.forward(tok))
    res["fwd_bytes"] = np.array([m.comm_stats()["bytes_sent"]])
    st, g = m.loss_and_grads(tok, y)
    res.update({"grad/" + k: v for k, v in g.items()})
    res["loss"] = np.array([st["loss"]])
    return res

def main() -> int:
    scenario, out, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    from mpi4py import MPI  # noqa: F401  (initializes MPI with MPI_THREAD_MULTIPLE)

    comm = dsc.Comm.from_mpi()
    try:
        res = globals()["sc_" + scenario](comm, out, args)
    except Exception as e:  # the test reads it: every rank must fail with a clear message
        with open(os.path.join(out, f"rank{comm.rank}.err"), "w") as f:
            f.write(f"{type(e).__name__}: {e}\n")
        traceback.print_exc()
        sys.stderr.flush()
        time.sleep(2)  # the others write theirs before mpirun ends the job on this exit
        os._exit(1)  # not MPI_Abort: the other ranks must find out by themselves
    np.savez(os.path.join(out, f"rank{comm.rank}.npz"), **res)
    return 0


if __name__ == "__main__":
    sys.exit(main())

