/* The C Gauge and GaugeMemory (statsd_ao/core/_gauges.c), part of the _hotpath extension: the
   C loop (_hotpath.c) applies gauge lines to a Gauge's doubles directly. */
#ifndef STATSD_AO_GAUGES_H
#define STATSD_AO_GAUGES_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

/* 56 bytes, not tracked by the cyclic GC, where the Python Gauge of two slots costs 48 and
   its value float 24 more. */
typedef struct GaugeObject {
    PyObject_HEAD
    double value;
    double start; /* NO_START's bits: none (an absolute value was set) */
    /* Its place in a GaugeMemory's order of activity: the memory holds a reference to each
       gauge in it and to its key; all NULL when in no memory. */
    struct GaugeObject *older, *newer;
    PyObject *key;
} GaugeObject;

/* "No start" is one NaN payload that arithmetic never makes (an invalid operation gives the
   default NaN; a NaN operand passes its own payload on, and this one is never handed out:
   the start setter turns a float with these bits into the default NaN).  A start may be
   any other double, NaN included (a merge of parts that overflowed to inf). */
#define NO_START_BITS 0x7ff80000a65e5a17ull

static inline int gauge_has_start(const GaugeObject *g) {
    uint64_t bits;
    memcpy(&bits, &g->start, sizeof bits);
    return bits != NO_START_BITS;
}

static inline void gauge_clear_start(GaugeObject *g) {
    uint64_t bits = NO_START_BITS;
    memcpy(&g->start, &bits, sizeof bits);
}

/* Gauge.add's arithmetic, once the value is parsed: a delta, or an absolute value (which
   leaves no start).  Shared by Gauge.add and the C loop. */
static inline void gauge_put(GaugeObject *g, double number, int delta) {
    if (delta) {
        g->value += number;
    } else {
        g->value = number;
        gauge_clear_start(g);
    }
}

extern PyTypeObject GaugeType;

/* Make Gauge and GaugeMemory ready and add them to the module; -1 on error. */
int gauges_add_types(PyObject *module);

#endif
