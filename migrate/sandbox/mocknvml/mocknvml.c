/* migrate sandbox MOCK libnvidia-ml.so.1: a loudly fake NVML for hosts without a GPU.
 *
 * It exports the NVML functions pynvml needs to initialise plus every function migrate calls,
 * with NVML's calling conventions (return codes, the INSUFFICIENT_SIZE protocol, v1/v2 memory
 * structs, v1/v2/v3 process lists, MIG handles). Each call re-reads a small line-based state
 * file, written by migrate/sandbox/mocknvml/state.py (`migrate sandbox gpu`), so the world can
 * change while a dispatcher runs:
 *
 *   driver 550.54.15-mock                      the driver version string
 *   error 999                                  optional: every call fails with this NVML code
 *   gpu UUID TOTAL_MIB USED_MIB RESERVED_MIB UTIL LOST MIG NAME...   one per GPU, in index order
 *   mig UUID TOTAL_MIB USED_MIB                a MIG instance of the gpu line above it
 *   proc UUID PID USED_MIB KIND                a process on that GPU/instance (KIND c, g or m)
 *
 * USED_MIB is memory used by nobody listed; a process adds its USED_MIB while /proc/PID exists
 * (like the driver, a process that exited is gone from the list). v1 memory's `used` also counts
 * RESERVED_MIB (the driver's reservation), v2's does not. LOST 1: the GPU fell off the bus.
 *
 * State path: $MIGRATE_MOCK_NVML_STATE, else /etc/migrate-sandbox/mock-nvml.state.
 * Call log: every call appends "PID FUNCTION" to $MIGRATE_MOCK_NVML_LOG (created); without it,
 * each function's first call in a process goes to /var/log/migrate-mock-nvml.calls if that exists.
 *
 * Driver generations (compile-time): -DMOCK_NO_V3 leaves out the _v3 process calls and
 * nvmlDeviceGetMemoryInfo_v2 (R470-like), -DMOCK_NO_V2 also the _v2 process calls (only v1 remains).
 * Only plain libc calls are used so a build on one glibc loads on older and newer Debian.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>

#define DEFAULT_STATE "/etc/migrate-sandbox/mock-nvml.state"
#define DEFAULT_LOG "/var/log/migrate-mock-nvml.calls"
#define MAX_GPUS 16
#define MAX_MIG 7
#define MAX_PROCS 64
#define MIB 1048576ULL

typedef int nvmlReturn_t;
enum { OK = 0, E_UNINIT = 1, E_INVALID = 2, E_NOT_SUPPORTED = 3, E_NOT_FOUND = 6, E_SIZE = 7,
       E_DRIVER = 9, E_LOST = 15, E_UNKNOWN = 999 };

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; } nvmlProcessInfo_v1_t;
typedef struct {
    unsigned int pid; unsigned long long usedGpuMemory; unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_v2_t;

struct mdev {
    char uuid[96], name[96];
    unsigned long long total, used, reserved;  /* MiB */
    unsigned int util, lost, mig, nmig;
    struct mdev *parent;
};
struct mproc { char uuid[96]; unsigned int pid; unsigned long long used; char kind; };

static struct mdev gpus[MAX_GPUS];
static struct mdev migs[MAX_GPUS][MAX_MIG];
static struct mproc procs[MAX_PROCS];
static unsigned int ngpus, nprocs;
static char driver[80];
static int init_error, initialised;

/* Append "PID FUNCTION" to the call log: every call to $MIGRATE_MOCK_NVML_LOG (tests), each
 * function's first call in this process to the default log (a dispatcher polls all day). */
static void logcall(const char *fn) {
    static const char *seen[64];
    static unsigned nseen;
    const char *path = getenv("MIGRATE_MOCK_NVML_LOG");
    int every = path && *path;
    if (!every) {
        for (unsigned i = 0; i < nseen; i++) if (seen[i] == fn) return;
        if (nseen < 64) seen[nseen++] = fn;
    }
    int fd = every ? open(path, O_WRONLY | O_APPEND | O_CREAT, 0644) : open(DEFAULT_LOG, O_WRONLY | O_APPEND);
    if (fd < 0) return;
    char line[160];
    int n = snprintf(line, sizeof line, "%d %s\n", (int)getpid(), fn);
    if (n > 0 && write(fd, line, (size_t)n) < 0) { /* the log is best effort */ }
    close(fd);
}

