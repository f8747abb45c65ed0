/* The C Gauge and GaugeMemory (statsd_ao/core/_gauges.c), part of the _hotpath extension: the
   C loop (_hotpath.c) applies gauge lines to a Gauge's doubles directly. */
#ifndef STATSD_AO_GAUGES_H
#define STATSD_AO_GAUGES_H

#include <Python.h>

/* 56 bytes, not tracked by the cyclic GC (it owns no reference), where the Python Gauge of
   two slots costs 48 and its value float 24 more. */
typedef struct GaugeObject {
    PyObject_HEAD
    double value;
    double start; /* NaN: none (an absolute value was set); values are always finite */
    /* Its place in a GaugeMemory's order of activity, and its key there (all borrowed:
       the memory's dict holds the gauge and the key); NULL when in no memory. */
    struct GaugeObject *older, *newer;
    PyObject *key;
} GaugeObject;

extern PyTypeObject GaugeType;

/* Make Gauge and GaugeMemory ready and add them to the module; -1 on error. */
int gauges_add_types(PyObject *module);

#endif
