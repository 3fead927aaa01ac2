/*
 * guard.c - the holder's side of the guardian (see guard.h; the process itself is guardian.c).
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
#include "guardian.h"
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

/* ------------------------------------------------------------------------------------ */
/* the holder's side                                                                    */

struct g_slot {
    int used, fd, armed;
    int nsfd;                    /* the hold's network namespace, for its gate's socket */
    int abandoned;               /* its handle is gone, its hold not: guarded till the end */
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
    volatile uint32_t *holding;  /* G_MAX slots shared with it: 1 while a hold holds */
    struct g_slot s[G_MAX];
} G = { PTHREAD_MUTEX_INITIALIZER, 0, 0, -1, NULL, NULL, NULL, NULL,
        { { 0, 0, 0, 0, 0, 0, 0, NULL } } };

static void g_drop_slot(struct g_slot *s)
{
    if (G.holding)
        G.holding[s - G.s] = 0;
    if (s->fd >= 0)
        close(s->fd);
    if (s->nsfd >= 0)
        close(s->nsfd);
    free(s->plan);
    memset(s, 0, sizeof(*s));
    s->fd = -1;
    s->nsfd = -1;
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
            munmap((void *)G.expired, 2 * G_MAX * sizeof(uint32_t));
        G.sock = -1;
        G.pid = 0;
        G.stack = NULL;
        G.holds = NULL;
        G.expired = NULL;
        G.holding = NULL;
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
        void *m = mmap(NULL, 2 * G_MAX * sizeof(uint32_t), PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);

        if (m == MAP_FAILED)
            return -errno;
        G.expired = m;
        G.holding = G.expired + G_MAX;
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
    pq_guardian_args.sock = sv[1];
    pq_guardian_args.holder = getpid();
    pq_guardian_args.holds = G.holds;
    pq_guardian_args.expired = G.expired;
    pq_guardian_args.holding = G.holding;
    /* The child starts, and stays, with every signal blocked: the holder's handlers are
     * not its own (see guardian.c). */
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
            pid = clone(pq_guardian_entry, (char *)G.stack + G_STACK, CLONE_VM, NULL);
        }
    } else {
        pid = (pid_t)syscall(SYS_clone, 0UL, NULL, NULL, NULL, 0UL);
        if (pid == 0)
            pq_guardian_main();
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

/* Send one record (and PAYLOAD, and as SCM_RIGHTS FD, NSFD and, if >= 0, LOCK, if FD >= 0)
 * to the guardian. 0/-errno. */
static int g_send(const struct g_rec *rec, const void *payload, size_t len, int fd, int nsfd,
                  int lock)
{
    struct iovec iov[2] = { { (void *)rec, sizeof(*rec) }, { (void *)payload, len } };
    union { char buf[CMSG_SPACE(3 * sizeof(int))]; struct cmsghdr align; } ctl;
    int fds[3] = { fd, nsfd, lock }, nfds = lock >= 0 ? 3 : 2;
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
        mh.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
        c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, (size_t)nfds * sizeof(int));
    }
    do
        n = sendmsg(G.sock, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : 0;
}

/* Hand slot I over to the guardian (and, if it holds, its max_hold timer), with LOCK (a
 * copy of the device's lock an attach has, or -1). 0 or -errno. */
static int g_send_slot(int i, int lock)
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
    err = g_send(&rec, s->plan->buf, s->plan->len, s->fd, s->nsfd, lock);
    if (err == 0 && s->armed) {
        rec.type = G_BUFFER;
        rec.seq = s->seq;
        err = g_send(&rec, NULL, 0, -1, -1, -1);
    }
    return err;
}

/* Make sure a guardian runs that has every registered hold (G locked): start one if there
 * is none, or a new one if this one is gone, handing it every hold (slot SLOT with LOCK,
 * see g_send_slot). 0 or -errno. */
static int g_ensure(int slot, int lock)
{
    int i, err;

    if (G.pid)
        return 0;
    if ((err = g_start()) < 0)
        return err;
    for (i = 0; i < G_MAX; i++) {
        if (G.s[i].used && G.s[i].fd < 0)
            g_drop_slot(&G.s[i]);      /* abandoned: nothing left to hand it over with */
        else if (G.s[i].used && (err = g_send_slot(i, i == slot ? lock : -1)) < 0)
            return err;
    }
    return 0;
}

