/*
 * tree.c - what a selective or an ingress hold builds around the plug (see tree.h).
 *
 * Egress with terms: a prio qdisc (PQ_TREE_HANDLE, 16 bands, every priority to the first)
 * at the device's root, shared by the device's selective holds; each hold's plug is the
 * leaf of a band of its own (class fffe:2 .. fffe:16); its filters, one a term, send what
 * they select there. Everything else goes through the first band in order, never held.
 * Ingress: each hold has an ifb device of its own with its plug at the root; its filters
 * (matchall, or one a term) on the device's shared ingress qdisc redirect to that ifb,
 * which hands released packets back to the device's receive path, in order. A hold's
 * filters are at preferences after all that are there: the first attached is asked first.
 */
#define _GNU_SOURCE
#include "tree.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <linux/if_ether.h>
#include <linux/if_link.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <linux/tc_act/tc_mirred.h>

#include <netlink/attr.h>
#include <netlink/route/link.h>
#include <netlink/route/link/inet6.h>
#include <netlink/route/tc.h>
#include <netlink/route/qdisc/prio.h>

/* Record what a failure concerns (a kind such as "flower" or "ifb") and fail at STEP. */
static int fail_on(struct pq_nl *nl, enum pq_step step, int err, const char *kind)
{
    snprintf(nl->e->found_kind, sizeof(nl->e->found_kind), "%s", kind);
    nl->e->found_handle = 0;
    return pq_fail(nl->e, step, err);
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
    uint16_t flags = 0, mask = 0;

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
    /* A connection attempt: SYN set, ACK clear; a close: FIN set; a reset: RST set. */
    if (t->syn) {
        flags |= 0x02;
        mask |= 0x12;
    }
    if (t->fin) {
        flags |= 0x01;
        mask |= 0x01;
    }
    if (t->rst) {
        flags |= 0x04;
        mask |= 0x04;
    }
    if (mask && (nla_put_u16(msg, TCA_FLOWER_KEY_TCP_FLAGS, htons(flags)) < 0 ||
                 nla_put_u16(msg, TCA_FLOWER_KEY_TCP_FLAGS_MASK, htons(mask)) < 0))
        return -EMSGSIZE;
    return 0;
}

/* Add one filter at PARENT of IFINDEX with preference PREF: term T (NULL: matchall). */
static int add_filter(struct pq_nl *nl, int ifindex, uint32_t parent, int pref,
                      const struct pq_term *t, uint32_t classid, int redirect)
{
    const char *kind = !t ? "matchall" : t->kind == PQ_TERM_MARK ? "fw" : "flower";
    int classid_attr = !t ? TCA_MATCHALL_CLASSID
                          : t->kind == PQ_TERM_MARK ? TCA_FW_CLASSID : TCA_FLOWER_CLASSID;
    int act_attr = !t ? TCA_MATCHALL_ACT : t->kind == PQ_TERM_MARK ? TCA_FW_ACT : TCA_FLOWER_ACT;
    uint16_t proto = !t || t->kind == PQ_TERM_MARK ? ETH_P_ALL
                                                   : t->family == AF_INET ? ETH_P_IP : ETH_P_IPV6;
    /* fw finds its filter by handle: the mark (already masked) */
    uint32_t handle = t && t->kind == PQ_TERM_MARK ? t->mark : 0;
    struct nl_msg *msg;
    struct nlattr *opts;
    int err = -EMSGSIZE;

    msg = pq_tc_msg(RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, ifindex, parent, handle,
                    TC_H_MAKE((uint32_t)pref << 16, htons(proto)), kind);
    if (!msg)
        return fail_on(nl, PQ_STEP_FILTER, -ENOMEM, kind);
    if (!(opts = nla_nest_start(msg, TCA_OPTIONS)))
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
    err = pq_nl_request(nl, msg, NULL, NULL);
    msg = NULL;
out:
    nlmsg_free(msg);
    return err < 0 ? fail_on(nl, PQ_STEP_FILTER, err, kind) : 0;
}

int pq_tree_add_filters(struct pq_nl *nl, int ifindex, uint32_t parent,
                        const struct pq_term *terms, int nterms, int pref, uint32_t classid,
                        int redirect)
{
    int i, err;

    if (nterms == 0)
        return add_filter(nl, ifindex, parent, pref, NULL, classid, redirect);
    for (i = 0; i < nterms; i++) {
        err = add_filter(nl, ifindex, parent, pref + i, &terms[i], classid, redirect);
        if (err < 0)
            return err;
    }
    return 0;
}

