/*
 * holds_api.c - selective and ingress holds, the guardian, pq_dump and pq_remove_hold
 * against a real sch_plug (tree.c, guard.c, plan.c's tree steps, dump.c).
 *
 * Run as root on a kernel with sch_plug, prio, ingress, flower, fw, matchall, mirred and
 * ifb (e.g. inside User-Mode Linux), in a network namespace of its own with lo up and
 * nothing but the default qdisc on lo; `tc` is used to put a foreign qdisc in the way.
 * Traffic is real UDP over lo. Prints one line per check; exits 0 only if every check held.
 */
#define _GNU_SOURCE
#include "plug_qdisc.h"
#include "check.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ROOT 0xFFFFFFFFu
#define H1 0x10000u
#define H2 0x20000u
#define INGRESS_HANDLE 0xFFFF0000u   /* the ingress qdisc "ffff:" */
#define INGRESS_PARENT 0xFFFFFFF1u   /* TC_H_INGRESS */
#define MARK 0x42u

static int rx_a = -1, rx_b = -1, tx = -1, tx_mark = -1;
static int port_a, port_b;
static int lo = 1;
static char baseline[4096];   /* `tc qdisc show dev lo` before any hold */

static const char *mode_name[] = { "plain", "selective", "ingress" };

#define STEP(q) pq_step_name(pq_last_error(q)->step)

/* Run a shell command quietly; its exit status. */
static int sh(const char *cmd)
{
    char full[512];

    snprintf(full, sizeof(full), "%s >/dev/null 2>&1", cmd);
    return system(full);
}

/* The output of CMD into OUT (at most SIZE bytes, NUL-terminated). */
static void capture(const char *cmd, char *out, size_t size)
{
    FILE *f = popen(cmd, "r");
    size_t n = 0;

    out[0] = '\0';
    if (!f)
        return;
    n = fread(out, 1, size - 1, f);
    out[n] = '\0';
    pclose(f);
}

/* A UDP socket on 127.0.0.1: bound (returning its port in *PORT) if PORT is given. */
static int udp_socket(int *port)
{
    struct sockaddr_in a = { .sin_family = AF_INET };
    socklen_t alen = sizeof(a);
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s < 0 || !port)
        return s;
    if (bind(s, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(s, (struct sockaddr *)&a, &alen) < 0)
        return -1;
    *port = ntohs(a.sin_port);
    return s;
}

/* Send one 100-byte datagram numbered NUM from socket S to 127.0.0.1:PORT. */
static void send_to(int s, int port, int num)
{
    struct sockaddr_in a = { .sin_family = AF_INET };
    char buf[100];

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    memset(buf, 'x', sizeof(buf));
    snprintf(buf, sizeof(buf), "%08d", num);
    sendto(s, buf, sizeof(buf), 0, (struct sockaddr *)&a, sizeof(a));
}

/* The number of the next datagram on RX, waited for up to TIMEOUT_MS; -1 if none came. */
static int recv_one(int rx, int timeout_ms)
{
    struct pollfd p = { .fd = rx, .events = POLLIN };
    char buf[200];
    ssize_t n;

    if (poll(&p, 1, timeout_ms) <= 0)
        return -1;
    n = recv(rx, buf, sizeof(buf) - 1, 0);
    if (n <= 0)
        return -1;
    buf[n < 8 ? n : 8] = '\0';
    return atoi(buf);
}

/* Drop whatever waits on both receivers. */
static void drain_rx(void)
{
    while (recv_one(rx_a, 20) >= 0)
        ;
    while (recv_one(rx_b, 20) >= 0)
        ;
}

/* Milliseconds on the monotonic clock. */
static long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* ---- what the namespace has (pq_dump) ------------------------------------------------- */

