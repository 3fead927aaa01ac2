/*
 * plug_qdisc.h - hold and release a device's packets with the kernel's plug qdisc (sch_plug).
 *
 * Pure C over libnl-route-3; no Python here. Every function that can fail returns 0 or a
 * negative errno (-ENODEV, -EPERM, ...). Nothing here prints, exits or aborts.
 *
 * Two APIs:
 *  - a re-entrant handle API (struct plug_qdisc, pq_*), one netlink socket per handle;
 *  - the three functions of the original HAProxy helper, same names and signatures, which
 *    drive one process-wide default handle (the only global state in this file).
 *
 * A handle is not thread-safe: callers serialise calls on one handle (module.c holds a lock).
 * A handle used in a child after fork() opens a socket of its own on first use.
 */
#ifndef PLUG_QDISC_H
#define PLUG_QDISC_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the HAProxy-compatible API (drives the default handle) ---- */

/* Create (or adopt) a plug qdisc on DEVICE at PARENT ("root" or "MAJ:MIN") with handle ID
 * ("MAJ:"), then release it so that traffic passes. LIMIT is in bytes; 0 means the kernel's
 * own default for the device (tx_queue_len * (mtu + link header)). Returns 0 or -errno. */
int plug_qdisc_attach(char *device, char *parent, char *id, uint32_t limit);
/* Hold every packet from now on (TCQ_PLUG_BUFFER). 0 or -errno (-ENOTCONN before attach). */
int plug_qdisc_plug_buffer(void);
/* Release everything held and let traffic pass (TCQ_PLUG_RELEASE_INDEFINITE). */
int plug_qdisc_release_indefinite_buffer(void);

/* ---- the handle API ---- */

struct plug_qdisc;

struct pq_stats {
    uint64_t packets;    /* packets sent by the qdisc since it was created */
    uint64_t bytes;      /* bytes sent */
    uint64_t qlen;       /* packets held now */
    uint64_t backlog;    /* bytes held now */
    uint64_t drops;      /* packets dropped (over the limit) */
    uint64_t overlimits;
    uint64_t requeues;
};

/* Parse a tc handle: "root" -> TC_H_ROOT, "none" -> TC_H_UNSPEC, "MAJ:" / "MAJ:MIN" in hex
 * (each at most ffff). 0 or -EINVAL. */
int pq_parse_handle(const char *text, uint32_t *out);

/* Open a handle: a netlink route socket in the network namespace NETNS_FD (-1: the caller's),
 * and the device looked up by name (DEVICE != NULL) or by IFINDEX (> 0), one link only.
 * LIMIT 0 means the device's default. The fd is duplicated; the caller keeps its own.
 * Touches no qdisc. 0 or -errno (-ENODEV: no such device). */
int pq_open(struct plug_qdisc **out, const char *device, int ifindex, uint32_t parent,
            uint32_t handle, uint32_t limit, int netns_fd);

/* Create a plug qdisc at the handle's place, or adopt the plug qdisc with the same handle
 * already there; a qdisc of another kind (or handle) there gives -EEXIST unless REPLACE.
 * Afterwards traffic passes (release indefinite). -ENOENT: the kernel has no sch_plug. */
int pq_attach(struct plug_qdisc *q, int replace);
int pq_buffer(struct plug_qdisc *q);              /* TCQ_PLUG_BUFFER: new epoch, hold */
int pq_release_one(struct plug_qdisc *q);         /* TCQ_PLUG_RELEASE_ONE: the previous epoch */
int pq_release_indefinite(struct plug_qdisc *q);  /* TCQ_PLUG_RELEASE_INDEFINITE: all, pass */
int pq_set_limit(struct plug_qdisc *q, uint32_t limit);   /* TCQ_PLUG_LIMIT, bytes */
/* Read the counters of our qdisc (one RTM_GETQDISC). -ENOENT if it is no longer there. */
int pq_get_stats(struct plug_qdisc *q, struct pq_stats *st);
/* Release, wait up to TIMEOUT_MS for the backlog to drain, then delete the qdisc.
 * -ETIMEDOUT (qdisc left in place, passing traffic) if it did not drain: nothing is dropped. */
int pq_detach(struct plug_qdisc *q, int timeout_ms);
/* Free the handle and its socket; the qdisc is left as it is. NULL is fine. */
void pq_close(struct plug_qdisc *q);

/* What the handle knows (what it last sent; the kernel reports no plug state). */
int pq_ifindex(const struct plug_qdisc *q);
const char *pq_device(const struct plug_qdisc *q);   /* the device's name, as the kernel has it */
uint32_t pq_limit(const struct plug_qdisc *q);        /* the limit in force, in bytes */
int pq_is_buffering(const struct plug_qdisc *q);
int pq_created(const struct plug_qdisc *q);           /* 1 if our attach created the qdisc */
int pq_attached(const struct plug_qdisc *q);
/* After a failure: the kernel's extended-ack text or a note of ours ("a prio qdisc is
 * there"); "" if none. Valid until the next call on the handle. */
const char *pq_last_message(const struct plug_qdisc *q);
/* A counter that moves in the child after every fork() (no syscall to read it): state
 * made for one process, such as a socket or a lock, is stale once it has moved. */
unsigned long pq_fork_generation(void);
/* The default handle behind the HAProxy-compatible API (NULL before plug_qdisc_attach). */
struct plug_qdisc *plug_qdisc_default_handle(void);

#ifdef __cplusplus
}
#endif
#endif
