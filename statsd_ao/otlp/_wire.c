/* The OTLP converter's common cases in C: a chunk of an interval's accumulators to data
   points written into the open request of a statsd_ao.otlp.requests.Requests, and the
   request's bytes when it is sealed.

   statsd_ao/otlp/convert.py and requests.py stay the definition.  For each item it fully
   understands (a counter, gauge or set whose value is inside the AppOptics range; a summary
   of values below convert.PLAIN in magnitude, with sane weights and percentile names that
   need no fitting) this does what Converter.series and Requests.number / .histogram do, on
   the same Python containers of the Requests object (its metrics, hosts, series and
   counts), and calls back into it to seal a request.  A point's attributes and a metric's
   name are encoded here each time (Requests keeps them in caches for the Python path:
   here, finding them in a cache of every series is slower than writing them).  Every other item is handed back untouched for the
   Python code.  No field number is written here: the tags of the fields come from
   requests.py (read from opentelemetry-proto's descriptors) through configure().
   tests/otlp/test_wire.py holds both against Python (the same points) and the library
   (the same bytes). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#include "../core/_slots.h"

#define MAX_SUFFIXES 16
#define MAX_TAG 8 /* bytes of an encoded field tag */

static Slot total_slot, value_slot, values_slot, weights_slot, running_slot, members_slot;

/* From configure(): the shapes (the Shape strings, part of each metric key), the data
   points field tag of each shape's message, the histogram point's field tags. */
enum { SUM, UPDOWN_SUM, GAUGE, HISTOGRAM, SHAPES };
static PyObject *shapes[SHAPES];
static char point_tag[SHAPES][MAX_TAG], h_count[MAX_TAG], h_sum[MAX_TAG], h_min[MAX_TAG],
    h_max[MAX_TAG];
static Py_ssize_t point_tag_n[SHAPES], h_count_n, h_sum_n, h_min_n, h_max_n;
static Py_ssize_t metric_bound, host_bound, max_name;
/* The tags of a KeyValue's key and value, an AnyValue's string, each point's attributes,
   a metric's name and unit; the tag that becomes the resource's host.name. */
enum { KEY, VALUE, STRING_VALUE, NUMBER_ATTRIBUTE, HISTOGRAM_ATTRIBUTE, NAME, UNIT, STRINGS };
static char string_tag[STRINGS][MAX_TAG];
static Py_ssize_t string_tag_n[STRINGS];
static PyObject *host_tag;
static double plain, max_magnitude;

static PyObject *s_hosts, *s_metrics, *s_series, *s_count, *s_bytes, *s_max_points,
    *s_max_bytes, *s_scope_size, *s_number_head, *s_histogram_head,
    *s_seal;

enum { DONE = 1, DECLINED = 0, FAILED = -1 };

static inline PyObject *get(PyObject *self, const Slot *slot) {
    return *(PyObject **)((char *)self + slot->offset);
}

/* ---- the open request, as the Requests object holds it ---- */

typedef struct {
    PyObject *requests;                        /* borrowed */
    PyObject *hosts, *metrics, *series;        /* new references */
    PyObject *number_head, *histogram_head; /* bytes */
    Py_ssize_t count, bytes, max_points, max_bytes, scope_size;
    Py_ssize_t added; /* points added by this call */
} Open;

static Py_ssize_t int_attr(PyObject *o, PyObject *name) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) return -1;
    Py_ssize_t n = PyLong_AsSsize_t(v);
    Py_DECREF(v);
    return n;
}

static void open_clear(Open *o) {
    Py_CLEAR(o->hosts);
    Py_CLEAR(o->metrics);
    Py_CLEAR(o->series);
    Py_CLEAR(o->number_head);
    Py_CLEAR(o->histogram_head);
}

/* Read the request's state from the Requests object (again after a seal). */
static int open_read(Open *o) {
    open_clear(o);
    PyObject *r = o->requests;
    o->hosts = PyObject_GetAttr(r, s_hosts);
    o->metrics = PyObject_GetAttr(r, s_metrics);
    o->series = PyObject_GetAttr(r, s_series);
    o->number_head = PyObject_GetAttr(r, s_number_head);
    o->histogram_head = PyObject_GetAttr(r, s_histogram_head);
    if (o->hosts == NULL || o->metrics == NULL || o->series == NULL ||
        o->number_head == NULL || o->histogram_head == NULL)
        return -1;
    if (!PyDict_CheckExact(o->hosts) || !PyDict_CheckExact(o->metrics) ||
        !PyAnySet_CheckExact(o->series) || !PyBytes_CheckExact(o->number_head) ||
        !PyBytes_CheckExact(o->histogram_head)) {
        PyErr_SetString(PyExc_TypeError, "Requests: unexpected state");
        return -1;
    }
    if ((o->count = int_attr(r, s_count)) < 0 || (o->bytes = int_attr(r, s_bytes)) < 0 ||
        (o->max_points = int_attr(r, s_max_points)) < 0 ||
        (o->max_bytes = int_attr(r, s_max_bytes)) < 0 ||
        (o->scope_size = int_attr(r, s_scope_size)) < 0)
        return PyErr_Occurred() ? -1 : 0;
    return 0;
}

static int set_int(PyObject *o, PyObject *name, Py_ssize_t n) {
    PyObject *v = PyLong_FromSsize_t(n);
    int failed = v == NULL || PyObject_SetAttr(o, name, v) < 0;
    Py_XDECREF(v);
    return failed ? -1 : 0;
}

static int open_write(Open *o) {
    return set_int(o->requests, s_count, o->count) < 0 || set_int(o->requests, s_bytes, o->bytes) < 0
               ? -1
               : 0;
}

static char *varint(char *p, size_t n);
static char *put(char *p, const void *what, size_t n);
static Py_ssize_t varint_size(size_t n);

