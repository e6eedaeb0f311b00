"""Command line: ``python -m deepseek_c info`` (build and devices; with ``--config config.json
[--context N]`` what a model config costs: parameters, FLOPs per token, KV cache, memory),
``python -m deepseek_c ops-demo`` (a short tour of the dense ops against NumPy),
``python -m deepseek_c demo`` (train a small DeepSeek-V3-style model on 2-digit addition,
then measure exact-match accuracy on held-out problems) and
``python -m deepseek_c train`` (train on a built-in task or a text file) and
``python -m deepseek_c generate --ckpt DIR --prompt "12+34=" [--speculative mtp]``;
R1: ``python -m deepseek_c r1 --ckpt DIR --task addition`` (GRPO with verifiable rewards) and
``python -m deepseek_c distill --teacher DIR [--student-config small.json]`` (deepseek_c.r1_cli).

Training and generation run in the C core (dsc_model_train_step, dsc_model_generate). On a
CPU shared with other work, OMP_NUM_THREADS=1 is often faster than the default."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

DEMO_STEPS, DEMO_BATCH, DEMO_SEQ, DEMO_LR = 2000, 32, 48, 1.5e-3


def cmd_info(args: argparse.Namespace) -> int:
    import deepseek_c as dsc

    d = dsc.info()
    print(f"deepseek_c {d['version']}")
    print(f"  library   : {dsc.get_library()}")
    print(f"  include   : {dsc.get_include()}")
    print(f"  BLAS      : {d['blas']}")
    print(f"  OpenMP    : {'yes' if d['openmp'] else 'no'} ({d['max_threads']} threads)")
    if d["cuda"]:
        print(f"  CUDA      : yes (built with CUDA {d['cuda_version']}, archs {d['cuda_archs']}, "
              f"cuBLASLt {'yes' if d['cublaslt'] else 'no'}, NCCL {'yes' if d['nccl'] else 'no'})")
    else:
        print("  CUDA      : no (built without nvcc or with DSC_CUDA=0)")
    print(f"  comm      : self, MPI {('yes (' + d['mpi_library'] + ')') if d['mpi'] else 'no (no mpi.h at build time)'}"
          f", NCCL {'yes' if d['nccl'] else 'no'}")
    if d["devices"]:
        for dev in d["devices"]:
            print(f"  device    : cuda:{dev['index']} {dev['name']} (sm_{dev['compute_capability'].replace('.', '')})")
    else:
        print(f"  devices   : none ({d['cuda_unavailable_reason']})")
    return 0


def cmd_ops_demo(args: argparse.Namespace) -> int:
    """Run each dense op once on random data and compare with NumPy."""
    import deepseek_c as dsc

    rng = np.random.default_rng(args.seed)
    B, T, D, V = 4, 32, 256, 1000
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)

    def show(name: str, got: np.ndarray, want: np.ndarray, t: float) -> None:
        err = float(np.max(np.abs(np.asarray(got, np.float64) - want)) / (np.max(np.abs(want)) + 1e-30))
        print(f"  {name:<22} max rel err vs NumPy {err:.2e}   {t * 1e3:7.3f} ms")

    print("deepseek_c ops demo (CPU, float32)")
    t0 = time.perf_counter(); y = dsc.rms_norm(x, w); t1 = time.perf_counter()
    xd = x.astype(np.float64)
    show("rms_norm", y, w * xd / np.sqrt((xd ** 2).mean(-1, keepdims=True) + 1e-6), t1 - t0)

    W = (rng.standard_normal((512, D)) / np.sqrt(D)).astype(np.float32)
    t0 = time.perf_counter(); h = dsc.linear(x, W); t1 = time.perf_counter()
    show("linear", h, xd @ W.astype(np.float64).T, t1 - t0)

    g, u = h[..., :256], h[..., 256:]
    g, u = np.ascontiguousarray(g), np.ascontiguousarray(u)
    t0 = time.perf_counter(); s = dsc.swiglu(g, u); t1 = time.perf_counter()
    gd = g.astype(np.float64)
    show("swiglu", s, gd / (1 + np.exp(-gd)) * u, t1 - t0)

    q = rng.standard_normal((B, T, 8, 64)).astype(np.float32)
    pos = np.tile(np.arange(T, dtype=np.int32), (B, 1))
    t0 = time.perf_counter(); qr = dsc.rope(q, pos); t1 = time.perf_counter()
    back = dsc.rope_backward(qr, pos)
    show("rope (inverse = id)", back, q.astype(np.float64), t1 - t0)

    logits = rng.standard_normal((B * T, V)).astype(np.float32)
    tgt = rng.integers(0, V, B * T).astype(np.int32)
    t0 = time.perf_counter(); loss, _ = dsc.cross_entropy(logits, tgt); t1 = time.perf_counter()
    ld = logits.astype(np.float64)
    m = ld.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(ld - m).sum(-1, keepdims=True)))[:, 0]
    show("cross_entropy", np.array(float(loss)), np.array((lse - ld[np.arange(B * T), tgt]).mean()), t1 - t0)
    print(f"  YaRN softmax scale for DeepSeek-V3 (192 dims, factor 40): "
          f"{dsc.rope_softmax_scale(192, scaling={'type': 'yarn', 'factor': 40, 'mscale': 1.0, 'mscale_all_dim': 1.0}):.7f}")
    return 0


def _train_common(args, task, tok, cfg, stream, evaluate: bool) -> int:
    import os
    import time as _t

    import deepseek_c as dsc
    from deepseek_c import train as TR

    comm = getattr(args, "comm", None)  # train under mpirun / with --ep, --dp: a dsc.Comm
    if comm is not None:
        model = dsc.Model(cfg, device=args.device, fp8=args.fp8, seed=args.seed, comm=comm,
                          expert_parallel=args.ep, data_parallel=args.dp, dtype=args.dtype)
        stream = _rank_batches(stream, comm.rank, comm.size)
    else:
        model = dsc.Model(cfg, device=args.device, fp8=args.fp8, seed=args.seed, dtype=args.dtype)
    rank0 = comm is None or comm.rank == 0
    say = print if rank0 else (lambda *a, **k: None)
    say(f"{model}")
    if comm is not None:
        p = model.parallel
        say(f"distributed: {p['world']} ranks ({comm.backend}), expert parallel {p['expert_parallel']} "
            f"({p['n_local_experts']} experts per rank), data parallel {p['data_parallel']}; each rank trains "
            f"{args.batch // p['world']} of the {args.batch} sequences per step")
    say(f"training {args.steps} steps, batch {args.batch} x seq {args.seq}, lr {args.lr}, fp8={args.fp8}")
    hist = TR.fit(model, stream, args.steps, lr=args.lr, progress=not args.quiet and rank0,
                  bias_update_rate=args.bias_update_rate, mtp_lambda=args.mtp_lambda, aux_alpha=args.aux_alpha)
    tps = hist["tokens_per_s"]  # total tokens / total wall time of the run
    if comm is not None:  # each rank counted its own rows: the world's tokens (losses are the world's already)
        hist["total_tokens"] *= comm.size
        hist["tokens_per_s"] = tps = tps * comm.size
        cs = model.comm_stats()
        say(f"communication: {cs['bytes_sent'] / 1e6:.1f} MB sent by rank 0, {cs['wait_seconds']:.2f} s of "
            f"{hist['seconds']:.1f} s waiting for it")
        model.save(args.out)  # every rank writes its shard (collective)
        if not rank0:
            return 0
        evaluate = False  # generation in the shared checkpoint: python -m deepseek_c generate --ckpt
    print(f"trained in {hist['seconds']:.1f} s: final loss {np.mean(hist['loss'][-20:]):.4f}, "
          f"MTP loss {np.mean(hist['mtp_loss'][-20:]):.4f}, {tps:.0f} tokens/s "
          f"({hist['total_tokens']} tokens / {hist['seconds']:.1f} s), "
          f"load max/mean {np.mean(hist['load_imbalance'][-20:]):.2f}")
    summary = dict(params=model.num_parameters(), steps=args.steps, batch=args.batch, seq=args.seq, fp8=args.fp8,
                   dtype=args.dtype, seed=args.seed, threads=dsc.info()["max_threads"], train_seconds=hist["seconds"],
                   train_tokens=hist["total_tokens"], tokens_per_s=tps,
                   tokens_per_s_is="total training tokens / total training wall time",
                   final_loss=float(np.mean(hist["loss"][-20:])))
    os.makedirs(args.out, exist_ok=True)
    if comm is None:
        model.save(args.out)
    from deepseek_c import data as D
    D.save_vocab(tok, os.path.join(args.out, "vocab.txt"))
    TR.save_history(hist, args.out)
    summary["tokenizer"] = "char" if task is not None else "byte"
    if evaluate:
        t0 = _t.perf_counter()
        r = TR.evaluate(model, task, tok, n=args.eval, examples=5)
        for p, got, want, ok in r["examples"]:
            print(f"  {p}{got:<6} ({'ok' if ok else 'expected ' + want})")
        print(f"exact-match accuracy on {r['n']} held-out {task.name} problems: {100 * r['accuracy']:.1f}% "
              f"(greedy generation, batched: {1e3 * (_t.perf_counter() - t0):.0f} ms)")
        summary["accuracy"] = r["accuracy"]
        if model.n_mtp:
            summary["generation"] = _compare_mtp(model, task, tok, min(args.eval, 64))
    plots = TR.save_plots(hist, args.out)
    TR.write_summary(args.out, summary)
    ep = model.parallel.get("expert_parallel", 1)
    ckpt = "model.safetensors, optimizer.safetensors" if ep == 1 else \
        f"model-/optimizer-0000q-of-{ep:05d}.safetensors (a shard per expert-parallel rank), model.safetensors.index.json"
    print(f"wrote {args.out}/: config.json, {ckpt}, vocab.txt, history.json, "
          f"summary.json" + (", " + ", ".join(os.path.basename(p) for p in plots) if plots
                             else " (no matplotlib: no plots; pip install matplotlib, then "
                                  f"python -m deepseek_c plot {args.out})"))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Redraw the plots of a finished run from its history.json (no training)."""
    import os

    from deepseek_c import train as TR

    if not os.path.isfile(os.path.join(args.dir, "history.json")):
        raise SystemExit(f"plot: {args.dir}: no history.json (written by `python -m deepseek_c demo` / `train`)")
    plots = TR.save_plots(TR.load_history(args.dir), args.dir)
    if not plots:
        raise SystemExit("plot: matplotlib is not installed (pip install matplotlib)")
    print("wrote " + ", ".join(plots))
    return 0


