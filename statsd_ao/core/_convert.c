/* Converter.convert's common cases in C: one interval's accumulators to measurement dicts.

   statsd_ao/core/measurements.py stays the definition of a measurement.  This file builds the
   same dicts (same keys, same order, same values to the bit) for the items it fully
   understands, and hands every other item back untouched for the Python code: anything
   that would be dropped or needs fitting (a value the API cannot take, an overflow, a
   running summary past its reservoir, a suffixed name that is too long, an unexpected
   type).  tests/core/test_convert.py compares the two on arbitrary accumulators.

   Sums are math.fsum's: Shewchuk's exact partials with the final half-even fix-up, so a
   sum or a standard deviation is the one Python computes.  Squares go through libm's
   pow(), as Python's ``**`` does.  Built with -ffp-contract=off: no fused multiply-add. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <structmember.h>

#include "_slots.h"

#define MAX_MAGNITUDE 1e126         /* measurements.MAX_MAGNITUDE */
#define COUNT_LIMIT 9223372036854775808.0 /* 2**63: counts stay below (MAX_COUNT) */
#define MAX_PARTIALS 64             /* finite doubles never need more than ~40 */
#define MAX_SUFFIXES 16             /* more percentiles than this: Python does them */

static Slot total_slot, value_slot, values_slot, weights_slot, running_slot, members_slot;

static PyObject *k_name, *k_tags, *k_time, *k_period, *k_value, *k_attributes, *k_count,
    *k_sum, *k_stddev, *k_min, *k_max, *k_last;

/* A volatile exponent keeps the compiler from turning pow(x, 2.0) into x * x: Python's
   ``**`` calls libm's pow(), and the two may differ in the last bit. */
static volatile double two = 2.0;

enum { DONE = 1, DECLINED = 0, FAILED = -1 };

/* The slot's object (borrowed), or NULL when the slot is empty. */
static inline PyObject *get(PyObject *self, const Slot *slot) {
    return *(PyObject **)((char *)self + slot->offset);
}

static inline int postable(double v) { return fabs(v) < MAX_MAGNITUDE; } /* false for NaN */

/* ---- exact sums (math.fsum) ---- */

typedef struct {
    double p[MAX_PARTIALS];
    int n;
} Partials;

/* Add a finite x; 0 when the sum overflows or needs too many partials (decline). */
static int partials_add(Partials *ps, double x) {
    int kept = 0;
    for (int j = 0; j < ps->n; j++) {
        double y = ps->p[j];
        if (fabs(x) < fabs(y)) {
            double swap = x;
            x = y;
            y = swap;
        }
        double hi = x + y;
        double lo = y - (hi - x);
        if (lo != 0.0) ps->p[kept++] = lo;
        x = hi;
    }
    ps->n = kept;
    if (x == 0.0) return 1;
    if (!isfinite(x) || ps->n == MAX_PARTIALS) return 0;
    ps->p[ps->n++] = x;
    return 1;
}

/* The correctly rounded sum of the partials, rounding half to even across them. */
static double partials_sum(const Partials *ps) {
    int n = ps->n;
    if (n == 0) return 0.0;
    double hi = ps->p[--n], lo = 0.0;
    while (n > 0) {
        double x = hi, y = ps->p[--n];
        hi = x + y;
        lo = y - (hi - x);
        if (lo != 0.0) break;
    }
    if (n > 0 && ((lo < 0.0 && ps->p[n - 1] < 0.0) || (lo > 0.0 && ps->p[n - 1] > 0.0))) {
        double y = lo * 2.0, x = hi + y;
        if (y == x - hi) hi = x;
    }
    return hi;
}

/* ---- summaries ---- */

typedef struct {
    Py_ssize_t n;
    PyObject **values, **weights; /* the lists' items, borrowed; weights may be NULL */
    double count, sum, stddev;
    PyObject *min, *max, *last;   /* borrowed from values */
} Stats;

static int weight_at(const Stats *s, Py_ssize_t i, double *w) {
    if (s->weights == NULL) {
        *w = 1.0;
        return 1;
    }
    if (!PyFloat_CheckExact(s->weights[i])) return 0;
    *w = PyFloat_AS_DOUBLE(s->weights[i]);
    return isfinite(*w);
}

