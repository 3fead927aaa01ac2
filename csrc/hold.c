/*
 * hold.c - what a hold of each mode is made of (see hold.h), and pq_remove_hold: cleanup's
 * way to undo a dead holder's hold with the same plan its detach would have run.
 */
#define _GNU_SOURCE
#include "hold.h"
#include "nl.h"
#include "plug.h"
#include "tree.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <net/if.h>
#include <linux/pkt_sched.h>

#include <netlink/socket.h>
#include <netlink/route/link.h>

int pq_hold_plan(struct pq_plan *p, enum pq_mode mode, int ifindex, int pl_ifindex,
                 uint32_t pl_parent, uint32_t handle, const char *ifb, const char *record)
{
    int err = 0;

    pq_plan_init(p, handle);
    if (pl_ifindex > 0)
        err = pq_plug_plan(p, pl_ifindex, pl_parent, handle, mode == PQ_MODE_PLAIN);
    if (err == 0 && mode != PQ_MODE_PLAIN)
        err = pq_tree_plan(p, ifindex, mode == PQ_MODE_INGRESS, ifb);
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
    return pq_fail(e, pq_hold_phase_step(r->phase, err), err);
}

/* ---- cleanup: adopt a dead holder's hold and remove it -------------------------------- */

/* pq_in_netns maker context for pq_remove_hold. */
struct removal {
    int ifindex, timeout_ms;
    enum pq_mode mode;
    uint32_t parent, handle;
    struct pq_error *e;
};

static int remove_here(void *arg)
{
    struct removal *rm = arg;
    struct pq_nl nl;
    struct pq_plan p;
    struct pq_plan_result r;
    struct rtnl_link *ifb;
    char ifb_name[IFNAMSIZ];
    int pl_ifindex = rm->ifindex, err, fd;
    uint32_t pl_parent = rm->mode == PQ_MODE_MATCH ? PQ_TREE_PLUG_CLASS : rm->parent;

    pq_nl_init(&nl, rm->e);
    if ((err = pq_nl_ready(&nl)) < 0)
        return err;
    snprintf(ifb_name, sizeof(ifb_name), PQ_IFB_PREFIX "%d", rm->ifindex);
    if (rm->mode == PQ_MODE_INGRESS) {
        /* No ifb (a plan that stopped at the egress check left the ingress qdisc alone):
         * a plan without the plug's steps removes the rest. */
        pl_parent = TC_H_ROOT;
        pl_ifindex = 0;
        err = pq_nl_get_link(&nl, 0, ifb_name, &ifb);
        if (err < 0 && err != -ENODEV) {
            pq_nl_close(&nl);
            return pq_fail(rm->e, PQ_STEP_DEVICE, err);
        }
        if (err == 0) {
            pl_ifindex = rtnl_link_get_ifindex(ifb);
            rtnl_link_put(ifb);
        }
    }
    err = pq_hold_plan(&p, rm->mode, rm->ifindex, pl_ifindex, pl_parent, rm->handle, ifb_name,
                       NULL);
    fd = nl_socket_get_fd(nl.sk);
    if (err < 0)
        err = pq_fail(rm->e, PQ_STEP_UNDO, err);
    else if ((err = pq_plan_run(fd, &p, PQ_PH_RELEASE, rm->timeout_ms, &r)) < 0)
        err = pq_hold_failed(rm->e, &r, err);
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
