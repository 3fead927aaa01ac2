/*
 * handle_api.c - the pq_* handle API against a real sch_plug.
 *
 * Run as root on a kernel with sch_plug (e.g. inside User-Mode Linux), with lo up and
 * nothing but the default qdisc on lo; `tc` is used to change the qdisc behind the
 * library's back. With the argument --no-plug it only checks what a kernel without
 * sch_plug does (attach -> -ENOENT with the kernel's text); that mode is safe on a host.
 * Prints one line per check; exits 0 only if every check held.
 */
#define _GNU_SOURCE
#include "plug_qdisc.h"
#include "check.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define ROOT 0xFFFFFFFFu
#define H1 0x10000u
#define H2 0x20000u


/* The step of Q's last failure, and its name and the kernel's text for the report. */
static enum pq_step step_of(const struct plug_qdisc *q)
{
    return pq_last_error(q)->step;
}
#define STEP(q) pq_step_name(step_of(q))
#define KTEXT(q) (pq_last_error(q)->kernel)
static int rx = -1, tx = -1;
static struct sockaddr_in dst;

/* A bound UDP receiver on 127.0.0.1 and a sender. 0 or -1. */
static int udp_setup(void)
{
    socklen_t alen = sizeof(dst);

    rx = socket(AF_INET, SOCK_DGRAM, 0);
    tx = socket(AF_INET, SOCK_DGRAM, 0);
    memset(&dst, 0, sizeof(dst));
    dst.sin_family = AF_INET;
    dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (rx < 0 || tx < 0 || bind(rx, (struct sockaddr *)&dst, sizeof(dst)) < 0 ||
        getsockname(rx, (struct sockaddr *)&dst, &alen) < 0)
        return -1;
    return 0;
}

/* Send N datagrams of SIZE payload bytes numbered from FIRST. */
static void send_n(int n, int size, int first)
{
    char buf[2048];
    int i;

    for (i = 0; i < n; i++) {
        memset(buf, 'x', sizeof(buf));
        snprintf(buf, sizeof(buf), "%08d", first + i);
        sendto(tx, buf, (size_t)size, 0, (struct sockaddr *)&dst, sizeof(dst));
    }
}

/* Receive datagrams (up to MAX, each waited for up to TIMEOUT_MS) and check that they are
 * numbered FIRST, FIRST+1, ... Returns how many arrived, or -1 if out of order. */
static int recv_n(int max, int timeout_ms, int first)
{
    struct pollfd p = { .fd = rx, .events = POLLIN };
    char buf[2048];
    int got = 0, order = 1;

    while (got < max && poll(&p, 1, timeout_ms) > 0) {
        ssize_t n = recv(rx, buf, sizeof(buf) - 1, 0);

        if (n <= 0)
            break;
        buf[n < 8 ? n : 8] = '\0';
        if (atoi(buf) != first + got)
            order = 0;
        got++;
    }
    return order ? got : -1;
}

/* Drop whatever is waiting on the receiver. */
static void drain_rx(void)
{
    while (recv_n(1000, 50, -1000000) != 0)
        ;
}

/* Inode of the calling thread's network namespace. */
static ino_t netns_ino(void)
{
    struct stat st;

    if (stat("/proc/thread-self/ns/net", &st) < 0)
        return 0;
    return st.st_ino;
}

/* Run a shell command quietly; its exit status. */
static int sh(const char *cmd)
{
    char full[512];

    snprintf(full, sizeof(full), "%s >/dev/null 2>&1", cmd);
    return system(full);
}

/* pq_parse_handle: the accepted forms and the rejected ones. */
static void test_parse(void)
{
    static const struct { const char *text; int rc; uint32_t val; } cases[] = {
        { "root", 0, 0xFFFFFFFFu }, { "none", 0, 0 }, { "1:", 0, 0x10000 },
        { "1:2", 0, 0x10002 }, { "ffff:ffff", 0, 0xFFFFFFFF }, { "abcd:", 0, 0xABCD0000 },
        { "A:b", 0, 0xA000B }, { "0:", 0, 0 }, { "10000:", -EINVAL, 0 },
        { "1:10000", -EINVAL, 0 }, { "1:2:3", -EINVAL, 0 }, { "zz", -EINVAL, 0 },
        { "", -EINVAL, 0 }, { ":", -EINVAL, 0 }, { "1", -EINVAL, 0 }, { " 1:", -EINVAL, 0 },
        { "0x1:", -EINVAL, 0 }, { ":1", -EINVAL, 0 }, { "1: ", -EINVAL, 0 },
        { "-1:", -EINVAL, 0 }, { "ROOT", -EINVAL, 0 },
    };
    uint32_t v;
    size_t i;
    int rc;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        v = 0xDEADBEEF;
        rc = pq_parse_handle(cases[i].text, &v);
        check(rc == cases[i].rc && (rc < 0 || v == cases[i].val),
              "pq_parse_handle(\"%s\") -> rc %d value %#x", cases[i].text, rc, v);
    }
    rc = pq_parse_handle(NULL, &v);
    check(rc == -EINVAL, "pq_parse_handle(NULL) -> %d", rc);
}

