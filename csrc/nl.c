/*
 * nl.c - the netlink layer (see nl.h): sockets, namespaces, requests, the kernel's errno.
 *
 * Every kernel error is taken from the kernel's own struct nlmsgerr (through a custom
 * error callback), never through libnl's lossy NLE_* mapping; NLE_* codes only ever
 * describe libnl's own failures (out of memory, ...). Each request is one sendmsg and one
 * recvmsg: the socket does not peek to size its buffer (libnl's default costs a second
 * recvmsg), since an ack, an error or one qdisc fits the buffer set once. Only link
 * lookups, whose replies can be large, peek. Nothing here prints, exits or aborts.
 */
#define _GNU_SOURCE
#include "nl.h"
#include "share.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>

#include <netlink/errno.h>
#include <netlink/attr.h>
#include <netlink/handlers.h>
#include <netlink/socket.h>
#include <netlink/route/tc.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

/* Receive buffer without peeking: an ack (capped), an error with its TLVs, or one qdisc
 * with its statistics is a few hundred bytes. */
#define PQ_RECV_BUF 16384

/* ---- errors --------------------------------------------------------------------------- */

int pq_fail(struct pq_error *e, enum pq_step step, int err)
{
    e->err = -err;
    e->step = step;
    return err;
}

int pq_nle_errno(int nle)
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
    case NLE_MSG_TRUNC:     return -EMSGSIZE;
    case NLE_BAD_SOCK:      return -EBADF;
    case NLE_AF_NOSUPPORT:  return -EAFNOSUPPORT;
    default:                return -EIO;
    }
}

void pq_nl_clear(struct pq_nl *nl)
{
    nl->kerr = 0;
    nl->e->kernel[0] = '\0';
}

int pq_nl_result(struct pq_nl *nl, int nlerr)
{
    if (nl->kerr)
        return -nl->kerr;
    if (nlerr >= 0)
        return 0;
    return pq_nle_errno(nlerr);
}

/* libnl error callback: keep the kernel's errno and extack text and stop the receive
 * loop. Returns NL_STOP. */
static int on_nlmsgerr(struct sockaddr_nl *nla, struct nlmsgerr *e, void *arg)
{
    struct pq_nl *nl = arg;
    struct nlmsghdr *hdr = (struct nlmsghdr *)((char *)e - NLMSG_HDRLEN);
    const char *tlvs;
    size_t skip;
    long len;
    struct nlattr *a;

    (void)nla;
    nl->kerr = -e->error;
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
        char *k = nl->e->kernel;
        int n = nla_len(a);

        if (n > (int)sizeof(nl->e->kernel) - 1)
            n = (int)sizeof(nl->e->kernel) - 1;
        memcpy(k, nla_data(a), (size_t)n);
        k[n] = '\0';
        /* The kernel's text ends with a NUL, sometimes a newline: no trailing space. */
        n = (int)strlen(k);
        while (n > 0 && (k[n - 1] == '\n' || k[n - 1] == ' '))
            k[--n] = '\0';
    }
    return NL_STOP;
}

/* ---- fork detection without a syscall ---------------------------------------------------- */

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

/* ---- namespaces and sockets ---------------------------------------------------------- */

