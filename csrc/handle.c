/*
 * handle.c - the handle API (pq_*, see plug_qdisc.h), the top of the C core but for the
 * HAProxy trio (plug_qdisc.c). A handle knows where its hold is and what it built: attach
 * builds the plug (plug.c) or the tree around it (tree.c), writes the hold's plan once
 * (hold.c) and hands it to the guardian (guard.c); detach runs the same plan. A failure
 * leaves facts in the handle (step, errno, the kernel's text, what was found), never
 * sentences. Nothing here prints, exits or aborts; nl_cli_* is never used.
 */
#define _GNU_SOURCE
#include "plug_qdisc.h"
#include "nl.h"
#include "plan.h"
#include "plug.h"
#include "tree.h"
#include "hold.h"
#include "guard.h"
#include "share.h"

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <net/if.h>
#include <unistd.h>
#include <net/if_arp.h>
#include <linux/pkt_sched.h>

#include <netlink/socket.h>
#include <netlink/route/link.h>
#include <netlink/route/tc.h>
#include <netlink/route/qdisc/prio.h>

/* The kernel's hard_header_len is not in netlink; Ethernet and loopback both use 14. */
#define PQ_ETH_HLEN 14
/* Stand-in queue length when tx_queue_len is 0 (a 0 limit would drop everything). */
#define PQ_DEFAULT_TXQLEN 1000

struct plug_qdisc {
    struct pq_nl nl;           /* the socket, in the handle's namespace */
    struct pq_error e;         /* the last call's failure */
    int connected;             /* namespace taken and device looked up */
    int ifindex;
    char device[IFNAMSIZ];
    uint32_t parent;
    uint32_t handle;
    uint32_t limit;            /* limit in force (what we last sent); 0 before connect */
    uint32_t asked_limit;      /* the caller's limit, 0 for the device's default */
    uint32_t default_limit;    /* the device's default, computed at connect */
    int is_buffering;
    int created;
    int attached;
    /* Where the plug itself is: the device and PARENT, the prio's band, or the ifb. */
    int pl_ifindex;
    uint32_t pl_parent;
    /* Selective and ingress holds (pq_set_hold). */
    int ingress;
    int nterms;
    struct pq_term *terms;
    char ifb_name[IFNAMSIZ];
    int band;                  /* the prio's band, or the ifb's number; 0 for none */
    int pref;                  /* the filters' first preference */
    uint32_t asked_handle;     /* as given: 0 lets attach choose */
    /* A plain plug's user (share.h): its listening socket, -1 for none. */
    int member;
    unsigned long member_gen;  /* pq_fork_generation() when it joined */
    int owner, slot;
    int selecting_stopped;     /* pq_stop_selecting: its filters are gone */
    struct pq_plan plan;       /* how to undo what attach built */
    char *record;              /* the hold's record file, unlinked by the plan; NULL: none */
    /* The guardian. */
    int guard;                 /* register at attach */
    struct pq_guard_ticket ticket;
};

/* ---- errors: facts only ---------------------------------------------------------------- */

static void reset_error(struct plug_qdisc *q)
{
    int attach_err = q->e.attach_err;
    enum pq_step attach_step = q->e.attach_step;

    memset(&q->e, 0, sizeof(q->e));
    q->e.attach_err = attach_err;
    q->e.attach_step = attach_step;
    q->nl.kerr = 0;
}

static int fail(struct plug_qdisc *q, enum pq_step step, int err)
{
    return pq_fail(&q->e, step, err);
}

/* Run a call that may fail, keeping the error Q has now (the first failure's facts). */
#define KEEPING_ERROR(q, call)                                                             \
    do {                                                                                   \
        struct pq_error keep_ = (q)->e;                                                    \
        call;                                                                              \
        (q)->e = keep_;                                                                    \
    } while (0)
/* ---- the handle ------------------------------------------------------------------------ */

/* Make a handle; no I/O. 0, -EINVAL or -ENOMEM. */
int pq_new(struct plug_qdisc **out, const char *device, int ifindex, uint32_t parent,
           uint32_t handle, uint32_t limit)
{
    struct plug_qdisc *q;

    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!device && ifindex <= 0)
        return -EINVAL;
    if (device && (device[0] == '\0' || strlen(device) > IFNAMSIZ - 1))
        return -EINVAL;
    q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    pq_nl_init(&q->nl, &q->e);
    q->ticket.slot = -1;
    q->member = -1;
    q->slot = -1;
    q->parent = parent;
    q->handle = handle;
    q->asked_handle = handle;
    q->asked_limit = limit;
    q->ifindex = device ? 0 : ifindex;
    if (device)
        snprintf(q->device, sizeof(q->device), "%s", device);
    *out = q;
    return 0;
}

/* Use the namespace NETNS_FD (duplicated). 0, -EISCONN after connect, or -errno. */
int pq_set_netns(struct plug_qdisc *q, int netns_fd)
{
    if (!q || netns_fd < 0)
        return -EINVAL;
    reset_error(q);
    if (q->connected)
        return fail(q, PQ_STEP_ARGS, -EISCONN);
    return pq_nl_set_netns(&q->nl, netns_fd);
}

/* Whether term T is one the tree can build. */
static int term_ok(const struct pq_term *t)
{
    if (t->kind == PQ_TERM_MARK)
        return (t->mark & t->mark_mask) == t->mark && t->mark != 0;
    return t->kind == PQ_TERM_FLOWER && (t->family == AF_INET || t->family == AF_INET6) &&
           t->ip_proto <= 255 && t->sport_lo <= t->sport_hi && t->dport_lo <= t->dport_hi;
}

