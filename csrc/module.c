/*
 * module.c - plugqdisc._plugqdisc: the only file that knows Python.
 *
 * Thin glue over the C core's public API (plug_qdisc.h): convert arguments, release the GIL around exactly
 * the library call, take it back, and hand a failure's facts to Python through one
 * funnel: OSError(errno, strerror) carrying the step, the kernel's text and what was
 * found, as attributes. No words of ours here: plugqdisc/_errors.py owns the messages,
 * plugqdisc/ the validation and the defaults.
 */
#define PY_SSIZE_T_CLEAN
/* CPython's stable ABI as of 3.10 (PyType_FromModuleAndSpec, PyModule_AddType and
 * PyUnicode_AsUTF8AndSize enter it there): one build serves 3.10 and every later CPython. */
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030A0000
#endif
#include <Python.h>
#include <pthread.h>

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

#include "plug_qdisc.h"

#define PQ_CLOSED 1 /* sentinel "rc": the object is closed (or was never initialised) */

typedef struct {
    PyTypeObject *qdisc_type;
} module_state;

typedef struct {
    PyObject_HEAD
    struct plug_qdisc *q;        /* NULL before __init__ and once closed */
    /* Serialises every use of q: an nl_sock is not thread-safe. A plain pthread mutex:
     * CPython 3.11's PyThread lock reads the clock on every acquire, a syscall under UML. */
    pthread_mutex_t lock;
    unsigned long lock_gen;      /* pq_fork_generation() when lock was set up (fresh_lock) */
} QdiscObject;

/* The HAProxy-compatible functions drive one process-wide handle; this lock guards it. */
static pthread_mutex_t default_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long default_lock_gen;

/* What a failed call left in its handle, copied while the lock is still held: once it is
 * released another thread may overwrite it or free the handle. */
struct errinfo {
    struct pq_error e;
    char device[32];
};

static int
keep_error(const struct plug_qdisc *q, int rc, struct errinfo *ei)
{
    ei->e = *pq_last_error(q);
    if (ei->e.err == 0) {
        /* A failure before the handle recorded anything (no handle; bad arguments). */
        ei->e.err = -rc;
        ei->e.step = rc == -ENOTCONN ? PQ_STEP_STATE : PQ_STEP_ARGS;
    }
    snprintf(ei->device, sizeof ei->device, "%s", q ? pq_device(q) : "");
    return 0;
}

/* Set attribute NAME of EXC to VALUE (stolen). 0 or -1. */
static int
set_attr(PyObject *exc, const char *name, PyObject *value)
{
    if (value == NULL)
        return -1;
    int rc = PyObject_SetAttrString(exc, name, value);
    Py_DECREF(value);
    return rc;
}

/* The single error funnel: OSError(errno, strerror(errno)) with the facts as attributes
 * (step, kernel_message, device, found_kind, found_handle, held, waited_ms,
 * attach_errno, attach_step); OSError picks its subclass by errno. ENOMEM is MemoryError.
 * Always returns NULL. */
static PyObject *
raise_error(const struct errinfo *ei)
{
    const struct pq_error *e = &ei->e;
    if (e->err == ENOMEM)
        return PyErr_NoMemory();
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", e->err, strerror(e->err));
    if (exc == NULL)
        return NULL;
    if (set_attr(exc, "step", PyUnicode_FromString(pq_step_name(e->step))) < 0 ||
        set_attr(exc, "kernel_message", PyUnicode_DecodeUTF8(e->kernel, strlen(e->kernel),
                                                             "replace")) < 0 ||
        set_attr(exc, "device", PyUnicode_DecodeFSDefault(ei->device)) < 0 ||
        set_attr(exc, "found_kind", PyUnicode_DecodeFSDefault(e->found_kind)) < 0 ||
        set_attr(exc, "found_handle", PyLong_FromUnsignedLong(e->found_handle)) < 0 ||
        set_attr(exc, "held", PyLong_FromUnsignedLongLong(e->held)) < 0 ||
        set_attr(exc, "waited_ms", PyLong_FromUnsignedLong(e->waited_ms)) < 0 ||
        set_attr(exc, "attach_errno", PyLong_FromLong(e->attach_err)) < 0 ||
        set_attr(exc, "attach_step", PyUnicode_FromString(pq_step_name(e->attach_step))) < 0) {
        Py_DECREF(exc);
        return NULL;
    }
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return NULL;
}

/* A lock inherited through fork() may be held forever by a thread that does not exist
 * in the child: the child sets it up afresh (with the GIL held, before any use). The C
 * core reopens its socket likewise. */
