/*
 * hold.h - what a hold of each mode is made of, as the C core undoes it: its plan (from
 * the plug's and the tree's parts), the step a failed phase of it is, and the removal of a
 * dead holder's hold rebuilt from its place (pq_remove_hold, in plug_qdisc.h).
 */
#ifndef PQ_HOLD_H
#define PQ_HOLD_H

#include <stdint.h>
#include <net/if.h>

#include "plug_qdisc.h"
#include "plan.h"

/* Where a hold is and what it made. */
struct pq_place {
    enum pq_mode mode;
    int ifindex;                /* the held device */
    int pl_ifindex;             /* the plug's device (the ifb at ingress); 0: not made yet */
    uint32_t pl_parent, handle; /* the plug's place there */
    char ifb[IFNAMSIZ];         /* ingress: the hold's ifb */
    int pref, nprefs;           /* selective, ingress: its filters' preferences */
    int owner;                  /* plain: removes the plug when the last user out */
    int slot;                   /* plain: its user slot (share.h); -1 none */
};

/* The plan that undoes the hold at PL (a plain plug: only if no other user is alive),
 * then unlinks RECORD (NULL: none). 0 or -errno. */
int pq_hold_plan(struct pq_plan *p, const struct pq_place *pl, const char *record);
/* The step a failure ERR of a plan's PHASE is, in a handle's facts. */
enum pq_step pq_hold_phase_step(enum pq_phase phase, int err);
/* Copy a failed run's facts (the kernel's text, what was held, how long it waited) into E
 * and record the failure at its step. Returns ERR. */
int pq_hold_failed(struct pq_error *e, const struct pq_plan_result *r, int err);

#endif