/* A length-delimited string field: its size, or -1 (an error set) for a str without UTF-8. */
static Py_ssize_t string_size(int tag, PyObject *text, const char **utf8, Py_ssize_t *n) {
    if (!PyUnicode_Check(text) || (*utf8 = PyUnicode_AsUTF8AndSize(text, n)) == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "str expected");
        return -1;
    }
    return string_tag_n[tag] + varint_size((size_t)*n) + *n;
}

static char *put_string(char *p, int tag, const char *utf8, Py_ssize_t n) {
    p = put(p, string_tag[tag], (size_t)string_tag_n[tag]);
    p = varint(p, (size_t)n);
    return put(p, utf8, (size_t)n);
}

/* Requests._attributes in C: (host or None, the other tags as repeated KeyValue entries of
   the field ``field``); a new reference, or NULL. */
static PyObject *encode_attributes(PyObject *tags, int field) {
    Py_ssize_t count = PyTuple_GET_SIZE(tags), size = 0;
    PyObject *host = Py_None;
    for (int pass = 0; pass < 2; pass++) {
        PyObject *out = pass ? PyBytes_FromStringAndSize(NULL, size) : NULL;
        if (pass && out == NULL) return NULL;
        char *p = pass ? PyBytes_AS_STRING(out) : NULL;
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *pair = PyTuple_GET_ITEM(tags, i);
            if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) {
                PyErr_SetString(PyExc_TypeError, "tags: (str, str) pairs expected");
                Py_XDECREF(out);
                return NULL;
            }
            PyObject *key = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
            int is_host = PyUnicode_Check(key) ? PyUnicode_Compare(key, host_tag) == 0 : 0;
            if (PyErr_Occurred()) {
                Py_XDECREF(out);
                return NULL;
            }
            if (is_host) {
                host = value;
                continue;
            }
            const char *k, *v;
            Py_ssize_t kn, vn;
            Py_ssize_t ks = string_size(KEY, key, &k, &kn), vs = string_size(STRING_VALUE, value, &v, &vn);
            if (ks < 0 || vs < 0) {
                Py_XDECREF(out);
                return NULL;
            }
            Py_ssize_t any = string_tag_n[VALUE] + varint_size((size_t)vs) + vs;
            Py_ssize_t kv = ks + any;
            if (!pass) {
                size += string_tag_n[field] + varint_size((size_t)kv) + kv;
                continue;
            }
            p = put(p, string_tag[field], (size_t)string_tag_n[field]);
            p = varint(p, (size_t)kv);
            p = put_string(p, KEY, k, kn);
            p = put(p, string_tag[VALUE], (size_t)string_tag_n[VALUE]);
            p = varint(p, (size_t)vs);
            p = put_string(p, STRING_VALUE, v, vn);
        }
        if (pass) {
            PyObject *found = PyTuple_Pack(2, host, out);
            Py_DECREF(out);
            return found;
        }
    }
    return NULL; /* (not reached) */
}

/* (host, encoded attributes) of the tags, encoded each time: a new reference (a tuple
   holding both), or NULL.  (Encoding here is cheaper than finding them in a cache of every
   series' attributes: bench/README.md, "OTLP encoding".) */
static PyObject *attributes(PyObject *tags, int histogram, PyObject **host,
                            PyObject **encoded) {
    PyObject *found = encode_attributes(tags, histogram ? HISTOGRAM_ATTRIBUTE : NUMBER_ATTRIBUTE);
    if (found != NULL) {
        *host = PyTuple_GET_ITEM(found, 0);
        *encoded = PyTuple_GET_ITEM(found, 1);
    }
    return found;
}

/* The metric's encoded name and unit: a new reference, or NULL. */
static PyObject *head(PyObject *name, PyObject *unit) {
    const char *name_utf8, *unit_utf8 = NULL;
    Py_ssize_t name_n, unit_n = 0, size = string_size(NAME, name, &name_utf8, &name_n);
    if (size >= 0 && PyUnicode_GET_LENGTH(unit)) {
        Py_ssize_t more = string_size(UNIT, unit, &unit_utf8, &unit_n);
        size = more < 0 ? -1 : size + more;
    }
    PyObject *found = size < 0 ? NULL : PyBytes_FromStringAndSize(NULL, size);
    if (found != NULL) {
        char *p = put_string(PyBytes_AS_STRING(found), NAME, name_utf8, name_n);
        if (unit_utf8 != NULL) put_string(p, UNIT, unit_utf8, unit_n);
    }
    return found;
}

/* Requests._new_parts for a metric not in the request: -1 on error. */
static Py_ssize_t new_parts(Open *o, PyObject *host, PyObject *metric_head) {
    Py_ssize_t size = metric_bound + PyBytes_GET_SIZE(metric_head);
    int known = PyDict_Contains(o->hosts, host);
    if (known < 0) return -1;
    if (!known) {
        size += o->scope_size;
        if (host != Py_None) {
            Py_ssize_t n;
            if (!PyUnicode_Check(host) || PyUnicode_AsUTF8AndSize(host, &n) == NULL) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "host: str expected");
                return -1;
            }
            size += host_bound + n;
        }
    }
    return size;
}

/* Requests.seal, then the new request's state; read again even when sealing raised (the
   request may be reset before ``emit`` raises), so the counts written back stay true. */
static int seal(Open *o) {
    if (open_write(o) < 0) return -1;
    PyObject *r = PyObject_CallMethodNoArgs(o->requests, s_seal);
    if (r != NULL) {
        Py_DECREF(r);
        return open_read(o);
    }
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    if (open_read(o) < 0) PyErr_Clear();
    PyErr_Restore(type, value, traceback);
    return -1;
}