/* What to hold: ingress or egress, all or what TERMS select. 0, -EISCONN, -EINVAL. */
int pq_set_hold(struct plug_qdisc *q, int ingress, const struct pq_term *terms, int nterms)
{
    struct pq_term *copy = NULL;
    int i;

    if (!q || nterms < 0 || (nterms > 0 && !terms))
        return -EINVAL;
    reset_error(q);
    if (q->connected)
        return fail(q, PQ_STEP_ARGS, -EISCONN);
    if ((ingress || nterms) && q->parent != TC_H_ROOT)
        return fail(q, PQ_STEP_ARGS, -EINVAL);
    if (nterms && (q->handle == PQ_TREE_HANDLE || q->handle == TC_H_INGRESS))
        return fail(q, PQ_STEP_ARGS, -EINVAL);
    for (i = 0; i < nterms; i++)
        if (!term_ok(&terms[i]))
            return fail(q, PQ_STEP_ARGS, -EINVAL);
    if (nterms) {
        copy = calloc((size_t)nterms, sizeof(*copy));
        if (!copy)
            return -ENOMEM;
        memcpy(copy, terms, (size_t)nterms * sizeof(*copy));
    }
    free(q->terms);
    q->terms = copy;
    q->nterms = nterms;
    q->ingress = ingress ? 1 : 0;
    return 0;
}

/* The record file of the hold the next attach makes; the plan unlinks it once all of the
 * hold is undone. NULL: none. 0, -EISCONN, -EINVAL, -ENOMEM. */
int pq_set_record(struct plug_qdisc *q, const char *path)
{
    char *copy = NULL;

    if (!q || (path && (path[0] != '/' || strlen(path) >= 512)))
        return -EINVAL;
    reset_error(q);
    if (q->attached)
        return fail(q, PQ_STEP_ARGS, -EISCONN);
    if (path && !(copy = strdup(path)))
        return -ENOMEM;
    free(q->record);
    q->record = copy;
    return 0;
}

/* Guard from the next attach; max_hold. 0, -EINVAL, -EISCONN. */
int pq_set_guard(struct plug_qdisc *q, int on, uint32_t max_hold_ms)
{
    if (!q || (max_hold_ms && !on))
        return -EINVAL;
    reset_error(q);
    if (q->attached)
        return fail(q, PQ_STEP_ARGS, -EISCONN);
    q->guard = on ? 1 : 0;
    q->ticket.max_hold_ms = max_hold_ms;
    return 0;
}

/* Look the device up and record what the handle needs, with the kernel's default limit
 * tx_queue_len * (mtu + hard_header_len). 0 or -errno (step DEVICE). */
static int lookup_device(struct plug_qdisc *q)
{
    struct rtnl_link *link;
    unsigned int mtu, txqlen, arptype, hh;
    uint64_t lim;
    const char *name;
    int err;

    err = pq_nl_get_link(&q->nl, q->device[0] ? 0 : q->ifindex, q->device, &link);
    if (err < 0)
        return fail(q, PQ_STEP_DEVICE, err);
    q->ifindex = rtnl_link_get_ifindex(link);
    name = rtnl_link_get_name(link);
    if (name)
        snprintf(q->device, sizeof(q->device), "%s", name);
    mtu = rtnl_link_get_mtu(link);
    txqlen = rtnl_link_get_txqlen(link);
    arptype = rtnl_link_get_arptype(link);
    rtnl_link_put(link);
    hh = (arptype == ARPHRD_ETHER || arptype == ARPHRD_LOOPBACK) ? PQ_ETH_HLEN : 0;
    if (txqlen == 0)
        txqlen = PQ_DEFAULT_TXQLEN;
    lim = (uint64_t)txqlen * ((uint64_t)mtu + hh);
    q->default_limit = lim > UINT32_MAX ? UINT32_MAX : (uint32_t)lim;
    return 0;
}

/* Take the namespace, open the socket, look the device up. 0 or -errno. */
int pq_connect(struct plug_qdisc *q)
{
    int err;

    if (!q)
        return -EINVAL;
    if (q->connected)
        return 0;
    reset_error(q);
    if ((err = pq_nl_ready(&q->nl)) < 0 || (err = lookup_device(q)) < 0)
        return err;
    q->limit = q->asked_limit ? q->asked_limit : q->default_limit;
    /* Plain: the plug is at PARENT of the device (handle 0: 1:); match mode: a band of
     * the prio, and ingress: the root of an ifb, both chosen by attach. */
    q->pl_ifindex = q->ingress ? 0 : q->ifindex;
    q->pl_parent = q->ingress ? TC_H_ROOT : q->parent;
    if (!q->ingress && !q->nterms && q->asked_handle == 0)
        q->handle = q->asked_handle = 0x10000u;
    q->connected = 1;
    return 0;
}

/* pq_new + pq_set_netns + pq_connect; frees the handle on failure. 0 or -errno. */
int pq_open(struct plug_qdisc **out, const char *device, int ifindex, uint32_t parent,
            uint32_t handle, uint32_t limit, int netns_fd)
{
    struct plug_qdisc *q;
    int err;

    err = pq_new(&q, device, ifindex, parent, handle, limit);
    if (err < 0)
        return err;
    if (netns_fd >= 0)
        err = pq_set_netns(q, netns_fd);
    if (err == 0)
        err = pq_connect(q);
    if (err < 0) {
        pq_close(q);
        return err;
    }
    *out = q;
    return 0;
}

/* Start an operation: a fresh error record, connected, and a socket of this process's
 * own (a forked child's is made anew, in the same namespace). 0 or -errno. */
