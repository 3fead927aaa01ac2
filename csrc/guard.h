/*
 * guard.h - the guardian: a hold never outlives its holder.
 *
 * Nothing in the kernel ties a qdisc to the process that made it. The guardian is a
 * helper process, one per holding process, started at the first guarded hold and kept
 * until the holder exits. It is given each hold's undo plan and a route socket in the
 * hold's namespace, and runs the plans when the holder dies, however it dies; with
 * max_hold it also releases a hold that lasts too long, holder stopped or not. It knows
 * plans and sockets only, never a plug qdisc handle.
 */
#ifndef PQ_GUARD_H
#define PQ_GUARD_H

#include <stdint.h>

#include "plan.h"

/* A hold's registration with this process's guardian. */
struct pq_guard_ticket {
    int slot;                   /* -1: not registered */
    unsigned long gen;          /* pq_fork_generation() when registered */
    uint32_t seq;               /* holds started (buffer calls), for max_hold */
    uint32_t max_hold_ms;
};

/* Hand PLAN (copied), the route socket FD and the hold's network namespace NSFD (both
 * taken, closed on failure too) to this process's guardian, starting it if there is none
 * (or a new one if it died: the holds it had are handed over again). LOCK (>= 0 during an
 * attach, which has the device's lock: a copy, sent, not taken) keeps the device locked
 * until pq_guard_unlock, or the guardian's undo if the holder dies first: no other attach
 * can take what this one was making before its guardian has undone it. 0 or -errno. */
int pq_guard_register(struct pq_guard_ticket *t, const struct pq_plan *plan, int fd, int nsfd,
                      int lock, uint32_t max_hold_ms);
/* The attach that registered T is done: the guardian lets go of the device's lock. */
void pq_guard_unlock(struct pq_guard_ticket *t);
/* Replace the plan of T's registered hold with PLAN (copied), as attach learns more of
 * what it builds. 0 or -errno (-ENOENT: not registered). */
int pq_guard_update(struct pq_guard_ticket *t, const struct pq_plan *plan);
/* Forget T's hold (the guardian stays). */
void pq_guard_unregister(struct pq_guard_ticket *t);
/* T's handle goes, its hold stays: the guardian keeps it until the process exits (a later
 * hold registered with the same plan takes its place). */
void pq_guard_abandon(struct pq_guard_ticket *t);
/* max_hold: T's hold starts (ARM) or ends now. */
void pq_guard_hold(struct pq_guard_ticket *t, int arm);
/* Whether the guardian released T's current hold because it lasted past max_hold. */
int pq_guard_expired(const struct pq_guard_ticket *t);
/* Whether T is registered in this process. */
int pq_guard_registered(const struct pq_guard_ticket *t);

#endif
