/*
 * The parser's hot path in C: ordinary accounting records to COPY lines.
 *
 * parse(records, start, plan, source) -> (stop, lines, ids, times, raws, days, slow)
 *
 * Reads records[start:] (bytes, whole records as pmta_pipe.framing cuts them) with
 * the header mapping `plan` (built by pmta_pipe/fastpath.py from parse.Header) and,
 * for every *ordinary* record, computes what pmta_pipe/parse.py computes for it:
 *
 *   - the fields, by the rules of Python's csv reader (excel dialect) as parse.py
 *     runs it: a field that starts with a quote is quoted ("" is one quote inside);
 *     a quote elsewhere is a character; the CR of a CRLF line break is dropped;
 *     a row shorter than the header is padded with empty fields;
 *   - record_id: MD5 of type, timeLogged and every known field (raw text, absent:
 *     empty) joined by 0x1f, then, when other columns hold values, 0x1e and
 *     "name 0x1d value" of each in name order joined by 0x1f (parse.py's identity);
 *   - time_logged as ISO text with a colon in the offset, and its UTC day;
 *   - the typed known fields: time (PowerMTA's form), int, bigint, IPv4 inet;
 *   - rcpt_domain, and `extra` as json.dumps(..., ensure_ascii=False) writes it;
 *   - the row's COPY line in the loader's text format (columns of
 *     fields.EVENT_COLUMNS joined by tabs, a line feed at the end).
 *
 * Every other record is *slow*: its index goes to `slow` and parse.py's pure-Python
 * parser reads it (the reference). Slow are: blank records, header lines, a width
 * above the header's, a type other than d b t tq r f rb rs, an unterminated quote,
 * text after a closing quote, a CR or LF outside quotes, NUL, invalid UTF-8, records
 * of 1 MiB or more, a timeLogged missing or in another form, typed values that are
 * empty-or-canonical neither (other time forms, IPv6, signs, leading zeros, spaces),
 * a value needing an escape in COPY text or in JSON, a non-ASCII domain. A slow
 * record whose first field might read "type" (a header line: the mapping changes
 * after it) ends the call: `stop` is the index after it, else len(records).
 *
 * Two passes: the scan (split, checks, MD5, COPY lines into C buffers) runs without
 * the GIL, on a list of the records this call holds, so the loader thread sends its
 * statements meanwhile; then, with the GIL, the output objects. Invalid UTF-8 is
 * found in the second pass (the decoder's), so a record found slow there that may be a
 * header line ends the call there, and what the scan read after it is dropped.
 *
 * lines, ids, times, raws: one str per ordinary record, in order (times: the same
 * str object while the text repeats). days: set of the UTC days' proleptic
 * ordinals (date.toordinal()). slow: list of indexes into records.
 *
 * plan = (width, time_logged, known, kinds, rcpt, ident_extras, json_extras, extras_ok)
 *   width: fields in the header; time_logged: its index (== width: absent);
 *   known: tuple of the index of each of fields.KNOWN_FIELDS (== width: absent);
 *   kinds: bytes, one per known field: 's' text, 't' time, 'i' int, 'b' bigint,
 *          'n' inet; rcpt: the index into known of rcpt;
 *   ident_extras: ((index, name as UTF-8), ...) sorted by name, for the identity;
 *   json_extras: ((index, '"name": ' as UTF-8), ...) in header order, for extra;
 *   extras_ok: False when a record with values in other columns must be slow.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---- MD5 (RFC 1321) ---------------------------------------------------------- */
typedef struct {
    uint32_t h[4];
    uint64_t len;
    unsigned char buf[64];
    size_t n;
} md5_ctx;

static const uint32_t K[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613,
    0xfd469501, 0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193,
    0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d,
    0x02441453, 0xd8a1e681, 0xe7d3fbc8, 0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed,
    0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122,
    0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa,
    0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, 0xf4292244,
    0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb,
    0xeb86d391};
static const unsigned char S[64] = {
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
    5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20,
    4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
    6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21};

