/*
 * plug_qdisc.c - the plug qdisc (sch_plug) driven over libnl-route-3.
 *
 * See plug_qdisc.h for the contract. Every kernel error is taken from the kernel's own
 * struct nlmsgerr (through a custom error callback), never through libnl's lossy NLE_*
 * mapping; NLE_* codes only ever describe libnl's own failures (out of memory, ...).
 * Nothing here prints, exits or aborts; nl_cli_* is never used (it exits on bad input).
 */
#define _GNU_SOURCE
#include "plug_qdisc.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/pkt_sched.h>

#include <netlink/netlink.h>
#include <netlink/errno.h>
#include <netlink/msg.h>
#include <netlink/attr.h>
#include <netlink/handlers.h>
#include <netlink/socket.h>
#include <netlink/object.h>
#include <netlink/route/link.h>
#include <netlink/route/tc.h>
#include <netlink/route/qdisc.h>
#include <netlink/route/qdisc/plug.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

#define PQ_MSG_MAX 256
/* The kernel's hard_header_len is not in netlink; Ethernet and loopback both use 14. */
#define PQ_ETH_HLEN 14
/* Stand-in queue length when tx_queue_len is 0 (a 0 limit would drop everything). */
#define PQ_DEFAULT_TXQLEN 1000

struct plug_qdisc {
    struct nl_sock *sk;
    unsigned long sk_gen;      /* pq_fork_generation() when sk was made: forked if it moved */
    int netns_fd;              /* our dup of the caller's netns fd, or -1 */
    int ifindex;
    char device[IFNAMSIZ];
    uint32_t parent;
    uint32_t handle;
    uint32_t limit;            /* limit in force (what we last sent) */
    uint32_t default_limit;    /* the device's default, computed at open */
    int limit_explicit;        /* the caller gave a limit at open */
    int is_buffering;
    int created;
    int attached;
    int kerr;                  /* errno from the kernel's last nlmsgerr, 0 if none */
    char msg[PQ_MSG_MAX];      /* pq_last_message */
};

/* The one global: the handle behind the HAProxy-compatible API. */
static struct plug_qdisc *default_handle;

/* ------------------------------------------------------------------------------------ */
/* errors and messages                                                                  */

/* Map a libnl NLE_* code (either sign) to a negative errno. Returns the -errno. */
static int nle_to_errno(int nle)
{
    if (nle < 0)
        nle = -nle;
    switch (nle) {
    case 0:                 return 0;
    case NLE_NOMEM:         return -ENOMEM;
    case NLE_INVAL:         return -EINVAL;
    case NLE_PERM:          return -EPERM;
    case NLE_NOACCESS:      return -EACCES;
    case NLE_NODEV:         return -ENODEV;
    case NLE_OBJ_NOTFOUND:  return -ENOENT;
    case NLE_EXIST:         return -EEXIST;
    case NLE_BUSY:          return -EBUSY;
    case NLE_AGAIN:         return -EAGAIN;
    case NLE_INTR:          return -EINTR;
    case NLE_OPNOTSUPP:     return -EOPNOTSUPP;
    case NLE_RANGE:         return -ERANGE;
    case NLE_MSGSIZE:       return -EMSGSIZE;
    case NLE_BAD_SOCK:      return -EBADF;
    case NLE_AF_NOSUPPORT:  return -EAFNOSUPPORT;
    default:                return -EIO;
    }
}

/* Turn the result of a libnl call into 0 or -errno: the kernel's own errno when the
 * kernel answered with an error (our error callback stored it), else the mapped NLE_*. */
static int nl_result(struct plug_qdisc *q, int nlerr)
{
    if (q->kerr)
        return -q->kerr;
    if (nlerr >= 0)
        return 0;
    return nle_to_errno(nlerr);
}