static char *varint(char *p, size_t n) {
    while (n >= 0x80) {
        *p++ = (char)((n & 0x7F) | 0x80);
        n >>= 7;
    }
    *p++ = (char)n;
    return p;
}

static char *put(char *p, const void *what, size_t n) {
    memcpy(p, what, n);
    return p + n;
}

static char *put_double(char *p, double x) {
    memcpy(p, &x, 8); /* little-endian machines only: checked in configure() */
    return p + 8;
}

static char *put_fixed64(char *p, unsigned long long x) {
    memcpy(p, &x, 8);
    return p + 8;
}

/* Add the point ``data`` (``n`` bytes, without its field tag and length) of the series
   (name, tags) to metric (host, name, unit, shape): Requests.number's bookkeeping. */
static int add_point(Open *o, int shape, PyObject *name, PyObject *tags, PyObject *unit,
                     PyObject *host, const char *data, Py_ssize_t n) {
    char prefix[MAX_TAG + 10];
    char *p = put(prefix, point_tag[shape], (size_t)point_tag_n[shape]);
    p = varint(p, (size_t)n);
    Py_ssize_t prefix_n = p - prefix, point_n = prefix_n + n;
    PyObject *key = PyTuple_Pack(4, host, name, unit, shapes[shape]);
    PyObject *series = PyTuple_Pack(2, name, tags);
    PyObject *metric_head = NULL, *point = NULL;
    int status = FAILED;
    if (key == NULL || series == NULL) goto done;
    PyObject *points = PyDict_GetItemWithError(o->metrics, key); /* borrowed */
    if (points == NULL && PyErr_Occurred()) goto done;
    Py_ssize_t size = point_n;
    if (points == NULL) {
        if ((metric_head = head(name, unit)) == NULL) goto done;
        if (!PyBytes_CheckExact(metric_head)) {
            PyErr_SetString(PyExc_TypeError, "metric head: bytes expected");
            goto done;
        }
        Py_ssize_t parts = new_parts(o, host, metric_head);
        if (parts < 0) goto done;
        size += parts;
    }
    /* Added first (one hash): a repeated series leaves the set's size as it was. */
    Py_ssize_t known = PySet_GET_SIZE(o->series);
    if (PySet_Add(o->series, series) < 0) goto done;
    if (o->count && (o->count >= o->max_points || PySet_GET_SIZE(o->series) == known ||
                     o->bytes + size > o->max_bytes)) {
        if (seal(o) < 0) goto done;
        points = NULL;
        if (metric_head == NULL && (metric_head = head(name, unit)) == NULL) goto done;
        Py_ssize_t parts = new_parts(o, host, metric_head);
        if (parts < 0 || PySet_Add(o->series, series) < 0) goto done;
        size = point_n + parts;
    }
    o->bytes += size;
    if (points == NULL) { /* Requests._new_metric */
        PyObject *fresh = PyList_New(0);
        if (fresh == NULL) goto done;
        int failed = PyDict_SetItem(o->metrics, key, fresh) < 0;
        PyObject *metrics = failed ? NULL : PyDict_GetItemWithError(o->hosts, host);
        if (!failed && metrics == NULL) {
            failed = PyErr_Occurred() != NULL;
            metrics = failed ? NULL : PyList_New(0);
            failed = metrics == NULL || PyDict_SetItem(o->hosts, host, metrics) < 0;
            Py_XDECREF(metrics); /* (the dict holds it) */
        }
        PyObject *entry = failed ? NULL : PyTuple_Pack(3, metric_head, shapes[shape], fresh);
        failed = entry == NULL || PyList_Append(metrics, entry) < 0;
        Py_XDECREF(entry);
        Py_DECREF(fresh); /* (the dict and the entry hold it) */
        if (failed) goto done;
        points = fresh;
    }
    point = PyBytes_FromStringAndSize(NULL, point_n);
    if (point == NULL) goto done;
    memcpy(PyBytes_AS_STRING(point), prefix, (size_t)prefix_n);
    memcpy(PyBytes_AS_STRING(point) + prefix_n, data, (size_t)n);
    if (PyList_Append(points, point) < 0) goto done;
    o->count++;
    o->added++;
    status = DONE;
done:
    Py_XDECREF(key);
    Py_XDECREF(series);
    Py_XDECREF(metric_head);
    Py_XDECREF(point);
    return status;
}

/* A Sum or Gauge point of ``value`` (Requests.number). */
static int number(Open *o, int shape, PyObject *name, PyObject *tags, PyObject *unit,
                  double value) {
    PyObject *host, *encoded, *held = attributes(tags, 0, &host, &encoded);
    if (held == NULL) return FAILED;
    Py_ssize_t head_n = PyBytes_GET_SIZE(o->number_head), n = head_n + 8 + PyBytes_GET_SIZE(encoded);
    char stack[512], *data = n <= (Py_ssize_t)sizeof stack ? stack : PyMem_Malloc((size_t)n);
    if (data == NULL) {
        Py_DECREF(held);
        return (PyErr_NoMemory(), FAILED);
    }
    char *p = put(data, PyBytes_AS_STRING(o->number_head), (size_t)head_n);
    p = put_double(p, value);
    put(p, PyBytes_AS_STRING(encoded), (size_t)PyBytes_GET_SIZE(encoded));
    int status = add_point(o, shape, name, tags, unit, host, data, n);
    if (data != stack) PyMem_Free(data);
    Py_DECREF(held);
    return status;
}

