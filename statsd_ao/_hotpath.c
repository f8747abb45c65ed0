/* The hot path of Aggregator.ingest in C: the same loop, minus the interpreter.

   For each line of a datagram it splits ``name:value|tail`` exactly as two bytes.partition
   calls do and looks ``(name, tail)`` up in the aggregator's dict of feeds.  A feed this
   module recognises (the bound add / add_rated of Counter, Gauge, Summary, SetOf, rated
   ones through functools.partial) with a plain decimal value is applied here, to the same
   Python accumulator objects, with the same arithmetic.  Everything else (an unknown shape,
   an unusual value, a full timer, an error) is handed to the Python callbacks, so the
   Python code stays the one definition of what a line means; this file only makes the
   common case cheap.  statsd_ao/hotpath.py loads it; tests compare it with pure Python.  */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>
#include <structmember.h>

/* Set once by configure(): the functions whose bound methods we recognise, and where the
   accumulators keep their state (their __slots__, read through the member descriptors). */
static PyObject *counter_add, *counter_rated, *gauge_add, *summary_add, *summary_rated,
    *set_add, *partial_type;
static PyObject *limits; /* the module whose MAX_SUMMARY_VALUES, MAX_SET_MEMBERS bind */
static Py_ssize_t max_values, max_members; /* read from it at each datagram, as Python does */

typedef struct {
    PyTypeObject *type; /* the slot is at ``offset`` only in exact instances of ``type`` */
    Py_ssize_t offset;
} Slot;

static Slot total, value_slot, absolute, values_slot, weights_slot, members_slot, func_slot,
    args_slot, keywords_slot;

/* The slot's object (borrowed), or NULL when ``self`` is not an exact instance or the
   slot is empty. */
static inline PyObject *get(PyObject *self, const Slot *slot) {
    if (Py_TYPE(self) != slot->type) return NULL;
    return *(PyObject **)((char *)self + slot->offset);
}

/* Store ``v`` (a new reference, stolen) in the slot of a ``self`` get() accepted. */
static inline void put(PyObject *self, const Slot *slot, PyObject *v) {
    PyObject **where = (PyObject **)((char *)self + slot->offset);
    PyObject *old = *where;
    *where = v;
    Py_XDECREF(old);
}

enum { HANDLED = 1, DECLINED = 0, FAILED = -1 };

/* Powers of ten exactly representable as doubles. */
static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                               1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                               1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* A value in the plain grammar [+-]digits[.digits][(e|E)[+-]digits]; anything else is
   declined (float() accepts more: Python decides).  With at most 15 significant digits and
   a small exponent the result is one exact IEEE operation (correctly rounded, so equal to
   float()'s); otherwise the routine float() ends in does the work. */
static int parse_number(const char *s, Py_ssize_t n, double *out) {
    char buf[48];
    Py_ssize_t i = 0, digits = 0, fraction = 0, exponent_digits = 0;
    long long mantissa = 0, exponent = 0;
    int negative = 0, exponent_negative = 0;
    if (n <= 0 || n >= (Py_ssize_t)sizeof buf) return 0;
    if (s[i] == '+' || s[i] == '-') negative = s[i++] == '-';
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++, digits++)
        if (digits < 18) mantissa = mantissa * 10 + (s[i] - '0');
    if (i < n && s[i] == '.')
        for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++, digits++, fraction++)
            if (digits < 18) mantissa = mantissa * 10 + (s[i] - '0');
    if (digits == 0) return 0;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) exponent_negative = s[i++] == '-';
        for (; i < n && s[i] >= '0' && s[i] <= '9'; i++, exponent_digits++)
            if (exponent_digits < 6) exponent = exponent * 10 + (s[i] - '0');
        if (exponent_digits == 0) return 0;
    }
    if (i != n) return 0;
    long long scale = (exponent_negative ? -exponent : exponent) - fraction;
    if (digits <= 15 && exponent_digits < 6 && scale >= -22 && scale <= 22) {
        double v = (double)mantissa; /* exact: below 10^15 < 2^53 */
        v = scale < 0 ? v / POW10[-scale] : v * POW10[scale];
        *out = negative ? -v : v;
        return isfinite(*out);
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *end = NULL;
    double v = PyOS_string_to_double(buf, &end, NULL);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (end != buf + n || !isfinite(v)) return 0; /* Python's feed rejects non-finite */
    *out = v;
    return 1;
}

