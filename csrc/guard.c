/* SIGBUS guard; see guard.h. The handler only reads a fixed table with atomic
 * loads and calls mmap(), which is a plain system call here. */
#define _GNU_SOURCE
#include "guard.h"
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SLOTS 65536

static uintptr_t starts[SLOTS];   /* 0 = free */
static uintptr_t ends[SLOTS];
static size_t high;               /* slots in use are all below this */
static uint64_t hits;
static struct sigaction previous;
static int installed;

static int ours(uintptr_t a) {
    size_t n = __atomic_load_n(&high, __ATOMIC_ACQUIRE);
    for (size_t i = 0; i < n; i++) {
        uintptr_t s = __atomic_load_n(&starts[i], __ATOMIC_ACQUIRE);
        if (s && a >= s && a < __atomic_load_n(&ends[i], __ATOMIC_RELAXED)) return 1;
    }
    return 0;
}

static void on_sigbus(int sig, siginfo_t *si, void *ctx) {
    uintptr_t a = (uintptr_t)si->si_addr;
    if (ours(a)) {
        long page = sysconf(_SC_PAGESIZE);
        void *p = (void *)(a & ~(uintptr_t)(page - 1));
        if (mmap(p, (size_t)page, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0) != MAP_FAILED) {
            __atomic_add_fetch(&hits, 1, __ATOMIC_RELAXED);
            return;  /* the faulting access now reads zeros */
        }
    }
    if (previous.sa_flags & SA_SIGINFO) {
        previous.sa_sigaction(sig, si, ctx);
        return;
    }
    if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(sig);
        return;
    }
    /* Default action: restore it and let the fault happen again. */
    signal(sig, SIG_DFL);
}

int us_guard_install(void) {
    if (installed) return 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &previous) != 0) return errno;
    installed = 1;
    return 0;
}

/* Callers serialize add/remove (the GIL); only the handler runs concurrently. */
int us_guard_add(const void *start, size_t len) {
    size_t i;
    for (i = 0; i < high; i++)
        if (__atomic_load_n(&starts[i], __ATOMIC_RELAXED) == 0) break;
    if (i == SLOTS) return -1;
    __atomic_store_n(&ends[i], (uintptr_t)start + len, __ATOMIC_RELAXED);
    __atomic_store_n(&starts[i], (uintptr_t)start, __ATOMIC_RELEASE);
    if (i == high) __atomic_store_n(&high, i + 1, __ATOMIC_RELEASE);
    return 0;
}

void us_guard_remove(const void *start) {
    for (size_t i = 0; i < high; i++) {
        if (__atomic_load_n(&starts[i], __ATOMIC_RELAXED) == (uintptr_t)start) {
            __atomic_store_n(&starts[i], 0, __ATOMIC_RELEASE);
            return;
        }
    }
}

uint64_t us_guard_hits(void) { return __atomic_load_n(&hits, __ATOMIC_RELAXED); }
