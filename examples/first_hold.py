"""The guide's first hold (docs/guide.rst): five datagrams held on lo, then released.

Run it as root on a kernel with sch_plug, or in the lab from any machine::

    python -m plugqdisc.lab -- python examples/first_hold.py
"""

import socket

from plugqdisc import plugged
from plugqdisc.netns import NetNamespace

with NetNamespace():                       # our own lo, up
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(0.5)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    with plugged("lo") as q:               # holding from here
        for i in range(5):
            tx.sendto(b"datagram %d" % i, rx.getsockname())
        print(q.wait_buffered(5, timeout=5))
        try:
            rx.recv(100)
        except socket.timeout:
            print("nothing arrived while held")
    # released here: all five arrive, in order
    print([rx.recv(100) for _ in range(5)])
