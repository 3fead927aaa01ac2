/*
 * sys.h - raw system calls that return -errno and touch no thread-local state.
 *
 * The guardian runs in a child that shares the holder's memory (clone(CLONE_VM)), on a
 * stack of its own but with the thread pointer of the thread that started it, which may
 * exit: so it must never touch thread-local storage. libc's wrappers write errno (thread-
 * local) and stack-protected functions read the canary through the thread pointer; the
 * guardian and the plan runner use these calls instead, in functions built without the
 * stack protector (PQ_NO_TLS). Where there is no inline syscall for the architecture,
 * PQ_SYS_RAW is 0, these fall back to libc, and the guardian is forked instead.
 */
#ifndef PQ_SYS_H
#define PQ_SYS_H

#include <errno.h>
#include <unistd.h>
#include <sys/syscall.h>

#if defined(__has_attribute)
#if __has_attribute(no_stack_protector)
#define PQ_NO_TLS __attribute__((no_stack_protector))
#endif
#endif
#ifndef PQ_NO_TLS
#define PQ_NO_TLS __attribute__((optimize("no-stack-protector")))
#endif

#if defined(__x86_64__)
#define PQ_SYS_RAW 1
static inline long pq_sys6(long n, long a, long b, long c, long d, long e, long f)
{
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long ret;

    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#elif defined(__aarch64__)
#define PQ_SYS_RAW 1
static inline long pq_sys6(long n, long a, long b, long c, long d, long e, long f)
{
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    register long x5 __asm__("x5") = f;

    __asm__ volatile("svc 0"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                     : "memory", "cc");
    return x0;
}
#else
#define PQ_SYS_RAW 0
static inline long pq_sys6(long n, long a, long b, long c, long d, long e, long f)
{
    long ret = syscall(n, a, b, c, d, e, f);

    return ret < 0 ? -errno : ret;
}
#endif

#define PQ_SYS(n, a, b, c, d, e, f) \
    pq_sys6((long)(n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))

#endif