/* Replace the handle's message with a formatted one. */
static void set_msg(struct plug_qdisc *q, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_msg(struct plug_qdisc *q, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(q->msg, sizeof(q->msg), fmt, ap);
    va_end(ap);
}

/* Append TEXT to the handle's message, as far as it fits. */
static void append_msg(struct plug_qdisc *q, const char *text)
{
    size_t n = strlen(q->msg);

    snprintf(q->msg + n, sizeof(q->msg) - n, "%s", text);
}

/* Write a tc handle as tc does ("root", "1:", "1:2") into BUF. Returns BUF. */
static const char *fmt_handle(uint32_t h, char *buf, size_t len)
{
    if (h == TC_H_ROOT)
        snprintf(buf, len, "root");
    else if (TC_H_MIN(h) == 0)
        snprintf(buf, len, "%x:", TC_H_MAJ(h) >> 16);
    else
        snprintf(buf, len, "%x:%x", TC_H_MAJ(h) >> 16, TC_H_MIN(h));
    return buf;
}

/* Describe a failed request: "<what> on <dev> (plug X: at P): <kernel text or strerror>".
 * Keeps the kernel's extack text (already in q->msg) when there is one. Returns ERR. */
static int fail_msg(struct plug_qdisc *q, int err, const char *what)
{
    char kernel[PQ_MSG_MAX], h[16], p[16], ebuf[64];
    const char *why;

    snprintf(kernel, sizeof(kernel), "%s", q->msg);
    why = kernel[0] ? kernel : strerror_r(-err, ebuf, sizeof(ebuf));
    set_msg(q, "%s on %s (plug %s at %s): %s", what, q->device,
            fmt_handle(q->handle, h, sizeof(h)), fmt_handle(q->parent, p, sizeof(p)), why);
    return err;
}

/* libnl error callback: keep the kernel's errno and extack text in the handle and stop
 * the receive loop. Returns NL_STOP. */
static int on_nlmsgerr(struct sockaddr_nl *nla, struct nlmsgerr *e, void *arg)
{
    struct plug_qdisc *q = arg;
    struct nlmsghdr *hdr = (struct nlmsghdr *)((char *)e - NLMSG_HDRLEN);
    const char *tlvs;
    size_t skip;
    long len;
    struct nlattr *a;

    (void)nla;
    q->kerr = -e->error;
    if (!(hdr->nlmsg_flags & NLM_F_ACK_TLVS))
        return NL_STOP;
    /* TLVs follow the nlmsgerr, after the echoed request unless the ack was capped. */
    skip = sizeof(*e);
    if (!(hdr->nlmsg_flags & NLM_F_CAPPED))
        skip += NLMSG_ALIGN(e->msg.nlmsg_len) - sizeof(struct nlmsghdr);
    len = (long)hdr->nlmsg_len - (long)NLMSG_HDRLEN - (long)skip;
    if (len <= 0)
        return NL_STOP;
    tlvs = (const char *)e + skip;
    a = nla_find((const struct nlattr *)tlvs, (int)len, NLMSGERR_ATTR_MSG);
    if (a && nla_len(a) > 0) {
        int n = nla_len(a);

        if (n > (int)sizeof(q->msg) - 1)
            n = (int)sizeof(q->msg) - 1;
        memcpy(q->msg, nla_data(a), (size_t)n);
        q->msg[n] = '\0';
        /* The kernel's text ends with a NUL, sometimes a newline; keep it one line. */
        n = (int)strlen(q->msg);
        while (n > 0 && (q->msg[n - 1] == '\n' || q->msg[n - 1] == ' '))
            q->msg[--n] = '\0';
    }
    return NL_STOP;
}

/* Forget the previous request's error before sending a new one. */
static void clear_kerr(struct plug_qdisc *q)
{
    q->kerr = 0;
    q->msg[0] = '\0';
}

/* ------------------------------------------------------------------------------------ */
/* fork detection without a syscall                                                     */

/* Bumped in the child after every fork(). getpid() would do, but it is a syscall on each
 * operation, and under UML a syscall costs as much as the netlink round trip itself. */
static volatile unsigned long fork_generation;
static pthread_once_t fork_hook_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void)
{
    fork_generation++;
}

static void install_fork_hook(void)
{
    (void)pthread_atfork(NULL, NULL, on_fork_child);
}

unsigned long pq_fork_generation(void)
{
    (void)pthread_once(&fork_hook_once, install_fork_hook);
    return fork_generation;
}

/* ------------------------------------------------------------------------------------ */
/* the socket                                                                           */

/* Allocate and connect a NETLINK_ROUTE socket in the current thread's namespace, with
 * extended acks, capped acks and our error callback. 0 or -errno; *out set on success. */
static int connect_here(struct plug_qdisc *q, struct nl_sock **out)
{
    struct nl_sock *sk;
    int one = 1, err, fd;

    sk = nl_socket_alloc();
    if (!sk)
        return -ENOMEM;
    err = nl_connect(sk, NETLINK_ROUTE);
    if (err < 0) {
        nl_socket_free(sk);
        return nle_to_errno(err);
    }
    fd = nl_socket_get_fd(sk);
    /* Old kernels lack these options; errors then just carry no text. */
    (void)setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one));
    (void)setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
    err = nl_socket_modify_err_cb(sk, NL_CB_CUSTOM, on_nlmsgerr, q);
    if (err < 0) {
        nl_socket_free(sk);
        return nle_to_errno(err);
    }
    *out = sk;
    return 0;
}

