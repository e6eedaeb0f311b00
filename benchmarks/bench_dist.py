"""Expert- and data-parallel training over several processes: throughput, scaling, the share of
the step spent communicating, and the bytes moved per step checked against a count derived
from the algorithms.

    python benchmarks/bench_dist.py                       # ~100M config (bench_train's), W = 1, 2, 4
    python benchmarks/bench_dist.py --quick               # a tiny config: well under a minute
    python benchmarks/bench_dist.py --quick --worlds 1,2 --out /tmp/d
    python benchmarks/bench_dist.py --device cuda         # NCCL, one GPU per rank

Options: --worlds (rank counts, default 1,2,4), --steps / --warmup (timed / untimed steps per
run), --batch / --seq (sequences and tokens per sequence of each rank), --device (cpu: MPI;
cuda: NCCL), --out (directory of the result file, default benchmarks/results). Writes
<out>/dist_<device>_<date>.json; needs mpirun and mpi4py (the ranks are launched with
``mpirun --oversubscribe -n W``, one OpenMP thread per rank; with --device cuda MPI only
carries the NCCL unique id and the timing barriers).

Runs. W = 1 (one rank, the baseline) and, for every other W: expert parallel (ep = W, dp = 1)
with one and with two micro-batches per MoE layer (``ep_micro_batches``: the dispatch/combine
of one micro-batch travels while the other's experts compute), and data parallel (dp = W,
ep = 1) with the gradient reduction overlapping the backward (``overlap``, the default) and
after it. Every rank trains on its own --batch x --seq tokens (weak scaling: the global batch
is W times one rank's), random tokens, lr 1e-3, the default MTP weight.

Measured per run (wall times between MPI barriers, after --warmup steps):
- tokens_per_s: the tokens of all ranks in the timed steps / their wall time;
  efficiency = tokens_per_s / (W * tokens_per_s at W = 1). With more ranks than cores the
  ranks share cores: there the efficiency measures the overhead of the parallel step, not a
  speedup (cpu_count is recorded).
- communication share (Model.comm_stats over the timed steps, each rank, then the mean and
  max over ranks): wait_share = wait_seconds / wall (the time the rank's computation was
  blocked in a collective or waiting for an asynchronous one: communication not hidden);
  busy_share = busy_seconds / wall (the time collectives were in flight, on the
  communicators' worker threads or synchronously; summed over the model's communicators, so
  it can exceed 1 when two are in flight at once); hidden = 1 - wait / busy. On the CPU a
  collective's in-flight time includes waiting for peers that are still computing.
- bytes per step per rank, measured (bytes_sent, bytes_received, ops of Model.comm_stats)
  against the analytic count below, on --accounting-steps further steps. Those steps run as
  Model.loss_and_grads + Model.optimizer_step (the two halves of train_step: the same
  collectives; the reduction runs after the backward instead of overlapping it) because the
  count needs every rank's own expert load, which train_step replaces by the global sum.

Analytic count (rank r of W = ep * dp, rank = dp_index * ep + ep_index; D hidden, E routed
experts, El = E / ep; all counts per optimizer step; "both ways": the rank sends and
receives that much). MPI backend (csrc/dist/comm_mpi.c): messages to other ranks only;

  allreduce(n elements of s bytes over a group of G, rank g in it) =
      G == 1 or n == 0:            0
      n*s*G <= 65536 or n < G:     (G - 1) * n * s          (all-gathered, folded locally)
      else:                        s * (n - n_g + (G - 1) * n_g),  n_g = floor(n(g+1)/G) - floor(ng/G)
                                   (reduce-scatter of chunk g, then all-gather of the chunks)
  NCCL backend (comm_nccl.c counts a ring): allreduce = floor(n * s * 2 (G - 1) / G).

  1. expert-parallel exchange (ep > 1; csrc/dist/ep.c), per MoE block that runs (main layers,
     and the MTP blocks when the MTP loss is on) and per micro-batch (M = ep_micro_batches):
       counts:   El int64 to and from every other rank of the group: (ep - 1) * El * 8 both ways, 1 op
       rows:     the rows this rank routes to experts of other ranks, S = sum over e not local
                 of load_r[e], and the rows the other ranks route to its experts,
                 R = sum over q != r in the group, e local of load_q[e]; a row is D float32.
                 forward dispatch sends S rows and receives R; the combine sends R, receives S;
                 the backward repeats both: 2 * (S + R) * D * 4 bytes both ways, 4 ops.
     (summed over the micro-batches the rows are the block's expert load: per-micro-batch loads
     are not needed.)
  2. gradient sums (csrc/model/model_train.c), per region of the parameter arena (the
     embedding, each layer, the final norm, lm_head, each MTP depth), one all-reduce of float32
     per run of consecutive tensors summed over the same group: expert stacks over the dp
     ranks holding them (when ep > 1), everything else over the world (when ep = 1 the whole
     region is one run); groups of one rank skip. The correction bias (not trained) is inside
     its run.
  3. the global gradient norm (ep > 1): allreduce(1 float64 over the ep group), 1 op.
  4. after the update: allreduce(4 float64 over the world) (losses, tokens) and
     allreduce(blocks * E int64 over the world) (the expert load for the bias update), 2 ops.
  5. the replica check (every step by default): an all-gather of one 8-byte hash over the
     world, (W - 1) * 8 both ways, and one of the routed experts' hash over the dp group when
     dp > 1, (dp - 1) * 8, 1 op each. With ep = 1 that group is the world again and the hash
     is the constant of an empty set (no tensor counts as an expert shard): a redundant
     8-byte all-gather, counted because the code does it (dist_check_params).
  bytes_sent = bytes_received = the sum; ops = the sum of the ops.
The check is exact: measured == analytic on every rank (the ratio 1.0 is recorded).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

SMALL_BYTES = 1 << 16  # comm_mpi.c: an all-reduce this small is all-gathered
ROW_DTYPE_BYTES = 4  # the expert-parallel exchange moves float32 rows (moe_layer.c: D * sizeof(float))


# ----------------------------------------------------------------------- configs

def make_config(quick: bool):
    """(name, config): bench_train's ~100M config, or a tiny one for --quick."""
    from deepseek_c import train as TR
    if quick:
        return "tiny", TR.demo_config(64, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                                      num_hidden_layers=2, num_attention_heads=2, q_lora_rank=32,
                                      kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
                                      n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
                                      max_position_embeddings=128)
    from bench_train import config_100m
    return "100M", config_100m(16000)


