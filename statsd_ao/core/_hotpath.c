/* The hot path of Aggregator.ingest in C: the same loop, minus the interpreter.

   For each line of a datagram it splits ``name:value|tail`` exactly as two bytes.partition
   calls do and looks the raw bytes of (name, tail) up in a Table: a hash table in front of
   the aggregator's dict of feeds, so a line shape seen before in this interval costs no
   Python object.  A shape the table does not know goes to the dict (and to the aggregator's
   feed_for), exactly as the Python loop does, and is cached when the dict keeps its feed.
   A feed this module recognises (an accumulator, which is its own add, or a Rated:
   add_rated at a sample rate) with a plain decimal value is applied here,
   to the same Python accumulator objects, with the same arithmetic.  Everything else (an
   unknown shape, an unusual value, a full timer, an error) is handed to the Python
   callbacks, so the Python code stays the one definition of what a line means; this file
   only makes the common case cheap.  Table.receive reads datagrams with recvmmsg, many per
   system call, and ingests each.  statsd_ao/core/hotpath.py loads it; tests compare it with pure
   Python.  */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>
#include <structmember.h>

#include "_gauges.h"
#include "_slots.h"
#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <limits.h>

/* Set once by configure(): where the accumulators and Rated keep their state (their
   __slots__, read through the member descriptors).  The C Gauge's doubles are read and
   written directly (_gauges.h). */
static PyObject *limits; /* the module whose MAX_SUMMARY_VALUES, MAX_SET_MEMBERS bind */
static Py_ssize_t max_values, max_members; /* read from it at each datagram, as Python does */

static Slot total, values_slot, weights_slot, members_slot, rated_acc, rated_rate;

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

/* slot = v, where the slot holds ``old``: in place when the slot holds the only reference
   (no one can tell the difference), so a counter line allocates nothing. */
static int set_float(PyObject *self, const Slot *slot, PyObject *old, double v) {
    if (old != NULL && PyFloat_CheckExact(old) && Py_REFCNT(old) == 1) {
        ((PyFloatObject *)old)->ob_fval = v;
        return HANDLED;
    }
    PyObject *f = PyFloat_FromDouble(v);
    if (f == NULL) return FAILED;
    put(self, slot, f);
    return HANDLED;
}

/* slot += v, for a float slot */
static int add_to(PyObject *self, const Slot *slot, double v) {
    PyObject *old = get(self, slot);
    if (old == NULL || !PyFloat_CheckExact(old)) return DECLINED;
    return set_float(self, slot, old, PyFloat_AS_DOUBLE(old) + v);
}