/* Whether two fds refer to the same file (here: the same network namespace). */
static int same_file(int a, int b)
{
    struct stat sa, sb;

    return fstat(a, &sa) == 0 && fstat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* Make the handle's socket, in its namespace if it has one (the socket keeps the
 * namespace it was created in; the thread is switched back before returning, also on
 * error). 0 or -errno. */
static int make_socket(struct plug_qdisc *q)
{
    struct nl_sock *sk = NULL;
    int saved, err, err2;

    saved = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (saved < 0)
        return -errno;
    if (q->netns_fd < 0 || same_file(saved, q->netns_fd)) {
        /* Already there: no setns, which would need CAP_SYS_ADMIN. */
        err = connect_here(q, &sk);
        close(saved);
    } else {
        if (setns(q->netns_fd, CLONE_NEWNET) < 0) {
            err = -errno;
            close(saved);
            return err;
        }
        err = connect_here(q, &sk);
        if (setns(saved, CLONE_NEWNET) < 0) {
            /* Should not happen (we came from there). If it does, the thread is left in
             * the other namespace: the error at least says so. */
            err2 = -errno;
            if (sk)
                nl_socket_free(sk);
            sk = NULL;
            if (err == 0)
                err = err2;
        }
        close(saved);
    }
    if (err < 0)
        return err;
    q->sk = sk;
    q->sk_gen = pq_fork_generation();
    return 0;
}

/* Start an operation: clear the last error and, in a forked child, replace the socket
 * inherited from the parent by one of our own (same namespace). 0 or -errno. */
static int begin(struct plug_qdisc *q)
{
    int err;

    clear_kerr(q);
    if (q->sk && q->sk_gen == pq_fork_generation())
        return 0;
    if (q->sk) {
        /* Closes only this process's copy of the fd; the parent's socket lives on. */
        nl_socket_free(q->sk);
        q->sk = NULL;
    }
    err = make_socket(q);
    if (err < 0)
        set_msg(q, "cannot open a netlink socket for %s: %s", q->device,
                strerror_r(-err, (char[64]){ 0 }, 64));
    return err;
}

/* ------------------------------------------------------------------------------------ */
/* requests                                                                             */

/* A qdisc object of KIND (NULL: any) at our place with our handle, for a request; NULL
 * and *err set to a libnl error (-NLE_*) on failure. The caller puts it. */
static struct rtnl_qdisc *our_qdisc(const struct plug_qdisc *q, const char *kind, int *err)
{
    struct rtnl_qdisc *qd = rtnl_qdisc_alloc();

    *err = -NLE_NOMEM;
    if (!qd)
        return NULL;
    rtnl_tc_set_ifindex(TC_CAST(qd), q->ifindex);
    rtnl_tc_set_parent(TC_CAST(qd), q->parent);
    rtnl_tc_set_handle(TC_CAST(qd), q->handle);
    *err = kind ? rtnl_tc_set_kind(TC_CAST(qd), kind) : 0;
    if (*err < 0) {
        rtnl_qdisc_put(qd);
        return NULL;
    }
    return qd;
}

/* Send one RTM_NEWQDISC for a plug qdisc at our place with the given netlink FLAGS
 * (0: change; CREATE|EXCL; CREATE|REPLACE), ACTION (TCQ_PLUG_*) and LIMIT (only read by
 * the kernel for TCQ_PLUG_LIMIT and at creation). 0 or -errno. */
static int send_plug(struct plug_qdisc *q, int flags, int action, uint32_t limit)
{
    struct rtnl_qdisc *qd;
    int err;

    qd = our_qdisc(q, "plug", &err);
    if (!qd)
        return nl_result(q, err);
    /* libnl sends {action, limit} every time; set the limit first so that a creation
     * carries the real limit whatever the action (a 0 limit drops every packet). */
    err = rtnl_qdisc_plug_set_limit(qd, (int)limit);
    if (err < 0)
        goto out;
    switch (action) {
    case TCQ_PLUG_BUFFER:
        err = rtnl_qdisc_plug_buffer(qd);
        break;
    case TCQ_PLUG_RELEASE_ONE:
        err = rtnl_qdisc_plug_release_one(qd);
        break;
    case TCQ_PLUG_RELEASE_INDEFINITE:
        err = rtnl_qdisc_plug_release_indefinite(qd);
        break;
    default:
        break;              /* TCQ_PLUG_LIMIT: already set */
    }
    if (err < 0)
        goto out;
    clear_kerr(q);
    err = rtnl_qdisc_add(q->sk, qd, flags);
out:
    rtnl_qdisc_put(qd);
    return nl_result(q, err);
}