def run_plan(worlds: list[int]) -> list[dict]:
    """Every run: W = 1 once, then per W > 1 expert parallel (1 and 2 micro-batches) and data
    parallel (overlapped and not)."""
    plan = []
    for w in worlds:
        if w == 1:
            plan.append(dict(world=1, mode="single", ep=1, dp=1, mb=1, overlap=True))
            continue
        plan.append(dict(world=w, mode="ep", ep=w, dp=1, mb=1, overlap=True))
        plan.append(dict(world=w, mode="ep", ep=w, dp=1, mb=2, overlap=True))
        plan.append(dict(world=w, mode="dp", ep=1, dp=w, mb=1, overlap=True))
        plan.append(dict(world=w, mode="dp", ep=1, dp=w, mb=1, overlap=False))
    return plan


# ----------------------------------------------------------------------- the analytic count

def allreduce_bytes(n: int, s: int, G: int, g: int, backend: str) -> int:
    """Bytes one rank (g of G) sends -- and receives -- for an all-reduce of n values of s bytes."""
    if G == 1 or n == 0:
        return 0
    if backend == "nccl":
        return n * s * 2 * (G - 1) // G
    if n * s * G <= SMALL_BYTES or n < G:
        return (G - 1) * n * s
    n_g = (n * (g + 1)) // G - (n * g) // G
    return s * (n - n_g + (G - 1) * n_g)


def region_runs(names_numel: list[tuple[str, int]]) -> list[list[tuple[bool, int]]]:
    """The parameter arena's regions in order, each a list of (is_expert_stack, numel) tensors
    in arena order, from the model's named tensors (experts one by one, views of their stacks)."""
    regions: list[list[tuple[bool, int]]] = []
    last = None
    for name, numel in names_numel:
        m = re.match(r"model\.layers\.(\d+)\.", name)
        key = ("layer", int(m.group(1))) if m else name  # embed, norm and lm_head: one tensor each
        if key != last:
            regions.append([])
            last = key
        regions[-1].append((".mlp.experts." in name, numel))
    return regions


