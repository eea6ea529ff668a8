/*
 * Prototype of the hot path's two inner loops in C, for bench/candidates/compiled.py.
 * Not part of pmta_pipe: it exists to measure what a compiled extension would gain.
 *
 * split_identify(records, width, time_logged, known, extras) -> (columns, ids, slow)
 *     Splits each record (bytes, as framing cuts them) into fields with the rules of
 *     Python's csv reader (excel dialect), and computes the record's identity as
 *     parse.py does: MD5 of type, timeLogged and every known field (absent: empty)
 *     joined by 0x1f, then, when other columns hold values, 0x1e and "name 0x1d value"
 *     of each, in name order, joined by 0x1f. Fields are hashed as the UTF-8 bytes
 *     they are in the record, which is what str.encode() gives back for valid UTF-8.
 *     columns: `width` lists of str (the fast records only); ids: hex digests;
 *     slow: indexes of the records left to the Python parser: header lines, blank
 *     records, a width other than the header's, a type other than the usual ones,
 *     quotes other than whole quoted fields, a line break outside quotes, invalid
 *     UTF-8, NUL, records of 1 MiB or more.
 *     known: for each of fields.KNOWN_FIELDS, its index in the row (== width: absent).
 *     extras: ((index, name as UTF-8 bytes), ...), sorted by name.
 *
 * render_columns(columns) -> bytes | None
 *     COPY text (FORMAT text, NULL '') of the rows the columns make, as
 *     load.render_copy writes it, UTF-8; None when a value holds a tab, a line
 *     break, a carriage return or a backslash (the caller then writes CSV).
 *
 * Build: cc -O2 -shared -fPIC -I<python include> _fastpath.c -o _fastpath<EXT_SUFFIX> -lm
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* ---- MD5 (RFC 1321) ---------------------------------------------------------- */
typedef struct {
    uint32_t h[4];
    uint64_t len;
    unsigned char buf[64];
    size_t n;
} md5_ctx;

static uint32_t K[64];
static const unsigned char S[64] = {
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
    5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20,
    4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
    6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21};

#define ROTL(x, c) (((x) << (c)) | ((x) >> (32 - (c))))

static void md5_init(md5_ctx *c) {
    c->h[0] = 0x67452301u;
    c->h[1] = 0xefcdab89u;
    c->h[2] = 0x98badcfeu;
    c->h[3] = 0x10325476u;
    c->len = 0;
    c->n = 0;
}

#define STEP(f, a, b, c, d, m, i) \
    a += f(b, c, d) + (m) + K[i];       \
    a = ROTL(a, S[i]) + b;
#define F1(x, y, z) (z ^ (x & (y ^ z)))
#define F2(x, y, z) F1(z, x, y)
#define F3(x, y, z) (x ^ y ^ z)
#define F4(x, y, z) (y ^ (x | ~z))

static void md5_block(md5_ctx *c, const unsigned char *p) {
    uint32_t M[16];
    memcpy(M, p, 64); /* x86-64 and aarch64 are little-endian, as MD5's words */
    uint32_t a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3];
    for (int i = 0; i < 16; i += 4) {
        STEP(F1, a, b, cc, d, M[i], i)
        STEP(F1, d, a, b, cc, M[i + 1], i + 1)
        STEP(F1, cc, d, a, b, M[i + 2], i + 2)
        STEP(F1, b, cc, d, a, M[i + 3], i + 3)
    }
    for (int i = 16; i < 32; i += 4) {
        STEP(F2, a, b, cc, d, M[(5 * i + 1) & 15], i)
        STEP(F2, d, a, b, cc, M[(5 * i + 6) & 15], i + 1)
        STEP(F2, cc, d, a, b, M[(5 * i + 11) & 15], i + 2)
        STEP(F2, b, cc, d, a, M[(5 * i + 16) & 15], i + 3)
    }
    for (int i = 32; i < 48; i += 4) {
        STEP(F3, a, b, cc, d, M[(3 * i + 5) & 15], i)
        STEP(F3, d, a, b, cc, M[(3 * i + 8) & 15], i + 1)
        STEP(F3, cc, d, a, b, M[(3 * i + 11) & 15], i + 2)
        STEP(F3, b, cc, d, a, M[(3 * i + 14) & 15], i + 3)
    }
    for (int i = 48; i < 64; i += 4) {
        STEP(F4, a, b, cc, d, M[(7 * i) & 15], i)
        STEP(F4, d, a, b, cc, M[(7 * i + 7) & 15], i + 1)
        STEP(F4, cc, d, a, b, M[(7 * i + 14) & 15], i + 2)
        STEP(F4, b, cc, d, a, M[(7 * i + 21) & 15], i + 3)
    }
    c->h[0] += a;
    c->h[1] += b;
    c->h[2] += cc;
    c->h[3] += d;
}