static int same_file(int a, int b)
{
    struct stat sa, sb;

    return fstat(a, &sa) == 0 && fstat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

int pq_in_netns(int netns_fd, int (*make)(void *), void *arg, int *switch_err)
{
    int saved, err;

    *switch_err = 0;
    saved = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (saved < 0)
        return *switch_err = -errno;
    if (same_file(saved, netns_fd)) {
        /* Already there: no setns, which would need CAP_SYS_ADMIN. */
        err = make(arg);
        close(saved);
        return err;
    }
    if (setns(netns_fd, CLONE_NEWNET) < 0) {
        err = -errno;
        close(saved);
        return *switch_err = err;
    }
    err = make(arg);
    if (setns(saved, CLONE_NEWNET) < 0) {
        /* Should not happen (we came from there); if it does, the caller hears of it. */
        err = *switch_err = -errno;
    }
    close(saved);
    return err;
}

void pq_nl_init(struct pq_nl *nl, struct pq_error *e)
{
    memset(nl, 0, sizeof(*nl));
    nl->netns_fd = -1;
    nl->e = e;
}

int pq_nl_set_netns(struct pq_nl *nl, int netns_fd)
{
    int fd = fcntl(netns_fd, F_DUPFD_CLOEXEC, 0);

    if (fd < 0)
        return pq_fail(nl->e, PQ_STEP_NETNS, -errno);
    if (nl->netns_fd >= 0)
        close(nl->netns_fd);
    nl->netns_fd = fd;
    return 0;
}

/* pq_in_netns maker: a libnl route socket with extended and capped acks, our error
 * callback and no peeking, into NL->sk. 0 or -errno. */
static int make_nl_sock(void *arg)
{
    struct pq_nl *nl = arg;
    struct nl_sock *sk;
    int one = 1, err, fd;

    sk = nl_socket_alloc();
    if (!sk)
        return -ENOMEM;
    err = nl_connect(sk, NETLINK_ROUTE);
    if (err < 0) {
        nl_socket_free(sk);
        return pq_nle_errno(err);
    }
    fd = nl_socket_get_fd(sk);
    /* Old kernels lack these options; errors then just carry no text. */
    (void)setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one));
    (void)setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
    err = nl_socket_modify_err_cb(sk, NL_CB_CUSTOM, on_nlmsgerr, nl);
    if (err == 0)
        err = nl_socket_set_msg_buf_size(sk, PQ_RECV_BUF);
    if (err < 0) {
        nl_socket_free(sk);
        return pq_nle_errno(err);
    }
    nl_socket_disable_msg_peek(sk);
    nl->sk = sk;
    return 0;
}

/* pq_in_netns maker: a plain route socket, its fd into *(int *)ARG. */
static int make_raw(void *arg)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);

    if (fd < 0)
        return -errno;
    *(int *)arg = fd;
    return 0;
}

/* pq_in_netns maker: an AF_UNIX socket for share.h, its fd into *(int *)ARG. */
static int make_unix(void *arg)
{
    int fd = pq_share_socket();

    if (fd < 0)
        return fd;
    *(int *)arg = fd;
    return 0;
}

/* Run MAKE in NL's namespace; a failure of the switch is step NETNS, MAKE's own SOCKET. */
static int in_namespace(struct pq_nl *nl, int (*make)(void *), void *arg)
{
    int switch_err, err = pq_in_netns(nl->netns_fd, make, arg, &switch_err);

    if (err < 0)
        return pq_fail(nl->e, switch_err ? PQ_STEP_NETNS : PQ_STEP_SOCKET, err);
    return 0;
}

int pq_nl_ready(struct pq_nl *nl)
{
    if (nl->sk && nl->sk_gen == pq_fork_generation())
        return 0;
    if (nl->netns_fd < 0) {
        /* The caller's namespace, kept so that a socket re-made after fork (perhaps by a
         * thread that has since moved) lands in the same one. */
        nl->netns_fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (nl->netns_fd < 0)
            return pq_fail(nl->e, PQ_STEP_NETNS, -errno);
    }
    if (nl->sk) {
        /* Inherited through fork: closes only this process's copy of the fd. */
        nl_socket_free(nl->sk);
        nl->sk = NULL;
    }
    if (in_namespace(nl, make_nl_sock, nl) < 0)
        return -nl->e->err;
    nl->sk_gen = pq_fork_generation();
    return 0;
}

void pq_nl_close(struct pq_nl *nl)
{
    if (nl->sk)
        nl_socket_free(nl->sk);
    nl->sk = NULL;
    if (nl->netns_fd >= 0)
        close(nl->netns_fd);
    nl->netns_fd = -1;
}

