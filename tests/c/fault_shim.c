/*
 * LD_PRELOAD shim for the example server's process-management tests: makes the system calls
 * fail or stall the way a loaded machine can, on request (environment variables, per
 * process). Writes a "shim: ..." line to stderr when it acts, so the test can wait for that
 * instead of sleeping.
 *
 *   SHIM_ACCEPT_EMFILE=N      the first N accept() calls of each worker fail with EMFILE
 *   SHIM_FORK_FAIL_AFTER=K    after K successful fork() calls in the parent, ...
 *   SHIM_FORK_FAIL=N          ... the next N fail with EAGAIN
 *   SHIM_CHILD_DELAY_MS=T     the first child forked after startup waits T ms before running
 *                             (the window in which a worker still has the parent's signals)
 *   SHIM_WAITPID_DELAY_MS=T   a blocking waitpid() waits T ms before blocking
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static long env(const char *name)
{
    const char *v = getenv(name);
    return v ? strtol(v, NULL, 10) : 0;
}

static int accept_calls;

int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    static int (*real)(int, struct sockaddr *, socklen_t *);
    if (!real)
        real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
    if (accept_calls < env("SHIM_ACCEPT_EMFILE")) {
        if (accept_calls++ == 0)
            fprintf(stderr, "shim: accept EMFILE in %d\n", (int)getpid());
        errno = EMFILE;
        return -1;
    }
    return real(fd, addr, len);
}

static int forks_ok, forks_failed, children_delayed;

pid_t fork(void)
{
    static pid_t (*real)(void);
    if (!real)
        real = (pid_t(*)(void))dlsym(RTLD_NEXT, "fork");
    long after = env("SHIM_FORK_FAIL_AFTER");
    if (forks_ok >= after && forks_failed < env("SHIM_FORK_FAIL")) {
        forks_failed++;
        fprintf(stderr, "shim: fork fails (%d)\n", forks_failed);
        errno = EAGAIN;
        return -1;
    }
    int delay_this = env("SHIM_CHILD_DELAY_MS") > 0 && forks_ok >= after && !children_delayed;
    pid_t p = real();
    if (p > 0) {
        forks_ok++;
        if (delay_this)
            children_delayed = 1;
    }
    if (p == 0 && delay_this) {
        accept_calls = 0;
        fprintf(stderr, "shim: child %d delayed\n", (int)getpid());
        poll(NULL, 0, (int)env("SHIM_CHILD_DELAY_MS"));
    }
    return p;
}

pid_t waitpid(pid_t pid, int *status, int options)
{
    static pid_t (*real)(pid_t, int *, int);
    if (!real)
        real = (pid_t(*)(pid_t, int *, int))dlsym(RTLD_NEXT, "waitpid");
    if (!(options & WNOHANG) && env("SHIM_WAITPID_DELAY_MS") > 0) {
        fprintf(stderr, "shim: waitpid delayed in %d\n", (int)getpid());
        poll(NULL, 0, (int)env("SHIM_WAITPID_DELAY_MS"));
    }
    return real(pid, status, options);
}