static pthread_mutex_t *
fresh_lock(pthread_mutex_t *lock, unsigned long *owner)
{
    unsigned long now = pq_fork_generation();
    if (*owner != now) {
        pthread_mutex_init(lock, NULL);
        *owner = now;
    }
    return lock;
}

/* Run CALL on self->q with the GIL released and the object's lock held; on failure
 * copy the handle's facts into *EI before letting go of the lock. */
#define LOCKED(self, rc, call, ei)                                              \
    do {                                                                        \
        pthread_mutex_t *lk_ = fresh_lock(&(self)->lock, &(self)->lock_gen);    \
        Py_BEGIN_ALLOW_THREADS                                                  \
        pthread_mutex_lock(lk_);                                                \
        rc = (self)->q ? (call) : PQ_CLOSED;                                    \
        if (rc < 0)                                                             \
            keep_error((self)->q, rc, (ei));                                    \
        pthread_mutex_unlock(lk_);                                              \
        Py_END_ALLOW_THREADS                                                    \
    } while (0)

/* A closed object is a plain ValueError, outside the errno channel. */
static PyObject *
closed_error(void)
{
    PyErr_SetString(PyExc_ValueError, "I/O operation on a closed PlugQdisc");
    return NULL;
}

static PyObject *
result(int rc, const struct errinfo *ei)
{
    if (rc == PQ_CLOSED)
        return closed_error();
    if (rc < 0)
        return raise_error(ei);
    Py_RETURN_NONE;
}

/* "O&" converter: a Python int that fits 32 bits unsigned (the policy layer has checked
 * the range and said what to do; this only refuses what C cannot hold). */
static int
to_u32(PyObject *o, void *out)
{
    unsigned long v = PyLong_AsUnsignedLong(o);
    if (v == (unsigned long)-1 && PyErr_Occurred())
        return 0;
    if (v > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "Python int too large to convert to C uint32");
        return 0;
    }
    *(uint32_t *)out = (uint32_t)v;
    return 1;
}

/* A Python int that fits a C int, in *OUT. 0 (OverflowError, TypeError) or 1. */
static int
to_int(PyObject *o, int *out)
{
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return 0;
    if (v < INT_MIN || v > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "Python int too large to convert to C int");
        return 0;
    }
    *out = (int)v;
    return 1;
}

/* ---- the Qdisc type ---- */

PyDoc_STRVAR(Qdisc_doc,
"Qdisc(device, parent, handle, limit)\n--\n\n"
"A plug qdisc place (pq_new): device is a name or an ifindex; parent and handle are\n"
"32-bit tc handles; limit is in bytes, 0 for the device's default. Constructing does\n"
"no I/O; the first _attach() takes the namespace, opens the socket and finds the\n"
"device. Subclassable; plugqdisc.PlugQdisc is the public face.");

static PyObject *
Qdisc_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    QdiscObject *self = (QdiscObject *)alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->q = NULL;
    pthread_mutex_init(&self->lock, NULL);
    self->lock_gen = pq_fork_generation();
    return (PyObject *)self;
}

static int
Qdisc_init(QdiscObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"device", "parent", "handle", "limit", NULL};
    PyObject *device;
    uint32_t parent, handle, limit;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO&O&O&:Qdisc", kwlist, &device, to_u32,
                                     &parent, to_u32, &handle, to_u32, &limit))
        return -1;
    const char *name = NULL;
    int ifindex = 0;
    if (PyUnicode_Check(device)) {
        name = PyUnicode_AsUTF8AndSize(device, NULL);
        if (name == NULL)
            return -1;
    } else {
        if (!to_int(device, &ifindex))
            return -1;
    }
    if (self->q != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Qdisc.__init__ called twice");
        return -1;
    }
    struct plug_qdisc *q = NULL;
    int rc = pq_new(&q, name, ifindex, parent, handle, limit);
    if (rc < 0) {
        struct errinfo ei;
        keep_error(NULL, rc, &ei);
        raise_error(&ei);
        return -1;
    }
    self->q = q;
    return 0;
}

static void
Qdisc_dealloc(QdiscObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    pq_close(self->q); /* frees memory and the socket; no netlink traffic */
    self->q = NULL;
    pthread_mutex_destroy(&self->lock);
    freefunc tp_free = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int
Qdisc_traverse(QdiscObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    return 0;
}

/* Copy the bytes object (or None) O of length 4 or 16 into BUF; *HAS set. 0 or -1. */
static int
term_address(PyObject *o, uint8_t *buf, int *has)
{
    if (o == Py_None) {
        *has = 0;
        return 0;
    }
    char *data;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(o, &data, &n) < 0)
        return -1;
    if (n != 4 && n != 16) {
        PyErr_SetString(PyExc_ValueError, "an address is 4 or 16 bytes");
        return -1;
    }
    memcpy(buf, data, (size_t)n);
    *has = 1;
    return 0;
}