/* the next space-separated word of *s (NUL-terminated in place); "" at the end */
static char *word(char **s) {
    while (**s == ' ') (*s)++;
    char *w = *s;
    while (**s && **s != ' ') (*s)++;
    if (**s) *(*s)++ = 0;
    return w;
}

static unsigned long long num(char **s) {
    unsigned long long v = 0;
    for (const char *w = word(s); *w >= '0' && *w <= '9'; w++) v = v * 10 + (unsigned)(*w - '0');
    return v;
}

static void copy(char *dst, size_t size, const char *src) {
    snprintf(dst, size, "%s", src);
}

/* Is the process running (not gone, not a zombie)? The driver lets go of a process's memory as it
 * exits, before its parent reaps it. */
static int alive(unsigned int pid) {
    char path[32], buf[256];
    if (!pid) return 0;
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *end = strrchr(buf, ')');  /* "PID (COMM) STATE ..." */
    return !(end && end[1] == ' ' && (end[2] == 'Z' || end[2] == 'X'));
}

/* Re-read the state file; 0 when it cannot be read (no "driver"). */
static int load(void) {
    const char *path = getenv("MIGRATE_MOCK_NVML_STATE");
    FILE *f = fopen(path && *path ? path : DEFAULT_STATE, "r");
    ngpus = nprocs = 0; init_error = 0; driver[0] = 0;
    if (!f) return 0;
    char line[512];
    struct mdev *cur = NULL;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        char *s = line, *key = word(&s);
        if (!strcmp(key, "driver")) {
            copy(driver, sizeof driver, s);
        } else if (!strcmp(key, "error")) {
            init_error = (int)num(&s);
        } else if (!strcmp(key, "gpu") && ngpus < MAX_GPUS) {
            struct mdev *g = &gpus[ngpus++];
            memset(g, 0, sizeof *g);
            copy(g->uuid, sizeof g->uuid, word(&s));
            g->total = num(&s); g->used = num(&s); g->reserved = num(&s); g->util = (unsigned)num(&s);
            g->lost = (unsigned)num(&s); g->mig = (unsigned)num(&s);
            copy(g->name, sizeof g->name, s);
            cur = g;
        } else if (!strcmp(key, "mig") && cur && cur->nmig < MAX_MIG) {
            struct mdev *m = &migs[cur - gpus][cur->nmig++];
            memset(m, 0, sizeof *m);
            copy(m->uuid, sizeof m->uuid, word(&s));
            m->total = num(&s); m->used = num(&s); m->parent = cur;
            snprintf(m->name, sizeof m->name, "%.80s MIG", cur->name);
        } else if (!strcmp(key, "proc") && nprocs < MAX_PROCS) {
            struct mproc *p = &procs[nprocs];
            copy(p->uuid, sizeof p->uuid, word(&s));
            p->pid = (unsigned)num(&s); p->used = num(&s); p->kind = *word(&s);
            if (alive(p->pid)) nprocs++;  /* exited: gone, as with the driver */
        }
    }
    fclose(f);
    return driver[0] != 0;
}

/* The device a handle points at, or NULL. */
static struct mdev *dev(void *handle) {
    struct mdev *d = handle;
    if (d >= gpus && d < gpus + ngpus) return d;
    if (d >= &migs[0][0] && d < &migs[0][0] + MAX_GPUS * MAX_MIG) {
        unsigned long k = (unsigned long)(d - &migs[0][0]);
        if (k / MAX_MIG < ngpus && k % MAX_MIG < gpus[k / MAX_MIG].nmig) return d;
    }
    return NULL;
}

/* Initialised, state read, no injected fault: OK, else the NVML error to return. */
static nvmlReturn_t ready(void) {
    if (!initialised) return E_UNINIT;
    if (!load()) return E_DRIVER;
    return init_error;
}

#define CHECK_READY() do { nvmlReturn_t r_ = ready(); if (r_) return r_; } while (0)

/* Fresh state, initialised library, valid handle: the preamble of every device call. */
#define DEVICE(d, handle) \
    logcall(__func__); \
    CHECK_READY(); \
    struct mdev *d = dev(handle); \
    if (!d) return E_INVALID; \
    if (d->lost || (d->parent && d->parent->lost)) return E_LOST

