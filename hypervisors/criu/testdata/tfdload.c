/*
 * tfdload: the workload of ckpt's timerfd tests (hypervisors/criu/timerfd_test.go)
 * and of the CRIU report in docs/upstream/criu-timerfd.md.
 *
 * It arms a periodic CLOCK_MONOTONIC timerfd (default 300 ms, relative) and
 * waits for it in epoll, as an event loop does. On every wakeup it prints
 *
 *   tick N read R efd E sig S ep P next SEC.NSEC
 *
 * N  expirations counted so far (the sum of what read(2) returned)
 * R  what this read(2) returned
 * E  the counter of an eventfd set to 42 at start (read and written back)
 * S  1 while SIGUSR1, blocked and raised once at start, is still pending
 * P  1 while the epoll set still holds the timerfd (EPOLL_CTL_ADD says EEXIST)
 * next  timerfd_gettime's it_value: the time to the next expiration
 *
 * "tfdload MS abs" arms it with TFD_TIMER_ABSTIME instead (first expiry now + MS).
 *
 * If the timer is restored disarmed, the lines stop. Build: gcc -static -O2.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long ms = argc > 1 ? atol(argv[1]) : 300;
	struct itimerspec its = {
		.it_interval = { ms / 1000, (ms % 1000) * 1000000 },
		.it_value = { ms / 1000, (ms % 1000) * 1000000 },
	};
	struct epoll_event ev = { .events = EPOLLIN };
	uint64_t total = 0, v = 42;
	sigset_t set;
	int tfd, efd, ep, flags = 0;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	if (sigprocmask(SIG_BLOCK, &set, NULL) || kill(getpid(), SIGUSR1)) {
		perror("SIGUSR1");
		return 1;
	}
	efd = eventfd(0, EFD_NONBLOCK);
	if (efd < 0 || write(efd, &v, sizeof(v)) != sizeof(v)) {
		perror("eventfd");
		return 1;
	}
	if (argc > 2 && !strcmp(argv[2], "abs")) {
		struct timespec now;

		clock_gettime(CLOCK_MONOTONIC, &now);
		flags = TFD_TIMER_ABSTIME;
		its.it_value.tv_sec += now.tv_sec;
		its.it_value.tv_nsec += now.tv_nsec;
		if (its.it_value.tv_nsec >= 1000000000) {
			its.it_value.tv_sec++;
			its.it_value.tv_nsec -= 1000000000;
		}
	}
	tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	if (tfd < 0 || timerfd_settime(tfd, flags, &its, NULL)) {
		perror("timerfd");
		return 1;
	}
	ep = epoll_create1(0);
	ev.data.fd = tfd;
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev)) {
		perror("epoll");
		return 1;
	}
	for (;;) {
		struct epoll_event out;
		struct itimerspec cur;
		uint64_t exp, e = 0;
		sigset_t pend;
		int n, in_set;

		n = epoll_wait(ep, &out, 1, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			perror("epoll_wait");
			return 1;
		}
		if (read(tfd, &exp, sizeof(exp)) != sizeof(exp))
			continue;
		total += exp;
		if (read(efd, &e, sizeof(e)) == sizeof(e))
			write(efd, &e, sizeof(e));
		sigpending(&pend);
		in_set = epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev) < 0 && errno == EEXIST;
		timerfd_gettime(tfd, &cur);
		dprintf(1, "tick %llu read %llu efd %llu sig %d ep %d next %ld.%09ld\n",
			(unsigned long long)total, (unsigned long long)exp,
			(unsigned long long)e, sigismember(&pend, SIGUSR1), in_set,
			(long)cur.it_value.tv_sec, cur.it_value.tv_nsec);
	}
}
