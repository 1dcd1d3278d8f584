/* The floor of a seccomp-notify supervisor on this machine: a minimal C
 * supervisor that answers a command's open/openat calls.  It decides
 * nothing and confines nothing (no policy, no root, no Landlock): it only
 * does the kernel-facing steps stockade's broker does, so that
 * bench/supervisor.py can show how much of the round trip is the
 * kernel's and the machine's, and how much is Python's.
 *
 *   c_supervisor MODE COMMAND [ARG...]
 *
 * MODE "broker": RECV, read the path (process_vm_readv), readlink the
 * dirfd or cwd for a relative path, ID_VALID, openat2 with
 * RESOLVE_NO_SYMLINKS (following them on ELOOP), ADDFD with SEND.
 * MODE "continue": RECV, read the path, readlink, ID_VALID, CONTINUE.
 * The supervisor waits in poll(2) on the listener, with
 * SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP set, as stockade's receiver does.
 * Prints the command's wall time in ms on stderr. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#define SYNC_WAKE_UP 1

static void send_fd(int sock, int fd) {
    char ctl[CMSG_SPACE(sizeof(int))];
    char byte = 'l';
    struct iovec io = {&byte, 1};
    struct msghdr m = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = ctl,
                       .msg_controllen = sizeof ctl};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    if (sendmsg(sock, &m, 0) != 1) _exit(126);
}

static int take_fd(int sock) {
    char ctl[CMSG_SPACE(sizeof(int))];
    char byte;
    struct iovec io = {&byte, 1};
    struct msghdr m = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = ctl,
                       .msg_controllen = sizeof ctl};
    if (recvmsg(sock, &m, 0) != 1 || !CMSG_FIRSTHDR(&m)) return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof fd);
    return fd;
}

static void child(int sock, char **argv) {
    struct sock_filter insns[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_openat, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_open, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
    };
    struct sock_fprog prog = {sizeof insns / sizeof insns[0], insns};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) _exit(126);
    int listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                           SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (listener < 0) _exit(126);
    send_fd(sock, listener);
    close(listener);
    close(sock);
    execvp(argv[0], argv);
    _exit(127);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: c_supervisor broker|continue COMMAND [ARG...]\n");
        return 2;
    }
    int broker = strcmp(argv[1], "broker") == 0;
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair)) return 1;
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    pid_t pid = fork();
    if (pid == 0) {
        close(pair[0]);
        child(pair[1], argv + 2);
    }
    close(pair[1]);
    int listener = take_fd(pair[0]);
    if (listener < 0) return 1;
    ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SYNC_WAKE_UP);
    struct seccomp_notif n;
    struct seccomp_notif_resp r;
    char path[PATH_MAX], full[2 * PATH_MAX], link[64];
    for (;;) {
        struct pollfd p = {listener, POLLIN, 0};
        if (poll(&p, 1, -1) < 0 && errno == EINTR) continue;
        if (!(p.revents & POLLIN)) break; /* POLLHUP: the command is gone */
        memset(&n, 0, sizeof n);
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &n)) continue;
        int at = AT_FDCWD, flags;
        unsigned long addr;
        if (n.data.nr == SYS_openat) {
            at = (int)n.data.args[0];
            addr = n.data.args[1];
            flags = (int)n.data.args[2];
        } else {
            addr = n.data.args[0];
            flags = (int)n.data.args[1];
        }
        struct iovec local = {path, 256}, remote = {(void *)addr, 256};
        if (process_vm_readv(n.pid, &local, 1, &remote, 1, 0) <= 0) path[0] = 0;
        path[255] = 0;
        if (path[0] != '/') {
            if (at == AT_FDCWD)
                snprintf(link, sizeof link, "/proc/%d/cwd", n.pid);
            else
                snprintf(link, sizeof link, "/proc/%d/fd/%d", n.pid, at);
            ssize_t len = readlink(link, full, PATH_MAX - 1);
            full[len < 0 ? 0 : len] = 0;
            strcat(full, "/");
            strcat(full, path);
        } else {
            strcpy(full, path);
        }
        memset(&r, 0, sizeof r);
        r.id = n.id;
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &n.id)) continue;
        if (!broker) {
            r.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
            ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &r);
            continue;
        }
        struct open_how how = {.flags = (flags & ~(O_CREAT | O_TMPFILE)) | O_CLOEXEC,
                               .resolve = RESOLVE_NO_SYMLINKS};
        int fd = syscall(SYS_openat2, AT_FDCWD, full, &how, sizeof how);
        if (fd < 0 && errno == ELOOP) {
            how.resolve = 0;
            fd = syscall(SYS_openat2, AT_FDCWD, full, &how, sizeof how);
        }
        if (fd < 0) {
            r.error = -errno;
            ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &r);
            continue;
        }
        struct seccomp_notif_addfd add = {.id = n.id, .flags = SECCOMP_ADDFD_FLAG_SEND,
                                          .srcfd = fd, .newfd_flags = flags & O_CLOEXEC};
        ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &add);
        close(fd);
    }
    int status;
    waitpid(pid, &status, 0);
    clock_gettime(CLOCK_MONOTONIC, &end);
    fprintf(stderr, "%.3f\n",
            (end.tv_sec - start.tv_sec) * 1e3 + (end.tv_nsec - start.tv_nsec) / 1e6);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