/* The row of D for a qdisc of KIND with HANDLE on IFINDEX, NULL if there is none. */
static const struct pq_qdisc_row *find_qdisc(const struct pq_dump *d, int ifindex,
                                             const char *kind, uint32_t handle)
{
    int i;

    for (i = 0; i < d->nqdiscs; i++)
        if (d->qdiscs[i].ifindex == ifindex && strcmp(d->qdiscs[i].kind, kind) == 0 &&
            d->qdiscs[i].handle == handle)
            return &d->qdiscs[i];
    return NULL;
}

/* The link row called NAME, NULL if there is none. */
static const struct pq_link_row *find_link(const struct pq_dump *d, const char *name)
{
    int i;

    for (i = 0; i < d->nlinks; i++)
        if (strcmp(d->links[i].name, name) == 0)
            return &d->links[i];
    return NULL;
}

/* How many of our things D has: plug, prio and ingress qdiscs anywhere, ifb links. */
static int ours_in(const struct pq_dump *d)
{
    int i, n = 0;

    for (i = 0; i < d->nqdiscs; i++)
        n += strcmp(d->qdiscs[i].kind, "plug") == 0 || strcmp(d->qdiscs[i].kind, "prio") == 0 ||
             strcmp(d->qdiscs[i].kind, "ingress") == 0;
    for (i = 0; i < d->nlinks; i++)
        n += strcmp(d->links[i].kind, "ifb") == 0;
    return n;
}

/* How many of our things the namespace has now; -1 if pq_dump failed. */
static int ours_now(void)
{
    struct pq_dump d = { 0 };
    struct pq_error e;
    int n;

    if (pq_dump(-1, &d, &e) < 0)
        return -1;
    n = ours_in(&d);
    pq_dump_free(&d);
    return n;
}

/* Whether lo is as found: `tc qdisc show dev lo` as before any hold, and pq_dump shows no
 * plug, prio, ingress or ifb. Waits up to WAIT_MS for it (a guardian works on its own). */
static int as_found(int wait_ms)
{
    char now[4096];
    long end = now_ms() + wait_ms;

    for (;;) {
        capture("tc qdisc show dev lo", now, sizeof(now));
        if (strcmp(now, baseline) == 0 && ours_now() == 0)
            return 1;
        if (now_ms() >= end)
            return 0;
        usleep(20000);
    }
}

/* ---- holds ---------------------------------------------------------------------------- */

/* A UDP term for destination port PORT. */
static struct pq_term udp_port_term(int port)
{
    struct pq_term t;

    memset(&t, 0, sizeof(t));
    t.kind = PQ_TERM_FLOWER;
    t.family = AF_INET;
    t.ip_proto = IPPROTO_UDP;
    t.dport_lo = t.dport_hi = (uint16_t)port;
    return t;
}

/* A new handle on lo, root, HANDLE, holding in MODE (selective: UDP to port A), guarded
 * as asked. NULL (with a FAIL line) if a step failed. */
static struct plug_qdisc *new_hold(enum pq_mode mode, uint32_t handle, int guard,
                                   uint32_t max_hold_ms)
{
    struct pq_term t = udp_port_term(port_a);
    struct plug_qdisc *q = NULL;
    int rc;

    rc = pq_new(&q, "lo", 0, ROOT, handle, 0);
    if (rc == 0 && mode != PQ_MODE_PLAIN)
        rc = pq_set_hold(q, mode == PQ_MODE_INGRESS, mode == PQ_MODE_MATCH ? &t : NULL,
                         mode == PQ_MODE_MATCH);
    if (rc == 0)
        rc = pq_set_guard(q, guard, max_hold_ms);
    if (rc < 0) {
        check(0, "%s handle: setup -> %d", mode_name[mode], rc);
        pq_close(q);
        return NULL;
    }
    return q;
}