/* Whether an error from the socket pair means the guardian is gone. */
static int gone(int err)
{
    return err == -EPIPE || err == -ECONNRESET || err == -ENOTCONN;
}

int pq_guard_register(struct pq_guard_ticket *t, const struct pq_plan *plan, int fd, int nsfd,
                      int lock, uint32_t max_hold_ms)
{
    struct pq_plan *copy = malloc(sizeof(*copy));
    int slot, err, tries;

    if (!copy) {
        close(fd);
        close(nsfd);
        return -ENOMEM;
    }
    *copy = *plan;
    g_lock();
    /* A hold abandoned at this very place (same plan) is this one now: take its slot. */
    for (slot = 0; slot < G_MAX; slot++)
        if (G.s[slot].used && G.s[slot].abandoned && G.s[slot].plan->len == plan->len &&
            memcmp(G.s[slot].plan->buf, plan->buf, plan->len) == 0)
            break;
    if (slot < G_MAX)
        g_drop_slot(&G.s[slot]);
    else
        for (slot = 0; slot < G_MAX && G.s[slot].used; slot++)
            ;
    if (slot == G_MAX) {
        g_unlock();
        free(copy);
        close(fd);
        close(nsfd);
        return -ENOSPC;
    }
    G.s[slot] = (struct g_slot){ 1, fd, 0, nsfd, 0, max_hold_ms, 0, copy };
    err = 0;
    for (tries = 0; tries < 2; tries++) {
        if (!G.pid) {
            err = g_ensure(slot, lock); /* a new guardian gets this slot with the others */
        } else {
            err = g_send_slot(slot, lock);
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

int pq_guard_update(struct pq_guard_ticket *t, const struct pq_plan *plan)
{
    int err;

    if (!pq_guard_registered(t))
        return -ENOENT;
    g_lock();
    *G.s[t->slot].plan = *plan;
    err = G.pid ? g_send_slot(t->slot, -1) : -EPIPE;
    if (gone(err)) {
        g_reap();                      /* it died: a new one gets every hold, this one too */
        err = g_ensure(-1, -1);
    }
    g_unlock();
    return err;
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
    if (G.pid && gone(g_send(&rec, NULL, 0, -1, -1, -1))) {
        g_reap();
        (void)g_ensure(-1, -1);
    }
}

void pq_guard_unlock(struct pq_guard_ticket *t)
{
    struct g_rec rec;

    if (!pq_guard_registered(t))
        return;
    g_lock();
    g_tell(t, G_UNLOCK);
    /* Wait (a second at most) for the guardian to say it let go: until then the device's
     * lock is still bound, and this thread's next attach or detach would wait for it. */
    while (G.pid) {
        struct pollfd p = { G.sock, POLLIN, 0 };
        int n = poll(&p, 1, 1000);

        if (n < 0 && errno == EINTR)
            continue;
        if (n != 1 || recv(G.sock, &rec, sizeof(rec), 0) != (ssize_t)sizeof(rec) ||
            (rec.type == G_UNLOCK && rec.slot == (uint32_t)t->slot))
            break;
    }
    g_unlock();
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

void pq_guard_abandon(struct pq_guard_ticket *t)
{
    if (pq_guard_registered(t)) {
        g_lock();
        G.s[t->slot].abandoned = 1;
        if (G.s[t->slot].fd >= 0)
            close(G.s[t->slot].fd);
        if (G.s[t->slot].nsfd >= 0)
            close(G.s[t->slot].nsfd);
        G.s[t->slot].fd = -1;
        G.s[t->slot].nsfd = -1;
        g_unlock();
    }
    t->slot = -1;
}

void pq_guard_hold(struct pq_guard_ticket *t, int arm)
{
    if (!pq_guard_registered(t))
        return;
    if (G.holding)
        G.holding[t->slot] = arm ? 1u : 0u;   /* read at the holder's death: no syscall */
    if (!t->max_hold_ms)
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

