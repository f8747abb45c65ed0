/* Gauge and GaugeMemory in C: the same promises as the Python Gauge
   (statsd_ao/core/accumulators.py) and GaugeMemory (statsd_ao/core/gauge_memory.py), in less
   memory; tests/core/test_gauges.py holds the two to the same results on arbitrary input.

   A Gauge keeps its value and start as doubles (56 bytes, untracked by the cyclic GC, where
   the Python one costs 48 and its value float 24 more).  The memory keeps the last gauge of
   every series in a dict and, threaded through the gauges themselves, a list in order of
   activity: remembering a series' new gauge moves it to the newest end in O(1) and leaves the
   dict's entry where it is.  The Python memory keeps its order by popping and inserting the
   dict's entry again, which leaves a dead entry behind every time, so that dict settles at
   twice its size (bench/memory_bench.py, "next interval"). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <structmember.h>

#include "_gauges.h"

/* ------------------------------------------------------------------------------ Gauge */

static PyObject *parse_error; /* statsd_ao.core.protocol.ParseError, imported when first needed */

static PyObject *non_finite(void) {
    if (parse_error == NULL) {
        PyObject *protocol = PyImport_ImportModule("statsd_ao.core.protocol");
        if (protocol == NULL) return NULL;
        parse_error = PyObject_GetAttrString(protocol, "ParseError");
        Py_DECREF(protocol);
        if (parse_error == NULL) return NULL;
    }
    PyErr_SetString(parse_error, "non-finite value");
    return NULL;
}

/* A new gauge from ``start`` (a double, or no start: value 0.0), as Gauge(start). */
static GaugeObject *gauge_of(PyTypeObject *type, const double *start) {
    GaugeObject *g = PyObject_New(GaugeObject, type);
    if (g == NULL) return NULL;
    g->value = start != NULL ? *start : 0.0;
    if (start != NULL) g->start = *start;
    else gauge_clear_start(g);
    g->older = g->newer = NULL;
    g->key = NULL;
    return g;
}

/* A start from Python: None, or a number (as a double; -1 with an exception otherwise). */
static int start_from(PyObject *v, GaugeObject *g) {
    if (v == Py_None) {
        gauge_clear_start(g);
        return 0;
    }
    double number = PyFloat_AsDouble(v);
    if (number == -1.0 && PyErr_Occurred()) return -1;
    g->start = number;
    if (!gauge_has_start(g)) g->start = NAN; /* (those bits mean none: see _gauges.h) */
    return 0;
}

static PyObject *gauge_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"start", NULL};
    PyObject *start;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:Gauge", names, &start)) return NULL;
    GaugeObject *g = gauge_of(type, NULL); /* value 0.0, no start */
    if (g != NULL && start_from(start, g) < 0) Py_CLEAR(g);
    if (g != NULL && gauge_has_start(g)) g->value = g->start;
    return (PyObject *)g;
}

static void gauge_dealloc(GaugeObject *self) {
    Py_XDECREF(self->key); /* (NULL: a gauge in a memory is kept alive by it) */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *signs; /* frozenset({43, 45}): b"+" and b"-" as raw[0] gives them */

/* raw[0] in {43, 45}, as the Python Gauge asks it (any subscriptable raw). */
static int is_delta(PyObject *raw) {
    if (PyBytes_CheckExact(raw)) {
        char c = PyBytes_GET_SIZE(raw) ? PyBytes_AS_STRING(raw)[0] : 0;
        return c == '+' || c == '-';
    }
    PyObject *zero = PyLong_FromLong(0);
    PyObject *first = zero != NULL ? PyObject_GetItem(raw, zero) : NULL;
    Py_XDECREF(zero);
    if (first == NULL) return -1;
    int delta = PySet_Contains(signs, first);
    Py_DECREF(first);
    return delta;
}

/* Gauge.add(raw): float(raw); a leading + or - makes it a delta on the value. */
static PyObject *gauge_apply(GaugeObject *self, PyObject *raw) {
    PyObject *f = PyNumber_Float(raw);
    if (f == NULL) return NULL;
    double number = PyFloat_AS_DOUBLE(f);
    Py_DECREF(f);
    if (!isfinite(number)) return non_finite();
    int delta = is_delta(raw);
    if (delta < 0) return NULL;
    gauge_put(self, number, delta);
    Py_RETURN_NONE;
}

static PyObject *gauge_add(GaugeObject *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"raw", NULL};
    PyObject *raw;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:add", names, &raw)) return NULL;
    return gauge_apply(self, raw);
}

/* Gauge.add_rated(rate, raw): sample rates do not apply to gauges. */
static PyObject *gauge_add_rated(GaugeObject *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"rate", "raw", NULL};
    PyObject *rate, *raw;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:add_rated", names, &rate, &raw))
        return NULL;
    return gauge_apply(self, raw);
}

static PyObject *gauge_get_start(GaugeObject *self, void *Py_UNUSED(closure)) {
    return gauge_has_start(self) ? PyFloat_FromDouble(self->start) : Py_NewRef(Py_None);
}

