/*
 * guard.c - the guardian (see guard.h).
 *
 * How it starts, and why it costs nothing per hold: the first guarded hold of a process
 * starts one guardian, which stays until the process exits (it then runs the plans of
 * the holds still registered, and exits itself). It is a clone(CLONE_VM) child: it shares
 * the holder's memory instead of copying it, which makes its start about as cheap as a
 * thread's (a fork() of a Python process costs 15-20 ms under UML), with a copy of the
 * fd table that it closes before attach goes on, so that it never keeps a file of the
 * holder's open. It gets no SIGCHLD (exit signal 0): a holder's wait() for its own
 * children neither sees nor reaps it. Since it runs on the thread pointer of the thread
 * that started it, it never touches thread-local storage (sys.h); under valgrind (which
 * cannot run such a child) and on architectures without raw syscalls here, it is forked.
 *
 * The holder hands it, over a SOCK_SEQPACKET pair, each hold's plan and a route socket in
 * the hold's namespace (SCM_RIGHTS), and keeps both: if the guardian is found dead, the
 * next registration starts a new one and hands every live hold over again. The guardian
 * learns of the holder's death through a pidfd. The holder side is process-wide state,
 * reset in a forked child, which starts its own guardian for the holds it makes.
 */
#define _GNU_SOURCE
#include "guard.h"
#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define G_MAX 256                /* holds one guardian keeps */
#define G_DRAIN_MS 5000          /* how long a backlog may take to drain, as detach() */
#define G_STACK (256 * 1024)     /* the cloned guardian's stack */

enum { G_REGISTER = 1, G_UNREGISTER, G_BUFFER, G_RELEASE, G_READY };

/* One record from holder to guardian; REGISTER is followed by the plan's bytes and carries
 * the route socket as SCM_RIGHTS. */
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
    uint32_t max_hold_ms, seq;
    int64_t deadline_ms;
    struct pq_plan plan;
};

/* ------------------------------------------------------------------------------------ */
/* the holder's side                                                                    */

struct g_slot {
    int used, fd, armed;
    uint32_t max_hold_ms, seq;
    struct pq_plan *plan;
};

static struct {
    pthread_mutex_t lock;
    unsigned long gen;           /* pq_fork_generation() the state belongs to */
    pid_t pid;                   /* the guardian, 0 if none */
    int sock;                    /* our end of the pair, -1 if none */
    void *stack;                 /* a cloned guardian's stack, NULL if forked or none */
    struct g_hold *holds;        /* its G_MAX records (mapped for it, zeroed) */
    volatile uint32_t *expired;  /* G_MAX slots shared with it: the expired seq */
    struct g_slot s[G_MAX];
} G = { PTHREAD_MUTEX_INITIALIZER, 0, 0, -1, NULL, NULL, NULL, { { 0, 0, 0, 0, 0, NULL } } };

/* What a starting guardian reads first (the holder does not start another meanwhile). */
static struct {
    int sock;
    pid_t holder;
    struct g_hold *holds;
    volatile uint32_t *expired;
} g_args;

static void g_drop_slot(struct g_slot *s)
{
    if (s->fd >= 0)
        close(s->fd);
    free(s->plan);
    memset(s, 0, sizeof(*s));
    s->fd = -1;
}

/* Lock the state, first forgetting a guardian and holds inherited through fork(): they
 * are the parent's (the parent's copies of the fds live on). */
static void g_lock(void)
{
    unsigned long now = pq_fork_generation();
    int i;

    if (G.gen != now) {
        pthread_mutex_init(&G.lock, NULL);
        if (G.sock >= 0)
            close(G.sock);
        if (G.stack)
            munmap(G.stack, G_STACK);
        if (G.holds)
            munmap(G.holds, G_MAX * sizeof(struct g_hold));
        if (G.expired)
            munmap((void *)G.expired, G_MAX * sizeof(uint32_t));
        G.sock = -1;
        G.pid = 0;
        G.stack = NULL;
        G.holds = NULL;
        G.expired = NULL;
        for (i = 0; i < G_MAX; i++)
            if (G.s[i].used)
                g_drop_slot(&G.s[i]);
        G.gen = now;
    }
    pthread_mutex_lock(&G.lock);
}

