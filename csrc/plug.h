/*
 * plug.h - the plug qdisc itself, over the netlink layer: create, adopt, change (hold,
 * release, limit), read its counters, delete, and its part of a hold's undo plan.
 * A plug is found by its place: device IFINDEX, PARENT, HANDLE.
 */
#ifndef PQ_PLUG_H
#define PQ_PLUG_H

#include <stdint.h>

#include "nl.h"
#include "plan.h"

/* One RTM_NEWQDISC for the plug at IFINDEX/PARENT/HANDLE with netlink FLAGS (0: change;
 * CREATE|EXCL; CREATE|REPLACE), ACTION (TCQ_PLUG_*) and LIMIT (read by the kernel only at
 * creation and for TCQ_PLUG_LIMIT; always real, since libnl sends it: 0 drops all).
 * 0 or -errno. */
int pq_plug_send(struct pq_nl *nl, int ifindex, uint32_t parent, uint32_t handle, int flags,
                 int action, uint32_t limit);
/* Whether QD (may be NULL) is a plug qdisc with HANDLE. */
int pq_plug_is(struct rtnl_qdisc *qd, uint32_t handle);
/* Record the kind and handle of QD (may be NULL) in E as what was found. */
void pq_plug_note_found(struct pq_error *e, struct rtnl_qdisc *qd);
/* Fill ST (may be NULL) from the plug at IFINDEX/PARENT with HANDLE. 0, -ENOENT if it is
 * not there (what is there goes to found_*), or -errno. */
int pq_plug_read(struct pq_nl *nl, int ifindex, uint32_t parent, uint32_t handle,
                 struct pq_stats *st);
/* Delete the plug. 0 or -errno. */
int pq_plug_delete(struct pq_nl *nl, int ifindex, uint32_t parent, uint32_t handle);
/* The plug's part of a plan: release it; ask what it holds; and, if REMOVE, delete it
 * (a plug inside a tree goes with the tree instead). 0 or -errno. */
int pq_plug_plan(struct pq_plan *p, int ifindex, uint32_t parent, uint32_t handle, int remove);

#endif