static int gauge_set_start(GaugeObject *self, PyObject *v, void *Py_UNUSED(closure)) {
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "start cannot be deleted");
        return -1;
    }
    return start_from(v, self);
}

static PyObject *gauge_absolute(GaugeObject *self, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(!gauge_has_start(self));
}

static PyObject *gauge_repr(GaugeObject *self) {
    PyObject *value = PyFloat_FromDouble(self->value), *start = gauge_get_start(self, NULL);
    PyObject *text = value && start ? PyUnicode_FromFormat("Gauge(value=%R, start=%R)", value,
                                                           start)
                                    : NULL;
    Py_XDECREF(value);
    Py_XDECREF(start);
    return text;
}

static PyMethodDef gauge_methods[] = {
    {"add", (PyCFunction)(void (*)(void))gauge_add, METH_VARARGS | METH_KEYWORDS,
     "add(raw): the value, or a delta with + or -"},
    {"add_rated", (PyCFunction)(void (*)(void))gauge_add_rated, METH_VARARGS | METH_KEYWORDS,
     "add_rated(rate, raw): add(raw); sample rates do not apply to gauges"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef gauge_members[] = {
    {"value", T_DOUBLE, offsetof(GaugeObject, value), 0, "the last value"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef gauge_getset[] = {
    {"start", (getter)gauge_get_start, (setter)gauge_set_start,
     "the value the interval started from, or None once an absolute value was set", NULL},
    {"absolute", (getter)gauge_absolute, NULL, "an absolute value was set this interval", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject GaugeType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "statsd_ao.core._hotpath.Gauge",
    .tp_basicsize = sizeof(GaugeObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Gauge(start): last value; a value with a leading + or - is a delta.",
    .tp_new = gauge_new,
    .tp_call = (ternaryfunc)gauge_add, /* the accumulator is its own feed */
    .tp_dealloc = (destructor)gauge_dealloc,
    .tp_repr = (reprfunc)gauge_repr,
    .tp_methods = gauge_methods,
    .tp_members = gauge_members,
    .tp_getset = gauge_getset,
};

/* ------------------------------------------------------------------------- GaugeMemory */

/* The dict and the list agree as long as keys hash and compare consistently; each holds its
   own references (the list to each gauge and its key), so keys whose __hash__ or __eq__ run
   Python code that changes the memory, or disagree from one call to the next, can make
   results wrong but never leave a pointer to a freed object. */
typedef struct {
    PyObject_HEAD
    PyObject *gauges; /* series key -> its last Gauge */
    GaugeObject *oldest, *newest; /* the gauges remembered, in order of activity */
    Py_ssize_t limit;
} Memory;

/* Take ``g`` out of the list, with the list's references to it and its key. */
static void unlink_gauge(Memory *m, GaugeObject *g) {
    if (g->older != NULL) g->older->newer = g->newer;
    else m->oldest = g->newer;
    if (g->newer != NULL) g->newer->older = g->older;
    else m->newest = g->older;
    g->older = g->newer = NULL;
    Py_CLEAR(g->key);
    Py_DECREF(g);
}

static void link_newest(Memory *m, GaugeObject *g, PyObject *key) {
    g->key = Py_NewRef(key);
    Py_INCREF(g);
    g->older = m->newest;
    g->newer = NULL;
    if (m->newest != NULL) m->newest->newer = g;
    else m->oldest = g;
    m->newest = g;
}

/* The dict's gauge for ``key`` (a new reference), or NULL; -1 on error. */
static int known(Memory *m, PyObject *key, GaugeObject **g) {
    PyObject *found = PyDict_GetItemWithError(m->gauges, key);
    *g = NULL;
    if (found == NULL) return PyErr_Occurred() ? -1 : 0;
    if (Py_TYPE(found) != &GaugeType) {
        PyErr_SetString(PyExc_SystemError, "GaugeMemory holds a non-Gauge");
        return -1;
    }
    *g = (GaugeObject *)Py_NewRef(found);
    return 0;
}

/* Delete ``key`` from the dict if it still maps to ``g``. */
static int forget(Memory *m, PyObject *key, GaugeObject *g) {
    PyObject *found = PyDict_GetItemWithError(m->gauges, key);
    if (found == NULL) return PyErr_Occurred() ? -1 : 0;
    return found == (PyObject *)g ? PyDict_DelItem(m->gauges, key) : 0;
}

/* Forget the least recently active gauges while there are more than the limit. */
static int evict(Memory *m) {
    while (PyDict_GET_SIZE(m->gauges) > m->limit && m->oldest != NULL) {
        GaugeObject *g = (GaugeObject *)Py_NewRef(m->oldest);
        PyObject *key = Py_NewRef(g->key);
        unlink_gauge(m, g);
        int r = forget(m, key, g);
        Py_DECREF(key);
        Py_DECREF(g);
        if (r < 0) return -1;
    }
    return 0;
}

/* GaugeMemory.next(key): a new Gauge for the series, starting from its last value (or 0.0),
   remembered in place of the last one as the most recently active. */
static PyObject *memory_next(Memory *self, PyObject *key) {
    GaugeObject *previous, *g;
    if (known(self, key, &previous) < 0) return NULL;
    double zero = 0.0; /* a new series starts from 0.0 (a start of its own) */
    g = gauge_of(&GaugeType, previous != NULL ? &previous->value : &zero);
    if (g == NULL || PyDict_SetItem(self->gauges, key, (PyObject *)g) < 0) {
        Py_XDECREF(previous);
        Py_XDECREF(g);
        return NULL;
    }
    if (previous != NULL && previous->key != NULL) unlink_gauge(self, previous);
    Py_XDECREF(previous);
    link_newest(self, g, key);
    if (evict(self) < 0) {
        Py_DECREF(g);
        return NULL;
    }
    return (PyObject *)g;
}

/* GaugeMemory.pop(key): forget the series (no error if it is not remembered). */
static PyObject *memory_pop(Memory *self, PyObject *key) {
    GaugeObject *g;
    if (known(self, key, &g) < 0) return NULL;
    if (g == NULL) Py_RETURN_NONE;
    int r = PyDict_DelItem(self->gauges, key);
    if (r == 0 && g->key != NULL) unlink_gauge(self, g);
    Py_DECREF(g);
    if (r < 0) return NULL;
    Py_RETURN_NONE;
}

/* GaugeMemory.values(): {key: last value}, least recently active first. */
static PyObject *memory_values(Memory *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyDict_New();
    GaugeObject *g = self->oldest;
    Py_XINCREF(g);
    while (out != NULL && g != NULL) {
        PyObject *key = Py_NewRef(g->key), *v = PyFloat_FromDouble(g->value);
        if (v == NULL || PyDict_SetItem(out, key, v) < 0) Py_CLEAR(out);
        Py_DECREF(key);
        Py_XDECREF(v);
        if (out != NULL && g->key == NULL) { /* (a key's __hash__ or __eq__ changed it) */
            PyErr_SetString(PyExc_RuntimeError, "GaugeMemory changed during values()");
            Py_CLEAR(out);
        }
        GaugeObject *newer = g->newer;
        Py_XINCREF(newer);
        Py_DECREF(g);
        g = newer;
    }
    Py_XDECREF(g);
    return out;
}

static Py_ssize_t memory_len(Memory *self) { return PyDict_GET_SIZE(self->gauges); }

static PyObject *memory_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"limit", NULL};
    Py_ssize_t limit;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n:GaugeMemory", names, &limit)) return NULL;
    if (limit < 0) {
        PyErr_SetString(PyExc_ValueError, "limit must be >= 0");
        return NULL;
    }
    Memory *m = (Memory *)type->tp_alloc(type, 0);
    if (m == NULL) return NULL;
    m->limit = limit;
    m->gauges = PyDict_New();
    if (m->gauges == NULL) Py_CLEAR(m);
    return (PyObject *)m;
}

static void memory_dealloc(Memory *self) {
    while (self->oldest != NULL) unlink_gauge(self, self->oldest); /* gauges outlive it */
    Py_XDECREF(self->gauges);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef memory_methods[] = {
    {"next", (PyCFunction)memory_next, METH_O,
     "next(key) -> Gauge: a new gauge from the series' last value, now the most recent"},
    {"pop", (PyCFunction)memory_pop, METH_O, "pop(key): forget the series"},
    {"values", (PyCFunction)memory_values, METH_NOARGS,
     "values() -> {key: last value}, least recently active first"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods memory_sequence = {.sq_length = (lenfunc)memory_len};

/* Not tracked by the cyclic GC: its dict holds series keys and gauges, which never refer
   back to it. */
static PyTypeObject MemoryType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "statsd_ao.core._hotpath.GaugeMemory",
    .tp_basicsize = sizeof(Memory),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "GaugeMemory(limit): the last gauge of each series, for deltas; past the limit "
              "the least recently active is forgotten.",
    .tp_new = memory_new,
    .tp_dealloc = (destructor)memory_dealloc,
    .tp_methods = memory_methods,
    .tp_as_sequence = &memory_sequence,
};

int gauges_add_types(PyObject *module) {
    if (PyType_Ready(&GaugeType) < 0 || PyType_Ready(&MemoryType) < 0) return -1;
    if (signs == NULL) {
        PyObject *items = Py_BuildValue("(ii)", '+', '-');
        signs = items != NULL ? PyFrozenSet_New(items) : NULL;
        Py_XDECREF(items);
        if (signs == NULL) return -1;
    }
    if (PyModule_AddObjectRef(module, "Gauge", (PyObject *)&GaugeType) < 0) return -1;
    return PyModule_AddObjectRef(module, "GaugeMemory", (PyObject *)&MemoryType);
}