def _compare_mtp(model, task, tok, n: int) -> dict:
    """Generate answers to held-out problems one prompt at a time (batch 1, where decoding
    speed matters) with plain greedy decoding and with MTP speculative decoding: the same
    answers, the acceptance rate and the speedup. An fp8 model generates from a frozen copy
    (freeze_fp8: block matrices held in E4M3 once, not re-quantized per call; same tokens)."""
    from deepseek_c import train as TR

    if model.fp8:
        model = model.freeze_fp8()
    TR.evaluate(model, task, tok, n=4, batch=1)  # warm-up
    TR.evaluate(model, task, tok, n=4, batch=1, speculative="mtp")
    plain = TR.evaluate(model, task, tok, n=n, batch=1)
    spec = TR.evaluate(model, task, tok, n=n, batch=1, speculative="mtp")
    same = plain["outputs"] == spec["outputs"]
    speedup = spec["tokens_per_s"] / plain["tokens_per_s"] if plain["tokens_per_s"] else 0.0
    print(f"generation at batch 1 on {n} held-out problems: plain {plain['tokens_per_s']:.0f} tokens/s "
          f"(accuracy {100 * plain['accuracy']:.1f}%), MTP speculative {spec['tokens_per_s']:.0f} tokens/s "
          f"(accuracy {100 * spec['accuracy']:.1f}%, {100 * (spec['accept_rate'] or 0):.1f}% of drafts accepted): "
          f"{speedup:.2f}x, outputs {'identical' if same else 'DIFFERENT (a bug: please report)'}")
    return dict(n=n, plain_tokens_per_s=plain["tokens_per_s"], mtp_tokens_per_s=spec["tokens_per_s"],
                speedup=speedup, accept_rate=spec["accept_rate"], identical=same,
                plain_accuracy=plain["accuracy"], mtp_accuracy=spec["accuracy"])


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate from a checkpoint directory (written by demo/train or a Hugging Face one)."""
    import json
    import os

    import deepseek_c as dsc
    from deepseek_c import data as D

    summ = os.path.join(args.ckpt, "summary.json")
    kind = args.tokenizer
    if kind == "auto":  # the checkpoint's vocab.txt, else what its summary.json says
        kind = "vocab" if os.path.exists(os.path.join(args.ckpt, "vocab.txt")) else "char"
        if kind == "char" and os.path.exists(summ):
            with open(summ, encoding="utf-8") as fh:
                kind = json.load(fh).get("tokenizer", "char")
    tok = (D.ByteTokenizer() if kind == "byte" else D.CharTokenizer() if kind == "char"
           else D.VocabTokenizer(args.ckpt) if kind == "vocab" else None)
    if kind == "ids":
        try:
            prompt = [int(v) for v in args.prompt.replace(",", " ").split()]
        except ValueError:
            raise SystemExit(f"generate: --prompt: expected token ids with --tokenizer ids, got {args.prompt!r}")
    else:
        try:
            prompt = [tok.bos_id] + tok.encode(args.prompt)
        except (KeyError, ValueError) as e:
            raise SystemExit(f"generate: --prompt: a character the {kind} tokenizer does not know ({e})")
    try:
        model = dsc.Model.from_pretrained(args.ckpt, device=args.device, fp8=args.fp8, inference_only=args.fp8)
        eos = args.eos if args.eos is not None else (tok.eos_id if tok else None)
        out = model.generate([prompt], max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, seed=args.seed, eos_token_id=eos,
                             speculative=args.speculative, num_draft=args.num_draft)
    except (ValueError, TypeError, dsc.Error) as e:
        raise SystemExit(f"generate: {e}")
    ids = out.tokens[0]
    print(tok.decode(ids) if tok else " ".join(str(i) for i in ids))
    stats = f"{out.new_tokens} tokens in {out.seconds * 1e3:.1f} ms ({out.tokens_per_s:.0f} tokens/s)"
    if args.speculative:  # no drafts at all (an answer of one token) still says so
        rate = f"{100 * out.accept_rate:.1f}%" if out.accept_rate is not None else "-"
        stats += f", MTP drafts accepted {rate} ({out.accepted}/{out.drafted})"
    print(stats, file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the demo model on 2-digit addition, then evaluate it on held-out problems."""
    from deepseek_c import data as D, train as TR

    tok = D.CharTokenizer()
    task = TR.make_task(args.task)
    cfg = TR.demo_config(tok.vocab_size)
    stream = D.batches(task, tok, args.batch, args.seq, seed=args.seed)
    return _train_common(args, task, tok, cfg, stream, evaluate=True)