/* pq_open: errors, the default limit on lo, and calls refused before attach. */
static void test_open(void)
{
    struct plug_qdisc *q = NULL;
    int rc;

    rc = pq_open(&q, "nosuchdev0", 0, ROOT, H1, 0, -1);
    check(rc == -ENODEV && q == NULL, "pq_open(nosuchdev0) -> %d", rc);
    rc = pq_open(&q, NULL, 0, ROOT, H1, 0, -1);
    check(rc == -EINVAL, "pq_open(NULL, 0) -> %d", rc);
    rc = pq_open(&q, "abcdefghijklmnop", 0, ROOT, H1, 0, -1);
    check(rc == -EINVAL, "pq_open(16-char name) -> %d", rc);
    rc = pq_open(&q, NULL, 999999, ROOT, H1, 0, -1);
    check(rc == -ENODEV, "pq_open(ifindex 999999) -> %d", rc);

    rc = pq_open(&q, "lo", 0, ROOT, H1, 0, -1);
    check(rc == 0, "pq_open(lo) -> %d", rc);
    if (rc == 0) {
        check(pq_limit(q) == 65550000u, "default limit on lo is %u", pq_limit(q));
        check(pq_ifindex(q) == 1 && strcmp(pq_device(q), "lo") == 0,
              "lo is ifindex %d name %s", pq_ifindex(q), pq_device(q));
        check(!pq_attached(q) && !pq_is_buffering(q), "a new handle is not attached");
        rc = pq_buffer(q);
        check(rc == -ENOTCONN && step_of(q) == PQ_STEP_STATE,
              "pq_buffer before attach -> %d at %s", rc, STEP(q));
        rc = pq_set_limit(q, 1000);
        check(rc == -ENOTCONN, "pq_set_limit before attach -> %d", rc);
        rc = pq_detach(q, 10);
        check(rc == -ENOTCONN, "pq_detach before attach -> %d", rc);
        pq_close(q);
    }
    rc = pq_open(&q, NULL, 1, ROOT, H1, 0, -1);
    check(rc == 0 && strcmp(pq_device(q), "lo") == 0, "pq_open(ifindex 1) -> %d, name %s",
          rc, rc == 0 ? pq_device(q) : "?");
    pq_close(q);
    pq_close(NULL);

    /* pq_new does no I/O; the failure of the first attach keeps its step and facts. */
    rc = pq_new(&q, "nosuchdev0", 0, ROOT, H1, 0);
    check(rc == 0 && !pq_connected(q) && pq_ifindex(q) == 0, "pq_new(nosuchdev0) -> %d", rc);
    if (rc == 0) {
        rc = pq_attach(q, 0);
        check(rc == -ENODEV && step_of(q) == PQ_STEP_DEVICE && pq_last_error(q)->err == ENODEV,
              "attach nosuchdev0 -> %d at %s", rc, STEP(q));
        pq_close(q);
    }
    rc = pq_new(&q, "lo", 0, 0x10001, H2, 0);
    if (rc == 0) {
        rc = pq_attach(q, 0);
        check(rc == -ENOENT && step_of(q) == PQ_STEP_PARENT,
              "attach at the missing parent 1:1 -> %d at %s (kernel: %s)", rc, STEP(q),
              KTEXT(q));
        rc = pq_set_netns(q, 0);
        check(rc == -EISCONN, "pq_set_netns after connect -> %d", rc);
        pq_close(q);
    }
}