/* ---- qdiscs and the ifb ---------------------------------------------------------------- */

int pq_tree_add_prio(struct pq_nl *nl, int ifindex)
{
    struct rtnl_qdisc *qd;
    uint8_t map[TC_PRIO_MAX + 1];
    int err;

    pq_nl_clear(nl);
    qd = pq_qdisc_object(ifindex, TC_H_ROOT, PQ_TREE_HANDLE, "prio", &err);
    if (!qd)
        return fail_on(nl, PQ_STEP_TREE, pq_nl_result(nl, err), "prio");
    memset(map, 0, sizeof(map));
    rtnl_qdisc_prio_set_bands(qd, PQ_TREE_BANDS);
    err = rtnl_qdisc_prio_set_priomap(qd, map, sizeof(map));
    err = err == 0 ? pq_nl_add_qdisc(nl, qd, NLM_F_CREATE | NLM_F_EXCL) : pq_nle_errno(err);
    rtnl_qdisc_put(qd);
    return err < 0 ? fail_on(nl, PQ_STEP_TREE, err, "prio") : 0;
}

int pq_tree_add_ingress(struct pq_nl *nl, int ifindex)
{
    struct rtnl_qdisc *qd;
    int err;

    pq_nl_clear(nl);
    qd = pq_qdisc_object(ifindex, TC_H_INGRESS, PQ_INGRESS_HANDLE, "ingress", &err);
    if (!qd)
        return fail_on(nl, PQ_STEP_INGRESS, pq_nl_result(nl, err), "ingress");
    err = pq_nl_add_qdisc(nl, qd, NLM_F_CREATE | NLM_F_EXCL);
    rtnl_qdisc_put(qd);
    return err < 0 ? fail_on(nl, PQ_STEP_INGRESS, err, "ingress") : 0;
}

int pq_tree_take_place(struct pq_nl *nl, int ifindex, uint32_t parent, int replace)
{
    struct rtnl_qdisc *qd = NULL;
    int err;

    err = pq_nl_get_qdisc(nl, ifindex, parent, &qd);
    if (err < 0)
        return pq_fail(nl->e, PQ_STEP_INSPECT, err);
    if (!qd || rtnl_tc_get_handle(TC_CAST(qd)) == 0) {
        if (qd)
            rtnl_qdisc_put(qd);
        return 0;
    }
    snprintf(nl->e->found_kind, sizeof(nl->e->found_kind), "%s",
             rtnl_tc_get_kind(TC_CAST(qd)) ? rtnl_tc_get_kind(TC_CAST(qd)) : "");
    nl->e->found_handle = rtnl_tc_get_handle(TC_CAST(qd));
    if (!replace)
        err = -EEXIST;
    else
        err = pq_nl_delete_qdisc(nl, ifindex, parent, rtnl_tc_get_handle(TC_CAST(qd)),
                                 rtnl_tc_get_kind(TC_CAST(qd)));
    rtnl_qdisc_put(qd);
    if (err < 0)
        return pq_fail(nl->e, err == -EEXIST ? PQ_STEP_OCCUPIED : PQ_STEP_REMOVE_OTHER, err);
    nl->e->found_kind[0] = '\0';
    nl->e->found_handle = 0;
    return 0;
}

/* A change of the link IFINDEX: with QUIET, no IPv6 address generation; else up. */
static int change_ifb(struct pq_nl *nl, int ifindex, int quiet)
{
    struct rtnl_link *link = rtnl_link_alloc();
    int err = 0;

    if (!link)
        return -ENOMEM;
    rtnl_link_set_ifindex(link, ifindex);
    if (quiet)
        err = rtnl_link_inet6_set_addr_gen_mode(link, IN6_ADDR_GEN_MODE_NONE);
    else
        rtnl_link_set_flags(link, IFF_UP);
    err = err == 0 ? pq_nl_add_link(nl, link, 0) : pq_nle_errno(err);
    rtnl_link_put(link);
    return err;
}

