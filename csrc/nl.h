/*
 * nl.h - the netlink layer, the bottom of the C core: a route socket in a network
 * namespace, requests and their acks, the kernel's own errno and extended-ack text, the
 * fork generation, and the message builders (one tcmsg builder for qdiscs, classes and
 * filters; links by index or name). Knows nothing of plugs, trees, plans or handles.
 */
#ifndef PQ_NL_H
#define PQ_NL_H

#include <stdint.h>
#include <netlink/netlink.h>
#include <netlink/msg.h>
#include <netlink/route/link.h>
#include <netlink/route/qdisc.h>

#include "plug_qdisc.h"

/* One netlink socket, the namespace it lives in, and where a failure's facts go. */
struct pq_nl {
    struct nl_sock *sk;
    unsigned long sk_gen;      /* pq_fork_generation() when sk was made: forked if it moved */
    int netns_fd;              /* the namespace (owned); -1 until pq_nl_open takes one */
    int kerr;                  /* errno of the kernel's last nlmsgerr, 0 if none */
    struct pq_error *e;        /* the owner's record: the kernel's text goes to e->kernel */
};

/* An unopened socket reporting into E. */
void pq_nl_init(struct pq_nl *nl, struct pq_error *e);
/* Use the namespace NETNS_FD (duplicated) from the next open. 0 or -errno (step NETNS). */
int pq_nl_set_netns(struct pq_nl *nl, int netns_fd);
/* Make the socket usable: take the calling thread's namespace if none was given, and
 * (re)make the socket there if there is none or it was inherited through fork(). 0 or
 * -errno, step NETNS or SOCKET recorded. */
int pq_nl_ready(struct pq_nl *nl);
/* Free the socket and the namespace fd. */
void pq_nl_close(struct pq_nl *nl);
/* A plain NETLINK_ROUTE socket (SOCK_CLOEXEC) in NL's namespace, for the plan's runner and
 * the guardian. 0 or -errno (step NETNS or SOCKET). */
int pq_nl_raw_socket(struct pq_nl *nl, int *fd);
/* An AF_UNIX stream socket (non-blocking, SOCK_CLOEXEC) in NL's namespace, for the
 * device's lock and a plain plug's users (share.h). 0 or -errno (step NETNS or SOCKET). */
int pq_nl_unix_socket(struct pq_nl *nl, int *fd);

/* Record a failure at STEP (ERR negative) in E; returns ERR. */
int pq_fail(struct pq_error *e, enum pq_step step, int err);
/* The negative errno for a libnl NLE_* code (either sign). */
int pq_nle_errno(int nle);
/* Forget the previous request's kernel error before a new request. */
void pq_nl_clear(struct pq_nl *nl);
/* 0 or -errno for a libnl call's result NLERR: the kernel's errno when it answered. */
int pq_nl_result(struct pq_nl *nl, int nlerr);

/* Send MSG (freed) and wait for its ack; ON_REPLY (may be NULL) parses any reply before
 * the ack. 0 or -errno (the kernel's). */
int pq_nl_request(struct pq_nl *nl, struct nl_msg *msg,
                  int (*on_reply)(struct nl_msg *, void *), void *arg);

/* The one tcmsg builder: a message of TYPE with FLAGS about IFINDEX, PARENT, HANDLE, INFO
 * (a filter's priority and protocol; 0 otherwise) and, if KIND, TCA_KIND. NULL if out of
 * memory. */
struct nl_msg *pq_tc_msg(int type, int flags, int ifindex, uint32_t parent, uint32_t handle,
                         uint32_t info, const char *kind);
/* A link message of TYPE (RTM_GETLINK, RTM_DELLINK) for IFINDEX, or by NAME if IFINDEX is 0.
 * NULL if out of memory. */
struct nl_msg *pq_link_msg(int type, int ifindex, const char *name);

/* A libnl qdisc object of KIND (NULL: any) with HANDLE at PARENT of IFINDEX; NULL and *ERR
 * (-NLE_*) on failure. The caller puts it. */
struct rtnl_qdisc *pq_qdisc_object(int ifindex, uint32_t parent, uint32_t handle,
                                   const char *kind, int *err);
/* The qdisc at PARENT of IFINDEX (one RTM_GETQDISC, no dump): *OUT is a reference or NULL
 * when nothing reportable is there (ENOENT, or EINVAL for a built-in such as noop). */
int pq_nl_get_qdisc(struct pq_nl *nl, int ifindex, uint32_t parent, struct rtnl_qdisc **out);
/* RTM_NEWQDISC of QD with FLAGS. 0 or -errno. */
int pq_nl_add_qdisc(struct pq_nl *nl, struct rtnl_qdisc *qd, int flags);
/* RTM_DELQDISC of the qdisc of KIND (NULL: any) with HANDLE at PARENT of IFINDEX. */
int pq_nl_delete_qdisc(struct pq_nl *nl, int ifindex, uint32_t parent, uint32_t handle,
                       const char *kind);
/* Whether the class CLASSID exists on IFINDEX (RTM_GETTCLASS): 1, 0 (ENOENT, or EINVAL for
 * a classless qdisc), or -errno. */
int pq_nl_class_exists(struct pq_nl *nl, int ifindex, uint32_t classid);
/* The link IFINDEX (or NAME when IFINDEX is 0): *OUT a reference. -ENODEV if none. The
 * reply can be large, so this request peeks to size its buffer. */
int pq_nl_get_link(struct pq_nl *nl, int ifindex, const char *name, struct rtnl_link **out);
/* RTM_NEWLINK of LINK with FLAGS; RTM_DELLINK of IFINDEX. 0 or -errno. */
int pq_nl_add_link(struct pq_nl *nl, struct rtnl_link *link, int flags);
int pq_nl_delete_link(struct pq_nl *nl, int ifindex);

/* Run MAKE(ARG) with the calling thread in the namespace NETNS_FD, switched back before
 * returning. MAKE's result, or -errno of the switch (then also in *SWITCH_ERR). */
int pq_in_netns(int netns_fd, int (*make)(void *), void *arg, int *switch_err);

#endif