def analytic(layout: dict, loads: list[dict], backend: str) -> dict:
    """Bytes each way and ops of one optimizer step on rank layout["rank"] (see the docstring).
    layout: world, rank, ep, dp, mb, D, E, moe_blocks (the MoE blocks that run), n_blocks,
    regions (region_runs); loads[q]: {block: [E] rows rank q routed to each expert}."""
    W, r, ep, dp, mb = layout["world"], layout["rank"], layout["ep"], layout["dp"], layout["mb"]
    D, E = layout["D"], layout["E"]
    ep_rank, dp_rank = r % ep, r // ep
    parts = dict(ep_counts=0, ep_rows=0, grad_sum=0, grad_norm=0, step_stats=0, replica_check=0)
    ops = 0
    if ep > 1:
        El = E // ep
        local = range(ep_rank * El, (ep_rank + 1) * El)
        group = [dp_rank * ep + j for j in range(ep)]
        for b in layout["moe_blocks"]:
            mine = np.asarray(loads[r][b], np.int64)
            S = int(mine.sum() - mine[local.start:local.stop].sum())
            R = sum(int(np.asarray(loads[q][b], np.int64)[local.start:local.stop].sum()) for q in group if q != r)
            parts["ep_rows"] += 2 * (S + R) * D * ROW_DTYPE_BYTES
            parts["ep_counts"] += mb * (ep - 1) * El * 8
            ops += 5 * mb
    for reg in layout["regions"]:
        runs: list[list] = []  # [group size, rank in it, numel]
        for is_exp, numel in reg:
            G, g = (dp, dp_rank) if (ep > 1 and is_exp) else (W, r)
            if runs and runs[-1][0] == G and runs[-1][3] == (ep > 1 and is_exp):
                runs[-1][2] += numel
            else:
                runs.append([G, g, numel, ep > 1 and is_exp])
        for G, g, n, _ in runs:
            if G > 1 and n > 0:
                parts["grad_sum"] += allreduce_bytes(n, 4, G, g, backend)
                ops += 1
    if ep > 1:
        parts["grad_norm"] += allreduce_bytes(1, 8, ep, ep_rank, backend)
        ops += 1
    if W > 1:
        parts["step_stats"] += allreduce_bytes(4, 8, W, r, backend)
        parts["step_stats"] += allreduce_bytes(layout["n_blocks"] * max(E, 1), 8, W, r, backend)
        parts["replica_check"] += (W - 1) * 8
        ops += 3
        if dp > 1:  # the experts' hash over the dp group: with ep = 1 a constant (see the docstring)
            parts["replica_check"] += (dp - 1) * 8
            ops += 1
    return dict(bytes=sum(parts.values()), ops=ops, parts=parts)


# ----------------------------------------------------------------------- one rank

def _comm_for(device: str):
    """(world mpi4py communicator, dsc.Comm, device string of this rank)."""
    from mpi4py import MPI

    import deepseek_c as dsc
    world = MPI.COMM_WORLD
    if device == "cpu":
        return world, dsc.Comm.from_mpi(world), "cpu"
    # NCCL, one GPU per rank: the unique id travels over MPI
    local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", os.environ.get("MPI_LOCALRANKID", world.rank)))
    uid = world.bcast(dsc.Comm.nccl_unique_id() if world.rank == 0 else None, root=0)
    return world, dsc.Comm.from_nccl_unique_id(uid, world.rank, world.size, device=local), f"cuda:{local}"