static int begin(struct plug_qdisc *q)
{
    reset_error(q);
    if (!q->connected)
        return pq_connect(q);
    return pq_nl_ready(&q->nl);
}

/* ---- attach ---------------------------------------------------------------------------- */

/* Send one plug action to our plug. 0 or -errno. */
static int send_plug(struct plug_qdisc *q, int flags, int action, uint32_t limit)
{
    return pq_plug_send(&q->nl, q->pl_ifindex, q->pl_parent, q->handle, flags, action, limit);
}

/* Create the plug at its place with the limit (FLAGS: CREATE|EXCL, or CREATE|REPLACE),
 * then release it: a new plug qdisc holds, and after attach traffic passes. A plug that
 * cannot be released is deleted again rather than left holding with nobody in charge.
 * A create answered ENOENT is a missing parent (step PARENT) or a kernel without sch_plug
 * (step CREATE). 0 or -errno, step recorded. */
static int make_plug(struct plug_qdisc *q, int flags)
{
    int err = send_plug(q, flags, TCQ_PLUG_LIMIT, q->limit);

    if (err == -ENOENT && q->pl_parent != TC_H_ROOT) {
        int exists;

        KEEPING_ERROR(q, exists = pq_nl_class_exists(&q->nl, q->pl_ifindex, q->pl_parent));
        if (exists == 0)
            return fail(q, PQ_STEP_PARENT, err);
    }
    if (err < 0)
        return fail(q, PQ_STEP_CREATE, err);
    err = send_plug(q, 0, TCQ_PLUG_RELEASE_INDEFINITE, q->limit);
    if (err < 0) {
        fail(q, PQ_STEP_CHANGE, err);
        KEEPING_ERROR(q, (void)pq_plug_delete(&q->nl, q->pl_ifindex, q->pl_parent, q->handle));
    }
    return err;
}

/* Adopt our plug found at the place: only an explicit limit overrides its limit; then
 * release it. 0 or -errno. */
static int adopt_plug(struct plug_qdisc *q)
{
    int err = q->asked_limit ? send_plug(q, 0, TCQ_PLUG_LIMIT, q->limit) : 0;

    if (err < 0)
        return fail(q, PQ_STEP_ADOPT, err);
    err = send_plug(q, 0, TCQ_PLUG_RELEASE_INDEFINITE, q->limit);
    return err < 0 ? fail(q, PQ_STEP_CHANGE, err) : 0;
}

static enum pq_mode mode_of(const struct plug_qdisc *q)
{
    return q->ingress ? PQ_MODE_INGRESS : q->nterms ? PQ_MODE_MATCH : PQ_MODE_PLAIN;
}

/* Where the hold is and what it made, for its plan. */
static void place_of(const struct plug_qdisc *q, struct pq_place *pl)
{
    memset(pl, 0, sizeof(*pl));
    pl->mode = mode_of(q);
    pl->ifindex = q->ifindex;
    pl->pl_ifindex = q->pl_ifindex;
    pl->pl_parent = q->pl_parent;
    pl->handle = q->handle;
    snprintf(pl->ifb, sizeof(pl->ifb), "%s", q->ifb_name);
    pl->pref = q->pref;
    /* Once its filters are gone their preferences may be another hold's. */
    pl->nprefs = q->selecting_stopped ? 0 : q->nterms > 0 ? q->nterms : 1;
    pl->owner = q->owner;
    pl->slot = q->member >= 0 ? q->slot : -1;
}

/* An AF_UNIX socket in the handle's namespace, for the device's lock and the share checks
 * (share.h). 0 or -errno (step SOCKET). */
static int share_socket(struct plug_qdisc *q, int *sock)
{
    return pq_nl_unix_socket(&q->nl, sock);
}

/* ---- names a forked child must not keep ----------------------------------------------
 * A name in share.h belongs to a socket, not a process: a child forked (without exec)
 * while this process has the device's lock or is a plain plug's user would keep the lock
 * bound, or the user alive, after this process let go or died. The sockets behind those
 * names are kept here, and a child closes its copies as it starts. */

#define PQ_KEPT_MAX 1024

static pthread_mutex_t kept_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t kept_once = PTHREAD_ONCE_INIT;
static int kept[PQ_KEPT_MAX];
static int nkept;

static void kept_in_child(void)
{
    int i;

    for (i = 0; i < nkept; i++)
        close(kept[i]);
    nkept = 0;
    pthread_mutex_init(&kept_lock, NULL);   /* another thread may have had it */
}

static void kept_install(void)
{
    (void)pthread_atfork(NULL, NULL, kept_in_child);
}

/* FD is a socket behind a name: a forked child closes its copy. (Past PQ_KEPT_MAX it
 * would keep it: a child then keeps the name, as before this existed.) */
static void keep(int fd)
{
    (void)pthread_once(&kept_once, kept_install);
    pthread_mutex_lock(&kept_lock);
    if (nkept < PQ_KEPT_MAX)
        kept[nkept++] = fd;
    pthread_mutex_unlock(&kept_lock);
}

/* Close FD, kept with keep(). */
static void unkeep(int fd)
{
    int i;

    if (fd < 0)
        return;
    pthread_mutex_lock(&kept_lock);
    for (i = 0; i < nkept; i++)
        if (kept[i] == fd) {
            kept[i] = kept[--nkept];
            break;
        }
    pthread_mutex_unlock(&kept_lock);
    close(fd);
}

