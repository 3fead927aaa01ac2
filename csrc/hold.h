/*
 * hold.h - what a hold of each mode is made of, as the C core undoes it: its plan (from
 * the plug's and the tree's parts), the step a failed phase of it is, and the removal of a
 * dead holder's hold rebuilt from its place (pq_remove_hold, in plug_qdisc.h).
 */
#ifndef PQ_HOLD_H
#define PQ_HOLD_H

#include <stdint.h>

#include "plug_qdisc.h"
#include "plan.h"

/* The plan that undoes a hold of MODE on IFINDEX whose plug is at PL_IFINDEX/PL_PARENT
 * with HANDLE (an ingress hold's ifb is IFB; PL_IFINDEX 0: the ifb is not made yet, so
 * the plan has no step for its plug), and then unlinks RECORD (NULL: none). 0 or -errno. */
int pq_hold_plan(struct pq_plan *p, enum pq_mode mode, int ifindex, int pl_ifindex,
                 uint32_t pl_parent, uint32_t handle, const char *ifb, const char *record);
/* The step a failure ERR of a plan's PHASE is, in a handle's facts. */
enum pq_step pq_hold_phase_step(enum pq_phase phase, int err);
/* Copy a failed run's facts (the kernel's text, what was held, how long it waited) into E
 * and record the failure at its step. Returns ERR. */
int pq_hold_failed(struct pq_error *e, const struct pq_plan_result *r, int err);

#endif