/* 1. A selective hold by UDP destination port, then one by mark. */
static void test_selective(void)
{
    struct pq_term t = udp_port_term(port_a);
    struct plug_qdisc *q = NULL;
    struct pq_stats st;
    int rc, got;

    rc = pq_new(&q, "lo", 0, ROOT, H1, 0);
    if (rc == 0)
        rc = pq_set_hold(q, 0, &t, 1);
    check(rc == 0, "pq_set_hold(udp dport %d) -> %d", port_a, rc);
    rc = pq_attach(q, 0);
    check(rc == 0 && pq_created(q), "selective attach -> %d (%s)", rc, STEP(q));
    if (rc)
        goto out;
    send_to(tx, port_a, 1);
    got = recv_one(rx_a, 1000);
    check(got == 1, "after attach the selected port passes (%d)", got);
    rc = pq_buffer(q);
    check(rc == 0, "buffer -> %d", rc);
    send_to(tx, port_a, 2);
    send_to(tx, port_b, 3);
    got = recv_one(rx_b, 1000);
    check(got == 3, "a datagram to another port passes while holding (%d)", got);
    got = recv_one(rx_a, 200);
    check(got == -1, "the datagram to the selected port is held (%d)", got);
    rc = pq_get_stats(q, &st);
    check(rc == 0 && st.qlen == 1 && st.backlog == 142, "stats: rc %d qlen %llu backlog %llu",
          rc, (unsigned long long)st.qlen, (unsigned long long)st.backlog);
    rc = pq_release_indefinite(q);
    got = recv_one(rx_a, 1000);
    check(rc == 0 && got == 2, "release -> %d delivers the held one (%d)", rc, got);
    rc = pq_detach(q, 1000);
    check(rc == 0 && !pq_attached(q), "detach -> %d (%s)", rc, STEP(q));
    check(as_found(0), "detach leaves lo as found (no prio fffe:, no plug)");
    send_to(tx, port_a, 4);
    got = recv_one(rx_a, 1000);
    check(got == 4, "traffic passes after detach (%d)", got);
out:
    pq_close(q);
    q = NULL;

    memset(&t, 0, sizeof(t));
    t.kind = PQ_TERM_MARK;
    t.mark = MARK;
    t.mark_mask = 0xFFFFFFFFu;
    rc = pq_new(&q, "lo", 0, ROOT, H1, 0);
    if (rc == 0)
        rc = pq_set_hold(q, 0, &t, 1);
    if (rc == 0)
        rc = pq_attach(q, 0);
    check(rc == 0, "selective attach by mark %#x -> %d (%s)", MARK, rc, q ? STEP(q) : "");
    if (rc)
        goto out2;
    rc = pq_buffer(q);
    send_to(tx_mark, port_b, 10);
    send_to(tx, port_b, 11);
    got = recv_one(rx_b, 1000);
    check(rc == 0 && got == 11, "an unmarked datagram passes while holding (%d)", got);
    got = recv_one(rx_b, 200);
    rc = pq_get_stats(q, &st);
    check(got == -1 && rc == 0 && st.qlen == 1, "the marked one is held: got %d qlen %llu",
          got, (unsigned long long)st.qlen);
    rc = pq_release_indefinite(q);
    got = recv_one(rx_b, 1000);
    check(rc == 0 && got == 10, "release -> %d delivers the marked one (%d)", rc, got);
    rc = pq_detach(q, 1000);
    check(rc == 0, "detach -> %d (%s)", rc, STEP(q));
    check(as_found(0), "detach leaves lo as found");
out2:
    pq_close(q);
}

/* 2. An ingress hold on lo: what arrives is held, released in order; detach removes the
 * ifb and the ingress qdisc. */
