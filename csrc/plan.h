/*
 * plan.h - what a hold built, as data: the ordered netlink messages that undo it.
 *
 * The part that builds a hold (plug.c, tree.c) writes its plan once, at attach. Detach,
 * the guardian (after the holder's death or past max_hold) and cleanup (for a dead
 * holder's hold, rebuilt from what the kernel shows) all run it. A plan is flat bytes:
 * it can be copied, sent to another process and run there with nothing but syscalls
 * (no libnl, no malloc: safe in a forked or cloned child).
 *
 * Phases, in order: RELEASE the plug; DIVERT (stop sending packets to it); PROBE (what
 * it still holds; asked again until nothing, or the wait ends); REMOVE what attach made;
 * EGRESS (what the device's egress holds: the ingress qdisc is deleted only if nothing,
 * since deleting it makes the kernel purge the egress); LAST (that delete); FORGET (unlink
 * the hold's record, which says who made it: the record goes with the hold).
 */
#ifndef PQ_PLAN_H
#define PQ_PLAN_H

#include <stdint.h>
#include <netlink/msg.h>

#include "plug_qdisc.h"

enum pq_phase {
    PQ_PH_RELEASE, PQ_PH_DIVERT, PQ_PH_PROBE, PQ_PH_REMOVE, PQ_PH_EGRESS, PQ_PH_LAST,
    PQ_PH_FORGET, PQ_PH_COUNT
};

/* Step flags. GONE_OK: "not there" (ENOENT, EINVAL, ENODEV) is what the step wanted.
 * FILE: the step is no netlink message but a file's path to unlink (FORGET: the hold's
 * record, once all of it is undone). */
#define PQ_PF_GONE_OK 1u
#define PQ_PF_FILE 2u

#define PQ_PLAN_MAX 2048

/* The plan's bytes: steps of { struct pq_plan_step, the netlink message, aligned }. */
struct pq_plan {
    uint32_t len;
    uint32_t expect;            /* PROBE: the handle our plug must have (else: gone) */
    unsigned char buf[PQ_PLAN_MAX];
};

struct pq_plan_step {
    uint16_t phase;
    uint16_t flags;
    uint32_t len;               /* of the message that follows */
};

/* What running a plan found: the phase that failed and the kernel's answer. */
struct pq_plan_result {
    int err;                    /* 0 or -errno */
    enum pq_phase phase;        /* where it failed */
    uint64_t held;              /* PROBE, EGRESS: packets still held */
    uint32_t waited_ms;         /* PROBE: how long the drain was waited for */
    char kernel[256];           /* the kernel's extended-ack text, "" if none */
};

void pq_plan_init(struct pq_plan *p, uint32_t expect);
/* Append MSG (freed; NULL means out of memory) as a step of PHASE. 0, -ENOMEM, -ENOSPC. */
int pq_plan_add(struct pq_plan *p, enum pq_phase phase, unsigned flags, struct nl_msg *msg);
/* Append the path PATH (NUL-terminated) as a FILE step of PHASE. 0 or -ENOSPC, -EINVAL. */
int pq_plan_add_file(struct pq_plan *p, enum pq_phase phase, const char *path);
/* Whether P has a step in PHASE. */
int pq_plan_has(const struct pq_plan *p, enum pq_phase phase);
/* Copy of SRC with only the phases before UPTO (a release-only plan: UPTO = DIVERT). */
void pq_plan_prefix(struct pq_plan *dst, const struct pq_plan *src, enum pq_phase upto);

/* Send every message of PHASE on the route socket FD, each waiting for its ack; packets
 * still held (qdisc qlen, an ifb's in flight) in the replies are added to *HELD if HELD.
 * 0 or the first -errno; async-signal-safe. */
int pq_plan_phase(int fd, const struct pq_plan *p, enum pq_phase phase, uint64_t *held,
                  struct pq_plan_result *r);
/* Run P from phase FROM to the end: release, divert, wait up to TIMEOUT_MS for the probe
 * to find nothing held (-ETIMEDOUT: stop, what is left stays, passing), remove, then
 * delete the ingress qdisc only if the egress holds nothing (-EBUSY otherwise). 0 or
 * -errno with R filled in; async-signal-safe. */
int pq_plan_run(int fd, const struct pq_plan *p, enum pq_phase from, int timeout_ms,
                struct pq_plan_result *r);

#endif
