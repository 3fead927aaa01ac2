/*
 * tree.c - what a selective or an ingress hold builds around the plug, over libnl.
 *
 * Egress with terms: a prio qdisc (PQ_TREE_HANDLE, 2 bands, every priority to band 0) at
 * the device's root; the plug is the leaf of band 1; one filter a term sends what it
 * selects there. Everything else goes through band 0 in order, never held.
 * Ingress: an ifb device with the plug at its root, and the device's ingress qdisc with a
 * filter (matchall, or one a term) whose mirred action redirects to the ifb; the ifb hands
 * released packets back to the device's receive path, in order.
 * Attach builds it all or leaves nothing; detach stops the diversion, lets the plug drain,
 * then removes the rest: the device is left as it was found. Facts only, as in
 * plug_qdisc.c: a failure records its step and what it concerns.
 */
#define _GNU_SOURCE
#include "pq_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <linux/tc_act/tc_mirred.h>

#include <netlink/attr.h>
#include <netlink/route/link.h>
#include <netlink/route/tc.h>
#include <netlink/route/qdisc/prio.h>

#define INGRESS_HANDLE TC_H_MAKE(TC_H_INGRESS, 0)   /* "ffff:" */
#define PLUG_CLASS PQ_TREE_PLUG_CLASS

/* Record what a failure concerns (a kind such as "flower" or "ifb") and fail at STEP. */
static int fail_on(struct plug_qdisc *q, enum pq_step step, int err, const char *kind)
{
    snprintf(q->e.found_kind, sizeof(q->e.found_kind), "%s", kind);
    q->e.found_handle = 0;
    return pq__fail(q, step, err);
}

/* ---- filters -------------------------------------------------------------------------- */

/* Put the mirred action "egress redirect to IFINDEX" as the action list ATTR. */
static int put_redirect(struct nl_msg *msg, int attr, int ifindex)
{
    struct tc_mirred parms;
    struct nlattr *list, *act, *opts;

    memset(&parms, 0, sizeof(parms));
    parms.action = TC_ACT_STOLEN;
    parms.eaction = TCA_EGRESS_REDIR;
    parms.ifindex = (__u32)ifindex;
    if (!(list = nla_nest_start(msg, attr)) || !(act = nla_nest_start(msg, 1)) ||
        nla_put_string(msg, TCA_ACT_KIND, "mirred") < 0 ||
        !(opts = nla_nest_start(msg, TCA_ACT_OPTIONS)) ||
        nla_put(msg, TCA_MIRRED_PARMS, sizeof(parms), &parms) < 0)
        return -EMSGSIZE;
    nla_nest_end(msg, opts);
    nla_nest_end(msg, act);
    nla_nest_end(msg, list);
    return 0;
}

/* Put flower's port keys for one direction: an exact port or a range. */
static int put_ports(struct nl_msg *msg, const struct pq_term *t, int dst)
{
    uint16_t lo = dst ? t->dport_lo : t->sport_lo, hi = dst ? t->dport_hi : t->sport_hi;
    int key, mask;

    if (lo == 0 && hi == 0)
        return 0;
    if (lo != hi) {
        /* The kernel wants min < max; ranges work for TCP, UDP and SCTP alike. */
        if (nla_put_u16(msg, dst ? TCA_FLOWER_KEY_PORT_DST_MIN : TCA_FLOWER_KEY_PORT_SRC_MIN,
                        htons(lo)) < 0 ||
            nla_put_u16(msg, dst ? TCA_FLOWER_KEY_PORT_DST_MAX : TCA_FLOWER_KEY_PORT_SRC_MAX,
                        htons(hi)) < 0)
            return -EMSGSIZE;
        return 0;
    }
    switch (t->ip_proto) {
    case IPPROTO_TCP:
        key = dst ? TCA_FLOWER_KEY_TCP_DST : TCA_FLOWER_KEY_TCP_SRC;
        mask = dst ? TCA_FLOWER_KEY_TCP_DST_MASK : TCA_FLOWER_KEY_TCP_SRC_MASK;
        break;
    case IPPROTO_UDP:
        key = dst ? TCA_FLOWER_KEY_UDP_DST : TCA_FLOWER_KEY_UDP_SRC;
        mask = dst ? TCA_FLOWER_KEY_UDP_DST_MASK : TCA_FLOWER_KEY_UDP_SRC_MASK;
        break;
    case IPPROTO_SCTP:
        key = dst ? TCA_FLOWER_KEY_SCTP_DST : TCA_FLOWER_KEY_SCTP_SRC;
        mask = dst ? TCA_FLOWER_KEY_SCTP_DST_MASK : TCA_FLOWER_KEY_SCTP_SRC_MASK;
        break;
    default:
        return -EINVAL; /* ports need a protocol that has them */
    }
    if (nla_put_u16(msg, key, htons(lo)) < 0 || nla_put_u16(msg, mask, 0xFFFF) < 0)
        return -EMSGSIZE;
    return 0;
}

