/* Background pwrite thread; see writer.h. */
#include "writer.h"
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

struct us_writer {
    pthread_mutex_t mu;
    pthread_cond_t work;          /* a job was queued, or stop */
    pthread_cond_t finished;      /* a job completed */
    us_write_job *head, *tail;
    int stop;
    pthread_t thread;
    pid_t owner;                  /* the process whose thread this is */
};

static int write_all(us_write_job *j) {
    const char *p = (const char *)j->buf;
    size_t left = j->len;
    off_t pos = j->pos;
    while (left) {
        ssize_t n = pwrite(j->fd, p, left, pos);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (n == 0) return EIO;
        p += n;
        pos += n;
        left -= (size_t)n;
    }
    return 0;
}

static void *run(void *arg) {
    us_writer *w = (us_writer *)arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->head && !w->stop) pthread_cond_wait(&w->work, &w->mu);
        us_write_job *j = w->head;
        if (!j) break;  /* stop, and nothing left */
        w->head = j->next;
        if (!w->head) w->tail = NULL;
        pthread_mutex_unlock(&w->mu);
        int err = write_all(j);
        pthread_mutex_lock(&w->mu);
        j->err = err;
        j->done = 1;
        pthread_cond_broadcast(&w->finished);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

us_writer *us_writer_new(void) {
    us_writer *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->owner = getpid();
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->work, NULL);
    pthread_cond_init(&w->finished, NULL);
    int rc = pthread_create(&w->thread, NULL, run, w);
    if (rc) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->work);
        pthread_cond_destroy(&w->finished);
        free(w);
        errno = rc;
        return NULL;
    }
    return w;
}

void us_writer_free(us_writer *w) {
    if (!w) return;
    if (w->owner != getpid()) {
        /* A forked child's copy: the thread does not exist here and the
         * mutex may have been held at the fork. Leave it all alone. */
        return;
    }
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_signal(&w->work);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->work);
    pthread_cond_destroy(&w->finished);
    free(w);
}

void us_writer_submit(us_writer *w, us_write_job *job) {
    job->err = 0;
    job->done = 0;
    job->next = NULL;
    pthread_mutex_lock(&w->mu);
    if (w->tail) w->tail->next = job; else w->head = job;
    w->tail = job;
    pthread_cond_signal(&w->work);
    pthread_mutex_unlock(&w->mu);
}

int us_writer_wait(us_writer *w, us_write_job *job) {
    pthread_mutex_lock(&w->mu);
    while (!job->done) pthread_cond_wait(&w->finished, &w->mu);
    pthread_mutex_unlock(&w->mu);
    return job->err;
}