static void g_unlock(void)
{
    pthread_mutex_unlock(&G.lock);
}

/* Reap a guardian that is gone (or told to go) and free what it ran on. */
static void g_reap(void)
{
    if (G.sock >= 0)
        close(G.sock);
    G.sock = -1;
    if (G.pid > 0)
        while (waitpid(G.pid, NULL, __WALL) < 0 && errno == EINTR)
            ;
    G.pid = 0;
    if (G.stack)
        munmap(G.stack, G_STACK);
    G.stack = NULL;
    if (G.holds)
        munmap(G.holds, G_MAX * sizeof(struct g_hold));
    G.holds = NULL;
}

/* Whether this process runs under valgrind, which cannot run a clone(CLONE_VM) child
 * ("Unsupported clone() flags") and ends the program instead. */
static int under_valgrind(void)
{
    const char *p = getenv("LD_PRELOAD");

    return p && strstr(p, "vgpreload") != NULL;
}

static int guardian_entry(void *unused);
static void guardian_main(void) __attribute__((noreturn));

/* Wait (up to 5 s) for the new guardian to say that it holds no fd of ours any more: until
 * then it has a copy of every one (a listening socket stays bound, a pipe open). 0 or
 * -errno (the guardian is then killed and reaped). */
static int g_wait_ready(void)
{
    struct pollfd p = { G.sock, POLLIN, 0 };
    struct g_rec rec;
    int n;

    do
        n = poll(&p, 1, 5000);
    while (n < 0 && errno == EINTR);
    if (n == 1 && recv(G.sock, &rec, sizeof(rec), 0) == (ssize_t)sizeof(rec) &&
        rec.type == G_READY)
        return 0;
    n = n == 0 ? -ETIMEDOUT : -EPIPE;
    kill(G.pid, SIGKILL);
    g_reap();
    return n;
}

/* Start the guardian (G locked). 0 or -errno. */
static int g_start(void)
{
    sigset_t all, old;
    int sv[2], err = 0;
    pid_t pid;

    if (!G.expired) {
        void *m = mmap(NULL, G_MAX * sizeof(uint32_t), PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);

        if (m == MAP_FAILED)
            return -errno;
        G.expired = m;
    }
    G.holds = mmap(NULL, G_MAX * sizeof(struct g_hold), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (G.holds == MAP_FAILED) {
        G.holds = NULL;
        return -errno;
    }
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        err = -errno;
        g_reap();
        return err;
    }
    g_args.sock = sv[1];
    g_args.holder = getpid();
    g_args.holds = G.holds;
    g_args.expired = G.expired;
    /* The child starts with every signal blocked: the holder's handlers are not its own,
     * and it sets its own before it unblocks them. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    if (PQ_SYS_RAW && !under_valgrind()) {
        G.stack = mmap(NULL, G_STACK, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (G.stack == MAP_FAILED) {
            G.stack = NULL;
            pid = -1;
        } else {
            /* Exit signal 0: no SIGCHLD, invisible to the holder's own wait(). */
            pid = clone(guardian_entry, (char *)G.stack + G_STACK, CLONE_VM, NULL);
        }
    } else {
        pid = (pid_t)syscall(SYS_clone, 0UL, NULL, NULL, NULL, 0UL);
        if (pid == 0)
            guardian_main();
    }
    if (pid < 0)
        err = -errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(sv[1]);
    if (err < 0) {
        close(sv[0]);
        g_reap();
        return err;
    }
    G.sock = sv[0];
    G.pid = pid;
    return g_wait_ready();
}

