/* stockade.supervisor._fastpath: the receiver's wait and its commonest
 * answer, compiled.
 *
 * Why C: a brokered open costs about 15 us of CPython per call on top of
 * the kernel's own work (bench/README.md), and a program that opens many
 * files (find, a compiler, an interpreter importing modules) pays it on
 * every one.  This module does, without the GIL and without a Python
 * object per call, exactly what fs.q_open does for its commonest case:
 * a read-only open, named by a normal path, of a regular file or a
 * directory inside a directory whose every child the rules allow.  The
 * rules themselves are never compiled here: the Python supervisor decides
 * the first open in each directory and, when the plan says one verdict
 * (allow) holds for every child of that directory, adds the directory to
 * the session's DirCache.  Anything else -- another system call, another
 * flag, a relative path with "." or "..", /proc, a symlink, a FIFO, a
 * directory not in the cache, any error we would not give ourselves --
 * goes back to Python, untouched, which then handles it as before.
 *
 * The no-TOCTOU rules are those of fs.q_open: the path is read once, from
 * the caller's memory and its dirfd's or cwd's link, then
 * SECCOMP_IOCTL_NOTIF_ID_VALID; the object is opened beneath the
 * sandbox's root with no symlink followed (RESOLVE_IN_ROOT |
 * RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS), so what is opened is what
 * the decided text names, and the descriptor is injected with
 * SECCOMP_IOCTL_NOTIF_ADDFD.  Nothing here writes, creates or follows.
 *
 * Objects:
 *   DirCache()  what Python found about directories whose children are
 *               all allowed to be read (see children_allowed), the rules'
 *               stops, and our descriptor on the sandbox's root; a mutex
 *               guards them (Python adds from any thread).
 *   Receiver()  the receiver's poll set: register(fd), unregister(fd),
 *               fast(fd, cache or None), and
 *               wait(notif, fast) -> (fd, revents, state, answered).
 *
 * wait() returns one event at a time (a poll's remaining events are kept
 * for the next call): state 0, an event for Python; 1, a notification
 * received into *notif* for Python to handle; 2, nothing (answered is
 * due for the idle poller's touch); -errno, RECV failed.  *answered*
 * counts the notifications answered here since the last return.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef SECCOMP_ADDFD_FLAG_SEND
#define SECCOMP_ADDFD_FLAG_SEND (1UL << 1)
#endif

/* Must match stockade.supervisor.fs (tests/unit/test_fastpath.py checks). */
#define NOT_QUICK 031063103u
#define VALID_OPEN_FLAGS 037777777u
#define QUICK_RESOLVE (RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
#define FIRST_READ 256
#define PAGE 4096
/* The idle poller's refresh period (idlepoll._REFRESH_NS). */
#define TICK_NS 500000

#define STATE_EVENT 0
#define STATE_RECEIVED 1
#define STATE_TICK 2

static int no_keywords(const char *name, PyObject *kw) {
    if (kw != NULL && PyDict_GET_SIZE(kw) != 0) {
        PyErr_Format(PyExc_TypeError, "%s() takes no keyword arguments", name);
        return 0;
    }
    return 1;
}

/* -- DirCache ---------------------------------------------------------- */

/* A set of byte strings, each with a few flag bits: open addressing,
 * exact comparison (a hash collision never matches). */
typedef struct {
    unsigned slots; /* a power of two */
    unsigned count;
    char **keys;    /* NUL-terminated copies, NULL for an empty slot */
    size_t *lens;
    uint64_t *hashes;
    unsigned char *bits;
} Table;

#define KNOWN_SLOTS 32768u /* the learned directories */
#define KNOWN_LIMIT 16384u /* emptied when full, as the plan's caches are */

#define CHILDREN 1 /* every child of this directory may be read */
#define TREE 2     /* ... and so on down, to the next stop */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static int table_init(Table *t, unsigned slots) {
    t->slots = slots;
    t->count = 0;
    t->keys = calloc(slots, sizeof *t->keys);
    t->lens = calloc(slots, sizeof *t->lens);
    t->hashes = calloc(slots, sizeof *t->hashes);
    t->bits = calloc(slots, sizeof *t->bits);
    return t->keys && t->lens && t->hashes && t->bits ? 0 : -1;
}

