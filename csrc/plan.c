/*
 * plan.c - a hold's undo plan (see plan.h): written with libnl's message builders at
 * attach, run with raw system calls by whoever undoes the hold.
 *
 * The runner is async-signal-safe and touches no thread-local state (sys.h): the guardian
 * runs it in a child that shares the holder's memory. It keeps its buffers on the stack.
 */
#define _GNU_SOURCE
#include "plan.h"
#include "share.h"
#include "sys.h"

#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <linux/gen_stats.h>
#include <linux/if_link.h>
#include <linux/tc_act/tc_mirred.h>
#include <linux/netlink.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>

#define PQ_REPLY_MS 2000        /* how long to wait for the kernel's answer to one message */
#define PQ_MSG_MAX 1024         /* the longest message a plan holds */
#define PQ_EGRESS_MS 200        /* packets just released are given this long to leave */
#define PQ_SETTLE_MS 2          /* the transmit softirq is given this long before REMOVE, LAST */

#define STEP_SIZE(len) (sizeof(struct pq_plan_step) + NLMSG_ALIGN(len))

void pq_plan_init(struct pq_plan *p, uint32_t expect)
{
    p->len = 0;
    p->expect = expect;
}

int pq_plan_add(struct pq_plan *p, enum pq_phase phase, unsigned flags, struct nl_msg *msg)
{
    struct nlmsghdr *h;
    struct pq_plan_step st;

    if (!msg)
        return -ENOMEM;
    h = nlmsg_hdr(msg);
    if (h->nlmsg_len > PQ_MSG_MAX || p->len + STEP_SIZE(h->nlmsg_len) > PQ_PLAN_MAX) {
        nlmsg_free(msg);
        return -ENOSPC;
    }
    st.phase = (uint16_t)phase;
    st.flags = (uint16_t)flags;
    st.len = h->nlmsg_len;
    memcpy(p->buf + p->len, &st, sizeof(st));
    memcpy(p->buf + p->len + sizeof(st), h, h->nlmsg_len);
    p->len += (uint32_t)STEP_SIZE(h->nlmsg_len);
    nlmsg_free(msg);
    return 0;
}

int pq_plan_add_file(struct pq_plan *p, enum pq_phase phase, const char *path)
{
    size_t n = path ? strlen(path) + 1 : 0;
    struct pq_plan_step st;

    if (n < 2 || n > PQ_MSG_MAX)
        return -EINVAL;
    if (p->len + STEP_SIZE(n) > PQ_PLAN_MAX)
        return -ENOSPC;
    st.phase = (uint16_t)phase;
    st.flags = PQ_PF_FILE;
    st.len = (uint32_t)n;
    memcpy(p->buf + p->len, &st, sizeof(st));
    memcpy(p->buf + p->len + sizeof(st), path, n);
    p->len += (uint32_t)STEP_SIZE(n);
    return 0;
}

int pq_plan_add_gate(struct pq_plan *p, enum pq_phase phase, const struct pq_gate *g)
{
    struct pq_plan_step st;

    if (p->len + STEP_SIZE(sizeof(*g)) > PQ_PLAN_MAX)
        return -ENOSPC;
    st.phase = (uint16_t)phase;
    st.flags = PQ_PF_GATE;
    st.len = (uint32_t)sizeof(*g);
    memcpy(p->buf + p->len, &st, sizeof(st));
    memcpy(p->buf + p->len + sizeof(st), g, sizeof(*g));
    p->len += (uint32_t)STEP_SIZE(sizeof(*g));
    return 0;
}

/* The step at OFF of P, or NULL past the end (or a step that does not fit: a message
 * shorter than its header, a path without its NUL). */
PQ_NO_TLS static const struct pq_plan_step *step_at(const struct pq_plan *p, uint32_t off)
{
    const struct pq_plan_step *st = (const struct pq_plan_step *)(p->buf + off);

    if (off + sizeof(*st) > p->len || off + STEP_SIZE(st->len) > p->len ||
        st->len > PQ_MSG_MAX)
        return NULL;
    if (st->flags & PQ_PF_FILE ? st->len < 2 || ((const char *)(st + 1))[st->len - 1] != '\0'
        : st->flags & PQ_PF_GATE ? st->len != sizeof(struct pq_gate)
                                 : st->len < NLMSG_HDRLEN)
        return NULL;
    return st;
}