def rank_main(spec: dict, outdir: str) -> None:
    import deepseek_c as dsc
    world, comm, dev = _comm_for(spec["device"])
    r, W = world.rank, world.size
    _, cfg = make_config(spec["quick"])
    model = dsc.Model(cfg, device=dev, seed=0, comm=comm, expert_parallel=spec["ep"], data_parallel=spec["dp"],
                      ep_micro_batches=spec["mb"], overlap=spec["overlap"])
    B, T = spec["batch"], spec["seq"]

    def batch(i):
        rng = np.random.default_rng([i, r])
        tok = rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
        y = np.roll(tok, -1, 1)
        if dev != "cpu":
            tok, y = dsc.tensor(tok, device=dev), dsc.tensor(y, device=dev)
        return tok, y

    i = 0
    for _ in range(spec["warmup"]):
        model.train_step(*batch(i), lr=1e-3)
        i += 1
    model.comm_stats(reset=True)
    world.Barrier()
    t0 = time.perf_counter()
    step_s, losses = [], []
    for _ in range(spec["steps"]):
        ts = time.perf_counter()
        st = model.train_step(*batch(i), lr=1e-3)  # host stats back: the step has finished
        step_s.append(time.perf_counter() - ts)
        losses.append(float(st["loss"]))
        i += 1
    world.Barrier()
    wall = time.perf_counter() - t0
    timed = model.comm_stats()

    # accounting steps: each rank's own expert load, then the step's collectives
    names = list(model.parameters().items())
    n_mtp_run = min(model.n_mtp, T - 1)  # the default MTP weight is > 0: every depth runs
    moe_blocks = [b for b in range(model.n_layers + n_mtp_run) if model.is_moe_layer(b)]
    p = model.parallel
    layout = dict(world=W, rank=r, ep=p["expert_parallel"], dp=p["data_parallel"],
                  mb=spec["mb"] if p["expert_parallel"] > 1 else 1, D=cfg.hidden_size, E=cfg.n_routed_experts,
                  moe_blocks=moe_blocks, n_blocks=model.n_layers + model.n_mtp,
                  regions=region_runs([(n, int(np.prod(v.shape))) for n, v in names]))
    backend = comm.backend
    acct = []
    for _ in range(spec["accounting_steps"]):
        tok, y = batch(i)
        i += 1
        model.comm_stats(reset=True)
        st, _ = model.loss_and_grads(tok, y, scale=1.0 / W)
        model.optimizer_step(lr=1e-3)
        cs = model.comm_stats()
        mine = {int(b): [int(x) for x in c] for b, c in st["expert_load"].items()}
        loads = world.allgather(mine)  # outside the model's communicators: not in cs
        an = analytic(layout, loads, backend)
        acct.append(dict(measured=dict(bytes_sent=cs["bytes_sent"], bytes_received=cs["bytes_received"],
                                       ops=cs["ops"]),
                         analytic=an))
    res = dict(rank=r, world=W, backend=backend, wall_seconds=wall, step_seconds=step_s, losses=losses,
               timed=dict(timed), accounting=acct, params=model.num_parameters(), parallel=dict(p),
               layout={k: v for k, v in layout.items() if k != "regions"})
    with open(os.path.join(outdir, f"rank{r}.json"), "w") as fh:
        json.dump(res, fh)


# ----------------------------------------------------------------------- the driver

def _load() -> dict:
    """The 1-, 5- and 15-minute load averages (other work on the machine makes timings noisy)."""
    try:
        l1, l5, l15 = os.getloadavg()
    except OSError:
        return {}
    return dict(load1=round(l1, 2), load5=round(l5, 2), load15=round(l15, 2))


def check_launch(device: str, worlds: list[int]) -> None:
    """A clear error before launching anything: mpirun, mpi4py, the backend, the GPUs."""
    import deepseek_c as dsc
    if shutil.which("mpirun") is None:
        raise SystemExit("bench_dist: mpirun not found (apt-get install openmpi-bin libopenmpi-dev)")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise SystemExit("bench_dist: mpi4py is not installed (pip install 'deepseek_c[mpi]')") from None
    info = dsc.info()
    if device == "cpu":
        if not info.get("mpi"):
            raise SystemExit("bench_dist: this build of deepseek_c has no MPI backend (no mpi.h at build time: "
                             "install an MPI and reinstall deepseek_c)")
        return
    if not info.get("cuda") or not info.get("nccl"):
        raise SystemExit("bench_dist: --device cuda: this build of deepseek_c has no CUDA backend with NCCL "
                         f"(cuda={info.get('cuda')}, nccl={info.get('nccl')}): build with nvcc and NCCL present")
    n = len(info.get("devices") or [])
    if n < max(worlds):
        raise SystemExit(f"bench_dist: --device cuda: expected one GPU per rank ({max(worlds)} for --worlds "
                         f"{','.join(map(str, worlds))}), found {n} ({info.get('cuda_unavailable_reason', '')})")


def launch(spec: dict, timeout: float) -> list[dict]:
    """Run one configuration on spec["world"] ranks; every rank's result."""
    W = spec["world"]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    with tempfile.TemporaryDirectory(prefix="bench_dist_") as out:
        cmd = ["mpirun", "--oversubscribe", "-n", str(W), sys.executable, os.path.abspath(__file__),
               "--rank-spec", json.dumps(spec), "--rank-out", out]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        files = [os.path.join(out, f"rank{r}.json") for r in range(W)]
        if p.returncode != 0 or not all(os.path.exists(f) for f in files):
            raise SystemExit(f"bench_dist: the run {spec} failed ({p.returncode}):\n{p.stdout[-3000:]}\n"
                             f"{p.stderr[-3000:]}")
        res = []
        for f in files:
            with open(f) as fh:
                res.append(json.load(fh))
        return res


