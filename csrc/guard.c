/*
 * guard.c - the guardian: a hold never outlives its holder.
 *
 * Nothing in the kernel ties a qdisc to the process that made it: a holder killed while
 * holding leaves the device held. So the first guarded attach of a process forks a
 * guardian, a child in a session of its own that keeps, for each of the process's holds,
 * the netlink messages that undo it (release; stop the diversion; remove what attach
 * created) and a netlink socket in the hold's namespace. When the holder dies, by any
 * means, it sends them: release, wait for the backlog to drain (as detach() does), remove.
 * With max_hold it also releases a hold that lasts too long, holder stopped or not.
 *
 * The guardian is forked, never exec'd, from what may be a multi-threaded process, so it
 * lives on async-signal-safe calls only: raw syscalls, static buffers, no malloc, no libnl.
 * The messages are built here in the holder, with libnl, and sent over a SOCK_SEQPACKET
 * pair; the netlink socket goes with them as SCM_RIGHTS.
 *
 * The holder side is the second process-wide state of the core (after the HAProxy default
 * handle): one guardian per process, started on demand, reaped when the last guarded hold
 * is detached. A forked child starts its own for the holds it attaches.
 */
#define _GNU_SOURCE
#include "pq_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/gen_stats.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>

#define G_MAX 256                /* holds one guardian keeps */
#define G_ARENA (128 * 1024)     /* their messages */
#define G_DRAIN_MS 5000          /* how long the backlog may take to drain, as detach() */
#define G_REPLY_MS 2000          /* how long to wait for the kernel's answer */

enum { G_REGISTER = 1, G_UNREGISTER, G_BUFFER, G_RELEASE, G_EXIT, G_READY };
/* Release; stop the diversion; ask what is still held; remove. For an ingress hold then:
 * ask what the device's egress holds, and delete the ingress qdisc only if nothing
 * (deleting it purges the egress). */
enum { PH_RELEASE, PH_DIVERT, PH_PROBE, PH_REMOVE, PH_EGRESS, PH_LAST, PH_COUNT };

/* One record from holder to guardian; REGISTER is followed by the messages of each phase
 * (len[] bytes each, in phase order) and carries the netlink socket as SCM_RIGHTS. */
struct g_rec {
    uint32_t type;
    uint32_t slot;               /* the hold's slot, 0 .. G_MAX-1 */
    uint32_t seq;                /* BUFFER: the hold's buffer count */
    uint32_t max_hold_ms;        /* REGISTER: 0 for none */
    uint32_t len[PH_COUNT];      /* REGISTER */
};

/* ------------------------------------------------------------------------------------ */
/* the holder's side                                                                    */

static struct {
    pthread_mutex_t lock;
    unsigned long gen;           /* pq_fork_generation() the state belongs to */
    pid_t pid;                   /* the guardian, 0 if none */
    int sock;                    /* our end of the pair, -1 if none */
    volatile uint32_t *expired;  /* G_MAX slots shared with the guardian: the expired seq */
    unsigned char used[G_MAX];
    int nused;
} G = { PTHREAD_MUTEX_INITIALIZER, 0, 0, -1, NULL, {0}, 0 };

/* Lock the state, first forgetting a guardian inherited through fork(): it is the
 * parent's. Its socket is closed here (the parent's copy lives on). */
static void g_lock(void)
{
    unsigned long now = pq_fork_generation();

    if (G.gen != now) {
        pthread_mutex_init(&G.lock, NULL);
        if (G.sock >= 0)
            close(G.sock);
        if (G.expired)
            munmap((void *)G.expired, G_MAX * sizeof(uint32_t));
        G.sock = -1;
        G.pid = 0;
        G.expired = NULL;
        memset(G.used, 0, sizeof(G.used));
        G.nused = 0;
        G.gen = now;
    }
    pthread_mutex_lock(&G.lock);
}

static void g_unlock(void)
{
    pthread_mutex_unlock(&G.lock);
}

static void guardian_main(int sock, pid_t holder) __attribute__((noreturn));

