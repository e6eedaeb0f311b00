"""The command line, ``python -m deepseek_c``, run as a user runs it: in a subprocess, from a
scratch directory, on the same deepseek_c package the tests import. info, --help of each
subcommand, ops-demo, tiny end-to-end train/demo runs whose checkpoints Model.from_pretrained
loads, and bad arguments: non-zero exit, a message naming the argument, no traceback."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import deepseek_c as dsc

SUBCOMMANDS = ["info", "ops-demo", "demo", "train"]
# a run small enough for a few seconds on 2 cores (the demo config, 2 training steps)
TINY = ["--steps", "2", "--batch", "2", "--seq", "16", "--eval", "3", "--quiet"]


def run_cli(*args: str, cwd, timeout: float = 120) -> subprocess.CompletedProcess:
    """python -m deepseek_c ARGS in cwd, importing the deepseek_c these tests import."""
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(dsc.__file__)))
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")   # a tiny model: threads only add contention
    return subprocess.run([sys.executable, "-m", "deepseek_c", *args], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=timeout)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r


def final_loss(stdout: str) -> float:
    m = re.search(r"final loss (\S+),", stdout)
    assert m, stdout
    return float(m.group(1))


# ----------------------------------------------------------------------------- info, help


def test_info_prints_version_and_build(tmp_path):
    r = ok(run_cli("info", cwd=tmp_path))
    first = r.stdout.splitlines()[0]
    assert first == f"deepseek_c {dsc.__version__}", r.stdout
    for field in ("library", "include", "BLAS", "OpenMP", "CUDA"):
        assert re.search(rf"^\s+{field}\s+:", r.stdout, re.M), (field, r.stdout)
    assert os.path.exists(re.search(r"library\s+: (\S+)", r.stdout).group(1))


def test_top_level_help_lists_subcommands(tmp_path):
    r = ok(run_cli("--help", cwd=tmp_path))
    assert r.stdout.startswith("usage: python -m deepseek_c")
    for cmd in SUBCOMMANDS:
        assert cmd in r.stdout, (cmd, r.stdout)


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_subcommand_help(cmd, tmp_path):
    r = ok(run_cli(cmd, "--help", cwd=tmp_path))
    assert r.stdout.startswith(f"usage: python -m deepseek_c {cmd}"), r.stdout
    assert r.stderr == ""


def test_every_listed_subcommand_has_help(tmp_path):
    # subcommands added later (generate, ...) are covered too
    usage = ok(run_cli("--help", cwd=tmp_path)).stdout
    listed = re.search(r"\{([a-z0-9,-]+)\}", usage).group(1).split(",")
    assert set(SUBCOMMANDS) <= set(listed), listed
    for cmd in listed:
        r = ok(run_cli(cmd, "--help", cwd=tmp_path))
        assert r.stdout.startswith(f"usage: python -m deepseek_c {cmd}"), r.stdout


@pytest.mark.parametrize("cmd", ["demo", "train"])
def test_training_help_documents_options(cmd, tmp_path):
    r = ok(run_cli(cmd, "--help", cwd=tmp_path))
    opts = ["--steps", "--batch", "--seq", "--lr", "--out", "--seed", "--fp8", "--dtype", "--device", "--bias-update-rate",
            "--mtp-lambda", "--aux-alpha", "--eval", "--quiet"]
    opts += ["--task"] if cmd == "demo" else ["--data", "--config"]
    missing = [o for o in opts if o not in r.stdout]
    assert not missing, (missing, r.stdout)


def test_no_subcommand_is_a_usage_error(tmp_path):
    r = run_cli(cwd=tmp_path)
    assert r.returncode == 2
    assert "usage:" in r.stderr and "required" in r.stderr and "Traceback" not in r.stderr


def test_unknown_subcommand_is_a_usage_error(tmp_path):
    r = run_cli("frobnicate", cwd=tmp_path)
    assert r.returncode == 2
    assert "invalid choice: 'frobnicate'" in r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- ops-demo


def test_ops_demo_matches_numpy(tmp_path):
    r = ok(run_cli("ops-demo", cwd=tmp_path))
    errs = {m.group(1).strip(): float(m.group(2))
            for m in re.finditer(r"^\s+(.+?)\s+max rel err vs NumPy (\S+)", r.stdout, re.M)}
    assert {"rms_norm", "linear", "swiglu", "cross_entropy"} <= set(errs), r.stdout
    assert all(e < 1e-4 for e in errs.values()), errs
    assert "YaRN softmax scale" in r.stdout


# ----------------------------------------------------------------------------- train / demo


def _check_checkpoint(out, steps: int, text: str) -> dsc.Model:
    for f in ("config.json", "model.safetensors", "optimizer.safetensors", "summary.json"):
        assert os.path.isfile(os.path.join(out, f)), (f, os.listdir(out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == steps and math.isfinite(summary["final_loss"]), summary
    assert abs(summary["final_loss"] - final_loss(text)) < 1e-3, (summary, text)
    model = dsc.Model.from_pretrained(str(out))
    assert model.num_parameters() == summary["params"]
    assert model.step == steps                       # the optimizer state came back too
    for name, w in model.parameters().items():
        assert np.all(np.isfinite(w)), name
    return model


def test_train_builtin_task_end_to_end(tmp_path):
    out = tmp_path / "run"
    r = ok(run_cli("train", "--data", "addition", *TINY, "--out", str(out), cwd=tmp_path))
    assert "training 2 steps, batch 2 x seq 16" in r.stdout, r.stdout
    loss = final_loss(r.stdout)
    assert math.isfinite(loss) and 0 < loss < 10, r.stdout
    assert re.search(r"exact-match accuracy on 3 held-out addition problems: \d+\.\d%", r.stdout), r.stdout
    assert f"wrote {out}/" in r.stdout
    model = _check_checkpoint(out, 2, r.stdout)
    # the loaded model generates (greedy) without error
    tok = dsc.data.CharTokenizer()
    gen = model.generate([[tok.bos_id] + tok.encode("12+34=")], max_new_tokens=3, temperature=0.0)
    assert len(gen) == 1


def test_train_text_file_with_config_and_fp8(tmp_path):
    from deepseek_c import train as TR

    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    cfg = TR.demo_config(dsc.data.ByteTokenizer().vocab_size, hidden_size=64, intermediate_size=128,
                         moe_intermediate_size=32, q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16,
                         qk_rope_head_dim=8, v_head_dim=16)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    out = tmp_path / "run"
    r = ok(run_cli("train", "--data", str(text), "--config", str(tmp_path / "config.json"), "--fp8", *TINY,
                   "--dtype", "bfloat16", "--out", str(out), cwd=tmp_path))
    assert "fp8=True" in r.stdout and "dtype=bfloat16" in r.stdout
    assert json.loads((out / "summary.json").read_text())["dtype"] == "bfloat16"
    assert "exact-match accuracy" not in r.stdout       # a text file has no verifiable task
    _check_checkpoint(out, 2, r.stdout)
    saved = json.loads((out / "config.json").read_text())
    assert saved["hidden_size"] == 64 and saved["vocab_size"] == cfg.vocab_size


def test_train_rejects_config_with_small_vocab(tmp_path):
    from deepseek_c import train as TR

    (tmp_path / "config.json").write_text(json.dumps(TR.demo_config(8).to_dict()))
    r = run_cli("train", "--config", str(tmp_path / "config.json"), *TINY, "--out", str(tmp_path / "run"),
                cwd=tmp_path)
    assert r.returncode != 0
    assert "--config" in r.stderr and "vocab_size" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = ok(run_cli("demo", "--task", "copy", *TINY, "--seq", "24", "--out", str(out), cwd=tmp_path))
    assert re.search(r"exact-match accuracy on 3 held-out copy problems", r.stdout), r.stdout
    _check_checkpoint(out, 2, r.stdout)


def test_demo_compares_mtp_and_generate_command(tmp_path):
    """The demo ends with generation with and without MTP (same outputs); `generate` reads
    the checkpoint and the tokenizer recorded in summary.json."""
    out = tmp_path / "demo"
    r = ok(run_cli("demo", *TINY, "--out", str(out), cwd=tmp_path))
    assert re.search(r"generation at batch 1 on 3 held-out problems: plain \d+ tokens/s .* MTP speculative "
                     r"\d+ tokens/s .* drafts accepted\): \d+\.\d\dx, outputs identical", r.stdout), r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tokenizer"] == "char" and summary["generation"]["identical"] is True
    g1 = ok(run_cli("generate", "--ckpt", str(out), "--prompt", "12+34=", "--max-new-tokens", "5", cwd=tmp_path))
    g2 = ok(run_cli("generate", "--ckpt", str(out), "--prompt", "12+34=", "--max-new-tokens", "5",
                    "--speculative", "mtp", cwd=tmp_path))
    assert g1.stdout == g2.stdout                       # greedy: MTP changes the speed, not the tokens
    assert "tokens/s" in g1.stderr and "MTP drafts accepted" in g2.stderr, (g1.stderr, g2.stderr)
    model = dsc.Model.from_pretrained(str(out))
    tok = dsc.data.CharTokenizer()
    want = model.generate([[tok.bos_id] + tok.encode("12+34=")], max_new_tokens=5, eos_token_id=tok.eos_id)
    assert g1.stdout.strip() == tok.decode(want[0])
    ids = ok(run_cli("generate", "--ckpt", str(out), "--tokenizer", "ids", "--prompt", "1 5 6", "--eos", "-1",
                     "--max-new-tokens", "4", cwd=tmp_path))
    assert ids.stdout.split() == [str(t) for t in model.generate([[1, 5, 6]], max_new_tokens=4, eos_token_id=-1)[0]]
    # --fp8: a frozen model (block matrices held only in E4M3), tokens as an fp8 model gives them
    f8 = ok(run_cli("generate", "--ckpt", str(out), "--tokenizer", "ids", "--prompt", "1 5 6", "--eos", "-1",
                    "--max-new-tokens", "4", "--fp8", "--speculative", "mtp", cwd=tmp_path))
    m8 = dsc.Model.from_pretrained(str(out), fp8=True)
    assert f8.stdout.split() == [str(t) for t in m8.generate([[1, 5, 6]], max_new_tokens=4, eos_token_id=-1)[0]]
    for bad, arg in ((["--ckpt", str(tmp_path / "nope")], "--ckpt"), (["--max-new-tokens", "0"], "--max-new-tokens")):
        args = ["generate", "--ckpt", str(out), "--prompt", "1+1=", *bad]
        r = run_cli(*args, cwd=tmp_path)
        assert r.returncode == 2 and arg in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("generate", "--ckpt", str(out), "--tokenizer", "ids", "--prompt", "1 999", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "999" in r.stderr, r.stderr


def test_train_is_deterministic_for_a_seed(tmp_path):
    losses = [final_loss(ok(run_cli("train", *TINY, "--seed", "3", "--out", str(tmp_path / f"r{i}"),
                                    cwd=tmp_path)).stdout) for i in range(2)]
    assert losses[0] == losses[1]


# ----------------------------------------------------------------------------- bad arguments

# Every bad value is rejected argparse-style (exit 2, "argument --NAME: ...") before anything
# is built, trained or written.
BAD = [
    pytest.param(["--steps", "abc"], "--steps", id="steps-not-int"),
    pytest.param(["--lr", "fast"], "--lr", id="lr-not-float"),
    pytest.param(["--steps", "-1"], "--steps", id="steps-negative"),
    pytest.param(["--steps", "0"], "--steps", id="steps-zero"),
    pytest.param(["--batch", "0"], "--batch", id="batch-zero"),
    pytest.param(["--seq", "1"], "--seq", id="seq-one"),
    pytest.param(["--eval", "-1"], "--eval", id="eval-negative"),
    pytest.param(["--lr", "-1"], "--lr", id="lr-negative"),
    pytest.param(["--lr", "nan"], "--lr", id="lr-nan"),
    pytest.param(["--device", "tpu"], "--device", id="device-unknown"),
    pytest.param(["--data", "{tmp}/no_such_file.txt"], "--data", id="data-missing-file"),
    pytest.param(["--data", "no_such_task"], "--data", id="data-unknown-task"),
    pytest.param(["--config", "{tmp}/no_such_config.json"], "--config", id="config-missing"),
    pytest.param(["--out", "{tmp}/a_file"], "--out", id="out-is-a-file"),
]


@pytest.mark.parametrize("bad, arg", BAD)
def test_train_bad_argument(bad, arg, tmp_path):
    (tmp_path / "a_file").write_text("not a directory")
    bad = [b.replace("{tmp}", str(tmp_path)) for b in bad]
    args = ["train", *TINY, "--out", str(tmp_path / "run")]
    if "--out" in bad:
        args = args[:-2]
    r = run_cli(*args, *bad, cwd=tmp_path)
    assert r.returncode != 0, f"{bad} exited 0:\n{r.stdout}"
    assert "Traceback" not in r.stderr, r.stderr
    assert arg in r.stderr, (arg, r.stderr)          # the message names the argument ...
    assert bad[1] in r.stderr, (bad[1], r.stderr)    # ... and the value it got
    assert not (tmp_path / "run").exists()           # and nothing was trained or written


@pytest.mark.parametrize("bad, arg", [
    pytest.param(["--steps", "-5"], "--steps", id="steps-negative"),
    pytest.param(["--task", "no_such_task"], "--task", id="task-unknown"),
    # a copy example needs 19 tokens: a shorter --seq cannot hold one
    pytest.param(["--task", "copy", "--seq", "8"], "--seq", id="seq-shorter-than-an-example"),
])
def test_demo_bad_argument(bad, arg, tmp_path):
    r = run_cli("demo", *TINY, "--out", str(tmp_path / "run"), *bad, cwd=tmp_path)
    assert r.returncode != 0, f"{bad} exited 0:\n{r.stdout}"
    assert "Traceback" not in r.stderr, r.stderr
    assert arg in r.stderr and bad[-1] in r.stderr, r.stderr