/* Send one record (and PAYLOAD, and FD as SCM_RIGHTS if >= 0) to the guardian. 0/-errno. */
static int g_send(const struct g_rec *rec, const void *payload, size_t len, int fd)
{
    struct iovec iov[2] = { { (void *)rec, sizeof(*rec) }, { (void *)payload, len } };
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } ctl;
    struct msghdr mh;
    ssize_t n;

    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = iov;
    mh.msg_iovlen = len ? 2 : 1;
    if (fd >= 0) {
        struct cmsghdr *c;

        memset(&ctl, 0, sizeof(ctl));
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof(ctl.buf);
        c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    do
        n = sendmsg(G.sock, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : 0;
}

/* Hand slot I over to the guardian (and, if it holds, its max_hold timer). 0 or -errno. */
static int g_send_slot(int i)
{
    struct g_slot *s = &G.s[i];
    struct g_rec rec;
    int err;

    memset(&rec, 0, sizeof(rec));
    rec.type = G_REGISTER;
    rec.slot = (uint32_t)i;
    rec.max_hold_ms = s->max_hold_ms;
    rec.expect = s->plan->expect;
    rec.len = s->plan->len;
    G.expired[i] = 0;
    err = g_send(&rec, s->plan->buf, s->plan->len, s->fd);
    if (err == 0 && s->armed) {
        rec.type = G_BUFFER;
        rec.seq = s->seq;
        err = g_send(&rec, NULL, 0, -1);
    }
    return err;
}

/* Make sure a guardian runs that has every registered hold (G locked): start one if there
 * is none, or a new one if this one is gone, handing it every hold. 0 or -errno. */
static int g_ensure(void)
{
    int i, err;

    if (G.pid)
        return 0;
    if ((err = g_start()) < 0)
        return err;
    for (i = 0; i < G_MAX; i++)
        if (G.s[i].used && (err = g_send_slot(i)) < 0)
            return err;
    return 0;
}

/* Whether an error from the socket pair means the guardian is gone. */
static int gone(int err)
{
    return err == -EPIPE || err == -ECONNRESET || err == -ENOTCONN;
}

int pq_guard_register(struct pq_guard_ticket *t, const struct pq_plan *plan, int fd,
                      uint32_t max_hold_ms)
{
    struct pq_plan *copy = malloc(sizeof(*copy));
    int slot, err, tries;

    if (!copy) {
        close(fd);
        return -ENOMEM;
    }
    *copy = *plan;
    g_lock();
    for (slot = 0; slot < G_MAX && G.s[slot].used; slot++)
        ;
    if (slot == G_MAX) {
        g_unlock();
        free(copy);
        close(fd);
        return -ENOSPC;
    }
    G.s[slot] = (struct g_slot){ 1, fd, 0, max_hold_ms, 0, copy };
    err = 0;
    for (tries = 0; tries < 2; tries++) {
        if (!G.pid) {
            err = g_ensure();          /* a new guardian gets this slot with the others */
        } else {
            err = g_send_slot(slot);
        }
        if (!gone(err))
            break;
        g_reap();                      /* it died (killed by hand?): start another */
    }
    if (err < 0)
        g_drop_slot(&G.s[slot]);
    g_unlock();
    if (err < 0)
        return err;
    t->slot = slot;
    t->gen = pq_fork_generation();
    t->seq = 0;
    t->max_hold_ms = max_hold_ms;
    return 0;
}

int pq_guard_registered(const struct pq_guard_ticket *t)
{
    return t->slot >= 0 && t->gen == pq_fork_generation();
}

/* Send a record about T's slot, replacing a guardian found gone. */
static void g_tell(const struct pq_guard_ticket *t, uint32_t type)
{
    struct g_rec rec;

    memset(&rec, 0, sizeof(rec));
    rec.type = type;
    rec.slot = (uint32_t)t->slot;
    rec.seq = t->seq;
    if (G.pid && gone(g_send(&rec, NULL, 0, -1))) {
        g_reap();
        (void)g_ensure();
    }
}

void pq_guard_unregister(struct pq_guard_ticket *t)
{
    if (!pq_guard_registered(t)) {
        t->slot = -1;
        return;
    }
    g_lock();
    g_tell(t, G_UNREGISTER);
    g_drop_slot(&G.s[t->slot]);
    g_unlock();
    t->slot = -1;
}

void pq_guard_hold(struct pq_guard_ticket *t, int arm)
{
    if (!t->max_hold_ms || !pq_guard_registered(t))
        return;
    if (arm && ++t->seq == 0)
        t->seq = 1;              /* 0 means no hold started yet: see pq_guard_expired */
    g_lock();
    G.s[t->slot].armed = arm;
    G.s[t->slot].seq = t->seq;
    g_tell(t, arm ? G_BUFFER : G_RELEASE);
    g_unlock();
}

int pq_guard_expired(const struct pq_guard_ticket *t)
{
    /* seq 0: no hold started since registering, and the slot's expired seq is 0 too */
    return t->max_hold_ms && t->seq != 0 && pq_guard_registered(t) && G.expired &&
           G.expired[t->slot] == t->seq;
}

int pq_guardian_pid(void)
{
    int pid;

    g_lock();
    pid = G.pid;
    g_unlock();
    return pid;
}

/* ------------------------------------------------------------------------------------ */
/* the guardian: raw syscalls only from here on, no thread-local storage, no malloc      */

#define SYS(n, a, b, c, d, e, f) PQ_SYS(n, a, b, c, d, e, f)

/* The kernel's struct sigaction (what rt_sigaction takes). */
struct k_sigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    uint64_t mask;
};

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