static void table_empty(Table *t) {
    /* Not a slot is touched when there is nothing to free: a new table's
     * zeroed pages stay unmapped until used (a session that never
     * teaches the cache pays nothing for it). */
    if (t->keys == NULL || t->count == 0) return;
    for (unsigned i = 0; i < t->slots; i++) {
        free(t->keys[i]);
        t->keys[i] = NULL;
    }
    t->count = 0;
}

static void table_free(Table *t) {
    table_empty(t);
    free(t->keys);
    free(t->lens);
    free(t->hashes);
    free(t->bits);
    t->keys = NULL;
    t->lens = NULL;
    t->hashes = NULL;
    t->bits = NULL;
}

/* The bits of s[:n] (0: absent). */
static unsigned table_get(const Table *t, const char *s, size_t n) {
    uint64_t h = hash_bytes(s, n);
    unsigned mask = t->slots - 1;
    for (unsigned i = (unsigned)h & mask;; i = (i + 1) & mask) {
        const char *k = t->keys[i];
        if (k == NULL) return 0;
        if (t->hashes[i] == h && t->lens[i] == n && memcmp(k, s, n) == 0) return t->bits[i];
    }
}

/* Add bits to s[:n]; -1 when out of memory.  The caller keeps count
 * below the number of slots (so a probe always ends). */
static int table_put(Table *t, const char *s, size_t n, unsigned bits) {
    uint64_t h = hash_bytes(s, n);
    unsigned mask = t->slots - 1;
    unsigned i = (unsigned)h & mask;
    for (; t->keys[i] != NULL; i = (i + 1) & mask) {
        if (t->hashes[i] == h && t->lens[i] == n && memcmp(t->keys[i], s, n) == 0) {
            t->bits[i] |= (unsigned char)bits;
            return 0;
        }
    }
    char *copy = malloc(n + 1);
    if (copy == NULL) return -1;
    memcpy(copy, s, n);
    copy[n] = 0;
    t->keys[i] = copy;
    t->lens[i] = n;
    t->hashes[i] = h;
    t->bits[i] = (unsigned char)bits;
    t->count++;
    return 0;
}

/* What the plan found (NotifyPlan.allowed_directory), for one rule set:
 * directories whose every child may be read (CHILDREN), those whose
 * verdict also holds all the way down (TREE), and the stops: the parent
 * directory of every rule's filing key (the plan's _parents), where no
 * verdict goes down.  As in _PathRules._children_of, a directory D that
 * is not a stop, and not a child of "/", has its parent's TREE verdict:
 * so D's children may be read when D or the nearest ancestor that has a
 * TREE verdict is reached from D without passing a stop. */
typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    int ready;
    int root;
    /* Whether generation and stops are those of rules in force: set by a
     * clear() that completed, unset while one runs (and after one that
     * failed), when nothing is allowed. */
    int valid;
    unsigned long long generation;
    Table known;
    Table stops;
} DirCache;

/* Whether every child of directory full[:cut] may be read (lock held). */
static int children_allowed(const DirCache *c, const char *full, size_t cut) {
    if (!c->valid) return 0;
    if (table_get(&c->known, full, cut) & (CHILDREN | TREE)) return 1;
    for (size_t x = cut;;) {
        if (table_get(&c->stops, full, x)) return 0;
        size_t up = x;
        while (full[up - 1] != '/') up--;
        up--; /* full[up] is the '/' before x's last component */
        if (up == 0) return 0; /* x is a child of "/": nothing comes down */
        x = up;
        if (table_get(&c->known, full, x) & TREE) return 1;
    }
}

static PyObject *DirCache_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    if (!no_keywords("DirCache", kw) || !PyArg_ParseTuple(args, ":DirCache")) return NULL;
    DirCache *c = (DirCache *)type->tp_alloc(type, 0);
    if (c == NULL) return NULL;
    c->root = -1;
    /* No stops known yet: nothing is allowed until clear() gives them. */
    c->valid = 0;
    if (table_init(&c->known, KNOWN_SLOTS) < 0 || table_init(&c->stops, 16) < 0) {
        Py_DECREF(c);
        return PyErr_NoMemory();
    }
    pthread_mutex_init(&c->lock, NULL);
    c->ready = 1;
    return (PyObject *)c;
}