/* The main sequence: attach, buffer, epochs, release, adopt, -EEXIST, detach. */
static void test_epochs(void)
{
    struct plug_qdisc *q = NULL, *q2 = NULL, *q3 = NULL;
    struct pq_stats st;
    int rc, n;

    rc = pq_open(&q, "lo", 0, ROOT, H1, 0, -1);
    check(rc == 0, "open lo 1: -> %d", rc);
    if (rc)
        return;
    rc = pq_attach(q, 0);
    check(rc == 0 && pq_created(q) == 1 && pq_attached(q) == 1 && !pq_is_buffering(q),
          "attach -> %d created %d (%s)", rc, pq_created(q), STEP(q));
    if (rc)
        goto out;
    send_n(1, 100, 0);
    n = recv_n(1, 1000, 0);
    check(n == 1, "after attach traffic passes (%d)", n);

    rc = pq_buffer(q);
    check(rc == 0 && pq_is_buffering(q), "buffer -> %d", rc);
    send_n(5, 100, 1);
    rc = pq_get_stats(q, &st);
    check(rc == 0 && st.qlen == 5 && st.backlog == 710,
          "5 datagrams of 100 bytes held: rc %d qlen %llu backlog %llu", rc,
          (unsigned long long)st.qlen, (unsigned long long)st.backlog);
    n = recv_n(5, 200, 1);
    check(n == 0, "nothing arrives while buffering (%d)", n);

    rc = pq_release_one(q);
    check(rc == 0 && pq_is_buffering(q), "release_one -> %d", rc);
    n = recv_n(5, 200, 1);
    rc = pq_get_stats(q, &st);
    check(n == 0 && rc == 0 && st.qlen == 5,
          "release_one released nothing (the previous epoch was empty): got %d qlen %llu",
          n, (unsigned long long)st.qlen);

    rc = pq_buffer(q);
    check(rc == 0, "buffer again -> %d", rc);
    rc = pq_release_one(q);
    check(rc == 0, "release_one -> %d", rc);
    n = recv_n(5, 1000, 1);
    check(n == 5, "release_one released the 5, in order (%d)", n);
    rc = pq_get_stats(q, &st);
    check(rc == 0 && st.qlen == 0 && st.backlog == 0 && st.packets >= 6,
          "after release_one qlen %llu backlog %llu packets %llu", (unsigned long long)st.qlen,
          (unsigned long long)st.backlog, (unsigned long long)st.packets);

    send_n(2, 100, 6);
    n = recv_n(2, 200, 6);
    check(n == 0 && pq_is_buffering(q), "still holding after release_one (%d)", n);
    rc = pq_release_indefinite(q);
    check(rc == 0 && !pq_is_buffering(q), "release_indefinite -> %d", rc);
    n = recv_n(2, 1000, 6);
    check(n == 2, "the held 2 arrive (%d)", n);
    send_n(1, 100, 8);
    n = recv_n(1, 1000, 8);
    check(n == 1, "traffic passes (%d)", n);

    rc = pq_open(&q2, "lo", 0, ROOT, H1, 0, -1);
    if (rc == 0)
        rc = pq_attach(q2, 0);
    check(rc == 0 && pq_created(q2) == 0 && pq_attached(q2),
          "a second handle at the same place adopts: rc %d created %d", rc, pq_created(q2));
    pq_close(q2);

    rc = pq_open(&q3, "lo", 0, ROOT, H2, 0, -1);
    if (rc == 0)
        rc = pq_attach(q3, 0);
    check(rc == -EEXIST && !pq_attached(q3) && step_of(q3) == PQ_STEP_OCCUPIED,
          "handle 2: -> %d at %s", rc, STEP(q3));
    check(strcmp(pq_last_error(q3)->found_kind, "plug") == 0 &&
          pq_last_error(q3)->found_handle == H1, "the error names the plug qdisc 1: (%s %#x)",
          pq_last_error(q3)->found_kind, pq_last_error(q3)->found_handle);
    pq_close(q3);

    rc = pq_get_stats(q, &st);
    check(rc == 0, "the first handle still works after another closed -> %d", rc);

    rc = pq_detach(q, 1000);
    check(rc == 0 && !pq_attached(q), "detach -> %d (%s)", rc, STEP(q));
    rc = pq_get_stats(q, &st);
    check(rc == -ENOENT && step_of(q) == PQ_STEP_STATS &&
          strcmp(pq_last_error(q)->found_kind, "noqueue") == 0 &&
          pq_last_error(q)->found_handle == 0,
          "stats after detach -> %d at %s, found '%s' (lo's default)", rc, STEP(q),
          pq_last_error(q)->found_kind);
    rc = pq_buffer(q);
    check(rc == -ENOTCONN, "buffer after detach -> %d", rc);
    send_n(1, 100, 9);
    n = recv_n(1, 1000, 9);
    check(n == 1, "traffic passes after detach (%d)", n);
out:
    pq_close(q);
}