def _rank_batches(stream, rank: int, world: int):
    """Rank `rank`'s rows of each global batch (rows rank*B/W .. (rank+1)*B/W)."""
    import dataclasses

    for b in stream:
        n = b.tokens.shape[0] // world
        yield dataclasses.replace(b, tokens=b.tokens[rank * n:(rank + 1) * n],
                                  targets=b.targets[rank * n:(rank + 1) * n])


def _dist_comm(args: argparse.Namespace):
    """The communicator of `train` under mpirun (or with --ep / --dp): a dsc.Comm, or None."""
    import os

    import deepseek_c as dsc
    from deepseek_c import dist

    if not (dist.launched_by_mpi() or args.ep or args.dp):
        return None
    comm = dsc.Comm.from_mpi()
    if args.device.startswith("cuda"):  # NCCL, one GPU per rank, its unique id carried by MPI (untested: no GPU)
        from mpi4py import MPI

        local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", os.environ.get("MPI_LOCALRANKID", comm.rank)))
        uid = MPI.COMM_WORLD.bcast(dsc.Comm.nccl_unique_id() if comm.rank == 0 else None, root=0)
        comm, args.device = dsc.Comm.from_nccl_unique_id(uid, comm.rank, comm.size, device=local), f"cuda:{local}"
    if args.comm_timeout:
        comm.set_timeout(args.comm_timeout)
    if args.batch % comm.size:
        raise SystemExit(f"train: --batch: expected a multiple of the {comm.size} ranks, got {args.batch}")
    return comm


