/*
 * hold.c - what a hold of each mode is made of (see hold.h), and pq_remove_hold: cleanup's
 * way to undo a dead holder's hold with the same plan its detach would have run.
 */
#define _GNU_SOURCE
#include "hold.h"
#include "nl.h"
#include "plug.h"
#include "tree.h"
#include "share.h"
#include "sys.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <net/if.h>
#include <linux/pkt_sched.h>

#include <netlink/socket.h>
#include <netlink/route/link.h>

int pq_hold_plan(struct pq_plan *p, const struct pq_place *pl, const char *record)
{
    int err = 0;

    pq_plan_init(p, pl->handle);
    if (pl->mode == PQ_MODE_PLAIN) {
        /* Shared with other users: nothing of it is undone while one is alive. */
        struct pq_gate g;

        memset(&g, 0, sizeof(g));
        g.kind = PQ_GATE_PLUG;
        g.skip_from = PQ_PH_RELEASE;
        g.ifindex = pl->ifindex;
        g.parent = pl->pl_parent;
        g.handle = pl->handle;
        g.owner = pl->owner;
        g.slot = pl->slot;
        err = pq_plan_add_gate(p, PQ_PH_RELEASE, &g);
    }
    if (err == 0 && pl->pl_ifindex > 0)
        err = pq_plug_plan(p, pl->pl_ifindex, pl->pl_parent, pl->handle,
                           pl->mode == PQ_MODE_MATCH ||
                               (pl->mode == PQ_MODE_PLAIN && pl->owner));
    if (err == 0 && pl->mode != PQ_MODE_PLAIN)
        err = pq_tree_plan(p, pl->ifindex, pl->mode == PQ_MODE_INGRESS, pl->ifb, pl->pref,
                           pl->nprefs);
    if (err == 0 && record)
        err = pq_plan_add_file(p, PQ_PH_FORGET, record);
    return err;
}

enum pq_step pq_hold_phase_step(enum pq_phase phase, int err)
{
    switch (phase) {
    case PQ_PH_RELEASE: return PQ_STEP_CHANGE;
    case PQ_PH_DIVERT:  return PQ_STEP_UNDO;
    case PQ_PH_PROBE:   return err == -ETIMEDOUT ? PQ_STEP_DRAIN : PQ_STEP_STATS;
    case PQ_PH_EGRESS:  return err == -EBUSY ? PQ_STEP_UNDO : PQ_STEP_INSPECT;
    default:            return PQ_STEP_DELETE;
    }
}

int pq_hold_failed(struct pq_error *e, const struct pq_plan_result *r, int err)
{
    snprintf(e->kernel, sizeof(e->kernel), "%s", r->kernel);
    e->held = r->held;
    e->waited_ms = r->waited_ms;
    return pq_fail(e, r->gate ? PQ_STEP_LOCK : pq_hold_phase_step(r->phase, err), err);
}

/* ---- cleanup: adopt a dead holder's hold and remove it -------------------------------- */

/* pq_in_netns maker context for pq_remove_hold. */
struct removal {
    int ifindex, timeout_ms;
    enum pq_mode mode;
    uint32_t parent, handle;
    struct pq_error *e;
};

/* Find the selective hold whose plug has RM's handle: its band into PL. 0 or -errno. */
static int find_band(struct pq_nl *nl, const struct removal *rm, struct pq_place *pl)
{
    struct rtnl_qdisc *qd;
    int band, err;

    for (band = 2; band <= PQ_TREE_BANDS; band++) {
        err = pq_nl_get_qdisc(nl, rm->ifindex, PQ_TREE_HANDLE | (uint32_t)band, &qd);
        if (err < 0)
            return err;
        if (pq_plug_is(qd, rm->handle)) {
            rtnl_qdisc_put(qd);
            pl->pl_parent = PQ_TREE_HANDLE | (uint32_t)band;
            return 0;
        }
        if (qd)
            rtnl_qdisc_put(qd);
    }
    return -ENOENT;
}

/* Find the ingress hold whose plug has RM's handle: its ifb into PL. 0 or -errno. */
static int find_ifb(struct pq_nl *nl, const struct removal *rm, struct pq_place *pl)
{
    char prefix[IFNAMSIZ];
    struct rtnl_link *link;
    struct rtnl_qdisc *qd;
    int n, err, ifindex;

    pq_tree_ifb_prefix(prefix, rm->ifindex);
    for (n = 1; n <= PQ_MAX_HOLDS; n++) {
        char name[IFNAMSIZ + 8];

        if (snprintf(name, sizeof(name), "%s%d", prefix, n) >= (int)sizeof(pl->ifb))
            break;                     /* no such name: attach cannot have made it */
        memcpy(pl->ifb, name, sizeof(pl->ifb));
        err = pq_nl_get_link(nl, 0, pl->ifb, &link);
        if (err == -ENODEV)
            continue;
        if (err < 0)
            return err;
        ifindex = rtnl_link_get_ifindex(link);
        rtnl_link_put(link);
        if ((err = pq_nl_get_qdisc(nl, ifindex, TC_H_ROOT, &qd)) < 0)
            return err;
        if (pq_plug_is(qd, rm->handle)) {
            rtnl_qdisc_put(qd);
            pl->pl_ifindex = ifindex;
            return 0;
        }
        if (qd)
            rtnl_qdisc_put(qd);
    }
    pl->ifb[0] = '\0';
    return -ENOENT;
}