/* slot += v, for a float slot */
static int add_to(PyObject *self, const Slot *slot, double v) {
    PyObject *old = get(self, slot);
    if (old == NULL || !PyFloat_CheckExact(old)) return DECLINED;
    PyObject *sum = PyFloat_FromDouble(PyFloat_AS_DOUBLE(old) + v);
    if (sum == NULL) return FAILED;
    put(self, slot, sum);
    return HANDLED;
}

static int gauge(PyObject *self, const char *s, double v) {
    if (s[0] == '+' || s[0] == '-') return add_to(self, &value_slot, v);
    if (get(self, &value_slot) == NULL) return DECLINED;
    PyObject *f = PyFloat_FromDouble(v);
    if (f == NULL) return FAILED;
    put(self, &value_slot, f);
    put(self, &absolute, Py_NewRef(Py_True));
    return HANDLED;
}

static int append_float(PyObject *list, double v) {
    PyObject *f = PyFloat_FromDouble(v);
    if (f == NULL) return FAILED;
    int r = PyList_Append(list, f);
    Py_DECREF(f);
    return r < 0 ? FAILED : HANDLED;
}

/* Summary.add (weight 0) / add_rated while it keeps every value (below the cap).  Declined
   when Python has more to do: a weighted add before weights exist, a plain one after. */
static int summary(PyObject *self, double v, double weight) {
    PyObject *values = get(self, &values_slot), *weights = get(self, &weights_slot);
    if (values == NULL || weights == NULL || !PyList_CheckExact(values) ||
        PyList_GET_SIZE(values) >= max_values)
        return DECLINED;
    int plain = weight == 0.0 && weights == Py_None;
    int weighted = weight != 0.0 && PyList_CheckExact(weights);
    if (!plain && !weighted) return DECLINED;
    int r = append_float(values, v);
    if (r == HANDLED && weighted) r = append_float(weights, weight);
    return r;
}

static int members(PyObject *self, const char *s, Py_ssize_t n) {
    PyObject *set = get(self, &members_slot);
    if (n == 0 || set == NULL || !PySet_CheckExact(set) || PySet_GET_SIZE(set) >= max_members)
        return DECLINED;
    PyObject *member = PyBytes_FromStringAndSize(s, n);
    if (member == NULL) return FAILED;
    int r = PySet_Add(set, member);
    Py_DECREF(member);
    return r < 0 ? FAILED : HANDLED;
}

/* partial(acc.add_rated, rate) */
static int apply_rated(PyObject *feed, const char *s, Py_ssize_t n) {
    PyObject *method = get(feed, &func_slot), *args = get(feed, &args_slot);
    PyObject *keywords = get(feed, &keywords_slot);
    double v;
    if (keywords == NULL || !PyDict_CheckExact(keywords) || PyDict_GET_SIZE(keywords) != 0)
        return DECLINED;
    if (method == NULL || args == NULL || !PyMethod_Check(method) || !PyTuple_CheckExact(args) ||
        PyTuple_GET_SIZE(args) != 1 || !PyFloat_CheckExact(PyTuple_GET_ITEM(args, 0)))
        return DECLINED;
    double rate = PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(args, 0));
    PyObject *func = PyMethod_GET_FUNCTION(method), *self = PyMethod_GET_SELF(method);
    if (!(rate > 0.0) || !parse_number(s, n, &v)) return DECLINED;
    if (func == counter_rated) return add_to(self, &total, v / rate);
    if (func == summary_rated) return summary(self, v, 1.0 / rate);
    return DECLINED;
}

/* Apply the value to the feed natively if it is one we know; DECLINED otherwise. */
static int apply(PyObject *feed, const char *s, Py_ssize_t n) {
    double v;
    if (Py_TYPE(feed) == (PyTypeObject *)partial_type) return apply_rated(feed, s, n);
    if (!PyMethod_Check(feed)) return DECLINED;
    PyObject *func = PyMethod_GET_FUNCTION(feed), *self = PyMethod_GET_SELF(feed);
    if (func == set_add) return members(self, s, n);
    if (!parse_number(s, n, &v)) return DECLINED;
    if (func == counter_add) return add_to(self, &total, v);
    if (func == summary_add) return summary(self, v, 0.0);
    if (func == gauge_add) return gauge(self, s, v);
    return DECLINED;
}