/* A 300-byte limit holds 2 datagrams of 142 bytes (on lo) and drops the next 3. */
static void test_limit(void)
{
    struct plug_qdisc *q = NULL, *q2 = NULL;
    struct pq_stats st;
    int rc, n;

    rc = pq_open(&q, "lo", 0, ROOT, H1, 300, -1);
    check(rc == 0 && pq_limit(q) == 300, "open with limit 300 -> %d", rc);
    if (rc)
        return;
    rc = pq_attach(q, 0);
    check(rc == 0 && pq_created(q), "attach -> %d", rc);
    rc = pq_buffer(q);
    send_n(5, 100, 100);
    rc = pq_get_stats(q, &st);
    check(rc == 0 && st.qlen == 2 && st.backlog == 284 && st.drops == 3,
          "limit 300: qlen %llu backlog %llu drops %llu", (unsigned long long)st.qlen,
          (unsigned long long)st.backlog, (unsigned long long)st.drops);
    rc = pq_release_indefinite(q);
    n = recv_n(5, 500, 100);
    check(rc == 0 && n == 2, "release -> %d, the 2 held arrive (%d)", rc, n);

    /* Adopting with an explicit limit sends it; then a bigger limit holds all 5. */
    rc = pq_open(&q2, "lo", 0, ROOT, H1, 1000, -1);
    if (rc == 0)
        rc = pq_attach(q2, 0);
    check(rc == 0 && !pq_created(q2) && pq_limit(q2) == 1000, "adopt with limit 1000 -> %d", rc);
    rc = pq_buffer(q);
    send_n(5, 100, 200);
    rc = pq_get_stats(q, &st);
    check(rc == 0 && st.qlen == 5 && st.drops == 3, "limit 1000 holds 5: qlen %llu drops %llu",
          (unsigned long long)st.qlen, (unsigned long long)st.drops);
    rc = pq_set_limit(q, 200);
    check(rc == 0 && pq_limit(q) == 200, "set_limit 200 -> %d", rc);
    send_n(1, 100, 205);
    rc = pq_get_stats(q, &st);
    check(rc == 0 && st.qlen == 5 && st.drops == 4, "over the new limit: qlen %llu drops %llu",
          (unsigned long long)st.qlen, (unsigned long long)st.drops);
    rc = pq_set_limit(q, 0);
    check(rc == 0 && pq_limit(q) == 65550000u, "set_limit 0 -> the default (%u)", pq_limit(q));
    /* The adopter leaves first: the creator still holds with the plug, which stays as it
     * is (nothing released); the last one out releases and removes it. */
    rc = pq_detach(q2, 1000);
    n = recv_n(5, 300, 200);
    check(rc == 0 && n == 0 && !pq_attached(q2),
          "the adopter's detach -> %d, the creator still holds the 5 (%d arrive)", rc, n);
    rc = pq_get_stats(q, &st);
    check(rc == 0 && st.qlen == 5, "the plug is still there, holding (qlen %llu)",
          (unsigned long long)st.qlen);
    rc = pq_detach(q, 1000);   /* detach releases first: nothing is lost */
    n = recv_n(5, 1000, 200);
    check(rc == 0 && n == 5, "the last one's detach -> %d, the 5 held arrive (%d)", rc, n);
    pq_close(q2);
    pq_close(q);
}