#define ROTL(x, c) (((x) << (c)) | ((x) >> (32 - (c))))
#define STEP(f, a, b, c, d, m, i) \
    a += f(b, c, d) + (m) + K[i]; \
    a = ROTL(a, S[i]) + b;
#define F1(x, y, z) (z ^ (x & (y ^ z)))
#define F2(x, y, z) F1(z, x, y)
#define F3(x, y, z) (x ^ y ^ z)
#define F4(x, y, z) (y ^ (x | ~z))

static void md5_init(md5_ctx *c) {
    c->h[0] = 0x67452301u;
    c->h[1] = 0xefcdab89u;
    c->h[2] = 0x98badcfeu;
    c->h[3] = 0x10325476u;
    c->len = 0;
    c->n = 0;
}

static void md5_block(md5_ctx *c, const unsigned char *p) {
    uint32_t M[16];
    for (int i = 0; i < 16; i++)
        M[i] = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
               (uint32_t)p[4 * i + 3] << 24;
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

/* the hex digest, 32 characters, into out */
static void md5_hex(md5_ctx *c, char *out) {
    uint64_t bits = c->len * 8;
    unsigned char pad[72] = {0x80};
    size_t padlen = c->n < 56 ? 56 - c->n : 120 - c->n;
    md5_update(c, pad, padlen);
    unsigned char tail[8];
    for (int i = 0; i < 8; i++) tail[i] = (unsigned char)(bits >> (8 * i));
    md5_update(c, tail, 8);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        unsigned char b = (unsigned char)(c->h[i / 4] >> (8 * (i % 4)));
        out[2 * i] = hex[b >> 4];
        out[2 * i + 1] = hex[b & 15];
    }
}

/* ---- a growable byte buffer --------------------------------------------------- */
/* The scan runs without the GIL: its buffers come from PyMem_Raw*, and running out of
 * memory is returned as -1 (the caller raises MemoryError once it holds the GIL). */
typedef struct {
    unsigned char *p;
    Py_ssize_t n, cap;
} bytebuf;

