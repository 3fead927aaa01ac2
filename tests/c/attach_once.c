/*
 * attach_once.c - one guarded attach of a hold, then hold until killed.
 *
 * For tests that kill the holder at each point of its attach (strace's syscall fault
 * injection): `attach_once MODE DEVICE [RECORD]`, MODE plain, match or ingress. With
 * RECORD (an existing file), the hold's plan is to unlink it once undone. Prints
 * "attached" and buffers; exits 1 (with the errno) if attach fails.
 */
#define _GNU_SOURCE
#include "plug_qdisc.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    struct pq_term udp;
    struct plug_qdisc *q;
    int err;

    if (argc < 3)
        return 2;
    memset(&udp, 0, sizeof(udp));
    udp.kind = PQ_TERM_FLOWER;
    udp.family = AF_INET;
    udp.ip_proto = IPPROTO_UDP;
    if (pq_new(&q, argv[2], 0, 0xFFFFFFFFu, 0x10000u, 0) < 0)
        return 2;
    if (strcmp(argv[1], "match") == 0)
        err = pq_set_hold(q, 0, &udp, 1);
    else
        err = pq_set_hold(q, strcmp(argv[1], "ingress") == 0, NULL, 0);
    if (err == 0)
        err = pq_set_guard(q, 1, 0);
    if (err == 0 && argc > 3)
        err = pq_set_record(q, argv[3]);
    if (err == 0)
        err = pq_attach(q, 0);
    if (err == 0)
        err = pq_buffer(q);
    if (err < 0) {
        printf("failed %d %s\n", -err, pq_step_name(pq_last_error(q)->step));
        return 1;
    }
    printf("attached\n");
    fflush(stdout);
    for (;;)
        pause();
}