int pq_nl_raw_socket(struct pq_nl *nl, int *fd)
{
    *fd = -1;
    return in_namespace(nl, make_raw, fd);
}

int pq_nl_unix_socket(struct pq_nl *nl, int *fd)
{
    *fd = -1;
    return in_namespace(nl, make_unix, fd);
}

/* ---- requests ------------------------------------------------------------------------ */

static int on_ack(struct nl_msg *msg, void *arg)
{
    (void)msg;
    *(int *)arg = 1;
    return NL_STOP;
}

int pq_nl_request(struct pq_nl *nl, struct nl_msg *msg,
                  int (*on_reply)(struct nl_msg *, void *), void *arg)
{
    struct nl_cb *cb, *sock_cb;
    int err, done = 0;

    if (!msg)
        return -ENOMEM;
    if (!nl->sk) {
        nlmsg_free(msg);
        return -ENOTCONN;
    }
    nlmsg_hdr(msg)->nlmsg_flags |= NLM_F_ACK;
    /* A clone of the socket's callbacks keeps our error callback and leaves the socket's
     * own set untouched for later requests. */
    sock_cb = nl_socket_get_cb(nl->sk);      /* takes a reference */
    cb = sock_cb ? nl_cb_clone(sock_cb) : NULL;
    if (sock_cb)
        nl_cb_put(sock_cb);
    if (!cb) {
        nlmsg_free(msg);
        return -ENOMEM;
    }
    if (on_reply)
        nl_cb_set(cb, NL_CB_VALID, NL_CB_CUSTOM, on_reply, arg);
    nl_cb_set(cb, NL_CB_ACK, NL_CB_CUSTOM, on_ack, &done);
    pq_nl_clear(nl);
    err = nl_send_auto(nl->sk, msg);
    nlmsg_free(msg);
    /* One datagram per call: a reply, then the ack; our error callback stops it early. */
    while (err >= 0 && !done)
        err = nl_recvmsgs(nl->sk, cb);
    nl_cb_put(cb);
    return pq_nl_result(nl, err);
}

struct nl_msg *pq_tc_msg(int type, int flags, int ifindex, uint32_t parent, uint32_t handle,
                         uint32_t info, const char *kind)
{
    struct nl_msg *msg = nlmsg_alloc_simple(type, flags);
    struct tcmsg tcm;

    if (!msg)
        return NULL;
    memset(&tcm, 0, sizeof(tcm));
    tcm.tcm_family = AF_UNSPEC;
    tcm.tcm_ifindex = ifindex;
    tcm.tcm_parent = parent;
    tcm.tcm_handle = handle;
    tcm.tcm_info = info;
    if (nlmsg_append(msg, &tcm, sizeof(tcm), NLMSG_ALIGNTO) < 0 ||
        (kind && nla_put_string(msg, TCA_KIND, kind) < 0)) {
        nlmsg_free(msg);
        return NULL;
    }
    return msg;
}

struct nl_msg *pq_link_msg(int type, int ifindex, const char *name)
{
    struct nl_msg *msg = nlmsg_alloc_simple(type, 0);
    struct ifinfomsg ifi;

    if (!msg)
        return NULL;
    memset(&ifi, 0, sizeof(ifi));
    ifi.ifi_family = AF_UNSPEC;
    ifi.ifi_index = ifindex;
    if (nlmsg_append(msg, &ifi, sizeof(ifi), NLMSG_ALIGNTO) < 0 ||
        (!ifindex && nla_put_string(msg, IFLA_IFNAME, name) < 0)) {
        nlmsg_free(msg);
        return NULL;
    }
    return msg;
}

struct rtnl_qdisc *pq_qdisc_object(int ifindex, uint32_t parent, uint32_t handle,
                                   const char *kind, int *err)
{
    struct rtnl_qdisc *qd = rtnl_qdisc_alloc();

    *err = -NLE_NOMEM;
    if (!qd)
        return NULL;
    rtnl_tc_set_ifindex(TC_CAST(qd), ifindex);
    rtnl_tc_set_parent(TC_CAST(qd), parent);
    rtnl_tc_set_handle(TC_CAST(qd), handle);
    *err = kind ? rtnl_tc_set_kind(TC_CAST(qd), kind) : 0;
    if (*err < 0) {
        rtnl_qdisc_put(qd);
        return NULL;
    }
    return qd;
}