/* Fill T from the tuple plugqdisc/_match.py builds: (kind, family, ip_proto, src,
 * src_mask, dst, dst_mask, sport_lo, sport_hi, dport_lo, dport_hi, syn, fin, rst, mark,
 * mark_mask).
 * 0 or -1 with an exception. */
static int
term_from_tuple(PyObject *tup, struct pq_term *t)
{
    PyObject *src, *srcm, *dst, *dstm;
    int kind, has_mask;
    unsigned int sport_lo, sport_hi, dport_lo, dport_hi, mark, mark_mask;
    memset(t, 0, sizeof(*t));
    if (!PyArg_ParseTuple(tup, "iiiOOOOIIIIpppII:term", &kind, &t->family, &t->ip_proto,
                          &src, &srcm, &dst, &dstm, &sport_lo, &sport_hi, &dport_lo,
                          &dport_hi, &t->syn, &t->fin, &t->rst, &mark, &mark_mask))
        return -1;
    t->mark = mark;
    t->mark_mask = mark_mask;
    t->kind = (enum pq_term_kind)kind;
    t->sport_lo = (uint16_t)sport_lo;
    t->sport_hi = (uint16_t)sport_hi;
    t->dport_lo = (uint16_t)dport_lo;
    t->dport_hi = (uint16_t)dport_hi;
    if (term_address(src, t->src, &t->has_src) < 0 ||
        term_address(srcm, t->src_mask, &has_mask) < 0 ||
        term_address(dst, t->dst, &t->has_dst) < 0 ||
        term_address(dstm, t->dst_mask, &has_mask) < 0)
        return -1;
    return 0;
}

PyDoc_STRVAR(set_hold_doc, "_set_hold($self, ingress, terms, /)\n--\n\n"
"What to hold, before the first attach (pq_set_hold): ingress or egress, and the terms\n"
"(tuples built by plugqdisc._match) that select packets; () holds everything.");
static PyObject *
Qdisc_set_hold(QdiscObject *self, PyObject *args)
{
    int ingress;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "pO:_set_hold", &ingress, &seq))
        return NULL;
    PyObject *fast = PySequence_Tuple(seq);
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_Size(fast);
    struct pq_term *terms = n ? PyMem_Calloc((size_t)n, sizeof(*terms)) : NULL;
    if (n && terms == NULL) {
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (term_from_tuple(PyTuple_GetItem(fast, i), &terms[i]) < 0) {
            PyMem_Free(terms);
            Py_DECREF(fast);
            return NULL;
        }
    }
    Py_DECREF(fast);
    int rc;
    struct errinfo ei;
    LOCKED(self, rc, pq_set_hold(self->q, ingress, terms, (int)n), &ei);
    PyMem_Free(terms);
    return result(rc, &ei);
}

PyDoc_STRVAR(set_guard_doc, "_set_guard($self, on, max_hold_ms, /)\n--\n\n"
"Guard the hold from the next attach (pq_set_guard): released by this process's\n"
"guardian when the process dies; max_hold_ms > 0 also releases a longer hold.");
static PyObject *
Qdisc_set_guard(QdiscObject *self, PyObject *args)
{
    int on;
    uint32_t max_hold_ms;
    if (!PyArg_ParseTuple(args, "pO&:_set_guard", &on, to_u32, &max_hold_ms))
        return NULL;
    int rc;
    struct errinfo ei;
    LOCKED(self, rc, pq_set_guard(self->q, on, max_hold_ms), &ei);
    return result(rc, &ei);
}

PyDoc_STRVAR(attach_doc, "_attach($self, replace, netns_fd, /)\n--\n\n"
"Create the plug qdisc, or adopt ours already there (pq_attach); then release it.\n"
"netns_fd >= 0: the namespace to work in, used by the first attach only.");

/* Under the lock: the namespace (before the first connect only), then connect. */
static int
connect_in(struct plug_qdisc *q, int netns_fd)
{
    if (netns_fd >= 0 && !pq_connected(q)) {
        int rc = pq_set_netns(q, netns_fd);
        if (rc < 0)
            return rc;
    }
    return pq_connect(q);
}

/* The body of attach under the lock: the namespace and connect, then the attach. */
static int
attach_in(struct plug_qdisc *q, int replace, int netns_fd)
{
    int rc = connect_in(q, netns_fd);

    return rc < 0 ? rc : pq_attach(q, replace);
}