/* Take the device's lock: *SOCK holds it until unkept. 0 or -errno (step LOCK). */
static int lock_device(struct plug_qdisc *q, int *sock)
{
    int err = share_socket(q, sock);

    if (err < 0)
        return err;
    keep(*sock);
    err = pq_share_lock(*sock, q->ifindex, PQ_LOCK_MS);
    if (err < 0) {
        unkeep(*sock);
        *sock = -1;
        return fail(q, PQ_STEP_LOCK, err);
    }
    return 0;
}

/* Whether a living holder uses the plain plug PARENT/HANDLE of the device: 1 (with
 * *OWNER: one of them removes it when the last out), 0, or -errno. */
static int plug_users(struct plug_qdisc *q, uint32_t parent, uint32_t handle, int *owner)
{
    int sock, n, err = share_socket(q, &sock);

    if (err < 0)
        return err;
    n = pq_share_others(sock, q->ifindex, parent, handle, 0, -1, owner);
    close(sock);
    return n;
}

/* Write the hold's plan from what is known of it now (an ingress hold's plug has no
 * steps until its ifb is made) and hand it to the guardian with the hold's namespace (for
 * its gate's socket): with the record if attach is to create what it holds with
 * (CREATING), else without. Done before each object attach creates, so that a death at
 * any point of attach is undone like a death while holding. LOCK: the device's lock this
 * attach has (-1: none), a copy of which the guardian keeps until pq_guard_unlock: if the
 * holder dies before, no other attach takes the band, handle or preferences the plan names
 * before the guardian has undone it. 0 or -errno (step GUARD). */
static int arm(struct plug_qdisc *q, int creating, int lock)
{
    struct pq_place pl;
    int fd, nsfd, err;

    place_of(q, &pl);
    err = pq_hold_plan(&q->plan, &pl, creating ? q->record : NULL);
    if (err < 0)
        return fail(q, PQ_STEP_GUARD, err);
    if (!q->guard)
        return 0;
    if (pq_guard_registered(&q->ticket))
        err = pq_guard_update(&q->ticket, &q->plan);
    else if ((err = pq_nl_raw_socket(&q->nl, &fd)) == 0) {
        nsfd = fcntl(q->nl.netns_fd, F_DUPFD_CLOEXEC, 0);
        if (nsfd < 0) {
            err = -errno;
            close(fd);
        } else {
            err = pq_guard_register(&q->ticket, &q->plan, fd, nsfd, lock,
                                    q->ticket.max_hold_ms);
        }
    }
    return err < 0 ? fail(q, PQ_STEP_GUARD, err) : 0;
}

/* After a failed attach, with the device's lock in SOCK: take down what it made, with its
 * plan (each phase, whatever fails), and stop guarding. Returns ERR, keeping its facts. */
static int undo(struct plug_qdisc *q, int err, int sock)
{
    int fd = nl_socket_get_fd(q->nl.sk);
    struct pq_plan_result r;

    KEEPING_ERROR(q, {
        (void)pq_plan_phase(fd, &q->plan, PQ_PH_RELEASE, NULL, &r);
        (void)pq_plan_phase(fd, &q->plan, PQ_PH_DIVERT, NULL, &r);
        (void)pq_plan_run(fd, &q->plan, PQ_PH_REMOVE, 0, sock, PQ_RUN_LOCKED, &r);
    });
    pq_guard_unregister(&q->ticket);
    return err;
}

/* Leave the users of our plain plug (if we joined them). */
static void leave_plug(struct plug_qdisc *q)
{
    /* A forked child's copy is the parent's socket: not its to close (the fd number may
     * even be another file by now, after an exec-less close) */
    if (q->member >= 0 && q->member_gen == pq_fork_generation())
        unkeep(q->member);
    q->member = -1;
    q->slot = -1;
}

/* Join the users of the plain plug at our place, as an OWNER or not. 0 or -errno. */
static int join_plug(struct plug_qdisc *q, int owner)
{
    int err = share_socket(q, &q->member);

    if (err < 0)
        return err;
    keep(q->member);
    q->owner = owner;
    q->member_gen = pq_fork_generation();
    err = pq_share_join(q->member, q->ifindex, q->parent, q->handle, owner, &q->slot);
    if (err < 0) {
        leave_plug(q);
        return fail(q, PQ_STEP_SHARE, err);
    }
    return 0;
}

/* Is the qdisc QD in our way a living hold's? The prio of selective holds with a plug in
 * it, or a plain plug with a living user: -EBUSY (step IN_USE, found_*), else 0. */
static int in_use(struct plug_qdisc *q, struct rtnl_qdisc *qd, uint32_t parent)
{
    const char *kind = rtnl_tc_get_kind(TC_CAST(qd));
    uint32_t h = rtnl_tc_get_handle(TC_CAST(qd));
    struct pq_found_plug below[PQ_MAX_HOLDS + 1];
    int n = 0, nb, i;

    if (kind && strcmp(kind, "prio") == 0 && h == PQ_TREE_HANDLE)
        n = pq_scan_tree_plugs(nl_socket_get_fd(q->nl.sk), q->ifindex);
    else if (kind && strcmp(kind, "plug") == 0)
        n = plug_users(q, parent, h, NULL);
    /* Deleting it deletes what hangs below it too: a plug there that a living holder
     * uses, or that holds packets (they would be lost), keeps it. */
    if (n == 0) {
        KEEPING_ERROR(q, nb = pq_tree_plugs_under(&q->nl, q->ifindex, h, below,
                                                  PQ_MAX_HOLDS + 1));
        if (nb < 0 || nb > PQ_MAX_HOLDS + 1)
            n = nb < 0 ? nb : 1;       /* more than we look at: keep it */
        for (i = 0; n == 0 && i < nb; i++)
            n = below[i].qlen > 0 ? 1 : plug_users(q, below[i].parent, below[i].handle, NULL);
    }
    if (n < 0)
        return fail(q, PQ_STEP_INSPECT, n);
    if (n == 0)
        return 0;
    pq_plug_note_found(&q->e, qd);
    return fail(q, PQ_STEP_IN_USE, -EBUSY);
}

