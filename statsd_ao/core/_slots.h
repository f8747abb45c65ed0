/* Where an accumulator keeps a piece of its state: a __slots__ member, found from its
   member descriptor once at configure() time and then read directly by offset.  Shared by
   the C loop (_hotpath.c) and the C conversion (_convert.c). */
#ifndef STATSD_AO_SLOTS_H
#define STATSD_AO_SLOTS_H

#include <Python.h>
#include <structmember.h>

typedef struct {
    PyTypeObject *type; /* the slot is at ``offset`` only in exact instances of ``type`` */
    Py_ssize_t offset;
    int is_double; /* a T_DOUBLE member (the C Gauge's value), not an object */
} Slot;

/* Fill ``slot`` from an object member descriptor (or, with ``doubles``, a double member);
   -1 with TypeError for anything else. */
static inline int slot_of(PyObject *descriptor, Slot *slot, int doubles) {
    if (Py_TYPE(descriptor) != &PyMemberDescr_Type) {
        PyErr_SetString(PyExc_TypeError, "configure() wants member descriptors");
        return -1;
    }
    PyMemberDescrObject *member = (PyMemberDescrObject *)descriptor;
    int code = member->d_member->type;
    slot->is_double = code == T_DOUBLE && doubles;
    if (code != T_OBJECT_EX && code != T_OBJECT && !slot->is_double) {
        PyErr_SetString(PyExc_TypeError, "configure() wants object members");
        return -1;
    }
    slot->type = PyDescr_TYPE(descriptor);
    slot->offset = member->d_member->offset;
    return 0;
}

#endif