/* A gauge line, on the C Gauge's doubles (_gauges.h) */
static int gauge(PyObject *self, const char *s, double v) {
    gauge_put((GaugeObject *)self, v, s[0] == '+' || s[0] == '-');
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

/* The raised exception, normalized, its traceback attached; cleared (3.12's
   PyErr_GetRaisedException). */
static PyObject *fetch_error(void) {
    PyObject *type, *error, *traceback;
    PyErr_Fetch(&type, &error, &traceback);
    PyErr_NormalizeException(&type, &error, &traceback);
    if (traceback != NULL) PyException_SetTraceback(error, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return error;
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
    PyObject *error = fetch_error();
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

/* ---------------------------------------------------------------- the line-shape table

   A hash table over the raw bytes of a line's name and tail, in front of the aggregator's
   feeds dict (keyed by the bytes ``name:tail``), so a line seen before in this interval is
   resolved without building a key (or any other Python object).  Each record holds strong
   references to the key and the feed, and how the feed is applied (its kind: the
   accumulator and the rate are read from the feed), decided once when the record is made.
   The dict is where feed_for leaves a feed to be cached: a record is only made for a feed the dict holds
   under that key, and then the record takes it over (the entry is deleted), so a cached
   shape costs no dict entry; the dict keeps only what the table could not cache.  The
   table is tied to the identity of the dict it mirrors.  The aggregator replaces its dict
   (never clears it) whenever feeds become invalid; a table that sees another dict, or its
   own dict shrunk below what the table left there, retires every record first: its feed
   is dropped and it goes stale.

   A stale record keeps only its key, for the next interval: its first line there goes the
   way of an unknown shape (the dict, then feed_for) with that same key object, so the
   aggregator's shape cache and the record share one copy of a shape's bytes however
   many intervals see it, and no key is built.  A record still stale at the next retirement
   (its shape was not seen for a whole interval) is dropped, so the table holds at most the
   shapes of two intervals.

   Records are fixed-size (32 bytes), in one array that grows by half (indices, so it may
   move); a record compares a line against the key object it holds.  The index is open
   addressing with linear probing at most half full.  The seed is random per process
   and a key whose probe sequence would pass MAX_PROBE is not cached (it takes the dict
   path), so crafted names cannot make a lookup cost more than MAX_PROBE comparisons.  The
   table is not tracked by the cyclic GC: what it references (the dict, keys, feeds,
   accumulators) never references the table back. */

enum Kind { K_OTHER, K_COUNTER, K_COUNTER_RATED, K_GAUGE, K_SUMMARY, K_SUMMARY_RATED, K_SET };
#define MAX_PROBE 32

typedef struct { /* 32 bytes */
    uint32_t hash;   /* the low half of the key's hash (the index needs no more) */
    uint32_t kind;   /* how the feed is applied (classify) */
    PyObject *key;   /* strong: the bytes name ":" tail */
    PyObject *feed;  /* strong; NULL while stale (see retire) */
    PyObject *shape; /* strong: what the shape names, taken over from the shape cache; or NULL */
} Record;

typedef struct {
    PyObject_HEAD
    PyObject *feeds;      /* the dict mirrored (strong), or NULL */
    Py_ssize_t seen_size; /* its size when last looked at: smaller means it was cleared */
    Record *records;
    size_t count, room;   /* records used, allocated */
    size_t live;          /* records with a feed (taken over from the dict mirrored) */
    PyObject *shapes;     /* the aggregator's shape cache mirrored (strong), or NULL */
    size_t shaped;        /* records with a shape (taken over from it) */
    uint32_t *slots;      /* index + 1 of a record; 0 is empty */
    size_t mask;
} Table;

static uint64_t seed;

static inline uint64_t mix(uint64_t h, uint64_t w) {
    h = (h ^ w) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 29);
}

/* Two independent lanes over 16 bytes a round, so the multiplications overlap. */
static uint64_t hash_bytes(uint64_t h, const char *s, size_t n) {
    uint64_t a, b, g = h ^ 0x243F6A8885A308D3ull;
    for (; n >= 16; s += 16, n -= 16) {
        memcpy(&a, s, 8);
        memcpy(&b, s + 8, 8);
        h = mix(h, a);
        g = mix(g, b);
    }
    if (n >= 8) {
        memcpy(&a, s, 8);
        h = mix(h, a);
        s += 8;
        n -= 8;
    }
    a = 0;
    memcpy(&a, s, n);
    return mix(h ^ (g * 0xC2B2AE3D27D4EB4Full), a ^ ((uint64_t)n << 56));
}

static inline uint64_t key_hash(const char *name, size_t name_len, const char *tail,
                                size_t tail_len) {
    return hash_bytes(hash_bytes(seed ^ name_len, name, name_len), tail, tail_len);
}

static inline Record *record_at(Table *t, uint32_t slot) {
    return &t->records[slot - 1];
}

/* a[0:n] == b[0:n], inline: a key's parts are tens of bytes, for which a call to memcmp
   costs more than the comparing (it was 11% of a packed run's receiver).  Eight bytes at a
   time, the last eight overlapping; never reads outside either range. */
static inline int same_bytes(const char *a, const char *b, size_t n) {
    uint64_t x, y;
    uint32_t p, q;
    if (n >= 8) {
        for (size_t i = 0; i + 8 <= n; i += 8) {
            memcpy(&x, a + i, 8);
            memcpy(&y, b + i, 8);
            if (x != y) return 0;
        }
        memcpy(&x, a + n - 8, 8);
        memcpy(&y, b + n - 8, 8);
        return x == y;
    }
    if (n >= 4) {
        memcpy(&p, a, 4);
        memcpy(&q, b, 4);
        if (p != q) return 0;
        memcpy(&p, a + n - 4, 4);
        memcpy(&q, b + n - 4, 4);
        return p == q;
    }
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* key == name ":" tail.  (The colon counts: key "ab:c" is not the line "a:1|:c", whose key
   is "a::c".) */
static inline int same_key(PyObject *key, const char *name, size_t name_len, const char *tail,
                           size_t tail_len) {
    const char *k = PyBytes_AS_STRING(key);
    return (size_t)PyBytes_GET_SIZE(key) == name_len + 1 + tail_len && k[name_len] == ':' &&
           same_bytes(k, name, name_len) && same_bytes(k + name_len + 1, tail, tail_len);
}

static Record *lookup(Table *t, uint32_t h, const char *name, size_t name_len,
                      const char *tail, size_t tail_len) {
    if (t->slots == NULL) return NULL;
    size_t i = h & t->mask;
    for (int probe = 0; probe < MAX_PROBE; probe++, i = (i + 1) & t->mask) {
        uint32_t slot = t->slots[i];
        if (slot == 0) return NULL;
        Record *r = record_at(t, slot);
        if (r->hash == h && same_key(r->key, name, name_len, tail, tail_len)) return r;
    }
    return NULL;
}

/* Drop every record, stale or not (at dealloc, or without memory to retire them); the
   allocations stay (refit sizes them). */
static void reset(Table *t) {
    size_t count = t->count;
    if (t->slots != NULL) memset(t->slots, 0, (t->mask + 1) * sizeof *t->slots);
    t->count = 0;
    t->live = t->shaped = 0;
    t->seen_size = 0;
    Py_CLEAR(t->feeds);
    Py_CLEAR(t->shapes);
    for (size_t i = 0; i < count; i++) { /* (no record is reachable any more) */
        Py_DECREF(t->records[i].key);
        Py_XDECREF(t->records[i].feed);
        Py_XDECREF(t->records[i].shape);
    }
}

/* An index of ``size`` slots (a power of two, above twice the records) over every record. */
static int build_index(Table *t, size_t size) {
    uint32_t *slots = PyMem_Calloc(size, sizeof *slots);
    if (slots == NULL) return -1;
    for (size_t at = 0; at < t->count; at++) {
        size_t i = t->records[at].hash & (size - 1);
        while (slots[i] != 0) i = (i + 1) & (size - 1);
        slots[i] = (uint32_t)(at + 1);
    }
    PyMem_Free(t->slots);
    t->slots = slots;
    t->mask = size - 1;
    return 0;
}

static int grow_index(Table *t) {
    return build_index(t, t->slots == NULL ? 1024 : (t->mask + 1) * 2);
}

/* The table holds the first ``kept`` records (retire moved them there): smaller arrays when
   far fewer are used than allocated, and a new index. */
static int refit(Table *t, size_t kept) {
    size_t size = t->slots == NULL ? 1024 : t->mask + 1;
    while (size > 1024 && kept * 8 < size) size /= 2;
    t->count = kept;
    if (kept < t->room / 8 && t->room > 1024) {
        size_t room = kept + kept / 2 > 1024 ? kept + kept / 2 : 1024;
        Record *records = PyMem_Realloc(t->records, room * sizeof *records);
        if (records != NULL) {
            t->records = records;
            t->room = room;
        }
    }
    return build_index(t, size);
}

/* The mirrored dict is gone: every record goes stale (its feed dropped), and one already
   stale is dropped.  Without memory for that, every record is dropped. */
static void retire(Table *t) {
    size_t count = t->count, kept = 0, dropped = 0;
    PyObject **drop = PyMem_Malloc((3 * count + 1) * sizeof *drop); /* feeds, keys, shapes */
    if (drop == NULL) {
        reset(t);
        return;
    }
    for (size_t i = 0; i < count; i++) {
        Record r = t->records[i];
        if (r.feed == NULL) { /* stale for a whole interval */
            drop[dropped++] = r.key;
            if (r.shape != NULL) {
                drop[dropped++] = r.shape;
                t->shaped--;
            }
            continue;
        }
        drop[dropped++] = r.feed;
        r.feed = NULL;
        r.kind = K_OTHER;
        t->records[kept++] = r;
    }
    PyObject *feeds = t->feeds;
    t->feeds = NULL;
    t->seen_size = 0;
    t->live = 0;
    if (refit(t, kept) < 0) { /* (no memory for a new index: the old one, emptied) */
        if (t->slots != NULL) memset(t->slots, 0, (t->mask + 1) * sizeof *t->slots);
        for (size_t i = 0; i < kept; i++) {
            drop[dropped++] = t->records[i].key;
            if (t->records[i].shape != NULL) drop[dropped++] = t->records[i].shape;
        }
        t->count = t->shaped = 0;
    }
    for (size_t i = 0; i < dropped; i++) Py_DECREF(drop[i]); /* (no record refers to them) */
    Py_XDECREF(feeds);
    PyMem_Free(drop);
}

/* Follow ``feeds``: a table mirroring anything else, or a dict that shrank, retires every
   record. */
static void follow(Table *t, PyObject *feeds) {
    if (t->feeds != feeds || PyDict_GET_SIZE(feeds) < t->seen_size) {
        if (t->feeds != NULL) retire(t);
        t->feeds = Py_NewRef(feeds);
    }
    t->seen_size = PyDict_GET_SIZE(feeds);
}

static int grow_records(Table *t) {
    size_t room = t->room ? t->room + t->room / 2 : 1024;
    if (room >= UINT32_MAX) return -1;
    Record *records = PyMem_Realloc(t->records, room * sizeof *records);
    if (records == NULL) return -1;
    t->records = records;
    t->room = room;
    return 0;
}

/* How ``feed`` is applied natively, or K_OTHER. */
static uint32_t classify(PyObject *feed) {
    PyTypeObject *type = Py_TYPE(feed);
    if (type == total.type) return K_COUNTER; /* an accumulator is its own feed (its add) */
    if (type == &GaugeType) return K_GAUGE;
    if (type == values_slot.type) return K_SUMMARY;
    if (type == members_slot.type) return K_SET;
    if (type == rated_acc.type) { /* acc.add_rated(rate, raw) */
        PyObject *acc = get(feed, &rated_acc);
        type = acc != NULL ? Py_TYPE(acc) : NULL;
        return type == total.type         ? K_COUNTER_RATED
               : type == values_slot.type ? K_SUMMARY_RATED
                                          : K_OTHER;
    }
    return K_OTHER;
}

/* A new record for a feed the mirrored dict holds under ``key`` (whose hash is h); NULL (no
   error) when not cached: a probe sequence too long, or no memory (a cache may fail). */
static Record *insert(Table *t, uint32_t h, PyObject *key, PyObject *feed) {
    if ((t->count + 1) * 2 > t->mask + 1 && grow_index(t) < 0) goto nomem;
    size_t i = h & t->mask;
    int probe = 0;
    for (; t->slots[i] != 0; i = (i + 1) & t->mask)
        if (++probe >= MAX_PROBE) return NULL;
    if (t->count == t->room && grow_records(t) < 0) goto nomem;
    Record *r = &t->records[t->count];
    r->hash = h;
    r->key = Py_NewRef(key);
    r->feed = Py_NewRef(feed);
    r->shape = NULL;
    r->kind = classify(feed);
    t->slots[i] = (uint32_t)(++t->count);
    t->live++;
    return r;
nomem:
    PyErr_Clear();
    return NULL;
}

/* ---------------------------------------------------------------- one line, one datagram */

/* The accumulator a feed of a known kind applies to (borrowed; NULL: none after all). */
static inline PyObject *acc_of(uint32_t kind, PyObject *feed) {
    if (kind == K_COUNTER_RATED || kind == K_SUMMARY_RATED) return get(feed, &rated_acc);
    return feed;
}

/* A Rated feed's rate, if a positive float (else 0: declined). */
static inline int rate_of(PyObject *feed, double *rate) {
    PyObject *r = get(feed, &rated_rate);
    if (r == NULL || !PyFloat_CheckExact(r) || !(PyFloat_AS_DOUBLE(r) > 0.0)) return 0;
    *rate = PyFloat_AS_DOUBLE(r);
    return 1;
}

/* Apply the value natively for a known kind; DECLINED when Python has to. */
static int apply(uint32_t kind, PyObject *feed, const char *s, Py_ssize_t n) {
    double v, rate = 1.0;
    PyObject *self = kind == K_OTHER ? NULL : acc_of(kind, feed);
    if (self == NULL) return DECLINED;
    if (kind == K_SET) return members(self, s, n);
    if ((kind == K_COUNTER_RATED || kind == K_SUMMARY_RATED) && !rate_of(feed, &rate))
        return DECLINED;
    if (!parse_number(s, n, &v)) return DECLINED;
    switch (kind) {
    case K_COUNTER:
        return add_to(self, &total, v);
    case K_COUNTER_RATED:
        return add_to(self, &total, v / rate);
    case K_GAUGE:
        return gauge(self, s, v);
    case K_SUMMARY:
        return summary(self, v, 0.0);
    case K_SUMMARY_RATED:
        return summary(self, v, 1.0 / rate);
    }
    return DECLINED;
}

typedef struct { /* what one ingest call works with */
    Table *table;
    PyObject *feeds, *shapes, *feed_for, *failed;
    int python; /* Python code ran (a callback), so the aggregator may have new dicts */
} Context;

typedef struct { /* one line, split as the Python loop splits it */
    const char *line, *value, *tail;
    Py_ssize_t len, name_len, n, tail_len;
    uint32_t hash; /* (the low half of key_hash: the index needs no more) */
} Line;

/* The bytes name ":" tail of a line, as the Python loop builds its key. */
static PyObject *key_of(const Line *l) {
    PyObject *key = PyBytes_FromStringAndSize(NULL, l->name_len + 1 + l->tail_len);
    if (key == NULL) return NULL;
    char *k = PyBytes_AS_STRING(key);
    memcpy(k, l->line, l->name_len);
    k[l->name_len] = ':';
    memcpy(k + l->name_len + 1, l->tail, l->tail_len);
    return key;
}

/* The record for a feed the mirrored dict holds under ``key``: the line's stale record
   given its feed again, else a new one; NULL when not cached (see insert). */
static Record *keep(Table *t, const Line *l, PyObject *key, PyObject *feed) {
    Record *r = lookup(t, l->hash, l->line, l->name_len, l->tail, l->tail_len);
    if (r == NULL) return insert(t, l->hash, key, feed);
    if (r->feed == NULL) {
        r->feed = Py_NewRef(feed);
        r->kind = classify(feed);
        t->live++;
    }
    return r->feed == feed ? r : NULL;
}

/* A record now holds the feed the dict mirrored holds under ``key``: the dict lets it go,
   so a cached shape costs no dict entry (the dict keeps what the table could not cache). */
static void take_over(Table *t, PyObject *key) {
    if (PyDict_DelItem(t->feeds, key) < 0) PyErr_Clear(); /* (it is there: cannot fail) */
    t->seen_size = PyDict_GET_SIZE(t->feeds);
}

/* Mirror ``shapes`` (the aggregator's shape cache): a record's shape came from the dict
   mirrored, so a table that sees another one (the cache was replaced: remapped, or full)
   drops every shape it holds. */
static void follow_shapes(Table *t, PyObject *shapes) {
    if (t->shapes == shapes) return;
    PyObject *old = t->shapes;
    t->shapes = Py_NewRef(shapes);
    t->shaped = 0;
    for (size_t i = 0; i < t->count; i++) Py_CLEAR(t->records[i].shape);
    Py_XDECREF(old);
}

/* The record now holds the feed for ``key``: it takes over what the shape cache holds
   for the key too (the entry is deleted), so a cached shape costs no cache entry either. */
static void take_shape(Table *t, Record *r, PyObject *key) {
    PyObject *shape = t->shapes != NULL ? PyDict_GetItemWithError(t->shapes, key) : NULL;
    if (shape == NULL) {
        PyErr_Clear();
        return;
    }
    if (r->shape == NULL) t->shaped++;
    Py_INCREF(shape);
    PyObject *old = r->shape;
    r->shape = shape;
    if (PyDict_DelItem(t->shapes, key) < 0) PyErr_Clear(); /* (it is there) */
    Py_XDECREF(old);
}

/* A stale record's shape goes back to the shape cache for its shape's feed_for. */
static int stage_shape(Context *c, PyObject *key, PyObject *shape) {
    if (shape == NULL || c->table->shapes != c->shapes) return 0;
    return PyDict_SetItem(c->shapes, key, shape);
}

/* The feed for a line the table does not know, or knows only stale (``known``: its key,
   borrowed, else NULL; ``shape``: its shape, borrowed, or NULL): from the dict, else from
   feed_for(key, value, line), the key being the bytes name ":" tail; cached (and taken
   over from the dict and the shape cache) when the dict holds it.  A new reference in
   *feed, and the record if one was made or revived; -1 with an exception set. */
static int miss(Context *c, const Line *l, PyObject *known, PyObject *shape, PyObject **feed,
                Record **record) {
    PyObject *key = known != NULL ? Py_NewRef(known) : key_of(l);
    if (key == NULL) return -1;
    PyObject *found = PyDict_GetItemWithError(c->feeds, key);
    if (found != NULL && found != Py_None) { /* None: a miss, as feeds.get() sees it */
        *feed = Py_NewRef(found);
    } else if (!PyErr_Occurred() && stage_shape(c, key, shape) == 0) {
        PyObject *value = PyBytes_FromStringAndSize(l->value, l->n);
        PyObject *whole = PyBytes_FromStringAndSize(l->line, l->len);
        c->python = 1;
        if (value != NULL && whole != NULL)
            *feed = PyObject_CallFunctionObjArgs(c->feed_for, key, value, whole, NULL);
        Py_XDECREF(value);
        Py_XDECREF(whole);
    }
    if (*feed != NULL && c->table->feeds == c->feeds) {
        follow(c->table, c->feeds); /* (cleared in place meanwhile: start over) */
        found = PyDict_GetItemWithError(c->feeds, key); /* what feed_for left there */
        if (found == *feed && (*record = keep(c->table, l, key, *feed)) != NULL) {
            take_over(c->table, key);
            if (c->table->shapes == c->shapes) take_shape(c->table, *record, key);
        }
        else if (found == NULL && PyErr_Occurred())
            Py_CLEAR(*feed);
    }
    Py_DECREF(key);
    return *feed == NULL ? -1 : 0;
}

static inline void split(const char *line, Py_ssize_t len, Line *l) {
    const char *end = line + len;
    const char *colon = memchr(line, ':', len);
    const char *value = colon ? colon + 1 : end;
    const char *pipe = memchr(value, '|', end - value);
    const char *value_end = pipe ? pipe : end;
    l->line = line;
    l->len = len;
    l->value = value;
    l->tail = pipe ? pipe + 1 : end;
    l->name_len = (colon ? colon : end) - line;
    l->n = value_end - value;
    l->tail_len = end - l->tail;
    l->hash = (uint32_t)key_hash(line, l->name_len, l->tail, l->tail_len);
}

static int one_line(Context *c, const Line *l) {
    Record *r = c->table->feeds == c->feeds
                    ? lookup(c->table, l->hash, l->line, l->name_len, l->tail, l->tail_len)
                    : NULL;
    if (r != NULL && r->feed != NULL) {
        int done = apply(r->kind, r->feed, l->value, l->n);
        if (done != DECLINED) return done;
        PyObject *feed = Py_NewRef(r->feed); /* (a feed may replace the table's records) */
        c->python = 1;
        done = call_feed(feed, c->failed, l->line, l->len, l->value, l->n);
        Py_DECREF(feed);
        return done;
    }
    PyObject *feed = NULL, *known = r != NULL ? Py_NewRef(r->key) : NULL;
    PyObject *shape = r != NULL ? Py_XNewRef(r->shape) : NULL; /* (feed_for may drop r) */
    r = NULL;
    int missed = miss(c, l, known, shape, &feed, &r);
    Py_XDECREF(known);
    Py_XDECREF(shape);
    if (missed < 0) return FAILED;
    int done = apply(r != NULL ? r->kind : classify(feed), feed, l->value, l->n);
    if (done == DECLINED) {
        c->python = 1;
        done = call_feed(feed, c->failed, l->line, l->len, l->value, l->n);
    }
    Py_DECREF(feed);
    return done;
}

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* Prefetches in four stages a line goes through (its index slot, its record, its key and
   feed, the state its value updates).  Each stage asks for what the next will need, but
   itself loads what the one before asked for (the slot, the record, the feed's type and
   slot), so a stage can wait on a miss.  They load the table as it is now (its arrays and
   the objects its records hold strongly), so Python code run in between cannot make them
   read freed memory. */

/* The record a line's index slot names first (maybe another key's), or NULL. */
ALWAYS_INLINE const Record *first_record(const Table *t, const Line *l) {
    uint32_t slot = t->slots[l->hash & t->mask];
    return slot != 0 ? record_at((Table *)t, slot) : NULL;
}

ALWAYS_INLINE void ask_slot(const Table *t, const Line *l) {
    __builtin_prefetch(&t->slots[l->hash & t->mask]);
}

ALWAYS_INLINE void ask_record(const Table *t, const Line *l) {
    const Record *r = first_record(t, l);
    if (r != NULL) __builtin_prefetch(r);
}

#define KEY_REACH 192 /* key bytes prefetched at most: a longer key waits on the rest */

/* Every cache line of the key object as long as this line's key (its header, and bytes
   that may reach two lines further; at most KEY_REACH bytes, as the record may hold
   another, shorter key), and the feed.  (ob_sval, not PyBytes_AS_STRING: with asserts on,
   that would load the header here.) */
ALWAYS_INLINE void ask_key(const Table *t, const Line *l) {
    const Record *r = first_record(t, l);
    if (r == NULL) return;
    const char *k = (const char *)r->key;
    size_t reach = (size_t)(l->name_len + l->tail_len);
    if (reach > KEY_REACH) reach = KEY_REACH;
    const char *last = ((PyBytesObject *)r->key)->ob_sval + reach;
    for (const char *at = k; at <= last; at += 64) __builtin_prefetch(at);
    __builtin_prefetch(last);
    if (r->feed != NULL) __builtin_prefetch(r->feed);
}

/* The object a record's line will update (a counter's total, a summary's values, a set),
   or a Rated's accumulator and rate, its state being one link further. */
ALWAYS_INLINE void ask_state(const Table *t, const Line *l) {
    const Record *r = first_record(t, l);
    if (r == NULL || r->feed == NULL) return;
    uint32_t kind = r->kind;
    int rated = kind == K_COUNTER_RATED || kind == K_SUMMARY_RATED;
    const Slot *slot = kind == K_COUNTER   ? &total
                       : kind == K_SUMMARY ? &values_slot
                       : kind == K_SET     ? &members_slot
                       : rated             ? &rated_acc
                                           : NULL;
    PyObject *state = slot != NULL ? get(r->feed, slot) : NULL;
    if (state != NULL) __builtin_prefetch(state);
    PyObject *rate = rated ? get(r->feed, &rated_rate) : NULL;
    if (rate != NULL) __builtin_prefetch(rate);
}

/* All four stages for a group of lines, stage by stage, so the misses of each stage
   overlap (for lines that are then applied one after another). */
ALWAYS_INLINE void prefetch(const Table *t, const Line *lines, int count) {
    if (t->slots == NULL) return;
    for (int i = 0; i < count; i++) ask_slot(t, &lines[i]);
    for (int i = 0; i < count; i++) ask_record(t, &lines[i]);
    for (int i = 0; i < count; i++) ask_key(t, &lines[i]);
    for (int i = 0; i < count; i++) ask_state(t, &lines[i]);
}

#define STEP 3          /* lines between a line's prefetch stages */
#define LEAD (4 * STEP) /* lines a line's index slot is asked for before it is applied */

/* While line i is applied: line i + LEAD enters the first stage, and the lines ahead of i
   move one stage on every STEP lines, so each stage's miss has had STEP lines' time to
   arrive (one line's time was too short on a slow VM; measured in bench/README.md). */
ALWAYS_INLINE void prefetch_ahead(const Table *t, const Line *lines, int count, int i) {
    if (t->slots == NULL) return;
    if (i + LEAD < count) ask_slot(t, &lines[i + LEAD]);
    if (i + 3 * STEP < count) ask_record(t, &lines[i + 3 * STEP]);
    if (i + 2 * STEP < count) ask_key(t, &lines[i + 2 * STEP]);
    if (i + STEP < count) ask_state(t, &lines[i + STEP]);
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
    if (limits == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() was not called");
        return -1;
    }
    if (read_limit(max_values_name, &max_values) < 0) return -1;
    return read_limit(max_members_name, &max_members);
}

/* Lines in ``n`` bytes, as Python counts them: split's parts, less the empty one after a
   final newline. */
static Py_ssize_t lines_in(const char *p, Py_ssize_t n) {
    Py_ssize_t count = 0;
    if (n == 0) return 0;
    for (const char *q = p, *end = p + n; (q = memchr(q, '\n', end - q)) != NULL; q++) count++;
    return count + 1 - (p[n - 1] == '\n');
}

#define GROUP 64 /* lines split before any is applied */

typedef struct { /* the first lines of a datagram, split while the one before was applied */
    Line lines[LEAD];
    int count;
    int staged; /* they went through every prefetch stage (the one before applied LEAD) */
} Carry;

typedef struct { /* bytes of a datagram */
    const char *p;
    Py_ssize_t size;
} Span;

/* Split up to ``room`` lines from *at (up to end) into out; *at moves past them. */
static inline int split_lines(const char **at, const char *end, Line *out, int room) {
    int count = 0;
    for (const char *line = *at; line < end && count < room; count++) {
        const char *nl = memchr(line, '\n', end - line);
        split(line, (nl ? nl : end) - line, &out[count]);
        *at = line = nl ? nl + 1 : end;
    }
    return count;
}

/* Apply ``count`` split lines while prefetching ahead, as far as ``total`` (lines after
   ``count`` are only prefetched: the next datagram's).  ``primed``: the first LEAD lines
   went through every stage already (else they go through all of them here first).  -1
   with an exception set. */
static int apply_lines(Context *c, const Line *group, int count, int total, int primed) {
    int ahead = total > 1 && c->table->feeds == c->feeds;
    if (ahead && !primed) prefetch(c->table, group, total < LEAD ? total : LEAD);
    for (int i = 0; i < count; i++) {
        if (ahead) prefetch_ahead(c->table, group, total, i);
        if (group[i].len > 0 && one_line(c, &group[i]) < 0) return -1;
    }
    return 0;
}

/* Every line of a datagram, adding its lines to *lines (all of them even when one raises,
   as Python counts before its loop).  ``carry`` (or NULL): on entry its first lines, split
   already; on return the first lines of ``next`` (a datagram applied after this one, or
   {NULL}), split and prefetched as this one's last lines were applied, so the pipeline of
   prefetches runs on across datagrams; left empty when ``next`` is {NULL} or a line
   raised.  -1 with an exception set. */
static int datagram(Context *c, const char *p, Py_ssize_t size, Carry *carry, Span next,
                    Py_ssize_t *lines) {
    const char *end = p + size, *line = p;
    Line group[GROUP + LEAD];
    int r = 0, carried = carry != NULL ? carry->count : 0;
    int primed = carried > 0 && carry->staged;
    follow(c->table, c->feeds);
    follow_shapes(c->table, c->shapes);
    Py_INCREF(c->feeds); /* a feed_for may replace the aggregator's dicts: keep these */
    Py_INCREF(c->shapes);
    if (carried) {
        memcpy(group, carry->lines, carried * sizeof *group);
        const Line *last = &carry->lines[carried - 1];
        line = last->line + last->len < end ? last->line + last->len + 1 : end;
    }
    if (carry != NULL) carry->count = 0;
    while ((carried > 0 || line < end) && r == 0) {
        int count = carried + split_lines(&line, end, group + carried, GROUP - carried);
        int extra = 0;
        if (line >= end && next.p != NULL && carry != NULL) {
            const char *at = next.p;
            extra = split_lines(&at, next.p + next.size, group + count, LEAD);
        }
        *lines += count;
        r = apply_lines(c, group, count, count + extra, primed);
        if (r == 0 && extra > 0) {
            memcpy(carry->lines, group + count, extra * sizeof *group);
            carry->count = extra;
            carry->staged = count >= LEAD; /* (applied lines each moved them a stage on) */
        }
        carried = primed = 0;
    }
    *lines += lines_in(line, end - line); /* those after a line that raised */
    Py_DECREF(c->feeds);
    Py_DECREF(c->shapes);
    return r;
}

/* Table.ingest(datagram, feeds, shapes, feed_for, failed) -> lines: Aggregator.ingest's
   loop. */
static PyObject *table_ingest(Table *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyBytes_Check(args[0]) || !PyDict_Check(args[1]) ||
        !PyDict_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "ingest(datagram: bytes, feeds: dict, shapes: dict, feed_for, failed)");
        return NULL;
    }
    if (read_limits() < 0) return NULL;
    Context c = {self, args[1], args[2], args[3], args[4]};
    Py_ssize_t lines = 0;
    Span none = {NULL, 0};
    if (datagram(&c, PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]), NULL, none, &lines) <
        0)
        return NULL;
    return PyLong_FromSsize_t(lines);
}