static int buf_reserve(bytebuf *b, Py_ssize_t more) {
    if (b->n + more <= b->cap) return 0;
    Py_ssize_t cap = (b->n + more) * 2 + 256;
    unsigned char *p = PyMem_RawRealloc(b->p, (size_t)cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline void buf_put(bytebuf *b, const void *src, Py_ssize_t n) {
    memcpy(b->p + b->n, src, (size_t)n);
    b->n += n;
}

/* ---- CSV splitting ------------------------------------------------------------ */
#define MAX_RECORD (1 << 20)

typedef struct {
    Py_ssize_t start, len;
} span;

/* Split rec[0:len] into at most `width` fields (unquoted values copied into buf).
 * Returns the number of fields, or -1 for a record left to Python. *ascii is cleared
 * when a byte above 0x7f is seen. */
static Py_ssize_t split_record(const unsigned char *rec, Py_ssize_t len, unsigned char *buf,
                               span *fields, Py_ssize_t width, int *ascii) {
    if (len && rec[len - 1] == '\r') len--; /* the CR of a CRLF line break */
    if (!len) return -1;
    Py_ssize_t i = 0, o = 0, nf = 0;
    int high = 0;
    for (;;) {
        if (nf == width) return -1; /* more fields than the header */
        span *f = &fields[nf++];
        f->start = o;
        if (rec[i] == '"') {
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
                high |= c;
                buf[o++] = c;
            }
            if (i < len && rec[i] != ',') return -1; /* text after a closing quote */
        } else {
            while (i < len) {
                unsigned char c = rec[i];
                if (c == ',') break;
                if (c == '\r' || c == '\n' || !c) return -1;
                high |= c;
                buf[o++] = c;
                i++;
            }
        }
        f->len = o - f->start;
        if (i >= len) break;
        i++; /* the comma */
        if (i >= len) { /* a trailing comma: one more empty field */
            if (nf == width) return -1;
            fields[nf].start = o;
            fields[nf].len = 0;
            nf++;
            break;
        }
    }
    if (high & 0x80) *ascii = 0;
    return nf;
}

/* Whether a record's first field might read "type" to the csv reader (a header
 * line): the ASCII letters before the first comma, lowered, spell "type". */
static int maybe_header(const unsigned char *rec, Py_ssize_t len) {
    char seen[5];
    int n = 0;
    for (Py_ssize_t i = 0; i < len && rec[i] != ','; i++) {
        unsigned char c = rec[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
            if (n == 4) return 0;
            seen[n++] = (char)(c | 0x20);
        }
    }
    return n == 4 && !memcmp(seen, "type", 4);
}

static int usual_type(const unsigned char *p, Py_ssize_t n) {
    if (n == 1) return p[0] == 'd' || p[0] == 'b' || p[0] == 't' || p[0] == 'r' || p[0] == 'f';
    if (n == 2)
        return (p[0] == 't' && p[1] == 'q') || (p[0] == 'r' && (p[1] == 'b' || p[1] == 's'));
    return 0;
}

/* ---- typed values -------------------------------------------------------------- */
static inline int dig(unsigned char c) { return c >= '0' && c <= '9'; }
static inline int num2(const unsigned char *p) { return (p[0] - '0') * 10 + (p[1] - '0'); }

static int leap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

static int month_days(int y, int m) {
    static const int d[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && leap(y) ? 29 : d[m - 1];
}

/* proleptic Gregorian ordinal, 0001-01-01 = 1 (datetime.date.toordinal) */
static long ordinal(int y, int m, int d) {
    long yy = y - 1;
    long days = yy * 365 + yy / 4 - yy / 100 + yy / 400;
    for (int k = 1; k < m; k++) days += month_days(y, k);
    return days + d;
}

/* PowerMTA's timestamp, YYYY-MM-DD[ T]HH:MM:SS(+|-)HH[:]MM and nothing else (values.py's
 * _CANON and _canonical). Writes the 25 characters of its ISO text into out and its UTC
 * day's ordinal into *day; returns 0, or -1 when it is not that form or not a date. */
static int canonical_time(const unsigned char *s, Py_ssize_t n, char *out, long *day) {
    if (n != 24 && n != 25) return -1;
    for (int i = 0; i < 4; i++)
        if (!dig(s[i])) return -1;
    if (s[4] != '-' || !dig(s[5]) || !dig(s[6]) || s[7] != '-' || !dig(s[8]) || !dig(s[9]))
        return -1;
    if (s[10] != ' ' && s[10] != 'T') return -1;
    if (!dig(s[11]) || !dig(s[12]) || s[13] != ':' || !dig(s[14]) || !dig(s[15]) ||
        s[16] != ':' || !dig(s[17]) || !dig(s[18]))
        return -1;
    if (s[19] != '+' && s[19] != '-') return -1;
    if (!dig(s[20]) || !dig(s[21])) return -1;
    const unsigned char *om = s + 22;
    if (n == 25) {
        if (s[22] != ':') return -1;
        om = s + 23;
    }
    if (!dig(om[0]) || !dig(om[1])) return -1;
    int y = num2(s) * 100 + num2(s + 2), mo = num2(s + 5), d = num2(s + 8);
    int hh = num2(s + 11), mi = num2(s + 14), ss = num2(s + 17);
    int oh = num2(s + 20), omi = num2(om);
    if (hh > 23 || mi > 59 || ss > 59 || oh > 23 || omi > 59) return -1;
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > month_days(y, mo)) return -1;
    int offset = oh * 60 + omi;
    if (s[19] == '-') offset = -offset;
    int minute = hh * 60 + mi - offset;
    long ord = ordinal(y, mo, d);
    if (minute < 0) ord -= 1;
    else if (minute >= 1440) ord += 1;
    if (ord < 1 || ord > 3652059) return -1; /* before 0001-01-01 or after 9999-12-31 */
    memcpy(out, s, 10);
    out[10] = 'T';
    memcpy(out + 11, s + 11, 8);
    out[19] = offset ? (char)s[19] : '+';
    out[20] = (char)s[20];
    out[21] = (char)s[21];
    out[22] = ':';
    out[23] = (char)om[0];
    out[24] = (char)om[1];
    *day = ord;
    return 0;
}

/* An integer as values.check_int gives it back unchanged: 0 or -?[1-9][0-9]*, within
 * the type. 0 when it is, -1 otherwise. */
static int canonical_int(const unsigned char *s, Py_ssize_t n, int big) {
    Py_ssize_t i = 0;
    int neg = 0;
    if (n && s[0] == '-') {
        neg = 1;
        i = 1;
    }
    if (i >= n) return -1;
    if (s[i] == '0') return n == 1 ? 0 : -1;
    if (n - i > 19) return -1;
    uint64_t v = 0;
    for (; i < n; i++) {
        if (!dig(s[i])) return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    uint64_t max = big ? (uint64_t)INT64_MAX : (uint64_t)INT32_MAX;
    return v <= max + (uint64_t)neg ? 0 : -1;
}

/* An IPv4 address as str(ipaddress.ip_address(...)) writes it. */
static int canonical_ipv4(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    for (int part = 0; part < 4; part++) {
        if (part) {
            if (i >= n || s[i] != '.') return -1;
            i++;
        }
        Py_ssize_t b = i;
        int v = 0;
        while (i < n && dig(s[i]) && i - b < 3) v = v * 10 + (s[i++] - '0');
        if (i == b || v > 255 || (s[b] == '0' && i - b > 1)) return -1;
    }
    return i == n ? 0 : -1;
}

/* ---- the batch ----------------------------------------------------------------- */
typedef struct {
    Py_ssize_t index;
    const char *name;
    Py_ssize_t len;
} extra_col;

typedef struct {
    Py_ssize_t width, time_logged, nk, rcpt, n_ident, n_json;
    int extras_ok, names_ascii;
    Py_ssize_t *known;
    const char *kinds;
    extra_col *ident, *json;
} plan_t;

static void plan_free(plan_t *p) {
    PyMem_Free(p->known);
    PyMem_Free(p->ident);
    PyMem_Free(p->json);
}

static int read_extras(PyObject *t, extra_col **out, Py_ssize_t *n, Py_ssize_t width) {
    if (!PyTuple_Check(t)) {
        PyErr_SetString(PyExc_TypeError, "extras must be a tuple");
        return -1;
    }
    *n = PyTuple_GET_SIZE(t);
    *out = PyMem_Calloc((size_t)(*n ? *n : 1), sizeof(extra_col));
    if (!*out) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < *n; k++) {
        PyObject *pair = PyTuple_GET_ITEM(t, k);
        char *name;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "an extra must be (index, name)");
            return -1;
        }
        (*out)[k].index = PyLong_AsSsize_t(PyTuple_GET_ITEM(pair, 0));
        if ((*out)[k].index == -1 && PyErr_Occurred()) return -1;
        if ((*out)[k].index < 1 || (*out)[k].index >= width) {
            PyErr_SetString(PyExc_ValueError, "an extra's index is outside the header");
            return -1;
        }
        if (PyBytes_AsStringAndSize(PyTuple_GET_ITEM(pair, 1), &name, &(*out)[k].len) < 0)
            return -1;
        (*out)[k].name = name;
    }
    return 0;
}