/* P's gate, or NULL. */
PQ_NO_TLS static const struct pq_plan_step *gate_of(const struct pq_plan *p)
{
    const struct pq_plan_step *st;
    uint32_t off;

    for (off = 0; (st = step_at(p, off)); off += (uint32_t)STEP_SIZE(st->len))
        if (st->flags & PQ_PF_GATE)
            return st;
    return NULL;
}

PQ_NO_TLS int pq_plan_gate_phase(const struct pq_plan *p)
{
    const struct pq_plan_step *st = gate_of(p);

    return st ? (int)st->phase : -1;
}

PQ_NO_TLS int pq_plan_has(const struct pq_plan *p, enum pq_phase phase)
{
    const struct pq_plan_step *st;
    uint32_t off;

    for (off = 0; (st = step_at(p, off)); off += (uint32_t)STEP_SIZE(st->len))
        if (st->phase == phase && !(st->flags & PQ_PF_GATE))
            return 1;
    return 0;
}

void pq_plan_drop_before(struct pq_plan *p, enum pq_phase from)
{
    const struct pq_plan_step *st;
    uint32_t off = 0, out = 0;

    while ((st = step_at(p, off))) {
        uint32_t size = (uint32_t)STEP_SIZE(st->len);

        if (st->phase >= from || (st->flags & PQ_PF_GATE) || st->phase == PQ_PH_FORGET) {
            memmove(p->buf + out, st, size);
            out += size;
        }
        off += size;
    }
    p->len = out;
}

/* ---- the runner: raw syscalls only --------------------------------------------------- */

PQ_NO_TLS static int64_t now_ms(void)
{
    struct timespec ts = { 0, 0 };

    (void)PQ_SYS(SYS_clock_gettime, CLOCK_MONOTONIC, &ts, 0, 0, 0, 0);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

PQ_NO_TLS static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    while (PQ_SYS(SYS_nanosleep, &ts, &ts, 0, 0, 0, 0) == -EINTR)
        ;
}

/* The queue length in an RTM_NEWQDISC (TCA_STATS2/TCA_STATS_QUEUE, else TCA_STATS). */
PQ_NO_TLS static uint64_t qdisc_qlen(const struct nlmsghdr *h)
{
    const struct tcmsg *tcm = NLMSG_DATA(h);
    const struct rtattr *a = (const struct rtattr *)((const char *)tcm + NLMSG_ALIGN(sizeof(*tcm)));
    int len = (int)h->nlmsg_len - NLMSG_LENGTH(sizeof(*tcm));

    for (; RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        if (a->rta_type == TCA_STATS2) {
            const struct rtattr *b = RTA_DATA(a);
            int blen = (int)RTA_PAYLOAD(a);

            for (; RTA_OK(b, blen); b = RTA_NEXT(b, blen))
                if (b->rta_type == TCA_STATS_QUEUE &&
                    RTA_PAYLOAD(b) >= sizeof(struct gnet_stats_queue)) {
                    struct gnet_stats_queue q;

                    memcpy(&q, RTA_DATA(b), sizeof(q));
                    return q.qlen;
                }
        } else if (a->rta_type == TCA_STATS && RTA_PAYLOAD(a) >= sizeof(struct tc_stats)) {
            struct tc_stats s;

            memcpy(&s, RTA_DATA(a), sizeof(s));
            return s.qlen;
        }
    }
    return 0;
}

/* Packets an ifb has taken from its qdisc and not handed back yet, from its RTM_NEWLINK:
 * ifb counts what it takes as rx (dropping at once, as rx_dropped, what was not redirected
 * to it, such as its own IPv6 chatter), what it re-injects as tx. */
PQ_NO_TLS static uint64_t ifb_in_flight(const struct nlmsghdr *h)
{
    const struct ifinfomsg *ifi = NLMSG_DATA(h);
    const struct rtattr *a = (const struct rtattr *)((const char *)ifi + NLMSG_ALIGN(sizeof(*ifi)));
    int len = (int)h->nlmsg_len - NLMSG_LENGTH(sizeof(*ifi));

    for (; RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        if (a->rta_type == IFLA_STATS64 && RTA_PAYLOAD(a) >= sizeof(struct rtnl_link_stats64)) {
            struct rtnl_link_stats64 st;
            uint64_t done;

            memcpy(&st, RTA_DATA(a), sizeof(st)); /* 4-byte aligned in the message */
            done = st.tx_packets + st.tx_dropped + st.rx_dropped;
            return st.rx_packets > done ? st.rx_packets - done : 0;
        }
    }
    return 0;
}