/* Total weight, weighted sum, min, max, last: measurements._summarize's first pass. */
static int first_pass(Stats *s, double *weight) {
    Partials weights = {.n = 0}, sums = {.n = 0};
    double lo = 0.0, hi = 0.0;
    for (Py_ssize_t i = 0; i < s->n; i++) {
        PyObject *item = s->values[i];
        double w;
        if (!PyFloat_CheckExact(item) || !weight_at(s, i, &w)) return 0;
        double x = PyFloat_AS_DOUBLE(item);
        if (!postable(x)) return 0;
        if (i == 0 || x < lo) lo = x, s->min = item;
        if (i == 0 || x > hi) hi = x, s->max = item;
        double product = s->weights == NULL ? x : w * x;
        if (!isfinite(product) || !partials_add(&sums, product)) return 0;
        if (s->weights != NULL && !partials_add(&weights, w)) return 0;
    }
    *weight = s->weights == NULL ? (double)s->n : partials_sum(&weights);
    s->sum = partials_sum(&sums);
    s->last = s->values[s->n - 1];
    return *weight > 0.0;
}

/* The summary fields, or 0 where Python would drop them or might differ (decline). */
static int summarize(Stats *s) {
    double weight;
    if (!first_pass(s, &weight)) return 0;
    double mean = s->sum / weight;
    Partials squares = {.n = 0};
    for (Py_ssize_t i = 0; i < s->n; i++) {
        double w = 1.0;
        weight_at(s, i, &w);
        double square = pow(fabs(PyFloat_AS_DOUBLE(s->values[i]) - mean), two);
        if (s->weights != NULL) square = w * square;
        if (!isfinite(square) || !partials_add(&squares, square)) return 0;
    }
    s->stddev = sqrt(partials_sum(&squares) / weight);
    s->count = nearbyint(weight); /* Python's round(): half to even */
    if (s->count < 1.0) s->count = 1.0;
    /* measurements.consistent_sum: count x min <= sum <= count x max, whatever the rates */
    double floor_sum = s->count * PyFloat_AS_DOUBLE(s->min);
    double ceiling_sum = s->count * PyFloat_AS_DOUBLE(s->max);
    if (s->sum < floor_sum)
        s->sum = floor_sum;
    else if (s->sum > ceiling_sum)
        s->sum = ceiling_sum;
    return postable(s->sum) && postable(s->stddev) && s->count < COUNT_LIMIT;
}

/* ---- measurement dicts ---- */

static int put(PyObject *m, PyObject *key, PyObject *value) {
    int failed = value == NULL || PyDict_SetItem(m, key, value) < 0;
    Py_XDECREF(value);
    return failed ? -1 : 0;
}

/* {name, tags, time, period}: a new reference, or NULL. */
static PyObject *base(PyObject *name, PyObject *tags, PyObject *time, PyObject *period) {
    PyObject *m = PyDict_New();
    if (m == NULL) return NULL;
    if (PyDict_SetItem(m, k_name, name) < 0 || PyDict_SetItem(m, k_tags, tags) < 0 ||
        PyDict_SetItem(m, k_time, time) < 0 || PyDict_SetItem(m, k_period, period) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

static int append(PyObject *out, PyObject *m) {
    int failed = PyList_Append(out, m);
    Py_DECREF(m);
    return failed;
}

/* dict(tag_pairs) for a tuple of (str, str) pairs; NULL with no error set: decline. */
static PyObject *tag_dict(PyObject *pairs) {
    if (!PyTuple_CheckExact(pairs)) return NULL;
    PyObject *tags = PyDict_New();
    if (tags == NULL) return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(pairs); i++) {
        PyObject *pair = PyTuple_GET_ITEM(pairs, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            PyDict_SetItem(tags, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1)) < 0) {
            Py_DECREF(tags);
            return NULL;
        }
    }
    return tags;
}

typedef struct {
    PyObject *out, *time, *period, *attributes;
    PyObject *suffixes;  /* tuple of (percentile, suffix), or None: summaries are declined */
    Py_ssize_t max_name; /* sanitize.MAX_NAME */
} Context;

/* A name fit_name() leaves as it is: ASCII of A-Za-z0-9.:_- and not too long. */
static int fits(PyObject *name, Py_ssize_t max_name) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(name);
    if (n > max_name || !PyUnicode_IS_ASCII(name)) return 0;
    const unsigned char *s = PyUnicode_1BYTE_DATA(name);
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        int word = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!(word || c == '.' || c == ':' || c == '_' || c == '-')) return 0;
    }
    return 1;
}