int pq_tree_make_ifb(struct pq_nl *nl, const char *name, int replace, int *ifindex)
{
    struct rtnl_link *link = NULL;
    int err;

    *ifindex = 0;
    if (replace && pq_nl_get_link(nl, 0, name, &link) == 0) {
        err = pq_nl_delete_link(nl, rtnl_link_get_ifindex(link));
        rtnl_link_put(link);
        if (err < 0)
            return fail_on(nl, PQ_STEP_IFB, err, "ifb");
    }
    link = rtnl_link_alloc();
    if (!link)
        return fail_on(nl, PQ_STEP_IFB, -ENOMEM, "ifb");
    rtnl_link_set_name(link, name);
    err = rtnl_link_set_type(link, "ifb");
    err = err == 0 ? pq_nl_add_link(nl, link, NLM_F_CREATE | NLM_F_EXCL) : pq_nle_errno(err);
    rtnl_link_put(link);
    link = NULL;
    if (err == 0 && (err = pq_nl_get_link(nl, 0, name, &link)) == 0) {
        *ifindex = rtnl_link_get_ifindex(link);
        rtnl_link_put(link);
    }
    /* Before it is up: no IPv6 link-local address, so that the ifb sends nothing of its
     * own (DAD, router solicitations, MLD) through its root qdisc, our plug, which would
     * count it as held. Without IPv6 (EAFNOSUPPORT) it has nothing of that to say. */
    if (err == 0 && (err = change_ifb(nl, *ifindex, 1)) == -EAFNOSUPPORT)
        err = 0;
    if (err == 0)
        err = change_ifb(nl, *ifindex, 0);
    return err < 0 ? fail_on(nl, PQ_STEP_IFB, err, "ifb") : 0;
}

int pq_tree_egress_held(struct pq_nl *nl, int ifindex)
{
    struct rtnl_qdisc *qd = NULL;
    uint64_t qlen;
    int err, tries;

    for (tries = 0;; tries++) {
        err = pq_nl_get_qdisc(nl, ifindex, TC_H_ROOT, &qd);
        if (err < 0 || !qd)
            return err;
        qlen = rtnl_tc_get_stat(TC_CAST(qd), RTNL_TC_QLEN);
        rtnl_qdisc_put(qd);
        nl->e->held = qlen;
        if (qlen == 0 || tries == 200)
            return qlen > 0 ? 1 : 0;
        nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
    }
}

/* Cache walker for pq_tree_survey. */
struct survey {
    int ifindex;
    uint32_t *bands;
    uint8_t *used;
};

static void survey_one(struct nl_object *obj, void *arg)
{
    struct survey *sv = arg;
    struct rtnl_tc *tc = (struct rtnl_tc *)obj;
    uint32_t h = rtnl_tc_get_handle(tc), parent = rtnl_tc_get_parent(tc);

    if (rtnl_tc_get_ifindex(tc) != sv->ifindex)
        return;
    if (h)
        sv->used[h >> 19] |= (uint8_t)(1u << ((h >> 16) & 7u));
    if (h && TC_H_MAJ(parent) == PQ_TREE_HANDLE && parent != TC_H_ROOT &&
        TC_H_MIN(parent) < 32)
        *sv->bands |= 1u << TC_H_MIN(parent);
}

int pq_tree_survey(struct pq_nl *nl, int ifindex, uint32_t *bands, uint8_t *used)
{
    struct survey sv = { ifindex, bands, used };
    struct nl_cache *cache = NULL;
    int err;

    *bands = 0;
    memset(used, 0, 65536 / 8);
    pq_nl_clear(nl);
    err = rtnl_qdisc_alloc_cache(nl->sk, &cache);
    if (err < 0)
        return pq_fail(nl->e, PQ_STEP_INSPECT, pq_nl_result(nl, err));
    nl_cache_foreach(cache, survey_one, &sv);
    nl_cache_free(cache);
    return 0;
}

/* Cache walker for pq_tree_plugs_under: the majors below TOP so far, what was found. */
struct under {
    int ifindex, max, n, grew;
    uint8_t *below;             /* 65536 bits: majors of the qdiscs below TOP, and TOP's */
    struct pq_found_plug *out;
    int pass;                   /* 0: grow BELOW to a fixed point; 1: collect the plugs */
};

static void under_one(struct nl_object *obj, void *arg)
{
    struct under *u = arg;
    struct rtnl_tc *tc = (struct rtnl_tc *)obj;
    uint32_t h = rtnl_tc_get_handle(tc), parent = rtnl_tc_get_parent(tc), pm = parent >> 16;
    const char *kind = rtnl_tc_get_kind(tc);

    if (rtnl_tc_get_ifindex(tc) != u->ifindex || parent == TC_H_ROOT ||
        TC_H_MAJ(parent) == TC_H_MAJ(TC_H_INGRESS) || !(u->below[pm >> 3] & (1u << (pm & 7u))))
        return;
    if (u->pass == 0 && h && !(u->below[h >> 19] & (1u << ((h >> 16) & 7u)))) {
        u->below[h >> 19] |= (uint8_t)(1u << ((h >> 16) & 7u));
        u->grew = 1;
    }
    if (u->pass == 1 && kind && strcmp(kind, "plug") == 0) {
        if (u->n < u->max)
            u->out[u->n] = (struct pq_found_plug){ parent, h, rtnl_tc_get_stat(tc,
                                                                             RTNL_TC_QLEN) };
        u->n++;
    }
}

