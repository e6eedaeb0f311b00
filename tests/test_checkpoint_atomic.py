"""Checkpoint saves that survive a kill, a full disk and a permission error (the protocol at
the top of csrc/model/model_io.c): a save replaces the directory's checkpoint as a whole,
so a load after a SIGKILL at any instant gives exactly the old or the new weights, step and
AdamW moments; files the save does not own survive; leftovers are cleaned up by the next
load or save.

The kill test forks a child that saves three states in a loop (A; B of another
architecture; C without optimizer state), SIGKILLs it after a random delay and loads.
CI runs a time-boxed number of trials per swap mode (RENAME_EXCHANGE, and the two-rename
fallback forced by DSC_CHECKPOINT_NO_EXCHANGE=1); DSC_KILL_TRIALS=N runs N trials per mode
without the time box (``pytest -s`` prints how many trials hit which phase).
"""

from __future__ import annotations

import collections
import os
import random
import resource
import signal
import stat
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest

import deepseek_c as dsc

sys.path.insert(0, os.path.dirname(__file__))
from test_model import small_cfg  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

OWNED = ("config.json", "model.safetensors", "optimizer.safetensors")
NO_EXCHANGE = "DSC_CHECKPOINT_NO_EXCHANGE"


# ----------------------------------------------------------------------------- states


@dataclass
class State:
    name: str
    model: dsc.Model
    optimizer: bool                        # saved with optimizer state
    params: dict = field(default_factory=dict)
    moments: dict = field(default_factory=dict)
    step: int = 0                          # the step a load must give

    def snapshot(self) -> "State":
        self.params = {k: np.array(v, copy=True) for k, v in self.model.parameters().items()}
        if self.optimizer:
            self.step = self.model.step
            self.moments = {k: tuple(np.array(x, copy=True) for x in self.model.optimizer_state(k))
                            for k in self.params if not k.endswith("e_score_correction_bias")}
        return self


def _trained(cfg, seed, steps):
    m = dsc.Model(cfg, seed=seed)
    rng = np.random.default_rng(seed + 7)
    for _ in range(steps):
        tok = rng.integers(0, cfg.vocab_size, (2, 12))
        m.train_step(tok, rng.integers(0, cfg.vocab_size, (2, 12)), lr=1e-2)
    return m


@pytest.fixture(scope="module")
def states():
    a_cfg = small_cfg()
    b_cfg = small_cfg(num_hidden_layers=3, moe_intermediate_size=48)  # another architecture
    return [State("A", _trained(a_cfg, 1, 1), True).snapshot(),
            State("B", _trained(b_cfg, 2, 2), True).snapshot(),
            State("C", _trained(a_cfg, 3, 3), False).snapshot()]  # loads with step 0, no moments


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def identify(m: dsc.Model, states) -> State:
    """The state m is, bitwise (weights, step, moments); AssertionError otherwise."""
    p = m.parameters()
    for s in states:
        if set(p) == set(s.params) and all(_same(p[k], s.params[k]) for k in p):
            assert m.step == s.step, f"weights of {s.name} with step {m.step} (expected {s.step})"
            for k, (ea, eb) in s.moments.items():
                a, b = m.optimizer_state(k)
                assert _same(a, ea) and _same(b, eb), f"weights of {s.name}, moments of {k} differ"
            return s
    raise AssertionError("the loaded weights are none of the saved states (a mixed checkpoint)")


# ----------------------------------------------------------------------------- helpers

UNRELATED = {"vocab.txt": b"a\nb\nc\n", "README.md": b"# my model\n", "plots/loss.png": os.urandom(3000),
             "plots/deep/x.json": b"{}"}


def put_unrelated(d):
    for rel, data in UNRELATED.items():
        p = os.path.join(d, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)


def check_unrelated(d):
    for rel, data in UNRELATED.items():
        with open(os.path.join(d, rel), "rb") as f:
            assert f.read() == data, f"{rel} changed or lost"