/* Put flower's keys for term T. */
static int put_flower_keys(struct nl_msg *msg, const struct pq_term *t)
{
    int v4 = t->family == AF_INET, alen = v4 ? 4 : 16, err;

    if (nla_put_u16(msg, TCA_FLOWER_KEY_ETH_TYPE, htons(v4 ? ETH_P_IP : ETH_P_IPV6)) < 0)
        return -EMSGSIZE;
    if (t->ip_proto >= 0 && nla_put_u8(msg, TCA_FLOWER_KEY_IP_PROTO, (uint8_t)t->ip_proto) < 0)
        return -EMSGSIZE;
    if (t->has_src &&
        (nla_put(msg, v4 ? TCA_FLOWER_KEY_IPV4_SRC : TCA_FLOWER_KEY_IPV6_SRC, alen, t->src) < 0 ||
         nla_put(msg, v4 ? TCA_FLOWER_KEY_IPV4_SRC_MASK : TCA_FLOWER_KEY_IPV6_SRC_MASK, alen,
                 t->src_mask) < 0))
        return -EMSGSIZE;
    if (t->has_dst &&
        (nla_put(msg, v4 ? TCA_FLOWER_KEY_IPV4_DST : TCA_FLOWER_KEY_IPV6_DST, alen, t->dst) < 0 ||
         nla_put(msg, v4 ? TCA_FLOWER_KEY_IPV4_DST_MASK : TCA_FLOWER_KEY_IPV6_DST_MASK, alen,
                 t->dst_mask) < 0))
        return -EMSGSIZE;
    if ((err = put_ports(msg, t, 0)) < 0 || (err = put_ports(msg, t, 1)) < 0)
        return err;
    /* A connection attempt: SYN set, ACK clear. */
    if (t->syn && (nla_put_u16(msg, TCA_FLOWER_KEY_TCP_FLAGS, htons(0x02)) < 0 ||
                   nla_put_u16(msg, TCA_FLOWER_KEY_TCP_FLAGS_MASK, htons(0x12)) < 0))
        return -EMSGSIZE;
    return 0;
}

/* Add one filter at PARENT of IFINDEX with preference PREF: term T (NULL: matchall), sending
 * what it selects to CLASSID (egress) or redirecting it to REDIRECT (ingress, an ifindex).
 * 0 or -errno, step FILTER with the classifier's kind recorded. */