static void md5_update(md5_ctx *c, const unsigned char *p, size_t len) {
    c->len += len;
    if (c->n) {
        size_t take = 64 - c->n < len ? 64 - c->n : len;
        memcpy(c->buf + c->n, p, take);
        c->n += take;
        p += take;
        len -= take;
        if (c->n < 64) return;
        md5_block(c, c->buf);
        c->n = 0;
    }
    while (len >= 64) {
        md5_block(c, p);
        p += 64;
        len -= 64;
    }
    memcpy(c->buf, p, len);
    c->n = len;
}

static PyObject *md5_hex(md5_ctx *c) {
    uint64_t bits = c->len * 8;
    unsigned char pad = 0x80, zero = 0, tail[8];
    md5_update(c, &pad, 1);
    while (c->n != 56) md5_update(c, &zero, 1);
    for (int i = 0; i < 8; i++) tail[i] = (unsigned char)(bits >> (8 * i));
    md5_update(c, tail, 8);
    PyObject *s = PyUnicode_New(32, 127);
    if (!s) return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(s);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        unsigned char b = (unsigned char)(c->h[i / 4] >> (8 * (i % 4)));
        out[2 * i] = hex[b >> 4];
        out[2 * i + 1] = hex[b & 15];
    }
    return s;
}

/* ---- CSV splitting ------------------------------------------------------------ */
#define MAX_RECORD (1 << 20)

typedef struct {
    Py_ssize_t start, len;
    int ascii;
} span;

/* Split rec[0:len] into at most `width` fields written to `out` (unquoted, into buf).
 * Returns the number of fields, or -1 for a record left to the Python parser. */
static Py_ssize_t split_record(const unsigned char *rec, Py_ssize_t len, unsigned char *buf,
                               span *fields, Py_ssize_t width) {
    if (len && rec[len - 1] == '\r') len--; /* the CR of a CRLF line break */
    if (!len) return -1;
    Py_ssize_t i = 0, o = 0, nf = 0;
    for (;;) {
        if (nf == width) return -1; /* more fields than the header */
        span *f = &fields[nf++];
        f->start = o;
        int ascii = 1;
        if (i < len && rec[i] == '"') {
            i++;
            for (;;) {
                if (i >= len) return -1; /* a quoted field left open */
                unsigned char c = rec[i++];
                if (c == '"') {
                    if (i < len && rec[i] == '"') {
                        buf[o++] = '"';
                        i++;
                        continue;
                    }
                    break;
                }
                if (!c) return -1;
                ascii &= c < 0x80;
                buf[o++] = c;
            }
            if (i < len && rec[i] != ',') return -1; /* text after a closing quote */
        } else {
            while (i < len) {
                unsigned char c = rec[i];
                if (c == ',') break;
                if (c == '\r' || c == '\n' || !c) return -1;
                ascii &= c < 0x80;
                buf[o++] = c;
                i++;
            }
        }
        f->len = o - f->start;
        f->ascii = ascii;
        if (i >= len) return nf;
        i++; /* the comma */
        if (i >= len) { /* a trailing comma: one more empty field */
            if (nf == width) return -1;
            fields[nf].start = o;
            fields[nf].len = 0;
            fields[nf].ascii = 1;
            return nf + 1;
        }
    }
}

static int usual_type(const unsigned char *p, Py_ssize_t n) {
    if (n == 1) return p[0] == 'd' || p[0] == 'b' || p[0] == 't' || p[0] == 'r' || p[0] == 'f';
    if (n == 2)
        return (p[0] == 't' && p[1] == 'q') ||
               (p[0] == 'r' && (p[1] == 'b' || p[1] == 's'));
    return 0;
}

static PyObject *field_str(const unsigned char *buf, const span *f) {
    if (f->ascii) {
        PyObject *s = PyUnicode_New(f->len, 127);
        if (s) memcpy(PyUnicode_1BYTE_DATA(s), buf + f->start, f->len);
        return s;
    }
    return PyUnicode_DecodeUTF8((const char *)buf + f->start, f->len, NULL);
}