static void test_ingress(void)
{
    struct plug_qdisc *q = new_hold(PQ_MODE_INGRESS, H1, 0, 0);
    struct pq_stats st;
    struct pq_dump d = { 0 };
    struct pq_error e;
    char ifb[IFNAMSIZ];
    int rc, got, a1, a2, b1;

    if (!q)
        return;
    snprintf(ifb, sizeof(ifb), PQ_IFB_PREFIX "%d-1", lo);
    rc = pq_attach(q, 0);
    check(rc == 0 && pq_created(q), "ingress attach -> %d (%s)", rc, STEP(q));
    check(strcmp(pq_ifb(q), ifb) == 0 && pq_band(q) == 1,
          "the first ingress hold's ifb is %s (%s, %d)", ifb, pq_ifb(q), pq_band(q));
    if (rc)
        goto out;
    rc = pq_buffer(q);
    send_to(tx, port_a, 20);
    send_to(tx, port_b, 21);
    send_to(tx, port_a, 22);
    got = recv_one(rx_a, 200);
    check(rc == 0 && got == -1 && recv_one(rx_b, 0) == -1,
          "buffer -> %d, nothing arrives while holding (%d)", rc, got);
    rc = pq_get_stats(q, &st);
    /* At least: the ifb itself may send an IPv6 router solicitation (70 bytes) through
     * its root qdisc, our plug, once it is up (seen in UML 6.1). */
    check(rc == 0 && st.qlen >= 3 && st.backlog >= 3 * 142,
          "the plug on %s holds the 3: rc %d qlen %llu backlog %llu", ifb, rc,
          (unsigned long long)st.qlen, (unsigned long long)st.backlog);
    rc = pq_dump(-1, &d, &e);
    check(rc == 0 && find_link(&d, ifb) && strcmp(find_link(&d, ifb)->kind, "ifb") == 0 &&
          find_qdisc(&d, lo, "ingress", INGRESS_HANDLE),
          "pq_dump -> %d shows the ifb %s and lo's ingress qdisc", rc, ifb);
    pq_dump_free(&d);
    rc = pq_release_indefinite(q);
    a1 = recv_one(rx_a, 1000);
    a2 = recv_one(rx_a, 1000);
    b1 = recv_one(rx_b, 1000);
    check(rc == 0 && a1 == 20 && a2 == 22 && b1 == 21,
          "release -> %d delivers what arrived, in order (port A: %d %d, port B: %d)",
          rc, a1, a2, b1);
    rc = pq_detach(q, 1000);
    check(rc == 0 && !pq_attached(q), "detach -> %d (%s)", rc, STEP(q));
    rc = pq_dump(-1, &d, &e);
    check(rc == 0 && !find_link(&d, ifb) && !find_qdisc(&d, lo, "ingress", INGRESS_HANDLE) &&
          ours_in(&d) == 0, "after detach pq_dump -> %d shows no ifb and no ingress qdisc",
          rc);
    pq_dump_free(&d);
    check(as_found(0), "detach leaves lo as found");
    send_to(tx, port_a, 23);
    got = recv_one(rx_a, 1000);
    check(got == 23, "traffic passes after detach (%d)", got);
out:
    pq_close(q);
}