/* The preferences of the hold's filters (PL's band or ifb), into PL. 0 or -errno. */
static int find_prefs(int fd, const struct removal *rm, struct pq_place *pl)
{
    uint16_t prefs[64];
    int n, i, lo = 0xFFFF, hi = 0;

    n = pq_scan_filters(fd, rm->ifindex,
                        rm->mode == PQ_MODE_INGRESS ? PQ_INGRESS_HANDLE : PQ_TREE_HANDLE,
                        rm->mode == PQ_MODE_INGRESS ? 0 : pl->pl_parent,
                        rm->mode == PQ_MODE_INGRESS ? pl->pl_ifindex : 0, prefs, 64, NULL);
    if (n < 0)
        return n;
    for (i = 0; i < n && i < 64; i++) {
        lo = prefs[i] < lo ? prefs[i] : lo;
        hi = prefs[i] > hi ? prefs[i] : hi;
    }
    /* A hold's preferences are consecutive, taken at once under the device's lock. */
    pl->pref = n > 0 ? lo : 0;
    pl->nprefs = n > 0 ? hi - lo + 1 : 0;
    return 0;
}

static int remove_here(void *arg)
{
    struct removal *rm = arg;
    struct pq_nl nl;
    struct pq_plan p;
    struct pq_plan_result r;
    struct pq_place pl;
    int err, fd, sock;

    memset(&pl, 0, sizeof(pl));
    pl.mode = rm->mode;
    pl.ifindex = rm->ifindex;
    pl.handle = rm->handle;
    pl.owner = 1;
    pl.slot = -1;
    pl.pl_ifindex = rm->mode == PQ_MODE_INGRESS ? 0 : rm->ifindex;
    pl.pl_parent = rm->mode == PQ_MODE_MATCH ? 0 : rm->mode == PQ_MODE_INGRESS ? TC_H_ROOT
                                                                                : rm->parent;
    pq_nl_init(&nl, rm->e);
    if ((err = pq_nl_ready(&nl)) < 0)
        return err;
    fd = nl_socket_get_fd(nl.sk);
    sock = pq_share_socket();
    if (sock < 0) {
        pq_nl_close(&nl);
        return pq_fail(rm->e, PQ_STEP_SOCKET, sock);
    }
    err = 0;
    /* A selective hold whose plug is gone has nothing left of its own; an ingress hold
     * whose ifb is gone (handle 0) neither: its plan removes what the holds shared. */
    if (rm->mode == PQ_MODE_MATCH && (err = find_band(&nl, rm, &pl)) == -ENOENT)
        err = 0;
    if (err == 0 && rm->mode == PQ_MODE_INGRESS && rm->handle &&
        (err = find_ifb(&nl, rm, &pl)) == -ENOENT)
        err = 0;
    if (err == 0 && rm->mode != PQ_MODE_PLAIN && (pl.pl_parent || pl.pl_ifindex))
        err = find_prefs(fd, rm, &pl);
    if (rm->mode == PQ_MODE_MATCH && !pl.pl_parent)
        pl.pl_ifindex = 0;             /* no plug steps */
    if (err < 0)
        err = pq_fail(rm->e, PQ_STEP_INSPECT, err);
    else if ((err = pq_hold_plan(&p, &pl, NULL)) < 0)
        err = pq_fail(rm->e, PQ_STEP_UNDO, err);
    else if ((err = pq_plan_run(fd, &p, PQ_PH_RELEASE, rm->timeout_ms, sock, 0, &r)) < 0)
        err = pq_hold_failed(rm->e, &r, err);
    (void)PQ_SYS(SYS_close, sock, 0, 0, 0, 0, 0);
    pq_nl_close(&nl);
    return err;
}

int pq_remove_hold(int netns_fd, int ifindex, enum pq_mode mode, uint32_t parent,
                   uint32_t handle, int timeout_ms, struct pq_error *e)
{
    struct removal rm = { ifindex, timeout_ms, mode, parent, handle, e };
    int switch_err = 0, err;

    memset(e, 0, sizeof(*e));
    if (ifindex <= 0 || (mode != PQ_MODE_PLAIN && mode != PQ_MODE_MATCH &&
                         mode != PQ_MODE_INGRESS))
        return pq_fail(e, PQ_STEP_ARGS, -EINVAL);
    if (netns_fd < 0)
        return remove_here(&rm);
    err = pq_in_netns(netns_fd, remove_here, &rm, &switch_err);
    return switch_err ? pq_fail(e, PQ_STEP_NETNS, err) : err;
}