struct get_ctx {
    struct rtnl_qdisc *qd;
    int done;
};

/* nl_msg_parse callback: keep (a reference to) the first qdisc object of the reply. */
static void keep_qdisc(struct nl_object *obj, void *arg)
{
    struct get_ctx *ctx = arg;

    if (!ctx->qd) {
        nl_object_get(obj);
        ctx->qd = (struct rtnl_qdisc *)obj;
    }
}

/* Valid-message callback of the GET: parse an RTM_NEWQDISC reply. Returns NL_OK. */
static int on_get_reply(struct nl_msg *msg, void *arg)
{
    if (nlmsg_hdr(msg)->nlmsg_type == RTM_NEWQDISC)
        (void)nl_msg_parse(msg, keep_qdisc, arg);
    return NL_OK;
}

/* Ack callback of the GET: the request is finished. Returns NL_STOP. */
static int on_get_ack(struct nl_msg *msg, void *arg)
{
    (void)msg;
    ((struct get_ctx *)arg)->done = 1;
    return NL_STOP;
}

/* Ask the kernel what qdisc is at our place (one RTM_GETQDISC, no dump). *out gets a
 * reference the caller puts, or NULL if the kernel reported nothing there (ENOENT, or
 * EINVAL for a built-in qdisc such as noop that it refuses to report). 0 or -errno. */
static int get_qdisc(struct plug_qdisc *q, struct rtnl_qdisc **out)
{
    struct tcmsg tcm;
    struct nl_msg *msg;
    struct nl_cb *cb, *sock_cb;
    struct get_ctx ctx = { NULL, 0 };
    int err;

    *out = NULL;
    if (!q->sk)
        return -ENOTCONN; /* begin() failed to re-open it (after fork) */
    /* NLM_F_ECHO: kernels before 6.5 only multicast the answer to a GET unless asked to
     * echo it to the sender; NLM_F_ACK ends the exchange in every case. */
    msg = nlmsg_alloc_simple(RTM_GETQDISC, NLM_F_ECHO | NLM_F_ACK);
    if (!msg)
        return -ENOMEM;
    memset(&tcm, 0, sizeof(tcm));
    tcm.tcm_family = AF_UNSPEC;
    tcm.tcm_ifindex = q->ifindex;
    tcm.tcm_parent = q->parent;
    tcm.tcm_handle = 0;
    err = nlmsg_append(msg, &tcm, sizeof(tcm), NLMSG_ALIGNTO);
    if (err < 0) {
        nlmsg_free(msg);
        return nle_to_errno(err);
    }
    /* A clone of the socket's callbacks keeps our error callback and leaves the socket's
     * own set untouched for later requests. */
    sock_cb = nl_socket_get_cb(q->sk);      /* takes a reference */
    cb = sock_cb ? nl_cb_clone(sock_cb) : NULL;
    if (sock_cb)
        nl_cb_put(sock_cb);
    if (!cb) {
        nlmsg_free(msg);
        return -ENOMEM;
    }
    nl_cb_set(cb, NL_CB_VALID, NL_CB_CUSTOM, on_get_reply, &ctx);
    nl_cb_set(cb, NL_CB_ACK, NL_CB_CUSTOM, on_get_ack, &ctx);

    clear_kerr(q);
    err = nl_send_auto(q->sk, msg);
    nlmsg_free(msg);
    while (err >= 0 && !ctx.done)
        err = nl_recvmsgs(q->sk, cb);
    nl_cb_put(cb);
    err = nl_result(q, err);
    if (err == -ENOENT || err == -EINVAL) {
        /* Nothing reportable at that place. */
        if (ctx.qd)
            rtnl_qdisc_put(ctx.qd);
        clear_kerr(q);
        return 0;
    }
    if (err < 0) {
        if (ctx.qd)
            rtnl_qdisc_put(ctx.qd);
        return err;
    }
    *out = ctx.qd;
    return 0;
}

/* Is QD a plug qdisc with our handle? */
static int is_our_plug(const struct plug_qdisc *q, struct rtnl_qdisc *qd)
{
    const char *kind;

    if (!qd)
        return 0;
    kind = rtnl_tc_get_kind(TC_CAST(qd));
    return kind && strcmp(kind, "plug") == 0 && rtnl_tc_get_handle(TC_CAST(qd)) == q->handle;
}