/* ---------------------------------------------------------------- batch receive */

#define BATCH 64
#define SLOT 65535 /* as recv(65535): no UDP payload is longer */
#define HEAD 2048  /* a datagram up to this long lands in the compact area alone */
#define STRIDE (HEAD + 64)

/* Mapped once: BATCH compact slots STRIDE bytes apart, then BATCH overflow slots of SLOT
   bytes.  Each datagram is read into its compact slot and, past HEAD bytes, on into its
   overflow slot after a HEAD-byte room (where the head is then copied, to make it whole).
   A batch of short datagrams so sits in 132 KiB whose slots start in distinct cache sets:
   slots 64 KiB apart would all map to the same few sets of L1 and L2, each write evicting
   the one before, so every datagram would be read back from L3.  Pages are only touched
   as datagrams land. */
static char *buffer;
#define COMPACT(i) (buffer + (size_t)(i) * STRIDE)
#define OVERFLOW(i) (buffer + (size_t)BATCH * STRIDE + (size_t)(i) * SLOT)

/* Where datagram i of a batch, n bytes long, is whole. */
static inline const char *landed(int i, Py_ssize_t n) {
    if (n <= HEAD) return COMPACT(i);
    memcpy(OVERFLOW(i), COMPACT(i), HEAD);
    return OVERFLOW(i);
}