/* The suffixed names, each new references; DECLINED when one would need fitting. */
static int percentile_names(const Context *c, PyObject *name, PyObject **names,
                            Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *suffix = PyTuple_GET_ITEM(PyTuple_GET_ITEM(c->suffixes, i), 1);
        names[i] = PyUnicode_Check(suffix) ? PyUnicode_Concat(name, suffix) : NULL;
        if (names[i] == NULL || !fits(names[i], c->max_name)) {
            int status = names[i] == NULL && PyErr_Occurred() ? FAILED : DECLINED;
            for (Py_ssize_t j = 0; j <= i; j++) Py_XDECREF(names[j]);
            return status;
        }
    }
    return DONE;
}

/* The nearest-rank value of each percentile (borrowed from ``ordered``). */
static int pick(const Context *c, PyObject *ordered, PyObject **picked, Py_ssize_t count) {
    Py_ssize_t n = PyList_GET_SIZE(ordered);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *p = PyTuple_GET_ITEM(PyTuple_GET_ITEM(c->suffixes, i), 0);
        if (!PyFloat_CheckExact(p)) return DECLINED;
        double rank = ceil(PyFloat_AS_DOUBLE(p) / 100.0 * (double)n);
        if (!(rank <= (double)n)) return DECLINED; /* over 100 or NaN: Python's own error */
        picked[i] = PyList_GET_ITEM(ordered, rank < 1.0 ? 0 : (Py_ssize_t)rank - 1);
    }
    return DONE;
}

