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
 * record, once all of it is undone). GATE: no message but a struct pq_gate: what the hold
 * shares with others on its device, checked (under the device's lock) before its phase. */
#define PQ_PF_GONE_OK 1u
#define PQ_PF_FILE 2u
#define PQ_PF_GATE 4u

/* What a hold shares with other holds on its device (share.h), and so whether its plan
 * may go on past the gate: TREE, the prio at the root (on if no other plug is in it);
 * INGRESS, the ingress qdisc (on if no other ifb named PREFIX... is there); PLUG, a plain
 * plug several holders use (on if no other user is alive). Otherwise the plan skips the
 * phases from SKIP_FROM to FORGET: the others keep what they share. */
enum pq_gate_kind { PQ_GATE_TREE = 1, PQ_GATE_INGRESS = 2, PQ_GATE_PLUG = 3 };

struct pq_gate {
    uint32_t kind;
    uint32_t skip_from;         /* others alive: the phases from this one to FORGET are not run */
    int32_t ifindex;
    uint32_t parent, handle;    /* PLUG: the plug's place */
    int32_t owner, slot;        /* PLUG: our user's kind and slot */
    char prefix[16];            /* INGRESS: the ifbs' name prefix */
    char self[16];              /* INGRESS: the hold's own ifb, not counted */
};

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
    int gate;                   /* 1: at the gate before PHASE (the device's lock, a scan) */
    int shared;                 /* 1: the gate found others: what they share was left */
    uint64_t held;              /* PROBE, EGRESS: packets still held */
    uint32_t waited_ms;         /* PROBE: how long the drain was waited for */
    char kernel[256];           /* the kernel's extended-ack text, "" if none */
};

void pq_plan_init(struct pq_plan *p, uint32_t expect);
/* Append MSG (freed; NULL means out of memory) as a step of PHASE. 0, -ENOMEM, -ENOSPC. */
int pq_plan_add(struct pq_plan *p, enum pq_phase phase, unsigned flags, struct nl_msg *msg);
/* Append the path PATH (NUL-terminated) as a FILE step of PHASE. 0 or -ENOSPC, -EINVAL. */
int pq_plan_add_file(struct pq_plan *p, enum pq_phase phase, const char *path);
/* Append the gate G, checked before PHASE. 0 or -ENOSPC. */
int pq_plan_add_gate(struct pq_plan *p, enum pq_phase phase, const struct pq_gate *g);
/* The phase P's gate comes before, or -1 if it has none. */
int pq_plan_gate_phase(const struct pq_plan *p);
/* Whether P has a step in PHASE. */
int pq_plan_has(const struct pq_plan *p, enum pq_phase phase);
/* Drop from P the steps of the phases before FROM, but its gate and FORGET: what a run
 * that failed at FROM has already undone (filters deleted, a plug removed) may be another
 * hold's by the next run (the same band, handle and preferences). */
void pq_plan_drop_before(struct pq_plan *p, enum pq_phase from);

/* Send every message of PHASE on the route socket FD, each waiting for its ack; packets
 * still held (qdisc qlen, an ifb's in flight) in the replies are added to *HELD if HELD.
 * 0 or the first -errno; async-signal-safe. */
int pq_plan_phase(int fd, const struct pq_plan *p, enum pq_phase phase, uint64_t *held,
                  struct pq_plan_result *r);
/* Run P from phase FROM to the end: release, divert, wait up to TIMEOUT_MS for the probe
 * to find nothing held (-ETIMEDOUT: stop, what is left stays, passing), remove, then
 * delete the ingress qdisc only if the egress holds nothing (-EBUSY otherwise). At the
 * gate (if any, and if FROM is not past it), take the device's lock with SOCK (an unbound
 * AF_UNIX socket in the device's namespace; with PQ_RUN_LOCKED in FLAGS the caller has
 * the lock, SOCK only serves the check) and check what is shared: the caller closes SOCK
 * after, letting go of the lock. PQ_RUN_ONWARD: a
 * release that fails (the plug is gone) does not stop the rest. 0 or -errno with R
 * filled in (a lock not had in time: -EBUSY at the gate's phase); async-signal-safe. */
#define PQ_RUN_LOCKED 1u
#define PQ_RUN_ONWARD 2u
/* PQ_RUN_PATIENT: the guardian, which has nothing else to do, waits a minute for the lock
 * rather than PQ_LOCK_MS. A plan with a gate and no SOCK (-1) keeps what is shared, as if
 * others used it: it is never removed unchecked. */
#define PQ_RUN_PATIENT 4u
#define PQ_PATIENT_MS 60000
int pq_plan_run(int fd, const struct pq_plan *p, enum pq_phase from, int timeout_ms,
                int sock, unsigned flags, struct pq_plan_result *r);

/* Scans of what the kernel has, for the gates and for attach: plugs in the prio of
 * IFINDEX (how many); links whose name starts with PREFIX but is not SELF (may be NULL)
 * (how many). -errno on failure; async-signal-safe. */
int pq_scan_tree_plugs(int fd, int ifindex);
int pq_scan_links(int fd, const char *prefix, const char *self);
/* The preferences of the filters at PARENT of IFINDEX that send packets to CLASSID (if
 * nonzero) or redirect them to the device REDIRECT (if nonzero), into PREFS (at most MAX):
 * how many, or -errno. With neither: every filter's; *TOP (may be NULL) gets the
 * highest preference there, 0 if none. */
int pq_scan_filters(int fd, int ifindex, uint32_t parent, uint32_t classid, int redirect,
                    uint16_t *prefs, int max, int *top);

#endif