static PyObject *split_identify(PyObject *self, PyObject *args) {
    PyObject *records, *known_t, *extras_t;
    Py_ssize_t width, time_logged;
    if (!PyArg_ParseTuple(args, "O!nnO!O!", &PyList_Type, &records, &width, &time_logged,
                          &PyTuple_Type, &known_t, &PyTuple_Type, &extras_t))
        return NULL;
    Py_ssize_t nk = PyTuple_GET_SIZE(known_t), ne = PyTuple_GET_SIZE(extras_t);
    Py_ssize_t *known = PyMem_Malloc(sizeof(Py_ssize_t) * (nk + 1));
    Py_ssize_t *ex_index = PyMem_Malloc(sizeof(Py_ssize_t) * (ne + 1));
    const char **ex_name = PyMem_Malloc(sizeof(char *) * (ne + 1));
    Py_ssize_t *ex_len = PyMem_Malloc(sizeof(Py_ssize_t) * (ne + 1));
    span *fields = PyMem_Malloc(sizeof(span) * (width + 1));
    unsigned char *buf = NULL, *ident = NULL;
    Py_ssize_t bufsize = 0, names = 0;
    PyObject *columns = NULL, *ids = NULL, *slow = NULL, *result = NULL;
    if (!known || !ex_index || !ex_name || !ex_len || !fields) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < nk; k++) known[k] = PyLong_AsSsize_t(PyTuple_GET_ITEM(known_t, k));
    for (Py_ssize_t k = 0; k < ne; k++) {
        PyObject *pair = PyTuple_GET_ITEM(extras_t, k);
        ex_index[k] = PyLong_AsSsize_t(PyTuple_GET_ITEM(pair, 0));
        char *name;
        if (PyBytes_AsStringAndSize(PyTuple_GET_ITEM(pair, 1), &name, &ex_len[k]) < 0) goto done;
        ex_name[k] = name;
        names += ex_len[k] + 2;
    }
    if (PyErr_Occurred()) goto done;
    columns = PyList_New(width);
    ids = PyList_New(0);
    slow = PyList_New(0);
    if (!columns || !ids || !slow) goto done;
    for (Py_ssize_t c = 0; c < width; c++) {
        PyObject *col = PyList_New(0);
        if (!col) goto done;
        PyList_SET_ITEM(columns, c, col);
    }
    Py_ssize_t nrec = PyList_GET_SIZE(records);
    for (Py_ssize_t r = 0; r < nrec; r++) {
        PyObject *rec = PyList_GET_ITEM(records, r);
        if (!PyBytes_Check(rec)) {
            PyErr_SetString(PyExc_TypeError, "records must be bytes");
            goto done;
        }
        Py_ssize_t len = PyBytes_GET_SIZE(rec);
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(rec);
        if (len >= bufsize) {
            bufsize = len * 2 + 64;
            PyMem_Free(buf);
            PyMem_Free(ident);
            buf = PyMem_Malloc(bufsize);
            ident = PyMem_Malloc(bufsize + nk + names + 8);
            if (!buf || !ident) {
                PyErr_NoMemory();
                goto done;
            }
        }
        Py_ssize_t nf = len >= MAX_RECORD ? -1 : split_record(p, len, buf, fields, width);
        if (nf != width || !usual_type(buf + fields[0].start, fields[0].len)) {
            PyObject *i = PyLong_FromSsize_t(r);
            if (!i || PyList_Append(slow, i) < 0) {
                Py_XDECREF(i);
                goto done;
            }
            Py_DECREF(i);
            continue;
        }
        /* the strings first: invalid UTF-8 leaves the record to Python, before any append */
        PyObject *strs[width > 0 ? width : 1];
        Py_ssize_t made = 0;
        for (; made < width; made++) {
            /* the same value as the column's previous one (common: types, hosts, IPs)
             * is the same str object, as a cache would give it */
            PyObject *col = PyList_GET_ITEM(columns, made);
            Py_ssize_t ncol = PyList_GET_SIZE(col);
            if (ncol) {
                PyObject *prev = PyList_GET_ITEM(col, ncol - 1);
                Py_ssize_t plen;
                const char *pdata = PyUnicode_AsUTF8AndSize(prev, &plen);
                if (pdata && plen == fields[made].len &&
                    !memcmp(pdata, buf + fields[made].start, plen)) {
                    Py_INCREF(prev);
                    strs[made] = prev;
                    continue;
                }
            }
            strs[made] = field_str(buf, &fields[made]);
            if (!strs[made]) break;
        }
        if (made < width) {
            for (Py_ssize_t c = 0; c < made; c++) Py_DECREF(strs[c]);
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) goto done;
            PyErr_Clear();
            PyObject *i = PyLong_FromSsize_t(r);
            if (!i || PyList_Append(slow, i) < 0) {
                Py_XDECREF(i);
                goto done;
            }
            Py_DECREF(i);
            continue;
        }
        /* the identity text in one buffer (it is never longer than the record plus
         * the separators and the extras' names), then one MD5 pass over it */
        unsigned char *q = ident;