static int add_filter(struct plug_qdisc *q, int ifindex, uint32_t parent, int pref,
                      const struct pq_term *t, uint32_t classid, int redirect)
{
    const char *kind = !t ? "matchall" : t->kind == PQ_TERM_MARK ? "fw" : "flower";
    int classid_attr = !t ? TCA_MATCHALL_CLASSID
                          : t->kind == PQ_TERM_MARK ? TCA_FW_CLASSID : TCA_FLOWER_CLASSID;
    int act_attr = !t ? TCA_MATCHALL_ACT : t->kind == PQ_TERM_MARK ? TCA_FW_ACT : TCA_FLOWER_ACT;
    uint16_t proto = !t || t->kind == PQ_TERM_MARK ? ETH_P_ALL
                                                   : t->family == AF_INET ? ETH_P_IP : ETH_P_IPV6;
    struct nl_msg *msg;
    struct nlattr *opts;
    struct tcmsg tcm;
    int err = -EMSGSIZE;

    msg = nlmsg_alloc_simple(RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL);
    if (!msg)
        return fail_on(q, PQ_STEP_FILTER, -ENOMEM, kind);
    memset(&tcm, 0, sizeof(tcm));
    tcm.tcm_family = AF_UNSPEC;
    tcm.tcm_ifindex = ifindex;
    tcm.tcm_parent = parent;
    /* fw finds its filter by handle: the mark (already masked) */
    tcm.tcm_handle = t && t->kind == PQ_TERM_MARK ? t->mark : 0;
    tcm.tcm_info = TC_H_MAKE((uint32_t)pref << 16, htons(proto));
    if (nlmsg_append(msg, &tcm, sizeof(tcm), NLMSG_ALIGNTO) < 0 ||
        nla_put_string(msg, TCA_KIND, kind) < 0 || !(opts = nla_nest_start(msg, TCA_OPTIONS)))
        goto out;
    if (classid && nla_put_u32(msg, classid_attr, classid) < 0)
        goto out;
    if (t && t->kind == PQ_TERM_MARK && nla_put_u32(msg, TCA_FW_MASK, t->mark_mask) < 0)
        goto out;
    if (t && t->kind == PQ_TERM_FLOWER && (err = put_flower_keys(msg, t)) < 0)
        goto out;
    if (redirect && (err = put_redirect(msg, act_attr, redirect)) < 0)
        goto out;
    nla_nest_end(msg, opts);
    err = pq__send(q, msg);
    msg = NULL;
out:
    nlmsg_free(msg);
    return err < 0 ? fail_on(q, PQ_STEP_FILTER, err, kind) : 0;
}

/* Add the filters: one a term, or a matchall when there is none. 0 or -errno. */
static int add_filters(struct plug_qdisc *q, int ifindex, uint32_t parent, uint32_t classid,
                       int redirect)
{
    int i, err;

    if (q->nterms == 0)
        return add_filter(q, ifindex, parent, 1, NULL, classid, redirect);
    for (i = 0; i < q->nterms; i++) {
        err = add_filter(q, ifindex, parent, i + 1, &q->terms[i], classid, redirect);
        if (err < 0)
            return err;
    }
    return 0;
}

/* ---- qdiscs and the ifb ---------------------------------------------------------------- */

/* Create a qdisc of KIND (prio: 2 bands, everything to band 0) at PARENT of IFINDEX with
 * HANDLE. 0 or -errno. */
static int add_qdisc(struct plug_qdisc *q, int ifindex, uint32_t parent, uint32_t handle,
                     const char *kind)
{
    struct rtnl_qdisc *qd;
    uint8_t map[TC_PRIO_MAX + 1];
    int err;

    pq__clear_kerr(q);
    qd = pq__qdisc_object(ifindex, parent, handle, kind, &err);
    if (!qd)
        return pq__nl_result(q, err);
    if (strcmp(kind, "prio") == 0) {
        memset(map, 0, sizeof(map));
        rtnl_qdisc_prio_set_bands(qd, 2);
        err = rtnl_qdisc_prio_set_priomap(qd, map, sizeof(map));
    }
    if (err == 0)
        err = rtnl_qdisc_add(q->sk, qd, NLM_F_CREATE | NLM_F_EXCL);
    rtnl_qdisc_put(qd);
    return pq__nl_result(q, err);
}

/* Take the place of the qdisc at PARENT of the device: free (nothing, or the kernel's
 * default) goes ahead; another qdisc is -EEXIST (step OCCUPIED, what it is recorded)
 * unless REPLACE, which deletes it. 0 or -errno. */