/* Copy the kernel's extended-ack text of the error H into R. */
PQ_NO_TLS static void keep_extack(const struct nlmsghdr *h, struct pq_plan_result *r)
{
    const struct nlmsgerr *e = NLMSG_DATA(h);
    size_t skip = sizeof(*e);
    long len;
    const struct nlattr *a;

    r->kernel[0] = '\0';
    if (!(h->nlmsg_flags & NLM_F_ACK_TLVS))
        return;
    if (!(h->nlmsg_flags & NLM_F_CAPPED))
        skip += NLMSG_ALIGN(e->msg.nlmsg_len) - NLMSG_HDRLEN;
    len = (long)h->nlmsg_len - (long)NLMSG_HDRLEN - (long)skip;
    a = (const struct nlattr *)((const char *)e + skip);
    while (len >= (long)NLA_HDRLEN && a->nla_len >= NLA_HDRLEN && (long)a->nla_len <= len) {
        if ((a->nla_type & NLA_TYPE_MASK) == NLMSGERR_ATTR_MSG) {
            size_t n = a->nla_len - NLA_HDRLEN;

            if (n > sizeof(r->kernel) - 1)
                n = sizeof(r->kernel) - 1;
            memcpy(r->kernel, (const char *)a + NLA_HDRLEN, n);
            r->kernel[n] = '\0';
            while (n > 0 && (r->kernel[n - 1] == '\0' || r->kernel[n - 1] == '\n' ||
                             r->kernel[n - 1] == ' '))
                r->kernel[--n] = '\0';
            return;
        }
        len -= NLA_ALIGN(a->nla_len);
        a = (const struct nlattr *)((const char *)a + NLA_ALIGN(a->nla_len));
    }
}

/* Send the request BUF (LEN bytes) to the kernel on the route socket FD. 0 or -errno. */
PQ_NO_TLS static long to_kernel(int fd, const void *buf, uint32_t len)
{
    struct sockaddr_nl kernel;
    long n;

    memset(&kernel, 0, sizeof(kernel));
    kernel.nl_family = AF_NETLINK;
    n = PQ_SYS(SYS_sendto, fd, buf, len, 0, &kernel, sizeof(kernel));
    return n < 0 ? n : 0;
}

/* Wait until DEADLINE for the next datagram on the route socket FD, into BUF (SIZE
 * bytes): its length, or -errno (-ETIMEDOUT; -EMSGSIZE if it did not fit). */
