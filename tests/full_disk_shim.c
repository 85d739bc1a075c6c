/* A disk that is full on demand, for tests: LD_PRELOAD this library and every write to a file
 * under $JAXCNN_FULL_DIR fails with ENOSPC ("No space left on device") while the file
 * $JAXCNN_FULL_TRIGGER exists, as the kernel answers when a filesystem fills up. Writes from
 * C++ (tensorstore, under Orbax) and from Python alike go through these libc functions.
 *
 *   cc -shared -fPIC -o full_disk_shim.so full_disk_shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static int full(int fd) {
    const char *dir = getenv("JAXCNN_FULL_DIR");
    const char *trigger = getenv("JAXCNN_FULL_TRIGGER");
    if (!dir || !trigger || access(trigger, F_OK) != 0) return 0;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = '\0';
    if (strncmp(path, dir, strlen(dir)) != 0) return 0;
    errno = ENOSPC;
    return 1;
}

#define NEXT(name) static __typeof__(name) *real; if (!real) real = dlsym(RTLD_NEXT, #name)

ssize_t write(int fd, const void *buf, size_t count) {
    NEXT(write);
    return full(fd) ? -1 : real(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    NEXT(pwrite);
    return full(fd) ? -1 : real(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    NEXT(pwrite64);
    return full(fd) ? -1 : real(fd, buf, count, offset);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    NEXT(writev);
    return full(fd) ? -1 : real(fd, iov, iovcnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    NEXT(pwritev);
    return full(fd) ? -1 : real(fd, iov, iovcnt, offset);
}

int fallocate(int fd, int mode, off_t offset, off_t len) {
    NEXT(fallocate);
    return full(fd) ? -1 : real(fd, mode, offset, len);
}
