/* The double reply in C: the optional accelerator behind protocol.build_reply.
 *
 * protocol.py holds the definition in pure Python and uses what is here when this
 * extension was built (and ECHO20_PURE_PYTHON is not set); the tests prove them
 * identical. build_reply and reverse_each_chunk take any object with the buffer protocol
 * and return bytes; SessionCore is the base of protocol.EchoSession, the per-batch rule.
 * Python C API only, no Cython or NumPy, in the manner of websockets' speedups.c.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* protocol.CHUNK_SIZE: the seed reads with read_bytes(20, partial=True). */
#define CHUNK_SIZE 20

/* dst[0:n] = src[0:n] reversed: the short last chunk of a batch. */
static inline void
reverse_into(char *restrict dst, const char *restrict src, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        dst[i] = src[n - 1 - i];
    }
}

#if defined(__GNUC__) || defined(__clang__)
#define BSWAP32 __builtin_bswap32
#define BSWAP64 __builtin_bswap64
#elif defined(_MSC_VER)
#include <stdlib.h>
#define BSWAP32 _byteswap_ulong
#define BSWAP64 _byteswap_uint64
#endif

/* One full chunk reversed. GCC 12 -O3 leaves reverse_into(dst, src, 20) a loop of 20 byte
 * moves; three byte swaps (8 + 8 + 4 bytes, the last one first) do it in about a tenth
 * of the instructions. memcpy keeps the unaligned loads and stores well defined. */
static inline void
reverse_chunk(char *restrict dst, const char *restrict src)
{
#ifdef BSWAP64
    uint64_t head, middle;
    uint32_t tail;
    memcpy(&head, src, 8);
    memcpy(&middle, src + 8, 8);
    memcpy(&tail, src + 16, 4);
    head = BSWAP64(head);
    middle = BSWAP64(middle);
    tail = BSWAP32(tail);
    memcpy(dst, &tail, 4);
    memcpy(dst + 4, &middle, 8);
    memcpy(dst + 12, &head, 8);
#else
    reverse_into(dst, src, CHUNK_SIZE);
#endif
}

/* The bytes of a bytes-like object: either a bytes object's own storage (the common case,
 * no buffer request) or a buffer view the caller must release with release_view(). */
typedef struct {
    Py_buffer view;
    int has_view;
    const char *data;
    Py_ssize_t size;
} input_bytes;