static int take_place(struct plug_qdisc *q, uint32_t parent, int replace)
{
    struct rtnl_qdisc *qd = NULL;
    int err;

    err = pq__get_qdisc(q, q->ifindex, parent, &qd);
    if (err < 0)
        return pq__fail(q, PQ_STEP_INSPECT, err);
    if (!qd || rtnl_tc_get_handle(TC_CAST(qd)) == 0) {
        if (qd)
            rtnl_qdisc_put(qd);
        return 0;
    }
    pq__note_found(q, qd);
    if (!replace)
        err = -EEXIST;
    else
        err = pq__delete_qdisc(q, q->ifindex, parent, rtnl_tc_get_handle(TC_CAST(qd)),
                               rtnl_tc_get_kind(TC_CAST(qd)));
    rtnl_qdisc_put(qd);
    if (err < 0)
        return pq__fail(q, err == -EEXIST ? PQ_STEP_OCCUPIED : PQ_STEP_REMOVE_OTHER, err);
    q->e.found_kind[0] = '\0';
    q->e.found_handle = 0;
    return 0;
}

/* Delete the link IFINDEX (the ifb). 0 or -errno. */
static int delete_link(struct plug_qdisc *q, int ifindex)
{
    struct rtnl_link *link = rtnl_link_alloc();
    int err;

    if (!link)
        return -ENOMEM;
    rtnl_link_set_ifindex(link, ifindex);
    pq__clear_kerr(q);
    err = rtnl_link_delete(q->sk, link);
    rtnl_link_put(link);
    return pq__nl_result(q, err);
}

/* The ifindex of the link called NAME (its reply may be large: peek to size it). */
static int link_index(struct plug_qdisc *q, const char *name, int *ifindex)
{
    struct rtnl_link *link = NULL;
    int err;

    pq__clear_kerr(q);
    nl_socket_enable_msg_peek(q->sk);
    err = rtnl_link_get_kernel(q->sk, 0, name, &link);
    nl_socket_disable_msg_peek(q->sk);
    err = pq__nl_result(q, err);
    if (err == 0 && !link)
        err = -ENODEV;
    if (err < 0)
        return err;
    *ifindex = rtnl_link_get_ifindex(link);
    rtnl_link_put(link);
    return 0;
}

/* Packets the ifb has taken from the plug and not yet handed back to the device: the plug
 * may be empty while the ifb still has released packets on their way. 0 for other holds. */
uint64_t pq__tree_in_flight(struct plug_qdisc *q)
{
    struct rtnl_link *link = NULL;
    uint64_t rx, done;
    int err;

    if (!q->ingress || !q->ifb_ifindex)
        return 0;
    pq__clear_kerr(q);
    nl_socket_enable_msg_peek(q->sk);
    err = rtnl_link_get_kernel(q->sk, q->ifb_ifindex, NULL, &link);
    nl_socket_disable_msg_peek(q->sk);
    if (pq__nl_result(q, err) < 0 || !link)
        return 0; /* no ifb, nothing on its way */
    /* ifb counts what it takes from its qdisc as rx (dropping at once, as rx_dropped, what
     * was not redirected to it, such as its own IPv6 chatter), what it hands back as tx */
    rx = rtnl_link_get_stat(link, RTNL_LINK_RX_PACKETS);
    done = rtnl_link_get_stat(link, RTNL_LINK_TX_PACKETS) +
           rtnl_link_get_stat(link, RTNL_LINK_TX_DROPPED) +
           rtnl_link_get_stat(link, RTNL_LINK_RX_DROPPED);
    rtnl_link_put(link);
    return rx > done ? rx - done : 0;
}

/* The message that asks for the ifb's counters (the guardian's second probe), or NULL. */
struct nl_msg *pq__tree_msg_probe_ifb(struct plug_qdisc *q)
{
    struct nl_msg *msg = nlmsg_alloc_simple(RTM_GETLINK, 0);
    struct ifinfomsg ifi;

    if (!msg)
        return NULL;
    memset(&ifi, 0, sizeof(ifi));
    ifi.ifi_family = AF_UNSPEC;
    ifi.ifi_index = q->ifb_ifindex;
    if (nlmsg_append(msg, &ifi, sizeof(ifi), NLMSG_ALIGNTO) < 0) {
        nlmsg_free(msg);
        return NULL;
    }
    return msg;
}

/* Create the ifb of this hold, up ("pqifb" and the device's ifindex). A link of that name
 * left behind is -EEXIST unless REPLACE, which deletes it first. 0 or -errno. */