/* A plain hold, under the device's lock: make the plug at PARENT, or adopt ours (joining
 * its users), or take another qdisc's place if REPLACE. *CREATED says which. 0 or -errno. */
static int attach_plain(struct plug_qdisc *q, int replace, int *created, int sock)
{
    struct rtnl_qdisc *qd = NULL;
    uint32_t there;
    int err, adopt = 0, owner = 1, flags = NLM_F_CREATE | NLM_F_EXCL;

    err = pq_nl_get_qdisc(&q->nl, q->ifindex, q->parent, &qd);
    if (err < 0)
        return fail(q, PQ_STEP_INSPECT, err);
    there = qd ? rtnl_tc_get_handle(TC_CAST(qd)) : 0;
    *created = 1;
    if (there == 0) {
        /* nothing, or the device's default: make ours */
    } else if (pq_plug_is(qd, q->handle)) {
        /* A plug with our handle: ours to share. Its last user out removes it if one of
         * its users made it (an owner is alive), else (tc made it) only releases it. */
        adopt = 1;
        *created = 0;
        err = plug_users(q, q->parent, q->handle, &owner);
        if (err < 0)
            err = fail(q, PQ_STEP_INSPECT, err);
    } else if (!replace) {
        pq_plug_note_found(&q->e, qd);
        err = fail(q, PQ_STEP_OCCUPIED, -EEXIST);
    } else if ((err = in_use(q, qd, q->parent)) < 0) {
        /* never replace what a living hold uses */
    } else if (there == q->handle) {
        /* Same handle, other kind: the kernel takes a replace as a change of that qdisc
         * and refuses the kind ("Invalid qdisc name"). Delete it, then create ours. */
        err = pq_nl_delete_qdisc(&q->nl, q->ifindex, q->parent, q->handle,
                                 rtnl_tc_get_kind(TC_CAST(qd)));
        if (err < 0) {
            pq_plug_note_found(&q->e, qd);
            err = fail(q, PQ_STEP_REMOVE_OTHER, err);
        }
    } else {
        flags = NLM_F_CREATE | NLM_F_REPLACE;
    }
    if (qd)
        rtnl_qdisc_put(qd);
    if (err < 0 || (err = join_plug(q, owner)) < 0)
        return err;
    if ((err = arm(q, *created, sock)) < 0) {
        leave_plug(q);
        return err;
    }
    err = adopt ? adopt_plug(q) : make_plug(q, flags);
    if (err < 0) {
        if (!adopt)
            (void)undo(q, err, sock);
        pq_guard_unregister(&q->ticket);   /* what it adopted stays, as found */
        leave_plug(q);
    }
    return err;
}

/* The lowest handle major number from 1 that no qdisc on the device has (USED). */
static uint32_t free_handle(const uint8_t *used)
{
    uint32_t m;

    for (m = 1; m < 0xFFFEu; m++)
        if (!(used[m >> 3] & (1u << (m & 7u))))
            return m << 16;
    return 0;
}

/* The handle for our plug: as asked, unless another qdisc on the device has it (-EEXIST,
 * step HANDLE); asked 0: the lowest free one. 0 or -errno. */
static int pick_handle(struct plug_qdisc *q, const uint8_t *used)
{
    uint32_t m = q->asked_handle >> 16;

    if (q->asked_handle == 0) {
        q->handle = free_handle(used);
        return q->handle ? 0 : fail(q, PQ_STEP_FULL, -ENOSPC);
    }
    if (used[m >> 3] & (1u << (m & 7u))) {
        q->e.found_handle = q->asked_handle;
        return fail(q, PQ_STEP_HANDLE, -EEXIST);
    }
    q->handle = q->asked_handle;
    return 0;
}

/* The preference after every filter at PARENT (1 if none), for NPREFS of ours. 0 or
 * -errno. */
static int pick_pref(struct plug_qdisc *q, uint32_t parent, int exists)
{
    int top = 0, n = q->nterms > 0 ? q->nterms : 1, err = 0;

    if (exists)
        err = pq_scan_filters(nl_socket_get_fd(q->nl.sk), q->ifindex, parent, 0, 0, NULL, 0,
                              &top);
    if (err < 0)
        return fail(q, PQ_STEP_INSPECT, err);
    if (top + n > 0xFFFF)
        return fail(q, PQ_STEP_FULL, -ENOSPC);
    q->pref = top + 1;
    return 0;
}

/* A selective (egress) hold, under the device's lock: the device's prio (made if there is
 * none), a free band, our plug in it, our filters after the others. 0 or -errno. */
