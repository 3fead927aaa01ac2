/*
 * guardian.h - what the holder's side of the guardian (guard.c) and the guardian process
 * (guardian.c) share: the records they exchange and what the guardian keeps of a hold.
 */
#ifndef PQ_GUARDIAN_H
#define PQ_GUARDIAN_H

#include <stdint.h>
#include <sys/types.h>

#include "plan.h"

#define G_MAX 256                /* holds one guardian keeps */
#define G_DRAIN_MS 5000          /* how long a backlog may take to drain, as detach() */
#define G_STACK (256 * 1024)     /* the cloned guardian's stack */

enum { G_REGISTER = 1, G_UNREGISTER, G_BUFFER, G_RELEASE, G_READY, G_UNLOCK };

/* One record from holder to guardian; REGISTER is followed by the plan's bytes and carries
 * the route socket, the hold's network namespace and (during an attach) a copy of the
 * device's lock as SCM_RIGHTS; UNLOCK: the attach is done, let go of that copy. */
struct g_rec {
    uint32_t type;
    uint32_t slot;               /* the hold's slot, 0 .. G_MAX-1 */
    uint32_t seq;                /* BUFFER: the hold's buffer count */
    uint32_t max_hold_ms;        /* REGISTER: 0 for none */
    uint32_t expect;             /* REGISTER: the plan's expected handle */
    uint32_t len;                /* REGISTER: the plan's length */
};

/* What the guardian keeps of one hold. */
struct g_hold {
    int used, fd, armed;
    int nsfd;                    /* the hold's network namespace: its gate's socket is made there */
    int lock;                    /* the device's lock during the holder's attach, or -1 */
    uint32_t max_hold_ms, seq;
    int64_t deadline_ms;
    struct pq_plan plan;
};

/* What a starting guardian reads first (the holder does not start another meanwhile). */
struct pq_guardian_args {
    int sock;                    /* its end of the pair */
    pid_t holder;
    struct g_hold *holds;        /* G_MAX records, zeroed */
    volatile uint32_t *expired;  /* G_MAX slots shared with the holder */
    volatile uint32_t *holding;  /* G_MAX slots the holder sets while a hold holds */
};
extern struct pq_guardian_args pq_guardian_args;

/* The guardian's body: the clone(CLONE_VM) entry point, and the same for a fork. Never
 * return. They touch no thread-local storage. */
int pq_guardian_entry(void *unused);
void pq_guardian_main(void) __attribute__((noreturn));

#endif