static void DirCache_dealloc(DirCache *c) {
    if (c->ready) pthread_mutex_destroy(&c->lock);
    table_free(&c->known);
    table_free(&c->stops);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* Take the lock without holding the GIL: the receiver holds the lock,
 * without the GIL, while it opens. */
static void lock_nogil(DirCache *c) {
    if (pthread_mutex_trylock(&c->lock) == 0) return;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&c->lock);
    Py_END_ALLOW_THREADS
}

/* A generation: a Python int in [0, 2**64), or -1 with an exception. */
static int get_generation(PyObject *obj, unsigned long long *out) {
    if (!PyLong_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "the generation must be an int");
        return -1;
    }
    *out = PyLong_AsUnsignedLongLong(obj); /* OverflowError if negative or too big */
    return *out == (unsigned long long)-1 && PyErr_Occurred() ? -1 : 0;
}

static PyObject *DirCache_add(DirCache *c, PyObject *args) {
    const char *s;
    Py_ssize_t n;
    PyObject *gen;
    unsigned long long generation;
    int tree;
    if (!PyArg_ParseTuple(args, "y#Op:add", &s, &n, &gen, &tree)) return NULL;
    if (get_generation(gen, &generation) < 0) return NULL;
    if (n < 2 || s[0] != '/' || memchr(s, 0, (size_t)n) != NULL) {
        PyErr_SetString(PyExc_ValueError, "add: expected an absolute directory path, not /");
        return NULL;
    }
    int rc = 0;
    lock_nogil(c);
    if (c->valid && generation == c->generation) {
        if (c->known.count >= KNOWN_LIMIT && !table_get(&c->known, s, (size_t)n))
            table_empty(&c->known);
        rc = table_put(&c->known, s, (size_t)n, tree ? (CHILDREN | TREE) : CHILDREN);
    }
    pthread_mutex_unlock(&c->lock);
    if (rc < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *DirCache_clear(DirCache *c, PyObject *args) {
    PyObject *gen;
    unsigned long long generation;
    PyObject *stops;
    /* The rules changed: whatever happens next, nothing learned under the
     * old ones may be answered again. */
    lock_nogil(c);
    c->valid = 0;
    table_empty(&c->known);
    pthread_mutex_unlock(&c->lock);
    if (!PyArg_ParseTuple(args, "OO:clear", &gen, &stops)) return NULL;
    if (get_generation(gen, &generation) < 0) return NULL;
    PyObject *seq = PySequence_Fast(stops, "clear: the stops must be a sequence of bytes");
    if (seq == NULL) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    unsigned slots = 16;
    while (slots < 2 * (unsigned long long)count + 2) slots *= 2;
    Table fresh;
    if (table_init(&fresh, slots) < 0) {
        table_free(&fresh);
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        char *s;
        Py_ssize_t n;
        if (PyBytes_AsStringAndSize(PySequence_Fast_GET_ITEM(seq, i), &s, &n) < 0 ||
            table_put(&fresh, s, (size_t)n, 1) < 0) {
            if (!PyErr_Occurred()) PyErr_NoMemory();
            table_free(&fresh);
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    lock_nogil(c);
    Table old = c->stops;
    c->stops = fresh;
    table_empty(&c->known); /* adds raced with this clear: of either generation */
    c->generation = generation;
    c->valid = 1;
    pthread_mutex_unlock(&c->lock);
    table_free(&old);
    Py_RETURN_NONE;
}

static PyObject *DirCache_set_root(DirCache *c, PyObject *args) {
    int fd;
    if (!PyArg_ParseTuple(args, "i:set_root", &fd)) return NULL;
    lock_nogil(c);
    c->root = fd;
    pthread_mutex_unlock(&c->lock);
    Py_RETURN_NONE;
}

static PyObject *DirCache_allows(DirCache *c, PyObject *args) {
    const char *s;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y#:allows", &s, &n)) return NULL;
    if (n < 2 || s[0] != '/' || s[n - 1] == '/') {
        PyErr_SetString(PyExc_ValueError, "allows: expected an absolute directory path, not /");
        return NULL;
    }
    lock_nogil(c);
    int found = children_allowed(c, s, (size_t)n);
    pthread_mutex_unlock(&c->lock);
    return PyBool_FromLong(found);
}

static Py_ssize_t DirCache_len(DirCache *c) {
    lock_nogil(c);
    Py_ssize_t n = c->known.count;
    pthread_mutex_unlock(&c->lock);
    return n;
}

static PyMethodDef DirCache_methods[] = {
    {"add", (PyCFunction)DirCache_add, METH_VARARGS,
     "add(directory: bytes, generation: int, tree: bool): every child of directory may "
     "be read (with tree: and so on down to the next stop); ignored unless generation "
     "is the cache's."},
    {"clear", (PyCFunction)DirCache_clear, METH_VARARGS,
     "clear(generation: int, stops: sequence of bytes): forget every directory, and "
     "take the stops of the rules of generation (until then, nothing is allowed)."},
    {"set_root", (PyCFunction)DirCache_set_root, METH_VARARGS,
     "set_root(fd: int): our descriptor on the sandbox's root (-1: none)."},
    {"allows", (PyCFunction)DirCache_allows, METH_VARARGS,
     "allows(directory: bytes) -> bool: whether its every child may be read, as the "
     "receiver would find."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods DirCache_seq = {
    .sq_length = (lenfunc)DirCache_len,
};

static PyTypeObject DirCacheType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "stockade.supervisor._fastpath.DirCache",
    .tp_basicsize = sizeof(DirCache),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Directories whose every child a sandbox may read, and its root.",
    .tp_new = DirCache_new,
    .tp_dealloc = (destructor)DirCache_dealloc,
    .tp_methods = DirCache_methods,
    .tp_as_sequence = &DirCache_seq,
};

/* -- the quick open ---------------------------------------------------- */

/* The NUL-terminated string at addr in pid, into buf (PATH_MAX bytes):
 * its length, or -1 (unreadable, or no NUL within PATH_MAX). */
static ssize_t read_cstring(pid_t pid, uint64_t addr, char *buf) {
    size_t got = 0;
    size_t chunk = PAGE - (addr & (PAGE - 1));
    if (chunk > FIRST_READ) chunk = FIRST_READ;
    if (addr == 0) return -1;
    while (got < PATH_MAX) {
        if (chunk > PATH_MAX - got) chunk = PATH_MAX - got;
        struct iovec local = {buf + got, chunk};
        struct iovec remote = {(void *)(uintptr_t)(addr + got), chunk};
        ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        char *nul = memchr(buf + got, 0, (size_t)n);
        if (nul != NULL) return nul - buf;
        got += (size_t)n;
        chunk = PAGE - ((addr + got) & (PAGE - 1));
    }
    return -1;
}

/* resolve.normal: no empty, "." or ".." component, no trailing slash. */
static int is_normal(const char *p, size_t n) {
    if (n == 0 || p[0] != '/') return 0;
    if (n == 1) return 0; /* "/": ends with a slash */
    for (size_t i = 0; i < n;) {
        size_t j = i + 1; /* p[i] == '/' */
        while (j < n && p[j] != '/') j++;
        size_t len = j - i - 1;
        if (len == 0) return 0;
        if (len == 1 && p[i + 1] == '.') return 0;
        if (len == 2 && p[i + 1] == '.' && p[i + 2] == '.') return 0;
        i = j;
    }
    return 1;
}

static int send_error(int listener, uint64_t id, int err) {
    struct seccomp_notif_resp r = {.id = id, .error = -err};
    while (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &r) != 0)
        if (errno != EINTR) return -1;
    return 0;
}

/* Answer a read-only open here, as fs.q_open would: 1 when answered (or
 * when the call is gone), 0 for Python.  Runs without the GIL. */
static int quick_open(DirCache *c, int listener, struct seccomp_notif *n) {
    static const char deleted[] = " (deleted)";
    char path[PATH_MAX];
    char full[2 * PATH_MAX + 2];
    int dirfd;
    uint64_t addr;
    unsigned flags;
    size_t len;

    if (n->data.arch != AUDIT_ARCH_X86_64) return 0;
    if (n->data.nr == __NR_openat) {
        dirfd = (int)n->data.args[0];
        addr = n->data.args[1];
        flags = (unsigned)n->data.args[2];
    } else if (n->data.nr == __NR_open) {
        dirfd = AT_FDCWD;
        addr = n->data.args[0];
        flags = (unsigned)n->data.args[1];
    } else {
        return 0;
    }
    if (flags & NOT_QUICK) return 0;
    ssize_t plen = read_cstring((pid_t)n->pid, addr, path);
    if (plen <= 0) return 0;
    if (path[0] == '/') {
        memcpy(full, path, (size_t)plen);
        len = (size_t)plen;
    } else {
        char link[64];
        if (dirfd == AT_FDCWD)
            snprintf(link, sizeof link, "/proc/%u/cwd", n->pid);
        else
            snprintf(link, sizeof link, "/proc/%u/fd/%d", n->pid, dirfd);
        ssize_t blen = readlink(link, full, PATH_MAX);
        if (blen <= 0 || blen >= PATH_MAX || full[0] != '/') return 0;
        if ((size_t)blen >= sizeof deleted - 1 &&
            memcmp(full + blen - (sizeof deleted - 1), deleted, sizeof deleted - 1) == 0)
            return 0;
        len = (size_t)blen;
        if (full[len - 1] != '/') full[len++] = '/';
        memcpy(full + len, path, (size_t)plen);
        len += (size_t)plen;
    }
    full[len] = 0;
    if (!is_normal(full, len)) return 0;
    if (len >= 5 && memcmp(full, "/proc", 5) == 0 && (len == 5 || full[5] == '/')) return 0;
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &n->id) != 0) return 0;

    size_t cut = len;
    while (full[cut - 1] != '/') cut--;
    cut--; /* full[cut] is the last '/' */
    if (cut == 0) return 0; /* a child of "/": the plan decides those one by one */

    int answered = 0;
    int directory = (flags & O_DIRECTORY) != 0;
    pthread_mutex_lock(&c->lock);
    int root = c->root;
    if (root < 0 || !children_allowed(c, full, cut)) goto out;
    if (!directory) {
        /* Anything but a file or a directory is Python's before it is
         * opened at all: even a non-blocking open of a FIFO lets a writer
         * through, who then writes to nobody. */
        struct stat st;
        if (fstatat(root, full + 1, &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISREG(st.st_mode) &&
            !S_ISDIR(st.st_mode))
            goto out;
    }
    struct open_how how = {
        .flags = (flags & VALID_OPEN_FLAGS) | O_CLOEXEC | O_NOCTTY | (directory ? 0 : O_NONBLOCK),
        .mode = 0,
        .resolve = QUICK_RESOLVE,
    };
    int fd;
    do {
        fd = (int)syscall(SYS_openat2, root, full, &how, sizeof how);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        int err = errno;
        if (err == ENOENT || err == ENOTDIR || err == EACCES || err == ENAMETOOLONG) {
            send_error(listener, n->id, err); /* failing: the call is gone */
            answered = 1;
        }
        goto out; /* ELOOP (a symlink), EAGAIN, EWOULDBLOCK: Python's */
    }
    if (!directory) {
        struct stat st;
        if (fstat(fd, &st) != 0 || !(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)) ||
            (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, 0) != 0)) {
            close(fd);
            goto out;
        }
    }
    struct seccomp_notif_addfd add = {
        .id = n->id,
        .flags = SECCOMP_ADDFD_FLAG_SEND,
        .srcfd = (unsigned)fd,
        .newfd = 0,
        .newfd_flags = (flags & O_CLOEXEC) ? O_CLOEXEC : 0,
    };
    int rc;
    do {
        rc = ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &add);
    } while (rc < 0 && errno == EINTR);
    /* ENOENT: the call is gone.  Anything else (EMFILE) Python answers. */
    answered = rc >= 0 || errno == ENOENT;
    close(fd);
out:
    pthread_mutex_unlock(&c->lock);
    return answered;
}