/* A Histogram point (Requests.histogram without buckets). */
static int histogram(Open *o, PyObject *name, PyObject *tags, PyObject *unit,
                     unsigned long long count, double total, double low, double high) {
    PyObject *host, *encoded, *held = attributes(tags, 1, &host, &encoded);
    if (held == NULL) return FAILED;
    Py_ssize_t head_n = PyBytes_GET_SIZE(o->histogram_head), attributes_n = PyBytes_GET_SIZE(encoded);
    Py_ssize_t n = head_n + h_count_n + 8 + h_sum_n + 8 + attributes_n + h_min_n + 8 + h_max_n + 8;
    char stack[512], *data = n <= (Py_ssize_t)sizeof stack ? stack : PyMem_Malloc((size_t)n);
    if (data == NULL) {
        Py_DECREF(held);
        return (PyErr_NoMemory(), FAILED);
    }
    char *p = put(data, PyBytes_AS_STRING(o->histogram_head), (size_t)head_n);
    p = put_fixed64(put(p, h_count, (size_t)h_count_n), count);
    p = put_double(put(p, h_sum, (size_t)h_sum_n), total);
    p = put(p, PyBytes_AS_STRING(encoded), (size_t)attributes_n);
    p = put_double(put(p, h_min, (size_t)h_min_n), low);
    put_double(put(p, h_max, (size_t)h_max_n), high);
    int status = add_point(o, HISTOGRAM, name, tags, unit, host, data, n);
    if (data != stack) PyMem_Free(data);
    Py_DECREF(held);
    return status;
}

/* ---- the conversion (Converter.series) ---- */

typedef struct {
    PyObject *suffixes; /* tuple of (percentile, suffix) */
    PyObject *unit;     /* the summaries' unit */
    PyObject *empty;    /* "" */
    int monotonic;
    int summaries_declined;
    Py_ssize_t negative_counters;
} Context;

static inline int in_range(double v) { return fabs(v) < max_magnitude; } /* NaN: no */

/* A counter's, gauge's or set's value in range; 0 to decline. */
static int single_value(PyObject *acc, double *value, int *counter) {
    PyTypeObject *type = Py_TYPE(acc);
    *counter = type == total_slot.type;
    if (type == members_slot.type) {
        PyObject *members = get(acc, &members_slot);
        if (members == NULL || !PyAnySet_CheckExact(members)) return 0;
        *value = (double)PySet_GET_SIZE(members);
        return 1;
    }
    if (type == value_slot.type && value_slot.is_double) { /* the C Gauge */
        *value = *(double *)((char *)acc + value_slot.offset);
        return in_range(*value);
    }
    PyObject *v = *counter ? get(acc, &total_slot)
                  : type == value_slot.type ? get(acc, &value_slot)
                                            : NULL;
    if (v == NULL || !PyFloat_CheckExact(v)) return 0;
    *value = PyFloat_AS_DOUBLE(v);
    return in_range(*value);
}

/* A name fit_name() leaves as it is: ASCII of A-Za-z0-9.:_- and not too long. */
static int fits(PyObject *name) {
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

/* ---- exact sums, as math.fsum makes them ---- */

#define MAX_PARTIALS 64 /* the partials of finite doubles never number more than ~40 */

typedef struct {
    double p[MAX_PARTIALS];
    int n;
} Sum;

/* Add a finite ``x`` to the non-overlapping partials (Shewchuk); 0 when out of room. */
static int sum_add(Sum *s, double x) {
    int kept = 0;
    for (int j = 0; j < s->n; j++) {
        double y = s->p[j];
        if (fabs(x) < fabs(y)) {
            double t = x;
            x = y;
            y = t;
        }
        double hi = x + y, lo = y - (hi - x);
        if (lo != 0.0) s->p[kept++] = lo;
        x = hi;
    }
    s->n = kept;
    if (x != 0.0) {
        if (s->n == MAX_PARTIALS) return 0;
        s->p[s->n++] = x;
    }
    return 1;
}

/* The correctly rounded total, ties to even across partials (math.fsum's last step). */
static double sum_of(const Sum *s) {
    int n = s->n;
    double hi = 0.0, lo = 0.0;
    if (n == 0) return hi;
    hi = s->p[--n];
    while (n > 0) {
        double x = hi, y = s->p[--n];
        hi = x + y;
        lo = y - (hi - x);
        if (lo != 0.0) break;
    }
    if (n > 0 && ((lo < 0.0 && s->p[n - 1] < 0.0) || (lo > 0.0 && s->p[n - 1] > 0.0))) {
        double y = lo * 2.0, x = hi + y;
        if (y == x - hi) hi = x;
    }
    return hi;
}

/* Weights taken here: 1/rate of a sample rate down to 1e-20, and a total weight that is an
   exact whole-number count's range; anything else is left to Python. */
#define MAX_WEIGHT 1e20
#define MAX_TOTAL_WEIGHT 9007199254740992.0 /* 2**53 */

/* A summary's count, sum, min and max as measurements.summarize makes them, for values all
   below ``plain`` in magnitude and sane weights (so no figure of it, its spread included,
   is out of either sink's range); 0 to decline. */
static int figures(PyObject *values, PyObject *weights, double *count, double *total,
                   double *low, double *high) {
    Py_ssize_t n = PyList_GET_SIZE(values);
    if (weights != Py_None && (!PyList_CheckExact(weights) || PyList_GET_SIZE(weights) != n))
        return 0;
    PyObject **items = ((PyListObject *)values)->ob_item;
    PyObject **rates = weights == Py_None ? NULL : ((PyListObject *)weights)->ob_item;
    Sum sums = {.n = 0}, weight = {.n = 0};
    for (Py_ssize_t i = 0; i < n; i++) { /* min() and max(): the first of equals */
        if (!PyFloat_CheckExact(items[i])) return 0;
        double x = PyFloat_AS_DOUBLE(items[i]);
        if (!(fabs(x) < plain)) return 0; /* (NaN too) */
        if (i == 0 || x < *low) *low = x;
        if (i == 0 || x > *high) *high = x;
        if (rates == NULL) {
            if (!sum_add(&sums, x)) return 0;
            continue;
        }
        if (!PyFloat_CheckExact(rates[i])) return 0;
        double w = PyFloat_AS_DOUBLE(rates[i]);
        if (!(w > 0.0 && w <= MAX_WEIGHT) || !sum_add(&sums, w * x) || !sum_add(&weight, w))
            return 0;
    }
    double total_weight = rates == NULL ? (double)n : sum_of(&weight);
    if (!(total_weight > 0.0 && total_weight <= MAX_TOTAL_WEIGHT)) return 0;
    *count = nearbyint(total_weight); /* Python's round(): half to even */
    if (*count < 1.0) *count = 1.0;
    *total = sum_of(&sums);
    return 1;
}

#define SORT_HERE 64 /* values sorted in a C array (by insertion); more: the list's sort */

/* The tuple of ``name``'s percentile names, or None when one needs fitting (Python's
   fit_name does it); a new reference, NULL on error. */
static PyObject *percentile_names(const Context *c, PyObject *name) {
    Py_ssize_t count = PyTuple_GET_SIZE(c->suffixes);
    PyObject *names = PyTuple_New(count);
    if (names == NULL) return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *suffix = PyTuple_GET_ITEM(PyTuple_GET_ITEM(c->suffixes, i), 1);
        PyObject *whole = PyUnicode_Concat(name, suffix);
        if (whole == NULL) {
            Py_DECREF(names);
            return NULL;
        }
        PyTuple_SET_ITEM(names, i, whole);
        if (!fits(whole)) {
            Py_DECREF(names);
            Py_RETURN_NONE;
        }
    }
    return names;
}

