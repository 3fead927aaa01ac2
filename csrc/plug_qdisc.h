/*
 * plug_qdisc.h - hold and release a device's packets with the kernel's plug qdisc (sch_plug).
 *
 * Pure C over libnl-route-3; no Python here. Every function that can fail returns 0 or a
 * negative errno (-ENODEV, -EPERM, ...); a handle also keeps the facts of its last failure
 * (struct pq_error: the step, the kernel's own text). No English of ours: words for people
 * belong to the caller. Nothing here prints, exits or aborts.
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

/* What a failed call was doing when it failed. The core reports facts (this step, the
 * errno, the kernel's own text, what it found); words for people are the caller's. */
enum pq_step {
    PQ_STEP_NONE = 0,   /* no failure */
    PQ_STEP_ARGS,       /* the arguments were refused; nothing was sent (EINVAL) */
    PQ_STEP_STATE,      /* the handle is not attached (ENOTCONN); see attach_err */
    PQ_STEP_NETNS,      /* reading or entering the network namespace */
    PQ_STEP_SOCKET,     /* opening the netlink socket */
    PQ_STEP_DEVICE,     /* looking the device up (ENODEV: no such device) */
    PQ_STEP_INSPECT,    /* asking what qdisc is at the place */
    PQ_STEP_OCCUPIED,   /* another qdisc is at the place (EEXIST); found_kind, found_handle */
    PQ_STEP_PARENT,     /* the parent ("1:1", "ffff:", ...) is not there (ENOENT) */
    PQ_STEP_CREATE,     /* creating the plug qdisc; ENOENT here means the kernel lacks it */
    PQ_STEP_ADOPT,      /* setting the limit of our plug qdisc found at the place */
    PQ_STEP_REMOVE_OTHER, /* deleting the other qdisc in the way (replace) */
    PQ_STEP_CHANGE,     /* a plug action: buffer, release, release one, limit */
    PQ_STEP_STATS,      /* reading our qdisc (ENOENT: not there; found_kind says what is) */
    PQ_STEP_DRAIN,      /* waiting for the backlog to drain (ETIMEDOUT; held) */
    PQ_STEP_DELETE,     /* deleting the plug qdisc */
    PQ_STEP_TREE,       /* match mode: creating the prio qdisc that sorts packets */
    PQ_STEP_IFB,        /* ingress: creating the ifb device (found_kind "ifb": one is there) */
    PQ_STEP_INGRESS,    /* ingress: creating the ingress qdisc on the device */
    PQ_STEP_FILTER,     /* adding a filter; found_kind names its classifier or action */
    PQ_STEP_UNDO,       /* removing what attach added (filters, prio, ingress, ifb) */
    PQ_STEP_GUARD,      /* handing the hold to the guardian (starting it) */
    PQ_STEP_DUMP,       /* listing the namespace's qdiscs and links (pq_dump) */
    PQ_STEP_LOCK,       /* taking the device's lock: another process kept it (EBUSY) */
    PQ_STEP_FULL,       /* PQ_MAX_HOLDS holds of this direction are on the device (ENOSPC) */
    PQ_STEP_IN_USE,     /* replace: what is in the way is a living hold's (EBUSY); found_* */
    PQ_STEP_HANDLE,     /* the handle asked for is another qdisc's on the device (EEXIST) */
    PQ_STEP_SHARE,      /* joining the users of a plain plug (EUSERS: too many) */
    PQ_STEP_COUNT
};

struct pq_error {
    int err;                /* positive errno; 0 if the last call succeeded */
    enum pq_step step;
    char kernel[256];       /* the kernel's extended-ack text, verbatim; "" if none */
    char found_kind[16];    /* OCCUPIED, STATS: the kind of the qdisc found there, "" none */
    uint32_t found_handle;  /* OCCUPIED: its handle */
    uint64_t held;          /* DRAIN: packets still held when the wait ended */
    uint32_t waited_ms;     /* DRAIN: how long it waited */
    int attach_err;         /* STATE: the errno of the last failed attach, 0 if none */
    enum pq_step attach_step; /* STATE: and its step */
};

