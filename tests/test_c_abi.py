"""The C ABI from C: the installed header and library build the example in examples/c
and the C test runner in tests/c, and both run clean. Also `python -m deepseek_c info`.
"""

import os
import shutil
import subprocess
import sys

import pytest

import deepseek_c as dsc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _build(src: str, out: str) -> None:
    lib_dir = os.path.dirname(dsc.get_library())
    cmd = [CC, "-std=c11", "-Wall", "-Werror", src, f"-I{dsc.get_include()}", f"-L{lib_dir}",
           "-ldeepseek_c", f"-Wl,-rpath,{lib_dir}", "-lm", "-o", out]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def test_header_and_library_are_installed():
    assert os.path.isfile(os.path.join(dsc.get_include(), "deepseek_c.h"))
    assert os.path.isfile(os.path.join(dsc.get_include(), "dlpack", "dlpack.h"))
    assert os.path.isfile(dsc.get_library())


@pytest.mark.skipif(CC is None, reason="no C compiler on PATH")
def test_c_example_builds_and_runs(tmp_path):
    exe = str(tmp_path / "example")
    _build(os.path.join(ROOT, "examples", "c", "example.c"), exe)
    r = subprocess.run([exe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "example: OK" in r.stdout
    assert "dsc_rms_norm_forward: w: expected shape (4), got (5)" in r.stdout


@pytest.mark.skipif(CC is None, reason="no C compiler on PATH")
def test_c_generate_example_builds_and_runs(tmp_path):
    """examples/c/generate.c: load a checkpoint written by Python, generate (greedy and MTP
    speculative), the same tokens as deepseek_c.generate."""
    exe = str(tmp_path / "generate")
    _build(os.path.join(ROOT, "examples", "c", "generate.c"), exe)
    cfg = dsc.ModelConfig.tiny(vocab_size=64, eos_token_id=None)
    model = dsc.Model(cfg, seed=0)
    ckpt = str(tmp_path / "ckpt")
    model.save(ckpt)
    want = model.generate([[5, 6, 7]], max_new_tokens=8, eos_token_id=-1)[0]
    for extra in ([], ["--speculative", "--num-draft", "2"]):
        r = subprocess.run([exe, ckpt, "--ids", "5", "6", "7", "--max-new", "8", "--eos", "-1", *extra],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith("output (8 tokens):"))
        assert [int(t) for t in line.split(":")[1].split()] == want
        assert "tokens/s" in r.stdout and (not extra or "drafted" in r.stdout)
    # --fp8: frozen (E4M3-held weights), the tokens of Python's frozen model
    want8 = dsc.Model.from_pretrained(ckpt, fp8=True, inference_only=True).generate([[5, 6, 7]], max_new_tokens=8,
                                                                                 eos_token_id=-1)[0]
    r = subprocess.run([exe, ckpt, "--ids", "5", "6", "7", "--max-new", "8", "--eos", "-1", "--fp8", "--speculative"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "block matrices in E4M3" in r.stdout, r.stdout + r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("output (8 tokens):"))
    assert [int(t) for t in line.split(":")[1].split()] == want8
    r = subprocess.run([exe, ckpt, "--ids", "5", "99"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "prompts[0]: expected ids in [0, 64), got 99 at index 1" in r.stderr
    # a text prompt needs the checkpoint's vocab.txt
    r = subprocess.run([exe, ckpt, "12+34="], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no vocab.txt" in r.stderr and "--ids" in r.stderr


@pytest.mark.skipif(CC is None, reason="no C compiler on PATH")
@pytest.mark.parametrize("kind", ["char", "byte"])
def test_c_generate_example_text_prompt(tmp_path, kind):
    """With the vocab.txt that demo/train write, the example takes text and prints text: the
    prompt tokens and the decoded answer equal Python's tokenizer and generate."""
    from deepseek_c import data as D

    exe = str(tmp_path / "generate")
    _build(os.path.join(ROOT, "examples", "c", "generate.c"), exe)
    tok = D.CharTokenizer() if kind == "char" else D.ByteTokenizer()
    cfg = dsc.ModelConfig.tiny(vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    model = dsc.Model(cfg, seed=1)
    ckpt = str(tmp_path / "ckpt")
    model.save(ckpt)
    D.save_vocab(tok, os.path.join(ckpt, "vocab.txt"))
    text = "12+34=" if kind == "char" else "caf\u00e9 \\ 12"
    prompt = [tok.bos_id] + tok.encode(text)
    out = model.generate([prompt], max_new_tokens=12, eos_token_id=tok.eos_id)[0]
    r = subprocess.run([exe, ckpt, text, "--max-new", "12"], capture_output=True, timeout=120)
    out_b = r.stdout  # bytes: a random model's answer need not be UTF-8
    assert r.returncode == 0, out_b + r.stderr
    head = out_b.split(b"\ntext: ")[0].decode()
    got_prompt = next(ln for ln in head.splitlines() if ln.startswith("prompt ("))
    assert [int(t) for t in got_prompt.split(":")[1].split()] == prompt
    got_out = out_b.split(b"\noutput (")[1].split(b"\n")[0].decode()
    assert [int(t) for t in got_out.split(":")[1].split()] == list(out)
    answer = out_b.split(b"\nanswer: ")[1].rsplit(b"\nstats: ", 1)[0]
    want = b"".join(tok.itos[i].encode() if kind == "char" else bytes([i - 3]) for i in
                    (out[: list(out).index(tok.eos_id)] if tok.eos_id in out else out) if i >= 3)
    assert answer == want
    r = subprocess.run([exe, ckpt, "12*3"], capture_output=True, text=True, errors="replace", timeout=60)
    if kind == "char":
        assert r.returncode == 2 and "'*' at offset 2 is in no token" in r.stderr


@pytest.mark.skipif(CC is None, reason="no C compiler on PATH")
@pytest.mark.parametrize("name", [
    "test_core",          # the core ABI: errors, contexts, tensors, ops from C
    "test_model_io",      # config.json parsing and checkpoint save/load
    "test_model_train",   # the training step: FD gradients, accumulation, loss falls, errors
    "test_calc",          # the model calculator: V3's checkpoint counts, built models, bad options
    "test_comm",          # communicators: a world of one, every collective, settings, bad arguments
])
def test_c_runner_passes(name, tmp_path):
    """A C test program of tests/c built against the installed library; its last line is
    'N passed, 0 failed'."""
    exe = str(tmp_path / name)
    _build(os.path.join(ROOT, "tests", "c", name + ".c"), exe)
    r = subprocess.run([exe], capture_output=True, text=True, timeout=300)
    last = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 0 and last.endswith(" 0 failed"), r.stdout


def test_info_command():
    r = subprocess.run([sys.executable, "-m", "deepseek_c", "info"], capture_output=True, text=True,
                       cwd="/", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "deepseek_c 0.1.0" in r.stdout and "BLAS" in r.stdout and "CUDA" in r.stdout


def test_info_dict():
    d = dsc.info()
    for key in ("version", "cuda", "cuda_version", "cuda_archs", "cublaslt", "nccl", "blas", "openmp",
                "max_threads", "devices", "cuda_unavailable_reason"):
        assert key in d
    assert d["version"] == dsc.__version__
    if not d["devices"]:
        assert isinstance(d["cuda_unavailable_reason"], str) and d["cuda_unavailable_reason"]