/* Fill ST from our plug qdisc. 0, -ENOENT (with a message) if our plug is not there, or
 * -errno. Assumes begin() was called. */
static int read_stats(struct plug_qdisc *q, struct pq_stats *st)
{
    struct rtnl_qdisc *qd;
    struct rtnl_tc *tc;
    char h[16], p[16];
    int err;

    err = get_qdisc(q, &qd);
    if (err < 0)
        return fail_msg(q, err, "cannot read the qdisc");
    if (!is_our_plug(q, qd)) {
        if (qd)
            rtnl_qdisc_put(qd);
        set_msg(q, "no plug qdisc with handle %s at %s of %s (deleted?)",
                fmt_handle(q->handle, h, sizeof(h)), fmt_handle(q->parent, p, sizeof(p)),
                q->device);
        return -ENOENT;
    }
    tc = TC_CAST(qd);
    if (st) {
        st->packets = rtnl_tc_get_stat(tc, RTNL_TC_PACKETS);
        st->bytes = rtnl_tc_get_stat(tc, RTNL_TC_BYTES);
        st->qlen = rtnl_tc_get_stat(tc, RTNL_TC_QLEN);
        st->backlog = rtnl_tc_get_stat(tc, RTNL_TC_BACKLOG);
        st->drops = rtnl_tc_get_stat(tc, RTNL_TC_DROPS);
        st->overlimits = rtnl_tc_get_stat(tc, RTNL_TC_OVERLIMITS);
        st->requeues = rtnl_tc_get_stat(tc, RTNL_TC_REQUEUES);
    }
    rtnl_qdisc_put(qd);
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* the handle API                                                                       */

/* Parse one hex part of 1..4 digits from S (up to END). 0 or -EINVAL; value in *v. */
static int parse_hex16(const char *s, const char *end, uint32_t *v)
{
    uint32_t x = 0;
    const char *c;

    if (end - s < 1 || end - s > 4)
        return -EINVAL;
    for (c = s; c < end; c++) {
        int d;

        if (*c >= '0' && *c <= '9')
            d = *c - '0';
        else if (*c >= 'a' && *c <= 'f')
            d = *c - 'a' + 10;
        else if (*c >= 'A' && *c <= 'F')
            d = *c - 'A' + 10;
        else
            return -EINVAL;
        x = x * 16 + (uint32_t)d;
    }
    *v = x;
    return 0;
}

/* Parse "root", "none", "MAJ:" or "MAJ:MIN" (hex, 1..4 digits each). 0 or -EINVAL. */
int pq_parse_handle(const char *text, uint32_t *out)
{
    const char *colon, *end;
    uint32_t maj, min = 0;

    if (!text || !out)
        return -EINVAL;
    if (strcmp(text, "root") == 0) {
        *out = TC_H_ROOT;
        return 0;
    }
    if (strcmp(text, "none") == 0) {
        *out = TC_H_UNSPEC;
        return 0;
    }
    colon = strchr(text, ':');
    if (!colon)
        return -EINVAL;
    end = colon + strlen(colon);
    if (parse_hex16(text, colon, &maj) < 0)
        return -EINVAL;
    if (colon + 1 < end && parse_hex16(colon + 1, end, &min) < 0)
        return -EINVAL;
    *out = (maj << 16) | min;
    return 0;
}

/* Look the device up with one RTM_GETLINK and record what the handle needs. 0 or -errno
 * (-ENODEV: no such device). Assumes begin() was called. */
static int lookup_link(struct plug_qdisc *q, const char *device, int ifindex)
{
    struct rtnl_link *link = NULL;
    unsigned int mtu, txqlen, arptype, hh;
    uint64_t lim;
    const char *name;
    int err;

    clear_kerr(q);
    err = rtnl_link_get_kernel(q->sk, ifindex > 0 ? ifindex : 0, device, &link);
    err = nl_result(q, err);
    if (err == 0 && !link)
        err = -ENODEV;
    if (err < 0) {
        if (err == -ENODEV || err == -ENOENT) {
            err = -ENODEV;
            if (device)
                set_msg(q, "no such network device: %s", device);
            else
                set_msg(q, "no network device with index %d", ifindex);
        } else {
            char ebuf[64];
            const char *why = q->msg[0] ? q->msg : strerror_r(-err, ebuf, sizeof(ebuf));
            char kernel[PQ_MSG_MAX];

            snprintf(kernel, sizeof(kernel), "%s", why);
            set_msg(q, "cannot look up device %s: %s", device ? device : "(by index)", kernel);
        }
        return err;
    }
    q->ifindex = rtnl_link_get_ifindex(link);
    name = rtnl_link_get_name(link);
    snprintf(q->device, sizeof(q->device), "%s", name ? name : (device ? device : ""));
    mtu = rtnl_link_get_mtu(link);
    txqlen = rtnl_link_get_txqlen(link);
    arptype = rtnl_link_get_arptype(link);
    rtnl_link_put(link);

    /* The kernel's own default: tx_queue_len * (mtu + hard_header_len). */
    hh = (arptype == ARPHRD_ETHER || arptype == ARPHRD_LOOPBACK) ? PQ_ETH_HLEN : 0;
    if (txqlen == 0)
        txqlen = PQ_DEFAULT_TXQLEN;
    lim = (uint64_t)txqlen * ((uint64_t)mtu + hh);
    if (lim > UINT32_MAX)
        lim = UINT32_MAX;
    q->default_limit = (uint32_t)lim;
    return 0;
}

/* Open a handle (socket in NETNS_FD's namespace, device looked up). 0 or -errno. */
int pq_open(struct plug_qdisc **out, const char *device, int ifindex, uint32_t parent,
            uint32_t handle, uint32_t limit, int netns_fd)
{
    struct plug_qdisc *q;
    int err;

    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!device && ifindex <= 0)
        return -EINVAL;
    if (device && (device[0] == '\0' || strlen(device) > IFNAMSIZ - 1))
        return -EINVAL;
    q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    q->netns_fd = -1;
    q->parent = parent;
    q->handle = handle;
    if (device)
        snprintf(q->device, sizeof(q->device), "%s", device);
    else
        snprintf(q->device, sizeof(q->device), "if%d", ifindex);
    if (netns_fd >= 0) {
        /* Our own copy: the caller may close theirs; also needed to re-open after fork. */
        q->netns_fd = fcntl(netns_fd, F_DUPFD_CLOEXEC, 0);
    } else {
        /* The caller's namespace, kept so that a socket re-opened after fork (perhaps by
         * a thread that has since moved) lands in the same one. */
        q->netns_fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    }
    if (q->netns_fd < 0) {
        err = -errno;
        goto fail;
    }
    err = begin(q);
    if (err < 0)
        goto fail;
    err = lookup_link(q, device, device ? 0 : ifindex);
    if (err < 0)
        goto fail;
    q->limit_explicit = limit != 0;
    q->limit = limit ? limit : q->default_limit;
    *out = q;
    return 0;
fail:
    pq_close(q);
    return err;
}