/* The Python way for one line: feed(value), and on ValueError failed(feed, value, line,
   error), exactly as Aggregator.ingest's loop body does. */
static int call_feed(PyObject *feed, PyObject *failed, const char *line, Py_ssize_t len,
                     const char *s, Py_ssize_t n) {
    PyObject *value = PyBytes_FromStringAndSize(s, n);
    if (value == NULL) return FAILED;
    PyObject *done = PyObject_CallOneArg(feed, value);
    if (done != NULL) {
        Py_DECREF(done);
        Py_DECREF(value);
        return HANDLED;
    }
    if (!PyErr_ExceptionMatches(PyExc_ValueError)) {
        Py_DECREF(value);
        return FAILED;
    }
    PyObject *type, *error, *traceback;
    PyErr_Fetch(&type, &error, &traceback);
    PyErr_NormalizeException(&type, &error, &traceback);
    if (traceback != NULL) PyException_SetTraceback(error, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    PyObject *whole = PyBytes_FromStringAndSize(line, len);
    PyObject *saved = PyErr_GetHandledException(); /* as in Python's except block: an */
    PyErr_SetHandledException(error);             /* error in failed() chains to this one */
    PyObject *r = whole == NULL ? NULL : PyObject_CallFunctionObjArgs(failed, feed, value, whole, error, NULL);
    PyErr_SetHandledException(saved);
    Py_XDECREF(saved);
    Py_XDECREF(whole);
    Py_DECREF(error);
    Py_DECREF(value);
    if (r == NULL) return FAILED;
    Py_DECREF(r);
    return HANDLED;
}

/* The feed for (name, tail): from the dict, else from feed_for(key, value, line).
   Returns a new reference, or NULL with an exception set. */
static PyObject *find_feed(PyObject *feeds, PyObject *feed_for, const char *line,
                           Py_ssize_t len, Py_ssize_t name_len, const char *s, Py_ssize_t n,
                           const char *tail, Py_ssize_t tail_len) {
    PyObject *key = Py_BuildValue("(y#y#)", line, name_len, tail, tail_len);
    if (key == NULL) return NULL;
    PyObject *feed = PyDict_GetItemWithError(feeds, key);
    if (feed != NULL && feed != Py_None) { /* None: a miss, as feeds.get() sees it */
        Py_INCREF(feed);
    } else if (!PyErr_Occurred()) {
        PyObject *value = PyBytes_FromStringAndSize(s, n);
        PyObject *whole = PyBytes_FromStringAndSize(line, len);
        if (value != NULL && whole != NULL)
            feed = PyObject_CallFunctionObjArgs(feed_for, key, value, whole, NULL);
        Py_XDECREF(value);
        Py_XDECREF(whole);
    }
    Py_DECREF(key);
    return feed;
}

static int one_line(PyObject *feeds, PyObject *feed_for, PyObject *failed, const char *line,
                    Py_ssize_t len) {
    const char *end = line + len;
    const char *colon = memchr(line, ':', len);
    const char *value = colon ? colon + 1 : end;
    const char *pipe = memchr(value, '|', end - value);
    const char *value_end = pipe ? pipe : end;
    const char *tail = pipe ? pipe + 1 : end;
    Py_ssize_t name_len = (colon ? colon : end) - line, n = value_end - value;
    PyObject *feed = find_feed(feeds, feed_for, line, len, name_len, value, n, tail, end - tail);
    if (feed == NULL) return FAILED;
    int r = apply(feed, value, n);
    if (r == DECLINED) r = call_feed(feed, failed, line, len, value, n);
    Py_DECREF(feed);
    return r;
}

static PyObject *max_values_name, *max_members_name; /* interned by configure() */

static int read_limit(PyObject *name, Py_ssize_t *limit) {
    PyObject *value = PyObject_GetAttr(limits, name);
    if (value == NULL) return -1;
    *limit = PyLong_AsSsize_t(value);
    Py_DECREF(value);
    return *limit == -1 && PyErr_Occurred() ? -1 : 0;
}

static int read_limits(void) {
    if (read_limit(max_values_name, &max_values) < 0) return -1;
    return read_limit(max_members_name, &max_members);
}

/* ingest(datagram, feeds, feed_for, failed): every line of the datagram (the caller counts
   them first, so a line that raises still counts, as in Python). */
static PyObject *ingest(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyBytes_Check(args[0]) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "ingest(datagram: bytes, feeds: dict, feed_for, failed)");
        return NULL;
    }
    if (counter_add == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() was not called");
        return NULL;
    }
    if (read_limits() < 0) return NULL;
    const char *p = PyBytes_AS_STRING(args[0]);
    const char *end = p + PyBytes_GET_SIZE(args[0]);
    Py_INCREF(args[1]); /* a feed_for may replace the aggregator's dict: keep this one alive */
    for (const char *line = p; line < end;) {
        const char *nl = memchr(line, '\n', end - line);
        const char *stop = nl ? nl : end;
        if (stop > line && one_line(args[1], args[2], args[3], line, stop - line) < 0) {
            Py_DECREF(args[1]);
            return NULL;
        }
        if (nl == NULL) break;
        line = nl + 1;
    }
    Py_DECREF(args[1]);
    Py_RETURN_NONE;
}