static PyObject *summary_dict(PyObject *b, const Stats *s) {
    PyObject *m = PyDict_Copy(b);
    if (m == NULL) return NULL;
    PyObject *count = PyLong_FromLongLong((long long)s->count);
    if (put(m, k_count, count) < 0 || put(m, k_sum, PyFloat_FromDouble(s->sum)) < 0 ||
        put(m, k_stddev, PyFloat_FromDouble(s->stddev)) < 0 ||
        PyDict_SetItem(m, k_min, s->min) < 0 || PyDict_SetItem(m, k_max, s->max) < 0 ||
        PyDict_SetItem(m, k_last, s->last) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

/* The summary's measurement, then one per percentile. */
static int emit_summary(const Context *c, PyObject *b, const Stats *s, PyObject **names,
                        PyObject **picked, Py_ssize_t count) {
    PyObject *m = summary_dict(b, s);
    if (m == NULL || append(c->out, m) < 0) return FAILED;
    for (Py_ssize_t i = 0; i < count; i++) {
        m = PyDict_Copy(b);
        if (m == NULL || PyDict_SetItem(m, k_name, names[i]) < 0 ||
            PyDict_SetItem(m, k_value, picked[i]) < 0) {
            Py_XDECREF(m);
            return FAILED;
        }
        if (append(c->out, m) < 0) return FAILED;
    }
    return DONE;
}

/* The list's items in order, sorted as Python's sorted() sorts them (stable). */
static PyObject *ordered_copy(PyObject *values) {
    PyObject *ordered = PyList_GetSlice(values, 0, PyList_GET_SIZE(values));
    if (ordered != NULL && PyList_Sort(ordered) < 0) Py_CLEAR(ordered);
    return ordered;
}

static int percentiles_and_emit(const Context *c, PyObject *b, const Stats *s,
                                PyObject *values, PyObject **names, Py_ssize_t count) {
    PyObject *picked[MAX_SUFFIXES];
    PyObject *ordered = count ? ordered_copy(values) : NULL;
    if (count && ordered == NULL) return FAILED;
    int status = count ? pick(c, ordered, picked, count) : DONE;
    if (status == DONE) status = emit_summary(c, b, s, names, picked, count);
    Py_XDECREF(ordered);
    return status;
}

static int summary(const Context *c, PyObject *acc, PyObject *b, PyObject *name) {
    PyObject *values = get(acc, &values_slot), *weights = get(acc, &weights_slot);
    PyObject *running = get(acc, &running_slot);
    if (c->suffixes == Py_None || values == NULL || !PyList_CheckExact(values) ||
        running != Py_None || weights == NULL)
        return DECLINED;
    Stats s = {.n = PyList_GET_SIZE(values), .values = ((PyListObject *)values)->ob_item};
    if (s.n == 0) return DONE; /* Python posts nothing for an empty summary */
    if (weights != Py_None) {
        if (!PyList_CheckExact(weights) || PyList_GET_SIZE(weights) != s.n) return DECLINED;
        s.weights = ((PyListObject *)weights)->ob_item;
    }
    if (!summarize(&s)) return DECLINED;
    Py_ssize_t count = PyTuple_GET_SIZE(c->suffixes);
    PyObject *names[MAX_SUFFIXES];
    if (count > MAX_SUFFIXES) return DECLINED;
    int status = percentile_names(c, name, names, count);
    if (status != DONE) return status;
    status = percentiles_and_emit(c, b, &s, values, names, count);
    for (Py_ssize_t i = 0; i < count; i++) Py_DECREF(names[i]);
    return status;
}

/* A counter's, gauge's or set's value: a new reference, or NULL (no error): decline. */
static PyObject *single_value(PyObject *acc, int *counter) {
    PyTypeObject *type = Py_TYPE(acc);
    *counter = type == total_slot.type;
    if (type == members_slot.type) {
        PyObject *members = get(acc, &members_slot);
        if (members == NULL || !PyAnySet_CheckExact(members)) return NULL;
        return PyFloat_FromDouble((double)PySet_GET_SIZE(members));
    }
    if (type == value_slot.type && value_slot.is_double) { /* the C Gauge */
        double value = *(double *)((char *)acc + value_slot.offset);
        return postable(value) ? PyFloat_FromDouble(value) : NULL;
    }
    PyObject *v = *counter ? get(acc, &total_slot)
                  : type == value_slot.type ? get(acc, &value_slot)
                                            : NULL;
    if (v == NULL || !PyFloat_CheckExact(v) || !postable(PyFloat_AS_DOUBLE(v))) return NULL;
    return Py_NewRef(v);
}

static int single(const Context *c, PyObject *acc, PyObject *b) {
    int counter;
    PyObject *v = single_value(acc, &counter);
    if (v == NULL) return PyErr_Occurred() ? FAILED : DECLINED;
    PyObject *m = PyDict_Copy(b);
    if (m == NULL || put(m, k_value, v) < 0 ||
        (counter && PyDict_SetItem(m, k_attributes, c->attributes) < 0)) {
        Py_XDECREF(m);
        return FAILED;
    }
    return append(c->out, m) < 0 ? FAILED : DONE;
}

static int one_item(const Context *c, PyObject *item) {
    if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2) return DECLINED;
    PyObject *key = PyTuple_GET_ITEM(item, 0), *acc = PyTuple_GET_ITEM(item, 1);
    if (!PyTuple_CheckExact(key) || PyTuple_GET_SIZE(key) != 3) return DECLINED;
    PyObject *name = PyTuple_GET_ITEM(key, 1);
    if (!PyUnicode_CheckExact(name)) return DECLINED;
    PyObject *tags = tag_dict(PyTuple_GET_ITEM(key, 2));
    if (tags == NULL) return PyErr_Occurred() ? FAILED : DECLINED;
    PyObject *b = base(name, tags, c->time, c->period);
    Py_DECREF(tags);
    if (b == NULL) return FAILED;
    int status = Py_TYPE(acc) == values_slot.type ? summary(c, acc, b, name) : single(c, acc, b);
    Py_DECREF(b);
    return status;
}

/* An interval's items are scattered over the heap, and each is a chain of pointers (item,
   key and accumulator, tags and values): start loading the items ahead of the one being
   converted, a link further each step, so the loop waits on memory less. */
#define load(p) __builtin_prefetch(p) /* (a macro: gcc finds a function of nothing but
   prefetches "pure", and drops every call of it) */

static inline __attribute__((always_inline)) void prefetch_tuple_items(PyObject *tuple) {
    if (PyTuple_CheckExact(tuple))
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tuple) && i < 3; i++) {
            PyObject *item = PyTuple_GET_ITEM(tuple, i);
            load(item);
        }
}

static inline __attribute__((always_inline)) void prefetch(PyObject *items, Py_ssize_t i) {
    Py_ssize_t n = PyList_GET_SIZE(items);
    PyObject *ahead = i + 8 < n ? PyList_GET_ITEM(items, i + 8) : NULL;
    if (ahead != NULL) load(ahead);
    if (i + 4 < n) prefetch_tuple_items(PyList_GET_ITEM(items, i + 4));
    if (i + 2 >= n) return;
    PyObject *item = PyList_GET_ITEM(items, i + 2);
    if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2) return;
    prefetch_tuple_items(PyTuple_GET_ITEM(item, 0));
    PyObject *acc = PyTuple_GET_ITEM(item, 1);
    if (Py_TYPE(acc) == values_slot.type) load(get(acc, &values_slot));
}