/* What a selective hold holds: a packet is held when any term matches it, and a term
 * matches when all of its fields do. FAMILY is AF_INET or AF_INET6 (flower terms); a term
 * of kind PQ_TERM_MARK matches the packet's mark alone (any protocol). */
enum pq_term_kind { PQ_TERM_FLOWER = 1, PQ_TERM_MARK = 2 };

struct pq_term {
    enum pq_term_kind kind;
    int family;                 /* AF_INET, AF_INET6 (flower) */
    int ip_proto;               /* -1: any; else 0-255 */
    int has_src, has_dst;
    uint8_t src[16], src_mask[16];   /* network order; 4 bytes used for AF_INET */
    uint8_t dst[16], dst_mask[16];
    uint16_t sport_lo, sport_hi;     /* 0, 0: any; lo == hi: one port */
    uint16_t dport_lo, dport_hi;
    int syn;                    /* TCP SYN set and ACK clear */
    int fin, rst;               /* TCP FIN set; TCP RST set */
    uint32_t mark, mark_mask;   /* PQ_TERM_MARK: (skb mark & mask) == mark, mark != 0 */
};

/* A short lower-case identifier of STEP ("create", "find_device", ...), for programs. */
const char *pq_step_name(enum pq_step step);

/* Parse a tc handle: "root" -> TC_H_ROOT, "none" -> TC_H_UNSPEC, "MAJ:" / "MAJ:MIN" in hex
 * (each at most ffff). 0 or -EINVAL. */
int pq_parse_handle(const char *text, uint32_t *out);

/* Make a handle for DEVICE (a name) or IFINDEX (> 0), at PARENT with HANDLE. LIMIT in
 * bytes, 0 for the device's default. No I/O at all: the namespace is taken, the socket
 * opened and the device looked up by the first pq_connect() or pq_attach().
 * 0, -EINVAL (bad arguments) or -ENOMEM. */
int pq_new(struct plug_qdisc **out, const char *device, int ifindex, uint32_t parent,
           uint32_t handle, uint32_t limit);
/* Work in the network namespace NETNS_FD (duplicated; the caller keeps its own) rather
 * than the one the first connecting thread is in. Only before the first connect:
 * -EISCONN after. 0 or -errno. */
int pq_set_netns(struct plug_qdisc *q, int netns_fd);
/* Take the namespace, open the socket and look the device up (one RTM_GETLINK); once.
 * Touches no qdisc. 0 or -errno, with the step in pq_last_error(). */
int pq_connect(struct plug_qdisc *q);
/* Where and what to hold, before the first attach (-EISCONN after): INGRESS 0 holds what
 * leaves the device, 1 what it receives (redirected to an ifb that attach creates); with
 * NTERMS > 0 only packets that TERMS select are held (a prio qdisc and filters at the root,
 * or filters at ingress), the others pass untouched. Both need PARENT root. The plug keeps
 * the handle's HANDLE; the prio qdisc takes PQ_TREE_HANDLE. TERMS are copied.
 * 0 or -EINVAL, -ENOMEM. */
#define PQ_TREE_HANDLE 0xFFFE0000u
/* Selective holds (and ingress holds) one device can have at once: the prio's bands 2 to
 * 16, one a hold (the first band passes what no hold selects). */
#define PQ_MAX_HOLDS 15
/* An ingress hold's ifb is called this prefix, the held device's ifindex, "-" and n. */
#define PQ_IFB_PREFIX "pqifb"
int pq_set_hold(struct plug_qdisc *q, int ingress, const struct pq_term *terms, int nterms);

/* The guardian (guard.c). ON: from the next attach, the hold is registered with this
 * process's guardian, a helper process that releases it (and removes what attach
 * created, once drained) when this process dies, however it dies. The guardian starts at
 * the first guarded attach of a process and stays until the process exits. MAX_HOLD_MS
 * > 0: the guardian also releases a hold (buffer to release) that lasts longer, even
 * while this process is stopped. Before the first attach: -EISCONN after. 0 or -EINVAL. */
