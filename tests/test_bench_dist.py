"""benchmarks/bench_dist.py --quick on 1 and 2 ranks (MPI): the result file has the recorded
structure, and on every rank the bytes and operations the model's communicators counted in a
step equal the count the script derives from the algorithms (expert-parallel rows and counts,
gradient all-reduces per region, the step's statistics, the replica check). A change to what
a step sends -- another row format, another all-reduce algorithm, a new collective -- fails
here until the count in the script's docstring is updated with it.

Skipped with the reason when mpirun, mpi4py or the build's MPI backend is missing."""

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_dist import NO_MPI  # noqa: E402 -- mpirun, mpi4py and the build's MPI backend, or why not

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "bench_dist.py")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    if NO_MPI:
        pytest.skip(NO_MPI)
    out = tmp_path_factory.mktemp("bench_dist")
    p = subprocess.run([sys.executable, SCRIPT, "--quick", "--worlds", "1,2", "--steps", "3", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, f"bench_dist failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    files = list(out.glob("dist_cpu_*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_structure(result):
    for k in ("machine", "cpu_count", "date", "commit", "command", "load_at_start", "load_at_end", "config",
              "batch_per_rank", "seq", "timed_steps", "definitions", "runs"):
        assert k in result, k
    assert result["cpu_count"] == os.cpu_count()
    for k in ("tokens_per_s", "efficiency", "wait_share", "busy_share", "bytes_check"):
        assert k in result["definitions"], k
    kinds = {(r["world"], r["mode"], r["ep_micro_batches"], r["overlap"]) for r in result["runs"]}
    assert kinds == {(1, "single", 1, True), (2, "ep", 1, True), (2, "ep", 2, True), (2, "dp", 1, True),
                     (2, "dp", 1, False)}, kinds
    for r in result["runs"]:
        assert r["tokens_per_s"] > 0 and r["wall_seconds"] > 0
        assert r["tokens_per_step"] == r["world"] * result["batch_per_rank"] * result["seq"]
        assert r["expert_parallel"] * r["data_parallel"] == r["world"]
        c = r["comm"]
        assert 0.0 <= c["wait_share_mean"] <= c["wait_share_max"] <= 1.0 + 1e-6, c
        assert c["busy_share_mean"] >= 0.0
        if r["world"] == 1:
            assert r["efficiency"] == 1.0
            assert c["ops_per_step"] == 0 and c["bytes_sent_per_step_rank0"] == 0
        else:
            assert r["efficiency"] > 0
            assert c["ops_per_step"] > 0 and c["bytes_sent_per_step_rank0"] > 0


def test_measured_bytes_equal_the_analytic_count(result):
    for r in result["runs"]:
        rows = r["bytes_check"]["per_rank_step"]
        assert {x["rank"] for x in rows} == set(range(r["world"])), rows
        for x in rows:
            where = f"W={r['world']} {r['mode']} mb={r['ep_micro_batches']} overlap={r['overlap']} rank {x['rank']}"
            assert x["measured_bytes_sent"] == x["analytic_bytes"], (where, x)
            assert x["measured_bytes_received"] == x["analytic_bytes"], (where, x)
            assert x["measured_ops"] == x["analytic_ops"], (where, x)
            assert sum(x["analytic_parts"].values()) == x["analytic_bytes"]
            if r["world"] > 1:
                assert x["ratio_sent"] == 1.0
        assert r["bytes_check"]["exact"]
        parts = rows[0]["analytic_parts"]
        if r["mode"] == "ep":  # token rows travel; the expert stacks' gradients stay (dp = 1)
            assert parts["ep_rows"] > 0 and parts["ep_counts"] > 0 and parts["grad_norm"] > 0
        if r["mode"] == "dp":
            assert parts["ep_rows"] == 0 and parts["grad_sum"] > 0
    ep = {r["ep_micro_batches"]: r for r in result["runs"] if r["mode"] == "ep"}
    # two micro-batches: twice the counts exchanges, the same rows
    c1, c2 = (ep[k]["bytes_check"]["per_rank_step"][0]["analytic_parts"]["ep_counts"] for k in (1, 2))
    assert c2 == 2 * c1