int pq_tree_plugs_under(struct pq_nl *nl, int ifindex, uint32_t top, struct pq_found_plug *out,
                        int max)
{
    uint8_t below[65536 / 8];
    struct under u = { ifindex, max, 0, 1, below, out, 0 };
    struct nl_cache *cache = NULL;
    int err;

    memset(below, 0, sizeof(below));
    below[top >> 19] |= (uint8_t)(1u << ((top >> 16) & 7u));
    pq_nl_clear(nl);
    err = rtnl_qdisc_alloc_cache(nl->sk, &cache);
    if (err < 0)
        return pq_fail(nl->e, PQ_STEP_INSPECT, pq_nl_result(nl, err));
    while (u.grew) {
        u.grew = 0;
        nl_cache_foreach(cache, under_one, &u);
    }
    u.pass = 1;
    nl_cache_foreach(cache, under_one, &u);
    nl_cache_free(cache);
    return u.n;
}

void pq_tree_ifb_prefix(char *buf, int ifindex)
{
    snprintf(buf, IFNAMSIZ, PQ_IFB_PREFIX "%d-", ifindex);
}

/* ---- the plan ------------------------------------------------------------------------- */

int pq_tree_plan(struct pq_plan *p, int ifindex, int ingress, const char *ifb, int pref,
                 int nprefs)
{
    uint32_t at = ingress ? PQ_INGRESS_HANDLE : PQ_TREE_HANDLE;
    struct pq_gate g;
    int err = 0, i;

    /* Deleting the hold's filters (a whole preference each) stops the diversion: its
     * packets then pass. Never the ingress qdisc here: that would purge the egress. */
    for (i = 0; err == 0 && i < nprefs; i++)
        err = pq_plan_add(p, PQ_PH_DIVERT, PQ_PF_GONE_OK,
                          pq_tc_msg(RTM_DELTFILTER, 0, ifindex, at, 0,
                                    TC_H_MAKE((uint32_t)(pref + i) << 16, 0), NULL));
    if (err == 0 && ingress)
        err = pq_plan_add(p, PQ_PH_PROBE, PQ_PF_GONE_OK, pq_link_msg(RTM_GETLINK, 0, ifb));
    /* What the holds on the device share goes with the last of them: past the gate (the
     * device's lock), the prio if no other plug is in it; at ingress, the ifb goes under
     * the lock too (an attach then never sees the ingress qdisc without an ifb of ours),
     * and the ingress qdisc if no other hold's ifb is there. */
    memset(&g, 0, sizeof(g));
    g.kind = ingress ? PQ_GATE_INGRESS : PQ_GATE_TREE;
    g.ifindex = ifindex;
    g.slot = -1;
    g.skip_from = ingress ? PQ_PH_EGRESS : PQ_PH_LAST;
    if (ingress) {
        pq_tree_ifb_prefix(g.prefix, ifindex);
        snprintf(g.self, sizeof(g.self), "%s", ifb);
    }
    if (err == 0)
        err = pq_plan_add_gate(p, ingress ? PQ_PH_REMOVE : PQ_PH_LAST, &g);
    if (err == 0 && ingress)
        err = pq_plan_add(p, PQ_PH_REMOVE, PQ_PF_GONE_OK, pq_link_msg(RTM_DELLINK, 0, ifb));
    if (err == 0 && !ingress)
        err = pq_plan_add(p, PQ_PH_LAST, PQ_PF_GONE_OK,
                          pq_tc_msg(RTM_DELQDISC, 0, ifindex, TC_H_ROOT, PQ_TREE_HANDLE, 0,
                                    "prio"));
    if (err == 0 && ingress)
        err = pq_plan_add(p, PQ_PH_EGRESS, PQ_PF_GONE_OK,
                          pq_tc_msg(RTM_GETQDISC, NLM_F_ECHO, ifindex, TC_H_ROOT, 0, 0, NULL));
    if (err == 0 && ingress)
        err = pq_plan_add(p, PQ_PH_LAST, PQ_PF_GONE_OK,
                          pq_tc_msg(RTM_DELQDISC, 0, ifindex, TC_H_INGRESS, PQ_INGRESS_HANDLE,
                                    0, "ingress"));
    return err;
}