PQ_NO_TLS static long next_reply(int fd, void *buf, size_t size, int64_t deadline)
{
    for (;;) {
        struct pollfd p = { fd, POLLIN, 0 };
        int64_t left = deadline - now_ms();
        struct timespec ts = { left / 1000, (left % 1000) * 1000000L };
        long n;

        if (left <= 0)
            return -ETIMEDOUT;
        n = PQ_SYS(SYS_ppoll, &p, 1, &ts, 0, 0, 0);
        if (n == -EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? n : -ETIMEDOUT;
        n = PQ_SYS(SYS_recvfrom, fd, buf, size, MSG_DONTWAIT | MSG_TRUNC, 0, 0);
        if (n == -EINTR || n == -EAGAIN)
            continue;
        return n > (long)size ? -EMSGSIZE : n;
    }
}

/* Send the message M (LEN bytes) of a step in PHASE and wait for its answer. 0 or -errno;
 * what the replies show still held is added to *HELD. */
PQ_NO_TLS static int exchange(int fd, const void *m, uint32_t len, enum pq_phase phase,
                              uint32_t expect, uint64_t *held, uint32_t seq,
                              struct pq_plan_result *r)
{
    union { struct nlmsghdr h; unsigned char b[PQ_MSG_MAX]; } out;
    union { struct nlmsghdr h; unsigned char b[16384]; } in;
    int64_t deadline = now_ms() + PQ_REPLY_MS;
    long n;

    memcpy(out.b, m, len);
    out.h.nlmsg_seq = seq;
    out.h.nlmsg_pid = 0;
    out.h.nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
    if ((n = to_kernel(fd, out.b, len)) < 0)
        return (int)n;
    for (;;) {
        struct nlmsghdr *h;

        if ((n = next_reply(fd, in.b, sizeof(in.b), deadline)) < 0)
            return (int)n;
        for (h = &in.h; NLMSG_OK(h, (unsigned long)n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_seq != seq)
                continue;       /* a late answer to an earlier request */
            if (h->nlmsg_type == NLMSG_ERROR) {
                int err = ((struct nlmsgerr *)NLMSG_DATA(h))->error;

                if (err < 0)
                    keep_extack(h, r);
                return err;
            }
            if (h->nlmsg_type == RTM_NEWQDISC && held) {
                const struct tcmsg *tcm = NLMSG_DATA(h);

                /* Someone else's qdisc in our plug's place: ours is gone. */
                if (phase == PQ_PH_PROBE && expect && tcm->tcm_handle != expect)
                    return -ENOENT;
                *held += qdisc_qlen(h);
            }
            if (h->nlmsg_type == RTM_NEWLINK && held)
                *held += ifb_in_flight(h);
        }
    }
}

PQ_NO_TLS int pq_plan_phase(int fd, const struct pq_plan *p, enum pq_phase phase,
                            uint64_t *held, struct pq_plan_result *r)
{
    const struct pq_plan_step *st;
    uint32_t off, seq = (uint32_t)now_ms() * 64u;
    int first = 0;

    for (off = 0; (st = step_at(p, off)); off += (uint32_t)STEP_SIZE(st->len)) {
        int err;

        if (st->phase != phase || (st->flags & PQ_PF_GATE))
            continue;
        if (st->flags & PQ_PF_FILE)
            err = (int)PQ_SYS(SYS_unlinkat, AT_FDCWD, (const char *)(st + 1), 0, 0, 0, 0);
        else
            err = exchange(fd, st + 1, st->len, phase, p->expect, held, ++seq, r);
        if ((st->flags & PQ_PF_FILE) && err == -ENOENT)
            err = 0;           /* already gone: what the step wanted */
        if ((st->flags & PQ_PF_GONE_OK) &&
            (err == -ENOENT || err == -EINVAL || err == -ENODEV)) {
            r->kernel[0] = '\0';
            err = 0;
        }
        if (err < 0 && first == 0)
            first = err;
    }
    return first;
}

/* Fail R at PHASE with ERR; returns ERR. */
PQ_NO_TLS static int failed(struct pq_plan_result *r, enum pq_phase phase, int err)
{
    r->err = err;
    r->phase = phase;
    return err;
}

/* ---- scans: dumps read with raw syscalls ---------------------------------------------- */

/* What a scan looks for, and what it found. */
struct scan {
    int type;                   /* RTM_GETQDISC, RTM_GETLINK, RTM_GETTFILTER */
    int ifindex;
    uint32_t parent, classid;
    int redirect;
    const char *prefix, *self;
    uint16_t *prefs;
    int max, found, top;
};

/* The attribute TYPE among the LEN bytes of attributes at A, or NULL. */
PQ_NO_TLS static const struct rtattr *attr_in(const struct rtattr *a, int len, int type)
{
    for (; RTA_OK(a, len); a = RTA_NEXT(a, len))
        if ((a->rta_type & NLA_TYPE_MASK) == type)
            return a;
    return NULL;
}

PQ_NO_TLS static int starts_with(const char *s, size_t n, const char *prefix)
{
    size_t i;

    for (i = 0; prefix[i]; i++)
        if (i >= n || s[i] != prefix[i])
            return 0;
    return 1;
}

/* Whether the action list LIST (TCA_*_ACT) has a mirred action redirecting to IFINDEX. */
PQ_NO_TLS static int redirects_to(const struct rtattr *list, int ifindex)
{
    const struct rtattr *act = RTA_DATA(list);
    int len = (int)RTA_PAYLOAD(list);

    for (; RTA_OK(act, len); act = RTA_NEXT(act, len)) {
        const struct rtattr *opts = attr_in(RTA_DATA(act), (int)RTA_PAYLOAD(act),
                                            TCA_ACT_OPTIONS);
        const struct rtattr *parms =
            opts ? attr_in(RTA_DATA(opts), (int)RTA_PAYLOAD(opts), TCA_MIRRED_PARMS) : NULL;
        struct tc_mirred m;

        if (!parms || RTA_PAYLOAD(parms) < sizeof(m))
            continue;
        memcpy(&m, RTA_DATA(parms), sizeof(m));
        if ((int)m.ifindex == ifindex)
            return 1;
    }
    return 0;
}

/* Look at one message of a dump. */
PQ_NO_TLS static void scan_one(struct scan *sc, const struct nlmsghdr *h)
{
    if (h->nlmsg_type == RTM_NEWLINK && sc->type == RTM_GETLINK) {
        const struct ifinfomsg *ifi = NLMSG_DATA(h);
        const struct rtattr *name = attr_in(
            (const struct rtattr *)((const char *)ifi + NLMSG_ALIGN(sizeof(*ifi))),
            (int)h->nlmsg_len - NLMSG_LENGTH(sizeof(*ifi)), IFLA_IFNAME);

        if (name && starts_with(RTA_DATA(name), RTA_PAYLOAD(name), sc->prefix) &&
            !(sc->self && starts_with(RTA_DATA(name), RTA_PAYLOAD(name), sc->self) &&
              RTA_PAYLOAD(name) > strlen(sc->self) &&
              ((const char *)RTA_DATA(name))[strlen(sc->self)] == '\0'))
            sc->found++;
        return;
    }
    if (h->nlmsg_type == RTM_NEWQDISC && sc->type == RTM_GETQDISC) {
        const struct tcmsg *tcm = NLMSG_DATA(h);
        const struct rtattr *kind = attr_in(
            (const struct rtattr *)((const char *)tcm + NLMSG_ALIGN(sizeof(*tcm))),
            (int)h->nlmsg_len - NLMSG_LENGTH(sizeof(*tcm)), TCA_KIND);

        if (tcm->tcm_ifindex == sc->ifindex && TC_H_MAJ(tcm->tcm_parent) == sc->parent &&
            tcm->tcm_parent != TC_H_ROOT && kind && RTA_PAYLOAD(kind) >= 5 &&
            memcmp(RTA_DATA(kind), "plug", 5) == 0)
            sc->found++;
        return;
    }
    if (h->nlmsg_type == RTM_NEWTFILTER && sc->type == RTM_GETTFILTER) {
        const struct tcmsg *tcm = NLMSG_DATA(h);
        const struct rtattr *a = (const struct rtattr *)((const char *)tcm +
                                                         NLMSG_ALIGN(sizeof(*tcm)));
        int len = (int)h->nlmsg_len - NLMSG_LENGTH(sizeof(*tcm));
        const struct rtattr *opts = attr_in(a, len, TCA_OPTIONS), *o;
        const struct rtattr *kind = attr_in(a, len, TCA_KIND);
        int pref = (int)(TC_H_MAJ(tcm->tcm_info) >> 16), ours = 0, olen;

        if (tcm->tcm_ifindex != sc->ifindex || tcm->tcm_parent != sc->parent)
            return;
        if (pref > sc->top)
            sc->top = pref;
        if (!sc->classid && !sc->redirect)
            ours = 1;
        if (opts && (sc->classid || sc->redirect)) {
            /* Every classifier we use (flower, fw, matchall) has its classid at 1; the
             * actions are at TCA_FLOWER_ACT, TCA_FW_ACT, TCA_MATCHALL_ACT by kind. */
            int act = 0;

            if (kind && starts_with(RTA_DATA(kind), RTA_PAYLOAD(kind), "flower"))
                act = TCA_FLOWER_ACT;
            else if (kind && starts_with(RTA_DATA(kind), RTA_PAYLOAD(kind), "fw"))
                act = TCA_FW_ACT;
            else if (kind && starts_with(RTA_DATA(kind), RTA_PAYLOAD(kind), "matchall"))
                act = TCA_MATCHALL_ACT;
            olen = (int)RTA_PAYLOAD(opts);
            if (sc->classid && (o = attr_in(RTA_DATA(opts), olen, 1)) &&
                RTA_PAYLOAD(o) >= 4) {
                uint32_t c;

                memcpy(&c, RTA_DATA(o), 4);
                ours = c == sc->classid;
            }
            if (sc->redirect && act && (o = attr_in(RTA_DATA(opts), olen, act)))
                ours = redirects_to(o, sc->redirect);
        }
        if (!ours)
            return;
        /* A preference has one entry per filter there: count it once. */
        for (olen = 0; olen < sc->found; olen++)
            if (sc->prefs && olen < sc->max && sc->prefs[olen] == pref)
                return;
        if (sc->prefs && sc->found < sc->max)
            sc->prefs[sc->found] = (uint16_t)pref;
        sc->found++;
    }
}

/* Dump what SC asks for on the route socket FD and look at every answer. 0 or -errno. */
PQ_NO_TLS static int scan(int fd, struct scan *sc)
{
    union {
        struct nlmsghdr h;
        unsigned char b[NLMSG_SPACE(sizeof(struct tcmsg))];
    } out;
    union { struct nlmsghdr h; unsigned char b[32768]; } in;
    int64_t deadline = now_ms() + PQ_REPLY_MS;
    uint32_t seq = (uint32_t)now_ms() * 64u + 63u;
    long n;

    memset(&out, 0, sizeof(out));
    out.h.nlmsg_type = (uint16_t)sc->type;
    out.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    out.h.nlmsg_seq = seq;
    if (sc->type == RTM_GETLINK) {
        out.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
    } else {
        struct tcmsg *t = NLMSG_DATA(&out.h);

        out.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct tcmsg));
        t->tcm_family = AF_UNSPEC;
        t->tcm_ifindex = sc->ifindex;
        t->tcm_parent = sc->type == RTM_GETTFILTER ? sc->parent : 0;
    }
    if ((n = to_kernel(fd, out.b, out.h.nlmsg_len)) < 0)
        return (int)n;
    for (;;) {
        struct nlmsghdr *h;

        /* (a part of the dump that did not fit is -EMSGSIZE: never guess) */
        if ((n = next_reply(fd, in.b, sizeof(in.b), deadline)) < 0)
            return (int)n;
        for (h = &in.h; NLMSG_OK(h, (unsigned long)n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_seq != seq)
                continue;
            if (h->nlmsg_type == NLMSG_DONE)
                return 0;
            if (h->nlmsg_type == NLMSG_ERROR) {
                int err = ((struct nlmsgerr *)NLMSG_DATA(h))->error;

                if (err < 0)
                    return err;
                continue;
            }
            scan_one(sc, h);
        }
    }
}