/* The qdisc changed behind our back: deleted, or another qdisc in the way. */
static void test_behind_back(void)
{
    struct plug_qdisc *q = NULL;
    struct pq_stats st;
    int rc, n;

    rc = pq_open(&q, "lo", 0, ROOT, H1, 0, -1);
    if (rc == 0)
        rc = pq_attach(q, 0);
    check(rc == 0, "attach -> %d", rc);
    if (rc)
        goto out;
    sh("tc qdisc del dev lo root");
    rc = pq_buffer(q);
    check((rc == -ENOENT || rc == -EINVAL) && step_of(q) == PQ_STEP_CHANGE,
          "buffer after tc deleted it -> %d at %s (kernel: %s)", rc, STEP(q), KTEXT(q));
    check(pq_last_error(q)->err == -rc, "the error record has the errno");
    rc = pq_get_stats(q, &st);
    check(rc == -ENOENT && step_of(q) == PQ_STEP_STATS, "stats -> %d at %s", rc, STEP(q));
    rc = pq_detach(q, 100);
    check(rc == -ENOENT && !pq_attached(q), "detach -> %d, attached %d", rc, pq_attached(q));

    sh("tc qdisc add dev lo root handle 5: pfifo");
    rc = pq_attach(q, 0);
    check(rc == -EEXIST && !pq_attached(q) && step_of(q) == PQ_STEP_OCCUPIED,
          "attach over pfifo 5: -> %d at %s", rc, STEP(q));
    check(strcmp(pq_last_error(q)->found_kind, "pfifo") == 0 &&
          pq_last_error(q)->found_handle == 0x50000u, "found pfifo 5: (%s %#x)",
          pq_last_error(q)->found_kind, pq_last_error(q)->found_handle);
    rc = pq_buffer(q);
    check(rc == -ENOTCONN && step_of(q) == PQ_STEP_STATE && pq_last_error(q)->attach_err ==
          EEXIST && pq_last_error(q)->attach_step == PQ_STEP_OCCUPIED,
          "buffer after the failed attach -> %d, and the attach's errno %d at %s", rc,
          pq_last_error(q)->attach_err, pq_step_name(pq_last_error(q)->attach_step));
    rc = pq_attach(q, 1);
    check(rc == 0 && pq_created(q) && pq_attached(q) && pq_last_error(q)->err == 0,
          "attach(replace) -> %d at %s", rc, STEP(q));
    rc = pq_get_stats(q, &st);
    check(rc == 0, "stats of the replacement -> %d", rc);
    send_n(1, 100, 300);
    n = recv_n(1, 1000, 300);
    check(n == 1, "traffic passes (%d)", n);
    rc = pq_detach(q, 1000);
    check(rc == 0, "detach -> %d", rc);
out:
    pq_close(q);
}

/* Another qdisc took our place: the change fails with the kernel's errno. */
static void test_replaced(void)
{
    struct plug_qdisc *q = NULL;
    int rc;

    rc = pq_open(&q, "lo", 0, ROOT, H1, 0, -1);
    if (rc == 0)
        rc = pq_attach(q, 0);
    check(rc == 0, "attach -> %d", rc);
    if (rc)
        goto out;
    sh("tc qdisc replace dev lo root handle 5: pfifo");
    rc = pq_buffer(q);
    check(rc < 0 && step_of(q) == PQ_STEP_CHANGE, "buffer after tc replaced it by pfifo 5: "
          "-> %d at %s", rc, STEP(q));
    rc = pq_detach(q, 100);
    check(rc == -ENOENT && !pq_attached(q) && step_of(q) == PQ_STEP_STATS &&
          strcmp(pq_last_error(q)->found_kind, "pfifo") == 0,
          "detach -> %d at %s, found %s", rc, STEP(q), pq_last_error(q)->found_kind);
    sh("tc qdisc del dev lo root");
out:
    pq_close(q);
}

/* A plug qdisc under a class of prio 1: (needs sch_prio). */
static void test_class_parent(void)
{
    struct plug_qdisc *q = NULL;
    struct pq_stats st;
    int rc, n;

    if (sh("tc qdisc add dev lo root handle 1: prio") != 0) {
        printf("skip: no prio qdisc\n");
        return;
    }
    rc = pq_open(&q, "lo", 0, 0x10001, 0x100000, 0, -1);
    if (rc == 0)
        rc = pq_attach(q, 0);
    check(rc == 0 || rc == -EEXIST, "attach 10: at 1:1 without replace -> %d created %d (%s)",
          rc, pq_created(q), STEP(q));
    if (rc == -EEXIST) {
        rc = pq_attach(q, 1);
        check(rc == 0, "attach 10: at 1:1 with replace -> %d (%s)", rc, STEP(q));
    }
    /* prio's default priomap sends normal traffic to band 2 (class 1:2); TOS 0x10
     * (lowdelay) goes to band 1 (class 1:1). */
    rc = pq_buffer(q);
    {
        int tos = 0x10;

        setsockopt(tx, IPPROTO_IP, IP_TOS, &tos, sizeof(tos));
        send_n(3, 100, 400);
        tos = 0;
        setsockopt(tx, IPPROTO_IP, IP_TOS, &tos, sizeof(tos));
    }
    n = recv_n(3, 200, 400);
    rc = pq_get_stats(q, &st);
    check(rc == 0 && n == 0 && st.qlen == 3, "held under 1:1: got %d qlen %llu", n,
          (unsigned long long)st.qlen);
    rc = pq_detach(q, 1000);
    n = recv_n(3, 1000, 400);
    check(rc == 0 && n == 3, "detach -> %d, the 3 arrive (%d)", rc, n);
    sh("tc qdisc del dev lo root");
    pq_close(q);
}