/* convert(items, time, period, suffixes, counter_attributes, max_name)
   -> (measurements, the items left for Python) */
static PyObject *convert(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyList_CheckExact(args[0]) ||
        (args[3] != Py_None && !PyTuple_CheckExact(args[3]))) {
        PyErr_SetString(PyExc_TypeError,
                        "convert(list, time, period, tuple | None, dict, int) expected");
        return NULL;
    }
    if (values_slot.type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "convert() before configure()");
        return NULL;
    }
    Context c = {.time = args[1], .period = args[2], .suffixes = args[3],
                 .attributes = args[4], .max_name = PyLong_AsSsize_t(args[5])};
    if (c.max_name == -1 && PyErr_Occurred()) return NULL;
    if (c.suffixes != Py_None) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(c.suffixes); i++) {
            PyObject *pair = PyTuple_GET_ITEM(c.suffixes, i);
            if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) {
                PyErr_SetString(PyExc_TypeError, "suffixes: (percentile, suffix) pairs");
                return NULL;
            }
        }
    }
    PyObject *items = args[0], *rest = PyList_New(0);
    c.out = PyList_New(0);
    if (c.out == NULL || rest == NULL) goto failed;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        prefetch(items, i);
        int status = one_item(&c, item);
        if (status == FAILED || (status == DECLINED && PyList_Append(rest, item) < 0))
            goto failed;
    }
    return Py_BuildValue("(NN)", c.out, rest);
failed:
    Py_XDECREF(c.out);
    Py_XDECREF(rest);
    return NULL;
}

/* ---- percentile names another series has (measurements.percentile_claims) ---- */

/* Does ``name`` (of ``n`` characters) end with the ASCII ``suffix``? */
static int ends_with(PyObject *name, Py_ssize_t n, PyObject *suffix) {
    Py_ssize_t m = PyUnicode_GET_LENGTH(suffix);
    if (n <= m) return 0; /* the rest must be a name */
    if (PyUnicode_IS_ASCII(name))
        return memcmp(PyUnicode_1BYTE_DATA(name) + n - m, PyUnicode_1BYTE_DATA(suffix),
                      (size_t)m) == 0;
    return (int)PyUnicode_Tailmatch(name, suffix, 0, n, 1);
}

/* Append (owner, suffix) when ``owner`` = (kind, name minus suffix, tags) is in the table. */
static int claim_one(PyObject *table, PyObject *kind, PyObject *name, Py_ssize_t n,
                     PyObject *tags, PyObject *suffix, PyObject *out) {
    PyObject *base = PyUnicode_Substring(name, 0, n - PyUnicode_GET_LENGTH(suffix));
    if (base == NULL) return -1;
    PyObject *owner = PyTuple_Pack(3, kind, base, tags);
    Py_DECREF(base);
    if (owner == NULL) return -1;
    int has = PyDict_Contains(table, owner), failed = has < 0;
    if (has > 0) {
        PyObject *pair = PyTuple_Pack(2, owner, suffix);
        failed = pair == NULL || PyList_Append(out, pair) < 0;
        Py_XDECREF(pair);
    }
    Py_DECREF(owner);
    return failed ? -1 : 0;
}

/* claims(table, suffixes, summary_kind) -> [(summary key, suffix), ...] in the table's order:
   every series named like a summary's percentile (``lat.p90`` beside summary ``lat``, same
   tags).  One pass over the keys, comparing name tails in place: no object per series. */