def cmd_train(args: argparse.Namespace) -> int:
    """Train on a built-in task or a text file, with the demo config or --config."""
    args.comm = _dist_comm(args)
    try:
        return _cmd_train(args)
    except Exception as e:  # a failed rank must end the job (the others would wait for it)
        if args.comm is None:
            raise
        import traceback

        from mpi4py import MPI

        sys.stderr.write(f"rank {args.comm.rank}: {type(e).__name__}: {e}\n")
        if not isinstance(e, SystemExit):
            traceback.print_exc()
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)
        return 1


def _cmd_train(args: argparse.Namespace) -> int:
    import os

    import deepseek_c as dsc
    from deepseek_c import data as D, train as TR

    if os.path.isfile(args.data):
        tok = D.ByteTokenizer()
        ts = D.TokenStream.from_text_file(args.data)
        stream, task = ts.batches(args.batch, args.seq, seed=args.seed), None
    else:
        tok = D.CharTokenizer()
        task = TR.make_task(args.data)
        stream = D.batches(task, tok, args.batch, args.seq, seed=args.seed)
    if args.config:
        cfg = dsc.ModelConfig.from_json(args.config)
        if cfg.vocab_size < tok.vocab_size:
            raise SystemExit(f"train: --config: vocab_size {cfg.vocab_size} is smaller than the tokenizer's "
                             f"{tok.vocab_size}")
    else:
        cfg = TR.demo_config(tok.vocab_size)
    return _train_common(args, task, tok, cfg, stream, evaluate=task is not None)


