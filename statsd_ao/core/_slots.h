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
} Slot;

/* Fill ``slot`` from an object member descriptor; -1 with TypeError for anything else. */
static inline int slot_of(PyObject *descriptor, Slot *slot) {
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

#endif
