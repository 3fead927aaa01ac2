/*
 * module.c - plugqdisc._plugqdisc: the only file that knows Python.
 *
 * Thin glue over plug_qdisc.[ch]: parse arguments, release the GIL around exactly
 * the library call, take it back and turn a negative errno into OSError(errno, ...).
 * Policy (defaults, messages, exception classes, context managers) is in plugqdisc/.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "plug_qdisc.h"

#define PQ_CLOSED 1 /* sentinel "rc": the object was closed, raise ValueError */

typedef struct {
    PyTypeObject *qdisc_type;
} module_state;

typedef struct {
    PyObject_HEAD
    struct plug_qdisc *q;        /* NULL once closed */
    /* Serialises every use of q: an nl_sock is not thread-safe. A plain pthread mutex:
     * CPython 3.11's PyThread lock reads the clock on every acquire, a syscall under UML. */
    pthread_mutex_t lock;
    unsigned long lock_gen;      /* pq_fork_generation() when lock was set up (fresh_lock) */
} QdiscObject;

/* The HAProxy-compatible functions drive one process-wide handle; this lock guards it. */
static pthread_mutex_t default_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long default_lock_gen;

/* What a failed call left in its handle, copied while the lock is still held: once it is
 * released another thread may overwrite the message or free the handle. */
struct errinfo {
    char detail[512];
    char device[32];
};

static int
keep_error(const struct plug_qdisc *q, struct errinfo *ei)
{
    snprintf(ei->detail, sizeof ei->detail, "%s", q ? pq_last_message(q) : "");
    snprintf(ei->device, sizeof ei->device, "%s", q ? pq_device(q) : "");
    return 0;
}

/* The single error funnel: raise OSError(ERR, TEXT[, DEVICE]); OSError picks the subclass
 * by errno (PermissionError...). ENOMEM is MemoryError. Always returns NULL. */
static PyObject *
raise_errno(int err, const char *text, PyObject *device)
{
    if (err == ENOMEM)
        return PyErr_NoMemory();
    PyObject *exc = device
        ? PyObject_CallFunction(PyExc_OSError, "isO", err, text, device)
        : PyObject_CallFunction(PyExc_OSError, "is", err, text);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* -errno from the C core -> OSError(errno, "strerror (originated from CALL): kernel
 * text", device). */
static PyObject *
set_error(int rc, const char *call, const struct errinfo *ei)
{
    char text[sizeof ei->detail + 128];
    snprintf(text, sizeof text, "%s (originated from %s)%s%s", strerror(-rc), call,
             ei->detail[0] ? ": " : "", ei->detail);
    PyObject *device = ei->device[0] ? PyUnicode_DecodeFSDefault(ei->device) : NULL;
    if (ei->device[0] && device == NULL)
        return NULL;
    raise_errno(-rc, text, device);
    Py_XDECREF(device);
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
 * copy the handle's message into *EI before letting go of the lock. */
#define LOCKED(self, rc, call, ei)                                              \
    do {                                                                        \
        pthread_mutex_t *lk_ = fresh_lock(&(self)->lock, &(self)->lock_gen);    \
        Py_BEGIN_ALLOW_THREADS                                                  \
        pthread_mutex_lock(lk_);                                                \
        rc = (self)->q ? (call) : PQ_CLOSED;                                    \
        if (rc < 0)                                                             \
            keep_error((self)->q, (ei));                                        \
        pthread_mutex_unlock(lk_);                                              \
        Py_END_ALLOW_THREADS                                                    \
    } while (0)

static PyObject *
closed_error(void)
{
    PyErr_SetString(PyExc_ValueError, "I/O operation on a closed PlugQdisc");
    return NULL;
}

static PyObject *
result(int rc, const char *call, const struct errinfo *ei)
{
    if (rc == PQ_CLOSED)
        return closed_error();
    if (rc < 0)
        return set_error(rc, call, ei);
    Py_RETURN_NONE;
}

/* "O&" converter: a Python int in [0, 2**32). */
static int
to_u32(PyObject *o, void *out)
{
    if (!PyLong_Check(o) || PyBool_Check(o)) {
        PyErr_Format(PyExc_TypeError, "expected an int, not %.100s", Py_TYPE(o)->tp_name);
        return 0;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "must be in the range 0 to 2**32-1");
        return 0;
    }
    if (v > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "must be in the range 0 to 2**32-1");
        return 0;
    }
    *(uint32_t *)out = (uint32_t)v;
    return 1;
}

/* ---- the Qdisc type ---- */

PyDoc_STRVAR(Qdisc_doc,
"Qdisc(device, parent, handle, limit, netns_fd)\n--\n\n"
"A plug qdisc place and its own netlink socket (pq_open). device is a name or an\n"
"ifindex; parent and handle are 32-bit tc handles; limit is in bytes, 0 for the\n"
"device's default; netns_fd is -1 or a network namespace fd (duplicated).\n"
"Opening looks the device up (one RTM_GETLINK) and touches no qdisc.");

static PyObject *
Qdisc_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"device", "parent", "handle", "limit", "netns_fd", NULL};
    PyObject *device;
    uint32_t parent, handle, limit;
    int netns_fd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO&O&O&i:Qdisc", kwlist, &device, to_u32,
                                     &parent, to_u32, &handle, to_u32, &limit, &netns_fd))
        return NULL;
    const char *name = NULL;
    int ifindex = 0;
    if (PyUnicode_Check(device)) {
        Py_ssize_t n;
        name = PyUnicode_AsUTF8AndSize(device, &n);
        if (name == NULL)
            return NULL;
        if (n == 0 || (size_t)n != strlen(name)) {
            PyErr_SetString(PyExc_ValueError, "device name is empty or contains a NUL");
            return NULL;
        }
    } else if (PyLong_Check(device) && !PyBool_Check(device)) {
        long v = PyLong_AsLong(device);
        if (v == -1 && PyErr_Occurred())
            return NULL;
        if (v <= 0 || v > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "ifindex must be a positive int");
            return NULL;
        }
        ifindex = (int)v;
    } else {
        PyErr_Format(PyExc_TypeError, "device must be a str or an int ifindex, not %.100s",
                     Py_TYPE(device)->tp_name);
        return NULL;
    }

    QdiscObject *self = (QdiscObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    pthread_mutex_init(&self->lock, NULL);
    self->lock_gen = pq_fork_generation();
    struct plug_qdisc *q = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = pq_open(&q, name, ifindex, parent, handle, limit, netns_fd);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        Py_DECREF(self);
        return raise_errno(-rc, strerror(-rc), device);
    }
    self->q = q;
    return (PyObject *)self;
}