PQ_NO_TLS int pq_scan_tree_plugs(int fd, int ifindex)
{
    struct scan sc;
    int err;

    memset(&sc, 0, sizeof(sc));
    sc.type = RTM_GETQDISC;
    sc.ifindex = ifindex;
    sc.parent = PQ_TREE_HANDLE;
    err = scan(fd, &sc);
    return err < 0 ? err : sc.found;
}

PQ_NO_TLS int pq_scan_links(int fd, const char *prefix, const char *self)
{
    struct scan sc;
    int err;

    memset(&sc, 0, sizeof(sc));
    sc.type = RTM_GETLINK;
    sc.prefix = prefix;
    sc.self = self && self[0] ? self : NULL;
    err = scan(fd, &sc);
    return err < 0 ? err : sc.found;
}

PQ_NO_TLS int pq_scan_filters(int fd, int ifindex, uint32_t parent, uint32_t classid,
                              int redirect, uint16_t *prefs, int max, int *top)
{
    struct scan sc;
    int err;

    memset(&sc, 0, sizeof(sc));
    sc.type = RTM_GETTFILTER;
    sc.ifindex = ifindex;
    sc.parent = parent;
    sc.classid = classid;
    sc.redirect = redirect;
    sc.prefs = prefs;
    sc.max = max;
    err = scan(fd, &sc);
    if (top)
        *top = sc.top;
    return err < 0 ? err : sc.found;
}