/* The histogram and percentile points of a summary, or DECLINED. */
static int summary(Open *o, Context *c, PyObject *acc, PyObject *name, PyObject *tags) {
    PyObject *values = get(acc, &values_slot), *weights = get(acc, &weights_slot);
    PyObject *running = get(acc, &running_slot);
    if (values == NULL || !PyList_CheckExact(values) || running != Py_None || weights == NULL)
        return DECLINED;
    Py_ssize_t n = PyList_GET_SIZE(values), count = PyTuple_GET_SIZE(c->suffixes);
    if (n == 0 || count > MAX_SUFFIXES) return DECLINED;
    double whole, total, low = 0.0, high = 0.0;
    if (!figures(values, weights, &whole, &total, &low, &high)) return DECLINED;
    /* measurements.consistent_sum */
    double floor_sum = whole * low, ceiling_sum = whole * high;
    if (total < floor_sum)
        total = floor_sum;
    else if (total > ceiling_sum)
        total = ceiling_sum;
    if (!in_range(total)) return DECLINED;
    PyObject *names = NULL; /* the percentile points' names, or None: one needs fitting */
    if (count) {
        if ((names = percentile_names(c, name)) == NULL) return FAILED;
        if (names == Py_None) {
            Py_DECREF(names);
            return DECLINED; /* (Python fits it) */
        }
    }
    int status = histogram(o, name, tags, c->unit, (unsigned long long)whole, total, low, high);
    if (status != DONE || !count) {
        Py_XDECREF(names);
        return status;
    }
    /* The values in order, as sorted() orders them (a stable sort on <). */
    double few[SORT_HERE];
    PyObject *ordered = NULL;
    if (n <= SORT_HERE) {
        PyObject **items = ((PyListObject *)values)->ob_item;
        for (Py_ssize_t i = 0; i < n; i++) {
            double x = PyFloat_AS_DOUBLE(items[i]);
            Py_ssize_t j = i;
            for (; j > 0 && x < few[j - 1]; j--) few[j] = few[j - 1];
            few[j] = x;
        }
    } else {
        ordered = PyList_GetSlice(values, 0, n);
        if (ordered == NULL || PyList_Sort(ordered) < 0) {
            Py_XDECREF(ordered);
            Py_DECREF(names);
            return FAILED;
        }
    }
    for (Py_ssize_t i = 0; i < count && status == DONE; i++) {
        double p = PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(PyTuple_GET_ITEM(c->suffixes, i), 0));
        double rank = ceil(p / 100.0 * (double)n); /* measurements.nearest_rank */
        Py_ssize_t at = rank < 1.0 ? 0 : (Py_ssize_t)rank - 1;
        double value = ordered == NULL ? few[at] : PyFloat_AS_DOUBLE(PyList_GET_ITEM(ordered, at));
        status = number(o, GAUGE, PyTuple_GET_ITEM(names, i), tags, c->unit, value);
    }
    Py_XDECREF(ordered);
    Py_DECREF(names);
    return status;
}

static int one_item(Open *o, Context *c, PyObject *item) {
    if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2) return DECLINED;
    PyObject *key = PyTuple_GET_ITEM(item, 0), *acc = PyTuple_GET_ITEM(item, 1);
    if (!PyTuple_CheckExact(key) || PyTuple_GET_SIZE(key) != 3) return DECLINED;
    PyObject *name = PyTuple_GET_ITEM(key, 1), *tags = PyTuple_GET_ITEM(key, 2);
    if (!PyUnicode_CheckExact(name) || !PyTuple_CheckExact(tags)) return DECLINED;
    if (Py_TYPE(acc) == values_slot.type)
        return c->summaries_declined ? DECLINED : summary(o, c, acc, name, tags);
    double value;
    int counter;
    if (!single_value(acc, &value, &counter)) return DECLINED;
    int shape = GAUGE;
    if (counter) {
        shape = c->monotonic ? SUM : UPDOWN_SUM;
        if (value < 0 && shape == SUM) {
            shape = UPDOWN_SUM;
            c->negative_counters++;
        }
    }
    return number(o, shape, name, tags, c->empty, value);
}

/* An interval's items are scattered over the heap, each a chain of pointers (item, key
   and accumulator, name and tags, values): start loading the items a few ahead of the one
   being converted, a link further each step, as _convert.c does. */