def _add_train_args(d, steps: int, batch: int, seq: int, lr: float, out: str) -> None:
    d.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    d.add_argument("--batch", type=int, default=batch, help=f"sequences per step (default {batch})")
    d.add_argument("--seq", type=int, default=seq, help=f"tokens per sequence (default {seq})")
    d.add_argument("--lr", type=float, default=lr, help=f"peak learning rate, warmup + cosine (default {lr})")
    d.add_argument("--out", default=out, help=f"output directory (default {out})")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--fp8", action="store_true", help="FP8 linear layers (DeepSeek-V3 block scaling)")
    d.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype: float32, or bfloat16 (V3's recipe: BF16 weights and activations, "
                        "FP32 masters, gradients and optimizer state); the checkpoint holds the FP32 masters")
    d.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (the whole training step runs on the device)")
    d.add_argument("--bias-update-rate", type=float, default=1e-2, dest="bias_update_rate",
                   help="gamma of the aux-loss-free balancing (default 1e-2 for short runs; V3: 1e-3)")
    d.add_argument("--mtp-lambda", type=float, default=0.3, dest="mtp_lambda", help="MTP loss weight (0.3)")
    d.add_argument("--aux-alpha", type=float, default=1e-4, dest="aux_alpha",
                   help="sequence-wise balance loss weight (V3: 1e-4)")
    d.add_argument("--eval", type=int, default=200, help="held-out problems to evaluate (default 200)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")