#define PUT(src, n)           \
    do {                      \
        memcpy(q, (src), (n)); \
        q += (n);             \
    } while (0)
        PUT(buf + fields[0].start, fields[0].len);
        *q++ = 0x1f;
        if (time_logged < width) PUT(buf + fields[time_logged].start, fields[time_logged].len);
        for (Py_ssize_t k = 0; k < nk; k++) {
            *q++ = 0x1f;
            if (known[k] < width) PUT(buf + fields[known[k]].start, fields[known[k]].len);
        }
        int first_extra = 1;
        for (Py_ssize_t k = 0; k < ne; k++) {
            const span *f = &fields[ex_index[k]];
            if (!f->len) continue;
            *q++ = first_extra ? 0x1e : 0x1f;
            first_extra = 0;
            PUT(ex_name[k], ex_len[k]);
            *q++ = 0x1d;
            PUT(buf + f->start, f->len);
        }
#undef PUT
        md5_ctx m;
        md5_init(&m);
        md5_update(&m, ident, q - ident);
        PyObject *id = md5_hex(&m);
        if (!id || PyList_Append(ids, id) < 0) {
            Py_XDECREF(id);
            for (Py_ssize_t c = 0; c < width; c++) Py_DECREF(strs[c]);
            goto done;
        }
        Py_DECREF(id);
        for (Py_ssize_t c = 0; c < width; c++) {
            int bad = PyList_Append(PyList_GET_ITEM(columns, c), strs[c]);
            Py_DECREF(strs[c]);
            if (bad < 0) goto done;
        }
    }
    result = PyTuple_Pack(3, columns, ids, slow);
done:
    PyMem_Free(known);
    PyMem_Free(ex_index);
    PyMem_Free(ex_name);
    PyMem_Free(ex_len);
    PyMem_Free(fields);
    PyMem_Free(buf);
    PyMem_Free(ident);
    Py_XDECREF(columns);
    Py_XDECREF(ids);
    Py_XDECREF(slow);
    return result;
}

/* ---- COPY text ---------------------------------------------------------------- */
static unsigned char unsafe[256]; /* tab, line feed, carriage return, backslash */
static PyObject *render_columns(PyObject *self, PyObject *arg) {
    PyObject *cols = PySequence_Fast(arg, "columns must be a sequence");
    if (!cols) return NULL;
    Py_ssize_t nc = PySequence_Fast_GET_SIZE(cols), n = -1;
    PyObject **fast = PyMem_Calloc(nc ? nc : 1, sizeof(PyObject *));
    PyObject *result = NULL;
    char *out = NULL;
    if (!fast) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t c = 0; c < nc; c++) {
        fast[c] = PySequence_Fast(PySequence_Fast_GET_ITEM(cols, c), "a column must be a sequence");
        if (!fast[c]) goto done;
        Py_ssize_t len = PySequence_Fast_GET_SIZE(fast[c]);
        if (n >= 0 && len != n) {
            PyErr_SetString(PyExc_ValueError, "columns of different lengths");
            goto done;
        }
        n = len;
    }
    if (n <= 0 || !nc) {
        result = PyBytes_FromStringAndSize("", 0);
        goto done;
    }
    Py_ssize_t cap = n * nc * 16 + 64, o = 0;
    out = PyMem_Malloc(cap);
    if (!out) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < n; j++) {
        for (Py_ssize_t c = 0; c < nc; c++) {
            PyObject *v = PySequence_Fast_ITEMS(fast[c])[j];
            Py_ssize_t len;
            const char *s = PyUnicode_AsUTF8AndSize(v, &len);
            if (!s) goto done;
            if (o + len + 2 > cap) {
                cap = (o + len + 2) * 2;
                char *grown = PyMem_Realloc(out, cap);
                if (!grown) {
                    PyErr_NoMemory();
                    goto done;
                }
                out = grown;
            }
            for (Py_ssize_t i = 0; i < len; i++)
                if (unsafe[(unsigned char)s[i]]) {
                    Py_INCREF(Py_None);
                    result = Py_None;
                    goto done;
                }
            memcpy(out + o, s, len);
            o += len;
            out[o++] = c + 1 < nc ? '\t' : '\n';
        }
    }
    result = PyBytes_FromStringAndSize(out, o);
done:
    if (fast)
        for (Py_ssize_t c = 0; c < nc; c++) Py_XDECREF(fast[c]);
    PyMem_Free(fast);
    PyMem_Free(out);
    Py_DECREF(cols);
    return result;
}

static PyMethodDef methods[] = {
    {"split_identify", split_identify, METH_VARARGS, "Split records into columns and identities."},
    {"render_columns", render_columns, METH_O, "COPY text of columns, or None."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastpath", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void) {
    unsafe['\t'] = unsafe['\n'] = unsafe['\r'] = unsafe['\\'] = 1;
    for (int i = 0; i < 64; i++) K[i] = (uint32_t)floor(fabs(sin((double)(i + 1))) * 4294967296.0);
    return PyModule_Create(&module);
}