/* 4. pq_dump while a selective hold and an ingress hold exist together. */
static void test_dump(void)
{
    struct plug_qdisc *sel = new_hold(PQ_MODE_MATCH, H1, 0, 0);
    struct plug_qdisc *in = new_hold(PQ_MODE_INGRESS, H2, 0, 0);
    const struct pq_qdisc_row *r;
    const struct pq_link_row *l;
    struct pq_dump d = { 0 };
    struct pq_error e;
    char ifb[IFNAMSIZ];
    int rc, ifb_index;

    if (!sel || !in)
        goto out;
    snprintf(ifb, sizeof(ifb), PQ_IFB_PREFIX "%d-1", lo);
    rc = pq_attach(sel, 0);
    check(rc == 0, "selective attach -> %d (%s)", rc, STEP(sel));
    rc = pq_attach(in, 0);
    check(rc == 0, "ingress attach beside it -> %d (%s)", rc, STEP(in));
    rc = pq_dump(-1, &d, &e);
    check(rc == 0 && d.nqdiscs > 0 && d.nlinks > 0, "pq_dump -> %d: %d qdiscs, %d links",
          rc, d.nqdiscs, d.nlinks);
    r = find_qdisc(&d, lo, "prio", PQ_TREE_HANDLE);
    check(r && r->parent == ROOT, "prio fffe: at lo's root (parent %#x)", r ? r->parent : 0);
    r = find_qdisc(&d, lo, "plug", H1);
    check(r && r->parent == (PQ_TREE_HANDLE | 2u), "plug 1: on lo under fffe:2 (parent %#x)",
          r ? r->parent : 0);
    r = find_qdisc(&d, lo, "ingress", INGRESS_HANDLE);
    check(r && r->parent == INGRESS_PARENT, "ingress ffff: on lo (parent %#x)",
          r ? r->parent : 0);
    l = find_link(&d, ifb);
    check(l && strcmp(l->kind, "ifb") == 0 && l->ifindex > 0, "link %s of kind %s", ifb,
          l ? l->kind : "(none)");
    ifb_index = l ? l->ifindex : -1;
    check(ifb_index == (int)if_nametoindex(ifb), "its ifindex %d is the kernel's", ifb_index);
    r = find_qdisc(&d, ifb_index, "plug", H2);
    check(r && r->parent == ROOT, "plug 2: at the root of %s (parent %#x)", ifb,
          r ? r->parent : 0);
    r = find_qdisc(&d, lo, "noqueue", 0);
    check(r == NULL, "no noqueue left at lo's root while the prio is there");
    pq_dump_free(&d);
    pq_dump_free(&d);   /* a zeroed dump is fine */
    check(d.qdiscs == NULL && d.nqdiscs == 0 && d.links == NULL,
          "pq_dump_free zeroes what it freed");
    rc = pq_detach(in, 1000);
    check(rc == 0, "detach ingress -> %d (%s)", rc, STEP(in));
    rc = pq_detach(sel, 1000);
    check(rc == 0, "detach selective -> %d (%s)", rc, STEP(sel));
    check(as_found(0), "lo as found after both");
out:
    pq_close(sel);
    pq_close(in);
}

/* Fork a child that attaches in MODE on lo (guarded or not), buffers, sends one datagram
 * numbered NUM to port A, says so on a pipe and waits to be killed. The child's pid, or
 * -1 (with a FAIL line) if it did not get that far. */
static pid_t holding_child(enum pq_mode mode, int guard, int num)
{
    int fds[2];
    char c = 0;
    pid_t pid;

    if (pipe(fds) < 0)
        return -1;
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        struct plug_qdisc *q;

        close(fds[0]);
        q = new_hold(mode, H1, guard, 0);
        if (q && pq_attach(q, 0) == 0 && pq_buffer(q) == 0) {
            send_to(tx, port_a, num);
            c = 1;
        }
        if (write(fds[1], &c, 1) < 0)
            _exit(2);
        for (;;)
            pause();
    }
    close(fds[1]);
    if (pid < 0 || read(fds[0], &c, 1) != 1 || c != 1) {
        check(0, "%s child: attach + buffer + send", mode_name[mode]);
        if (pid > 0) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
        }
        close(fds[0]);
        return -1;
    }
    close(fds[0]);
    return pid;
}