int pq_set_guard(struct plug_qdisc *q, int on, uint32_t max_hold_ms);
/* The record file (an absolute path; NULL: none) of the hold the next attach creates:
 * the hold's plan unlinks it once the hold is undone (detach, the guardian, a failed
 * attach). Before attach: -EISCONN after. 0 or -EINVAL, -ENOMEM. */
int pq_set_record(struct plug_qdisc *q, const char *path);
/* 1 if the guardian released the current hold because it passed max_hold. */
int pq_hold_expired(const struct plug_qdisc *q);
/* This process's guardian, 0 if none is running. */
int pq_guardian_pid(void);

/* pq_new + pq_set_netns (NETNS_FD >= 0) + pq_connect. On failure the handle is freed and
 * only the errno is left: use the three calls to read the step and the kernel's text. */
int pq_open(struct plug_qdisc **out, const char *device, int ifindex, uint32_t parent,
            uint32_t handle, uint32_t limit, int netns_fd);

/* Create a plug qdisc at the handle's place, or adopt the plug qdisc with the same handle
 * already there; a qdisc of another kind (or handle) there gives -EEXIST unless REPLACE,
 * and -EBUSY (step IN_USE) if a living hold uses it. A selective or ingress hold takes a
 * band (an ifb) of its own beside the device's other holds (-ENOSPC past PQ_MAX_HOLDS);
 * HANDLE 0 lets it choose a free handle. Holds on one device take turns through the
 * device's lock (share.h). Afterwards traffic passes (release indefinite). Connects first
 * if needed. */
int pq_attach(struct plug_qdisc *q, int replace);
int pq_buffer(struct plug_qdisc *q);              /* TCQ_PLUG_BUFFER: new epoch, hold */
int pq_release_one(struct plug_qdisc *q);         /* TCQ_PLUG_RELEASE_ONE: the previous epoch */
int pq_release_indefinite(struct plug_qdisc *q);  /* TCQ_PLUG_RELEASE_INDEFINITE: all, pass */
int pq_set_limit(struct plug_qdisc *q, uint32_t limit);   /* TCQ_PLUG_LIMIT, bytes; 0 default */
/* Read the counters of our qdisc (one RTM_GETQDISC). -ENOENT if it is no longer there. */
int pq_get_stats(struct plug_qdisc *q, struct pq_stats *st);
/* A selective or ingress hold stops selecting: packets sent from now on pass; what it holds
 * stays held until a release or detach. -EINVAL for a plain hold. 0 or -errno. */
int pq_stop_selecting(struct plug_qdisc *q);
/* Release, wait up to TIMEOUT_MS for the backlog to drain, then delete the qdisc (and,
 * the last hold out, what the device's holds shared). A plain plug that another living
 * holder uses is left in place (released if this handle held: a plug has one state for
 * all of its users). -ETIMEDOUT (qdisc left in place, passing traffic) if it
 * did not drain: nothing is dropped. */
int pq_detach(struct plug_qdisc *q, int timeout_ms);
/* Free the handle and its socket; the qdisc is left as it is. A hold that still holds
 * (buffering) stays registered with the guardian, which undoes it when the process dies;
 * one that lets traffic pass is no longer guarded. NULL is fine. */
void pq_close(struct plug_qdisc *q);

/* What the handle knows (what it last sent; the kernel reports no plug state). */
int pq_connected(const struct plug_qdisc *q);        /* namespace taken, device found */
int pq_ifindex(const struct plug_qdisc *q);          /* as given; as found once connected */
const char *pq_device(const struct plug_qdisc *q);   /* the device's name ("" if unknown) */
/* The limit in force once connected; before, the one asked for (0: the device's default,
 * not known until the device is found). */
