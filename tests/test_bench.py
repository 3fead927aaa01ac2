"""Smoke test of the benchmark runner, so that it cannot rot.

A host test: bench/run.py boots the lab itself (one boot, tiny counts). It checks
that every section produced numbers and that the hold-capacity checks held; it
asserts nothing about timings.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(
    not os.path.exists("/usr/bin/linux.uml") or shutil.which("gcc") is None,
    reason="needs the lab's UML kernel (apt-get install user-mode-linux) and gcc")


def positive(x):
    return isinstance(x, (int, float)) and x > 0


def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "run.py"), "--smoke", "--no-install",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["errors"] == {}
    assert res["uml_kernel"] and res["machine"]["host_kernel"] and res["machine"]["python"]

    ops = res["ops"]["us_per_pair"]
    for k in ("floor", "plugqdisc", "haproxy_api", "tc"):
        assert positive(ops[k]["median"]) and positive(ops[k]["ratio_to_floor"]), k
    # pyroute2 is optional (--no-install): a number if present, else the row says why.
    assert ops["pyroute2"] is None or positive(ops["pyroute2"]["median"])
    if ops["pyroute2"] is None:
        assert "unavailable" in res["ops"]["notes"]["pyroute2"]

    links = res["links"]["by_dummies"]
    assert sorted(links, key=int) == ["1", "100", "1000"]
    for row in links.values():
        assert row["links"] > 0
        for k in ("plugqdisc", "plugqdisc_attach_only", "cache_c"):
            assert positive(row[k]["median"]), k

    tcp, udp = res["hold"]["tcp"], res["hold"]["udp"]
    assert tcp["qlen_reached"] and tcp["zero_drops"] and tcp["in_order"]
    assert positive(tcp["drain_ms"]["median"])
    assert udp["drops_match"] and udp["first_kept_in_order"]
    assert set(udp["drops"]) == {udp["expected_drops"]}

    loss = res["loss"]["kinds"]
    for k in ("plain", "match", "tc"):
        assert positive(loss[k]["sent"]) and 0 <= loss[k]["lost"] <= loss[k]["sent"], k

    multi = res["multi"]
    for k in ("one_hold", "fifteen_holds"):
        assert positive(multi["us_per_pair"][k]["median"]), k
    assert len(multi["attach_kth_us"]) == multi["holds"] == 15
    assert all(positive(row["median"]) for row in multi["attach_kth_us"])
    assert positive(multi["unselected_rtt_us"]["fifteen_holds"]["median"])
    remote = res["remote"]
    for k in ("local", "remote"):
        assert positive(remote["us_per_pair"][k]["median"]), k
    for k in ("group", "sequential"):
        assert positive(remote["skew_us"][k]["median"]), k

    lat = res["latency"]["release_to_readable_us"]
    assert positive(lat["median"]) and positive(lat["p99"])
    assert {t["result"] for t in res["targets"]} <= {"PASS", "MISS", "N/A"}
    assert "only ratios" in proc.stdout
