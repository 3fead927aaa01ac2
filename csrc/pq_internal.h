/*
 * pq_internal.h - what the files of the C core share; not installed, not for callers.
 *
 * plug_qdisc.c owns the handle, the socket and the plug; tree.c builds and removes what a
 * selective or ingress hold needs around the plug (prio, filters, ingress qdisc, ifb);
 * guard.c the guardian; dump.c lists a namespace's qdiscs and links.
 */
#ifndef PQ_INTERNAL_H
#define PQ_INTERNAL_H

#include <net/if.h>
#include <netlink/netlink.h>
#include <netlink/msg.h>
#include <netlink/route/qdisc.h>

#include "plug_qdisc.h"

struct plug_qdisc {
    struct nl_sock *sk;
    unsigned long sk_gen;      /* pq_fork_generation() when sk was made: forked if it moved */
    int netns_fd;              /* our namespace (given, or the first connecting thread's) */
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
    int kerr;                  /* errno from the kernel's last nlmsgerr, 0 if none */
    struct pq_error e;         /* the last call's failure */

    /* Where the plug itself is: the device and PARENT, or inside the tree. */
    int pl_ifindex;
    uint32_t pl_parent;
    /* Selective and ingress holds (pq_set_hold). */
    int ingress;
    int nterms;
    struct pq_term *terms;
    int ifb_ifindex;           /* ingress: the ifb attach made, 0 if none */
    char ifb_name[IFNAMSIZ];
    /* The guardian (guard.c). */
    int guard;                 /* register at attach */
    uint32_t max_hold_ms;      /* 0: none */
    int gslot;                 /* the slot with this process's guardian, -1 if none */
    unsigned long ggen;        /* pq_fork_generation() when registered */
    uint32_t bseq;             /* buffer() count, for max_hold */
};

/* The negative errno for a libnl NLE_* code (either sign). */
int pq__nle_errno(int nle);
/* Run MAKE(ARG) with the calling thread in the namespace NETNS_FD, switched back before
 * returning. MAKE's result, or -errno of the switch (then also in *SWITCH_ERR). */
int pq__in_netns(int netns_fd, int (*make)(void *), void *arg, int *switch_err);
/* Record a failure at STEP (ERR negative); returns ERR. */
int pq__fail(struct plug_qdisc *q, enum pq_step step, int err);
/* Forget the previous request's kernel error before a new request. */
void pq__clear_kerr(struct plug_qdisc *q);
/* 0 or -errno for the result NLERR of a libnl call (the kernel's errno when it answered). */
int pq__nl_result(struct plug_qdisc *q, int nlerr);
/* Send MSG (freed) and wait for its ack. 0 or -errno (the kernel's). */
int pq__send(struct plug_qdisc *q, struct nl_msg *msg);
/* The qdisc at PARENT of IFINDEX (a reference, NULL if nothing reportable). 0 or -errno. */
int pq__get_qdisc(struct plug_qdisc *q, int ifindex, uint32_t parent, struct rtnl_qdisc **out);
/* A qdisc object of KIND (NULL: any) with HANDLE at PARENT of IFINDEX (the caller puts
 * it); NULL and *err (a libnl error) on failure. */
struct rtnl_qdisc *pq__qdisc_object(int ifindex, uint32_t parent, uint32_t handle,
                                    const char *kind, int *err);
/* Delete the qdisc of KIND with HANDLE at PARENT of IFINDEX. 0 or -errno. */
int pq__delete_qdisc(struct plug_qdisc *q, int ifindex, uint32_t parent, uint32_t handle,
                     const char *kind);
/* Record the kind and handle of QD (may be NULL) as what was found. */
void pq__note_found(struct plug_qdisc *q, struct rtnl_qdisc *qd);
/* Create the plug at its place (CREATE|EXCL) with the limit, then release it. 0 or -errno
 * (step recorded). */
int pq__create_plug(struct plug_qdisc *q);

/* A plain NETLINK_ROUTE socket in the handle's namespace, for the guardian. 0 or -errno. */
int pq__raw_socket(struct plug_qdisc *q, int *fd);
/* Messages for the guardian, built here, sent by it after the holder is gone; NULL if out
 * of memory. Release the plug; a tc message with no attributes; delete a qdisc. */
struct nl_msg *pq__msg_release(struct plug_qdisc *q);
struct nl_msg *pq__msg_tc(int type, int flags, int ifindex, uint32_t parent, uint32_t handle);
struct nl_msg *pq__msg_delete_qdisc(int ifindex, uint32_t parent, uint32_t handle,
                                    const char *kind);
/* tree.c: the messages that stop the diversion and that remove the rest. */
struct nl_msg *pq__tree_msg_divert(struct plug_qdisc *q);
struct nl_msg *pq__tree_msg_remove(struct plug_qdisc *q);
/* tree.c: released packets still inside the ifb (ingress), and the message asking for
 * the ifb's counters. */
uint64_t pq__tree_in_flight(struct plug_qdisc *q);
/* tree.c, ingress (NULL otherwise): ask what the device's egress holds; delete the
 * ingress qdisc (the guardian sends it last, only if the egress holds nothing). */
struct nl_msg *pq__tree_msg_egress_probe(struct plug_qdisc *q);
struct nl_msg *pq__tree_msg_remove_ingress(struct plug_qdisc *q);
struct nl_msg *pq__tree_msg_probe_ifb(struct plug_qdisc *q);

/* guard.c: register an attached hold with the guardian (0 or -errno, step GUARD); forget
 * it; tell it that the hold starts (ARM) or ends, for max_hold; whether it expired. */
int pq__guard_register(struct plug_qdisc *q);
void pq__guard_unregister(struct plug_qdisc *q);
void pq__guard_hold(struct plug_qdisc *q, int arm);
int pq__guard_expired(const struct plug_qdisc *q);

/* tree.c: build the tree of a selective or ingress hold, plug included, and release the
 * plug; on failure nothing of it is left. 0 or -errno (step recorded). */
int pq__tree_attach(struct plug_qdisc *q, int replace);
/* tree.c: stop sending packets to the plug (filters, ingress qdisc), before the drain. */
int pq__tree_divert_off(struct plug_qdisc *q);
/* tree.c: remove the rest (prio with the plug, or the ifb with the plug). */
int pq__tree_remove(struct plug_qdisc *q);

#endif
