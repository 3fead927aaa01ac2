/*
 * plug.c - the plug qdisc (sch_plug) over the netlink layer (see plug.h).
 */
#define _GNU_SOURCE
#include "plug.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>

#include <netlink/route/tc.h>
#include <netlink/route/qdisc/plug.h>

/* A plug qdisc object at IFINDEX/PARENT/HANDLE with ACTION and LIMIT set; NULL and *ERR
 * (a libnl error) on failure. The caller puts it. */
static struct rtnl_qdisc *plug_object(int ifindex, uint32_t parent, uint32_t handle,
                                      int action, uint32_t limit, int *err)
{
    struct rtnl_qdisc *qd = pq_qdisc_object(ifindex, parent, handle, "plug", err);

    if (!qd)
        return NULL;
    /* libnl sends {action, limit} every time; set the limit first so that a creation
     * carries the real limit whatever the action (a 0 limit drops every packet). */
    *err = rtnl_qdisc_plug_set_limit(qd, (int)limit);
    if (*err == 0) {
        switch (action) {
        case TCQ_PLUG_BUFFER:
            *err = rtnl_qdisc_plug_buffer(qd);
            break;
        case TCQ_PLUG_RELEASE_ONE:
            *err = rtnl_qdisc_plug_release_one(qd);
            break;
        case TCQ_PLUG_RELEASE_INDEFINITE:
            *err = rtnl_qdisc_plug_release_indefinite(qd);
            break;
        default:
            break;              /* TCQ_PLUG_LIMIT: already set */
        }
    }
    if (*err < 0) {
        rtnl_qdisc_put(qd);
        return NULL;
    }
    return qd;
}

int pq_plug_send(struct pq_nl *nl, int ifindex, uint32_t parent, uint32_t handle, int flags,
                 int action, uint32_t limit)
{
    struct rtnl_qdisc *qd;
    int err;

    pq_nl_clear(nl);
    qd = plug_object(ifindex, parent, handle, action, limit, &err);
    if (!qd)
        return pq_nl_result(nl, err);
    err = pq_nl_add_qdisc(nl, qd, flags);
    rtnl_qdisc_put(qd);
    return err;
}

int pq_plug_is(struct rtnl_qdisc *qd, uint32_t handle)
{
    const char *kind;

    if (!qd)
        return 0;
    kind = rtnl_tc_get_kind(TC_CAST(qd));
    return kind && strcmp(kind, "plug") == 0 && rtnl_tc_get_handle(TC_CAST(qd)) == handle;
}

void pq_plug_note_found(struct pq_error *e, struct rtnl_qdisc *qd)
{
    const char *kind = qd ? rtnl_tc_get_kind(TC_CAST(qd)) : NULL;

    snprintf(e->found_kind, sizeof(e->found_kind), "%s", kind ? kind : "");
    e->found_handle = qd ? rtnl_tc_get_handle(TC_CAST(qd)) : 0;
}

int pq_plug_read(struct pq_nl *nl, int ifindex, uint32_t parent, uint32_t handle,
                 struct pq_stats *st)
{
    struct rtnl_qdisc *qd;
    struct rtnl_tc *tc;
    int err;

    err = pq_nl_get_qdisc(nl, ifindex, parent, &qd);
    if (err < 0)
        return err;
    if (!pq_plug_is(qd, handle)) {
        pq_plug_note_found(nl->e, qd);
        if (qd)
            rtnl_qdisc_put(qd);
        return -ENOENT;
    }
    tc = TC_CAST(qd);
    if (st) {
        st->packets = rtnl_tc_get_stat(tc, RTNL_TC_PACKETS);
        st->bytes = rtnl_tc_get_stat(tc, RTNL_TC_BYTES);
        st->qlen = rtnl_tc_get_stat(tc, RTNL_TC_QLEN);
        st->backlog = rtnl_tc_get_stat(tc, RTNL_TC_BACKLOG);
        st->drops = rtnl_tc_get_stat(tc, RTNL_TC_DROPS);
        st->overlimits = rtnl_tc_get_stat(tc, RTNL_TC_OVERLIMITS);
        st->requeues = rtnl_tc_get_stat(tc, RTNL_TC_REQUEUES);
    }
    rtnl_qdisc_put(qd);
    return 0;
}

int pq_plug_delete(struct pq_nl *nl, int ifindex, uint32_t parent, uint32_t handle)
{
    return pq_nl_delete_qdisc(nl, ifindex, parent, handle, "plug");
}

/* The message that releases the plug, or NULL (out of memory). The limit is not read
 * by the kernel for a release. */
static struct nl_msg *release_msg(int ifindex, uint32_t parent, uint32_t handle)
{
    struct nl_msg *msg = NULL;
    struct rtnl_qdisc *qd;
    int err;

    qd = plug_object(ifindex, parent, handle, TCQ_PLUG_RELEASE_INDEFINITE, 1, &err);
    if (!qd)
        return NULL;
    if (rtnl_qdisc_build_add_request(qd, 0, &msg) < 0)
        msg = NULL;
    rtnl_qdisc_put(qd);
    return msg;
}

int pq_plug_plan(struct pq_plan *p, int ifindex, uint32_t parent, uint32_t handle, int remove)
{
    int err = pq_plan_add(p, PQ_PH_RELEASE, 0, release_msg(ifindex, parent, handle));

    /* A plug not there (never made, or gone) holds nothing: the plan goes on. */
    if (err == 0)
        err = pq_plan_add(p, PQ_PH_PROBE, PQ_PF_GONE_OK,
                          pq_tc_msg(RTM_GETQDISC, NLM_F_ECHO, ifindex, parent, 0, 0, NULL));
    /* Not there (never made, or gone): what the step wants. */
    if (err == 0 && remove)
        err = pq_plan_add(p, PQ_PH_REMOVE, PQ_PF_GONE_OK,
                          pq_tc_msg(RTM_DELQDISC, 0, ifindex, parent, handle, 0, "plug"));
    return err;
}