#define load(p) __builtin_prefetch(p)

static inline __attribute__((always_inline)) void prefetch_tuple(PyObject *tuple) {
    if (PyTuple_CheckExact(tuple))
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tuple) && i < 3; i++) {
            PyObject *item = PyTuple_GET_ITEM(tuple, i);
            load(item);
        }
}

static inline __attribute__((always_inline)) void prefetch(PyObject *items, Py_ssize_t i) {
    Py_ssize_t n = PyList_GET_SIZE(items);
    if (i + 8 < n) load(PyList_GET_ITEM(items, i + 8));
    if (i + 4 < n) prefetch_tuple(PyList_GET_ITEM(items, i + 4));
    if (i + 2 >= n) return;
    PyObject *item = PyList_GET_ITEM(items, i + 2);
    if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2) return;
    prefetch_tuple(PyTuple_GET_ITEM(item, 0));
    PyObject *acc = PyTuple_GET_ITEM(item, 1);
    if (Py_TYPE(acc) == values_slot.type) load(get(acc, &values_slot));
}

/* series(requests, items, suffixes, unit, monotonic)
   -> (points made, negative counters, the items left for Python) */
static PyObject *series(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyList_CheckExact(args[1]) || !PyTuple_CheckExact(args[2]) ||
        !PyUnicode_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "series(requests, list, tuple, str, bool) expected");
        return NULL;
    }
    if (values_slot.type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "series() before configure()");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args[2]); i++) {
        PyObject *pair = PyTuple_GET_ITEM(args[2], i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyFloat_CheckExact(PyTuple_GET_ITEM(pair, 0)) ||
            !PyUnicode_CheckExact(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "suffixes: (float, str) pairs");
            return NULL;
        }
    }
    Context c = {.suffixes = args[2], .unit = args[3], .monotonic = PyObject_IsTrue(args[4])};
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args[2]); i++) {
        double p = PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(PyTuple_GET_ITEM(args[2], i), 0));
        if (!(p >= 0.0 && p <= 100.0)) c.summaries_declined = 1; /* Python's own error */
    }
    if (c.monotonic < 0) return NULL;
    Open o = {.requests = args[0]};
    PyObject *items = args[1], *rest = PyList_New(0);
    c.empty = PyUnicode_New(0, 0);
    Py_ssize_t made = 0;
    if (rest == NULL || c.empty == NULL || open_read(&o) < 0) goto failed;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        prefetch(items, i);
        int status = one_item(&o, &c, item);
        if (status == FAILED || (status == DECLINED && PyList_Append(rest, item) < 0))
            goto failed;
    }
    made = o.added;
    if (open_write(&o) < 0) goto failed;
    open_clear(&o);
    Py_DECREF(c.empty);
    return Py_BuildValue("(nnN)", made, c.negative_counters, rest);
failed:
    if (o.hosts != NULL) { /* (the points added so far stay counted) */
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        if (open_write(&o) < 0) PyErr_Clear();
        PyErr_Restore(type, value, traceback);
    }
    open_clear(&o);
    Py_XDECREF(c.empty);
    Py_XDECREF(rest);
    return NULL;
}

static int tag_of(PyObject *bytes, char *where, Py_ssize_t *n) {
    if (!PyBytes_CheckExact(bytes) || PyBytes_GET_SIZE(bytes) > MAX_TAG ||
        PyBytes_GET_SIZE(bytes) == 0) {
        PyErr_SetString(PyExc_TypeError, "configure(): field tags are short bytes");
        return -1;
    }
    *n = PyBytes_GET_SIZE(bytes);
    memcpy(where, PyBytes_AS_STRING(bytes), (size_t)*n);
    return 0;
}

/* configure(descriptors, shapes, point tags, (count, sum, min, max tags), metric bound,
   host bound, max name, plain, max magnitude, (key, value, string value, number point
   attributes, histogram point attributes, name, unit tags), host tag): see
   convert.load_native. */
static PyObject *configure(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    const unsigned int one = 1;
    if (*(const unsigned char *)&one != 1) {
        PyErr_SetString(PyExc_ImportError, "_wire writes doubles little-endian only");
        return NULL;
    }
    if (nargs != 11 || !PyTuple_CheckExact(args[9]) || PyTuple_GET_SIZE(args[9]) != STRINGS ||
        !PyUnicode_CheckExact(args[10]) || !PyTuple_CheckExact(args[0]) || PyTuple_GET_SIZE(args[0]) != 6 ||
        !PyTuple_CheckExact(args[1]) || PyTuple_GET_SIZE(args[1]) != SHAPES ||
        !PyTuple_CheckExact(args[2]) || PyTuple_GET_SIZE(args[2]) != SHAPES ||
        !PyTuple_CheckExact(args[3]) || PyTuple_GET_SIZE(args[3]) != 4) {
        PyErr_SetString(PyExc_TypeError, "configure(): unexpected arguments");
        return NULL;
    }
    Slot *slots[6] = {&total_slot,   &value_slot,   &values_slot,
                      &weights_slot, &running_slot, &members_slot};
    Slot checked[6];
    for (int i = 0; i < 6; i++)
        if (slot_of(PyTuple_GET_ITEM(args[0], i), &checked[i], i == 1) < 0) return NULL;
    for (int i = 0; i < SHAPES; i++)
        if (tag_of(PyTuple_GET_ITEM(args[2], i), point_tag[i], &point_tag_n[i]) < 0) return NULL;
    if (tag_of(PyTuple_GET_ITEM(args[3], 0), h_count, &h_count_n) < 0 ||
        tag_of(PyTuple_GET_ITEM(args[3], 1), h_sum, &h_sum_n) < 0 ||
        tag_of(PyTuple_GET_ITEM(args[3], 2), h_min, &h_min_n) < 0 ||
        tag_of(PyTuple_GET_ITEM(args[3], 3), h_max, &h_max_n) < 0)
        return NULL;
    for (int i = 0; i < STRINGS; i++)
        if (tag_of(PyTuple_GET_ITEM(args[9], i), string_tag[i], &string_tag_n[i]) < 0)
            return NULL;
    Py_XSETREF(host_tag, Py_NewRef(args[10]));
    metric_bound = PyLong_AsSsize_t(args[4]);
    host_bound = PyLong_AsSsize_t(args[5]);
    max_name = PyLong_AsSsize_t(args[6]);
    plain = PyFloat_AsDouble(args[7]);
    max_magnitude = PyFloat_AsDouble(args[8]);
    if (PyErr_Occurred()) return NULL;
    for (int i = 0; i < SHAPES; i++) Py_XSETREF(shapes[i], Py_NewRef(PyTuple_GET_ITEM(args[1], i)));
    for (int i = 0; i < 6; i++) {
        PyTypeObject *old = slots[i]->type;
        Py_INCREF(checked[i].type);
        *slots[i] = checked[i];
        Py_XDECREF(old);
    }
    Py_RETURN_NONE;
}