static void
Qdisc_dealloc(QdiscObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    pq_close(self->q); /* frees memory and the socket; no netlink traffic */
    self->q = NULL;
    pthread_mutex_destroy(&self->lock);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

PyDoc_STRVAR(attach_doc, "attach($self, replace, /)\n--\n\n"
"Create the plug qdisc, or adopt ours already there (pq_attach); then release it.");
static PyObject *
Qdisc_attach(QdiscObject *self, PyObject *arg)
{
    int replace = PyObject_IsTrue(arg);
    if (replace < 0)
        return NULL;
    int rc;
    struct errinfo ei;
    LOCKED(self, rc, pq_attach(self->q, replace), &ei);
    return result(rc, "pq_attach", &ei);
}

#define SIMPLE_METHOD(name, call, doc)                                \
    PyDoc_STRVAR(name##_doc, #name "($self, /)\n--\n\n" doc);          \
    static PyObject *Qdisc_##name(QdiscObject *self, PyObject *unused) \
    {                                                                 \
        (void)unused;                                                 \
        int rc;                                                       \
        struct errinfo ei;                                            \
        LOCKED(self, rc, call(self->q), &ei);                         \
        return result(rc, #call, &ei);                                \
    }

SIMPLE_METHOD(buffer, pq_buffer, "Hold from now on; start a new epoch (TCQ_PLUG_BUFFER).")
SIMPLE_METHOD(release_one, pq_release_one,
              "Release the epoch before the latest buffer() (TCQ_PLUG_RELEASE_ONE).")
SIMPLE_METHOD(release_indefinite, pq_release_indefinite,
              "Release everything and pass traffic (TCQ_PLUG_RELEASE_INDEFINITE).")

PyDoc_STRVAR(set_limit_doc, "set_limit($self, nbytes, /)\n--\n\nSet the limit in bytes (TCQ_PLUG_LIMIT).");
static PyObject *
Qdisc_set_limit(QdiscObject *self, PyObject *arg)
{
    uint32_t limit;
    if (!to_u32(arg, &limit))
        return NULL;
    int rc;
    struct errinfo ei;
    LOCKED(self, rc, pq_set_limit(self->q, limit), &ei);
    return result(rc, "pq_set_limit", &ei);
}

PyDoc_STRVAR(stats_doc, "stats($self, /)\n--\n\n"
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
        return result(rc, "pq_get_stats", &ei);
    return Py_BuildValue("(KKKKKKK)", (unsigned long long)st.packets,
                         (unsigned long long)st.bytes, (unsigned long long)st.qlen,
                         (unsigned long long)st.backlog, (unsigned long long)st.drops,
                         (unsigned long long)st.overlimits, (unsigned long long)st.requeues);
}

PyDoc_STRVAR(detach_doc, "detach($self, timeout_ms, /)\n--\n\n"
"Release, wait up to timeout_ms for the backlog to drain, delete (pq_detach).");
static PyObject *
Qdisc_detach(QdiscObject *self, PyObject *arg)
{
    long timeout_ms = PyLong_Check(arg) ? PyLong_AsLong(arg) : -1;
    if (timeout_ms < 0 || timeout_ms > INT32_MAX) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "timeout_ms must be an int from 0 to 2**31-1");
        return NULL;
    }
    int rc;
    struct errinfo ei;
    LOCKED(self, rc, pq_detach(self->q, (int)timeout_ms), &ei);
    return result(rc, "pq_detach", &ei);
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
enum { G_IFINDEX, G_DEVICE, G_LIMIT, G_BUFFERING, G_CREATED, G_ATTACHED };

struct snapshot {
    long ifindex, buffering, created, attached;
    unsigned long limit;
    char device[32];
};

static int
take_snapshot(const struct plug_qdisc *q, struct snapshot *s)
{
    s->ifindex = pq_ifindex(q);
    s->limit = pq_limit(q);
    s->buffering = pq_is_buffering(q);
    s->created = pq_created(q);
    s->attached = pq_attached(q);
    snprintf(s->device, sizeof s->device, "%s", pq_device(q));
    return 0;
}

static PyObject *
Qdisc_get(QdiscObject *self, void *which)
{
    struct snapshot s;
    struct errinfo ei;
    int rc;
    LOCKED(self, rc, take_snapshot(self->q, &s), &ei);
    if (rc == PQ_CLOSED)
        return closed_error();
    switch ((intptr_t)which) {
    case G_DEVICE:
        return PyUnicode_DecodeFSDefault(s.device);
    case G_IFINDEX:
        return PyLong_FromLong(s.ifindex);
    case G_LIMIT:
        return PyLong_FromUnsignedLong(s.limit);
    case G_BUFFERING:
        return PyBool_FromLong(s.buffering);
    case G_CREATED:
        return PyBool_FromLong(s.created);
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
    {"attach", (PyCFunction)Qdisc_attach, METH_O, attach_doc},
    {"buffer", (PyCFunction)Qdisc_buffer, METH_NOARGS, buffer_doc},
    {"release_one", (PyCFunction)Qdisc_release_one, METH_NOARGS, release_one_doc},
    {"release_indefinite", (PyCFunction)Qdisc_release_indefinite, METH_NOARGS,
     release_indefinite_doc},
    {"set_limit", (PyCFunction)Qdisc_set_limit, METH_O, set_limit_doc},
    {"stats", (PyCFunction)Qdisc_stats, METH_NOARGS, stats_doc},
    {"detach", (PyCFunction)Qdisc_detach, METH_O, detach_doc},
    {"close", (PyCFunction)Qdisc_close, METH_NOARGS, close_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Qdisc_getset[] = {
    {"ifindex", (getter)Qdisc_get, NULL, "the device's ifindex", (void *)G_IFINDEX},
    {"device", (getter)Qdisc_get, NULL, "the device's name", (void *)G_DEVICE},
    {"limit", (getter)Qdisc_get, NULL, "the limit in force, in bytes", (void *)G_LIMIT},
    {"is_buffering", (getter)Qdisc_get, NULL, "whether we last told it to hold",
     (void *)G_BUFFERING},
    {"created", (getter)Qdisc_get, NULL, "whether our attach created the qdisc",
     (void *)G_CREATED},
    {"attached", (getter)Qdisc_get, NULL, "whether attach succeeded (and no detach since)",
     (void *)G_ATTACHED},
    {"closed", (getter)Qdisc_get_closed, NULL, "whether close() was called", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Qdisc_slots[] = {
    {Py_tp_new, Qdisc_new},
    {Py_tp_dealloc, Qdisc_dealloc},
    {Py_tp_methods, Qdisc_methods},
    {Py_tp_getset, Qdisc_getset},
    {Py_tp_doc, (void *)Qdisc_doc},
    {0, NULL},
};

static PyType_Spec Qdisc_spec = {
    .name = "plugqdisc._plugqdisc.Qdisc",
    .basicsize = sizeof(QdiscObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Qdisc_slots,
};

/* ---- module functions ---- */

PyDoc_STRVAR(parse_handle_doc, "parse_handle(text, /)\n--\n\n"
"'root', 'none', 'MAJ:' or 'MAJ:MIN' (hex) -> 32-bit tc handle; ValueError otherwise.");
static PyObject *
parse_handle(PyObject *module, PyObject *arg)
{
    (void)module;
    if (!PyUnicode_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "a tc handle must be a str like '1:', not %.100s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    Py_ssize_t n;
    const char *text = PyUnicode_AsUTF8AndSize(arg, &n);
    if (text == NULL)
        return NULL;
    uint32_t h;
    if ((size_t)n != strlen(text) || pq_parse_handle(text, &h) < 0) {
        PyErr_Format(PyExc_ValueError,
                     "%R is not a tc handle: use 'root' or 'MAJ:' / 'MAJ:MIN' in hex, each "
                     "part at most ffff (for example '1:' or '1:2')", arg);
        return NULL;
    }
    return PyLong_FromUnsignedLong(h);
}

/* Run one HAProxy-compatible call under the default handle's lock, GIL released; on
 * failure copy the default handle's message (if it has one) before unlocking. */
#define DEFAULT_CALL(rc, call, ei, had_handle)                                     \
    do {                                                                           \
        pthread_mutex_t *lk_ = fresh_lock(&default_lock, &default_lock_gen);       \
        Py_BEGIN_ALLOW_THREADS                                                     \
        pthread_mutex_lock(lk_);                                                   \
        rc = (call);                                                               \
        had_handle = plug_qdisc_default_handle() != NULL;                          \
        if (rc < 0)                                                                \
            keep_error(plug_qdisc_default_handle(), (ei));                         \
        pthread_mutex_unlock(lk_);                                                 \
        Py_END_ALLOW_THREADS                                                       \
    } while (0)

PyDoc_STRVAR(plug_qdisc_attach_doc, "plug_qdisc_attach(device, parent, id, limit, /)\n--\n\n"
"The HAProxy helper's plug_qdisc_attach() on the process-wide default handle.");
static PyObject *
py_plug_qdisc_attach(PyObject *module, PyObject *args)
{
    (void)module;
    const char *device, *parent, *id;
    uint32_t limit;
    if (!PyArg_ParseTuple(args, "sssO&:plug_qdisc_attach", &device, &parent, &id, to_u32,
                          &limit))
        return NULL;
    int rc, had_handle;
    struct errinfo ei;
    DEFAULT_CALL(rc, plug_qdisc_attach((char *)device, (char *)parent, (char *)id, limit),
                 &ei, had_handle);
    if (rc < 0) {
        if (!had_handle) {
            /* the failure was before a handle existed: name the device ourselves */
            PyObject *dev = PyUnicode_DecodeFSDefault(device);
            if (dev == NULL)
                return NULL;
            raise_errno(-rc, strerror(-rc), dev);
            Py_DECREF(dev);
            return NULL;
        }
        return set_error(rc, "plug_qdisc_attach", &ei);
    }
    Py_RETURN_NONE;
}

#define DEFAULT_FUNCTION(name, doc)                                          \
    PyDoc_STRVAR(name##_doc, #name "()\n--\n\n" doc);                        \
    static PyObject *py_##name(PyObject *module, PyObject *unused)           \
    {                                                                        \
        (void)module;                                                        \
        (void)unused;                                                        \
        int rc, had_handle_;                                                 \
        struct errinfo ei;                                                   \
        DEFAULT_CALL(rc, name(), &ei, had_handle_);                          \
        (void)had_handle_;                                                   \
        if (rc < 0)                                                          \
            return set_error(rc, #name, &ei);                                \
        Py_RETURN_NONE;                                                      \
    }

DEFAULT_FUNCTION(plug_qdisc_plug_buffer, "The HAProxy helper's plug_qdisc_plug_buffer().")
DEFAULT_FUNCTION(plug_qdisc_release_indefinite_buffer,
                 "The HAProxy helper's plug_qdisc_release_indefinite_buffer().")

static PyMethodDef module_methods[] = {
    {"parse_handle", parse_handle, METH_O, parse_handle_doc},
    {"plug_qdisc_attach", py_plug_qdisc_attach, METH_VARARGS, plug_qdisc_attach_doc},
    {"plug_qdisc_plug_buffer", py_plug_qdisc_plug_buffer, METH_NOARGS,
     plug_qdisc_plug_buffer_doc},
    {"plug_qdisc_release_indefinite_buffer", py_plug_qdisc_release_indefinite_buffer,
     METH_NOARGS, plug_qdisc_release_indefinite_buffer_doc},
    {NULL, NULL, 0, NULL},
};

static int
module_exec(PyObject *module)
{
    module_state *st = PyModule_GetState(module);
    st->qdisc_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Qdisc_spec, NULL);
    if (st->qdisc_type == NULL)
        return -1;
    if (PyModule_AddType(module, st->qdisc_type) < 0)
        return -1;
    return 0;
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
