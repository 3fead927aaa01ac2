/*
 * tree.h - what a selective or an ingress hold builds around the plug, over the netlink
 * layer: the prio qdisc and its filters (egress), the ifb, the ingress qdisc and its
 * redirecting filters (ingress), and their part of a hold's undo plan. Each failure
 * records its step (and the kind it concerns) in the socket's error record.
 */
#ifndef PQ_TREE_H
#define PQ_TREE_H

#include <stdint.h>

#include "nl.h"
#include "plan.h"

#define PQ_INGRESS_HANDLE 0xFFFF0000u   /* "ffff:" */
#define PQ_TREE_BANDS 16                /* band 1 passes; 2..16: a hold each */

/* Take the place PARENT of IFINDEX: free (nothing, or the kernel's default) goes ahead;
 * another qdisc is -EEXIST (step OCCUPIED, found_*) unless REPLACE, which deletes it
 * (step REMOVE_OTHER). 0 or -errno. */
int pq_tree_take_place(struct pq_nl *nl, int ifindex, uint32_t parent, int replace);
/* The prio qdisc PQ_TREE_HANDLE at the root of IFINDEX: PQ_TREE_BANDS bands, every
 * priority to the first (step TREE). 0 or -errno. */
int pq_tree_add_prio(struct pq_nl *nl, int ifindex);
/* One filter a term at PARENT of IFINDEX (a matchall if NTERMS is 0), at preferences
 * PREF, PREF+1, ..., sending what it selects to CLASSID (egress) or redirecting it to the
 * ifb REDIRECT (ingress, an ifindex). 0 or -errno (step FILTER, found_kind the
 * classifier). */
int pq_tree_add_filters(struct pq_nl *nl, int ifindex, uint32_t parent,
                        const struct pq_term *terms, int nterms, int pref, uint32_t classid,
                        int redirect);
/* What is on IFINDEX's egress: the prio's bands that have a qdisc (bit k for band k) in
 * *BANDS, and in USED (65536 bits) every qdisc handle's major number on the device.
 * 0 or -errno (step INSPECT). */
int pq_tree_survey(struct pq_nl *nl, int ifindex, uint32_t *bands, uint8_t *used);
/* Create the ifb NAME, up; one left behind is -EEXIST unless REPLACE, which deletes it.
 * Its ifindex in *IFINDEX. 0 or -errno (step IFB). */
int pq_tree_make_ifb(struct pq_nl *nl, const char *name, int replace, int *ifindex);
/* The ingress qdisc of IFINDEX (step INGRESS). 0 or -errno. */
int pq_tree_add_ingress(struct pq_nl *nl, int ifindex);
/* Whether IFINDEX's egress (its root qdisc) holds packets, given 200 ms to let go of
 * what was just released: 1 (how many in e->held), 0, or -errno. Adding or deleting an
 * ingress qdisc makes the kernel reset the device's egress, purging what it holds. */
int pq_tree_egress_held(struct pq_nl *nl, int ifindex);
/* The tree's part of a hold's plan: stop the diversion (delete the hold's filters, at
 * preferences PREF .. PREF+NPREFS-1 of the prio or the ingress qdisc); at ingress, ask
 * what the hold's ifb IFB still has on its way and remove it (with its plug); then, past
 * the gate (the device's lock; no other hold left), remove the prio, or ask what the
 * egress holds and delete the ingress qdisc. 0 or -errno. */
int pq_tree_plan(struct pq_plan *p, int ifindex, int ingress, const char *ifb, int pref,
                 int nprefs);
/* A plug qdisc found on a device. */
struct pq_found_plug {
    uint32_t parent, handle;
    uint64_t qlen;
};
/* The plug qdiscs below the qdisc with handle TOP on IFINDEX's egress (in its classes, or
 * in theirs, at any depth), into OUT (at most MAX): how many (all of them, even past MAX),
 * or -errno (step INSPECT). */
int pq_tree_plugs_under(struct pq_nl *nl, int ifindex, uint32_t top, struct pq_found_plug *out,
                        int max);
/* The prefix of the names of IFINDEX's ingress holds' ifbs, into BUF (IFNAMSIZ). */
void pq_tree_ifb_prefix(char *buf, int ifindex);

#endif