/* A child after fork() uses the handle with a socket of its own. */
static void test_fork(void)
{
    struct plug_qdisc *q = NULL;
    struct pq_stats st;
    int rc, status = -1;
    pid_t pid;

    rc = pq_open(&q, "lo", 0, ROOT, H1, 0, -1);
    if (rc == 0)
        rc = pq_attach(q, 0);
    check(rc == 0, "attach -> %d", rc);
    if (rc)
        goto out;
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        int bad = 0;

        bad |= pq_get_stats(q, &st) != 0;
        bad |= pq_buffer(q) != 0;
        bad |= pq_release_indefinite(q) != 0;
        pq_close(q);
        _exit(bad);
    }
    waitpid(pid, &status, 0);
    check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child used the handle (%#x)",
          status);
    rc = pq_get_stats(q, &st);
    check(rc == 0, "the parent's socket still works after the child closed -> %d", rc);
    rc = pq_detach(q, 1000);
    check(rc == 0, "detach -> %d", rc);
out:
    pq_close(q);
}

/* A handle in another network namespace; the calling thread stays where it is. */
static void test_netns(void)
{
    struct plug_qdisc *q = NULL, *here = NULL;
    struct pq_stats st;
    ino_t before;
    int orig, other, rc;

    before = netns_ino();
    orig = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (orig < 0 || unshare(CLONE_NEWNET) < 0) {
        check(0, "unshare(CLONE_NEWNET): %s", strerror(errno));
        return;
    }
    other = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (setns(orig, CLONE_NEWNET) < 0 || netns_ino() != before) {
        check(0, "back to the original namespace: %s", strerror(errno));
        return;
    }
    close(orig);

    rc = pq_open(&q, "lo", 0, ROOT, H1, 0, other);
    close(other);   /* the handle keeps its own copy */
    check(rc == 0 && netns_ino() == before, "open lo in another netns -> %d, thread unmoved", rc);
    if (rc)
        return;
    rc = pq_attach(q, 0);
    check(rc == 0 && pq_created(q) && netns_ino() == before,
          "attach there -> %d (%s)", rc, STEP(q));
    rc = pq_get_stats(q, &st);
    check(rc == 0, "stats there -> %d", rc);
    rc = pq_open(&here, "lo", 0, ROOT, H1, 0, -1);
    if (rc == 0)
        rc = pq_get_stats(here, &st);
    check(rc == -ENOENT, "no plug on this namespace's lo -> %d", rc);
    pq_close(here);
    rc = pq_detach(q, 1000);
    check(rc == 0 && netns_ino() == before, "detach there -> %d", rc);
    pq_close(q);
}

/* On a kernel without sch_plug, attach fails with the kernel's ENOENT and its text. */
static int test_no_plug(void)
{
    struct plug_qdisc *q = NULL;
    int rc;

    rc = pq_open(&q, "lo", 0, ROOT, H1, 0, -1);
    check(rc == 0, "open lo -> %d", rc);
    if (rc)
        return 1;
    rc = pq_attach(q, 0);
    check(rc == -ENOENT && !pq_attached(q) && step_of(q) == PQ_STEP_CREATE,
          "attach -> %d at %s", rc, STEP(q));
    check(KTEXT(q)[0] != '\0', "the kernel's text is kept: %s", KTEXT(q));
    pq_close(q);
    printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && strcmp(argv[1], "--no-plug") == 0)
        return test_no_plug();
    if (udp_setup() < 0) {
        perror("udp");
        return 1;
    }
    printf("-- parse\n");
    test_parse();
    printf("-- open\n");
    test_open();
    printf("-- epochs\n");
    test_epochs();
    drain_rx();
    printf("-- limit\n");
    test_limit();
    drain_rx();
    printf("-- behind our back\n");
    test_behind_back();
    drain_rx();
    printf("-- replaced\n");
    test_replaced();
    drain_rx();
    printf("-- class parent\n");
    test_class_parent();
    drain_rx();
    printf("-- fork\n");
    test_fork();
    printf("-- netns\n");
    test_netns();
    printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
