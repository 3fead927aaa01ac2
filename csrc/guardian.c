/*
 * guardian.c - the guardian process (see guard.h for what it is for, guard.c for how the
 * holder starts it and talks to it). It runs on raw syscalls only, touches no thread-
 * local storage and allocates nothing (sys.h): it may share the holder's memory as a
 * clone(CLONE_VM) child, on the thread pointer of a thread that can exit. It keeps each
 * hold's plan and route socket, runs max_hold, and when the holder dies runs every plan.
 */
#define _GNU_SOURCE
#include "guardian.h"
#include "share.h"
#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <sys/prctl.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <linux/netlink.h>

struct pq_guardian_args pq_guardian_args;

#define SYS(n, a, b, c, d, e, f) PQ_SYS(n, a, b, c, d, e, f)

static unsigned char g_rbuf[sizeof(struct g_rec) + PQ_PLAN_MAX + 64];

PQ_NO_TLS static int64_t g_now_ms(void)
{
    struct timespec ts = { 0, 0 };

    (void)SYS(SYS_clock_gettime, CLOCK_MONOTONIC, &ts, 0, 0, 0, 0);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

PQ_NO_TLS static void g_exit(void)
{
    for (;;)
        (void)SYS(SYS_exit, 0, 0, 0, 0, 0, 0);
}

PQ_NO_TLS static void g_close(int *fd)
{
    if (*fd >= 0)
        (void)SYS(SYS_close, *fd, 0, 0, 0, 0, 0);
    *fd = -1;
}

PQ_NO_TLS static void g_forget(struct g_hold *h)
{
    if (!h->used)
        return;
    g_close(&h->fd);
    g_close(&h->nsfd);
    g_close(&h->lock);
    h->used = 0;
    h->armed = 0;
}

/* A new AF_UNIX socket of the guardian's own in the namespace NSFD, for a plan's gate:
 * the guardian enters it (setns) unless it is there already. fd or -errno. Made here, not
 * by the holder: a copy the holder (or a child it forked) kept would keep the device's
 * lock bound after the guardian let go of it. */
PQ_NO_TLS static int g_socket_in(int nsfd)
{
    struct stat here, there;
    int self = (int)SYS(SYS_openat, AT_FDCWD, "/proc/thread-self/ns/net",
                        O_RDONLY | O_CLOEXEC, 0, 0, 0);
    long err = self;

    if (self >= 0) {
        err = SYS(SYS_fstat, self, &here, 0, 0, 0, 0);
        if (err == 0)
            err = SYS(SYS_fstat, nsfd, &there, 0, 0, 0, 0);
        if (err == 0 && (here.st_dev != there.st_dev || here.st_ino != there.st_ino))
            err = SYS(SYS_setns, nsfd, CLONE_NEWNET, 0, 0, 0, 0);
        (void)SYS(SYS_close, self, 0, 0, 0, 0, 0);
    }
    return err < 0 ? (int)err : pq_share_socket();
}

/* The holder is gone: release every hold first (nothing stays held while others drain),
 * then run the rest of each plan: stop the diversion, let it drain, remove, and past the
 * gate what the device's holds shared if none is left. A plain plug that others use is
 * not released: its gate comes first. A plug that does not drain stays, passing. Never
 * returns. */
PQ_NO_TLS static void g_undo_all(struct g_hold *H, volatile uint32_t *holding)
{
    struct pq_plan_result r;
    int i;

    for (i = 0; i < G_MAX; i++)
        if (H[i].used && pq_plan_gate_phase(&H[i].plan) != PQ_PH_RELEASE)
            (void)pq_plan_phase(H[i].fd, &H[i].plan, PQ_PH_RELEASE, NULL, &r);
    for (i = 0; i < G_MAX; i++) {
        struct g_hold *h = &H[i];
        int first = pq_plan_gate_phase(&h->plan) == PQ_PH_RELEASE, sock, err;

        if (!h->used)
            continue;
        /* Its own socket for the gate; the lock it has if the holder died in its attach
         * (then no other attach has taken what that one was making). */
        sock = g_socket_in(h->nsfd);
        err = pq_plan_run(h->fd, &h->plan, first ? PQ_PH_RELEASE : PQ_PH_DIVERT, G_DRAIN_MS,
                          sock, PQ_RUN_ONWARD | PQ_RUN_PATIENT |
                                    (h->lock >= 0 ? PQ_RUN_LOCKED : 0u), &r);
        /* A plain plug others use (or whose lock it could not get) stays; but the dead
         * holder's hold ends: if it held, release it (the plug has one state for all). */
        if (first && holding[i] && (r.shared || (err < 0 && r.gate)))
            (void)pq_plan_phase(h->fd, &h->plan, PQ_PH_RELEASE, NULL, &r);
        g_close(&sock);            /* it had the device's lock: let go of it */
        g_forget(h);
    }
    g_exit();
}

/* Apply one record from the holder (FD, NSFD, LOCK: the files that came with it, or -1). */
PQ_NO_TLS static void g_apply(struct g_hold *H, const struct g_rec *r,
                              const unsigned char *payload, size_t len, int fd, int nsfd,
                              int lock)
{
    struct g_hold *h;

    if (r->slot >= G_MAX) {
        g_close(&fd);
        g_close(&nsfd);
        g_close(&lock);
        return;
    }
    h = &H[r->slot];
    switch (r->type) {
    case G_REGISTER: {
        /* A new plan for the same hold (attach learnt more) keeps the lock it had. */
        int kept = h->used && lock < 0 ? h->lock : -1;

        if (kept >= 0)
            h->lock = -1;
        g_forget(h);
        if (fd < 0 || nsfd < 0 || r->len != len || len > PQ_PLAN_MAX) {
            g_close(&kept);
            break;
        }
        memcpy(h->plan.buf, payload, len);
        h->plan.len = r->len;
        h->plan.expect = r->expect;
        h->used = 1;
        h->fd = fd;
        h->nsfd = nsfd;
        h->lock = lock >= 0 ? lock : kept;
        h->max_hold_ms = r->max_hold_ms;
        return;
    }
    case G_UNREGISTER:
        g_forget(h);
        break;
    case G_UNLOCK:
        g_close(&h->lock);
        break;
    case G_BUFFER:
        h->seq = r->seq;
        h->armed = 1;
        h->deadline_ms = g_now_ms() + h->max_hold_ms;
        break;
    case G_RELEASE:
        h->armed = 0;
        break;
    default:
        break;
    }
    g_close(&fd);
    g_close(&nsfd);
    g_close(&lock);
}

/* Read every record waiting on SOCK. 1 if the holder's end is closed (EOF), 0 if not. */
PQ_NO_TLS static int g_read(struct g_hold *H, int sock)
{
    for (;;) {
        union { char buf[CMSG_SPACE(3 * sizeof(int))]; struct cmsghdr align; } ctl;
        struct iovec iov = { g_rbuf, sizeof(g_rbuf) };
        struct msghdr mh;
        struct cmsghdr *c;
        long n;
        int fds[3] = { -1, -1, -1 };

        memset(&mh, 0, sizeof(mh));
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof(ctl.buf);
        n = SYS(SYS_recvmsg, sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC, 0, 0, 0);
        if (n == 0)
            return 1;
        if (n < 0)
            return n == -EAGAIN || n == -EINTR ? 0 : 1;
        for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);

                memcpy(fds, CMSG_DATA(c), (k > 3 ? 3 : k) * sizeof(int));
            }
        if ((size_t)n < sizeof(struct g_rec)) {
            g_close(&fds[0]);
            g_close(&fds[1]);
            g_close(&fds[2]);
            continue;
        }
        g_apply(H, (const struct g_rec *)g_rbuf, g_rbuf + sizeof(struct g_rec),
                (size_t)n - sizeof(struct g_rec), fds[0], fds[1], fds[2]);
        /* The holder waits for this: its next attach or detach takes the lock at once. */
        if (((const struct g_rec *)g_rbuf)->type == G_UNLOCK)
            (void)SYS(SYS_sendto, sock, g_rbuf, sizeof(struct g_rec), MSG_NOSIGNAL, 0, 0);
    }
}

