/*
 * plug_qdisc.c - the top of the C core: the three functions of the original HAProxy helper
 * (same names and signatures) on one process-wide default handle, and the small public
 * helpers (tc handles, step names). Below, bottom to top:
 *
 *   nl.c     the netlink socket, namespaces, requests, the kernel's errno and text
 *   plan.c   a hold's undo plan, as data, and the one runner of plans
 *   plug.c   the plug qdisc;  tree.c  the prio, filters, ifb and ingress around it
 *   guard.c  the guardian, which runs plans when the holder dies;  dump.c  what is there
 *   hold.c   a hold's plan by mode, and cleanup's removal of a dead holder's hold
 *   handle.c the pq_* handle API
 */
#define _GNU_SOURCE
#include "plug_qdisc.h"

#include <errno.h>
#include <string.h>
#include <linux/pkt_sched.h>

/* The one global: the handle behind the HAProxy-compatible API (pq_close it only
 * through plug_qdisc_attach, which replaces it). */
static struct plug_qdisc *default_handle;

/* ---- errors: facts only ---------------------------------------------------------------- */

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
    [PQ_STEP_LOCK] = "lock",
    [PQ_STEP_FULL] = "full",
    [PQ_STEP_IN_USE] = "in_use",
    [PQ_STEP_HANDLE] = "handle_taken",
    [PQ_STEP_SHARE] = "share",
};

const char *pq_step_name(enum pq_step step)
{
    if ((int)step < 0 || step >= PQ_STEP_COUNT)
        return "unknown";
    return step_names[step];
}

/* Start a public call: no failure yet. The facts of the last failed attach stay. */

/* ---- tc handles ------------------------------------------------------------------------- */

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

/* ---- the HAProxy-compatible API ------------------------------------------------------- */

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

struct plug_qdisc *plug_qdisc_default_handle(void)
{
    return default_handle;
}