/* -- Receiver ---------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    struct pollfd *fds;
    DirCache **caches; /* owned references, NULL when not fast */
    int n, cap, cursor;
    int busy;
    long long next_tick;
    unsigned long long answered; /* in all, for tests and benchmarks */
} Receiver;

static PyObject *Receiver_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    if (!no_keywords("Receiver", kw) || !PyArg_ParseTuple(args, ":Receiver")) return NULL;
    return type->tp_alloc(type, 0);
}

static void Receiver_dealloc(Receiver *r) {
    for (int i = 0; i < r->n; i++) Py_XDECREF(r->caches[i]);
    PyMem_Free(r->fds);
    PyMem_Free(r->caches);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static int find_fd(Receiver *r, int fd) {
    for (int i = 0; i < r->n; i++)
        if (r->fds[i].fd == fd) return i;
    return -1;
}

static int check_idle(Receiver *r) {
    if (r->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Receiver used while waiting");
        return -1;
    }
    return 0;
}

static PyObject *Receiver_register(Receiver *r, PyObject *args) {
    int fd;
    if (!PyArg_ParseTuple(args, "i:register", &fd) || check_idle(r) < 0) return NULL;
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "register: a descriptor must be >= 0");
        return NULL;
    }
    if (find_fd(r, fd) >= 0) Py_RETURN_NONE;
    if (r->n == r->cap) {
        int cap = r->cap ? 2 * r->cap : 16;
        struct pollfd *fds = PyMem_Realloc(r->fds, cap * sizeof *fds);
        if (fds == NULL) return PyErr_NoMemory();
        r->fds = fds;
        DirCache **caches = PyMem_Realloc(r->caches, cap * sizeof *caches);
        if (caches == NULL) return PyErr_NoMemory();
        r->caches = caches;
        r->cap = cap;
    }
    r->fds[r->n] = (struct pollfd){.fd = fd, .events = POLLIN, .revents = 0};
    r->caches[r->n] = NULL;
    r->n++;
    Py_RETURN_NONE;
}

