/*
 * plug_qdisc.c - the plug qdisc (sch_plug) driven over libnl-route-3.
 *
 * See plug_qdisc.h for the contract. Every kernel error is taken from the kernel's own
 * struct nlmsgerr (through a custom error callback), never through libnl's lossy NLE_*
 * mapping; NLE_* codes only ever describe libnl's own failures (out of memory, ...).
 * A failure leaves facts in the handle (step, errno, the kernel's text, what was found),
 * never sentences: the words are the caller's. Nothing here prints, exits or aborts;
 * nl_cli_* is never used (it exits on bad input).
 *
 * Each request is one sendmsg and one recvmsg: the socket does not peek to size its
 * buffer (libnl's default costs a second recvmsg), since an ack, an error or one qdisc
 * fits the buffer set once. Only the device lookup, whose reply can be large, peeks.
 */
#define _GNU_SOURCE
#include "pq_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
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

/* The kernel's hard_header_len is not in netlink; Ethernet and loopback both use 14. */
#define PQ_ETH_HLEN 14
/* Stand-in queue length when tx_queue_len is 0 (a 0 limit would drop everything). */
#define PQ_DEFAULT_TXQLEN 1000
/* Receive buffer without peeking: an ack (capped), an error with its TLVs, or one qdisc
 * with its statistics is a few hundred bytes. */
#define PQ_RECV_BUF 16384


/* The one global: the handle behind the HAProxy-compatible API. */
static struct plug_qdisc *default_handle;

/* ------------------------------------------------------------------------------------ */
/* errors: facts only                                                                   */

static const char *const step_names[PQ_STEP_COUNT] = {
    [PQ_STEP_NONE] = "none",
    [PQ_STEP_ARGS] = "check_arguments",
    [PQ_STEP_STATE] = "not_attached",
    [PQ_STEP_NETNS] = "enter_netns",
    [PQ_STEP_SOCKET] = "open_socket",
    [PQ_STEP_DEVICE] = "find_device",
    [PQ_STEP_INSPECT] = "inspect",
    [PQ_STEP_OCCUPIED] = "occupied",
    [PQ_STEP_PARENT] = "find_parent",
    [PQ_STEP_CREATE] = "create",
    [PQ_STEP_ADOPT] = "adopt",
    [PQ_STEP_REMOVE_OTHER] = "remove_other",
    [PQ_STEP_CHANGE] = "change",
    [PQ_STEP_STATS] = "read_stats",
    [PQ_STEP_DRAIN] = "drain",
    [PQ_STEP_DELETE] = "delete",
    [PQ_STEP_TREE] = "make_tree",
    [PQ_STEP_IFB] = "make_ifb",
    [PQ_STEP_INGRESS] = "make_ingress",
    [PQ_STEP_FILTER] = "add_filter",
    [PQ_STEP_UNDO] = "undo",
    [PQ_STEP_GUARD] = "guard",
    [PQ_STEP_DUMP] = "dump",
};

const char *pq_step_name(enum pq_step step)
{
    if ((int)step < 0 || step >= PQ_STEP_COUNT)
        return "unknown";
    return step_names[step];
}

/* Map a libnl NLE_* code (either sign) to a negative errno. Returns the -errno. */
int pq__nle_errno(int nle)
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

/* Turn the result of a libnl call into 0 or -errno: the kernel's own errno when the
 * kernel answered with an error (our error callback stored it), else the mapped NLE_*. */
int pq__nl_result(struct plug_qdisc *q, int nlerr)
{
    if (q->kerr)
        return -q->kerr;
    if (nlerr >= 0)
        return 0;
    return pq__nle_errno(nlerr);
}

/* Record that the call failed with ERR (negative) at STEP; the kernel's text, if any, is
 * already in q->e.kernel. Returns ERR. */
int pq__fail(struct plug_qdisc *q, enum pq_step step, int err)
{
    q->e.err = -err;
    q->e.step = step;
    return err;
}

/* Forget the previous request's kernel error before sending a new one. */
void pq__clear_kerr(struct plug_qdisc *q)
{
    q->kerr = 0;
    q->e.kernel[0] = '\0';
}