def _check_train_args(parser: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Reject what demo/train cannot use the way argparse rejects a bad type: exit 2 with
    'argument --NAME: ...', before anything is built, trained or written."""
    import math
    import os

    from deepseek_c import train as TR

    for opt, v, lo in (("--steps", a.steps, 1), ("--batch", a.batch, 1), ("--seq", a.seq, 2), ("--eval", a.eval, 1)):
        if v < lo:
            parser.error(f"argument {opt}: expected an integer >= {lo}, got {v}")
    for opt, v in (("--lr", a.lr), ("--bias-update-rate", a.bias_update_rate), ("--mtp-lambda", a.mtp_lambda),
                   ("--aux-alpha", a.aux_alpha)):
        if not (math.isfinite(v) and v >= 0):
            parser.error(f"argument {opt}: expected a finite number >= 0, got {v}")
    dev = str(a.device)
    if not (dev in ("cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        parser.error(f"argument --device: expected 'cpu', 'cuda' or 'cuda:N', got {a.device!r}")
    if dev != "cpu":
        import deepseek_c as dsc

        n = dsc.cuda_device_count()
        idx = int(dev[5:]) if dev.startswith("cuda:") else 0
        if idx >= n:
            why = dsc.info()["cuda_unavailable_reason"] or f"{n} device(s) visible"
            parser.error(f"argument --device: {dev!r} is not available here ({why})")
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        parser.error(f"argument --out: expected a directory, got {a.out!r} (an existing file)")
    if a.cmd == "train" and a.config is not None and not os.path.isfile(a.config):
        parser.error(f"argument --config: no such file: {a.config!r}")
    if a.cmd == "train" and os.path.isfile(a.data):
        n = os.path.getsize(a.data)  # one token per byte
        if n < a.seq + 1:
            parser.error(f"argument --seq: expected at most {n - 1} for {a.data!r} ({n} bytes), got {a.seq}")
        return
    opt, name = ("--task", a.task) if a.cmd == "demo" else ("--data", a.data)
    try:
        task = TR.make_task(name)
    except ValueError:
        what = "a built-in task (addition, addition3, sorting, copy, reverse, mixture)"
        if a.cmd == "train":
            what += " or an existing text file"
        parser.error(f"argument {opt}: expected {what}, got {name!r}")
    need = task.max_len + 2  # <bos> prompt answer <eos>, one token per character
    if a.seq < need:
        parser.error(f"argument --seq: expected at least {need} to hold one {task.name} example, got {a.seq}")


# ------------------------------------------------------------------ info --config (the model calculator)


def _add_model_info_args(d: argparse.ArgumentParser) -> None:
    """Options of `info --config PATH`: the calculator's (deepseek_c.calc.calc)."""
    g = d.add_argument_group("model calculator (with --config)")
    g.add_argument("--config", default=None, help="a Hugging Face config.json (or its directory): print its "
                   "parameters, FLOPs per token, KV cache per token and memory per GPU")
    g.add_argument("--context", type=int, default=4096, help="sequence length / cached tokens (default 4096)")
    g.add_argument("--recipe", default="fp8", choices=("fp32", "bf16", "fp8"),
                   help="precision recipe (default fp8: DeepSeek-V3's)")
    g.add_argument("--moments", default="bfloat16", choices=("float32", "bfloat16"),
                   help="AdamW moments dtype (default bfloat16, as V3)")
    for flag, what in (("tp", "tensor"), ("pp", "pipeline"), ("dp", "data"), ("ep", "expert")):
        g.add_argument(f"--{flag}", type=int, default=1, help=f"{what} parallel size (default 1)")
    g.add_argument("--zero1", action="store_true", help="shard masters and moments over data-parallel replicas")
    g.add_argument("--micro-batch-tokens", type=int, default=4096, dest="micro_batch_tokens",
                   help="tokens of one micro-batch per GPU, for the activation estimate (default 4096)")
    g.add_argument("--compare-kv-heads", type=int, default=0, dest="compare_kv_heads",
                   help="also show the KV cache of GQA with this many KV heads (default: MHA only)")


def cmd_model_info(args: argparse.Namespace) -> int:
    """Print what a config costs (dsc_model_calc)."""
    import os

    import deepseek_c as dsc

    if not os.path.exists(args.config):
        raise SystemExit(f"info: --config: no such file or directory: {args.config!r}")
    try:
        r = dsc.calc(args.config, context=args.context, recipe=args.recipe, moments=args.moments, tp=args.tp,
                     pp=args.pp, dp=args.dp, ep=args.ep, zero1=args.zero1,
                     micro_batch_tokens=args.micro_batch_tokens, compare_kv_heads=args.compare_kv_heads)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"info: {e}")
    print(f"model config {args.config}")
    print(r.report())
    return 0