static int on(const struct mproc *p, const struct mdev *d) {
    if (!strcmp(p->uuid, d->uuid)) return 1;
    if (d->mig) for (unsigned j = 0; j < d->nmig; j++) if (!strcmp(p->uuid, migs[d - gpus][j].uuid)) return 1;
    return 0;
}

static unsigned long long used_mib(const struct mdev *d) {
    unsigned long long u = d->used;
    for (unsigned i = 0; i < nprocs; i++) if (on(&procs[i], d)) u += procs[i].used;
    return u;
}

/* -- init, errors, system -------------------------------------------------------------------- */
static nvmlReturn_t do_init(const char *fn) {
    logcall(fn);
    if (!load()) return E_DRIVER;
    if (init_error) return init_error;
    initialised++;
    return OK;
}
nvmlReturn_t nvmlInit(void) { return do_init(__func__); }
nvmlReturn_t nvmlInit_v2(void) { return do_init(__func__); }
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { (void)flags; return do_init(__func__); }

nvmlReturn_t nvmlShutdown(void) {
    logcall(__func__);
    if (!initialised) return E_UNINIT;
    initialised--;
    return OK;
}

const char *nvmlErrorString(nvmlReturn_t r) {
    logcall(__func__);
    switch (r) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 12: return "NVML Shared Library Not Found";
    case 13: return "Function Not Found";
    case 15: return "GPU is lost";
    case 16: return "GPU requires restart";
    case 18: return "RM has detected an NVML/RM version mismatch.";
    case 999: return "Unknown Error";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    logcall(__func__);
    CHECK_READY();
    if (!version) return E_INVALID;
    if (strlen(driver) + 1 > length) return E_SIZE;
    copy(version, length, driver);
    return OK;
}

static nvmlReturn_t count(const char *fn, unsigned int *n) {
    logcall(fn);
    CHECK_READY();
    if (!n) return E_INVALID;
    *n = ngpus;
    return OK;
}
nvmlReturn_t nvmlDeviceGetCount(unsigned int *n) { return count(__func__, n); }
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) { return count(__func__, n); }

static nvmlReturn_t by_index(const char *fn, unsigned int i, void **handle) {
    logcall(fn);
    CHECK_READY();
    if (!handle || i >= ngpus) return E_INVALID;
    *handle = &gpus[i];
    return OK;
}
nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int i, void **h) { return by_index(__func__, i, h); }
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, void **h) { return by_index(__func__, i, h); }

/* -- one device ------------------------------------------------------------------------------ */
static nvmlReturn_t text(const char *src, char *dst, unsigned int length) {
    if (!dst) return E_INVALID;
    if (strlen(src) + 1 > length) return E_SIZE;
    copy(dst, length, src);
    return OK;
}

nvmlReturn_t nvmlDeviceGetName(void *handle, char *name, unsigned int length) {
    DEVICE(d, handle);
    return text(d->name, name, length);
}

