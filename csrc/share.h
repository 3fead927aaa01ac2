/*
 * share.h - how holds on one device take turns and know of each other, with names in the
 * abstract unix socket namespace of the device's network namespace. A name belongs to a
 * socket: it vanishes when its process dies, however it dies, and leaves nothing behind.
 *
 * - The device's lock "plugqdisc/lock/<ifindex>": bound by whoever changes what holds on
 *   the device share (attach; the last one's removal); binding it again fails until then.
 * - A plain plug's users "plugqdisc/plug/<ifindex>/<parent>/<handle>/<o|a><slot>", each
 *   a listening socket: o for a user that removes the plug if it is the last one out (it
 *   made the plug, or joined one that such a user had), a for one that adopted a plug made
 *   by someone else (tc): it only releases it. Another user is alive if a connect works.
 *
 * Raw syscalls only (sys.h): the plan's runner and the guardian use these too. SOCK is an
 * AF_UNIX stream socket made in the device's namespace (pq_share_socket there).
 */
#ifndef PQ_SHARE_H
#define PQ_SHARE_H

#include <stdint.h>

#define PQ_SHARE_SLOTS 16        /* users of one plain plug */
#define PQ_LOCK_MS 5000          /* how long to wait for the device's lock */

/* A new socket for the calls below, in the calling thread's namespace. fd or -errno. */
int pq_share_socket(void);
/* Bind SOCK to IFINDEX's lock, waiting up to TIMEOUT_MS while another has it. Closing
 * SOCK lets go. 0, -EBUSY (not in time) or -errno. */
int pq_share_lock(int sock, int ifindex, int timeout_ms);
/* Make SOCK the user OWNER (1: o, 0: a) of the plain plug IFINDEX/PARENT/HANDLE, in the
 * first free slot (*SLOT). 0, -EUSERS (all slots taken) or -errno. */
int pq_share_join(int sock, int ifindex, uint32_t parent, uint32_t handle, int owner,
                  int *slot);
/* Whether another user of the plug (not OWNER/SLOT; SLOT -1: none is ours) is alive: 1,
 * with *OWNER_ALIVE (may be NULL) 1 if one of them is an o; or 0. Uses SOCK (a socket
 * that is not connected; it may be bound) for its connects, and leaves it connected if
 * it finds one. */
int pq_share_others(int sock, int ifindex, uint32_t parent, uint32_t handle, int owner,
                    int slot, int *owner_alive);

#endif