static int read_plan(PyObject *t, plan_t *p) {
    PyObject *known, *kinds, *ident, *json;
    memset(p, 0, sizeof(*p));
    if (!PyArg_ParseTuple(t, "nnO!SnO!O!p", &p->width, &p->time_logged, &PyTuple_Type, &known,
                          &kinds, &p->rcpt, &PyTuple_Type, &ident, &PyTuple_Type, &json,
                          &p->extras_ok))
        return -1;
    p->nk = PyTuple_GET_SIZE(known);
    if (p->width < 1 || p->time_logged < 1 || p->time_logged > p->width ||
        PyBytes_GET_SIZE(kinds) != p->nk || p->rcpt < 0 || p->rcpt >= p->nk) {
        PyErr_SetString(PyExc_ValueError, "an inconsistent plan");
        return -1;
    }
    p->kinds = PyBytes_AS_STRING(kinds);
    p->known = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(p->nk + 1));
    if (!p->known) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < p->nk; k++) {
        p->known[k] = PyLong_AsSsize_t(PyTuple_GET_ITEM(known, k));
        if (p->known[k] == -1 && PyErr_Occurred()) return -1;
        if (p->known[k] < 1 || p->known[k] > p->width) {
            PyErr_SetString(PyExc_ValueError, "a known field's index is outside the header");
            return -1;
        }
    }
    if (read_extras(ident, &p->ident, &p->n_ident, p->width) < 0) return -1;
    if (read_extras(json, &p->json, &p->n_json, p->width) < 0) return -1;
    p->names_ascii = 1;
    for (Py_ssize_t k = 0; k < p->n_json; k++)
        for (Py_ssize_t i = 0; i < p->json[k].len; i++)
            if ((unsigned char)p->json[k].name[i] & 0x80) p->names_ascii = 0;
    return 0;
}