static int make_ifb(struct plug_qdisc *q, int replace)
{
    struct rtnl_link *link;
    int err, old;

    snprintf(q->ifb_name, sizeof(q->ifb_name), PQ_IFB_PREFIX "%d", q->ifindex);
    if (replace && link_index(q, q->ifb_name, &old) == 0 && (err = delete_link(q, old)) < 0)
        return fail_on(q, PQ_STEP_IFB, err, "ifb");
    link = rtnl_link_alloc();
    if (!link)
        return fail_on(q, PQ_STEP_IFB, -ENOMEM, "ifb");
    rtnl_link_set_name(link, q->ifb_name);
    err = rtnl_link_set_type(link, "ifb");
    rtnl_link_set_flags(link, IFF_UP);
    if (err == 0) {
        pq__clear_kerr(q);
        err = rtnl_link_add(q->sk, link, NLM_F_CREATE | NLM_F_EXCL);
    }
    rtnl_link_put(link);
    err = pq__nl_result(q, err);
    if (err == 0)
        err = link_index(q, q->ifb_name, &q->ifb_ifindex);
    if (err < 0) {
        q->ifb_ifindex = 0;
        return fail_on(q, PQ_STEP_IFB, err, "ifb");
    }
    return 0;
}

/* Remove what attach added so far, keeping the error that stopped it. */
static int undo(struct plug_qdisc *q, int err)
{
    struct pq_error keep = q->e;

    if (q->ingress) {
        (void)pq__delete_qdisc(q, q->ifindex, TC_H_INGRESS, INGRESS_HANDLE, "ingress");
        if (q->ifb_ifindex)
            (void)delete_link(q, q->ifb_ifindex); /* its plug goes with it */
        q->ifb_ifindex = 0;
    } else {
        (void)pq__delete_qdisc(q, q->ifindex, TC_H_ROOT, PQ_TREE_HANDLE, "prio");
    }
    q->e = keep;
    return err;
}

/* ---- the tree ------------------------------------------------------------------------- */

/* Whether the device's egress (its root qdisc) holds packets: 1 (how many in the error
 * record's held), 0, or -errno. Packets just released are given 200 ms to leave. */
static int egress_held(struct plug_qdisc *q)
{
    struct rtnl_qdisc *qd = NULL;
    uint64_t qlen;
    int err, tries;

    for (tries = 0;; tries++) {
        err = pq__get_qdisc(q, q->ifindex, TC_H_ROOT, &qd);
        if (err < 0 || !qd)
            return err;
        qlen = rtnl_tc_get_stat(TC_CAST(qd), RTNL_TC_QLEN);
        rtnl_qdisc_put(qd);
        q->e.held = qlen;
        if (qlen == 0 || tries == 200)
            return qlen > 0 ? 1 : 0;
        nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
    }
}

int pq__tree_attach(struct plug_qdisc *q, int replace)
{
    int err;

    if (!q->ingress) {
        if ((err = take_place(q, TC_H_ROOT, replace)) < 0)
            return err;
        err = add_qdisc(q, q->ifindex, TC_H_ROOT, PQ_TREE_HANDLE, "prio");
        if (err < 0)
            return fail_on(q, PQ_STEP_TREE, err, "prio");
        if ((err = pq__create_plug(q)) < 0 ||
            (err = add_filters(q, q->ifindex, PQ_TREE_HANDLE, PLUG_CLASS, 0)) < 0)
            return undo(q, err);
        return 0;
    }
    if ((err = take_place(q, TC_H_INGRESS, replace)) < 0)
        return err;
    /* Adding (and removing) an ingress qdisc makes the kernel reset the device's egress
     * qdiscs (qdisc_graft deactivates the device), purging what they hold uncounted: if
     * the device's egress holds packets now (another hold), refuse before anything. */
    if ((err = egress_held(q)) != 0)
        return err < 0 ? pq__fail(q, PQ_STEP_INSPECT, err) : pq__fail(q, PQ_STEP_INGRESS, -EBUSY);
    if ((err = make_ifb(q, replace)) < 0)
        return err;
    q->pl_ifindex = q->ifb_ifindex;
    q->pl_parent = TC_H_ROOT;
    if ((err = pq__create_plug(q)) < 0)
        return undo(q, err);
    err = add_qdisc(q, q->ifindex, TC_H_INGRESS, INGRESS_HANDLE, "ingress");
    if (err < 0)
        return undo(q, fail_on(q, PQ_STEP_INGRESS, err, "ingress"));
    if ((err = add_filters(q, q->ifindex, INGRESS_HANDLE, 0, q->ifb_ifindex)) < 0)
        return undo(q, err);
    return 0;
}