static PyObject *Receiver_unregister(Receiver *r, PyObject *args) {
    int fd;
    if (!PyArg_ParseTuple(args, "i:unregister", &fd) || check_idle(r) < 0) return NULL;
    int i = find_fd(r, fd);
    if (i < 0) {
        PyErr_SetObject(PyExc_KeyError, PyTuple_GET_ITEM(args, 0));
        return NULL;
    }
    DirCache *cache = r->caches[i];
    /* Kept in order, with the events not yet returned: the poll's other
     * ready descriptors are still returned, in turn. */
    memmove(r->fds + i, r->fds + i + 1, (r->n - i - 1) * sizeof *r->fds);
    memmove(r->caches + i, r->caches + i + 1, (r->n - i - 1) * sizeof *r->caches);
    r->n--;
    if (i < r->cursor) r->cursor--;
    Py_XDECREF(cache);
    Py_RETURN_NONE;
}

static PyObject *Receiver_fast(Receiver *r, PyObject *args) {
    int fd;
    PyObject *cache;
    if (!PyArg_ParseTuple(args, "iO:fast", &fd, &cache) || check_idle(r) < 0) return NULL;
    if (cache != Py_None && !PyObject_TypeCheck(cache, &DirCacheType)) {
        PyErr_SetString(PyExc_TypeError, "fast: expected a DirCache or None");
        return NULL;
    }
    int i = find_fd(r, fd);
    if (i < 0) {
        PyErr_SetObject(PyExc_KeyError, PyTuple_GET_ITEM(args, 0));
        return NULL;
    }
    DirCache *old = r->caches[i];
    r->caches[i] = cache == Py_None ? NULL : (DirCache *)Py_NewRef(cache);
    Py_XDECREF(old);
    Py_RETURN_NONE;
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static PyObject *Receiver_wait(Receiver *r, PyObject *args) {
    PyObject *target;
    int fast;
    if (!PyArg_ParseTuple(args, "Op:wait", &target, &fast) || check_idle(r) < 0) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(target, &view, PyBUF_WRITABLE) < 0) return NULL;
    if ((size_t)view.len < sizeof(struct seccomp_notif)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "wait: the buffer is smaller than a seccomp_notif");
        return NULL;
    }
    struct seccomp_notif *n = view.buf;
    int fd = -1, revents = 0, state = STATE_TICK;
    unsigned long long answered = 0;
    r->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        while (r->cursor < r->n) {
            int i = r->cursor++;
            struct pollfd *p = &r->fds[i];
            if (p->revents == 0) continue;
            fd = p->fd;
            revents = p->revents;
            p->revents = 0;
            state = STATE_EVENT;
            if (r->caches[i] == NULL || !(revents & POLLIN)) goto done;
            memset(n, 0, sizeof *n);
            while (ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, n) != 0) {
                if (errno != EINTR) {
                    state = -errno;
                    goto done;
                }
                memset(n, 0, sizeof *n);
            }
            state = STATE_RECEIVED;
            if (!fast || !quick_open(r->caches[i], fd, n)) goto done;
            answered++;
            long long now = now_ns();
            if (now >= r->next_tick) {
                r->next_tick = now + TICK_NS;
                fd = -1;
                revents = 0;
                state = STATE_TICK;
                goto done;
            }
        }
        int k = poll(r->fds, (nfds_t)r->n, -1);
        r->cursor = 0;
        if (k < 0) {
            if (errno != EINTR) {
                state = -errno;
                fd = -1;
                goto done;
            }
            for (int i = 0; i < r->n; i++) r->fds[i].revents = 0;
            /* Let Python run a signal handler, or raise, before waiting on. */
            fd = -1;
            state = -EINTR;
            goto done;
        }
    }