static PyObject *make_str(const unsigned char *p, Py_ssize_t n, int ascii) {
    if (ascii) {
        PyObject *s = PyUnicode_New(n, 127);
        if (s) memcpy(PyUnicode_1BYTE_DATA(s), p, (size_t)n);
        return s;
    }
    return PyUnicode_DecodeUTF8((const char *)p, n, "strict");
}

static int append_new(PyObject *list, PyObject *item) {
    if (!item) return -1;
    int r = PyList_Append(list, item);
    Py_DECREF(item);
    return r;
}

static unsigned char copy_unsafe[256]; /* tab, line feed, carriage return, backslash */
static unsigned char json_unsafe[256]; /* quote, backslash, control characters */

static inline int any_in(const unsigned char *table, const unsigned char *p, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (table[p[i]]) return 1;
    return 0;
}

static inline int ascii_space(unsigned char c) {
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

enum { FAST = 0, SLOW = 1 };

typedef struct {
    bytebuf line, ident;
    unsigned char *buf;
    Py_ssize_t bufsize;
    span *fields;
} work_t;

/* One record into w->line (its COPY line) and *id_out, *time_out, *day_out;
 * FAST, SLOW, or -1 when memory ran out. Touches no Python object (runs without the GIL). */
static int one_record(const plan_t *pl, work_t *w, const unsigned char *rec, Py_ssize_t len,
                      const char *src, Py_ssize_t srclen, char *id_out, char *time_out,
                      long *day_out, int *ascii) {
    if (len >= MAX_RECORD) return SLOW;
    if (len + 1 > w->bufsize) {
        PyMem_RawFree(w->buf);
        w->bufsize = len * 2 + 64;
        w->buf = PyMem_RawMalloc((size_t)w->bufsize);
        if (!w->buf) {
            w->bufsize = 0;
            return -1;
        }
    }
    unsigned char *buf = w->buf;
    span *fields = w->fields;
    *ascii = 1;
    Py_ssize_t width = pl->width;
    Py_ssize_t nf = split_record(rec, len, buf, fields, width, ascii);
    if (nf < 0 || !usual_type(buf + fields[0].start, fields[0].len)) return SLOW;
    for (Py_ssize_t c = nf; c < width; c++) { /* padding; and index `width`: absent */
        fields[c].start = 0;
        fields[c].len = 0;
    }
    fields[width].start = 0;
    fields[width].len = 0;

    const span *tl = &fields[pl->time_logged];
    if (!tl->len || canonical_time(buf + tl->start, tl->len, time_out, day_out) < 0) return SLOW;

    /* extras: which hold values */
    int has_extra = 0;
    for (Py_ssize_t k = 0; k < pl->n_json; k++)
        if (fields[pl->json[k].index].len) {
            if (!pl->extras_ok) return SLOW;
            const span *f = &fields[pl->json[k].index];
            if (any_in(json_unsafe, buf + f->start, f->len)) return SLOW;
            has_extra = 1;
        }

    /* the COPY line: time_logged, record_id (filled below), record_type, source, ... */
    bytebuf *L = &w->line;
    L->n = 0;
    Py_ssize_t est = 2 * len + 3 * pl->nk + 128 + srclen;
    for (Py_ssize_t k = 0; k < pl->n_json; k++) est += pl->json[k].len + 6;
    if (buf_reserve(L, est) < 0) return -1;
    buf_put(L, time_out, 25);
    L->p[L->n++] = '\t';
    Py_ssize_t id_at = L->n;
    L->n += 32;
    L->p[L->n++] = '\t';
    buf_put(L, buf + fields[0].start, fields[0].len);
    L->p[L->n++] = '\t';
    buf_put(L, src, srclen);
    for (Py_ssize_t k = 0; k < pl->nk; k++) {
        L->p[L->n++] = '\t';
        const span *f = &fields[pl->known[k]];
        const unsigned char *v = buf + f->start;
        if (!f->len) continue;
        switch (pl->kinds[k]) {
        case 't': {
            long unused;
            if (canonical_time(v, f->len, (char *)L->p + L->n, &unused) < 0) return SLOW;
            L->n += 25;
            continue;
        }
        case 'i':
        case 'b':
            if (canonical_int(v, f->len, pl->kinds[k] == 'b') < 0) return SLOW;
            break;
        case 'n':
            if (canonical_ipv4(v, f->len) < 0) return SLOW;
            break;
        default:
            if (any_in(copy_unsafe, v, f->len)) return SLOW;
        }
        buf_put(L, v, f->len);
    }
    /* rcpt_domain: rcpt after its last '@', stripped, '>' stripped, lowered */
    L->p[L->n++] = '\t';
    {
        const span *f = &fields[pl->known[pl->rcpt]];
        const unsigned char *v = buf + f->start;
        Py_ssize_t at = -1;
        for (Py_ssize_t i = f->len - 1; i >= 0; i--)
            if (v[i] == '@') {
                at = i;
                break;
            }
        if (at >= 0) {
            Py_ssize_t a = at + 1, b = f->len;
            for (Py_ssize_t i = a; i < b; i++)
                if (v[i] & 0x80) return SLOW; /* Unicode spaces and case: Python's */
            while (a < b && ascii_space(v[a])) a++;
            while (b > a && ascii_space(v[b - 1])) b--;
            while (a < b && v[a] == '>') a++;
            while (b > a && v[b - 1] == '>') b--;
            for (Py_ssize_t i = a; i < b; i++) {
                unsigned char c = v[i];
                L->p[L->n++] = (unsigned char)(c >= 'A' && c <= 'Z' ? c | 0x20 : c);
            }
        }
    }
    /* extra: {"name": "value", ...} in header order */
    L->p[L->n++] = '\t';
    if (has_extra) {
        int first = 1;
        for (Py_ssize_t k = 0; k < pl->n_json; k++) {
            const span *f = &fields[pl->json[k].index];
            if (!f->len) continue;
            if (buf_reserve(L, f->len + pl->json[k].len + 8) < 0) return -1;
            buf_put(L, first ? "{" : ", ", first ? 1 : 2);
            first = 0;
            buf_put(L, pl->json[k].name, pl->json[k].len);
            L->p[L->n++] = '"';
            buf_put(L, buf + f->start, f->len);
            L->p[L->n++] = '"';
        }
        L->p[L->n++] = '}';
    }
    if (buf_reserve(L, 1) < 0) return -1;
    L->p[L->n++] = '\n';

    /* the identity text, then its MD5 */
    bytebuf *I = &w->ident;
    I->n = 0;
    Py_ssize_t need = len + pl->nk + 16;
    for (Py_ssize_t k = 0; k < pl->n_ident; k++) need += pl->ident[k].len + 2;
    if (buf_reserve(I, need) < 0) return -1;
    buf_put(I, buf + fields[0].start, fields[0].len);
    I->p[I->n++] = 0x1f;
    buf_put(I, buf + tl->start, tl->len);
    for (Py_ssize_t k = 0; k < pl->nk; k++) {
        I->p[I->n++] = 0x1f;
        const span *f = &fields[pl->known[k]];
        buf_put(I, buf + f->start, f->len);
    }
    if (has_extra) {
        int first = 1;
        for (Py_ssize_t k = 0; k < pl->n_ident; k++) {
            const span *f = &fields[pl->ident[k].index];
            if (!f->len) continue;
            I->p[I->n++] = first ? 0x1e : 0x1f;
            first = 0;
            buf_put(I, pl->ident[k].name, pl->ident[k].len);
            I->p[I->n++] = 0x1d;
            buf_put(I, buf + f->start, f->len);
        }
    }
    md5_ctx m;
    md5_init(&m);
    md5_update(&m, I->p, (size_t)I->n);
    md5_hex(&m, id_out);
    memcpy(L->p + id_at, id_out, 32);
    return FAST;
}

/* What the scan found for one record, kept until the output objects are built. */
typedef struct {
    Py_ssize_t line_at, line_len; /* its COPY line in the batch's line buffer */
    long day;
    int kind, ascii;
    char id[32], text[25];
} found_t;

/* The scan of records[0:n] (pointers and lengths taken with the GIL): every record's
 * kind, id, time and COPY line (appended to *lines), up to and including a slow record
 * that may be a header line. Runs without the GIL; returns how many records it read,
 * or -1 when memory ran out. */
static Py_ssize_t scan(const plan_t *pl, work_t *w, const unsigned char *const *ptrs,
                       const Py_ssize_t *lens, Py_ssize_t n, const char *src, Py_ssize_t srclen,
                       found_t *found, bytebuf *lines) {
    for (Py_ssize_t k = 0; k < n; k++) {
        found_t *f = &found[k];
        f->line_at = f->line_len = 0;
        f->kind = one_record(pl, w, ptrs[k], lens[k], src, srclen, f->id, f->text, &f->day,
                             &f->ascii);
        if (f->kind < 0) return -1;
        if (f->kind == SLOW) {
            if (lens[k] < MAX_RECORD && maybe_header(ptrs[k], lens[k])) return k + 1;
            continue;
        }
        if (buf_reserve(lines, w->line.n) < 0) return -1;
        f->line_at = lines->n;
        f->line_len = w->line.n;
        buf_put(lines, w->line.p, w->line.n);
    }
    return n;
}

static PyObject *fast_parse(PyObject *self, PyObject *args) {
    PyObject *records, *plan_obj;
    Py_ssize_t start;
    const char *src;
    Py_ssize_t srclen;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!nO!y#", &PyList_Type, &records, &start, &PyTuple_Type,
                          &plan_obj, &src, &srclen))
        return NULL;
    plan_t pl;
    work_t w;
    bytebuf all = {NULL, 0, 0};
    memset(&w, 0, sizeof(w));
    memset(&pl, 0, sizeof(pl));
    PyObject *held = NULL, *lines = NULL, *ids = NULL, *times = NULL, *raws = NULL;
    PyObject *days = NULL, *slow = NULL, *result = NULL, *last_time = NULL;
    const unsigned char **ptrs = NULL;
    Py_ssize_t *lens = NULL;
    found_t *found = NULL;
    char last_text[25];
    long last_day = -1;
    if (read_plan(plan_obj, &pl) < 0) goto done;
    int src_ascii = 1;
    for (Py_ssize_t i = 0; i < srclen; i++) src_ascii &= !((unsigned char)src[i] & 0x80);
    if (start < 0) start = 0;
    /* the records, held by a list of our own while the GIL is released */
    Py_ssize_t nrec = PyList_GET_SIZE(records);
    held = PyList_GetSlice(records, start, nrec);
    if (!held) goto done;
    Py_ssize_t n = PyList_GET_SIZE(held);
    w.fields = PyMem_RawMalloc(sizeof(span) * (size_t)(pl.width + 2));
    ptrs = PyMem_RawMalloc(sizeof(*ptrs) * (size_t)(n ? n : 1));
    lens = PyMem_RawMalloc(sizeof(*lens) * (size_t)(n ? n : 1));
    found = PyMem_RawMalloc(sizeof(*found) * (size_t)(n ? n : 1));
    if (!w.fields || !ptrs || !lens || !found) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *rec = PyList_GET_ITEM(held, k);
        if (!PyBytes_Check(rec)) {
            PyErr_SetString(PyExc_TypeError, "records must be bytes");
            goto done;
        }
        ptrs[k] = (const unsigned char *)PyBytes_AS_STRING(rec);
        lens[k] = PyBytes_GET_SIZE(rec);
    }
    /* the split, checks, MD5 and COPY lines: no Python object, so without the GIL (the
     * loader thread sends its statements meanwhile) */
    Py_ssize_t scanned;
    Py_BEGIN_ALLOW_THREADS
    scanned = scan(&pl, &w, ptrs, lens, n, src, srclen, found, &all);
    Py_END_ALLOW_THREADS
    if (scanned < 0) {
        PyErr_NoMemory();
        goto done;
    }

    lines = PyList_New(0);
    ids = PyList_New(0);
    times = PyList_New(0);
    raws = PyList_New(0);
    days = PySet_New(NULL);
    slow = PyList_New(0);
    if (!lines || !ids || !times || !raws || !days || !slow) goto done;
    Py_ssize_t k = 0;
    for (; k < scanned; k++) {
        const found_t *f = &found[k];
        const unsigned char *p = ptrs[k];
        Py_ssize_t len = lens[k];
        int kind = f->kind;
        PyObject *raw = NULL;
        if (kind == FAST) {
            raw = make_str(p, len, f->ascii); /* invalid UTF-8: left to Python */
            if (!raw) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) goto done;
                PyErr_Clear();
                kind = SLOW;
            }
        }
        if (kind == SLOW) {
            if (append_new(slow, PyLong_FromSsize_t(start + k)) < 0) goto done;
            if (len < MAX_RECORD && maybe_header(p, len)) {
                k++;
                break; /* perhaps a header line: the mapping may change after it */
            }
            continue;
        }
        if (PyList_Append(raws, raw) < 0) {
            Py_DECREF(raw);
            goto done;
        }
        Py_DECREF(raw);
        if (append_new(lines, make_str(all.p + f->line_at, f->line_len,
                                       f->ascii && src_ascii && pl.names_ascii)) < 0)
            goto done;
        if (append_new(ids, make_str((const unsigned char *)f->id, 32, 1)) < 0) goto done;
        if (!last_time || memcmp(last_text, f->text, 25)) {
            Py_XDECREF(last_time);
            last_time = make_str((const unsigned char *)f->text, 25, 1);
            if (!last_time) goto done;
            memcpy(last_text, f->text, 25);
        }
        if (PyList_Append(times, last_time) < 0) goto done;
        if (f->day != last_day) {
            PyObject *d = PyLong_FromLong(f->day);
            if (!d) goto done;
            int bad = PySet_Add(days, d);
            Py_DECREF(d);
            if (bad < 0) goto done;
            last_day = f->day;
        }
    }
    result = Py_BuildValue("nOOOOOO", start + k, lines, ids, times, raws, days, slow);