def _cmd_info_or_model(args: argparse.Namespace) -> int:
    return cmd_model_info(args) if args.config is not None else cmd_info(args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deepseek_c", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("info", help="version, build (CUDA, archs, cuBLASLt, BLAS) and devices; with --config: "
                       "parameters, FLOPs/token, KV cache and memory of a model config")
    _add_model_info_args(d)
    d.set_defaults(fn=_cmd_info_or_model)
    d = sub.add_parser("ops-demo", help="run the dense ops once against NumPy")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=cmd_ops_demo)
    d = sub.add_parser("demo", help="train a small MLA + MoE + MTP model on 2-digit addition and evaluate it")
    _add_train_args(d, steps=DEMO_STEPS, batch=DEMO_BATCH, seq=DEMO_SEQ, lr=DEMO_LR, out="demo_out")
    d.add_argument("--task", default="addition", help="built-in task (addition, addition3, sorting, copy, "
                   "reverse, mixture)")
    d.set_defaults(fn=cmd_demo)
    d = sub.add_parser("train", help="train on a built-in task or a text file")
    d.add_argument("--data", default="addition", help="a built-in task name or a text file path")
    d.add_argument("--config", default=None, help="a Hugging Face config.json (default: the demo config)")
    _add_train_args(d, steps=1000, batch=32, seq=64, lr=3e-3, out="train_out")
    g = d.add_argument_group("distributed (launch with mpirun -np N; MPI through mpi4py)")
    g.add_argument("--ep", type=int, default=None, help="expert-parallel ranks (default: every rank)")
    g.add_argument("--dp", type=int, default=None, help="data-parallel replicas (default: ranks / ep)")
    g.add_argument("--comm-timeout", type=float, default=None, dest="comm_timeout",
                   help="seconds a rank waits for the others before failing (default 300, or DSC_COMM_TIMEOUT)")
    d.set_defaults(fn=cmd_train)
    d = sub.add_parser("generate", help="generate from a checkpoint directory (optionally MTP-speculative)")
    d.add_argument("--ckpt", required=True, help="checkpoint directory (config.json + *.safetensors)")
    d.add_argument("--prompt", required=True, help="the prompt text (or token ids with --tokenizer ids)")
    d.add_argument("--tokenizer", default="auto", choices=("auto", "vocab", "char", "byte", "ids"),
                   help="auto: the checkpoint's vocab.txt, else the one its summary.json names (char without one)")
    d.add_argument("--max-new-tokens", type=int, default=32)
    d.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    d.add_argument("--top-k", type=int, default=None)
    d.add_argument("--top-p", type=float, default=None)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--eos", type=int, default=None, help="end-of-sequence id (default: the tokenizer's; -1 none)")
    d.add_argument("--speculative", default=None, choices=("mtp",), help="MTP speculative decoding")
    d.add_argument("--num-draft", type=int, default=1, help="tokens drafted per step with --speculative mtp")
    d.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    d.add_argument("--fp8", action="store_true", help="FP8 inference: block matrices held only in E4M3 with "
                   "128x128 block scales (a frozen model, a quarter of the float32 memory)")
    d.set_defaults(fn=cmd_generate)
    d = sub.add_parser("plot", help="redraw the plots of a demo/train run from its history.json")
    d.add_argument("dir", help="the run's output directory (e.g. demo_out)")
    d.set_defaults(fn=cmd_plot)
    from deepseek_c.r1_cli import add_parsers as _add_r1_parsers

    _add_r1_parsers(sub)  # r1, distill
    args = p.parse_args(argv)
    if args.cmd == "generate":
        import os

        if not os.path.isdir(args.ckpt):
            sub.choices["generate"].error(f"argument --ckpt: expected a checkpoint directory, got {args.ckpt!r}")
        if args.max_new_tokens < 1:
            sub.choices["generate"].error(f"argument --max-new-tokens: expected >= 1, got {args.max_new_tokens}")
    if args.cmd in ("demo", "train"):
        _check_train_args(sub.choices[args.cmd], args)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