/* ---- the gate ------------------------------------------------------------------------ */

/* Take the lock (unless LOCKED) and say whether the hold may go on past G: 1 (what it
 * shares is its alone now), 0 (others use it), or -errno. */
PQ_NO_TLS static int pass_gate(int fd, const struct pq_gate *g, int sock, unsigned flags)
{
    int n;

    if (sock < 0)
        return 0;                      /* no way to check: keep what is shared */
    if (!(flags & PQ_RUN_LOCKED) &&
        (n = pq_share_lock(sock, g->ifindex,
                           flags & PQ_RUN_PATIENT ? PQ_PATIENT_MS : PQ_LOCK_MS)) < 0)
        return n;
    switch (g->kind) {
    case PQ_GATE_TREE:
        n = pq_scan_tree_plugs(fd, g->ifindex);
        break;
    case PQ_GATE_INGRESS: {
        char prefix[sizeof(g->prefix) + 1], self[sizeof(g->self) + 1];

        memcpy(prefix, g->prefix, sizeof(g->prefix));
        prefix[sizeof(g->prefix)] = '\0';
        memcpy(self, g->self, sizeof(g->self));
        self[sizeof(g->self)] = '\0';
        n = pq_scan_links(fd, prefix, self);
        break;
    }
    case PQ_GATE_PLUG:
        n = pq_share_others(sock, g->ifindex, g->parent, g->handle, g->owner, g->slot, NULL);
        break;
    default:
        n = 0;
        break;
    }
    return n < 0 ? n : n == 0;
}