done:
    plan_free(&pl);
    PyMem_RawFree(w.fields);
    PyMem_RawFree(w.buf);
    PyMem_RawFree(w.line.p);
    PyMem_RawFree(w.ident.p);
    PyMem_RawFree(all.p);
    PyMem_RawFree(ptrs);
    PyMem_RawFree(lens);
    PyMem_RawFree(found);
    Py_XDECREF(held);
    Py_XDECREF(last_time);
    Py_XDECREF(lines);
    Py_XDECREF(ids);
    Py_XDECREF(times);
    Py_XDECREF(raws);
    Py_XDECREF(days);
    Py_XDECREF(slow);
    return result;
}

static PyMethodDef methods[] = {
    {"parse", fast_parse, METH_VARARGS,
     "parse(records, start, plan, source) -> (stop, lines, ids, times, raws, days, slow)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pmta_pipe._fastpath",
                                    "The parser's hot path in C (see pmta_pipe/fastpath.py).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fastpath(void) {
    copy_unsafe['\t'] = copy_unsafe['\n'] = copy_unsafe['\r'] = copy_unsafe['\\'] = 1;
    for (int c = 0; c < 0x20; c++) json_unsafe[c] = 1;
    json_unsafe['"'] = json_unsafe['\\'] = 1;
    return PyModule_Create(&module);
}