/* Start a public call: no failure yet. The facts of the last failed attach stay. */
static void reset_error(struct plug_qdisc *q)
{
    int attach_err = q->e.attach_err;
    enum pq_step attach_step = q->e.attach_step;

    memset(&q->e, 0, sizeof(q->e));
    q->e.attach_err = attach_err;
    q->e.attach_step = attach_step;
    q->kerr = 0;
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
        char *k = q->e.kernel;
        int n = nla_len(a);

        if (n > (int)sizeof(q->e.kernel) - 1)
            n = (int)sizeof(q->e.kernel) - 1;
        memcpy(k, nla_data(a), (size_t)n);
        k[n] = '\0';
        /* The kernel's text ends with a NUL, sometimes a newline: no trailing space. */
        n = (int)strlen(k);
        while (n > 0 && (k[n - 1] == '\n' || k[n - 1] == ' '))
            k[--n] = '\0';
    }
    return NL_STOP;
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
 * extended acks, capped acks, our error callback and no peeking. 0 or -errno. */
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
        return pq__nle_errno(err);
    }
    fd = nl_socket_get_fd(sk);
    /* Old kernels lack these options; errors then just carry no text. */
    (void)setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one));
    (void)setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
    err = nl_socket_modify_err_cb(sk, NL_CB_CUSTOM, on_nlmsgerr, q);
    if (err == 0)
        err = nl_socket_set_msg_buf_size(sk, PQ_RECV_BUF);
    if (err < 0) {
        nl_socket_free(sk);
        return pq__nle_errno(err);
    }
    nl_socket_disable_msg_peek(sk);
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

/* Run MAKE(ARG) with the calling thread in the namespace NETNS_FD (sockets keep the
 * namespace they were made in); the thread is switched back before returning, also on
 * error. MAKE's result, or -errno of the namespace switch (then also in *SWITCH_ERR). */
int pq__in_netns(int netns_fd, int (*make)(void *), void *arg, int *switch_err)
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
        /* Should not happen (we came from there). If it does, the thread is left in the
         * other namespace, and the caller hears of it. */
        err = *switch_err = -errno;
    }
    close(saved);
    return err;
}

struct maker {
    struct plug_qdisc *q;
    int (*make)(struct plug_qdisc *, void *);
    void *arg;
};

static int call_maker(void *m)
{
    struct maker *mk = m;

    return mk->make(mk->q, mk->arg);
}

/* Run MAKE(Q, ARG) in the handle's namespace (pq__in_netns). MAKE's result, or -errno of
 * the namespace switch with the step recorded. */
static int in_our_netns(struct plug_qdisc *q, int (*make)(struct plug_qdisc *, void *),
                        void *arg)
{
    struct maker mk = { q, make, arg };
    int switch_err, err = pq__in_netns(q->netns_fd, call_maker, &mk, &switch_err);

    return switch_err ? pq__fail(q, PQ_STEP_NETNS, switch_err) : err;
}

/* in_our_netns maker: the handle's libnl socket, into *(struct nl_sock **)ARG. */
static int make_nl_sock(struct plug_qdisc *q, void *arg)
{
    int err = connect_here(q, arg);

    return err < 0 ? pq__fail(q, PQ_STEP_SOCKET, err) : 0;
}

/* Make the handle's socket in its namespace. 0 or -errno, with the step recorded. */
static int make_socket(struct plug_qdisc *q)
{
    struct nl_sock *sk = NULL;
    int err = in_our_netns(q, make_nl_sock, &sk);

    if (err < 0) {
        if (sk)
            nl_socket_free(sk);
        return err;
    }
    q->sk = sk;
    q->sk_gen = pq_fork_generation();
    return 0;
}

/* in_our_netns maker: a plain NETLINK_ROUTE socket, its fd into *(int *)ARG. */
static int make_raw(struct plug_qdisc *q, void *arg)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);

    if (fd < 0)
        return pq__fail(q, PQ_STEP_SOCKET, -errno);
    *(int *)arg = fd;
    return 0;
}

/* A plain NETLINK_ROUTE socket in the handle's namespace (for the guardian). 0 or -errno. */
int pq__raw_socket(struct plug_qdisc *q, int *fd)
{
    *fd = -1;
    return in_our_netns(q, make_raw, fd);
}

/* Look the device up with one RTM_GETLINK and record what the handle needs. 0 or -errno
 * (-ENODEV: no such device), step recorded. The reply can be large (statistics, per-
 * family data), so this one request peeks to size its buffer. */
