/* The floor of a hop, for bench/proxy.py: the least a user-space process on the path can
 * do. Each client connection gets its own connection to the backend; bytes go across as
 * read, with no parsing, buffering or flow control. One thread, level-triggered epoll,
 * read and write, SCHED_BATCH: the proxy's relay (proxy/relay.c) waits and runs the same
 * way, so the difference between the two is what the relay does besides moving bytes.
 *
 *     hopfloor LISTEN_PATH BACKEND_PATH     (prints "ready" once listening)
 *
 * A measuring tool, not product code: a write that would block or a backend that refuses
 * ends the pair. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_FD 65536

static int peer[MAX_FD];

static int unix_socket(const char *path, int listening) {
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (s < 0 || strlen(path) >= sizeof a.sun_path)
        return -1;
    strcpy(a.sun_path, path);
    if (listening) {
        unlink(path);
        if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 128) < 0)
            return -1;
    } else if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
        close(s);
        return -1;
    }
    return s;
}

static void end_pair(int fd) {
    int other = peer[fd];
    peer[fd] = peer[other] = -1;
    close(fd);
    close(other);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: hopfloor LISTEN_PATH BACKEND_PATH\n");
        return 2;
    }
    struct sched_param batch = {0};
    sched_setscheduler(0, SCHED_BATCH, &batch);
    int lfd = unix_socket(argv[1], 1);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (lfd < 0 || ep < 0) {
        perror("hopfloor");
        return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    printf("ready\n");
    fflush(stdout);
    static char buf[1 << 16];
    for (;;) {
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
                int b = c < 0 ? -1 : unix_socket(argv[2], 0);
                if (c < 0 || b < 0 || c >= MAX_FD || b >= MAX_FD) {
                    if (c >= 0)
                        close(c);
                    if (b >= 0)
                        close(b);
                    continue;
                }
                peer[c] = b;
                peer[b] = c;
                ev.data.fd = c;
                epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                ev.data.fd = b;
                epoll_ctl(ep, EPOLL_CTL_ADD, b, &ev);
                continue;
            }
            if (peer[fd] < 0)
                continue;
            ssize_t got = read(fd, buf, sizeof buf);
            if (got < 0 && errno == EAGAIN)
                continue;
            ssize_t off = 0;
            while (got > 0 && off < got) {
                ssize_t put = write(peer[fd], buf + off, (size_t)(got - off));
                if (put <= 0)
                    break;
                off += put;
            }
            if (got <= 0 || off < got)
                end_pair(fd);
        }
    }
}