/* Wait (up to 5 s) for the new guardian to say that it holds no fd of ours any more: until
 * then it has a copy of every one (a listening socket stays bound, a pipe open). 0 or
 * -errno (the guardian is then reaped). */
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
    close(G.sock);
    G.sock = -1;
    while (waitpid(G.pid, NULL, 0) < 0 && errno == EINTR)
        ;
    G.pid = 0;
    return n;
}

/* Start the guardian (G locked). 0 or -errno. */
static int g_start(void)
{
    int sv[2];
    pid_t holder = getpid(), pid;

    if (!G.expired) {
        void *m = mmap(NULL, G_MAX * sizeof(uint32_t), PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);

        if (m == MAP_FAILED)
            return -errno;
        G.expired = m;
    }
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    pid = fork();
    if (pid < 0) {
        int err = -errno;

        close(sv[0]);
        close(sv[1]);
        return err;
    }
    if (pid == 0)
        guardian_main(sv[1], holder);
    close(sv[1]);
    G.sock = sv[0];
    G.pid = pid;
    return g_wait_ready();
}

/* Reap the guardian after it was told to go (or found gone). */
static void g_reap(void)
{
    if (G.sock >= 0)
        close(G.sock);
    G.sock = -1;
    if (G.pid > 0)
        while (waitpid(G.pid, NULL, 0) < 0 && errno == EINTR)
            ;
    G.pid = 0;
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

/* Append the bytes of MSG (freed; NULL is an error) to BUF at *LEN. 0 or -errno. */
static int take_msg(struct nl_msg *msg, unsigned char *buf, size_t cap, uint32_t *len)
{
    struct nlmsghdr *h;

    if (!msg)
        return -ENOMEM;
    h = nlmsg_hdr(msg);
    if (*len + NLMSG_ALIGN(h->nlmsg_len) > cap) {
        nlmsg_free(msg);
        return -ENOSPC;
    }
    memcpy(buf + *len, h, h->nlmsg_len);
    *len += NLMSG_ALIGN(h->nlmsg_len);
    nlmsg_free(msg);
    return 0;
}

/* Register an attached hold with this process's guardian (starting it). 0 or -errno,
 * step GUARD recorded. */
int pq__guard_register(struct plug_qdisc *q)
{
    unsigned char payload[4096];
    struct g_rec rec;
    uint32_t at = 0;
    int tree = q->ingress || q->nterms, err, fd = -1, slot, tries;

    if (!q->guard || (q->gslot >= 0 && q->ggen == pq_fork_generation()))
        return 0;
    memset(&rec, 0, sizeof(rec));
    /* Release always; what attach created is also diverted, drained and removed. */
    err = take_msg(pq__msg_release(q), payload, sizeof(payload), &at);
    rec.len[PH_RELEASE] = at;
    if (err == 0 && q->created && tree) {
        err = take_msg(pq__tree_msg_divert(q), payload, sizeof(payload), &at);
        rec.len[PH_DIVERT] = at - rec.len[PH_RELEASE];
    }
    if (err == 0 && q->created) {
        uint32_t before = at;

        err = take_msg(pq__msg_tc(RTM_GETQDISC, NLM_F_ECHO, q->pl_ifindex, q->pl_parent, 0),
                       payload, sizeof(payload), &at);
        if (err == 0 && q->ingress)
            err = take_msg(pq__tree_msg_probe_ifb(q), payload, sizeof(payload), &at);
        rec.len[PH_PROBE] = at - before;
        before = at;
        if (err == 0)
            err = take_msg(tree ? pq__tree_msg_remove(q)
                                : pq__msg_delete_qdisc(q->pl_ifindex, q->pl_parent, q->handle,
                                                       "plug"),
                           payload, sizeof(payload), &at);
        rec.len[PH_REMOVE] = at - before;
        if (err == 0 && q->ingress) {
            before = at;
            err = take_msg(pq__tree_msg_egress_probe(q), payload, sizeof(payload), &at);
            rec.len[PH_EGRESS] = at - before;
            before = at;
            if (err == 0)
                err = take_msg(pq__tree_msg_remove_ingress(q), payload, sizeof(payload), &at);
            rec.len[PH_LAST] = at - before;
        }
    }
    if (err == 0)
        err = pq__raw_socket(q, &fd);
    if (err < 0) {
        if (fd >= 0)
            close(fd);
        return pq__fail(q, PQ_STEP_GUARD, err);
    }

    g_lock();
    for (slot = 0; slot < G_MAX && G.used[slot]; slot++)
        ;
    err = slot < G_MAX ? 0 : -ENOSPC;
    rec.type = G_REGISTER;
    rec.slot = (uint32_t)slot;
    rec.max_hold_ms = q->max_hold_ms;
    for (tries = 0; err == 0 && tries < 2; tries++) {
        if (!G.pid && (err = g_start()) < 0)
            break;
        G.expired[slot] = 0;
        err = g_send(&rec, payload, at, fd);
        if (err != -EPIPE && err != -ECONNRESET && err != -ENOTCONN)
            break;
        /* The guardian died (killed by hand?): start another. The holds it had are not
         * guarded any more; this one will be. */
        g_reap();
    }
    if (err == 0) {
        G.used[slot] = 1;
        G.nused++;
        q->gslot = slot;
        q->ggen = G.gen;
        q->bseq = 0;
    }
    g_unlock();
    close(fd);
    return err < 0 ? pq__fail(q, PQ_STEP_GUARD, err) : 0;
}

/* Whether Q is registered with this process's guardian. */
static int ours(const struct plug_qdisc *q)
{
    return q->gslot >= 0 && q->ggen == pq_fork_generation();
}

/* Forget Q's hold; the last one sends the guardian away and reaps it. */
void pq__guard_unregister(struct plug_qdisc *q)
{
    struct g_rec rec;

    if (!ours(q)) {
        q->gslot = -1;
        return;
    }
    memset(&rec, 0, sizeof(rec));
    rec.type = G_UNREGISTER;
    rec.slot = (uint32_t)q->gslot;
    g_lock();
    if (G.pid) {
        (void)g_send(&rec, NULL, 0, -1);
        G.used[q->gslot] = 0;
        if (--G.nused == 0) {
            rec.type = G_EXIT;
            (void)g_send(&rec, NULL, 0, -1);
            g_reap();
        }
    }
    g_unlock();
    q->gslot = -1;
}

/* max_hold: tell the guardian that Q holds from now (ARM) or not any more. */
void pq__guard_hold(struct plug_qdisc *q, int arm)
{
    struct g_rec rec;

    if (!q->max_hold_ms || !ours(q))
        return;
    memset(&rec, 0, sizeof(rec));
    rec.type = arm ? G_BUFFER : G_RELEASE;
    rec.slot = (uint32_t)q->gslot;
    rec.seq = arm ? ++q->bseq : q->bseq;
    g_lock();
    if (G.pid)
        (void)g_send(&rec, NULL, 0, -1);
    g_unlock();
}

/* Whether the guardian released Q's current hold because it lasted past max_hold. */
int pq__guard_expired(const struct plug_qdisc *q)
{
    return q->max_hold_ms && ours(q) && q->is_buffering && G.expired &&
           G.expired[q->gslot] == q->bseq;
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
/* the guardian: async-signal-safe calls only from here on                              */

static struct g_hold {
    int used, fd, armed;
    uint32_t max_hold_ms, seq;
    int64_t deadline_ms;
    uint32_t off, len[PH_COUNT];
} H[G_MAX];
static unsigned char arena[G_ARENA];
static uint32_t arena_used;
static unsigned char rbuf[8192];
static unsigned char nlbuf[16384];
static uint32_t nlseq;

static int64_t g_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void g_sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* The queue length in an RTM_NEWQDISC message (TCA_STATS2/TCA_STATS_QUEUE, else TCA_STATS). */
static uint64_t g_qlen(const struct nlmsghdr *h)
{
    const struct tcmsg *tcm = NLMSG_DATA(h);
    const struct rtattr *a = (const struct rtattr *)((const char *)tcm + NLMSG_ALIGN(sizeof(*tcm)));
    int len = (int)h->nlmsg_len - NLMSG_LENGTH(sizeof(*tcm));

    for (; RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        if (a->rta_type == TCA_STATS2) {
            const struct rtattr *b = RTA_DATA(a);
            int blen = (int)RTA_PAYLOAD(a);

            for (; RTA_OK(b, blen); b = RTA_NEXT(b, blen))
                if (b->rta_type == TCA_STATS_QUEUE &&
                    RTA_PAYLOAD(b) >= sizeof(struct gnet_stats_queue))
                    return ((const struct gnet_stats_queue *)RTA_DATA(b))->qlen;
        } else if (a->rta_type == TCA_STATS && RTA_PAYLOAD(a) >= sizeof(struct tc_stats)) {
            return ((const struct tc_stats *)RTA_DATA(a))->qlen;
        }
    }
    return 0;
}

/* Packets an ifb has taken and not handed back yet, from its RTM_NEWLINK (IFLA_STATS64:
 * ifb counts what it receives as rx, what it re-injects as tx). */
static uint64_t g_in_flight(const struct nlmsghdr *h)
{
    const struct ifinfomsg *ifi = NLMSG_DATA(h);
    const struct rtattr *a = (const struct rtattr *)((const char *)ifi + NLMSG_ALIGN(sizeof(*ifi)));
    int len = (int)h->nlmsg_len - NLMSG_LENGTH(sizeof(*ifi));

    for (; RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        if (a->rta_type == IFLA_STATS64 && RTA_PAYLOAD(a) >= sizeof(struct rtnl_link_stats64)) {
            struct rtnl_link_stats64 st;
            uint64_t done;

            memcpy(&st, RTA_DATA(a), sizeof(st)); /* 4-byte aligned in the message */
            done = st.tx_packets + st.tx_dropped + st.rx_dropped; /* as pq__tree_in_flight */
            return st.rx_packets > done ? st.rx_packets - done : 0;
        }
    }
    return 0;
}

/* Send one netlink message (patched: our seq, an ack asked for) on FD and wait for its
 * answer. 0 or -errno (the kernel's); what a qdisc (its qlen) or an ifb (in flight) in
 * the reply still holds is added to *QLEN, if QLEN. */
static int g_exchange(int fd, struct nlmsghdr *m, uint64_t *qlen)
{
    struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
    int64_t deadline = g_now_ms() + G_REPLY_MS;

    m->nlmsg_seq = ++nlseq;
    m->nlmsg_pid = 0;
    m->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
    if (sendto(fd, m, m->nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0)
        return -errno;
    for (;;) {
        struct pollfd p = { fd, POLLIN, 0 };
        int64_t left = deadline - g_now_ms();
        ssize_t n;
        struct nlmsghdr *h;

        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            return -ETIMEDOUT;
        n = recv(fd, nlbuf, sizeof(nlbuf), 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        for (h = (struct nlmsghdr *)nlbuf; NLMSG_OK(h, (unsigned int)n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_seq != m->nlmsg_seq)
                continue;
            if (h->nlmsg_type == NLMSG_ERROR)
                return ((struct nlmsgerr *)NLMSG_DATA(h))->error;
            if (h->nlmsg_type == RTM_NEWQDISC && qlen)
                *qlen += g_qlen(h);
            if (h->nlmsg_type == RTM_NEWLINK && qlen)
                *qlen += g_in_flight(h);
        }
    }
}

/* Send every message of phase PH of hold I. Returns the last error (0 if none). */
static int g_phase(int i, int ph, uint64_t *qlen)
{
    struct g_hold *h = &H[i];
    uint32_t off = h->off, end;
    int p, err = 0;

    for (p = 0; p < ph; p++)
        off += h->len[p];
    end = off + h->len[ph];
    while (off < end) {
        struct nlmsghdr *m = (struct nlmsghdr *)(arena + off);
        int e = g_exchange(h->fd, m, qlen);

        if (e < 0)
            err = e;
        off += NLMSG_ALIGN(m->nlmsg_len);
    }
    return err;
}

/* Forget hold I, giving its space back. */
static void g_forget(int i)
{
    struct g_hold *h = &H[i];
    uint32_t size = 0;
    int p, j;

    if (!h->used)
        return;
    for (p = 0; p < PH_COUNT; p++)
        size += h->len[p];
    memmove(arena + h->off, arena + h->off + size, arena_used - h->off - size);
    arena_used -= size;
    for (j = 0; j < G_MAX; j++)
        if (H[j].used && H[j].off > h->off)
            H[j].off -= size;
    close(h->fd);
    memset(h, 0, sizeof(*h));
}

/* The holder is gone: release everything, stop the diversions, let the plugs drain,
 * remove what the holds created (a plug that does not drain stays, passing). Never
 * returns. */
static void g_undo_all(volatile uint32_t *expired) __attribute__((noreturn));
static void g_undo_all(volatile uint32_t *expired)
{
    int64_t deadline;
    int i, waiting;

    (void)expired;
    for (i = 0; i < G_MAX; i++)
        if (H[i].used)
            (void)g_phase(i, PH_RELEASE, NULL);
    for (i = 0; i < G_MAX; i++)
        if (H[i].used)
            (void)g_phase(i, PH_DIVERT, NULL);
    deadline = g_now_ms() + G_DRAIN_MS;
    do {
        waiting = 0;
        for (i = 0; i < G_MAX; i++) {
            uint64_t qlen = 0;

            if (!H[i].used || !H[i].len[PH_PROBE] || H[i].armed == -1)
                continue;
            if (g_phase(i, PH_PROBE, &qlen) < 0 || qlen == 0) {
                H[i].armed = -1; /* drained, or gone: ready to remove */
                continue;
            }
            waiting = 1;
        }
        if (waiting)
            g_sleep_ms(1);
    } while (waiting && g_now_ms() < deadline);
    for (i = 0; i < G_MAX; i++) {
        uint64_t egress = 0;

        if (!H[i].used || H[i].armed != -1)
            continue;
        (void)g_phase(i, PH_REMOVE, NULL);
        if (H[i].len[PH_EGRESS] && g_phase(i, PH_EGRESS, &egress) == 0 && egress == 0)
            (void)g_phase(i, PH_LAST, NULL);
    }
    _exit(0);
}

/* Apply one record from the holder (FD: the socket that came with it, or -1). */
static void g_apply(const struct g_rec *r, const unsigned char *payload, size_t len, int fd)
{
    struct g_hold *h;
    uint32_t total = 0;
    int p;

    if (r->slot >= G_MAX) {
        if (fd >= 0)
            close(fd);
        return;
    }
    h = &H[r->slot];
    switch (r->type) {
    case G_REGISTER:
        g_forget((int)r->slot);
        for (p = 0; p < PH_COUNT; p++)
            total += r->len[p];
        if (fd < 0 || total != len || arena_used + total > sizeof(arena)) {
            if (fd >= 0)
                close(fd);
            return;
        }
        memcpy(arena + arena_used, payload, total);
        h->used = 1;
        h->fd = fd;
        h->off = arena_used;
        memcpy(h->len, r->len, sizeof(h->len));
        h->max_hold_ms = r->max_hold_ms;
        arena_used += total;
        return;
    case G_UNREGISTER:
        g_forget((int)r->slot);
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
        close(fd);
}

/* Read every record waiting on SOCK. 1 if the holder's end is closed (EOF), 0 if not. */
static int g_read(int sock)
{
    for (;;) {
        union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } ctl;
        struct iovec iov = { rbuf, sizeof(rbuf) };
        struct msghdr mh;
        struct cmsghdr *c;
        ssize_t n;
        int fd = -1;

        memset(&mh, 0, sizeof(mh));
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof(ctl.buf);
        n = recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n == 0)
            return 1;
        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 0 : 1;
        for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
                memcpy(&fd, CMSG_DATA(c), sizeof(int));
        if ((size_t)n < sizeof(struct g_rec)) {
            if (fd >= 0)
                close(fd);
            continue;
        }
        if (((const struct g_rec *)rbuf)->type == G_EXIT)
            _exit(0);
        g_apply((const struct g_rec *)rbuf, rbuf + sizeof(struct g_rec),
                (size_t)n - sizeof(struct g_rec), fd);
    }
}

/* Release the holds whose max_hold has passed; tell the holder through EXPIRED. Returns
 * how long until the next deadline (ms), or -1 if none. */
static int g_expire(volatile uint32_t *expired)
{
    int64_t now = g_now_ms(), next = -1;
    int i;

    for (i = 0; i < G_MAX; i++) {
        struct g_hold *h = &H[i];

        if (!h->used || h->armed != 1)
            continue;
        if (h->deadline_ms <= now) {
            /* Said first: the holder must not see the packets go before it can know why. */
            expired[i] = h->seq;
            (void)g_phase(i, PH_RELEASE, NULL);
            h->armed = 0;
        } else if (next < 0 || h->deadline_ms - now < next) {
            next = h->deadline_ms - now;
        }
    }
    return (int)next;
}

static void guardian_main(int sock, pid_t holder)
{
    volatile uint32_t *expired = G.expired;
    struct sigaction sa;
    sigset_t none;
    int sig, pidfd, null;

    /* Out of the holder's session (a kill of its process group does not reach us), with
     * plain signal handling (the holder's handlers are not ours to run), no terminal
     * signals and no holder fds but our own socket. */
    (void)setsid();
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    for (sig = 1; sig < NSIG; sig++)
        (void)sigaction(sig, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    (void)sigaction(SIGPIPE, &sa, NULL);
    (void)sigaction(SIGINT, &sa, NULL);
    (void)sigaction(SIGHUP, &sa, NULL);
    (void)sigaction(SIGTERM, &sa, NULL); /* a kill of every process: finish our work first */
    sigemptyset(&none);
    (void)sigprocmask(SIG_SETMASK, &none, NULL);
    (void)prctl(PR_SET_NAME, "plugqdisc-guard", 0, 0, 0);
    if (sock != 3) {
        (void)dup2(sock, 3);
        sock = 3;
    }
    if (syscall(SYS_close_range, 4U, ~0U, 0U) < 0) {
        int fd;

        for (fd = 4; fd < 4096; fd++)
            (void)close(fd);
    }
    null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        (void)dup2(null, 0);
        (void)dup2(null, 1);
        (void)dup2(null, 2);
        if (null > 3)
            (void)close(null);
    }
    (void)chdir("/");
    pidfd = (int)syscall(SYS_pidfd_open, holder, 0);
    {
        /* Nothing of the holder's is held here any more: it may go on. */
        struct g_rec ready;

        memset(&ready, 0, sizeof(ready));
        ready.type = G_READY;
        (void)send(sock, &ready, sizeof(ready), MSG_NOSIGNAL);
    }
    if (getppid() != holder) {
        /* The holder is already gone: read what it managed to send, then undo it. */
        (void)g_read(sock);
        g_undo_all(expired);
    }

    for (;;) {
        struct pollfd p[2] = { { sock, POLLIN, 0 }, { pidfd, POLLIN, 0 } };
        int timeout = g_expire(expired), dead = 0;

        if (pidfd < 0 && (timeout < 0 || timeout > 100))
            timeout = 100; /* no pidfd (old kernel): look at our parent ten times a second */
        if (poll(p, pidfd >= 0 ? 2 : 1, timeout) < 0 && errno != EINTR)
            dead = 1;
        if (p[0].revents)
            dead |= g_read(sock);
        if (pidfd >= 0 ? (p[1].revents != 0) : getppid() != holder)
            dead = 1;
        if (dead) {
            (void)g_read(sock); /* records sent just before the end still count */
            g_undo_all(expired);
        }
    }
}
