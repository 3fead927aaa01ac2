"""Reliability, in the lab: a seeded random-argument fuzz of every public call (only clean
exceptions, never a hang or a crash), and a leak check over 20,000 operations."""

from __future__ import annotations

import math
import os
import random
import socket
import time
from typing import Any, Dict, List

import pytest

import plugqdisc
from plugqdisc import Match, PlugQdisc, PlugQdiscError, plugged

pytestmark = pytest.mark.plugqdisc

SEED = 20261128
FUZZ_SECONDS = 10.0

# Values a careless caller passes; some are valid somewhere.
POOL: List[Any] = [
    None, True, False, -1, 0, 1, 7, 80, 65535, 65536, 2**31, 2**32, 2**64, 2**1100, -2**70,
    0.0, 0.01, 1.5, -0.5, float("nan"), float("inf"), float("-inf"), "", "lo", "nosuch0",
    "1:", "2:", "root", "none", "ffff:", "fffe:", "FFFE:", "fffe:0", "1:2", "1:2:3", "zz",
    "x" * 20, "a/b",
    "tcp", "udp", "icmp", "ingress", "egress", "::1", "127.0.0.1", "10.0.0.0/8",
    "10.0.0.300", b"lo", (1, 2), (2, 1), (1, 2, 3), [], [1], {}, object(),
    Match(proto="udp"), [Match(dport=9)], (0x40, 0xF0),
]
# Exceptions a caller can act on. OverflowError only where Python's own conversions give it.
CLEAN = (TypeError, ValueError, OverflowError, PlugQdiscError, FileNotFoundError,
         TimeoutError)

KW_PlugQdisc = ["parent", "handle", "limit", "netns", "match", "direction", "guard",
                "max_hold"]
KW_Match = ["proto", "src", "dst", "sport", "dport", "syn", "mark"]


def pick(rng: random.Random) -> Any:
    return rng.choice(POOL)


def some_kwargs(rng: random.Random, names: List[str]) -> Dict[str, Any]:
    return {n: pick(rng) for n in rng.sample(names, rng.randint(0, min(3, len(names))))}


def short(value: Any) -> bool:
    """A timeout that cannot make a fuzzed wait last: the fuzz looks for bad input, and
    None or inf is a valid request to wait for ever."""
    return not (value is None or (isinstance(value, (int, float)) and not
                                  isinstance(value, bool) and
                                  (math.isinf(value) or value > 0.05)))


def fuzz_once(rng: random.Random, objects: List[PlugQdisc]) -> str:
    """One random call; returns what was called (for the failure message)."""
    what = rng.randrange(9)
    if what == 0:
        kw = some_kwargs(rng, KW_Match)
        Match(**kw)
        return "Match(%r)" % kw
    if what == 1:
        dev = rng.choice(["lo", "lo", pick(rng)])
        kw = some_kwargs(rng, KW_PlugQdisc)
        objects.append(PlugQdisc(dev, **kw))
        return "PlugQdisc(%r, %r)" % (dev, kw)
    if what == 2:
        kw = some_kwargs(rng, KW_PlugQdisc + ["replace"])
        with plugged(rng.choice(["lo", pick(rng)]), **kw):
            pass
        return "plugged(%r)" % kw
    if what == 3:
        args = [pick(rng) for _ in range(rng.randint(0, 4))]
        plugqdisc.attach(*args)  # type: ignore[arg-type]
        return "attach(%r)" % args
    if what == 4:
        rng.choice([plugqdisc.plug_buffer, plugqdisc.release_indefinite_buffer])()
        return "default handle op"
    if not objects:
        return "nothing"
    q = rng.choice(objects)
    if what == 5:
        q.attach(replace=pick(rng))
        return "attach on %r" % q
    if what == 6:
        name = rng.choice(["buffer", "release", "release_one", "stats", "close"])
        getattr(q, name)()
        return name
    if what == 7:
        arg = pick(rng)
        q.set_limit(arg)
        return "set_limit(%r)" % (arg,)
    timeout = pick(rng)
    if not short(timeout):
        timeout = 0.01
    if rng.random() < 0.5:
        n = pick(rng)
        q.wait_buffered(n, timeout=timeout)
        return "wait_buffered(%r, %r)" % (n, timeout)
    q.detach(timeout=timeout)
    return "detach(%r)" % (timeout,)


def finish(objects: List[PlugQdisc]) -> None:
    """Release, detach and close what the fuzz made (a qdisc another object replaced is
    gone: a clean error, then close)."""
    for q in objects:
        try:
            q._finish()
        except CLEAN:
            q.close()


def test_fuzz_every_public_call_gives_only_clean_exceptions() -> None:
    rng = random.Random(SEED)
    objects: List[PlugQdisc] = []
    deadline = time.monotonic() + FUZZ_SECONDS
    calls, kinds = 0, set()
    while time.monotonic() < deadline:
        try:
            t = time.monotonic()
            desc = fuzz_once(rng, objects)
            assert time.monotonic() - t < 6, "slow: %s" % desc
        except CLEAN as e:
            kinds.add(type(e).__name__)
            msg = str(e)
            assert msg and "Traceback" not in msg
        calls += 1
        if len(objects) > 20:
            finish(objects[:10])
            del objects[:10]
    finish(objects)
    assert calls > 100 and {"TypeError", "ValueError"} <= kinds, (calls, kinds)


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_20000_operations_leak_neither_memory_nor_fds() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))

    def cycle(n: int) -> None:
        for i in range(n):
            q = PlugQdisc("lo", match=Match(proto="udp")) if i % 2 else PlugQdisc("lo")
            q.attach()
            for _ in range(50):  # 100 operations a hold: 50 buffer + 50 release
                q.buffer()
                q.release()
            q.stats()
            try:
                q.set_limit(-1)  # a refused argument takes the error path too
            except ValueError:
                pass
            q.detach()
            q.close()

    cycle(10)  # warm-up: caches, the guardian's first start
    guardian = plugqdisc._plugqdisc.guardian_pid()
    rss0, fds0 = rss_kb(), open_fds()
    cycle(200)  # 200 holds x 100 operations = 20,000, plus attach/stats/detach each
    rss1, fds1 = rss_kb(), open_fds()
    assert fds1 == fds0, (fds0, fds1)
    assert rss1 - rss0 < 2048, "RSS grew by %d kB over 20,000 operations" % (rss1 - rss0)
    # one guardian served all 200 holds, and stays for the process
    assert guardian != 0 and plugqdisc._plugqdisc.guardian_pid() == guardian
    # no zombie children left behind
    zombies = []
    for p in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % p) as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError, IndexError):
            continue
        if ppid == str(os.getpid()) and state == "Z":
            zombies.append(p)
    assert zombies == []
    rx.close()