static int attach_match(struct plug_qdisc *q, int replace, int sock)
{
    struct rtnl_qdisc *qd = NULL;
    uint8_t used[65536 / 8];
    uint32_t bands;
    int err, have_prio = 0, band;

    err = pq_nl_get_qdisc(&q->nl, q->ifindex, TC_H_ROOT, &qd);
    if (err < 0)
        return fail(q, PQ_STEP_INSPECT, err);
    if (qd && rtnl_tc_get_handle(TC_CAST(qd)) != 0) {
        const char *kind = rtnl_tc_get_kind(TC_CAST(qd));

        if (kind && strcmp(kind, "prio") == 0 &&
            rtnl_tc_get_handle(TC_CAST(qd)) == PQ_TREE_HANDLE &&
            rtnl_qdisc_prio_get_bands(qd) == PQ_TREE_BANDS) {
            have_prio = 1;                 /* the device's other selective holds' */
        } else if (!replace) {
            pq_plug_note_found(&q->e, qd);
            err = fail(q, PQ_STEP_OCCUPIED, -EEXIST);
        } else if ((err = in_use(q, qd, TC_H_ROOT)) == 0) {
            err = pq_tree_take_place(&q->nl, q->ifindex, TC_H_ROOT, 1);
        }
    }
    if (qd)
        rtnl_qdisc_put(qd);
    if (err < 0 || (err = pq_tree_survey(&q->nl, q->ifindex, &bands, used)) < 0)
        return err;
    for (band = 2; band <= PQ_TREE_BANDS && (bands & (1u << band)); band++)
        ;
    if (band > PQ_TREE_BANDS)
        return fail(q, PQ_STEP_FULL, -ENOSPC);
    if ((err = pick_handle(q, used)) < 0 || (err = pick_pref(q, PQ_TREE_HANDLE, have_prio)) < 0)
        return err;
    q->band = band;
    q->pl_ifindex = q->ifindex;
    q->pl_parent = PQ_TREE_HANDLE | (uint32_t)band;
    q->owner = 1;
    if ((err = arm(q, 1, sock)) < 0)
        return err;
    if ((!have_prio && (err = pq_tree_add_prio(&q->nl, q->ifindex)) < 0) ||
        (err = make_plug(q, NLM_F_CREATE | NLM_F_EXCL)) < 0 ||
        (err = pq_tree_add_filters(&q->nl, q->ifindex, PQ_TREE_HANDLE, q->terms, q->nterms,
                                   q->pref, q->pl_parent, 0)) < 0)
        return undo(q, err, sock);
    return 0;
}

/* An ingress hold, under the device's lock: an ifb of its own with our plug, the device's
 * ingress qdisc (made if there is none), our filters after the others. 0 or -errno. */
static int attach_ingress(struct plug_qdisc *q, int replace, int sock)
{
    struct rtnl_qdisc *qd = NULL;
    struct rtnl_link *link;
    char prefix[IFNAMSIZ];
    int err, shared = 0, n;

    pq_tree_ifb_prefix(prefix, q->ifindex);
    err = pq_nl_get_qdisc(&q->nl, q->ifindex, TC_H_INGRESS, &qd);
    if (err < 0)
        return fail(q, PQ_STEP_INSPECT, err);
    if (qd && rtnl_tc_get_handle(TC_CAST(qd)) != 0) {
        /* Ours if an ingress hold's ifb is there (its last one removes both at once,
         * under the lock). */
        n = pq_scan_links(nl_socket_get_fd(q->nl.sk), prefix, NULL);
        if (n < 0)
            err = fail(q, PQ_STEP_INSPECT, n);
        shared = n > 0;
    }
    if (qd)
        rtnl_qdisc_put(qd);
    if (err == 0 && !shared) {
        /* Another's ingress qdisc in the way: EEXIST, unless REPLACE. */
        if (!replace && (err = pq_tree_take_place(&q->nl, q->ifindex, TC_H_INGRESS, 0)) < 0)
            return err;
        /* Adding (and removing) an ingress qdisc makes the kernel reset the device's
         * egress qdiscs, purging what they hold uncounted: refuse while the egress holds
         * packets, before anything is deleted. */
        if ((err = pq_tree_egress_held(&q->nl, q->ifindex)) != 0)
            return err < 0 ? fail(q, PQ_STEP_INSPECT, err) : fail(q, PQ_STEP_INGRESS, -EBUSY);
        if (replace && (err = pq_tree_take_place(&q->nl, q->ifindex, TC_H_INGRESS, 1)) < 0)
            return err;
    }
    if (err < 0)
        return err;
    for (n = 1; n <= PQ_MAX_HOLDS; n++) {
        if (snprintf(q->ifb_name, sizeof(q->ifb_name), "%s%d", prefix, n) >=
            (int)sizeof(q->ifb_name))
            return fail(q, PQ_STEP_IFB, -ENAMETOOLONG);
        err = pq_nl_get_link(&q->nl, 0, q->ifb_name, &link);
        if (err == -ENODEV)
            break;
        if (err < 0)
            return fail(q, PQ_STEP_INSPECT, err);
        rtnl_link_put(link);
    }
    if (n > PQ_MAX_HOLDS)
        return fail(q, PQ_STEP_FULL, -ENOSPC);
    reset_error(q);                    /* the ENODEV that said the name is free */
    q->band = n;
    /* The plug is alone on its ifb: by default its handle is the ifb's number. */
    q->handle = q->asked_handle ? q->asked_handle : (uint32_t)n << 16;
    if ((err = pick_pref(q, PQ_INGRESS_HANDLE, shared)) < 0)
        return err;
    q->owner = 1;
    q->pl_ifindex = 0;                 /* no ifb yet: the plan has no plug steps */
    if ((err = arm(q, 1, sock)) < 0)
        return err;
    if ((err = pq_tree_make_ifb(&q->nl, q->ifb_name, 0, &q->pl_ifindex)) < 0 ||
        (err = arm(q, 1, sock)) < 0 || /* now with the plug on the ifb */
        (err = make_plug(q, NLM_F_CREATE | NLM_F_EXCL)) < 0 ||
        (!shared && (err = pq_tree_add_ingress(&q->nl, q->ifindex)) < 0) ||
        (err = pq_tree_add_filters(&q->nl, q->ifindex, PQ_INGRESS_HANDLE, q->terms, q->nterms,
                                   q->pref, 0, q->pl_ifindex)) < 0)
        return undo(q, err, sock);
    return 0;
}