static int lookup_link(struct plug_qdisc *q)
{
    struct rtnl_link *link = NULL;
    unsigned int mtu, txqlen, arptype, hh;
    uint64_t lim;
    const char *name;
    int err;

    pq__clear_kerr(q);
    nl_socket_enable_msg_peek(q->sk);
    err = rtnl_link_get_kernel(q->sk, q->device[0] ? 0 : q->ifindex,
                               q->device[0] ? q->device : NULL, &link);
    nl_socket_disable_msg_peek(q->sk);
    err = pq__nl_result(q, err);
    if (err == 0 && !link)
        err = -ENODEV;
    if (err == -ENOENT)
        err = -ENODEV; /* what the kernel says for a name it does not know */
    if (err < 0)
        return pq__fail(q, PQ_STEP_DEVICE, err);
    q->ifindex = rtnl_link_get_ifindex(link);
    name = rtnl_link_get_name(link);
    if (name)
        snprintf(q->device, sizeof(q->device), "%s", name);
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

/* Start an operation: a fresh error record and, in a forked child, a socket of our own in
 * place of the one inherited from the parent (same namespace). 0 or -errno. */
static int begin(struct plug_qdisc *q)
{
    reset_error(q);
    if (!q->connected)
        return pq_connect(q);
    if (q->sk && q->sk_gen == pq_fork_generation())
        return 0;
    if (q->sk) {
        /* Closes only this process's copy of the fd; the parent's socket lives on. */
        nl_socket_free(q->sk);
        q->sk = NULL;
    }
    return make_socket(q);
}

/* Take the namespace, open the socket, look the device up. 0 or -errno. */
int pq_connect(struct plug_qdisc *q)
{
    int err;

    if (!q)
        return -EINVAL;
    if (q->connected)
        return 0;
    reset_error(q);
    if (q->netns_fd < 0) {
        /* The caller's namespace, kept so that a socket re-made after fork (perhaps by a
         * thread that has since moved) lands in the same one. */
        q->netns_fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (q->netns_fd < 0)
            return pq__fail(q, PQ_STEP_NETNS, -errno);
    }
    if (!q->sk || q->sk_gen != pq_fork_generation()) {
        if (q->sk)
            nl_socket_free(q->sk);
        q->sk = NULL;
        err = make_socket(q);
        if (err < 0)
            return err;
    }
    err = lookup_link(q);
    if (err < 0)
        return err;
    q->limit = q->asked_limit ? q->asked_limit : q->default_limit;
    if (!q->ingress) {
        /* Plain: the plug is at PARENT of the device; match mode: a leaf of the prio. */
        q->pl_ifindex = q->ifindex;
        q->pl_parent = q->nterms ? PQ_TREE_PLUG_CLASS : q->parent;
    }
    q->connected = 1;
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* requests                                                                             */

/* A qdisc object of KIND (NULL: any) with HANDLE at PARENT of IFINDEX, for a request;
 * NULL and *err set to a libnl error (-NLE_*) on failure. The caller puts it. */
struct rtnl_qdisc *pq__qdisc_object(int ifindex, uint32_t parent, uint32_t handle,
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

/* A plug qdisc object at the plug's place with ACTION (TCQ_PLUG_*) and LIMIT set; NULL and
 * *err (a libnl error) on failure. The caller puts it. */
static struct rtnl_qdisc *plug_object(struct plug_qdisc *q, int action, uint32_t limit,
                                      int *err)
{
    struct rtnl_qdisc *qd = pq__qdisc_object(q->pl_ifindex, q->pl_parent, q->handle, "plug",
                                             err);

    if (!qd)
        return NULL;
    /* libnl sends {action, limit} every time; set the limit first so that a creation
     * carries the real limit whatever the action (a 0 limit drops every packet). */
    *err = rtnl_qdisc_plug_set_limit(qd, (int)limit);
    if (*err == 0) {
        switch (action) {
        case TCQ_PLUG_BUFFER:
            *err = rtnl_qdisc_plug_buffer(qd);
            break;
        case TCQ_PLUG_RELEASE_ONE:
            *err = rtnl_qdisc_plug_release_one(qd);
            break;
        case TCQ_PLUG_RELEASE_INDEFINITE:
            *err = rtnl_qdisc_plug_release_indefinite(qd);
            break;
        default:
            break;              /* TCQ_PLUG_LIMIT: already set */
        }
    }
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

    qd = plug_object(q, action, limit, &err);
    if (!qd)
        return pq__nl_result(q, err);
    pq__clear_kerr(q);
    err = rtnl_qdisc_add(q->sk, qd, flags);
    rtnl_qdisc_put(qd);
    return pq__nl_result(q, err);
}

/* The message that releases the plug (for the guardian), or NULL (out of memory). */
struct nl_msg *pq__msg_release(struct plug_qdisc *q)
{
    struct nl_msg *msg = NULL;
    struct rtnl_qdisc *qd;
    int err;

    qd = plug_object(q, TCQ_PLUG_RELEASE_INDEFINITE, q->limit, &err);
    if (!qd)
        return NULL;
    if (rtnl_qdisc_build_add_request(qd, 0, &msg) < 0)
        msg = NULL;
    rtnl_qdisc_put(qd);
    return msg;
}

/* A tc message of TYPE with FLAGS about PARENT and HANDLE of IFINDEX, and no attributes
 * (a GET, a filter flush); NULL if out of memory. */
struct nl_msg *pq__msg_tc(int type, int flags, int ifindex, uint32_t parent, uint32_t handle)
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
    if (nlmsg_append(msg, &tcm, sizeof(tcm), NLMSG_ALIGNTO) < 0) {
        nlmsg_free(msg);
        return NULL;
    }
    return msg;
}

/* The message that deletes a qdisc of KIND with HANDLE at PARENT of IFINDEX. */
struct nl_msg *pq__msg_delete_qdisc(int ifindex, uint32_t parent, uint32_t handle,
                                    const char *kind)
{
    struct nl_msg *msg = pq__msg_tc(RTM_DELQDISC, 0, ifindex, parent, handle);

    if (msg && kind && nla_put_string(msg, TCA_KIND, kind) < 0) {
        nlmsg_free(msg);
        return NULL;
    }
    return msg;
}

/* Ack callback of tc_request: the exchange is over. Returns NL_STOP. */
static int on_ack(struct nl_msg *msg, void *arg)
{
    (void)msg;
    *(int *)arg = 1;
    return NL_STOP;
}

/* Send a tc request (TYPE, FLAGS, tcmsg fields) about IFINDEX whose answer is an ack, after any reply
 * that ON_REPLY (may be NULL) parses. 0 or -errno (the kernel's). */
static int tc_request(struct plug_qdisc *q, int type, int flags, int ifindex, uint32_t parent,
                      uint32_t handle, int (*on_reply)(struct nl_msg *, void *), void *arg)
{
    struct nl_msg *msg;
    struct nl_cb *cb, *sock_cb;
    int err, done = 0;

    if (!q->sk)
        return -ENOTCONN;
    msg = pq__msg_tc(type, flags | NLM_F_ACK, ifindex, parent, handle);
    if (!msg)
        return -ENOMEM;
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
    if (on_reply)
        nl_cb_set(cb, NL_CB_VALID, NL_CB_CUSTOM, on_reply, arg);
    nl_cb_set(cb, NL_CB_ACK, NL_CB_CUSTOM, on_ack, &done);
    pq__clear_kerr(q);
    err = nl_send_auto(q->sk, msg);
    nlmsg_free(msg);
    /* One datagram per call: a reply, then the ack; our error callback stops it early. */
    while (err >= 0 && !done)
        err = nl_recvmsgs(q->sk, cb);
    nl_cb_put(cb);
    return pq__nl_result(q, err);
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

/* Valid-message callback of the GET: parse an RTM_NEWQDISC reply. Returns NL_OK. */
static int on_qdisc_reply(struct nl_msg *msg, void *arg)
{
    if (nlmsg_hdr(msg)->nlmsg_type == RTM_NEWQDISC)
        (void)nl_msg_parse(msg, keep_qdisc, arg);
    return NL_OK;
}

/* Ask the kernel what qdisc is at PARENT of IFINDEX (one RTM_GETQDISC, no dump). *out
 * gets a reference the caller puts, or NULL if the kernel reported nothing there (ENOENT,
 * or EINVAL for a built-in qdisc such as noop that it refuses to report). 0 or -errno. */
int pq__get_qdisc(struct plug_qdisc *q, int ifindex, uint32_t parent, struct rtnl_qdisc **out)
{
    struct rtnl_qdisc *qd = NULL;
    int err;

    *out = NULL;
    /* NLM_F_ECHO: kernels before 6.5 only multicast the answer to a GET unless asked to
     * echo it to the sender; the ack ends the exchange in every case. */
    err = tc_request(q, RTM_GETQDISC, NLM_F_ECHO, ifindex, parent, 0, on_qdisc_reply, &qd);
    if (err == -ENOENT || err == -EINVAL) {
        /* Nothing reportable at that place. */
        if (qd)
            rtnl_qdisc_put(qd);
        pq__clear_kerr(q);
        return 0;
    }
    if (err < 0) {
        if (qd)
            rtnl_qdisc_put(qd);
        return err;
    }
    *out = qd;
    return 0;
}

/* Whether our parent exists (to tell a missing parent from a kernel without sch_plug,
 * which both answer a create with ENOENT): the root always does; a class "MAJ:MIN" is
 * asked for with one RTM_GETTCLASS (ENOENT: no qdisc MAJ: or no such class; EINVAL: MAJ:
 * has no classes). 1, 0, or -errno if the question itself failed. */
static int parent_exists(struct plug_qdisc *q)
{
    int err;

    if (q->parent == TC_H_ROOT)
        return 1;
    err = tc_request(q, RTM_GETTCLASS, 0, q->ifindex, 0, q->parent, NULL, NULL);
    pq__clear_kerr(q);
    if (err == 0)
        return 1;
    if (err == -ENOENT || err == -EINVAL)
        return 0;
    return err;
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

/* Record what qdisc QD (may be NULL) is, in the error's found_* facts. */
void pq__note_found(struct plug_qdisc *q, struct rtnl_qdisc *qd)
{
    const char *kind = qd ? rtnl_tc_get_kind(TC_CAST(qd)) : NULL;

    snprintf(q->e.found_kind, sizeof(q->e.found_kind), "%s", kind ? kind : "");
    q->e.found_handle = qd ? rtnl_tc_get_handle(TC_CAST(qd)) : 0;
}

/* Fill ST (may be NULL) from our plug qdisc. 0, -ENOENT if our plug is not there (what is
 * there is in found_*), or -errno; step STATS. Assumes begin() was called. */
static int read_stats(struct plug_qdisc *q, struct pq_stats *st)
{
    struct rtnl_qdisc *qd;
    struct rtnl_tc *tc;
    int err;

    err = pq__get_qdisc(q, q->pl_ifindex, q->pl_parent, &qd);
    if (err < 0)
        return pq__fail(q, PQ_STEP_STATS, err);
    if (!is_our_plug(q, qd)) {
        pq__note_found(q, qd);
        if (qd)
            rtnl_qdisc_put(qd);
        return pq__fail(q, PQ_STEP_STATS, -ENOENT);
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

/* Send RTM_DELQDISC for the qdisc of KIND (NULL: any) with HANDLE at PARENT of IFINDEX.
 * 0 or -errno. */
int pq__delete_qdisc(struct plug_qdisc *q, int ifindex, uint32_t parent, uint32_t handle,
                     const char *kind)
{
    struct rtnl_qdisc *qd;
    int err;

    pq__clear_kerr(q);
    qd = pq__qdisc_object(ifindex, parent, handle, kind, &err);
    if (!qd)
        return pq__nl_result(q, err);
    err = rtnl_qdisc_delete(q->sk, qd);
    rtnl_qdisc_put(qd);
    return pq__nl_result(q, err);
}

/* Delete our plug at its place. 0 or -errno. */
static int delete_plug(struct plug_qdisc *q)
{
    return pq__delete_qdisc(q, q->pl_ifindex, q->pl_parent, q->handle, "plug");
}

/* Send MSG (freed) and wait for its ack. 0 or -errno. */
int pq__send(struct plug_qdisc *q, struct nl_msg *msg)
{
    pq__clear_kerr(q);
    return pq__nl_result(q, nl_send_sync(q->sk, msg));
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

/* Make a handle; no I/O. 0, -EINVAL or -ENOMEM. */
int pq_new(struct plug_qdisc **out, const char *device, int ifindex, uint32_t parent,
           uint32_t handle, uint32_t limit)
{
    struct plug_qdisc *q;

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
    q->gslot = -1;
    q->parent = parent;
    q->handle = handle;
    q->asked_limit = limit;
    q->ifindex = device ? 0 : ifindex;
    if (device)
        snprintf(q->device, sizeof(q->device), "%s", device);
    *out = q;
    return 0;
}

/* Use the namespace NETNS_FD (duplicated). 0, -EISCONN after connect, or -errno. */
int pq_set_netns(struct plug_qdisc *q, int netns_fd)
{
    int fd;

    if (!q || netns_fd < 0)
        return -EINVAL;
    reset_error(q);
    if (q->connected)
        return pq__fail(q, PQ_STEP_ARGS, -EISCONN);
    fd = fcntl(netns_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return pq__fail(q, PQ_STEP_NETNS, -errno);
    if (q->netns_fd >= 0)
        close(q->netns_fd);
    q->netns_fd = fd;
    return 0;
}

/* What to hold: ingress or egress, all or what TERMS select. 0, -EISCONN, -EINVAL. */
int pq_set_hold(struct plug_qdisc *q, int ingress, const struct pq_term *terms, int nterms)
{
    struct pq_term *copy = NULL;
    int i;

    if (!q || nterms < 0 || (nterms > 0 && !terms))
        return -EINVAL;
    reset_error(q);
    if (q->connected)
        return pq__fail(q, PQ_STEP_ARGS, -EISCONN);
    if ((ingress || nterms) && q->parent != TC_H_ROOT)
        return pq__fail(q, PQ_STEP_ARGS, -EINVAL);
    if (nterms && (q->handle == PQ_TREE_HANDLE || q->handle == TC_H_INGRESS))
        return pq__fail(q, PQ_STEP_ARGS, -EINVAL);
    for (i = 0; i < nterms; i++) {
        const struct pq_term *t = &terms[i];

        if (t->kind == PQ_TERM_MARK ? (t->mark & t->mark_mask) != t->mark || t->mark == 0
                                    : t->kind != PQ_TERM_FLOWER ||
                                      (t->family != AF_INET && t->family != AF_INET6) ||
                                      t->ip_proto > 255 || t->sport_lo > t->sport_hi ||
                                      t->dport_lo > t->dport_hi)
            return pq__fail(q, PQ_STEP_ARGS, -EINVAL);
    }
    if (nterms) {
        copy = calloc((size_t)nterms, sizeof(*copy));
        if (!copy)
            return -ENOMEM;
        memcpy(copy, terms, (size_t)nterms * sizeof(*copy));
    }
    free(q->terms);
    q->terms = copy;
    q->nterms = nterms;
    q->ingress = ingress ? 1 : 0;
    return 0;
}

/* pq_new + pq_set_netns + pq_connect; frees the handle on failure. 0 or -errno. */
int pq_open(struct plug_qdisc **out, const char *device, int ifindex, uint32_t parent,
            uint32_t handle, uint32_t limit, int netns_fd)
{
    struct plug_qdisc *q;
    int err;

    err = pq_new(&q, device, ifindex, parent, handle, limit);
    if (err < 0)
        return err;
    if (netns_fd >= 0)
        err = pq_set_netns(q, netns_fd);
    if (err == 0)
        err = pq_connect(q);
    if (err < 0) {
        pq_close(q);
        return err;
    }
    *out = q;
    return 0;
}

/* After a create answered ENOENT: a missing parent (step PARENT) or a kernel without
 * sch_plug (step CREATE). Returns ERR. */
static int create_failed(struct plug_qdisc *q, int err)
{
    char kernel[sizeof(q->e.kernel)];
    int exists;

    if (err != -ENOENT)
        return pq__fail(q, PQ_STEP_CREATE, err);
    memcpy(kernel, q->e.kernel, sizeof(kernel));
    exists = parent_exists(q);
    memcpy(q->e.kernel, kernel, sizeof(kernel)); /* the create's text, not the probe's */
    return pq__fail(q, exists == 0 ? PQ_STEP_PARENT : PQ_STEP_CREATE, err);
}

/* Release the plug attach just made or adopted: a new plug qdisc holds, and the contract
 * is that traffic passes after attach. If that fails and CREATED, delete the plug rather
 * than leave the device held with nobody in charge (it holds nothing we were asked to
 * keep). 0 or -errno, step CHANGE recorded. */
static int release_new(struct plug_qdisc *q, int created)
{
    int err = send_plug(q, 0, TCQ_PLUG_RELEASE_INDEFINITE, q->limit);

    if (err < 0) {
        struct pq_error keep;

        pq__fail(q, PQ_STEP_CHANGE, err);
        keep = q->e;
        if (created)
            (void)delete_plug(q);
        q->e = keep;
    }
    return err;
}

/* Create the plug at its place with the limit (CREATE|EXCL) and release it; a plug that
 * cannot be released is deleted again. 0 or -errno, step recorded. */
int pq__create_plug(struct plug_qdisc *q)
{
    int err = send_plug(q, NLM_F_CREATE | NLM_F_EXCL, TCQ_PLUG_LIMIT, q->limit);

    if (err < 0)
        return create_failed(q, err);
    return release_new(q, 1);
}

/* Create or adopt the plug qdisc at the handle's place, then release it. 0 or -errno. */
int pq_attach(struct plug_qdisc *q, int replace)
{
    struct rtnl_qdisc *qd = NULL;
    int err, created;

    if (!q)
        return -EINVAL;
    err = begin(q);
    if (err == 0 && (q->ingress || q->nterms)) {
        /* A selective or ingress hold: the tree is ours alone, made once. */
        if (!q->attached) {
            err = pq__tree_attach(q, replace);
            if (err < 0)
                goto out;
            q->created = 1;
            q->is_buffering = 0;
            q->attached = 1;
        }
        goto guard;
    }
    if (err == 0) {
        err = pq__get_qdisc(q, q->ifindex, q->parent, &qd);
        if (err < 0)
            pq__fail(q, PQ_STEP_INSPECT, err);
    }
    if (err < 0)
        goto out;

    if (!qd || rtnl_tc_get_handle(TC_CAST(qd)) == 0) {
        /* Nothing, or the kernel's default: make ours. */
        created = 1;
        err = send_plug(q, NLM_F_CREATE | NLM_F_EXCL, TCQ_PLUG_LIMIT, q->limit);
        if (err < 0)
            create_failed(q, err);
    } else if (is_our_plug(q, qd)) {
        /* Ours from an earlier run: adopt; only an explicit limit overrides its limit.
         * A second attach of the same handle keeps knowing that it created it. */
        created = q->attached && q->created;
        err = q->asked_limit ? send_plug(q, 0, TCQ_PLUG_LIMIT, q->limit) : 0;
        if (err < 0)
            pq__fail(q, PQ_STEP_ADOPT, err);
    } else if (replace && rtnl_tc_get_handle(TC_CAST(qd)) == q->handle) {
        /* Same handle, other kind: the kernel takes a replace as a change of that qdisc
         * and refuses the kind ("Invalid qdisc name"). Delete it, then create ours. */
        created = 1;
        err = pq__delete_qdisc(q, q->ifindex, q->parent, q->handle,
                               rtnl_tc_get_kind(TC_CAST(qd)));
        if (err < 0) {
            pq__note_found(q, qd);
            pq__fail(q, PQ_STEP_REMOVE_OTHER, err);
        } else {
            err = send_plug(q, NLM_F_CREATE | NLM_F_EXCL, TCQ_PLUG_LIMIT, q->limit);
            if (err < 0)
                create_failed(q, err);
        }
    } else if (replace) {
        created = 1;
        err = send_plug(q, NLM_F_CREATE | NLM_F_REPLACE, TCQ_PLUG_LIMIT, q->limit);
        if (err < 0)
            create_failed(q, err);
    } else {
        pq__note_found(q, qd);
        err = pq__fail(q, PQ_STEP_OCCUPIED, -EEXIST);
    }
    if (qd)
        rtnl_qdisc_put(qd);
    if (err < 0)
        goto out;
    if ((err = release_new(q, created)) < 0) {
        q->attached = 0;
        goto out;
    }
    q->created = created;
    q->is_buffering = 0;
    q->attached = 1;
guard:
    err = pq__guard_register(q);
    if (err < 0) {
        /* Unguarded is not what was asked for: undo the attach. */
        struct pq_error keep = q->e;

        if (q->created)
            (void)pq_detach(q, 1000);
        q->attached = 0;
        q->e = keep;
        goto out;
    }
    q->e.attach_err = 0;
    q->e.attach_step = PQ_STEP_NONE;
    return 0;
out:
    q->e.attach_err = q->e.err;
    q->e.attach_step = q->e.step;
    return err;
}

/* Send one plug action to an attached handle. 0, -ENOTCONN before attach, or -errno. */
static int plug_action(struct plug_qdisc *q, int action, uint32_t limit)
{
    int err;

    if (!q)
        return -EINVAL;
    reset_error(q);
    if (!q->attached)
        return pq__fail(q, PQ_STEP_STATE, -ENOTCONN);
    err = begin(q);
    if (err < 0)
        return err;
    err = send_plug(q, 0, action, limit);
    if (err < 0)
        return pq__fail(q, PQ_STEP_CHANGE, err);
    return 0;
}

/* TCQ_PLUG_BUFFER: start a new epoch and hold. 0 or -errno. */
int pq_buffer(struct plug_qdisc *q)
{
    int err = plug_action(q, TCQ_PLUG_BUFFER, q ? q->limit : 0);

    if (err == 0) {
        q->is_buffering = 1;
        pq__guard_hold(q, 1);
    }
    return err;
}

/* TCQ_PLUG_RELEASE_ONE: release the previous epoch; still holding. 0 or -errno. */
int pq_release_one(struct plug_qdisc *q)
{
    return plug_action(q, TCQ_PLUG_RELEASE_ONE, q ? q->limit : 0);
}

/* TCQ_PLUG_RELEASE_INDEFINITE: release everything and pass traffic. 0 or -errno. */
int pq_release_indefinite(struct plug_qdisc *q)
{
    int err = plug_action(q, TCQ_PLUG_RELEASE_INDEFINITE, q ? q->limit : 0);

    if (err == 0) {
        if (q->is_buffering)
            pq__guard_hold(q, 0);
        q->is_buffering = 0;
    }
    return err;
}

/* TCQ_PLUG_LIMIT: set the limit in bytes (0: the device's default). 0 or -errno. */
int pq_set_limit(struct plug_qdisc *q, uint32_t limit)
{
    uint32_t lim;
    int err;

    if (!q)
        return -EINVAL;
    /* 0 would drop every packet; as at creation it means the device's default. */
    lim = limit ? limit : q->default_limit;
    err = plug_action(q, TCQ_PLUG_LIMIT, lim);
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
    /* No tree, no plug to read; after a failed attach, say why it failed again. */
    if (!q->attached && (q->ingress || q->nterms || q->e.attach_err))
        return pq__fail(q, PQ_STEP_STATE, -ENOTCONN);
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
    int64_t start, deadline;
    int err;

    if (!q)
        return -EINVAL;
    err = pq_release_indefinite(q);
    if (err < 0 && err != -ENOTCONN) {
        /* Gone, or another qdisc in its place (ENOENT, EINVAL or EEXIST from the
         * kernel): if our plug is no longer there, say -ENOENT and let go of it. */
        struct pq_error keep = q->e;

        if (read_stats(q, NULL) == -ENOENT) {
            q->attached = 0;
            pq__guard_unregister(q);
            return -ENOENT;
        }
        q->e = keep;
        return err;
    }
    if (err < 0)
        return err;
    if (q->ingress || q->nterms) {
        /* Send nothing more to the plug, then let it drain. */
        err = pq__tree_divert_off(q);
        if (err < 0)
            return err;
    }

    start = now_ms();
    deadline = start + (timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        err = read_stats(q, &st);
        if (err == -ENOENT)
            q->attached = 0;
        if (err < 0)
            return err;
        /* At ingress, released packets pass through the ifb: wait for them too. */
        if (st.qlen == 0 && (st.qlen = pq__tree_in_flight(q)) == 0)
            break;
        if (now_ms() >= deadline) {
            q->e.held = st.qlen;
            q->e.waited_ms = (uint32_t)(now_ms() - start);
            return pq__fail(q, PQ_STEP_DRAIN, -ETIMEDOUT);
        }
        nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
    }

    if (q->ingress || q->nterms) {
        err = pq__tree_remove(q);
        if (err == -EBUSY) {
            /* Released and removed but for an empty ingress qdisc (see tree.c). */
            q->attached = 0;
            q->is_buffering = 0;
            pq__guard_unregister(q);
        }
        if (err < 0)
            return err;
    } else {
        err = delete_plug(q);
        if (err == -ENOENT)
            q->attached = 0;
        if (err < 0)
            return pq__fail(q, PQ_STEP_DELETE, err);
    }
    q->attached = 0;
    q->is_buffering = 0;
    pq__guard_unregister(q);
    return 0;
}

/* Guard from the next attach; max_hold. 0, -EINVAL, -EISCONN. */
int pq_set_guard(struct plug_qdisc *q, int on, uint32_t max_hold_ms)
{
    if (!q || (max_hold_ms && !on))
        return -EINVAL;
    reset_error(q);
    if (q->attached)
        return pq__fail(q, PQ_STEP_ARGS, -EISCONN);
    q->guard = on ? 1 : 0;
    q->max_hold_ms = max_hold_ms;
    return 0;
}

/* 1 if max_hold released the current hold. */
int pq_hold_expired(const struct plug_qdisc *q)
{
    return q ? pq__guard_expired(q) : 0;
}

/* Free the handle, its socket and its namespace fd. The qdisc stays. NULL is fine. */
void pq_close(struct plug_qdisc *q)
{
    if (!q)
        return;
    pq__guard_unregister(q);
    if (q->sk)
        nl_socket_free(q->sk);
    if (q->netns_fd >= 0)
        close(q->netns_fd);
    free(q->terms);
    if (q == default_handle)
        default_handle = NULL;
    free(q);
}

/* 1 once the namespace is taken and the device found. */
int pq_connected(const struct plug_qdisc *q)
{
    return q ? q->connected : 0;
}

/* The device's ifindex (0 for NULL, or by name before connect). */
int pq_ifindex(const struct plug_qdisc *q)
{
    return q ? q->ifindex : 0;
}

/* The device's name as the kernel has it ("" for NULL, or by index before connect). */
const char *pq_device(const struct plug_qdisc *q)
{
    return q ? q->device : "";
}

/* The limit in force, in bytes; before connect the one asked for. 0 for NULL. */
uint32_t pq_limit(const struct plug_qdisc *q)
{
    if (!q)
        return 0;
    return q->connected ? q->limit : q->asked_limit;
}

/* 1 if we last told the qdisc to hold (and max_hold has not released it since). */
int pq_is_buffering(const struct plug_qdisc *q)
{
    return q ? q->is_buffering && !pq__guard_expired(q) : 0;
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

/* The last call's failure. */
const struct pq_error *pq_last_error(const struct plug_qdisc *q)
{
    static const struct pq_error none;

    return q ? &q->e : &none;
}

/* ------------------------------------------------------------------------------------ */
/* the HAProxy-compatible API                                                           */

/* Attach the default handle (replacing any previous one). The handle is kept after a
 * failed attach so that its error can be read; it is then not attached. 0 or -errno. */
int plug_qdisc_attach_at(const char *device, uint32_t parent, uint32_t handle, uint32_t limit)
{
    struct plug_qdisc *q;
    int err;

    pq_close(default_handle);
    err = pq_new(&q, device, 0, parent, handle, limit);
    if (err < 0)
        return err;
    default_handle = q;
    /* Not replace: adopts our own plug if it is already there. */
    return pq_attach(q, 0);
}

int plug_qdisc_attach(char *device, char *parent, char *id, uint32_t limit)
{
    uint32_t p, h;

    if (pq_parse_handle(parent ? parent : "root", &p) < 0 ||
        pq_parse_handle(id ? id : "1:", &h) < 0)
        return -EINVAL;
    return plug_qdisc_attach_at(device, p, h, limit);
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
