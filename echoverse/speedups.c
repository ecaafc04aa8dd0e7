/* The double reply in C: the optional accelerator behind protocol.build_reply.
 *
 * protocol.py holds the definition in pure Python and uses these two functions when this
 * extension was built (and ECHOVERSE_PURE_PYTHON is not set); the tests prove them
 * byte-identical. Both take any object with the buffer protocol and return bytes.
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

static PyObject *
build_reply(PyObject *Py_UNUSED(module), PyObject *arg)
{
    input_bytes in;
    if (get_input(arg, &in) < 0) {
        return NULL;
    }
    if (in.size > PY_SSIZE_T_MAX / 2) {
        release_view(&in);
        return PyErr_NoMemory();
    }
    PyObject *reply = PyBytes_FromStringAndSize(NULL, 2 * in.size);
    if (reply == NULL) {
        release_view(&in);
        return NULL;
    }
    char *out = PyBytes_AS_STRING(reply);
    const char *chunk = in.data;
    Py_ssize_t left = in.size;
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

static PyMethodDef speedups_methods[] = {
    {"build_reply", build_reply, METH_O, build_reply_doc},
    {"reverse_each_chunk", reverse_each_chunk, METH_O, reverse_each_chunk_doc},
    {NULL, NULL, 0, NULL},
};

/* Multi-phase initialisation with no module state: safe in sub-interpreters and, as the
 * functions touch nothing shared, without the GIL on free-threaded builds. */
static PyModuleDef_Slot speedups_slots[] = {
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
    .m_name = "echoverse.speedups",
    .m_doc = "The double reply in C: the optional accelerator behind protocol.build_reply.",
    .m_size = 0,
    .m_methods = speedups_methods,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit_speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