def summarize(spec: dict, ranks: list[dict], tokens_per_step_rank: int) -> dict:
    W = spec["world"]
    wall = max(x["wall_seconds"] for x in ranks)
    steps = spec["steps"]
    tps = W * tokens_per_step_rank * steps / wall
    wait = [x["timed"]["wait_seconds"] / x["wall_seconds"] for x in ranks]
    busy = [x["timed"]["busy_seconds"] / x["wall_seconds"] for x in ranks]
    hidden = [1.0 - x["timed"]["wait_seconds"] / x["timed"]["busy_seconds"] if x["timed"]["busy_seconds"] > 0
              else None for x in ranks]
    per_rank = []
    exact = True
    for x in ranks:
        for k, a in enumerate(x["accounting"]):
            m, an = a["measured"], a["analytic"]
            ok = m["bytes_sent"] == an["bytes"] and m["bytes_received"] == an["bytes"] and m["ops"] == an["ops"]
            exact &= ok
            per_rank.append(dict(rank=x["rank"], step=k, measured_bytes_sent=m["bytes_sent"],
                                 measured_bytes_received=m["bytes_received"], analytic_bytes=an["bytes"],
                                 ratio_sent=round(m["bytes_sent"] / an["bytes"], 6) if an["bytes"] else None,
                                 measured_ops=m["ops"], analytic_ops=an["ops"], analytic_parts=an["parts"]))
    r0 = ranks[0]
    med = float(np.median(r0["step_seconds"]))
    return dict(world=W, mode=spec["mode"], expert_parallel=spec["ep"], data_parallel=spec["dp"],
                ep_micro_batches=spec["mb"], overlap=spec["overlap"], backend=r0["backend"],
                params_per_rank=[x["params"] for x in ranks], timed_steps=steps,
                wall_seconds=round(wall, 3), step_seconds_median_rank0=round(med, 3),
                tokens_per_step=W * tokens_per_step_rank, tokens_per_s=round(tps, 1),
                loss_first_rank0=round(r0["losses"][0], 4),
                comm=dict(wait_share_mean=round(float(np.mean(wait)), 4), wait_share_max=round(max(wait), 4),
                          busy_share_mean=round(float(np.mean(busy)), 4),
                          hidden_mean=round(float(np.mean([h for h in hidden if h is not None])), 4)
                          if any(h is not None for h in hidden) else None,
                          ops_per_step=r0["timed"]["ops"] / steps,
                          bytes_sent_per_step_rank0=r0["timed"]["bytes_sent"] // steps,
                          bytes_received_per_step_rank0=r0["timed"]["bytes_received"] // steps),
                bytes_check=dict(exact=exact, per_rank_step=per_rank))


DEFINITIONS = {
    "tokens_per_s": "tokens of all ranks in the timed steps / wall time of those steps (MPI barriers before and "
                    "after; the slowest rank's wall); warm-up steps excluded",
    "efficiency": "tokens_per_s / (world * tokens_per_s of the world-1 run). Weak scaling: every rank trains "
                  "batch x seq tokens per step. On a machine with fewer cores than ranks the ranks share cores, "
                  "so there the efficiency measures the overhead of the parallel step, not a speedup (see "
                  "cpu_count)",
    "wait_share": "Model.comm_stats wait_seconds / wall of the timed steps, per rank (mean and max over ranks): "
                  "the time the rank's computation was blocked in a collective or in waiting for an "
                  "asynchronous one -- the communication that was not hidden",
    "busy_share": "Model.comm_stats busy_seconds / wall, mean over ranks: the time collectives were in flight "
                  "(on the communicators' worker threads, or synchronously), summed over the model's "
                  "communicators (can exceed 1 when two are in flight at once); on the CPU it includes "
                  "waiting for peers that are still computing",
    "hidden": "1 - wait_seconds / busy_seconds, mean over ranks: the part of the in-flight time that overlapped "
              "computation (slightly negative when nothing overlaps: the wait also holds the moment a queued "
              "operation waited for its worker thread to be scheduled)",
    "bytes_check": "accounting steps after the timed ones (Model.loss_and_grads + Model.optimizer_step: the "
                   "same collectives as train_step, which would replace each rank's expert load by the global "
                   "sum before it can be read): measured bytes_sent, bytes_received and ops of "
                   "Model.comm_stats against the analytic count of benchmarks/bench_dist.py's docstring; "
                   "ratio_sent = measured / analytic",
    "ep_micro_batches": "2: each MoE layer runs as two micro-batches whose dispatch/combine overlaps the other's "
                        "expert computation; 1: one exchange per direction",
    "overlap": "data parallel: the gradient sum of a layer starts as soon as its backward is done (True) or "
               "after the whole backward (False)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny config (seconds per run)")
    ap.add_argument("--worlds", default="1,2,4", help="rank counts (default 1,2,4)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 3; --quick 10)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1; --quick 2)")
    ap.add_argument("--batch", type=int, default=None, help="sequences per rank per step (default 2; --quick 4)")
    ap.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 256; --quick 32)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu: MPI; cuda: NCCL, a GPU per rank")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="directory of the result file")
    ap.add_argument("--rank-spec", help=argparse.SUPPRESS)
    ap.add_argument("--rank-out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rank_spec:
        rank_main(json.loads(a.rank_spec), a.rank_out)
        return
    worlds = [int(w) for w in a.worlds.split(",")]
    if not worlds or min(worlds) < 1:
        raise SystemExit(f"bench_dist: --worlds: expected positive rank counts, got {a.worlds!r}")
    check_launch(a.device, worlds)
    steps = a.steps or (10 if a.quick else 3)
    warmup = a.warmup if a.warmup is not None else (2 if a.quick else 1)
    B = a.batch or (4 if a.quick else 2)
    T = a.seq or (32 if a.quick else 256)
    name, cfg = make_config(a.quick)
    if any(cfg.n_routed_experts % w for w in worlds):
        raise SystemExit(f"bench_dist: --worlds: every rank count must divide the {cfg.n_routed_experts} experts")
    date = _dt.date.today().isoformat()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip() if shutil.which("uptime") else ""
    res = dict(benchmark="dist", device=a.device, machine=platform.node(), platform=platform.platform(),
               cpu_count=os.cpu_count(), date=date, commit=_commit(),
               command="python benchmarks/bench_dist.py " + " ".join(sys.argv[1:]),
               load_at_start=_load(), uptime_at_start=uptime,
               config=dict(name=name, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                           mtp_depths=cfg.num_nextn_predict_layers, n_routed_experts=cfg.n_routed_experts,
                           num_experts_per_tok=cfg.num_experts_per_tok, vocab_size=cfg.vocab_size),
               batch_per_rank=B, seq=T, warmup_steps=warmup, timed_steps=steps, accounting_steps=1,
               threads_per_rank=1, launcher="mpirun --oversubscribe -n W", definitions=DEFINITIONS, runs=[])
    base = None
    for spec in run_plan(worlds):
        spec.update(device=a.device, quick=a.quick, batch=B, seq=T, steps=steps, warmup=warmup, accounting_steps=1)
        t0 = time.perf_counter()
        ranks = launch(spec, timeout=3600)
        row = summarize(spec, ranks, B * T)
        row["launch_seconds"] = round(time.perf_counter() - t0, 1)
        if spec["world"] == 1:
            base = row["tokens_per_s"]
        row["efficiency"] = round(row["tokens_per_s"] / (spec["world"] * base), 3) if base else None
        res["runs"].append(row)
        print(f"W={row['world']} {row['mode']:6s} ep={row['expert_parallel']} dp={row['data_parallel']} "
              f"mb={row['ep_micro_batches']} overlap={row['overlap']!s:5s}: {row['tokens_per_s']:9.1f} tok/s "
              f"eff {row['efficiency']}, wait {row['comm']['wait_share_mean']:.3f} busy "
              f"{row['comm']['busy_share_mean']:.3f}, {row['comm']['bytes_sent_per_step_rank0'] / 1e6:.2f} MB/step "
              f"sent by rank 0, bytes exact {row['bytes_check']['exact']}", flush=True)
    res["load_at_end"] = _load()
    res["uptime_at_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("uptime") else ""
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, f"dist_{a.device}_{date}.json")
    with open(path, "w") as fh:
        json.dump(res, fh, indent=1)
    print("wrote", path)


def _commit() -> str:
    """The commit, with "+changes" when the working tree differs from it."""
    from _bench import git_commit
    c = git_commit()
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        dirty = ""
    return c + "+changes" if dirty and c != "unknown" else c


if __name__ == "__main__":
    main()