done:
    Py_END_ALLOW_THREADS
    r->busy = 0;
    r->answered += answered;
    PyBuffer_Release(&view);
    if (state == -EINTR && fd == -1) {
        if (PyErr_CheckSignals() < 0) return NULL;
        return Py_BuildValue("iiiK", -1, 0, STATE_TICK, answered);
    }
    if (state < 0 && fd == -1) {
        errno = -state;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("iiiK", fd, revents, state, answered);
}

static PyObject *Receiver_get_answered(Receiver *r, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(r->answered);
}

static PyMethodDef Receiver_methods[] = {
    {"register", (PyCFunction)Receiver_register, METH_VARARGS,
     "register(fd): wait for POLLIN on fd too."},
    {"unregister", (PyCFunction)Receiver_unregister, METH_VARARGS,
     "unregister(fd): stop waiting on fd (KeyError if not registered)."},
    {"fast", (PyCFunction)Receiver_fast, METH_VARARGS,
     "fast(fd, cache): answer the quick opens of listener fd here, with cache (None: never)."},
    {"wait", (PyCFunction)Receiver_wait, METH_VARARGS,
     "wait(notif, fast) -> (fd, revents, state, answered): the next event for Python."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Receiver_getset[] = {
    {"answered", (getter)Receiver_get_answered, NULL,
     "Notifications answered here, in all.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ReceiverType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "stockade.supervisor._fastpath.Receiver",
    .tp_basicsize = sizeof(Receiver),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The receiver's poll set, answering quick opens without the GIL.",
    .tp_new = Receiver_new,
    .tp_dealloc = (destructor)Receiver_dealloc,
    .tp_methods = Receiver_methods,
    .tp_getset = Receiver_getset,
};

/* -- module ------------------------------------------------------------ */

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "stockade.supervisor._fastpath",
    .m_doc = "The receiver's wait and quick opens, compiled (see fs.q_open).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&DirCacheType) < 0 || PyType_Ready(&ReceiverType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "DirCache", (PyObject *)&DirCacheType) < 0 ||
        PyModule_AddObjectRef(m, "Receiver", (PyObject *)&ReceiverType) < 0 ||
        PyModule_AddIntConstant(m, "NOT_QUICK", NOT_QUICK) < 0 ||
        PyModule_AddIntConstant(m, "VALID_OPEN_FLAGS", VALID_OPEN_FLAGS) < 0 ||
        PyModule_AddIntConstant(m, "QUICK_RESOLVE", QUICK_RESOLVE) < 0 ||
        PyModule_AddIntConstant(m, "STATE_EVENT", STATE_EVENT) < 0 ||
        PyModule_AddIntConstant(m, "STATE_RECEIVED", STATE_RECEIVED) < 0 ||
        PyModule_AddIntConstant(m, "STATE_TICK", STATE_TICK) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