/* Kill PID with SIGKILL and reap it; whether it died of it. */
static int kill_child(pid_t pid)
{
    int status = 0;

    kill(pid, SIGKILL);
    if (waitpid(pid, &status, 0) != pid)
        return 0;
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

/* 3. The guardian: a holder killed with SIGKILL, max_hold, one guardian per process. */
static void test_guardian(void)
{
    struct plug_qdisc *q, *q2;
    enum pq_mode mode;
    pid_t pid;
    long t0;
    int rc, got, gpid;

    for (mode = PQ_MODE_PLAIN; mode <= PQ_MODE_INGRESS; mode++) {
        pid = holding_child(mode, 1, 30 + (int)mode);
        if (pid < 0)
            continue;
        got = recv_one(rx_a, 100);
        check(got == -1, "%s: the child holds its datagram (%d)", mode_name[mode], got);
        check(kill_child(pid), "%s: the child died of SIGKILL", mode_name[mode]);
        got = recv_one(rx_a, 500);
        check(got == 30 + (int)mode, "%s: the guardian released it: it arrives within 0.5 s "
              "(%d)", mode_name[mode], got);
        check(as_found(2000), "%s: the guardian left lo as found", mode_name[mode]);
    }
    drain_rx();

    /* max_hold: the guardian releases a hold that lasts too long. */
    q = new_hold(PQ_MODE_PLAIN, H1, 1, 200);
    if (!q)
        return;
    rc = pq_attach(q, 0);
    gpid = pq_guardian_pid();
    check(rc == 0 && gpid > 0, "guarded attach (max_hold 200 ms) -> %d, guardian pid %d", rc,
          gpid);
    check(pq_hold_expired(q) == 0, "not expired before buffering");
    rc = pq_buffer(q);
    t0 = now_ms();
    send_to(tx, port_a, 40);
    got = recv_one(rx_a, 2000);
    check(rc == 0 && got == 40, "buffer -> %d, the datagram arrives without a release (%d, "
          "after %ld ms)", rc, got, now_ms() - t0);
    while (!pq_hold_expired(q) && now_ms() - t0 < 2000)
        usleep(10000);
    check(pq_hold_expired(q) == 1, "pq_hold_expired -> %d", pq_hold_expired(q));

    /* A second guarded hold goes to the same guardian. */
    q2 = new_hold(PQ_MODE_INGRESS, H2, 1, 0);
    rc = q2 ? pq_attach(q2, 0) : -1;
    check(rc == 0 && pq_guardian_pid() == gpid, "a second guarded hold -> %d, guardian %d "
          "(was %d)", rc, pq_guardian_pid(), gpid);
    rc = pq_detach(q2, 1000);
    check(rc == 0, "detach the second -> %d", rc);
    rc = pq_detach(q, 1000);
    check(rc == 0, "detach the first -> %d (%s)", rc, STEP(q));
    check(pq_guardian_pid() == gpid && kill(gpid, 0) == 0,
          "the guardian %d stays after every hold is detached (%d)", gpid, pq_guardian_pid());
    check(as_found(0), "lo as found");
    pq_close(q2);
    pq_close(q);
}

/* 5. pq_remove_hold on what a child killed unguarded left behind; its errors. */
static void test_remove_hold(void)
{
    struct pq_error e;
    enum pq_mode mode;
    pid_t pid;
    int rc, got, num;

    for (mode = PQ_MODE_PLAIN; mode <= PQ_MODE_INGRESS; mode++) {
        num = 50 + (int)mode;
        pid = holding_child(mode, 0, num);
        if (pid < 0)
            continue;
        check(kill_child(pid), "%s: the unguarded child died of SIGKILL", mode_name[mode]);
        got = recv_one(rx_a, 200);
        check(got == -1 && ours_now() > 0, "%s: its hold stays behind, holding (%d, %d of "
              "ours)", mode_name[mode], got, ours_now());
        memset(&e, 0x55, sizeof(e));
        rc = pq_remove_hold(-1, lo, mode, ROOT, H1, 1000, &e);
        check(rc == 0 && e.err == 0 && e.step == PQ_STEP_NONE,
              "%s: pq_remove_hold -> %d (%s, kernel: %s)", mode_name[mode], rc,
              pq_step_name(e.step), e.kernel);
        got = recv_one(rx_a, 1000);
        check(got == num, "%s: the held datagram arrives (%d)", mode_name[mode], got);
        check(ours_now() == 0 && as_found(0), "%s: nothing of the hold is left",
              mode_name[mode]);
    }
    rc = pq_remove_hold(-1, lo, (enum pq_mode)3, ROOT, H1, 100, &e);
    check(rc == -EINVAL && e.err == EINVAL && e.step == PQ_STEP_ARGS,
          "pq_remove_hold(mode 3) -> %d at %s", rc, pq_step_name(e.step));
    rc = pq_remove_hold(-1, lo, (enum pq_mode)-1, ROOT, H1, 100, &e);
    check(rc == -EINVAL && e.step == PQ_STEP_ARGS, "pq_remove_hold(mode -1) -> %d at %s", rc,
          pq_step_name(e.step));
    rc = pq_remove_hold(-1, 0, PQ_MODE_PLAIN, ROOT, H1, 100, &e);
    check(rc == -EINVAL && e.step == PQ_STEP_ARGS, "pq_remove_hold(ifindex 0) -> %d at %s", rc,
          pq_step_name(e.step));
}

/* 6. tree.c's refusals: a bad term; a foreign qdisc at the root. */
static void test_tree_errors(void)
{
    struct pq_term t = udp_port_term(port_a);
    struct plug_qdisc *q = NULL;
    const struct pq_error *e;
    int rc;

    rc = pq_new(&q, "lo", 0, ROOT, H1, 0);
    if (rc)
        return;
    t.family = AF_UNIX;
    rc = pq_set_hold(q, 0, &t, 1);
    check(rc == -EINVAL && strcmp(STEP(q), "check_arguments") == 0,
          "a term of family AF_UNIX -> %d at %s", rc, STEP(q));
    t = udp_port_term(port_a);
    rc = pq_set_hold(q, 0, &t, 1);
    check(rc == 0, "the same term with AF_INET -> %d", rc);

    sh("tc qdisc add dev lo root handle 5: pfifo");
    rc = pq_attach(q, 0);
    e = pq_last_error(q);
    check(rc == -EEXIST && e->step == PQ_STEP_OCCUPIED && strcmp(STEP(q), "occupied") == 0 &&
          !pq_attached(q), "selective attach over pfifo 5: -> %d at %s", rc, STEP(q));
    check(strcmp(e->found_kind, "pfifo") == 0 && e->found_handle == 0x50000u,
          "the error names pfifo 5: (%s %#x)", e->found_kind, e->found_handle);
    rc = pq_attach(q, 1);
    check(rc == 0 && pq_attached(q) && pq_last_error(q)->err == 0,
          "selective attach with replace -> %d (%s)", rc, STEP(q));
    rc = pq_detach(q, 1000);
    check(rc == 0, "detach -> %d (%s)", rc, STEP(q));
    check(as_found(0), "lo has its default again");
    sh("tc qdisc del dev lo root");
    pq_close(q);
}

int main(void)
{
    int mark = MARK;

    setvbuf(stdout, NULL, _IOLBF, 0);
    rx_a = udp_socket(&port_a);
    rx_b = udp_socket(&port_b);
    tx = udp_socket(NULL);
    tx_mark = udp_socket(NULL);
    if (rx_a < 0 || rx_b < 0 || tx < 0 || tx_mark < 0 ||
        setsockopt(tx_mark, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0) {
        perror("udp");
        return 1;
    }
    lo = (int)if_nametoindex("lo");
    capture("tc qdisc show dev lo", baseline, sizeof(baseline));
    check(ours_now() == 0, "the namespace starts with no plug, prio, ingress or ifb");
    check(pq_guardian_pid() == 0, "no guardian before the first guarded attach (%d)",
          pq_guardian_pid());
    printf("-- selective\n");
    test_selective();
    drain_rx();
    printf("-- ingress\n");
    test_ingress();
    drain_rx();
    printf("-- dump\n");
    test_dump();
    drain_rx();
    printf("-- guardian\n");
    test_guardian();
    drain_rx();
    printf("-- remove_hold\n");
    test_remove_hold();
    drain_rx();
    printf("-- tree errors\n");
    test_tree_errors();
    printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