static PyObject *claims(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyDict_CheckExact(args[0]) || !PyTuple_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "claims(dict, tuple of str, kind) expected");
        return NULL;
    }
    PyObject *table = args[0], *suffixes = args[1], *kind = args[2];
    Py_ssize_t count = PyTuple_GET_SIZE(suffixes);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *suffix = PyTuple_GET_ITEM(suffixes, i);
        if (!PyUnicode_CheckExact(suffix) || !PyUnicode_IS_ASCII(suffix)) {
            PyErr_SetString(PyExc_TypeError, "claims(): suffixes must be ASCII str");
            return NULL;
        }
    }
    /* The keys are scattered over the heap, and each is two dependent loads (the tuple, then
       its name): two cursors run ahead of the one that compares, the farther loading a key's
       tuple, the nearer (by then the tuple is in cache) its name (bench/flush_bench.py's
       table of 100,000 series: 5.2 ms without, 3.1 ms with, well inside the ~15 ms of one
       conversion chunk between two yields of the flush). */
    PyObject *out = PyList_New(0), *key, *value, *ahead;
    Py_ssize_t pos = 0, far = 0, near = 0;
    for (int i = 0; i < 16; i++) {
        PyDict_Next(table, &far, &ahead, &value);
        if (i < 8) PyDict_Next(table, &near, &ahead, &value);
    }
    while (out != NULL && PyDict_Next(table, &pos, &key, &value)) {
        if (PyDict_Next(table, &far, &ahead, &value)) load(ahead);
        if (PyDict_Next(table, &near, &ahead, &value) && PyTuple_CheckExact(ahead) &&
            PyTuple_GET_SIZE(ahead) == 3)
            load(PyTuple_GET_ITEM(ahead, 1));
        if (!PyTuple_CheckExact(key) || PyTuple_GET_SIZE(key) != 3) continue;
        PyObject *name = PyTuple_GET_ITEM(key, 1);
        if (!PyUnicode_CheckExact(name)) continue;
        Py_ssize_t n = PyUnicode_GET_LENGTH(name);
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *suffix = PyTuple_GET_ITEM(suffixes, i);
            if (ends_with(name, n, suffix) &&
                claim_one(table, kind, name, n, PyTuple_GET_ITEM(key, 2), suffix, out) < 0) {
                Py_CLEAR(out);
                break;
            }
        }
    }
    return out;
}

/* configure((Counter.total, Gauge.value, Summary.values, Summary.weights, Summary.running,
   SetOf.members)): where each accumulator keeps its state (Gauge.value may be the C
   Gauge's double member).  An item is taken for a kind only when its type is exactly the
   descriptor's owner. */
static PyObject *configure(PyObject *Py_UNUSED(module), PyObject *descriptors) {
    Slot *slots[6] = {&total_slot,   &value_slot,   &values_slot,
                      &weights_slot, &running_slot, &members_slot};
    Slot checked[6];
    if (!PyTuple_CheckExact(descriptors) || PyTuple_GET_SIZE(descriptors) != 6) {
        PyErr_SetString(PyExc_TypeError, "configure() wants a tuple of 6 descriptors");
        return NULL;
    }
    for (int i = 0; i < 6; i++) /* all valid, or nothing changes */
        if (slot_of(PyTuple_GET_ITEM(descriptors, i), &checked[i], i == 1) < 0) return NULL;
    if (checked[3].type != checked[2].type || checked[4].type != checked[2].type) {
        PyErr_SetString(PyExc_TypeError, "values, weights and running: one type's slots");
        return NULL;
    }
    for (int i = 0; i < 6; i++) {
        PyTypeObject *old = slots[i]->type;
        Py_INCREF(checked[i].type);
        *slots[i] = checked[i];
        Py_XDECREF(old);
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_O, "configure(the accumulators' slot descriptors)"},
    {"claims", (PyCFunction)(void (*)(void))claims, METH_FASTCALL,
     "claims(table, suffixes, summary_kind) -> [(summary key, suffix), ...]"},
    {"convert", (PyCFunction)(void (*)(void))convert, METH_FASTCALL,
     "convert(items, time, period, suffixes, counter_attributes, max_name)"
     " -> (measurements, items left for Python)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_convert", "Converter.convert's common cases in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

static int intern_keys(void) {
    struct {
        PyObject **where;
        const char *text;
    } keys[] = {{&k_name, "name"},   {&k_tags, "tags"},     {&k_time, "time"},
                {&k_period, "period"}, {&k_value, "value"}, {&k_attributes, "attributes"},
                {&k_count, "count"}, {&k_sum, "sum"},       {&k_stddev, "stddev"},
                {&k_min, "min"},     {&k_max, "max"},       {&k_last, "last"}};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        *keys[i].where = PyUnicode_InternFromString(keys[i].text);
        if (*keys[i].where == NULL) return -1;
    }
    return 0;
}

PyMODINIT_FUNC PyInit__convert(void) {
    if (intern_keys() < 0) return NULL;
    return PyModule_Create(&module_def);
}