/* Send RTM_DELQDISC for the qdisc of KIND with our handle at our place. 0 or -errno
 * (the kernel's text in q->msg). */
static int delete_qdisc(struct plug_qdisc *q, const char *kind)
{
    struct rtnl_qdisc *qd;
    int err;

    qd = our_qdisc(q, kind, &err);
    if (!qd)
        return nl_result(q, err);
    clear_kerr(q);
    err = rtnl_qdisc_delete(q->sk, qd);
    rtnl_qdisc_put(qd);
    return nl_result(q, err);
}

/* Create or adopt the plug qdisc at the handle's place, then release it. 0 or -errno. */
int pq_attach(struct plug_qdisc *q, int replace)
{
    struct rtnl_qdisc *qd = NULL;
    char h[16], p[16];
    int err, created;

    if (!q)
        return -EINVAL;
    err = begin(q);
    if (err < 0)
        return err;
    err = get_qdisc(q, &qd);
    if (err < 0)
        return fail_msg(q, err, "cannot read the qdisc");

    if (!qd || rtnl_tc_get_handle(TC_CAST(qd)) == 0) {
        /* Nothing, or the kernel's default: make ours. */
        err = send_plug(q, NLM_F_CREATE | NLM_F_EXCL, TCQ_PLUG_LIMIT, q->limit);
        created = 1;
    } else if (is_our_plug(q, qd)) {
        /* Ours from an earlier run: adopt; only an explicit limit overrides its limit.
         * A second attach of the same handle keeps knowing that it created it. */
        err = q->limit_explicit ? send_plug(q, 0, TCQ_PLUG_LIMIT, q->limit) : 0;
        created = q->attached && q->created;
    } else if (replace && rtnl_tc_get_handle(TC_CAST(qd)) == q->handle) {
        /* Same handle, other kind: the kernel takes a replace as a change of that qdisc
         * and refuses the kind ("Invalid qdisc name"). Delete it, then create ours. */
        err = delete_qdisc(q, rtnl_tc_get_kind(TC_CAST(qd)));
        if (err == 0)
            err = send_plug(q, NLM_F_CREATE | NLM_F_EXCL, TCQ_PLUG_LIMIT, q->limit);
        created = 1;
    } else if (replace) {
        err = send_plug(q, NLM_F_CREATE | NLM_F_REPLACE, TCQ_PLUG_LIMIT, q->limit);
        created = 1;
    } else {
        const char *kind = rtnl_tc_get_kind(TC_CAST(qd));

        set_msg(q, "a %s qdisc (handle %s) is already at %s of %s; "
                "pass replace=True to replace it", kind ? kind : "?",
                fmt_handle(rtnl_tc_get_handle(TC_CAST(qd)), h, sizeof(h)),
                fmt_handle(q->parent, p, sizeof(p)), q->device);
        rtnl_qdisc_put(qd);
        return -EEXIST;
    }
    if (qd)
        rtnl_qdisc_put(qd);
    if (err < 0) {
        if (err == -ENOENT && created) {
            /* The kernel's words ("Specified qdisc kind is unknown.") stay in the text. */
            fail_msg(q, err, "cannot create a plug qdisc");
            append_msg(q, " (is sch_plug available?)");
            return err;
        }
        return fail_msg(q, err, created ? "cannot create the plug qdisc"
                                        : "cannot set the plug qdisc's limit");
    }
    /* A new plug qdisc holds; the contract is that traffic passes after attach. */
    err = send_plug(q, 0, TCQ_PLUG_RELEASE_INDEFINITE, q->limit);
    if (err < 0) {
        /* Never leave a qdisc we made holding the device's traffic with nobody in charge
         * of it: take it away again (it holds nothing we were asked to keep). */
        fail_msg(q, err, "cannot release the plug qdisc");
        if (created)
            (void)delete_qdisc(q, "plug");
        q->attached = 0;
        return err;
    }
    q->created = created;
    q->is_buffering = 0;
    q->attached = 1;
    return 0;
}