/* ---- sealing (Requests._encode) ---- */

static char data_tag[SHAPES][MAX_TAG], trailer[SHAPES][MAX_TAG], metrics_tag[MAX_TAG],
    scope_metrics_tag[MAX_TAG], resource_metrics_tag[MAX_TAG];
static Py_ssize_t data_tag_n[SHAPES], trailer_n[SHAPES], metrics_tag_n, scope_metrics_tag_n,
    resource_metrics_tag_n;

static Py_ssize_t varint_size(size_t n) {
    Py_ssize_t size = 1;
    while (n >= 0x80) n >>= 7, size++;
    return size;
}

static int shape_of(PyObject *shape) {
    for (int i = 0; i < SHAPES; i++)
        if (shape == shapes[i]) return i;
    for (int i = 0; i < SHAPES; i++) {
        int same = PyObject_RichCompareBool(shape, shapes[i], Py_EQ);
        if (same != 0) return same < 0 ? -1 : i;
    }
    PyErr_SetString(PyExc_ValueError, "unknown shape");
    return -1;
}

/* A metric entry (head, shape, points): its size inside its data message, and the size
   of the metric message. */
static int metric_sizes(PyObject *entry, int *shape, Py_ssize_t *data, Py_ssize_t *metric) {
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 3 ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(entry, 0)) ||
        !PyList_CheckExact(PyTuple_GET_ITEM(entry, 2))) {
        PyErr_SetString(PyExc_TypeError, "metric: (bytes, shape, list) expected");
        return -1;
    }
    if ((*shape = shape_of(PyTuple_GET_ITEM(entry, 1))) < 0) return -1;
    PyObject *points = PyTuple_GET_ITEM(entry, 2);
    Py_ssize_t size = trailer_n[*shape];
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(points); i++) {
        PyObject *point = PyList_GET_ITEM(points, i);
        if (!PyBytes_CheckExact(point)) {
            PyErr_SetString(PyExc_TypeError, "point: bytes expected");
            return -1;
        }
        size += PyBytes_GET_SIZE(point);
    }
    *data = size;
    *metric = PyBytes_GET_SIZE(PyTuple_GET_ITEM(entry, 0)) + data_tag_n[*shape] +
              varint_size((size_t)size) + size;
    return 0;
}

static char *put_metric(char *p, PyObject *entry, int shape, Py_ssize_t data, Py_ssize_t metric) {
    p = put(p, metrics_tag, (size_t)metrics_tag_n);
    p = varint(p, (size_t)metric);
    PyObject *head = PyTuple_GET_ITEM(entry, 0), *points = PyTuple_GET_ITEM(entry, 2);
    p = put(p, PyBytes_AS_STRING(head), (size_t)PyBytes_GET_SIZE(head));
    p = put(p, data_tag[shape], (size_t)data_tag_n[shape]);
    p = varint(p, (size_t)data);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(points); i++) {
        PyObject *point = PyList_GET_ITEM(points, i);
        p = put(p, PyBytes_AS_STRING(point), (size_t)PyBytes_GET_SIZE(point));
    }
    return put(p, trailer[shape], (size_t)trailer_n[shape]);
}

/* encode(hosts, scope, resources) -> bytes: ``hosts`` maps each host to its metrics, in
   order, as (encoded name and unit, shape, encoded points); ``scope`` is the encoded scope
   field; ``resources`` is a list of each host's encoded resource field, in the same order. */