uint32_t pq_limit(const struct plug_qdisc *q);
int pq_is_buffering(const struct plug_qdisc *q);
int pq_created(const struct plug_qdisc *q);           /* 1 if our attach created the qdisc */
int pq_attached(const struct plug_qdisc *q);
/* The plug's handle: as asked for, or (asked 0) the one attach chose, else 0. */
uint32_t pq_handle(const struct plug_qdisc *q);
/* A selective hold's band (2..16), an ingress hold's ifb number (1..15); 0 otherwise. */
int pq_band(const struct plug_qdisc *q);
/* An ingress hold's ifb ("" otherwise). */
const char *pq_ifb(const struct plug_qdisc *q);
/* The last call's failure (err 0 if it succeeded). Valid until the next call on Q. */
const struct pq_error *pq_last_error(const struct plug_qdisc *q);
/* A counter that moves in the child after every fork() (no syscall to read it): state
 * made for one process, such as a socket or a lock, is stale once it has moved. */
unsigned long pq_fork_generation(void);

/* ---- what a namespace has (dump.c) ---- */

/* One qdisc as the kernel dumps it: its device, kind ("plug", "prio", "ingress", ...),
 * handle, parent and counters. */
struct pq_qdisc_row {
    int ifindex;
    char kind[16];
    uint32_t handle;
    uint32_t parent;
    struct pq_stats st;
};

/* One network device: its index, name and kind ("ifb", "veth", ...; "" if it has none). */
struct pq_link_row {
    int ifindex;
    char name[16];
    char kind[16];
};

struct pq_dump {
    struct pq_qdisc_row *qdiscs;
    int nqdiscs;
    struct pq_link_row *links;
    int nlinks;
};

/* Dump every qdisc and every link of the network namespace NETNS_FD (-1: the calling
 * thread's) into OUT, which the caller frees with pq_dump_free. Needs no privilege but
 * CAP_SYS_ADMIN to enter another namespace. 0 or -errno, with the facts in E (step
 * enter_netns, open_socket or dump). */
int pq_dump(int netns_fd, struct pq_dump *out, struct pq_error *e);
/* Free what pq_dump filled in (and zero it); a zeroed OUT is fine. */
void pq_dump_free(struct pq_dump *out);

/* ---- cleanup: a dead holder's hold ---- */

/* What a hold is: a plug at PARENT of the device; a selective hold (the plug in a band of
 * the prio PQ_TREE_HANDLE at the root); an ingress hold (the plug at the root of an ifb
 * PQ_IFB_PREFIX<ifindex>-<n>, with the device's ingress qdisc). */
enum pq_mode { PQ_MODE_PLAIN = 0, PQ_MODE_MATCH = 1, PQ_MODE_INGRESS = 2 };

/* Adopt the hold of MODE on device IFINDEX (PARENT: a plain plug's parent) whose plug has
 * HANDLE, in the namespace NETNS_FD (-1: the calling thread's), and remove it with the
 * same plan a detach runs: release, stop the diversion, wait up to TIMEOUT_MS for the
 * drain, remove; then, if no other hold is left on the device, what they shared (the
 * prio; the ingress qdisc only if the device's egress holds nothing: -EBUSY otherwise).
 * A selective hold's band, an ingress hold's ifb and its filters are found from HANDLE;
 * HANDLE 0 for an ingress hold: no ifb is left, only what the holds shared is removed.
 * A plain plug that a living holder uses is left to it. 0 or -errno with the facts in E. */
int pq_remove_hold(int netns_fd, int ifindex, enum pq_mode mode, uint32_t parent,
                   uint32_t handle, int timeout_ms, struct pq_error *e);

/* The HAProxy-compatible attach with the place already parsed (what plug_qdisc_attach
 * calls after pq_parse_handle). 0 or -errno. */
int plug_qdisc_attach_at(const char *device, uint32_t parent, uint32_t handle, uint32_t limit);
/* The default handle behind the HAProxy-compatible API (NULL before plug_qdisc_attach). */
struct plug_qdisc *plug_qdisc_default_handle(void);

#ifdef __cplusplus
}
#endif
#endif