/* Send one plug action to an attached handle. 0, -ENOTCONN before attach, or -errno. */
static int plug_action(struct plug_qdisc *q, int action, uint32_t limit, const char *what)
{
    int err;

    if (!q)
        return -EINVAL;
    clear_kerr(q);
    if (!q->attached) {
        set_msg(q, "the plug qdisc on %s is not attached", q->device);
        return -ENOTCONN;
    }
    err = begin(q);
    if (err < 0)
        return err;
    err = send_plug(q, 0, action, limit);
    if (err < 0)
        return fail_msg(q, err, what);
    return 0;
}

/* TCQ_PLUG_BUFFER: start a new epoch and hold. 0 or -errno. */
int pq_buffer(struct plug_qdisc *q)
{
    int err = plug_action(q, TCQ_PLUG_BUFFER, q ? q->limit : 0, "cannot buffer");

    if (err == 0)
        q->is_buffering = 1;
    return err;
}

/* TCQ_PLUG_RELEASE_ONE: release the previous epoch; still holding. 0 or -errno. */
int pq_release_one(struct plug_qdisc *q)
{
    return plug_action(q, TCQ_PLUG_RELEASE_ONE, q ? q->limit : 0, "cannot release one epoch");
}

/* TCQ_PLUG_RELEASE_INDEFINITE: release everything and pass traffic. 0 or -errno. */
int pq_release_indefinite(struct plug_qdisc *q)
{
    int err = plug_action(q, TCQ_PLUG_RELEASE_INDEFINITE, q ? q->limit : 0,
                          "cannot release");

    if (err == 0)
        q->is_buffering = 0;
    return err;
}

/* TCQ_PLUG_LIMIT: set the limit in bytes (0: the device's default). 0 or -errno. */
int pq_set_limit(struct plug_qdisc *q, uint32_t limit)
{
    uint32_t lim;
    int err;

    if (!q)
        return -EINVAL;
    /* 0 would drop every packet; like at open it means the device's default. */
    lim = limit ? limit : q->default_limit;
    err = plug_action(q, TCQ_PLUG_LIMIT, lim, "cannot set the limit");
    if (err == 0)
        q->limit = lim;
    return err;
}

/* Read our qdisc's counters. 0, -ENOENT if it is gone, or -errno. */
int pq_get_stats(struct plug_qdisc *q, struct pq_stats *st)
{
    int err;

    if (!q || !st)
        return -EINVAL;
    err = begin(q);
    if (err < 0)
        return err;
    return read_stats(q, st);
}

/* Milliseconds on the monotonic clock. */
static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Release, wait up to TIMEOUT_MS for the queue to drain, delete. 0, -ETIMEDOUT (left in
 * place, passing), -ENOENT (already gone; no longer attached), or -errno. */