/* Release the holds whose max_hold has passed; tell the holder through EXPIRED. Returns
 * how long until the next deadline (ms), or -1 if none. */
PQ_NO_TLS static long g_expire(struct g_hold *H, volatile uint32_t *expired)
{
    struct pq_plan_result r;
    int64_t now = g_now_ms(), next = -1;
    int i;

    for (i = 0; i < G_MAX; i++) {
        struct g_hold *h = &H[i];

        if (!h->used || h->armed != 1)
            continue;
        if (h->deadline_ms <= now) {
            /* Said first: the holder must not see the packets go before it can know why. */
            expired[i] = h->seq;
            (void)pq_plan_phase(h->fd, &h->plan, PQ_PH_RELEASE, NULL, &r);
            h->armed = 0;
        } else if (next < 0 || h->deadline_ms - now < next) {
            next = h->deadline_ms - now;
        }
    }
    return (long)next;
}

PQ_NO_TLS int pq_guardian_entry(void *unused)
{
    (void)unused;
    pq_guardian_main();
}

PQ_NO_TLS void pq_guardian_main(void)
{
    struct g_hold *H = pq_guardian_args.holds;
    volatile uint32_t *expired = pq_guardian_args.expired;
    volatile uint32_t *holding = pq_guardian_args.holding;
    pid_t holder = pq_guardian_args.holder;
    int sock = pq_guardian_args.sock, fd0, pidfd, null;
    struct g_rec ready;

    /* First, what attach waits for: no fd of the holder's but our socket (at 3). */
    if (sock != 3) {
        (void)SYS(SYS_dup3, sock, 3, 0, 0, 0, 0);
        sock = 3;
    }
    if (SYS(SYS_close_range, 4, ~0U, 0, 0, 0, 0) < 0) {
        int fd;

        for (fd = 4; fd < 65536; fd++)
            (void)SYS(SYS_close, fd, 0, 0, 0, 0, 0);
    }
    memset(&ready, 0, sizeof(ready));
    ready.type = G_READY;
    (void)SYS(SYS_sendto, sock, &ready, sizeof(ready), MSG_NOSIGNAL, 0, 0);

    /* Every signal stays blocked, as the holder started us: its handlers are not ours to
     * run, and a SIGTERM to every process must not stop our work (SIGKILL still does).
     * Out of the holder's session: a kill of its process group does not reach us. Its
     * stdio is not ours either: /dev/null as 0, 1, 2. */
    (void)SYS(SYS_setsid, 0, 0, 0, 0, 0, 0);
    null = (int)SYS(SYS_openat, AT_FDCWD, "/dev/null", O_RDWR, 0, 0, 0);
    if (null >= 0) {
        for (fd0 = 0; fd0 < 3; fd0++)
            if (null != fd0)
                (void)SYS(SYS_dup3, null, fd0, 0, 0, 0, 0);
        if (null > 3)
            (void)SYS(SYS_close, null, 0, 0, 0, 0, 0);
    }
    (void)SYS(SYS_chdir, "/", 0, 0, 0, 0, 0);
    (void)SYS(SYS_prctl, PR_SET_NAME, "plugqdisc-guard", 0, 0, 0, 0);
    pidfd = (int)SYS(SYS_pidfd_open, holder, 0, 0, 0, 0, 0);
    if (SYS(SYS_getppid, 0, 0, 0, 0, 0, 0) != holder) {
        /* The holder is already gone: read what it managed to send, then undo it. */
        (void)g_read(H, sock);
        g_undo_all(H, holding);
    }
    for (;;) {
        struct pollfd p[2] = { { sock, POLLIN, 0 }, { pidfd, POLLIN, 0 } };
        long timeout = g_expire(H, expired);
        struct timespec ts;
        int dead = 0;
        long n;

        if (pidfd < 0 && (timeout < 0 || timeout > 100))
            timeout = 100; /* no pidfd (old kernel): look at our parent ten times a second */
        ts.tv_sec = timeout / 1000;
        ts.tv_nsec = (timeout % 1000) * 1000000L;
        n = SYS(SYS_ppoll, p, pidfd >= 0 ? 2 : 1, timeout < 0 ? NULL : &ts, 0, 8, 0);
        if (n < 0 && n != -EINTR)
            dead = 1;
        if (n > 0 && p[0].revents)
            dead |= g_read(H, sock);
        if (pidfd >= 0 ? (n > 0 && p[1].revents != 0)
                       : SYS(SYS_getppid, 0, 0, 0, 0, 0, 0) != holder)
            dead = 1;
        if (dead) {
            (void)g_read(H, sock); /* records sent just before the end still count */
            g_undo_all(H, holding);
        }
    }
}