static int
get_input(PyObject *arg, input_bytes *in)
{
    if (PyBytes_CheckExact(arg)) {
        in->has_view = 0;
        in->data = PyBytes_AS_STRING(arg);
        in->size = PyBytes_GET_SIZE(arg);
        return 0;
    }
    /* PyBUF_SIMPLE asks for one contiguous run of bytes; a non-buffer argument gets
     * TypeError ("a bytes-like object is required"). */
    if (PyObject_GetBuffer(arg, &in->view, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    in->has_view = 1;
    in->data = in->view.buf;
    in->size = in->view.len;
    return 0;
}

static void
release_view(input_bytes *in)
{
    if (in->has_view) {
        PyBuffer_Release(&in->view);
        in->has_view = 0;
    }
}

PyDoc_STRVAR(build_reply_doc,
"build_reply(data, /)\n--\n\n"
"The reply to one batch: every 20-byte chunk (and the shorter rest), each followed by\n"
"its byte reversal. Takes any bytes-like object, returns bytes twice its length.");

/* A new bytes object: the reply to data[0:size]. */
static PyObject *
make_reply(const char *data, Py_ssize_t size)
{
    if (size > PY_SSIZE_T_MAX / 2) {
        return PyErr_NoMemory();
    }
    PyObject *reply = PyBytes_FromStringAndSize(NULL, 2 * size);
    if (reply == NULL) {
        return NULL;
    }
    char *out = PyBytes_AS_STRING(reply);
    const char *chunk = data;
    Py_ssize_t left = size;
    for (; left >= CHUNK_SIZE; left -= CHUNK_SIZE, chunk += CHUNK_SIZE) {
        memcpy(out, chunk, CHUNK_SIZE);
        reverse_chunk(out + CHUNK_SIZE, chunk);
        out += 2 * CHUNK_SIZE;
    }
    /* The shorter last chunk, if the size is not a multiple of 20. (Never memcpy from
     * an empty buffer: its pointer may be NULL.) */
    if (left > 0) {
        memcpy(out, chunk, left);
        reverse_into(out + left, chunk, left);
    }
    return reply;
}

static PyObject *
build_reply(PyObject *Py_UNUSED(module), PyObject *arg)
{
    input_bytes in;
    if (get_input(arg, &in) < 0) {
        return NULL;
    }
    PyObject *reply = make_reply(in.data, in.size);
    release_view(&in);
    return reply;
}

PyDoc_STRVAR(reverse_each_chunk_doc,
"reverse_each_chunk(data, /)\n--\n\n"
"Every 20-byte chunk of data (and the shorter rest) reversed in place: the second\n"
"halves of the reply, joined, which the client's reply check compares.");

static PyObject *
reverse_each_chunk(PyObject *Py_UNUSED(module), PyObject *arg)
{
    input_bytes in;
    if (get_input(arg, &in) < 0) {
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, in.size);
    if (result == NULL) {
        release_view(&in);
        return NULL;
    }
    char *out = PyBytes_AS_STRING(result);
    const char *chunk = in.data;
    Py_ssize_t left = in.size;
    for (; left >= CHUNK_SIZE; left -= CHUNK_SIZE, chunk += CHUNK_SIZE) {
        reverse_chunk(out, chunk);
        out += CHUNK_SIZE;
    }
    reverse_into(out, chunk, left);
    release_view(&in);
    return result;
}

/* --- SessionCore: protocol.SessionCoreInPython in C ------------------------------------
 *
 * The per-batch rule of protocol.EchoSession (the counters, the `over` rule, the reply),
 * which the fast path runs once per received batch: 233 ns a call at 200 B in Python,
 * 47 ns here. EchoSession subclasses this type when the extension runs;
 * protocol.SessionCoreInPython is the definition. */

/* protocol.MAX_BATCH_SIZE and protocol.CLOSE_CHUNK. */
#define MAX_BATCH_SIZE (64 * 1024)
#define CLOSE_CHUNK "over"
#define CLOSE_CHUNK_SIZE 4

#if PY_VERSION_HEX >= 0x030C0000
#define MEMBER_SSIZE Py_T_PYSSIZET
#define MEMBER_BOOL Py_T_BOOL
#else
#include <structmember.h>
#define MEMBER_SSIZE T_PYSSIZET
#define MEMBER_BOOL T_BOOL
#endif

typedef struct {
    PyObject_HEAD
    Py_ssize_t bytes_received;
    Py_ssize_t bytes_sent;
    char closing;
    char text;
} SessionCore;

static PyMemberDef session_members[] = {
    {"bytes_received", MEMBER_SSIZE, offsetof(SessionCore, bytes_received), 0,
     "Bytes taken in by answer(), up to the batch with `over`."},
    {"bytes_sent", MEMBER_SSIZE, offsetof(SessionCore, bytes_sent), 0,
     "Reply bytes answer() has returned."},
    {"closing", MEMBER_BOOL, offsetof(SessionCore, closing), 0,
     "The `over` chunk has been answered: nothing more is."},
    {"_text", MEMBER_BOOL, offsetof(SessionCore, text), 0,
     "Text mode: answer() hands every batch to _answer_other()."},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(session_answer_doc,
"answer(batch, /)\n--\n\n"
"The reply to one batch (b'' once closing), as protocol.SessionCoreInPython.answer.");

static PyObject *
session_answer(PyObject *op, PyObject *batch)
{
    SessionCore *self = (SessionCore *)op;
    if (self->closing) {
        return PyBytes_FromStringAndSize(NULL, 0);
    }
    input_bytes in;
    if (get_input(batch, &in) < 0) {
        return NULL;
    }
    Py_ssize_t size = in.size;
    if (size == 0) {
        release_view(&in);
        return PyBytes_FromStringAndSize(NULL, 0);
    }
    self->bytes_received += size;
    if (self->text || size > MAX_BATCH_SIZE) {
        /* Text mode and batches past 64 KiB: the Python code of EchoSession, rarely run. */
        release_view(&in);
        return PyObject_CallMethod(op, "_answer_other", "O", batch);
    }
    /* Every chunk but the last is 20 bytes, so only the last can be `over`. */
    int closes = size % CHUNK_SIZE == CLOSE_CHUNK_SIZE &&
                 memcmp(in.data + size - CLOSE_CHUNK_SIZE, CLOSE_CHUNK, CLOSE_CHUNK_SIZE) == 0;
    PyObject *reply = make_reply(in.data, size);
    release_view(&in);
    if (reply == NULL) {
        return NULL;
    }
    self->bytes_sent += 2 * size;
    if (closes) {
        self->closing = 1;
    }
    return reply;
}

static PyMethodDef session_methods[] = {
    {"answer", session_answer, METH_O, session_answer_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(session_doc,
"The per-batch state and rule of protocol.EchoSession, in C. Subclass it; a subclass\n"
"defines _answer_other(batch) for text mode and batches over 64 KiB.");

static PyType_Slot session_slots[] = {
    {Py_tp_doc, (void *)session_doc},
    {Py_tp_members, session_members},
    {Py_tp_methods, session_methods},
    {0, NULL},
};

static PyType_Spec session_spec = {
    .name = "echo20.speedups.SessionCore",
    .basicsize = sizeof(SessionCore),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = session_slots,
};

static int
speedups_exec(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &session_spec, NULL);
    if (type == NULL) {
        return -1;
    }
    int result = PyModule_AddObjectRef(module, "SessionCore", type);
    Py_DECREF(type);
    return result;
}

static PyMethodDef speedups_methods[] = {
    {"build_reply", build_reply, METH_O, build_reply_doc},
    {"reverse_each_chunk", reverse_each_chunk, METH_O, reverse_each_chunk_doc},
    {NULL, NULL, 0, NULL},
};

/* Multi-phase initialisation with no module state (the type is made per module object):
 * safe in sub-interpreters and, as nothing here is shared, without the GIL on
 * free-threaded builds; a session, like the connection it belongs to, is one thread's. */
static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "echo20.speedups",
    .m_doc = "The double reply in C: the optional accelerator behind protocol.build_reply\n"
             "and protocol.EchoSession.",
    .m_size = 0,
    .m_methods = speedups_methods,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit_speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