/* Create or adopt the hold at the handle's place, then release it, under the device's
 * lock. The plan (and with it the guardian) comes before the first object. 0 or -errno. */
int pq_attach(struct plug_qdisc *q, int replace)
{
    int err, created = 1, sock = -1;

    if (!q)
        return -EINVAL;
    err = begin(q);
    if (err == 0 && q->attached) {
        /* Again: the tree is ours alone, made once; a plain plug is released again. */
        if (mode_of(q) == PQ_MODE_PLAIN)
            err = adopt_plug(q);
    } else if (err == 0 && (err = lock_device(q, &sock)) == 0) {
        switch (mode_of(q)) {
        case PQ_MODE_PLAIN:
            err = attach_plain(q, replace, &created, sock);
            break;
        case PQ_MODE_MATCH:
            err = attach_match(q, replace, sock);
            break;
        default:
            err = attach_ingress(q, replace, sock);
            break;
        }
        pq_guard_unlock(&q->ticket);   /* done: the guardian's copy of the lock goes */
        unkeep(sock);
        if (err < 0 && mode_of(q) != PQ_MODE_PLAIN) {
            q->handle = q->asked_handle;   /* nothing chosen stays */
            q->band = 0;
            q->ifb_name[0] = '\0';
        }
    }
    if (err == 0 && !q->attached) {
        q->created = created;
        q->is_buffering = 0;
        q->attached = 1;
    }
    q->e.attach_err = q->e.err;
    q->e.attach_step = q->e.step;
    return err;
}

/* ---- operations ------------------------------------------------------------------------ */

/* Start an operation on an attached handle. 0, -ENOTCONN before attach, or -errno. */
static int begin_attached(struct plug_qdisc *q)
{
    reset_error(q);
    if (!q->attached)
        return fail(q, PQ_STEP_STATE, -ENOTCONN);
    return begin(q);
}

/* Send one plug action to an attached handle. 0, -ENOTCONN before attach, or -errno. */
static int plug_action(struct plug_qdisc *q, int action, uint32_t limit)
{
    int err;

    if (!q)
        return -EINVAL;
    if ((err = begin_attached(q)) < 0)
        return err;
    err = send_plug(q, 0, action, limit);
    return err < 0 ? fail(q, PQ_STEP_CHANGE, err) : 0;
}

/* TCQ_PLUG_BUFFER: start a new epoch and hold. 0 or -errno. */
int pq_buffer(struct plug_qdisc *q)
{
    int err = plug_action(q, TCQ_PLUG_BUFFER, q ? q->limit : 0);

    if (err == 0) {
        q->is_buffering = 1;
        pq_guard_hold(&q->ticket, 1);
    }
    return err;
}

/* TCQ_PLUG_RELEASE_ONE: release the previous epoch; still holding. 0 or -errno. */
int pq_release_one(struct plug_qdisc *q)
{
    return plug_action(q, TCQ_PLUG_RELEASE_ONE, q ? q->limit : 0);
}

/* TCQ_PLUG_RELEASE_INDEFINITE: release everything and pass traffic. 0 or -errno. */
int pq_release_indefinite(struct plug_qdisc *q)
{
    int err = plug_action(q, TCQ_PLUG_RELEASE_INDEFINITE, q ? q->limit : 0);

    if (err == 0) {
        if (q->is_buffering)
            pq_guard_hold(&q->ticket, 0);
        q->is_buffering = 0;
    }
    return err;
}

/* TCQ_PLUG_LIMIT: set the limit in bytes (0: the device's default). 0 or -errno. */
int pq_set_limit(struct plug_qdisc *q, uint32_t limit)
{
    uint32_t lim;
    int err;

    if (!q)
        return -EINVAL;
    /* 0 would drop every packet; as at creation it means the device's default. */
    lim = limit ? limit : q->default_limit;
    err = plug_action(q, TCQ_PLUG_LIMIT, lim);
    if (err == 0)
        q->limit = lim;
    return err;
}

/* Read our plug's counters: 0, -ENOENT (gone; what is there in found_*), or -errno. */
static int read_stats(struct plug_qdisc *q, struct pq_stats *st)
{
    int err = pq_plug_read(&q->nl, q->pl_ifindex, q->pl_parent, q->handle, st);

    return err < 0 ? fail(q, PQ_STEP_STATS, err) : 0;
}

int pq_get_stats(struct plug_qdisc *q, struct pq_stats *st)
{
    int err;

    if (!q || !st)
        return -EINVAL;
    if ((err = begin(q)) < 0)
        return err;
    /* No tree, no plug to read; after a failed attach, say why it failed again. */
    if (!q->attached && (q->ingress || q->nterms || q->e.attach_err))
        return fail(q, PQ_STEP_STATE, -ENOTCONN);
    return read_stats(q, st);
}

/* The handle lets go of its hold: detached, no longer guarded. */
static void let_go(struct plug_qdisc *q)
{
    q->attached = 0;
    q->is_buffering = 0;
    q->selecting_stopped = 0;
    pq_guard_unregister(&q->ticket);
    leave_plug(q);
}

