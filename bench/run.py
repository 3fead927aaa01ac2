"""Benchmark plugqdisc inside the lab: python bench/run.py [--rounds N] [--iterations X]
[--smoke] [--no-install] [--out PATH]

Boots the lab (User-Mode Linux with sch_plug) ONCE and runs bench/_inner.py in it,
which takes every measurement; this host side builds the C baselines first, then
turns the raw samples into medians and spreads, prints a markdown table with the
targets (PASS/MISS), and writes everything as JSON (default bench/results/latest.json).

Timings under UML are slow and skewed (a syscall costs ~100 us): only the ratios
between figures of one run mean anything.

Exit status: 0 when every section ran and the hold-capacity checks held (targets
that MISS do not fail the run: they are timings), 1 when a correctness check failed,
2 when a section or the lab failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # run from a checkout: use this plugqdisc, not another

from plugqdisc import lab  # noqa: E402
from setup import compile_c  # noqa: E402  (the build's own: the flags the extension gets)

NOTE = ("Timings are taken inside User-Mode Linux, where a syscall costs ~100 us: absolute "
        "values are not those of a real kernel; only ratios within this one run mean anything.")

# Per round, at --iterations 1 (and --smoke).
COUNTS = {
    "n_fast": (500, 10), "n_pyroute2": (100, 3), "n_tc": (10, 1), "n_attach": (20, 2),
    "segments": (10000, 10000), "udp_datagrams": (1500, 150), "udp_keep": (1000, 100),
    "latency_samples": (200, 10), "n_loss": (30, 3), "n_remote": (200, 10), "n_skew": (40, 4),
}


def build(src: str, out_dir: str, shared: bool = False) -> str:
    """Compile one C baseline against libnl (on the host; the lab sees the same files)."""
    exe = os.path.join(out_dir, os.path.splitext(os.path.basename(src))[0])
    extra = ["-shared", "-fPIC"] if shared else []
    exe += ".so" if shared else ""
    return compile_c([src], exe, ["-O2", "-Wall", "-Wextra"] + extra)


def ensure_pyroute2() -> str:
    """pyroute2 is a benchmark-only comparison: install it into this interpreter's
    environment if missing. Returns a note for the JSON."""
    try:
        import pyroute2  # noqa: F401
        return "present"
    except ImportError:
        pass
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "pyroute2"])
    return "installed" if r.returncode == 0 else "pip install failed (row unavailable)"


def machine() -> dict:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"host_kernel": platform.release(), "cpu": cpu, "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def summary(xs: list) -> dict:
    """Median and spread (min, max, quartiles) of a list of samples."""
    xs = sorted(xs)
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "q1": q1, "q3": q3,
            "n": len(xs)}


def percentile(xs: list, p: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def target(name: str, value: float, op: str, bound: float) -> dict:
    ok = value <= bound if op == "<=" else value >= bound
    return {"target": name, "value": value, "op": op, "bound": bound,
            "result": "PASS" if ok else "MISS"}


def analyse(raw: dict) -> dict:
    out: dict = {}
    targets = []
    ops = raw.get("ops")
    if ops:
        rows = {}
        for k, xs in ops["samples_us"].items():
            rows[k] = summary(xs) if xs else None
        floor = rows["floor"]["median"]
        for k, row in rows.items():
            if row:
                row["ratio_to_floor"] = row["median"] / floor
        out["ops"] = {"us_per_pair": rows, "pairs_per_round": ops["pairs_per_round"],
                      "notes": ops["notes"], "final_stats": ops["final_stats"]}
        b = rows["plugqdisc"]["median"]
        targets.append(target("(b)/(a) PlugQdisc vs C floor", b / floor, "<=", 1.10))
        if rows.get("floor_peek"):
            out["ops"]["floor_peek_ratio"] = rows["floor_peek"]["median"] / floor
        targets.append(target("(c)/(a) HAProxy API vs C floor",
                              rows["haproxy_api"]["median"] / floor, "<=", 1.10))
        if rows["pyroute2"]:
            targets.append(target("(d)/(b) pyroute2 vs PlugQdisc",
                                  rows["pyroute2"]["median"] / b, ">=", 10))
        else:
            targets.append({"target": "(d)/(b) pyroute2 vs PlugQdisc", "result": "N/A",
                            "value": None, "op": ">=", "bound": 10})
        targets.append(target("(e)/(b) tc process vs PlugQdisc",
                              rows["tc"]["median"] / b, ">=", 300))
    links = raw.get("links")
    if links:
        rows = {}
        for count, r in links["by_dummies"].items():
            rows[count] = {"links": r["links"], "plugqdisc": summary(r["plugqdisc_us"]),
                           "plugqdisc_attach_only": summary(r["plugqdisc_attach_only_us"]),
                           "cache_c": summary(r["cache_c_us"])}
        out["links"] = {"by_dummies": rows, "iterations_per_round": links["iterations_per_round"]}
        counts = sorted(rows, key=int)
        lo, hi = rows[counts[0]], rows[counts[-1]]
        targets.append(target("attach %s links / %s links (plugqdisc)"
                              % (hi["links"], lo["links"]),
                              hi["plugqdisc"]["median"] / lo["plugqdisc"]["median"], "<=", 1.5))
    hold = raw.get("hold")
    if hold:
        tcp, udp = hold["tcp"], hold["udp"]
        out["hold"] = {
            "tcp": {"segments": tcp[0]["segments"],
                    "qlen_reached": all(t["qlen_reached"] for t in tcp),
                    "zero_drops": all(t["zero_drops"] for t in tcp),
                    "in_order": all(t["in_order"] for t in tcp),
                    "max_qlen": max(t["held"]["qlen"] for t in tcp),
                    "drain_ms": summary([t["drain_s"] * 1000 for t in tcp])},
            "udp": {"datagrams": udp[0]["datagrams"], "limit": udp[0]["limit"],
                    "bytes_on_lo": udp[0]["bytes_on_lo"],
                    "expected_drops": udp[0]["expected_drops"],
                    "drops": [u["drops"] for u in udp],
                    "received": [u["received"] for u in udp],
                    "drops_match": all(u["drops_match"] for u in udp),
                    "first_kept_in_order": all(u["first_kept_in_order"] for u in udp)},
            "rounds": hold,
        }
    lat = raw.get("latency")
    if lat:
        s = lat["samples_us"]
        out["latency"] = {"release_to_readable_us": dict(summary(s), p99=percentile(s, 99)),
                          "poll_floor_us": dict(summary(lat["poll_floor_us"]),
                                                p99=percentile(lat["poll_floor_us"], 99)),
                          "method": lat["method"]}
    modes = raw.get("modes")
    if modes:
        rows = {k: summary(xs) for k, xs in modes["samples_us"].items()}
        base, plain = rows["plain_unguarded"]["median"], rows["plain"]["median"]
        for k, row in rows.items():
            row["ratio"] = row["median"] / base
        ad = {k: summary(xs) for k, xs in modes["attach_detach_us"].items()}
        rtt = {k: summary(xs) for k, xs in modes["unmatched_rtt_us"].items()}
        out["modes"] = {"us_per_pair": rows, "attach_detach_us": ad, "unmatched_rtt_us": rtt,
                        "pairs_per_round": modes["pairs_per_round"]}
        targets.append(target("guardian on / guard=False (buffer+release)", plain / base,
                              "<=", 1.05))
        targets.append(target("match hold / plain (buffer+release)",
                              rows["match"]["median"] / plain, "<=", 1.10))
        targets.append(target("ingress hold / plain (buffer+release)",
                              rows["ingress"]["median"] / plain, "<=", 1.10))
        targets.append(target("unmatched UDP round trip during a match hold / no qdisc",
                              rtt["match_hold"]["median"] / rtt["none"]["median"], "<=", 1.20))
    guard = raw.get("guard")
    if guard:
        g: dict = {}
        for kind, xs in guard["in_process_us"].items():
            g[kind] = {k: summary(v) for k, v in xs.items()}
            g[kind]["ratio"] = g[kind]["guarded"]["median"] / g[kind]["unguarded"]["median"]
            targets.append(target("guarded / guard=False attach+buffer+detach, one process "
                                  "(%s)" % kind, g[kind]["ratio"], "<=", 1.25))
        fresh = {k: summary(v) for k, v in guard["fresh_process_us"].items()}
        fresh["ratio"] = fresh["guarded"]["median"] / fresh["unguarded"]["median"]
        g["fresh"] = fresh
        targets.append(target("first guarded / guard=False attach+buffer+detach, fresh "
                              "process", fresh["ratio"], "<=", 2.0))
        out["guard"] = g
    loss = raw.get("loss")
    if loss:
        n = loss["cycles"]
        kinds = {k: dict(v, lost_per_cycle=v["lost"] / n) for k, v in loss["kinds"].items()}
        out["loss"] = {"cycles": n, "rate": loss["rate"], "kinds": kinds}
        tc_rate = kinds["tc"]["lost_per_cycle"]
        for k in ("plain", "match"):
            targets.append(target("datagrams lost per %s hold cycle <= per tc cycle" % k,
                                  kinds[k]["lost_per_cycle"], "<=", tc_rate))
    multi = raw.get("multi")
    if multi:
        rows = {k: summary(xs) for k, xs in multi["samples_us"].items()}
        kth = [summary(xs) for xs in multi["attach_kth_us"]]
        rtt = {k: summary(xs) for k, xs in multi["unselected_rtt_us"].items()}
        n = multi["holds"]
        out["multi"] = {"holds": n, "us_per_pair": rows, "attach_kth_us": kth,
                        "unselected_rtt_us": rtt, "pairs_per_round": multi["pairs_per_round"]}
        targets.append(target("buffer+release, %d holds on the device / one" % n,
                              rows["fifteen_holds"]["median"] / rows["one_hold"]["median"],
                              "<=", 1.10))
        targets.append(target("unselected UDP round trip, %d holds holding / no qdisc" % n,
                              rtt["fifteen_holds"]["median"] / rtt["none"]["median"], "<=",
                              1.20))
        pair = {k: summary(xs) for k, xs in multi["attach_first_fifteenth_us"].items()}
        out["multi"]["attach_first_fifteenth_us"] = pair
        targets.append(target("attach of the %dth hold / the first (in turn)" % n,
                              pair["fifteenth"]["median"] / pair["first"]["median"], "<=",
                              1.5))
    remote = raw.get("remote")
    if remote:
        pair = {k: summary(v) for k, v in remote["samples_us"].items()}
        skew = {k: summary(v) for k, v in remote["skew_us"].items()}
        out["remote"] = {"us_per_pair": pair, "skew_us": skew,
                         "pair_ratio": pair["remote"]["median"] / pair["local"]["median"],
                         "skew_ratio": skew["group"]["median"] / skew["sequential"]["median"],
                         "pairs_per_round": remote["pairs_per_round"], "cues": remote["cues"]}
        # The lab has one CPU: the 4 remote ends run one after another whatever the cue, so
        # this ratio is the least a group gains; on 4 machines they run at once.
        targets.append(target("skew of 4 targets, one group call / 4 sequential calls",
                              out["remote"]["skew_ratio"], "<=", 1.0))
    out["targets"] = targets
    return out


def fmt(x: float) -> str:
    return "%.0f" % x if x >= 100 else "%.1f" % x


def table(res: dict) -> str:
    """The results as markdown (what goes into the README's Performance section)."""
    L = []
    m = res["machine"]
    L.append("Measured %s in one lab boot (UML %s on host kernel %s, %s, Python %s); "
             "%d rounds, %s: `%s`." % (m["date"][:10], res.get("uml_kernel", "?"),
                                       m["host_kernel"], m["cpu"], m["python"], res["rounds"],
                                       "smoke counts" if res["smoke"] else
                                       "iterations x%g" % res["iterations"], res["command"]))
    L.append("")
    L.append("*" + NOTE + "*")
    ops = res.get("ops")
    if ops:
        names = {"floor_peek": "(a0) C loop over libnl, default socket (peeks: 3 syscalls per "
                               "operation)",
                 "floor": "(a) C loop over libnl, peeking off (2 syscalls: the floor)",
                 "plugqdisc": "(b) `PlugQdisc.buffer()` / `release()`",
                 "haproxy_api": "(c) `plug_buffer()` / `release_indefinite_buffer()`",
                 "pyroute2": "(d) pyroute2 `IPRoute().tc(\"change\", \"plug\", ...)`",
                 "tc": "(e) `tc qdisc change ... plug block` / `release_indefinite`, a process each"}
        L += ["", "**One operation** (a buffer + release pair on lo), µs per pair:", "",
              "| variant | median | min – max | ratio to (a) | pairs/round |",
              "|---|---:|---:|---:|---:|"]
        for k, label in names.items():
            row = ops["us_per_pair"].get(k)
            if not row:
                L.append("| %s | %s | | | |" % (label, ops["notes"].get(k, "unavailable")))
                continue
            L.append("| %s | %s | %s – %s | %.2f | %d |" % (
                label, fmt(row["median"]), fmt(row["min"]), fmt(row["max"]),
                row["ratio_to_floor"], ops["pairs_per_round"][k]))
    links = res.get("links")
    if links:
        L += ["", "**Attach + detach against the number of links**, µs per attach + detach "
              "(median, min – max):", "",
              "| dummy devices (links) | plugqdisc attach + detach | plugqdisc attach only "
              "| C, link cache of every link (HAProxy helper) |", "|---|---:|---:|---:|"]
        for count, r in sorted(links["by_dummies"].items(), key=lambda kv: int(kv[0])):
            cells = []
            for k in ("plugqdisc", "plugqdisc_attach_only", "cache_c"):
                s = r[k]
                cells.append("%s (%s – %s)" % (fmt(s["median"]), fmt(s["min"]), fmt(s["max"])))
            L.append("| %s (%d) | %s |" % (count, r["links"], " | ".join(cells)))
    hold = res.get("hold")
    if hold:
        t, u = hold["tcp"], hold["udp"]
        d = t["drain_ms"]
        L += ["", "**Hold capacity**:", "",
              "| check | result |", "|---|---|",
              "| %d TCP segments held (qlen reached, max %d) | %s |"
              % (t["segments"], t["max_qlen"], yes(t["qlen_reached"])),
              "| ... released: zero drops | %s |" % yes(t["zero_drops"]),
              "| ... every byte delivered in order | %s |" % yes(t["in_order"]),
              "| ... time to drain after release, ms | %s (%s – %s) |"
              % (fmt(d["median"]), fmt(d["min"]), fmt(d["max"])),
              "| %d UDP datagrams of %d bytes on lo, limit %d B: drops = expected %d "
              "(got %s), received %s | %s |"
              % (u["datagrams"], u["bytes_on_lo"], u["limit"], u["expected_drops"],
                 "/".join(map(str, sorted(set(u["drops"])))),
                 "/".join(map(str, sorted(set(u["received"])))),
                 yes(u["drops_match"] and u["first_kept_in_order"]))]
    lat = res.get("latency")
    if lat:
        r, p = lat["release_to_readable_us"], lat["poll_floor_us"]
        L += ["", "**Release latency** (release() returns -> the held data is readable; %s), "
              "µs over %d samples: median %s, p99 %s, min %s, max %s. For scale, the same "
              "poll() on an already readable socket: median %s, p99 %s."
              % (lat["method"], r["n"], fmt(r["median"]), fmt(r["p99"]), fmt(r["min"]),
                 fmt(r["max"]), fmt(p["median"]), fmt(p["p99"]))]
    modes = res.get("modes")
    if modes:
        names = {"plain_unguarded": "plain, `guard=False`", "plain": "plain (guardian on)",
                 "plain_max_hold": "plain, `max_hold=3600`", "match": "selective (`match=`)",
                 "ingress": "ingress (`direction=\"ingress\"`)"}
        L += ["", "**Kinds of hold**, buffer + release pair, µs (each on its own dummy device):",
              "", "| hold | median | min – max | ratio to `guard=False` |", "|---|---:|---:|---:|"]
        for k, label in names.items():
            row = modes["us_per_pair"][k]
            L.append("| %s | %s | %s – %s | %.2f |" % (label, fmt(row["median"]),
                                                       fmt(row["min"]), fmt(row["max"]),
                                                       row["ratio"]))
        L += ["", "Attach + detach, µs (median, min – max): " + ", ".join(
            "%s %s (%s – %s)" % (k, fmt(v["median"]), fmt(v["min"]), fmt(v["max"]))
            for k, v in modes["attach_detach_us"].items()) + "."]
        r = modes["unmatched_rtt_us"]
        L += ["", "UDP round trip on lo of traffic a match hold does not select, µs (median): "
              "no qdisc %s, during a match hold %s." % (fmt(r["none"]["median"]),
                                                      fmt(r["match_hold"]["median"]))]
    guard = res.get("guard")
    if guard:
        L += ["", "**The guardian's cost to a test that attaches in every test**: attach + "
              "buffer + detach, µs (median, min – max), guarded against `guard=False`, turn by "
              "turn:", "", "| where | guarded | `guard=False` | ratio |", "|---|---:|---:|---:|"]
        for k, label in (("plain", "one process, plain (after its first guarded cycle)"),
                         ("match", "one process, match (after its first guarded cycle)"),
                         ("fresh", "a fresh process's first cycle (import excluded)")):
            row = guard[k]
            L.append("| %s | %s (%s – %s) | %s (%s – %s) | %.2f |" % (
                label, fmt(row["guarded"]["median"]), fmt(row["guarded"]["min"]),
                fmt(row["guarded"]["max"]), fmt(row["unguarded"]["median"]),
                fmt(row["unguarded"]["min"]), fmt(row["unguarded"]["max"]), row["ratio"]))
    loss = res.get("loss")
    if loss:
        labels = {"plain": "plugqdisc, plain: attach, buffer, release, detach",
                  "match": "plugqdisc, match selecting none of it: the same",
                  "tc": "tc: `qdisc add ... plug`, `change ... release_indefinite`, `del`"}
        L += ["", "**Traffic lost while holds come and go**: UDP at %d datagrams/s on lo that "
              "no hold keeps, during %d cycles of each (10 ms apart):" % (loss["rate"],
                                                                          loss["cycles"]),
              "", "| cycles of | sent | lost | lost per cycle | ms per cycle |",
              "|---|---:|---:|---:|---:|"]
        for k, label in labels.items():
            r = loss["kinds"][k]
            L.append("| %s | %d | %d | %.2f | %s |" % (label, r["sent"], r["lost"],
                                                      r["lost_per_cycle"], fmt(r["cycle_ms"])))
    multi = res.get("multi")
    if multi:
        n, rows = multi["holds"], multi["us_per_pair"]
        L += ["", "**Several holds on one device**: buffer + release of one selective hold, "
              "µs (median, min – max): alone on its device %s (%s – %s), the last of %d on "
              "its device %s (%s – %s)." % (
                  fmt(rows["one_hold"]["median"]), fmt(rows["one_hold"]["min"]),
                  fmt(rows["one_hold"]["max"]), n, fmt(rows["fifteen_holds"]["median"]),
                  fmt(rows["fifteen_holds"]["min"]), fmt(rows["fifteen_holds"]["max"]))]
        k = multi["attach_kth_us"]
        L += ["", "Attach of the k-th hold on one device, one after the other, µs (median): "
              + ", ".join("%d: %s" % (i + 1, fmt(row["median"])) for i, row in enumerate(k))
              + ". Measured in turn (the target): the first on the empty device %s, the %dth "
              "beside %d others %s." % (
                  fmt(multi["attach_first_fifteenth_us"]["first"]["median"]), n, n - 1,
                  fmt(multi["attach_first_fifteenth_us"]["fifteenth"]["median"]))]
        r = multi["unselected_rtt_us"]
        L += ["", "UDP round trip on lo of traffic that none of %d holding holds selects, µs "
              "(median): no qdisc %s, with the %d holds %s." % (
                  n, fmt(r["none"]["median"]), n, fmt(r["fifteen_holds"]["median"]))]
    remote = res.get("remote")
    if remote:
        p, k = remote["us_per_pair"], remote["skew_us"]
        L += ["", "**Remote holds** (`plugqdisc.remote` over `ip netns exec NS`, the remote end "
              "a `plugqdisc hold --control` there), µs (median, min – max):", "",
              "| measure | value | ratio |", "|---|---:|---:|",
              "| buffer + release pair, local `PlugQdisc` | %s (%s – %s) | 1.00 |"
              % (fmt(p["local"]["median"]), fmt(p["local"]["min"]), fmt(p["local"]["max"])),
              "| buffer + release pair, `RemoteHold` | %s (%s – %s) | %.2f |"
              % (fmt(p["remote"]["median"]), fmt(p["remote"]["min"]), fmt(p["remote"]["max"]),
                 remote["pair_ratio"]),
              "| skew of 4 targets to hold, 4 sequential `buffer()` calls | %s (%s – %s) | 1.00 |"
              % (fmt(k["sequential"]["median"]), fmt(k["sequential"]["min"]),
                 fmt(k["sequential"]["max"])),
              "| skew of 4 targets to hold, one `Group.buffer()` | %s (%s – %s) | %.2f |"
              % (fmt(k["group"]["median"]), fmt(k["group"]["min"]), fmt(k["group"]["max"]),
                 remote["skew_ratio"])]
    L += ["", "**Targets** (ratios within this run):", "", "| target | value | bound | result |",
          "|---|---:|---:|---|"]
    for t in res["targets"]:
        v = "n/a" if t["value"] is None else "%.2f" % t["value"]
        L.append("| %s | %s | %s %g | %s |" % (t["target"], v, t["op"], t["bound"], t["result"]))
    if res.get("errors"):
        L += ["", "**Sections that failed:** %s" % ", ".join(sorted(res["errors"]))]
    return "\n".join(L) + "\n"


def yes(b: bool) -> str:
    return "yes" if b else "**NO**"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, help="rounds per figure (default 5; smoke 2)")
    p.add_argument("--iterations", type=float, default=1.0,
                   help="scale every iteration count by this factor (default 1)")
    p.add_argument("--smoke", action="store_true", help="tiny counts, to check the runner works")
    p.add_argument("--out", default=os.path.join(HERE, "results", "latest.json"),
                   help="where to write the JSON (default bench/results/latest.json)")
    p.add_argument("--no-install", action="store_true",
                   help="do not pip install pyroute2 when missing (its row then says so)")
    p.add_argument("--timeout", type=float, default=1800, help="stop the lab after this long")
    a = p.parse_args(argv)
    rounds = a.rounds or (2 if a.smoke else 5)
    started = time.monotonic()

    install = "skipped (--no-install)" if a.no_install else ensure_pyroute2()
    build_dir = os.path.join(HERE, "build")
    os.makedirs(build_dir, exist_ok=True)
    floor = build(os.path.join(HERE, "floor.c"), build_dir, shared=True)
    cache_attach = build(os.path.join(HERE, "cache_attach.c"), build_dir)

    counts = {k: (v[1] if a.smoke else max(1, round(v[0] * a.iterations)))
              for k, v in COUNTS.items()}
    counts["udp_keep"] = min(counts["udp_keep"], counts["udp_datagrams"] - 1)
    fd, raw_path = tempfile.mkstemp(prefix="plugqdisc-bench-", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, os.path.join(HERE, "_inner.py"), "--json-out", raw_path,
           "--floor", floor, "--cache-attach", cache_attach, "--rounds", str(rounds),
           "--link-counts", "1,100,1000"]
    for k, v in counts.items():
        cmd += ["--" + k.replace("_", "-"), str(v)]
    env = dict(os.environ)
    # The inner script imports this checkout's plugqdisc whatever the venv has.
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    print("bench: booting the lab once; %d rounds%s" % (rounds, " (smoke)" if a.smoke else ""),
          flush=True)
    try:
        proc = lab.run(cmd, timeout=a.timeout, env=env, cwd=ROOT)
        with open(raw_path) as f:
            raw = json.load(f)
    except (lab.LabError, OSError, ValueError) as e:
        print("bench: the lab run failed: %s" % e, file=sys.stderr)
        return 2
    finally:
        os.unlink(raw_path)

    res = analyse(raw)
    res.update(machine=machine(), uml_kernel=raw.get("uml_kernel"), rounds=rounds,
               iterations=a.iterations, smoke=a.smoke, counts=counts, pyroute2_install=install,
               errors=raw.get("errors", {}), inner_wall_s=raw.get("inner_wall_s"),
               note=NOTE,
               command=" ".join(["python", "bench/run.py"] + (argv if argv is not None
                                                              else sys.argv[1:])))
    res["wall_s"] = time.monotonic() - started
    res["table_markdown"] = table(res)
    print()
    print(res["table_markdown"])
    print("Wall time: %.0f s (inside the lab: %.0f s)." % (res["wall_s"], res["inner_wall_s"] or 0))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
    print("bench: results written to %s" % a.out)

    if res["errors"] or proc.returncode not in (0, 1):
        return 2
    hold = res.get("hold", {})
    checks = [hold.get("tcp", {}).get(k) for k in ("qlen_reached", "zero_drops", "in_order")]
    checks += [hold.get("udp", {}).get(k) for k in ("drops_match", "first_kept_in_order")]
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