/* The message that stops the diversion to the plug: flush the filters of the prio
 * (egress) or of the ingress qdisc (preference 0 flushes every one; packets then pass).
 * Not deleting the ingress qdisc here: that would purge the device's egress holds. */
struct nl_msg *pq__tree_msg_divert(struct plug_qdisc *q)
{
    return pq__msg_tc(RTM_DELTFILTER, 0, q->ifindex, q->ingress ? INGRESS_HANDLE
                                                                : PQ_TREE_HANDLE, 0);
}

/* The message that removes the rest: the ifb (its plug goes with it), or the prio. */
struct nl_msg *pq__tree_msg_remove(struct plug_qdisc *q)
{
    struct nl_msg *msg = NULL;
    struct rtnl_link *link;

    if (!q->ingress)
        return pq__msg_delete_qdisc(q->ifindex, TC_H_ROOT, PQ_TREE_HANDLE, "prio");
    link = rtnl_link_alloc();
    if (!link)
        return NULL;
    rtnl_link_set_ifindex(link, q->ifb_ifindex);
    if (rtnl_link_build_delete_request(link, &msg) < 0)
        msg = NULL;
    rtnl_link_put(link);
    return msg;
}

/* Ingress: the message that asks what the device's egress holds, and the one that deletes
 * the ingress qdisc, sent last and only if the answer is nothing. NULL otherwise. */
struct nl_msg *pq__tree_msg_egress_probe(struct plug_qdisc *q)
{
    return q->ingress ? pq__msg_tc(RTM_GETQDISC, NLM_F_ECHO, q->ifindex, TC_H_ROOT, 0) : NULL;
}

struct nl_msg *pq__tree_msg_remove_ingress(struct plug_qdisc *q)
{
    return q->ingress ? pq__msg_delete_qdisc(q->ifindex, TC_H_INGRESS, INGRESS_HANDLE, "ingress")
                      : NULL;
}

int pq__tree_divert_off(struct plug_qdisc *q)
{
    struct nl_msg *msg = pq__tree_msg_divert(q);
    int err;

    if (!msg)
        return pq__fail(q, PQ_STEP_UNDO, -ENOMEM);
    err = pq__send(q, msg);
    /* Already gone (a detach that timed out before) is what we wanted. */
    if (err == -ENOENT || err == -EINVAL)
        err = 0;
    return err < 0 ? pq__fail(q, PQ_STEP_UNDO, err) : 0;
}

int pq__tree_remove(struct plug_qdisc *q)
{
    int err;

    if (!q->ingress) {
        err = pq__delete_qdisc(q, q->ifindex, TC_H_ROOT, PQ_TREE_HANDLE, "prio");
        if (err == -ENOENT || err == -EINVAL)
            err = 0;
        return err < 0 ? pq__fail(q, PQ_STEP_DELETE, err) : 0;
    }
    err = q->ifb_ifindex ? delete_link(q, q->ifb_ifindex) : 0;
    if (err == -ENODEV)
        err = 0;
    if (err < 0)
        return pq__fail(q, PQ_STEP_DELETE, err);
    q->ifb_ifindex = 0;
    /* The ingress qdisc last, unless that would purge what the device's egress holds:
     * then it stays, empty and harmless, and the caller hears why (EBUSY, held). */
    if ((err = egress_held(q)) != 0)
        return err < 0 ? pq__fail(q, PQ_STEP_INSPECT, err) : pq__fail(q, PQ_STEP_UNDO, -EBUSY);
    err = pq__delete_qdisc(q, q->ifindex, TC_H_INGRESS, INGRESS_HANDLE, "ingress");
    if (err == -ENOENT || err == -EINVAL)
        err = 0;
    return err < 0 ? pq__fail(q, PQ_STEP_DELETE, err) : 0;
}