nvmlReturn_t nvmlDeviceGetUUID(void *handle, char *uuid, unsigned int length) {
    logcall(__func__);  /* like the driver, the UUID of a lost GPU is still known */
    CHECK_READY();
    struct mdev *d = dev(handle);
    if (!d) return E_INVALID;
    return text(d->uuid, uuid, length);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(void *handle, nvmlMemory_t *m) {
    DEVICE(d, handle);
    if (!m) return E_INVALID;
    unsigned long long used = used_mib(d) + d->reserved;
    if (used > d->total) used = d->total;
    m->total = d->total * MIB; m->used = used * MIB; m->free = (d->total - used) * MIB;
    return OK;
}

#ifndef MOCK_NO_V3  /* the v2 memory struct came with the _v3 process calls (R510) */
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(void *handle, nvmlMemory_v2_t *m) {
    DEVICE(d, handle);
    if (!m) return E_INVALID;
    if (m->version != 0x02000028) return 25;  /* NVML_ERROR_ARGUMENT_VERSION_MISMATCH */
    unsigned long long used = used_mib(d), reserved = d->reserved;
    if (used + reserved > d->total) used = d->total - reserved;
    m->total = d->total * MIB; m->reserved = reserved * MIB; m->used = used * MIB;
    m->free = (d->total - reserved - used) * MIB;
    return OK;
}
#endif

nvmlReturn_t nvmlDeviceGetUtilizationRates(void *handle, nvmlUtilization_t *u) {
    DEVICE(d, handle);
    if (!u) return E_INVALID;
    if (d->parent || d->mig) return E_NOT_SUPPORTED;  /* as on MIG hardware */
    u->gpu = d->util; u->memory = d->util;
    return OK;
}

/* The INSUFFICIENT_SIZE protocol shared by every process-list version. */
static nvmlReturn_t processes(struct mdev *d, char kind, unsigned int *n, void *out, int v2) {
    if (!n) return E_INVALID;
    unsigned int have = 0;
    for (unsigned i = 0; i < nprocs; i++) if (procs[i].kind == kind && on(&procs[i], d)) have++;
    if (!out || *n < have) {
        *n = have;
        return have ? E_SIZE : OK;
    }
    unsigned int k = 0;
    for (unsigned i = 0; i < nprocs; i++) {
        struct mproc *p = &procs[i];
        if (p->kind != kind || !on(p, d)) continue;
        if (v2) {
            nvmlProcessInfo_v2_t *o = (nvmlProcessInfo_v2_t *)out + k;
            o->pid = p->pid; o->usedGpuMemory = p->used * MIB;
            o->gpuInstanceId = o->computeInstanceId = 0xFFFFFFFFu;
        } else {
            nvmlProcessInfo_v1_t *o = (nvmlProcessInfo_v1_t *)out + k;
            o->pid = p->pid; o->usedGpuMemory = p->used * MIB;
        }
        k++;
    }
    *n = k;
    return OK;
}

#define PROCESS_CALL(name, kind, v2) \
    nvmlReturn_t name(void *handle, unsigned int *n, void *infos) { \
        DEVICE(d, handle); \
        return processes(d, kind, n, infos, v2); \
    }
/* the unversioned symbols keep the v1 struct, as libnvidia-ml does */
PROCESS_CALL(nvmlDeviceGetComputeRunningProcesses, 'c', 0)
PROCESS_CALL(nvmlDeviceGetGraphicsRunningProcesses, 'g', 0)
PROCESS_CALL(nvmlDeviceGetMPSComputeRunningProcesses, 'm', 0)
#ifndef MOCK_NO_V2
PROCESS_CALL(nvmlDeviceGetComputeRunningProcesses_v2, 'c', 1)
PROCESS_CALL(nvmlDeviceGetGraphicsRunningProcesses_v2, 'g', 1)
PROCESS_CALL(nvmlDeviceGetMPSComputeRunningProcesses_v2, 'm', 1)
#ifndef MOCK_NO_V3
PROCESS_CALL(nvmlDeviceGetComputeRunningProcesses_v3, 'c', 1)
PROCESS_CALL(nvmlDeviceGetGraphicsRunningProcesses_v3, 'g', 1)
PROCESS_CALL(nvmlDeviceGetMPSComputeRunningProcesses_v3, 'm', 1)
#endif
#endif

/* -- MIG ------------------------------------------------------------------------------------- */
nvmlReturn_t nvmlDeviceGetMigMode(void *handle, unsigned int *current, unsigned int *pending) {
    DEVICE(d, handle);
    if (!current || !pending) return E_INVALID;
    if (d->parent) return E_NOT_SUPPORTED;
    *current = *pending = d->mig;
    return OK;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(void *handle, unsigned int *n) {
    DEVICE(d, handle);
    if (!n) return E_INVALID;
    if (d->parent) return E_NOT_SUPPORTED;
    *n = d->mig ? MAX_MIG : 0;
    return OK;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(void *handle, unsigned int j, void **mig) {
    DEVICE(d, handle);
    if (!mig) return E_INVALID;
    if (d->parent || !d->mig) return E_NOT_SUPPORTED;
    if (j >= MAX_MIG) return E_INVALID;
    if (j >= d->nmig) return E_NOT_FOUND;  /* an empty slot */
    *mig = &migs[d - gpus][j];
    return OK;
}

nvmlReturn_t nvmlDeviceIsMigDeviceHandle(void *handle, unsigned int *is_mig) {
    DEVICE(d, handle);
    if (!is_mig) return E_INVALID;
    *is_mig = d->parent != NULL;
    return OK;
}

nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(void *handle, void **parent) {
    DEVICE(d, handle);
    if (!parent) return E_INVALID;
    if (!d->parent) return E_INVALID;
    *parent = d->parent;
    return OK;
}
