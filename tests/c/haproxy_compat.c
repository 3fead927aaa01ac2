/*
 * haproxy_compat.c - the three HAProxy-compatible functions against a real sch_plug.
 *
 * Run as root on a kernel with sch_plug (e.g. inside User-Mode Linux), with lo up.
 * Uses only plug_qdisc_attach, plug_qdisc_plug_buffer and
 * plug_qdisc_release_indefinite_buffer. Prints one line per check; exits 0 only if every
 * check held.
 */
#define _GNU_SOURCE
#include "plug_qdisc.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define NMSG 5

static int failures;

/* Print one check's outcome and count failures. */
static void check(int ok, const char *what, int rc)
{
    printf("%s: %s (rc=%d)\n", ok ? "ok" : "FAIL", what, rc);
    if (!ok)
        failures++;
}

/* Wait up to TIMEOUT_MS for one datagram; its sequence number in *seq. 1, 0 if none. */
static int recv_one(int fd, int timeout_ms, int *seq)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    char buf[256];
    ssize_t n;

    if (poll(&p, 1, timeout_ms) <= 0)
        return 0;
    n = recv(fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    return sscanf(buf, "msg-%d", seq) == 1;
}

int main(void)
{
    struct sockaddr_in addr;
    socklen_t alen = sizeof(addr);
    int rx, tx, rc, i, seq, got, in_order;
    char buf[64];

    setvbuf(stdout, NULL, _IOLBF, 0);

    rc = plug_qdisc_plug_buffer();
    check(rc < 0, "plug_qdisc_plug_buffer before attach fails", rc);

    rc = plug_qdisc_attach("nosuchdev0", "root", "1:", 0);
    check(rc < 0, "plug_qdisc_attach on nosuchdev0 fails and we keep going", rc);

    rc = plug_qdisc_attach("lo", "root", "1:", 0);
    check(rc == 0, "plug_qdisc_attach on lo (root, 1:, limit 0)", rc);
    if (rc != 0) {
        printf("cannot go on without the qdisc\n");
        return 1;
    }

    rx = socket(AF_INET, SOCK_DGRAM, 0);
    tx = socket(AF_INET, SOCK_DGRAM, 0);
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (rx < 0 || tx < 0 || bind(rx, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
        getsockname(rx, (struct sockaddr *)&addr, &alen) < 0) {
        perror("udp socket");
        return 1;
    }

    rc = plug_qdisc_plug_buffer();
    check(rc == 0, "plug_qdisc_plug_buffer", rc);

    for (i = 0; i < NMSG; i++) {
        int len = snprintf(buf, sizeof(buf), "msg-%d", i);

        if (sendto(tx, buf, (size_t)len, 0, (struct sockaddr *)&addr, sizeof(addr)) != len)
            perror("sendto");
    }
    got = recv_one(rx, 300, &seq);
    check(!got, "datagrams sent while buffering do not arrive", got);

    rc = plug_qdisc_release_indefinite_buffer();
    check(rc == 0, "plug_qdisc_release_indefinite_buffer", rc);

    got = 0;
    in_order = 1;
    while (got < NMSG && recv_one(rx, 1000, &seq)) {
        if (seq != got)
            in_order = 0;
        got++;
    }
    check(got == NMSG, "all datagrams arrive after release", got);
    check(in_order, "in order", in_order);

    /* Traffic keeps passing after the release. */
    snprintf(buf, sizeof(buf), "msg-%d", NMSG);
    sendto(tx, buf, strlen(buf), 0, (struct sockaddr *)&addr, sizeof(addr));
    got = recv_one(rx, 1000, &seq);
    check(got && seq == NMSG, "a datagram sent after the release arrives", got);

    close(rx);
    close(tx);
    printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