/* nl_msg_parse callback: keep (a reference to) the first qdisc object of the reply. */
static void keep_qdisc(struct nl_object *obj, void *arg)
{
    struct rtnl_qdisc **out = arg;

    if (!*out) {
        nl_object_get(obj);
        *out = (struct rtnl_qdisc *)obj;
    }
}

static int on_qdisc_reply(struct nl_msg *msg, void *arg)
{
    if (nlmsg_hdr(msg)->nlmsg_type == RTM_NEWQDISC)
        (void)nl_msg_parse(msg, keep_qdisc, arg);
    return NL_OK;
}

int pq_nl_get_qdisc(struct pq_nl *nl, int ifindex, uint32_t parent, struct rtnl_qdisc **out)
{
    struct rtnl_qdisc *qd = NULL;
    int err;

    *out = NULL;
    /* NLM_F_ECHO: kernels before 6.5 only multicast the answer to a GET unless asked to
     * echo it to the sender; the ack ends the exchange in every case. */
    err = pq_nl_request(nl, pq_tc_msg(RTM_GETQDISC, NLM_F_ECHO, ifindex, parent, 0, 0, NULL),
                        on_qdisc_reply, &qd);
    if (err < 0 && qd)
        rtnl_qdisc_put(qd);
    if (err == -ENOENT || err == -EINVAL) {
        pq_nl_clear(nl);        /* nothing reportable at that place */
        return 0;
    }
    if (err < 0)
        return err;
    *out = qd;
    return 0;
}

int pq_nl_add_qdisc(struct pq_nl *nl, struct rtnl_qdisc *qd, int flags)
{
    pq_nl_clear(nl);
    return pq_nl_result(nl, rtnl_qdisc_add(nl->sk, qd, flags));
}

int pq_nl_delete_qdisc(struct pq_nl *nl, int ifindex, uint32_t parent, uint32_t handle,
                       const char *kind)
{
    return pq_nl_request(nl, pq_tc_msg(RTM_DELQDISC, 0, ifindex, parent, handle, 0, kind),
                         NULL, NULL);
}

int pq_nl_class_exists(struct pq_nl *nl, int ifindex, uint32_t classid)
{
    int err = pq_nl_request(nl, pq_tc_msg(RTM_GETTCLASS, 0, ifindex, 0, classid, 0, NULL),
                            NULL, NULL);

    pq_nl_clear(nl);
    if (err == 0)
        return 1;
    if (err == -ENOENT || err == -EINVAL)
        return 0;
    return err;
}

int pq_nl_get_link(struct pq_nl *nl, int ifindex, const char *name, struct rtnl_link **out)
{
    int err;

    *out = NULL;
    pq_nl_clear(nl);
    nl_socket_enable_msg_peek(nl->sk);
    err = rtnl_link_get_kernel(nl->sk, ifindex, ifindex ? NULL : name, out);
    nl_socket_disable_msg_peek(nl->sk);
    err = pq_nl_result(nl, err);
    if (err == 0 && !*out)
        err = -ENODEV;
    if (err == -ENOENT)
        err = -ENODEV; /* what the kernel says for a name it does not know */
    return err;
}

int pq_nl_add_link(struct pq_nl *nl, struct rtnl_link *link, int flags)
{
    pq_nl_clear(nl);
    return pq_nl_result(nl, rtnl_link_add(nl->sk, link, flags));
}

int pq_nl_delete_link(struct pq_nl *nl, int ifindex)
{
    return pq_nl_request(nl, pq_link_msg(RTM_DELLINK, ifindex, NULL), NULL, NULL);
}
