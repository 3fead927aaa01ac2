/*
 * floor.c - the floor for one buffer + release pair: libnl called directly.
 *
 * One rtnl_qdisc object is set up once and reused, as the original HAProxy helper does;
 * each operation is rtnl_qdisc_plug_buffer() / rtnl_qdisc_plug_release_indefinite() on it
 * followed by rtnl_qdisc_add(sk, q, 0) (a change of the existing plug qdisc 1: at root).
 *
 * Two ways to drive the socket: libnl's default, which peeks at every reply to size its
 * buffer (sendmsg + two recvmsg per operation), and libnl as best driven, with peeking off
 * and a buffer sized once (sendmsg + one recvmsg): the floor plugqdisc is measured against.
 *
 * Built as a shared object; bench/_inner.py calls floor_pairs() through ctypes. Only
 * the loop is timed (socket set-up and the warm-up are not).
 */
#include <net/if.h>
#include <time.h>

#include <netlink/netlink.h>
#include <netlink/route/qdisc.h>
#include <netlink/route/qdisc/plug.h>
#include <netlink/route/tc.h>

static long long now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Run PAIRS buffer + release pairs on the plug qdisc 1: at the root of DEVICE, after 20
 * untimed warm-up pairs; returns the nanoseconds of the timed loop, or a negative libnl
 * error. NO_PEEK: receive without peeking, into a buffer sized once. Built as a shared
 * object and called in the benchmark's own process (ctypes), so the floor and the Python
 * variants run in the same process, turn by turn. */
long long floor_pairs(const char *device, long pairs, int limit, int no_peek)
{
    struct nl_sock *sk;
    struct rtnl_qdisc *q;
    long i;
    long long t0 = 0, t1, res;
    unsigned ifindex;
    int err = 0;

    ifindex = if_nametoindex(device);
    if (ifindex == 0)
        return -NLE_NODEV;
    sk = nl_socket_alloc();
    if (!sk)
        return -NLE_NOMEM;
    err = nl_connect(sk, NETLINK_ROUTE);
    if (err == 0 && no_peek) {
        nl_socket_disable_msg_peek(sk);
        err = nl_socket_set_msg_buf_size(sk, 16384);
    }
    q = rtnl_qdisc_alloc();
    if (err < 0 || !q) {
        res = err < 0 ? err : -NLE_NOMEM;
        goto out;
    }
    rtnl_tc_set_ifindex(TC_CAST(q), (int)ifindex);
    rtnl_tc_set_parent(TC_CAST(q), TC_H_ROOT);
    rtnl_tc_set_handle(TC_CAST(q), TC_HANDLE(1, 0));
    err = rtnl_tc_set_kind(TC_CAST(q), "plug");
    if (err < 0) {
        res = err;
        goto out;
    }
    /* libnl sends the limit with every action; keep the qdisc's own (the kernel only reads
     * it for TCQ_PLUG_LIMIT, but a stray 0 must never reach it). */
    rtnl_qdisc_plug_set_limit(q, limit);
    for (i = 0; i < 20 + pairs; i++) {
        if (i == 20)
            t0 = now_ns();
        rtnl_qdisc_plug_buffer(q);
        err = rtnl_qdisc_add(sk, q, 0);
        if (err < 0)
            break;
        rtnl_qdisc_plug_release_indefinite(q);
        err = rtnl_qdisc_add(sk, q, 0);
        if (err < 0)
            break;
    }
    t1 = now_ns();
    res = err < 0 ? err : t1 - t0;
out:
    if (q)
        rtnl_qdisc_put(q);
    nl_socket_free(sk);
    return res;
}