PQ_NO_TLS static void g_forget(struct g_hold *h)
{
    if (!h->used)
        return;
    (void)SYS(SYS_close, h->fd, 0, 0, 0, 0, 0);
    h->used = 0;
    h->armed = 0;
    h->fd = -1;
}

/* The holder is gone: release every hold first (nothing stays held while others drain),
 * then run the rest of each plan: stop the diversion, let it drain, remove. A plug that
 * does not drain stays, passing. Never returns. */
PQ_NO_TLS static void g_undo_all(struct g_hold *H)
{
    struct pq_plan_result r;
    int i;

    for (i = 0; i < G_MAX; i++)
        if (H[i].used)
            (void)pq_plan_phase(H[i].fd, &H[i].plan, PQ_PH_RELEASE, NULL, &r);
    for (i = 0; i < G_MAX; i++)
        if (H[i].used)
            (void)pq_plan_run(H[i].fd, &H[i].plan, PQ_PH_DIVERT, G_DRAIN_MS, &r);
    g_exit();
}

/* Apply one record from the holder (FD: the socket that came with it, or -1). */
PQ_NO_TLS static void g_apply(struct g_hold *H, const struct g_rec *r,
                              const unsigned char *payload, size_t len, int fd)
{
    struct g_hold *h;

    if (r->slot >= G_MAX) {
        if (fd >= 0)
            (void)SYS(SYS_close, fd, 0, 0, 0, 0, 0);
        return;
    }
    h = &H[r->slot];
    switch (r->type) {
    case G_REGISTER:
        g_forget(h);
        if (fd < 0 || r->len != len || len > PQ_PLAN_MAX)
            break;
        memcpy(h->plan.buf, payload, len);
        h->plan.len = r->len;
        h->plan.expect = r->expect;
        h->used = 1;
        h->fd = fd;
        h->max_hold_ms = r->max_hold_ms;
        return;
    case G_UNREGISTER:
        g_forget(h);
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
    if (fd >= 0)
        (void)SYS(SYS_close, fd, 0, 0, 0, 0, 0);
}

/* Read every record waiting on SOCK. 1 if the holder's end is closed (EOF), 0 if not. */
PQ_NO_TLS static int g_read(struct g_hold *H, int sock)
{
    for (;;) {
        union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } ctl;
        struct iovec iov = { g_rbuf, sizeof(g_rbuf) };
        struct msghdr mh;
        struct cmsghdr *c;
        long n;
        int fd = -1;

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
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
                memcpy(&fd, CMSG_DATA(c), sizeof(int));
        if ((size_t)n < sizeof(struct g_rec)) {
            if (fd >= 0)
                (void)SYS(SYS_close, fd, 0, 0, 0, 0, 0);
            continue;
        }
        g_apply(H, (const struct g_rec *)g_rbuf, g_rbuf + sizeof(struct g_rec),
                (size_t)n - sizeof(struct g_rec), fd);
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

PQ_NO_TLS static int guardian_entry(void *unused)
{
    (void)unused;
    guardian_main();
}

PQ_NO_TLS static void guardian_main(void)
{
    struct g_hold *H = g_args.holds;
    volatile uint32_t *expired = g_args.expired;
    pid_t holder = g_args.holder;
    int sock = g_args.sock, sig, pidfd, null;
    struct k_sigaction sa;
    uint64_t none = 0;
    struct g_rec ready;

    /* Plain signal handling (the holder's handlers are not ours to run; SIGTERM, a kill
     * of every process, must not stop our work), out of the holder's session (a kill of
     * its process group does not reach us). */
    memset(&sa, 0, sizeof(sa));
    for (sig = 1; sig <= 64; sig++) {
        sa.handler = sig == SIGPIPE || sig == SIGINT || sig == SIGHUP || sig == SIGTERM
                         ? SIG_IGN : SIG_DFL;
        if (sig != SIGKILL && sig != SIGSTOP)
            (void)SYS(SYS_rt_sigaction, sig, &sa, 0, 8, 0, 0);
    }
    (void)SYS(SYS_setsid, 0, 0, 0, 0, 0, 0);
    /* No fd of the holder's but our socket (at 3), and /dev/null as 0, 1, 2. */
    if (sock != 3) {
        (void)SYS(SYS_dup3, sock, 3, 0, 0, 0, 0);
        sock = 3;
    }
    if (SYS(SYS_close_range, 4, ~0U, 0, 0, 0, 0) < 0) {
        int fd;

        for (fd = 4; fd < 65536; fd++)
            (void)SYS(SYS_close, fd, 0, 0, 0, 0, 0);
    }
    null = (int)SYS(SYS_openat, AT_FDCWD, "/dev/null", O_RDWR, 0, 0, 0);
    if (null >= 0) {
        for (sig = 0; sig < 3; sig++)
            if (null != sig)
                (void)SYS(SYS_dup3, null, sig, 0, 0, 0, 0);
        if (null > 3)
            (void)SYS(SYS_close, null, 0, 0, 0, 0, 0);
    }
    /* Nothing of the holder's is held here any more: it may go on. */
    memset(&ready, 0, sizeof(ready));
    ready.type = G_READY;
    (void)SYS(SYS_sendto, sock, &ready, sizeof(ready), MSG_NOSIGNAL, 0, 0);

    (void)SYS(SYS_chdir, "/", 0, 0, 0, 0, 0);
    (void)SYS(SYS_prctl, PR_SET_NAME, "plugqdisc-guard", 0, 0, 0, 0);
    pidfd = (int)SYS(SYS_pidfd_open, holder, 0, 0, 0, 0, 0);
    (void)SYS(SYS_rt_sigprocmask, SIG_SETMASK, &none, 0, 8, 0, 0);
    if (SYS(SYS_getppid, 0, 0, 0, 0, 0, 0) != holder) {
        /* The holder is already gone: read what it managed to send, then undo it. */
        (void)g_read(H, sock);
        g_undo_all(H);
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
            g_undo_all(H);
        }
    }
}
