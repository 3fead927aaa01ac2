/*
 * check.h - the C tests' one way to report a check: "ok: ..." or "FAIL: ..." on a line of
 * its own, failures counted for the exit status. Included once by each test program.
 */
#ifndef PQ_TEST_CHECK_H
#define PQ_TEST_CHECK_H

#include <stdarg.h>
#include <stdio.h>

static int failures;

/* Print one check's outcome (with a formatted detail) and count failures. */
static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...)
{
    va_list ap;

    printf("%s: ", ok ? "ok" : "FAIL");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    if (!ok)
        failures++;
}

#endif