static PyObject *
Qdisc_attach(QdiscObject *self, PyObject *args)
{
    int replace, netns_fd;
    if (!PyArg_ParseTuple(args, "pi:_attach", &replace, &netns_fd))
        return NULL;
    int rc;
    struct errinfo ei;
    LOCKED(self, rc, attach_in(self->q, replace, netns_fd), &ei);
    return result(rc, &ei);
}

PyDoc_STRVAR(connect_doc, "_connect($self, netns_fd, /)\n--\n\n"
"Take the namespace (netns_fd >= 0, first time only), open the socket and find the device\n"
"(pq_connect); touches no qdisc.");
static PyObject *
Qdisc_connect(QdiscObject *self, PyObject *args)
{
    int netns_fd;
    if (!PyArg_ParseTuple(args, "i:_connect", &netns_fd))
        return NULL;
    int rc;
    struct errinfo ei;
    LOCKED(self, rc, connect_in(self->q, netns_fd), &ei);
    return result(rc, &ei);
}

PyDoc_STRVAR(set_record_doc, "_set_record($self, path, /)\n--\n\n"
"The record file of the hold the next attach creates (None: none); the hold's plan\n"
"unlinks it once the hold is undone (pq_set_record).");
static PyObject *
Qdisc_set_record(QdiscObject *self, PyObject *args)
{
    const char *path;
    if (!PyArg_ParseTuple(args, "z:_set_record", &path))
        return NULL;
    int rc;
    struct errinfo ei;
    LOCKED(self, rc, pq_set_record(self->q, path), &ei);
    return result(rc, &ei);
}