static PyObject *encode(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyDict_CheckExact(args[0]) || !PyBytes_CheckExact(args[1]) ||
        !PyList_CheckExact(args[2]) || PyList_GET_SIZE(args[2]) != PyDict_GET_SIZE(args[0])) {
        PyErr_SetString(PyExc_TypeError, "encode(dict, bytes, list) expected");
        return NULL;
    }
    PyObject *hosts = args[0], *scope = args[1], *resources = args[2];
    Py_ssize_t entries = 0, pos = 0, h = 0;
    PyObject *host, *metrics;
    while (PyDict_Next(hosts, &pos, &host, &metrics)) {
        if (!PyList_CheckExact(metrics) || !PyBytes_CheckExact(PyList_GET_ITEM(resources, h++))) {
            PyErr_SetString(PyExc_TypeError, "encode(): lists of metrics, resource bytes");
            return NULL;
        }
        entries += PyList_GET_SIZE(metrics);
    }
    /* Sizes first (each metric's data and message, each host's scope metrics and resource
       metrics), then one pass writing into a bytes object of the exact size. */
    Py_ssize_t *sizes = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(2 * entries + 2 * h + 1));
    int *kinds = PyMem_Malloc(sizeof(int) * (size_t)(entries + 1));
    PyObject *out = NULL;
    if (sizes == NULL || kinds == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t total = 0, e = 0;
    pos = 0, h = 0;
    while (PyDict_Next(hosts, &pos, &host, &metrics)) {
        Py_ssize_t scope_metrics = PyBytes_GET_SIZE(scope);
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(metrics); i++, e++) {
            if (metric_sizes(PyList_GET_ITEM(metrics, i), &kinds[e], &sizes[2 * e],
                             &sizes[2 * e + 1]) < 0)
                goto done;
            scope_metrics += metrics_tag_n + varint_size((size_t)sizes[2 * e + 1]) + sizes[2 * e + 1];
        }
        Py_ssize_t resource = PyBytes_GET_SIZE(PyList_GET_ITEM(resources, h));
        Py_ssize_t resource_metrics =
            resource + scope_metrics_tag_n + varint_size((size_t)scope_metrics) + scope_metrics;
        sizes[2 * entries + 2 * h] = scope_metrics;
        sizes[2 * entries + 2 * h + 1] = resource_metrics;
        total += resource_metrics_tag_n + varint_size((size_t)resource_metrics) + resource_metrics;
        h++;
    }
    out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) goto done;
    char *p = PyBytes_AS_STRING(out);
    pos = 0, h = 0, e = 0;
    while (PyDict_Next(hosts, &pos, &host, &metrics)) {
        PyObject *resource = PyList_GET_ITEM(resources, h);
        p = put(p, resource_metrics_tag, (size_t)resource_metrics_tag_n);
        p = varint(p, (size_t)sizes[2 * entries + 2 * h + 1]);
        p = put(p, PyBytes_AS_STRING(resource), (size_t)PyBytes_GET_SIZE(resource));
        p = put(p, scope_metrics_tag, (size_t)scope_metrics_tag_n);
        p = varint(p, (size_t)sizes[2 * entries + 2 * h]);
        p = put(p, PyBytes_AS_STRING(scope), (size_t)PyBytes_GET_SIZE(scope));
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(metrics); i++, e++)
            p = put_metric(p, PyList_GET_ITEM(metrics, i), kinds[e], sizes[2 * e], sizes[2 * e + 1]);
        h++;
    }
    if (p != PyBytes_AS_STRING(out) + total) {
        PyErr_SetString(PyExc_RuntimeError, "encode(): size mismatch");
        Py_CLEAR(out);
    }
done:
    PyMem_Free(sizes);
    PyMem_Free(kinds);
    return out;
}

/* configure_encode(data tags, trailers, metrics tag, scope metrics tag, resource metrics
   tag): the tags by shape (in `shapes` order) and of the envelopes. */
static PyObject *configure_encode(PyObject *Py_UNUSED(module), PyObject *const *args,
                                  Py_ssize_t nargs) {
    if (nargs != 5 || !PyTuple_CheckExact(args[0]) || PyTuple_GET_SIZE(args[0]) != SHAPES ||
        !PyTuple_CheckExact(args[1]) || PyTuple_GET_SIZE(args[1]) != SHAPES) {
        PyErr_SetString(PyExc_TypeError, "configure_encode(): unexpected arguments");
        return NULL;
    }
    for (int i = 0; i < SHAPES; i++) {
        PyObject *t = PyTuple_GET_ITEM(args[1], i);
        if (tag_of(PyTuple_GET_ITEM(args[0], i), data_tag[i], &data_tag_n[i]) < 0) return NULL;
        if (!PyBytes_CheckExact(t) || PyBytes_GET_SIZE(t) > MAX_TAG) {
            PyErr_SetString(PyExc_TypeError, "configure_encode(): trailers are short bytes");
            return NULL;
        }
        trailer_n[i] = PyBytes_GET_SIZE(t);
        memcpy(trailer[i], PyBytes_AS_STRING(t), (size_t)trailer_n[i]);
    }
    if (tag_of(args[2], metrics_tag, &metrics_tag_n) < 0 ||
        tag_of(args[3], scope_metrics_tag, &scope_metrics_tag_n) < 0 ||
        tag_of(args[4], resource_metrics_tag, &resource_metrics_tag_n) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(descriptors, shapes, point tags, histogram tags, metric bound, host bound,"
     " max name, plain, max magnitude, string field tags, host tag)"},
    {"series", (PyCFunction)(void (*)(void))series, METH_FASTCALL,
     "series(requests, items, suffixes, unit, monotonic)"
     " -> (points made, negative counters, items left for Python)"},
    {"configure_encode", (PyCFunction)(void (*)(void))configure_encode, METH_FASTCALL,
     "configure_encode(data tags, trailers, metrics tag, scope metrics tag,"
     " resource metrics tag)"},
    {"encode", (PyCFunction)(void (*)(void))encode, METH_FASTCALL,
     "encode(hosts, scope, resources) -> the request's bytes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_wire", "The OTLP converter's common cases in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__wire(void) {
    struct {
        PyObject **where;
        const char *text;
    } names[] = {{&s_hosts, "_hosts"},
                 {&s_metrics, "_metrics"},
                 {&s_series, "_series"},
                 {&s_count, "_count"},
                 {&s_bytes, "_bytes"},
                 {&s_max_points, "_max_points"},
                 {&s_max_bytes, "_max_bytes"},
                 {&s_scope_size, "_scope_size"},
                 {&s_number_head, "_number_head"},
                 {&s_histogram_head, "_histogram_head"},
                 {&s_seal, "seal"}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        *names[i].where = PyUnicode_InternFromString(names[i].text);
        if (*names[i].where == NULL) return NULL;
    }
    return PyModule_Create(&module_def);
}