/* Run the hold's plan: release, stop the diversion, wait up to TIMEOUT_MS for the drain,
 * remove. 0, -ETIMEDOUT (left in place, passing), -ENOENT (already gone; no longer
 * attached), -EBUSY (all removed but an empty ingress qdisc), or -errno. */
int pq_detach(struct plug_qdisc *q, int timeout_ms)
{
    struct pq_plan_result r;
    int err, sock;

    if (!q)
        return -EINVAL;
    if ((err = begin_attached(q)) < 0 || (err = share_socket(q, &sock)) < 0)
        return err;
    err = pq_plan_run(nl_socket_get_fd(q->nl.sk), &q->plan, PQ_PH_RELEASE, timeout_ms, sock,
                      0, &r);
    close(sock);
    if (err == 0 && r.shared && mode_of(q) == PQ_MODE_PLAIN && q->is_buffering &&
        (err = send_plug(q, 0, TCQ_PLUG_RELEASE_INDEFINITE, q->limit)) < 0) {
        /* A plain plug others use stays; but our hold ends here: what we made it hold
         * goes on (the plug has one state for all of its users). */
        r.phase = PQ_PH_RELEASE;
        r.gate = 0;
        r.kernel[0] = '\0';
    }
    if (err < 0 && r.phase == PQ_PH_RELEASE) {
        /* Gone, or another qdisc in its place: if our plug is not there, say -ENOENT
         * (what is there in found_*) and let go of it. */
        if (read_stats(q, NULL) == -ENOENT) {
            let_go(q);
            return -ENOENT;
        }
        reset_error(q);
    }
    if (err == 0 || r.phase > PQ_PH_RELEASE) {
        if (q->is_buffering)
            pq_guard_hold(&q->ticket, 0);
        q->is_buffering = 0;
    }
    if (err == 0 || (err == -EBUSY && r.phase == PQ_PH_EGRESS) ||
        (err == -ENOENT && r.phase != PQ_PH_RELEASE && r.phase != PQ_PH_DIVERT))
        let_go(q);
    else if (err < 0 && r.phase > PQ_PH_RELEASE) {
        /* What this run undid (filters, the plug) may be another hold's by the next run
         * (the same preferences, band, handle): the plan, and the guardian's copy, keep
         * only what is left. */
        pq_plan_drop_before(&q->plan, r.phase);
        if (r.phase > PQ_PH_DIVERT)
            q->selecting_stopped = 1;
        if (pq_guard_registered(&q->ticket))
            KEEPING_ERROR(q, (void)pq_guard_update(&q->ticket, &q->plan));
    }
    if (err == 0)
        return 0;
    return pq_hold_failed(&q->e, &r, err);
}

int pq_stop_selecting(struct plug_qdisc *q)
{
    struct pq_plan_result r;
    int err;

    if (!q)
        return -EINVAL;
    if ((err = begin_attached(q)) < 0)
        return err;
    if (mode_of(q) == PQ_MODE_PLAIN)
        return fail(q, PQ_STEP_ARGS, -EINVAL);
    if (q->selecting_stopped)
        return 0;
    memset(&r, 0, sizeof(r));
    err = pq_plan_phase(nl_socket_get_fd(q->nl.sk), &q->plan, PQ_PH_DIVERT, NULL, &r);
    if (err < 0)
        return pq_hold_failed(&q->e, &r, err);
    /* The plan no longer deletes those preferences: a later hold may have them. */
    q->selecting_stopped = 1;
    return arm(q, q->created, -1);
}

/* 1 if max_hold released the current hold. */
int pq_hold_expired(const struct plug_qdisc *q)
{
    return q ? pq_guard_expired(&q->ticket) : 0;
}

/* Free the handle, its socket and its namespace fd; the qdisc stays as it is. A hold that
 * still holds stays with the guardian, which undoes it when the process dies (its
 * namespace lives on until then: the guardian's socket is in it); one that lets traffic
 * pass is no longer guarded. NULL is fine. */
void pq_close(struct plug_qdisc *q)
{
    if (!q)
        return;
    if (q->attached && pq_is_buffering(q))
        pq_guard_abandon(&q->ticket);
    else
        pq_guard_unregister(&q->ticket);
    free(q->record);
    leave_plug(q);
    pq_nl_close(&q->nl);
    free(q->terms);
    free(q);
}

int pq_connected(const struct plug_qdisc *q)
{
    return q ? q->connected : 0;
}

int pq_ifindex(const struct plug_qdisc *q)
{
    return q ? q->ifindex : 0;
}

const char *pq_device(const struct plug_qdisc *q)
{
    return q ? q->device : "";
}

uint32_t pq_limit(const struct plug_qdisc *q)
{
    if (!q)
        return 0;
    return q->connected ? q->limit : q->asked_limit;
}

/* 1 if we last told the qdisc to hold (and max_hold has not released it since). */
int pq_is_buffering(const struct plug_qdisc *q)
{
    return q ? q->is_buffering && !pq_guard_expired(&q->ticket) : 0;
}

int pq_created(const struct plug_qdisc *q)
{
    return q ? q->created : 0;
}

int pq_attached(const struct plug_qdisc *q)
{
    return q ? q->attached : 0;
}

uint32_t pq_handle(const struct plug_qdisc *q)
{
    return q ? q->handle : 0;
}

int pq_band(const struct plug_qdisc *q)
{
    return q && q->attached ? q->band : 0;
}

const char *pq_ifb(const struct plug_qdisc *q)
{
    return q && q->attached ? q->ifb_name : "";
}

const struct pq_error *pq_last_error(const struct plug_qdisc *q)
{
    static const struct pq_error none;

    return q ? &q->e : &none;
}