static int slot_of(PyObject *descriptor, Slot *slot) {
    if (Py_TYPE(descriptor) != &PyMemberDescr_Type) {
        PyErr_SetString(PyExc_TypeError, "configure() wants member descriptors");
        return -1;
    }
    PyMemberDescrObject *member = (PyMemberDescrObject *)descriptor;
    if (member->d_member->type != T_OBJECT_EX && member->d_member->type != T_OBJECT) {
        PyErr_SetString(PyExc_TypeError, "configure() wants object members");
        return -1;
    }
    slot->type = PyDescr_TYPE(descriptor);
    slot->offset = member->d_member->offset;
    return 0;
}

static PyObject *configure(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *fs[7], *ds[9];
    PyObject *module;
    if (!PyArg_ParseTuple(args, "(OOOOOOO)(OOOOOOOOO)O", &fs[0], &fs[1], &fs[2], &fs[3],
                          &fs[4], &fs[5], &fs[6], &ds[0], &ds[1], &ds[2], &ds[3], &ds[4],
                          &ds[5], &ds[6], &ds[7], &ds[8], &module))
        return NULL;
    Slot *slots[9] = {&total,        &value_slot,   &absolute,  &values_slot,  &weights_slot,
                      &members_slot, &func_slot,    &args_slot, &keywords_slot};
    Slot checked[9];
    for (int i = 0; i < 9; i++) /* all valid, or nothing changes */
        if (slot_of(ds[i], &checked[i]) < 0) return NULL;
    for (int i = 0; i < 9; i++) {
        PyTypeObject *old = slots[i]->type;
        Py_INCREF(checked[i].type);
        *slots[i] = checked[i];
        Py_XDECREF(old);
    }
    PyObject **functions[7] = {&counter_add, &counter_rated, &gauge_add, &summary_add,
                               &summary_rated, &set_add, &partial_type};
    for (int i = 0; i < 7; i++) Py_XSETREF(*functions[i], Py_NewRef(fs[i]));
    Py_XSETREF(limits, Py_NewRef(module));
    if (max_values_name == NULL) max_values_name = PyUnicode_InternFromString("MAX_SUMMARY_VALUES");
    if (max_members_name == NULL) max_members_name = PyUnicode_InternFromString("MAX_SET_MEMBERS");
    if (max_values_name == NULL || max_members_name == NULL) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"ingest", (PyCFunction)(void (*)(void))ingest, METH_FASTCALL,
     "ingest(datagram, feeds, feed_for, failed): Aggregator.ingest's loop."},
    {"configure", configure, METH_VARARGS,
     "configure((the add functions, partial), (the slot descriptors), the limits' module)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_hotpath", "Aggregator.ingest's loop in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__hotpath(void) { return PyModule_Create(&module_def); }
