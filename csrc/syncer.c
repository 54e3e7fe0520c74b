/* Event-loop sync thread; see syncer.h. */
#define _GNU_SOURCE
#include "syncer.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct us_syncer {
    pthread_mutex_t mu;
    pthread_cond_t work;
    int *fds, *errs;
    int n, cap;
    int state;            /* 0 idle, 1 submitted, 2 done (result not taken) */
    int stop;
    int notify_fd;
    pthread_t thread;
    pid_t owner;
};

void us_sync_round(const int *fds, int *errs, int n, int close_them) {
    for (int i = 0; i < n; i++) {
#if defined(__linux__) && defined(SYNC_FILE_RANGE_WRITE)
        (void)sync_file_range(fds[i], 0, 0, SYNC_FILE_RANGE_WRITE);
#endif
    }
    for (int i = 0; i < n; i++) {
        int rc;
        do rc = fdatasync(fds[i]); while (rc != 0 && errno == EINTR);
        errs[i] = rc == 0 ? 0 : errno;
    }
    if (close_them)
        for (int i = 0; i < n; i++) (void)close(fds[i]);
}

static void *run(void *arg) {
    us_syncer *s = (us_syncer *)arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (s->state != 1 && !s->stop) pthread_cond_wait(&s->work, &s->mu);
        if (s->state != 1) break;  /* stop, nothing submitted */
        pthread_mutex_unlock(&s->mu);
        us_sync_round(s->fds, s->errs, s->n, 1);  /* fds/errs/n are ours until state 2 */
        pthread_mutex_lock(&s->mu);
        s->state = 2;
        char b = 1;
        ssize_t w;
        do w = write(s->notify_fd, &b, 1); while (w < 0 && errno == EINTR);
        /* EAGAIN: the pipe is full of earlier notifications; one is enough. */
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

us_syncer *us_syncer_new(int notify_fd) {
    us_syncer *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->notify_fd = notify_fd;
    s->owner = getpid();
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work, NULL);
    int rc = pthread_create(&s->thread, NULL, run, s);
    if (rc) {
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->work);
        free(s);
        errno = rc;
        return NULL;
    }
    return s;
}

int us_syncer_submit(us_syncer *s, const int *fds, int n) {
    pthread_mutex_lock(&s->mu);
    if (s->state != 0 || s->stop) {
        pthread_mutex_unlock(&s->mu);
        return EBUSY;
    }
    if (n > s->cap) {
        int cap = n < 16 ? 16 : n;
        int *f = malloc(sizeof(int) * 2 * (size_t)cap);
        if (!f) {
            pthread_mutex_unlock(&s->mu);
            return ENOMEM;
        }
        free(s->fds);
        s->fds = f;
        s->errs = f + cap;
        s->cap = cap;
    }
    memcpy(s->fds, fds, sizeof(int) * (size_t)n);
    s->n = n;
    s->state = 1;
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

int us_syncer_take(us_syncer *s, int *errs, int n) {
    pthread_mutex_lock(&s->mu);
    if (s->state != 2) {
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    int k = s->n < n ? s->n : n;
    memcpy(errs, s->errs, sizeof(int) * (size_t)k);
    s->state = 0;
    pthread_mutex_unlock(&s->mu);
    return k;
}

void us_syncer_free(us_syncer *s) {
    if (!s) return;
    if (s->owner != getpid()) return;  /* a forked child's copy: no thread here */
    pthread_mutex_lock(&s->mu);
    s->stop = 1;                        /* a submitted round still runs first */
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->work);
    free(s->fds);
    free(s);
}