#define SIMPLE_METHOD(name, call, doc)                                \
    PyDoc_STRVAR(name##_doc, "_" #name "($self, /)\n--\n\n" doc);          \
    static PyObject *Qdisc_##name(QdiscObject *self, PyObject *unused) \
    {                                                                 \
        (void)unused;                                                 \
        int rc;                                                       \
        struct errinfo ei;                                            \
        LOCKED(self, rc, call(self->q), &ei);                         \
        return result(rc, &ei);                                       \
    }

SIMPLE_METHOD(buffer, pq_buffer, "Hold from now on; start a new epoch (TCQ_PLUG_BUFFER).")
SIMPLE_METHOD(release_one, pq_release_one,
              "Release the epoch before the latest buffer() (TCQ_PLUG_RELEASE_ONE).")
SIMPLE_METHOD(release_indefinite, pq_release_indefinite,
              "Release everything and pass traffic (TCQ_PLUG_RELEASE_INDEFINITE).")
SIMPLE_METHOD(stop_selecting, pq_stop_selecting,
              "Selective or ingress hold: stop selecting; what is held stays held.")

PyDoc_STRVAR(set_limit_doc, "_set_limit($self, nbytes, /)\n--\n\nSet the limit in bytes (TCQ_PLUG_LIMIT).");
static PyObject *
Qdisc_set_limit(QdiscObject *self, PyObject *arg)
{
    uint32_t limit;
    if (!to_u32(arg, &limit))
        return NULL;
    int rc;
    struct errinfo ei;
    LOCKED(self, rc, pq_set_limit(self->q, limit), &ei);
    return result(rc, &ei);
}

PyDoc_STRVAR(stats_doc, "_stats($self, /)\n--\n\n"
"(packets, bytes, qlen, backlog, drops, overlimits, requeues) from one RTM_GETQDISC.");
static PyObject *
Qdisc_stats(QdiscObject *self, PyObject *unused)
{
    (void)unused;
    struct pq_stats st;
    int rc;
    struct errinfo ei;
    LOCKED(self, rc, pq_get_stats(self->q, &st), &ei);
    if (rc != 0)
        return result(rc, &ei);
    return Py_BuildValue("(KKKKKKK)", (unsigned long long)st.packets,
                         (unsigned long long)st.bytes, (unsigned long long)st.qlen,
                         (unsigned long long)st.backlog, (unsigned long long)st.drops,
                         (unsigned long long)st.overlimits, (unsigned long long)st.requeues);
}

PyDoc_STRVAR(detach_doc, "_detach($self, timeout_ms, /)\n--\n\n"
"Release, wait up to timeout_ms for the backlog to drain, delete (pq_detach).");
static PyObject *
Qdisc_detach(QdiscObject *self, PyObject *arg)
{
    int timeout_ms;
    if (!to_int(arg, &timeout_ms))
        return NULL;
    int rc;
    struct errinfo ei;
    LOCKED(self, rc, pq_detach(self->q, timeout_ms), &ei);
    return result(rc, &ei);
}

PyDoc_STRVAR(close_doc, "close($self, /)\n--\n\n"
"Free the handle and its socket; the qdisc stays as it is. Idempotent.");
static PyObject *
Qdisc_close(QdiscObject *self, PyObject *unused)
{
    (void)unused;
    pthread_mutex_t *lk = fresh_lock(&self->lock, &self->lock_gen);
    struct plug_qdisc *q;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(lk);
    q = self->q;
    self->q = NULL; /* cleared before freeing: a second close is a no-op */
    pthread_mutex_unlock(lk);
    Py_END_ALLOW_THREADS
    pq_close(q);
    Py_RETURN_NONE;
}

/* Getters: what the handle last sent or learnt, copied under the lock so that a
 * concurrent close() cannot free the handle while we read it. */
enum { G_IFINDEX, G_DEVICE, G_LIMIT, G_BUFFERING, G_CREATED, G_ATTACHED, G_CONNECTED,
       G_EXPIRED, G_HANDLE, G_BAND, G_IFB };

struct snapshot {
    long ifindex, buffering, created, attached, connected, expired, band;
    unsigned long limit, handle;
    char device[32], ifb[32];
};

static int
take_snapshot(const struct plug_qdisc *q, struct snapshot *s)
{
    s->ifindex = pq_ifindex(q);
    s->limit = pq_limit(q);
    s->buffering = pq_is_buffering(q);
    s->created = pq_created(q);
    s->attached = pq_attached(q);
    s->connected = pq_connected(q);
    s->expired = pq_hold_expired(q);
    s->handle = pq_handle(q);
    s->band = pq_band(q);
    snprintf(s->device, sizeof s->device, "%s", pq_device(q));
    snprintf(s->ifb, sizeof s->ifb, "%s", pq_ifb(q));
    return 0;
}

static PyObject *
Qdisc_get(QdiscObject *self, void *which)
{
    struct snapshot s;
    struct errinfo ei;
    int rc;
    LOCKED(self, rc, take_snapshot(self->q, &s), &ei);
    if (rc == PQ_CLOSED) {
        /* A closed object answers "nothing": False, 0, None. */
        memset(&s, 0, sizeof s);
    }
    switch ((intptr_t)which) {
    case G_DEVICE:
        /* the kernel's name once found; before, the name or the index as given */
        if (!s.device[0] && s.ifindex)
            return PyLong_FromLong(s.ifindex);
        if (!s.device[0])
            Py_RETURN_NONE;
        return PyUnicode_DecodeFSDefault(s.device);
    case G_IFINDEX:
        if (!s.connected)
            Py_RETURN_NONE;
        return PyLong_FromLong(s.ifindex);
    case G_LIMIT:
        if (!s.limit)
            Py_RETURN_NONE; /* the device's default, not known before the first attach */
        return PyLong_FromUnsignedLong(s.limit);
    case G_CONNECTED:
        return PyBool_FromLong(s.connected);
    case G_EXPIRED:
        return PyBool_FromLong(s.expired);
    case G_BUFFERING:
        return PyBool_FromLong(s.buffering);
    case G_CREATED:
        return PyBool_FromLong(s.created);
    case G_HANDLE:
        return PyLong_FromUnsignedLong(s.handle);
    case G_BAND:
        return PyLong_FromLong(s.band);
    case G_IFB:
        return PyUnicode_DecodeFSDefault(s.ifb);
    default:
        return PyBool_FromLong(s.attached);
    }
}

static PyObject *
Qdisc_get_closed(QdiscObject *self, void *unused)
{
    (void)unused;
    return PyBool_FromLong(self->q == NULL);
}

static PyMethodDef Qdisc_methods[] = {
    {"_set_hold", (PyCFunction)Qdisc_set_hold, METH_VARARGS, set_hold_doc},
    {"_set_guard", (PyCFunction)Qdisc_set_guard, METH_VARARGS, set_guard_doc},
    {"_connect", (PyCFunction)Qdisc_connect, METH_VARARGS, connect_doc},
    {"_set_record", (PyCFunction)Qdisc_set_record, METH_VARARGS, set_record_doc},
    {"_attach", (PyCFunction)Qdisc_attach, METH_VARARGS, attach_doc},
    {"_buffer", (PyCFunction)Qdisc_buffer, METH_NOARGS, buffer_doc},
    {"_release_one", (PyCFunction)Qdisc_release_one, METH_NOARGS, release_one_doc},
    {"_release_indefinite", (PyCFunction)Qdisc_release_indefinite, METH_NOARGS,
     release_indefinite_doc},
    {"_stop_selecting", (PyCFunction)Qdisc_stop_selecting, METH_NOARGS, stop_selecting_doc},
    {"_set_limit", (PyCFunction)Qdisc_set_limit, METH_O, set_limit_doc},
    {"_stats", (PyCFunction)Qdisc_stats, METH_NOARGS, stats_doc},
    {"_detach", (PyCFunction)Qdisc_detach, METH_O, detach_doc},
    {"close", (PyCFunction)Qdisc_close, METH_NOARGS, close_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Qdisc_getset[] = {
    {"ifindex", (getter)Qdisc_get, NULL, "the device's ifindex (None before the first attach)",
     (void *)G_IFINDEX},
    {"device", (getter)Qdisc_get, NULL, "the device's name (the kernel's once attached; "
     "before, as given)", (void *)G_DEVICE},
    {"limit", (getter)Qdisc_get, NULL, "the limit in bytes (None: the device's default, not "
     "known before the first attach)", (void *)G_LIMIT},
    {"connected", (getter)Qdisc_get, NULL, "whether the device was found (first attach)",
     (void *)G_CONNECTED},
    {"expired", (getter)Qdisc_get, NULL, "whether max_hold released the current hold",
     (void *)G_EXPIRED},
    {"is_buffering", (getter)Qdisc_get, NULL, "whether we last told it to hold",
     (void *)G_BUFFERING},
    {"created", (getter)Qdisc_get, NULL, "whether our attach created the qdisc",
     (void *)G_CREATED},
    {"attached", (getter)Qdisc_get, NULL, "whether attach succeeded (and no detach since)",
     (void *)G_ATTACHED},
    {"handle_id", (getter)Qdisc_get, NULL, "the plug's handle (a number): as given, or the "
     "one attach chose; 0 while not chosen", (void *)G_HANDLE},
    {"band", (getter)Qdisc_get, NULL, "a selective hold's band of the device's prio, an "
     "ingress hold's ifb number; 0 otherwise", (void *)G_BAND},
    {"ifb", (getter)Qdisc_get, NULL, "an ingress hold's ifb device ('' otherwise)",
     (void *)G_IFB},
    {"closed", (getter)Qdisc_get_closed, NULL, "whether close() was called", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Qdisc_slots[] = {
    {Py_tp_new, Qdisc_new},
    {Py_tp_init, Qdisc_init},
    {Py_tp_dealloc, Qdisc_dealloc},
    {Py_tp_traverse, Qdisc_traverse},
    {Py_tp_methods, Qdisc_methods},
    {Py_tp_getset, Qdisc_getset},
    {Py_tp_doc, (void *)Qdisc_doc},
    {0, NULL},
};

static PyType_Spec Qdisc_spec = {
    .name = "plugqdisc._plugqdisc.Qdisc",
    .basicsize = sizeof(QdiscObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Qdisc_slots,
};

/* ---- module functions ---- */

PyDoc_STRVAR(parse_handle_doc, "parse_handle(text, /)\n--\n\n"
"'root', 'none', 'MAJ:' or 'MAJ:MIN' (hex) -> 32-bit tc handle; None if it is none of them.");
static PyObject *
parse_handle(PyObject *module, PyObject *arg)
{
    (void)module;
    Py_ssize_t n;
    const char *text = PyUnicode_AsUTF8AndSize(arg, &n);
    if (text == NULL)
        return NULL;
    uint32_t h;
    if ((size_t)n != strlen(text) || pq_parse_handle(text, &h) < 0)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(h);
}

/* Run one HAProxy-compatible call under the default handle's lock, GIL released; on
 * failure copy the default handle's facts (if there is a handle) before unlocking. */
#define DEFAULT_CALL(rc, call, ei)                                                 \
    do {                                                                           \
        pthread_mutex_t *lk_ = fresh_lock(&default_lock, &default_lock_gen);       \
        Py_BEGIN_ALLOW_THREADS                                                     \
        pthread_mutex_lock(lk_);                                                   \
        rc = (call);                                                               \
        if (rc < 0)                                                                \
            keep_error(plug_qdisc_default_handle(), rc, (ei));                     \
        pthread_mutex_unlock(lk_);                                                 \
        Py_END_ALLOW_THREADS                                                       \
    } while (0)

PyDoc_STRVAR(plug_qdisc_attach_doc, "plug_qdisc_attach(device, parent, handle, limit, /)\n--\n\n"
"The HAProxy helper's plug_qdisc_attach() on the process-wide default handle, with the\n"
"place already parsed (parent and handle as 32-bit tc handles).");
static PyObject *
py_plug_qdisc_attach(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *device;
    uint32_t parent, handle, limit;
    if (!PyArg_ParseTuple(args, "O&O&O&O&:plug_qdisc_attach", PyUnicode_FSConverter, &device,
                          to_u32, &parent, to_u32, &handle, to_u32, &limit))
        return NULL;
    int rc;
    struct errinfo ei;
    const char *name = PyBytes_AsString(device);
    if (name == NULL) {
        Py_DECREF(device);
        return NULL;
    }
    DEFAULT_CALL(rc, plug_qdisc_attach_at(name, parent, handle, limit), &ei);
    if (rc < 0 && !ei.device[0])
        snprintf(ei.device, sizeof ei.device, "%s", name);
    Py_DECREF(device);
    return result(rc, &ei);
}

#define DEFAULT_FUNCTION(name, doc)                                          \
    PyDoc_STRVAR(name##_doc, #name "()\n--\n\n" doc);                        \
    static PyObject *py_##name(PyObject *module, PyObject *unused)           \
    {                                                                        \
        (void)module;                                                        \
        (void)unused;                                                        \
        int rc;                                                              \
        struct errinfo ei;                                                   \
        DEFAULT_CALL(rc, name(), &ei);                                       \
        return result(rc, &ei);                                              \
    }

DEFAULT_FUNCTION(plug_qdisc_plug_buffer, "The HAProxy helper's plug_qdisc_plug_buffer().")
DEFAULT_FUNCTION(plug_qdisc_release_indefinite_buffer,
                 "The HAProxy helper's plug_qdisc_release_indefinite_buffer().")

PyDoc_STRVAR(guardian_pid_doc, "guardian_pid()\n--\n\n"
"The pid of this process's guardian, or 0 if none is running (pq_guardian_pid).");
static PyObject *
guardian_pid(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromLong(pq_guardian_pid());
}

/* Py_BuildValue "O&" converter: a device name (bytes from the kernel) as a str. */
static PyObject *
fs_string(void *name)
{
    return PyUnicode_DecodeFSDefault(name);
}

PyDoc_STRVAR(list_qdiscs_doc, "list_qdiscs(netns_fd, /)\n--\n\n"
"Every qdisc and link of the network namespace netns_fd (-1: the calling thread's), from\n"
"two netlink dumps (pq_dump): ([(ifindex, kind, handle, parent, packets, bytes, qlen,\n"
"backlog, drops), ...], [(ifindex, name, kind), ...]).");
static PyObject *
list_qdiscs(PyObject *module, PyObject *arg)
{
    (void)module;
    int netns_fd, rc;
    if (!to_int(arg, &netns_fd))
        return NULL;
    struct pq_dump d;
    struct errinfo ei;
    memset(&ei, 0, sizeof ei);
    Py_BEGIN_ALLOW_THREADS
    rc = pq_dump(netns_fd, &d, &ei.e);
    Py_END_ALLOW_THREADS
    if (rc < 0)
        return raise_error(&ei);
    PyObject *qdiscs = PyList_New(d.nqdiscs), *links = PyList_New(d.nlinks), *out = NULL;
    if (qdiscs == NULL || links == NULL)
        goto done;
    for (int i = 0; i < d.nqdiscs; i++) {
        const struct pq_qdisc_row *r = &d.qdiscs[i];
        PyObject *t = Py_BuildValue("(isIIKKKKK)", r->ifindex, r->kind, r->handle, r->parent,
                                    (unsigned long long)r->st.packets,
                                    (unsigned long long)r->st.bytes,
                                    (unsigned long long)r->st.qlen,
                                    (unsigned long long)r->st.backlog,
                                    (unsigned long long)r->st.drops);
        if (t == NULL)
            goto done;
        if (PyList_SetItem(qdiscs, i, t) < 0)
            goto done;
    }
    for (int i = 0; i < d.nlinks; i++) {
        const struct pq_link_row *r = &d.links[i];
        PyObject *t = Py_BuildValue("(iO&s)", r->ifindex, fs_string, r->name, r->kind);
        if (t == NULL)
            goto done;
        if (PyList_SetItem(links, i, t) < 0)
            goto done;
    }
    out = PyTuple_Pack(2, qdiscs, links);
done:
    Py_XDECREF(qdiscs);
    Py_XDECREF(links);
    pq_dump_free(&d);
    return out;
}

PyDoc_STRVAR(remove_hold_doc, "remove_hold(netns_fd, ifindex, mode, parent, handle, timeout_ms, /)\n--\n\n"
"Adopt the hold of mode (0 plain, 1 match, 2 ingress) on device ifindex whose plug has\n"
"handle (parent: a plain plug's parent) in the namespace netns_fd (-1: the calling\n"
"thread's), and remove it with the plan a detach runs: release, stop the diversion, wait\n"
"up to timeout_ms for the drain, remove (pq_remove_hold). None, or OSError with the facts.");
static PyObject *
remove_hold(PyObject *module, PyObject *args)
{
    (void)module;
    int netns_fd, ifindex, mode, timeout_ms, rc;
    unsigned int parent, handle;
    if (!PyArg_ParseTuple(args, "iiiIIi:remove_hold", &netns_fd, &ifindex, &mode, &parent,
                          &handle, &timeout_ms))
        return NULL;
    struct errinfo ei;
    memset(&ei, 0, sizeof ei);
    Py_BEGIN_ALLOW_THREADS
    rc = pq_remove_hold(netns_fd, ifindex, (enum pq_mode)mode, parent, handle, timeout_ms,
                        &ei.e);
    Py_END_ALLOW_THREADS
    if (rc < 0)
        return raise_error(&ei);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"remove_hold", remove_hold, METH_VARARGS, remove_hold_doc},
    {"guardian_pid", guardian_pid, METH_NOARGS, guardian_pid_doc},
    {"parse_handle", parse_handle, METH_O, parse_handle_doc},
    {"plug_qdisc_attach", py_plug_qdisc_attach, METH_VARARGS, plug_qdisc_attach_doc},
    {"plug_qdisc_plug_buffer", py_plug_qdisc_plug_buffer, METH_NOARGS,
     plug_qdisc_plug_buffer_doc},
    {"plug_qdisc_release_indefinite_buffer", py_plug_qdisc_release_indefinite_buffer,
     METH_NOARGS, plug_qdisc_release_indefinite_buffer_doc},
    {"list_qdiscs", list_qdiscs, METH_O, list_qdiscs_doc},
    {NULL, NULL, 0, NULL},
};

/* The C core's constants, written once there: the tree's handles, the ifb prefix, the
 * term kinds and every step a failure can name. 0 or -1. */
static int
add_constants(PyObject *module)
{
    PyObject *steps;
    int i;

    if (PyModule_AddIntConstant(module, "TREE_HANDLE", (long)PQ_TREE_HANDLE) < 0 ||
        PyModule_AddIntConstant(module, "MAX_HOLDS", PQ_MAX_HOLDS) < 0 ||
        PyModule_AddIntConstant(module, "TERM_FLOWER", PQ_TERM_FLOWER) < 0 ||
        PyModule_AddIntConstant(module, "TERM_MARK", PQ_TERM_MARK) < 0 ||
        PyModule_AddIntConstant(module, "MODE_PLAIN", PQ_MODE_PLAIN) < 0 ||
        PyModule_AddIntConstant(module, "MODE_MATCH", PQ_MODE_MATCH) < 0 ||
        PyModule_AddIntConstant(module, "MODE_INGRESS", PQ_MODE_INGRESS) < 0 ||
        PyModule_AddStringConstant(module, "IFB_PREFIX", PQ_IFB_PREFIX) < 0)
        return -1;
    steps = PyTuple_New(PQ_STEP_COUNT);
    if (steps == NULL)
        return -1;
    for (i = 0; i < PQ_STEP_COUNT; i++) {
        PyObject *name = PyUnicode_FromString(pq_step_name((enum pq_step)i));

        if (name == NULL) {
            Py_DECREF(steps);
            return -1;
        }
        if (PyTuple_SetItem(steps, i, name) < 0) {
            Py_DECREF(steps);
            return -1;
        }
    }
    /* steals the reference on success only */
    if (PyModule_AddObject(module, "STEPS", steps) < 0) {
        Py_DECREF(steps);
        return -1;
    }
    return 0;
}

static int
module_exec(PyObject *module)
{
    module_state *st = PyModule_GetState(module);
    st->qdisc_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Qdisc_spec, NULL);
    if (st->qdisc_type == NULL)
        return -1;
    if (PyModule_AddType(module, st->qdisc_type) < 0)
        return -1;
    return add_constants(module);
}

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    module_state *st = PyModule_GetState(module);
    Py_VISIT(st->qdisc_type);
    return 0;
}

static int
module_clear(PyObject *module)
{
    module_state *st = PyModule_GetState(module);
    Py_CLEAR(st->qdisc_type);
    return 0;
}

static void
module_free(void *module)
{
    module_clear((PyObject *)module);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef plugqdisc_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "plugqdisc._plugqdisc",
    .m_doc = "C glue over csrc/plug_qdisc.c (libnl): the plug qdisc's netlink calls.",
    .m_size = sizeof(module_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__plugqdisc(void)
{
    return PyModuleDef_Init(&plugqdisc_module);
}