def leftovers(d):
    """Entries a save may leave beside d (besides the lock) and temporary files inside."""
    parent, base = os.path.split(os.path.abspath(d))
    out = [n for n in os.listdir(parent) if n.startswith((f".{base}.tmp-", f".{base}.old-"))]
    if os.path.isdir(d):
        out += [n for n in os.listdir(d) if ".tmp" in n]
    return out


def expect_contents(d, s: State):
    names = set(os.listdir(d))
    want_owned = {"config.json", "model.safetensors"} | ({"optimizer.safetensors"} if s.optimizer else set())
    assert names & set(OWNED) == want_owned, (sorted(names), s.name)
    assert names - set(OWNED) == {"vocab.txt", "README.md", "plots"}, sorted(names)


def fork() -> int:
    """os.fork(). Python >= 3.12 warns about forking a process with threads (OpenMP's); the
    children here only call dsc_model_save (no OpenMP) or flock, then os._exit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def in_child(fn):
    """Run fn() in a forked child; its return value (a str) or its exception as text."""
    r, w = os.pipe()
    pid = fork()
    if pid == 0:  # pragma: no cover (child)
        try:
            os.close(r)
            try:
                msg = "ok " + str(fn())
            except BaseException as e:  # noqa: BLE001 -- reported to the parent
                msg = f"{type(e).__name__}: {e}"
            os.write(w, msg.encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


# ----------------------------------------------------------------------------- kill test


def run_kill_trials(d, states, fallback, n_trials, budget_s):
    """SIGKILL a saving child n_trials times (or until budget_s); every load must be exactly
    the state saved before or the one being saved. Returns the counters."""
    put_unrelated(d)
    states[0].model.save(d, optimizer=True)
    cur = 0                                           # index of the state on disk
    cycle = time.perf_counter()
    for k in (1, 2, 0):
        states[k].model.save(os.path.join(os.path.dirname(d), "probe"), optimizer=states[k].optimizer)
    cycle = time.perf_counter() - cycle               # one round of the three saves
    marker_path = d + ".marker"
    rng = random.Random(1234 + fallback)
    stats = collections.Counter()
    phases = collections.Counter()
    t0 = time.perf_counter()
    trial = 0
    while trial < n_trials and (budget_s is None or time.perf_counter() - t0 < budget_s):
        trial += 1
        seq = [(cur + 1 + j) % 3 for j in range(64)]  # the states the child saves, in order
        mfd = os.open(marker_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        r, w = os.pipe()
        pid = fork()
        if pid == 0:  # pragma: no cover (child, killed)
            try:
                os.close(r)
                if fallback:
                    os.environ[NO_EXCHANGE] = "1"
                os.write(w, b"r")
                for j, k in enumerate(seq):
                    os.pwrite(mfd, f"{j} start".ljust(16).encode(), 0)
                    states[k].model.save(d, optimizer=states[k].optimizer)
                    os.pwrite(mfd, f"{j} end".ljust(16).encode(), 0)
            finally:
                os._exit(3)
        os.close(w)
        os.read(r, 1)
        time.sleep(rng.uniform(0, 1.2 * cycle))
        os.kill(pid, signal.SIGKILL)
        status = os.waitpid(pid, 0)[1]
        os.close(r)
        # a child that ended by itself had a save fail (or ran out of saves): not a kill test
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"trial {trial}: status {status}"
        text = os.pread(mfd, 16, 0).decode().split()
        os.close(mfd)
        marker = (int(text[0]), text[1]) if text else None
        if marker is None:
            allowed = {cur}
        elif marker[1] == "end":
            allowed = {seq[marker[0]]}
        else:
            allowed = {seq[marker[0] - 1] if marker[0] else cur, seq[marker[0]]}
        new = seq[marker[0]] if marker else None
        pre = _snapshot_dirs(d)  # the phase is read from the disk as the kill left it
        m = dsc.Model.from_pretrained(d)
        got = identify(m, states)
        k = states.index(got)
        assert k in allowed, (f"trial {trial}: loaded {got.name}, expected one of "
                              f"{sorted(states[i].name for i in allowed)} (marker {marker})")
        phases[_phase(pre, d, marker, k == new and len(allowed) > 1)] += 1
        stats[("old" if k != new else "new") if len(allowed) > 1 else "between"] += 1
        assert leftovers(d) == [], f"trial {trial}: leftovers after the load: {leftovers(d)}"
        check_unrelated(d)
        expect_contents(d, got)
        cur = k
    stats["trials"] = trial
    return stats, phases


def _snapshot_dirs(d):
    """Copy of the names the phase classifier looks at (the load changes them)."""
    parent, base = os.path.split(d)
    snap = {"parent": [n for n in os.listdir(parent) if n.startswith(f".{base}.")], "d": os.path.isdir(d), "gen": {}}
    for n in snap["parent"]:
        p = os.path.join(parent, n)
        if os.path.isdir(p):
            snap["gen"][n] = set(os.listdir(p))
    return snap


def _phase(snap, d, marker, loaded_new):
    """Where the child was when killed, from what it left on disk (a snapshot taken before
    the load repaired it) and whether the load gave the state being saved."""
    parent, base = os.path.split(d)
    tmp = [n for n in snap["parent"] if n.startswith(f".{base}.tmp-")]
    old = [n for n in snap["parent"] if n.startswith(f".{base}.old-")]
    if marker is None or marker[1] == "end":
        return "between saves (no save running)"
    if not snap["d"]:
        return "fallback: between the two renames (dir missing, old generation restored)"
    if old:
        return "fallback: renamed, retiring the old generation"
    if tmp and loaded_new:
        return "swapped: syncing the parent, retiring the old generation"
    if tmp:
        files = snap["gen"].get(tmp[0], set())
        if any(f.startswith("model.safetensors.tmp") for f in files):
            return "writing model.safetensors"
        if any(f.startswith("optimizer.safetensors.tmp") for f in files):
            return "writing optimizer.safetensors"
        if not files & set(OWNED):
            return "new generation created, empty"
        if files <= set(OWNED):
            return ("writing config.json, preparing the weights" if files == {"config.json"}
                    else "checkpoint files written, before carrying")
        carried = {rel.split("/")[0] for rel in UNRELATED}
        return ("carried the other files: syncing, swapping" if carried <= files
                else "carrying the other files")
    return "after the swap and cleanup" if loaded_new else "lock and recovery (no new generation yet)"


@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "two-renames"])
def test_kill_during_save_loads_old_or_new(tmp_path, states, fallback):
    long_run = int(os.environ.get("DSC_KILL_TRIALS", "0"))
    n, budget = (long_run, None) if long_run else (150, 20.0)
    d = str(tmp_path / "ckpt")
    stats, phases = run_kill_trials(d, states, fallback, n, budget)
    mode = "two renames (fallback)" if fallback else "RENAME_EXCHANGE"
    print(f"\n[{mode}] {stats['trials']} trials, 0 failures: {stats['old'] + stats['new']} killed inside a save "
          f"({stats['old']} loaded the old state, {stats['new']} the new one), {stats['between']} between saves")
    for ph, c in sorted(phases.items(), key=lambda x: -x[1]):
        print(f"  {c:5d}  {ph}")
    assert stats["trials"] >= 10
    # the kill landed inside saves, on both sides of the swap
    assert stats["old"] > 0 and stats["new"] > 0, stats


# ----------------------------------------------------------------------------- leftovers


def _fake_gen(parent, name, files):
    p = os.path.join(parent, name)
    os.mkdir(p)
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(p, rel)), exist_ok=True)
        with open(os.path.join(p, rel), "wb") as f:
            f.write(data)
    return p


def test_killed_between_the_two_renames_is_recovered(tmp_path, states):
    """The fallback's one window: dir renamed aside, the new generation not yet in place.
    The next load puts the complete old generation back; the new one is dropped."""
    a, b = states[0], states[1]
    d = str(tmp_path / "ckpt")
    a.model.save(d)
    put_unrelated(d)
    b.model.save(str(tmp_path / "b"))
    os.rename(d, str(tmp_path / ".ckpt.old-111-abcdef"))
    os.rename(str(tmp_path / "b"), str(tmp_path / ".ckpt.tmp-112-abcdef"))  # a complete new generation
    assert not os.path.exists(d)
    m = dsc.Model.from_pretrained(d)
    assert identify(m, states) is a
    assert leftovers(d) == []
    check_unrelated(d)
    # the same through a save: recovered first, then replaced
    os.rename(d, str(tmp_path / ".ckpt.old-113-abcdef"))
    b.model.save(d)
    assert identify(dsc.Model.from_pretrained(d), states) is b
    assert leftovers(d) == []
    check_unrelated(d)


def test_leftover_generations_are_retired_keeping_unrelated_files(tmp_path, states):
    """A killed save's generations (before and after the swap) are removed by the next load;
    a file only they hold (created in the old directory while the save ran) moves into dir."""
    a = states[0]
    d = str(tmp_path / "ckpt")
    a.model.save(d)
    put_unrelated(d)
    # after an exchange: the old generation, with a late file the new one lacks
    _fake_gen(str(tmp_path), ".ckpt.tmp-222-zzzzzz",
              {"config.json": b"{}", "model.safetensors": b"junk", "vocab.txt": b"old copy", "late.log": b"keep me",
               "plots/late.png": b"png"})
    # before a swap: a partial new generation, a temp file of the writer inside
    _fake_gen(str(tmp_path), ".ckpt.tmp-223-yyyyyy", {"model.safetensors.tmp.223": b"partial", "config.json": b"{"})
    # the writer before this protocol left temp files in the directory itself
    with open(os.path.join(d, "model.safetensors.tmp.9999"), "wb") as f:
        f.write(b"partial")
    # names that only look like leftovers are not touched
    os.mkdir(tmp_path / ".ckpt.tmp-1-abc")            # suffix too short
    os.mkdir(tmp_path / ".ckpt2.tmp-1-abcdef")        # another directory's
    m = dsc.Model.from_pretrained(d)
    assert identify(m, states) is a
    parent = sorted(n for n in os.listdir(tmp_path) if n.startswith("."))
    assert parent == [".ckpt.lock", ".ckpt.tmp-1-abc", ".ckpt2.tmp-1-abcdef"], parent
    check_unrelated(d)  # dir's own vocab.txt wins over the generation's copy
    assert (tmp_path / "ckpt" / "late.log").read_bytes() == b"keep me"
    assert (tmp_path / "ckpt" / "plots" / "late.png").read_bytes() == b"png"
    # the old writer's temp file goes with the next save
    assert os.path.exists(os.path.join(d, "model.safetensors.tmp.9999"))
    a.model.save(d)
    assert not os.path.exists(os.path.join(d, "model.safetensors.tmp.9999"))
    assert identify(dsc.Model.from_pretrained(d), states) is a


def test_leftovers_of_a_live_save_are_not_touched(tmp_path, states):
    """A save holds the lock: a load waits for it, and touches its generation only after."""
    import fcntl
    a = states[0]
    d = str(tmp_path / "ckpt")
    a.model.save(d)
    gen = str(tmp_path / ".ckpt.tmp-999-livegn")
    r, w = os.pipe()
    r2, w2 = os.pipe()
    pid = fork()
    if pid == 0:  # pragma: no cover (child: a save in progress)
        try:
            os.close(r)
            os.close(w2)
            fd = os.open(str(tmp_path / ".ckpt.lock"), os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX)
            _fake_gen(str(tmp_path), os.path.basename(gen), {"config.json": b"{}"})
            os.write(w, b"r")
            os.read(r2, 1)
        finally:
            os._exit(0)
    os.close(w)
    os.close(r2)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("m", dsc.Model.from_pretrained(d)))
    try:
        assert os.read(r, 1) == b"r", "the child could not take the save's lock"
        t.start()
        t.join(0.5)
        assert t.is_alive(), "the load did not wait for the save in progress"
        assert os.path.isdir(gen), "a live save's generation was touched"
    finally:
        os.close(w2)  # the save ends (its process exits without cleaning up: killed, in effect)
        os.close(r)
        os.waitpid(pid, 0)
    t.join()
    assert identify(result["m"], states) is a
    assert not os.path.exists(gen)


def test_concurrent_saves_do_not_corrupt(tmp_path, states):
    a, b = states[0], states[1]
    d = str(tmp_path / "ckpt")
    a.model.save(d)
    put_unrelated(d)
    pids = []
    for s in (a, b):
        pid = fork()
        if pid == 0:  # pragma: no cover (child)
            code = 1
            try:
                for _ in range(8):
                    s.model.save(d, optimizer=s.optimizer)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert identify(dsc.Model.from_pretrained(d), states) in (a, b)
    assert leftovers(d) == []
    check_unrelated(d)


# ----------------------------------------------------------------------------- failures


def _save_with_fsize_limit(model, d, limit):
    def go():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        model.save(d)
    return in_child(go)


@pytest.mark.parametrize("failing", ["config.json", "model.safetensors", "optimizer.safetensors"])
def test_full_disk_leaves_the_old_checkpoint(tmp_path, states, failing):
    """RLIMIT_FSIZE makes the write of one file fail (EFBIG, as ENOSPC would): the save
    fails naming that file and the reason; the old checkpoint (another architecture) is
    intact and loads; nothing is left behind."""
    a, b = states[0], states[1]
    d = str(tmp_path / "ckpt")
    b.model.save(d)
    put_unrelated(d)
    before = sorted(os.listdir(d))
    sizes = {f: os.path.getsize(os.path.join(d, f)) for f in OWNED}
    a.model.save(str(tmp_path / "probe"))
    new = {f: os.path.getsize(os.path.join(tmp_path / "probe", f)) for f in OWNED}
    # a limit that lets every file before `failing` through, but not `failing`
    limit = {"config.json": new["config.json"] // 2,
             "model.safetensors": (new["config.json"] + new["model.safetensors"]) // 2,
             "optimizer.safetensors": (new["model.safetensors"] + new["optimizer.safetensors"]) // 2}[failing]
    assert all(new[f] <= limit for f in OWNED[:OWNED.index(failing)]) and new[failing] > limit
    msg = _save_with_fsize_limit(a.model, d, limit)
    assert msg.startswith("Error: ") and "dsc_model_save" in msg, msg
    assert f"cannot write {failing} of the checkpoint '{d}'" in msg, msg
    assert "File too large" in msg and "untouched" in msg, msg
    assert sorted(os.listdir(d)) == before
    assert {f: os.path.getsize(os.path.join(d, f)) for f in OWNED} == sizes
    assert leftovers(d) == []
    assert identify(dsc.Model.from_pretrained(d), states) is b
    check_unrelated(d)


def _unprivileged(fn):
    """fn in a child without write access where the test's directories are root's."""
    def go():
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)  # nobody
        return fn()
    return in_child(go)


def test_permission_denied_is_a_clear_error(states):
    a, b = states[0], states[1]
    base = tempfile.mkdtemp(prefix="dsc_perm_")
    try:
        os.chmod(base, 0o755)
        d = os.path.join(base, "ckpt")
        b.model.save(d)
        put_unrelated(d)
        if os.geteuid() != 0:  # the owner: take the write bits away instead
            os.chmod(d, 0o555)
        msg = _unprivileged(lambda: a.model.save(d))
        assert msg.startswith("Error: ") and f"dir: '{d}' is not writable: Permission denied" in msg, msg
        if os.geteuid() != 0:
            os.chmod(d, 0o755)
            os.chmod(base, 0o555)
        new = os.path.join(base, "fresh")
        msg = _unprivileged(lambda: a.model.save(new))
        assert msg.startswith("Error: ") and "Permission denied" in msg and "cannot create" in msg, msg
        assert "parent directory must be writable" in msg or "cannot create '" in msg, msg
        os.chmod(base, 0o755)
        assert not os.path.exists(new)
        assert leftovers(d) == []
        assert identify(dsc.Model.from_pretrained(d), states) is b
        check_unrelated(d)
    finally:
        os.chmod(base, 0o755)
        for root, dirs, files in os.walk(base, topdown=False):
            for f in files:
                os.unlink(os.path.join(root, f))
            for x in dirs:
                os.rmdir(os.path.join(root, x))
        os.rmdir(base)


# ----------------------------------------------------------------------------- what survives


def test_unrelated_files_survive_and_keep_their_inode(tmp_path, states):
    a, b, c = states
    d = tmp_path / "ckpt"
    d.mkdir()
    put_unrelated(str(d))           # a directory with files but no checkpoint yet
    (d / "readonly.txt").write_bytes(b"ro")
    os.chmod(d / "readonly.txt", 0o444)
    os.symlink("vocab.txt", d / "link")
    ino = {n: os.stat(d / n).st_ino for n in ("vocab.txt", "README.md", "plots/loss.png", "readonly.txt")}
    os.chmod(d, 0o750)
    for s in (a, b, c, a):          # over another architecture, without and with the optimizer
        s.model.save(str(d), optimizer=s.optimizer)
        assert identify(dsc.Model.from_pretrained(d), states) is s
        check_unrelated(str(d))
        assert {n: os.stat(d / n).st_ino for n in ino} == ino  # hard links, not copies
        assert os.readlink(d / "link") == "vocab.txt"
        assert stat.S_IMODE(os.stat(d / "readonly.txt").st_mode) == 0o444
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o750
        assert leftovers(str(d)) == []
    assert sorted(n for n in os.listdir(tmp_path)) == [".ckpt.lock", "ckpt"]


def test_save_over_hub_shards_replaces_them(tmp_path, states):
    """A Hub-style sharded checkpoint: its shards and index are the save's to replace."""
    a, b = states[0], states[1]
    d = tmp_path / "ckpt"
    b.model.save(str(tmp_path / "src"))
    sd = dsc.load_safetensors(tmp_path / "src" / "model.safetensors")
    keys = sorted(sd)
    d.mkdir()
    (d / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    dsc.save_safetensors(d / "model-00001-of-00002.safetensors", {k: sd[k] for k in keys[::2]})
    dsc.save_safetensors(d / "model-00002-of-00002.safetensors", {k: sd[k] for k in keys[1::2]})
    (d / "model.safetensors.index.json").write_text("{}")
    (d / "tokenizer.json").write_text("{}")
    assert dsc.Model.from_pretrained(d).parameters().keys() == b.params.keys()
    a.model.save(str(d))
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors", "optimizer.safetensors", "tokenizer.json"]
    assert identify(dsc.Model.from_pretrained(d), states) is a


def test_new_directory_fallback_and_working_directory(tmp_path, states, monkeypatch):
    a, b = states[0], states[1]
    d = tmp_path / "x" / "y" / "ckpt"                     # parents created
    a.model.save(str(d) + "/")
    assert identify(dsc.Model.from_pretrained(d), states) is a
    monkeypatch.setenv(NO_EXCHANGE, "1")                  # the two-rename swap end to end
    b.model.save(str(d))
    assert identify(dsc.Model.from_pretrained(d), states) is b
    assert leftovers(str(d)) == []
    monkeypatch.delenv(NO_EXCHANGE)
    # saving "." from inside: the process follows the directory to its new generation
    monkeypatch.chdir(d)
    a.model.save(".")
    assert os.path.samefile(os.getcwd(), d)
    assert identify(dsc.Model.from_pretrained("."), states) is a
    # through a symlink: the target is replaced, the link stays
    monkeypatch.chdir(tmp_path)
    os.symlink(d, tmp_path / "latest")
    b.model.save(str(tmp_path / "latest"))
    assert os.path.islink(tmp_path / "latest")
    assert identify(dsc.Model.from_pretrained(d), states) is b


def test_bad_targets_are_clear_errors(tmp_path, states):
    a = states[0]
    (tmp_path / "file").write_text("x")
    with pytest.raises(dsc.Error, match="'.*file' exists and is not a directory"):
        a.model.save(str(tmp_path / "file"))
    with pytest.raises(ValueError, match="root directory"):
        a.model.save("/")
    with pytest.raises(ValueError, match="no such directory"):
        dsc.Model.from_pretrained(tmp_path / "missing")
