/*
 * share.c - the device's lock and a plain plug's users, as abstract unix socket names
 * (see share.h). Raw syscalls, no thread-local state, no allocation.
 */
#define _GNU_SOURCE
#include "share.h"
#include "sys.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/un.h>

/* Append the lower-case hex digits of V to BUF at *N. */
PQ_NO_TLS static void put_hex(char *buf, size_t *n, uint32_t v)
{
    char d[8];
    int i = 0;

    do {
        d[i++] = "0123456789abcdef"[v & 15u];
        v >>= 4;
    } while (v && i < 8);
    while (i > 0)
        buf[(*n)++] = d[--i];
}

PQ_NO_TLS static void put_str(char *buf, size_t *n, const char *s)
{
    while (*s)
        buf[(*n)++] = *s++;
}

/* The abstract address "\0plugqdisc/<WHAT>/<ifindex>[/<parent>/<handle>/<tag><slot>]";
 * its length in *LEN. TAG 0: the lock. */
PQ_NO_TLS static void name_of(struct sockaddr_un *a, socklen_t *len, const char *what,
                              int ifindex, uint32_t parent, uint32_t handle, char tag,
                              int slot)
{
    size_t n = 1;

    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    put_str(a->sun_path, &n, "plugqdisc/");
    put_str(a->sun_path, &n, what);
    a->sun_path[n++] = '/';
    put_hex(a->sun_path, &n, (uint32_t)ifindex);
    if (tag) {
        a->sun_path[n++] = '/';
        put_hex(a->sun_path, &n, parent);
        a->sun_path[n++] = '/';
        put_hex(a->sun_path, &n, handle);
        a->sun_path[n++] = '/';
        a->sun_path[n++] = tag;
        put_hex(a->sun_path, &n, (uint32_t)slot);
    }
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
}

PQ_NO_TLS static void sleep_1ms(void)
{
    struct timespec ts = { 0, 1000000 };

    (void)PQ_SYS(SYS_nanosleep, &ts, 0, 0, 0, 0, 0);
}

PQ_NO_TLS int pq_share_socket(void)
{
    return (int)PQ_SYS(SYS_socket, AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0,
                       0, 0, 0);
}

PQ_NO_TLS int pq_share_lock(int sock, int ifindex, int timeout_ms)
{
    struct sockaddr_un a;
    socklen_t len;
    int waited;

    name_of(&a, &len, "lock", ifindex, 0, 0, 0, 0);
    for (waited = 0;; waited++) {
        long err = PQ_SYS(SYS_bind, sock, &a, len, 0, 0, 0);

        if (err == 0)
            return 0;
        if (err != -EADDRINUSE)
            return (int)err;
        if (waited >= timeout_ms)
            return -EBUSY;
        sleep_1ms();
    }
}

PQ_NO_TLS int pq_share_join(int sock, int ifindex, uint32_t parent, uint32_t handle,
                            int owner, int *slot)
{
    struct sockaddr_un a;
    socklen_t len;
    int k;

    for (k = 0; k < PQ_SHARE_SLOTS; k++) {
        long err;

        name_of(&a, &len, "plug", ifindex, parent, handle, owner ? 'o' : 'a', k);
        err = PQ_SYS(SYS_bind, sock, &a, len, 0, 0, 0);
        if (err == -EADDRINUSE)
            continue;
        if (err == 0)
            err = PQ_SYS(SYS_listen, sock, 1, 0, 0, 0, 0);
        if (err < 0)
            return (int)err;
        *slot = k;
        return 0;
    }
    return -EUSERS;
}

PQ_NO_TLS int pq_share_others(int sock, int ifindex, uint32_t parent, uint32_t handle,
                              int owner, int slot, int *owner_alive)
{
    static const char tags[2] = { 'o', 'a' };
    struct sockaddr_un a;
    socklen_t len;
    int t, k;

    if (owner_alive)
        *owner_alive = 0;
    for (t = 0; t < 2; t++)
        for (k = 0; k < PQ_SHARE_SLOTS; k++) {
            long err;

            if (k == slot && (t == 0) == (owner != 0))
                continue;
            name_of(&a, &len, "plug", ifindex, parent, handle, tags[t], k);
            err = PQ_SYS(SYS_connect, sock, &a, len, 0, 0, 0);
            /* Connected, or a listener whose queue is full: alive. */
            if (err == 0 || err == -EAGAIN || err == -EINPROGRESS) {
                if (owner_alive)
                    *owner_alive = t == 0;
                return 1;
            }
        }
    return 0;
}