PQ_NO_TLS int pq_plan_run(int fd, const struct pq_plan *p, enum pq_phase from, int timeout_ms,
                          int sock, unsigned flags, struct pq_plan_result *r)
{
    const struct pq_plan_step *gate = gate_of(p);
    int64_t start = now_ms();
    int ph, err, skip_from = PQ_PH_COUNT;

    r->err = 0;
    r->gate = 0;
    r->shared = 0;
    r->phase = from;
    r->held = 0;
    r->waited_ms = 0;
    r->kernel[0] = '\0';
    for (ph = (int)from; ph < PQ_PH_COUNT; ph++) {
        int64_t deadline = now_ms() + (ph == PQ_PH_PROBE ? (timeout_ms > 0 ? timeout_ms : 0)
                                                         : PQ_EGRESS_MS);

        if (gate && gate->phase == ph && ph < PQ_PH_FORGET) {
            err = pass_gate(fd, (const struct pq_gate *)(gate + 1), sock, flags);
            if (err < 0) {
                r->gate = 1;
                return failed(r, (enum pq_phase)ph, err);
            }
            if (err == 0) {            /* the others keep what is shared */
                skip_from = (int)((const struct pq_gate *)(gate + 1))->skip_from;
                r->shared = 1;
            }
        }
        if (ph >= skip_from && ph < PQ_PH_FORGET)
            continue;
        /* The release left the root qdisc scheduled (__QDISC_STATE_SCHED) until the
         * transmit softirq runs; a root qdisc deleted while scheduled makes
         * dev_deactivate_many() sleep a tick (some_qdisc_is_busy) with noop_qdisc in its
         * place, dropping whatever the device is sent meanwhile. Sleeping lets it run. */
        if ((ph == PQ_PH_REMOVE || ph == PQ_PH_LAST) && ph < skip_from &&
            pq_plan_has(p, (enum pq_phase)ph))
            sleep_ms(PQ_SETTLE_MS);
        if (ph != PQ_PH_PROBE && ph != PQ_PH_EGRESS) {
            err = pq_plan_phase(fd, p, (enum pq_phase)ph, NULL, r);
            if (err < 0 && !(ph == PQ_PH_RELEASE && (flags & PQ_RUN_ONWARD)))
                return failed(r, (enum pq_phase)ph, err);
            continue;
        }
        /* Ask again until nothing is held, or the wait ends. */
        for (;;) {
            uint64_t held = 0;

            if ((err = pq_plan_phase(fd, p, (enum pq_phase)ph, &held, r)) < 0)
                return failed(r, (enum pq_phase)ph, err);
            if (held == 0)
                break;
            if (now_ms() >= deadline) {
                r->held = held;
                r->waited_ms = (uint32_t)(now_ms() - start);
                return failed(r, (enum pq_phase)ph, ph == PQ_PH_PROBE ? -ETIMEDOUT : -EBUSY);
            }
            sleep_ms(1);
        }
    }
    return 0;
}
