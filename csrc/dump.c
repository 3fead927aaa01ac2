/*
 * dump.c - every qdisc and every link of a network namespace, over libnl.
 *
 * The command line's status, release and cleanup start from here: what is there, as the
 * kernel reports it (kind, handle, parent, counters; device names and kinds). Facts only,
 * as in the rest of the core: a failure is an errno and a step, never words.
 */
#define _GNU_SOURCE
#include "nl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include <netlink/cache.h>
#include <netlink/route/link.h>
#include <netlink/route/tc.h>

struct dump_ctx {
    struct pq_dump *out;
    enum pq_step step;          /* where the dump failed */
};

/* Copy the links of CACHE into CTX->out. 0 or -ENOMEM. */
static int copy_links(struct nl_cache *cache, struct dump_ctx *ctx)
{
    struct nl_object *obj;
    int n = nl_cache_nitems(cache), i = 0;

    ctx->out->links = calloc(n > 0 ? (size_t)n : 1, sizeof(*ctx->out->links));
    if (!ctx->out->links)
        return -ENOMEM;
    for (obj = nl_cache_get_first(cache); obj && i < n; obj = nl_cache_get_next(obj)) {
        struct rtnl_link *link = (struct rtnl_link *)obj;
        struct pq_link_row *r = &ctx->out->links[i++];
        const char *name = rtnl_link_get_name(link), *kind = rtnl_link_get_type(link);

        r->ifindex = rtnl_link_get_ifindex(link);
        snprintf(r->name, sizeof(r->name), "%s", name ? name : "");
        snprintf(r->kind, sizeof(r->kind), "%s", kind ? kind : "");
    }
    ctx->out->nlinks = i;
    return 0;
}

/* Copy the qdiscs of CACHE into CTX->out. 0 or -ENOMEM. */
static int copy_qdiscs(struct nl_cache *cache, struct dump_ctx *ctx)
{
    struct nl_object *obj;
    int n = nl_cache_nitems(cache), i = 0;

    ctx->out->qdiscs = calloc(n > 0 ? (size_t)n : 1, sizeof(*ctx->out->qdiscs));
    if (!ctx->out->qdiscs)
        return -ENOMEM;
    for (obj = nl_cache_get_first(cache); obj && i < n; obj = nl_cache_get_next(obj)) {
        struct rtnl_tc *tc = TC_CAST(obj);
        struct pq_qdisc_row *r = &ctx->out->qdiscs[i++];
        const char *kind = rtnl_tc_get_kind(tc);

        r->ifindex = rtnl_tc_get_ifindex(tc);
        snprintf(r->kind, sizeof(r->kind), "%s", kind ? kind : "");
        r->handle = rtnl_tc_get_handle(tc);
        r->parent = rtnl_tc_get_parent(tc);
        r->st.packets = rtnl_tc_get_stat(tc, RTNL_TC_PACKETS);
        r->st.bytes = rtnl_tc_get_stat(tc, RTNL_TC_BYTES);
        r->st.qlen = rtnl_tc_get_stat(tc, RTNL_TC_QLEN);
        r->st.backlog = rtnl_tc_get_stat(tc, RTNL_TC_BACKLOG);
        r->st.drops = rtnl_tc_get_stat(tc, RTNL_TC_DROPS);
        r->st.overlimits = rtnl_tc_get_stat(tc, RTNL_TC_OVERLIMITS);
        r->st.requeues = rtnl_tc_get_stat(tc, RTNL_TC_REQUEUES);
    }
    ctx->out->nqdiscs = i;
    return 0;
}

/* pq_in_netns maker: open a socket here (it keeps this namespace), dump the links and the
 * qdiscs, copy them out. 0 or -errno with CTX->step set. */
static int dump_here(void *arg)
{
    struct dump_ctx *ctx = arg;
    struct nl_cache *links = NULL, *qdiscs = NULL;
    struct nl_sock *sk = nl_socket_alloc();
    int err;

    ctx->step = PQ_STEP_SOCKET;
    if (!sk)
        return -ENOMEM;
    err = nl_connect(sk, NETLINK_ROUTE);
    if (err < 0)
        goto out;
    /* A dump's messages are large and many: let libnl size its buffer by peeking. */
    nl_socket_enable_msg_peek(sk);
    ctx->step = PQ_STEP_DUMP;
    err = rtnl_link_alloc_cache(sk, AF_UNSPEC, &links);
    if (err == 0)
        err = rtnl_qdisc_alloc_cache(sk, &qdiscs);
out:
    err = err < 0 ? pq_nle_errno(err) : 0;
    if (err == 0 && (err = copy_links(links, ctx)) == 0)
        err = copy_qdiscs(qdiscs, ctx);
    if (links)
        nl_cache_free(links);
    if (qdiscs)
        nl_cache_free(qdiscs);
    nl_socket_free(sk);
    return err;
}

int pq_dump(int netns_fd, struct pq_dump *out, struct pq_error *e)
{
    struct dump_ctx ctx = { out, PQ_STEP_NONE };
    int switch_err = 0, err;

    memset(out, 0, sizeof(*out));
    memset(e, 0, sizeof(*e));
    if (netns_fd < 0)
        err = dump_here(&ctx);
    else
        err = pq_in_netns(netns_fd, dump_here, &ctx, &switch_err);
    if (err < 0) {
        pq_dump_free(out);
        e->err = -err;
        e->step = switch_err ? PQ_STEP_NETNS : ctx.step;
    }
    return err;
}

void pq_dump_free(struct pq_dump *out)
{
    free(out->qdiscs);
    free(out->links);
    memset(out, 0, sizeof(*out));
}