int pq_detach(struct plug_qdisc *q, int timeout_ms)
{
    struct pq_stats st;
    int64_t deadline;
    int err;

    if (!q)
        return -EINVAL;
    err = pq_release_indefinite(q);
    if (err < 0 && err != -ENOTCONN) {
        /* Gone, or another qdisc in its place (ENOENT, EINVAL or EEXIST from the
         * kernel): if our plug is no longer there, say -ENOENT and let go of it. */
        char saved[PQ_MSG_MAX];

        snprintf(saved, sizeof(saved), "%s", q->msg);
        if (read_stats(q, NULL) == -ENOENT) {
            q->attached = 0;
            return -ENOENT;
        }
        snprintf(q->msg, sizeof(q->msg), "%s", saved);
        return err;
    }
    if (err < 0)
        return err;

    deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        err = read_stats(q, &st);
        if (err == -ENOENT)
            q->attached = 0;
        if (err < 0)
            return err;
        if (st.qlen == 0)
            break;
        if (now_ms() >= deadline) {
            set_msg(q, "the plug qdisc on %s still holds %llu packets after %d ms; "
                    "left in place, passing traffic", q->device,
                    (unsigned long long)st.qlen, timeout_ms);
            return -ETIMEDOUT;
        }
        nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
    }

    err = delete_qdisc(q, "plug");
    if (err == -ENOENT)
        q->attached = 0;
    if (err < 0)
        return fail_msg(q, err, "cannot delete the plug qdisc");
    q->attached = 0;
    q->is_buffering = 0;
    return 0;
}

/* Free the handle, its socket and its namespace fd. The qdisc stays. NULL is fine. */
void pq_close(struct plug_qdisc *q)
{
    if (!q)
        return;
    if (q->sk)
        nl_socket_free(q->sk);
    if (q->netns_fd >= 0)
        close(q->netns_fd);
    if (q == default_handle)
        default_handle = NULL;
    free(q);
}

/* The device's ifindex (0 for NULL). */
int pq_ifindex(const struct plug_qdisc *q)
{
    return q ? q->ifindex : 0;
}

/* The device's name as the kernel has it ("" for NULL). */
const char *pq_device(const struct plug_qdisc *q)
{
    return q ? q->device : "";
}

/* The limit in force, in bytes (0 for NULL). */
uint32_t pq_limit(const struct plug_qdisc *q)
{
    return q ? q->limit : 0;
}

/* 1 if we last told the qdisc to hold. */
int pq_is_buffering(const struct plug_qdisc *q)
{
    return q ? q->is_buffering : 0;
}

/* 1 if our attach created the qdisc (0: adopted). */
int pq_created(const struct plug_qdisc *q)
{
    return q ? q->created : 0;
}

/* 1 between a successful attach and a successful detach. */
int pq_attached(const struct plug_qdisc *q)
{
    return q ? q->attached : 0;
}

/* The last failure's text, "" if none. */
const char *pq_last_message(const struct plug_qdisc *q)
{
    return q ? q->msg : "";
}

/* ------------------------------------------------------------------------------------ */
/* the HAProxy-compatible API                                                           */

/* Attach the default handle (replacing any previous one). The handle is kept after a
 * failed attach so that its message can be read; it is then not attached. 0 or -errno. */
int plug_qdisc_attach(char *device, char *parent, char *id, uint32_t limit)
{
    struct plug_qdisc *q;
    uint32_t p, h;
    int err;

    if (pq_parse_handle(parent ? parent : "root", &p) < 0 ||
        pq_parse_handle(id ? id : "1:", &h) < 0)
        return -EINVAL;
    pq_close(default_handle);
    err = pq_open(&q, device, 0, p, h, limit, -1);
    if (err < 0)
        return err;
    default_handle = q;
    /* Not replace: adopts our own plug if it is already there. */
    return pq_attach(q, 0);
}

/* Hold on the default handle. 0 or -errno (-ENOTCONN before attach). */
int plug_qdisc_plug_buffer(void)
{
    if (!default_handle)
        return -ENOTCONN;
    return pq_buffer(default_handle);
}

/* Release and pass on the default handle. 0 or -errno (-ENOTCONN before attach). */
int plug_qdisc_release_indefinite_buffer(void)
{
    if (!default_handle)
        return -ENOTCONN;
    return pq_release_indefinite(default_handle);
}

/* The default handle, or NULL before plug_qdisc_attach. */
struct plug_qdisc *plug_qdisc_default_handle(void)
{
    return default_handle;
}
