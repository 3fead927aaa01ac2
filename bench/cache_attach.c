/*
 * cache_attach.c - attach + detach the way the original HAProxy helper attaches: a fresh
 * netlink socket, a cache of EVERY link in the namespace (rtnl_link_alloc_cache), the
 * device looked up in that cache, then a plug qdisc created; here it is also deleted so
 * that the loop can repeat. Its cost grows with the number of links; that is the point of
 * the comparison with plugqdisc, which asks the kernel for one link only.
 *
 * Usage: cache_attach DEVICE ITERATIONS LIMIT
 * Prints "ITERATIONS NANOSECONDS" for the timed loop. Exits 1 with a message on error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#include <netlink/netlink.h>
#include <netlink/route/link.h>
#include <netlink/route/qdisc.h>
#include <netlink/route/qdisc/plug.h>
#include <netlink/route/tc.h>

static long long now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what, int err)
{
    fprintf(stderr, "cache_attach: %s: %s\n", what, nl_geterror(err));
    exit(1);
}

/* One attach + detach. Everything is allocated and freed inside, as a helper that is
 * called once per reload would. */
static void attach_detach(const char *device, int limit)
{
    struct nl_sock *sk;
    struct nl_cache *links;
    struct rtnl_link *link;
    struct rtnl_qdisc *q;
    int err;

    sk = nl_socket_alloc();
    if (!sk)
        die("nl_socket_alloc", -NLE_NOMEM);
    err = nl_connect(sk, NETLINK_ROUTE);
    if (err < 0)
        die("nl_connect", err);
    err = rtnl_link_alloc_cache(sk, AF_UNSPEC, &links);
    if (err < 0)
        die("rtnl_link_alloc_cache", err);
    if (rtnl_link_name2i(links, device) == 0)
        die("rtnl_link_name2i", -NLE_OBJ_NOTFOUND);
    link = rtnl_link_get_by_name(links, device);
    if (!link)
        die("rtnl_link_get_by_name", -NLE_OBJ_NOTFOUND);

    q = rtnl_qdisc_alloc();
    if (!q)
        die("rtnl_qdisc_alloc", -NLE_NOMEM);
    rtnl_tc_set_link(TC_CAST(q), link);
    rtnl_tc_set_parent(TC_CAST(q), TC_H_ROOT);
    rtnl_tc_set_handle(TC_CAST(q), TC_HANDLE(1, 0));
    err = rtnl_tc_set_kind(TC_CAST(q), "plug");
    if (err < 0)
        die("rtnl_tc_set_kind", err);
    rtnl_qdisc_plug_set_limit(q, limit);
    rtnl_qdisc_plug_release_indefinite(q);
    err = rtnl_qdisc_add(sk, q, NLM_F_CREATE | NLM_F_EXCL);
    if (err < 0)
        die("rtnl_qdisc_add", err);
    err = rtnl_qdisc_delete(sk, q);
    if (err < 0)
        die("rtnl_qdisc_delete", err);

    rtnl_qdisc_put(q);
    rtnl_link_put(link);
    nl_cache_free(links);
    nl_socket_free(sk);
}

int main(int argc, char **argv)
{
    long n, i;
    long long t0, t1;

    if (argc != 4) {
        fprintf(stderr, "usage: cache_attach DEVICE ITERATIONS LIMIT\n");
        return 2;
    }
    n = atol(argv[2]);
    attach_detach(argv[1], atoi(argv[3]));  /* untimed warm-up: page faults, symbol binding */
    t0 = now_ns();
    for (i = 0; i < n; i++)
        attach_detach(argv[1], atoi(argv[3]));
    t1 = now_ns();
    printf("%ld %lld\n", n, t1 - t0);
    return 0;
}