/* ingest_failed(datagram) for a datagram whose ingest raised, called as from an except
   block (so its logging sees the exception); -1 if it raised itself. */
static int report(PyObject *errored, const char *p, Py_ssize_t n) {
    PyObject *error = fetch_error();
    PyObject *data = PyBytes_FromStringAndSize(p, n);
    PyObject *saved = PyErr_GetHandledException();
    PyErr_SetHandledException(error);
    PyObject *r = data == NULL ? NULL : PyObject_CallOneArg(errored, data);
    PyErr_SetHandledException(saved);
    Py_XDECREF(saved);
    Py_XDECREF(data);
    Py_DECREF(error);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

typedef struct {
    Py_ssize_t datagrams, bytes, lines;
    int error; /* errno of a receive error other than EAGAIN, else 0 */
} Totals;

/* getattr(owner, name), which must be a dict (a new reference); NULL with an exception. */
static PyObject *dict_of(PyObject *owner, PyObject *name) {
    PyObject *d = PyObject_GetAttr(owner, name);
    if (d != NULL && !PyDict_Check(d)) {
        Py_CLEAR(d);
        PyErr_Format(PyExc_TypeError, "%U must be a dict", name);
    }
    return d;
}

#define SHORT 512 /* a datagram this long or shorter: too few lines for datagram()'s prefetch */

/* Split the first line of each short datagram of a batch into ``ahead`` (first[i]: the
   i-th datagram's, or NULL) and prefetch what they touch: one line per datagram leaves
   datagram()'s prefetch nothing to overlap, so the misses of a batch overlap here. */
ALWAYS_INLINE void prefetch_batch(Table *t, const char *const *data, const struct mmsghdr *msgs,
                                  int got, Line *ahead, const Line **first) {
    int count = 0;
    for (int i = 0; i < got; i++) {
        const char *at = data[i];
        Py_ssize_t n = msgs[i].msg_len;
        first[i] = NULL;
        if (n == 0 || n > SHORT) continue;
        split_lines(&at, at + n, &ahead[count], 1);
        first[i] = &ahead[count++];
    }
    if (count > 1) prefetch(t, ahead, count);
}

static int receive_batch(Context *c, PyObject *owner, PyObject *names, PyObject *errored,
                         int fd, unsigned int want, Totals *t, int *more) {
    struct mmsghdr msgs[BATCH];
    struct iovec iov[2 * BATCH];
    memset(msgs, 0, sizeof msgs);
    for (unsigned int i = 0; i < want; i++) {
        iov[2 * i] = (struct iovec){COMPACT(i), HEAD};
        iov[2 * i + 1] = (struct iovec){OVERFLOW(i) + HEAD, SLOT - HEAD};
        msgs[i].msg_hdr.msg_iov = &iov[2 * i];
        msgs[i].msg_hdr.msg_iovlen = 2;
    }
    int got;
    Py_BEGIN_ALLOW_THREADS
    do got = recvmmsg(fd, msgs, want, MSG_DONTWAIT, NULL);
    while (got < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    *more = got == (int)want;
    if (got < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) t->error = errno;
        return 0;
    }
    if (read_limits() < 0) return -1;
    Line ahead[BATCH];
    const Line *first[BATCH];
    const char *data[BATCH];
    for (int i = 0; i < got; i++) data[i] = landed(i, msgs[i].msg_len);
    prefetch_batch(c->table, data, msgs, got, ahead, first);
    PyObject *feeds = NULL, *shapes = NULL;
    Carry carry = {.count = 0};
    int r = 0;
    for (int i = 0; i < got && r == 0; i++) {
        const char *p = data[i];
        Py_ssize_t n = msgs[i].msg_len;
        t->datagrams++;
        t->bytes += n;
        if (feeds == NULL || c->python) { /* the aggregator's dicts of now */
            c->python = 0;
            Py_CLEAR(feeds);
            Py_CLEAR(shapes);
            feeds = dict_of(owner, PyTuple_GET_ITEM(names, 0));
            shapes = feeds != NULL ? dict_of(owner, PyTuple_GET_ITEM(names, 1)) : NULL;
            if (shapes == NULL) {
                r = -1;
                break;
            }
        }
        c->feeds = feeds;
        c->shapes = shapes;
        if (carry.count == 0 && first[i] != NULL) {
            carry.lines[0] = *first[i];
            carry.count = 1;
            carry.staged = 0; /* (its datagram's other lines were not) */
        }
        Span next = {NULL, 0}; /* (a short one's first line is prefetched already) */
        if (i + 1 < got && msgs[i + 1].msg_len > SHORT)
            next = (Span){data[i + 1], msgs[i + 1].msg_len};
        if (datagram(c, p, n, &carry, next, &t->lines) < 0) {
            c->python = 1;
            if (!PyErr_ExceptionMatches(PyExc_Exception) || report(errored, p, n) < 0) r = -1;
        }
    }
    Py_XDECREF(feeds);
    Py_XDECREF(shapes);
    return r;
}

/* Table.receive(fd, limit, owner, (feeds, shapes), feed_for, failed, errored):
   read up to ``limit`` datagrams from the non-blocking socket ``fd`` with recvmmsg, BATCH at
   a time, until it has none; ingest each.  The feeds dict and the shape cache are the
   owner's attributes of those names, read again after each recvmmsg (another thread may
   have run) and after any datagram that called Python code (which may replace them): no
   other code runs in between.  A datagram whose ingest raises an Exception goes to
   errored(datagram), called as from an except block.  Returns
   (datagrams, bytes, lines, errno): errno is that of a receive error other than EAGAIN
   (which ends the call), else 0.  If errored raises, so does this (the counts are lost). */
static PyObject *table_receive(Table *self, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *names = nargs == 7 ? args[3] : NULL;
    if (names == NULL || !PyLong_Check(args[0]) || !PyLong_Check(args[1]) ||
        !PyTuple_CheckExact(names) || PyTuple_GET_SIZE(names) != 2 ||
        !PyUnicode_Check(PyTuple_GET_ITEM(names, 0)) ||
        !PyUnicode_Check(PyTuple_GET_ITEM(names, 1))) {
        PyErr_SetString(PyExc_TypeError, "receive(fd, limit, owner, (feeds: str, shapes: str), "
                                         "feed_for, failed, errored)");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    if ((fd == -1 || limit == -1) && PyErr_Occurred()) return NULL;
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return NULL;
    }
    if (buffer == NULL) {
        void *mapped = mmap(NULL, (size_t)BATCH * (STRIDE + SLOT), PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mapped == MAP_FAILED) return PyErr_SetFromErrno(PyExc_OSError);
        buffer = mapped;
    }
    Context c = {self, NULL, NULL, args[4], args[5]};
    Totals t = {0, 0, 0, 0};
    for (int more = 1; more && t.datagrams < limit && t.error == 0;) {
        Py_ssize_t want = limit - t.datagrams < BATCH ? limit - t.datagrams : BATCH;
        if (receive_batch(&c, args[2], args[3], args[6], (int)fd, (unsigned int)want, &t, &more) < 0)
            return NULL;
    }
    return Py_BuildValue("nnni", t.datagrams, t.bytes, t.lines, t.error);
}

/* Table.follow(feeds): retire every record now if ``feeds`` is not the dict mirrored (so a
   swapped-out interval is not kept alive until the next datagram), and mirror ``feeds``. */
static PyObject *table_follow(Table *self, PyObject *feeds) {
    if (!PyDict_Check(feeds)) {
        PyErr_SetString(PyExc_TypeError, "follow(feeds: dict)");
        return NULL;
    }
    follow(self, feeds);
    Py_RETURN_NONE;
}

static PyObject *table_len(Table *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromSize_t(self->count);
}

/* Table.held(d): entries the table took over from ``d``, the feeds dict or the shape cache
   it mirrors (0 for any other dict). */
static PyObject *table_held(Table *self, PyObject *d) {
    return PyLong_FromSize_t(self->feeds == d ? self->live : self->shapes == d ? self->shaped : 0);
}

/* Table.keys(): every record's key object, stale ones included. */
static PyObject *table_keys(Table *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *keys = PyList_New((Py_ssize_t)self->count);
    if (keys == NULL) return NULL;
    for (size_t i = 0; i < self->count; i++)
        PyList_SET_ITEM(keys, (Py_ssize_t)i, Py_NewRef(self->records[i].key));
    return keys;
}

static void table_dealloc(Table *self) {
    reset(self);
    PyMem_Free(self->records);
    PyMem_Free(self->slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *table_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Table() takes no arguments");
        return NULL;
    }
    return type->tp_alloc(type, 0); /* zeroed: an empty table mirroring nothing */
}

static PyMethodDef table_methods[] = {
    {"ingest", (PyCFunction)(void (*)(void))table_ingest, METH_FASTCALL,
     "ingest(datagram, feeds, shapes, feed_for, failed) -> lines: Aggregator.ingest's loop."},
    {"receive", (PyCFunction)(void (*)(void))table_receive, METH_FASTCALL,
     "receive(fd, limit, owner, (feeds, shapes), feed_for, failed, errored) -> "
     "(datagrams, bytes, lines, errno)"},
    {"follow", (PyCFunction)table_follow, METH_O,
     "follow(feeds): retire every record unless feeds is the dict mirrored"},
    {"records", (PyCFunction)table_len, METH_NOARGS,
     "records(): line shapes cached now, stale ones included"},
    {"held", (PyCFunction)table_held, METH_O,
     "held(d): entries taken over from d, the feeds or shapes mirrored (else 0)"},
    {"keys", (PyCFunction)table_keys, METH_NOARGS,
     "keys(): every record's key object, stale ones included"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "statsd_ao.core._hotpath.Table",
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Line shapes -> feeds, over raw bytes, in front of an aggregator's feeds dict.",
    .tp_new = table_new,
    .tp_dealloc = (destructor)table_dealloc,
    .tp_methods = table_methods,
};

static PyObject *configure(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *ds[6];
    PyObject *module;
    if (!PyArg_ParseTuple(args, "(OOOOOO)O", &ds[0], &ds[1], &ds[2], &ds[3], &ds[4], &ds[5],
                          &module))
        return NULL;
    Slot *slots[6] = {&total, &values_slot, &weights_slot, &members_slot, &rated_acc, &rated_rate};
    Slot checked[6];
    for (int i = 0; i < 6; i++) /* all valid, or nothing changes */
        if (slot_of(ds[i], &checked[i], 0) < 0) return NULL;
    for (int i = 0; i < 6; i++) {
        PyTypeObject *old = slots[i]->type;
        Py_INCREF(checked[i].type);
        *slots[i] = checked[i];
        Py_XDECREF(old);
    }
    Py_XSETREF(limits, Py_NewRef(module));
    if (max_values_name == NULL) max_values_name = PyUnicode_InternFromString("MAX_SUMMARY_VALUES");
    if (max_members_name == NULL) max_members_name = PyUnicode_InternFromString("MAX_SET_MEMBERS");
    if (max_values_name == NULL || max_members_name == NULL) return NULL;
    Py_RETURN_NONE;
}


/* _same_key(key, name, tail): same_key() itself, for the tests (a wrong answer would only
   show in the loop on a collision of the index's 32-bit hashes). */
static PyObject *same_key_hook(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *key;
    const char *name, *tail;
    Py_ssize_t name_len, tail_len;
    if (!PyArg_ParseTuple(args, "Sy#y#", &key, &name, &name_len, &tail, &tail_len)) return NULL;
    return PyBool_FromLong(same_key(key, name, (size_t)name_len, tail, (size_t)tail_len));
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure((the slot descriptors), the limits' module)"},
    {"_same_key", same_key_hook, METH_VARARGS, "_same_key(key, name, tail): for the tests"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_hotpath", "Aggregator.ingest's loop in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__hotpath(void) {
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != sizeof seed)
        seed = (uint64_t)(uintptr_t)&seed ^ (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull;
    if (PyType_Ready(&TableType) < 0) return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) return NULL;
    if (PyModule_AddObjectRef(module, "Table", (PyObject *)&TableType) < 0 ||
        gauges_add_types(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
