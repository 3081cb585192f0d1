/*
 * A bare two-process ring in C, the cross-check of `dmabuf bench`'s
 * `ideal` (see docs/benchmarks.md, "the ideal in C"): one memfd holds a
 * control page and N buffers; the producer writes the bench's pattern
 * (byte i of item seq is (i * 31 + seq) mod 256, after an 8-byte stamp)
 * into buffer head % N and publishes head + 1; the consumer checks buffer
 * tail % N and publishes tail + 1. A side with nothing to do spins 5 us
 * (the consumer only while items come less than 50 us apart), then raises
 * its waiting word and sleeps in FUTEX_WAIT; the other side wakes it only
 * when it sees the word raised. No library, no validation, no fences.
 *
 *   cc -O2 -march=native -o ideal-ring scripts/ideal-ring.c
 *   ./ideal-ring SIZE BUFFERS SECONDS [pieces]
 *
 * Prints one JSON line: GiB/s from the producer's first write to the
 * consumer's last check. With `pieces`, the pattern is copied and compared
 * 4 KiB at a time (one piece built per item); without, 256 bytes at a
 * time (`dmabuf bench`'s ideal now fills the whole item with 32-byte
 * vector stores, then stamps it). The buffers are touched before the
 * clock starts. Each side reads the clock once per item (the producer's
 * stamp, the consumer's arrival, which also says whether items come close
 * together), plus while a wait that does not end at once spins, and once
 * every 64 items for the producer's time limit.
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SPIN_NS 5000
#define BUSY_GAP_NS 50000
#define PIECE 4096
#define CHECK_EVERY 64

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + t.tv_nsec;
}

struct ctl {
	_Alignas(64) _Atomic uint64_t head;
	_Alignas(64) _Atomic uint64_t tail;
	_Alignas(64) _Atomic uint64_t end;
	_Alignas(64) _Atomic uint32_t producer_waits;
	_Alignas(64) _Atomic uint32_t consumer_waits;
	_Alignas(64) _Atomic uint64_t consumer_end_ns;
	_Atomic uint64_t bad;
};

static void sleep_on(_Atomic uint32_t *w)
{
	struct timespec ts = { 0, 100000000 };
	syscall(SYS_futex, w, FUTEX_WAIT, 1, &ts, 0, 0);
}

static void wake(_Atomic uint32_t *w)
{
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(w, memory_order_relaxed) == 1 && atomic_exchange(w, 0) == 1)
		syscall(SYS_futex, w, FUTEX_WAKE, 1, 0, 0, 0);
}

/* The item's pattern over `len` bytes: one 256-byte block, or a piece of 16. */
static void pattern(uint8_t *p, size_t len, uint64_t seq)
{
	for (size_t i = 0; i < 256; i++)
		p[i] = (uint8_t)(i * 31 + seq);
	for (size_t o = 256; o < len; o += 256)
		memcpy(p + o, p, 256);
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s SIZE BUFFERS SECONDS [pieces]\n", argv[0]);
		return 2;
	}
	size_t size = strtoull(argv[1], 0, 0), n = strtoull(argv[2], 0, 0);
	double secs = atof(argv[3]);
	size_t unit = argc > 4 ? PIECE : 256;
	if (size <= 8 || n == 0 || secs <= 0) {
		fprintf(stderr, "SIZE must exceed 8, BUFFERS and SECONDS be positive\n");
		return 2;
	}
	size_t len = 4096 + size * n;
	int fd = memfd_create("ideal-ring", 0);
	if (fd < 0 || ftruncate(fd, len) < 0) {
		perror("memfd");
		return 1;
	}
	uint8_t *m = mmap(0, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	struct ctl *c = (struct ctl *)m;
	uint8_t *bufs = m + 4096;
	atomic_store(&c->end, UINT64_MAX);
	memset(bufs, 0, size * n);
	static uint8_t p[PIECE];
	pid_t pid = fork();
	if (pid == 0) {
		uint64_t tail = 0, last = 0;
		int busy = 1;
		for (;;) {
			uint64_t start = 0, h;
			for (;;) {
				h = atomic_load_explicit(&c->head, memory_order_acquire);
				if (h > tail || atomic_load_explicit(&c->end, memory_order_acquire) == tail)
					break;
				if (!start)
					start = now_ns();
				if (busy && now_ns() - start < SPIN_NS)
					continue;
				atomic_store(&c->consumer_waits, 1);
				atomic_thread_fence(memory_order_seq_cst);
				h = atomic_load_explicit(&c->head, memory_order_acquire);
				if (h > tail || atomic_load_explicit(&c->end, memory_order_acquire) == tail) {
					atomic_store_explicit(&c->consumer_waits, 0, memory_order_relaxed);
					break;
				}
				sleep_on(&c->consumer_waits);
			}
			h = atomic_load_explicit(&c->head, memory_order_acquire);
			if (h == tail)
				break;
			while (tail < h) {
				uint64_t seq = tail + 1;
				uint8_t *b = bufs + (tail % n) * size;
				pattern(p, unit, seq);
				for (size_t o = 8; o < size; o += unit) {
					size_t k = size - o < unit ? size - o : unit;
					if (memcmp(b + o, p, k))
						atomic_store(&c->bad, seq);
				}
				tail++;
				uint64_t t = now_ns();
				busy = last == 0 || t - last < BUSY_GAP_NS;
				last = t;
				atomic_store_explicit(&c->tail, tail, memory_order_release);
				wake(&c->producer_waits);
			}
		}
		atomic_store(&c->consumer_end_ns, now_ns());
		_exit(0);
	}
	uint64_t head = 0, t0 = now_ns(), until = t0 + (uint64_t)(secs * 1e9);
	/* The clock is read for the time limit every CHECK_EVERY items. */
	while (head % CHECK_EVERY || now_ns() < until) {
		uint64_t start = 0;
		for (;;) {
			if (head - atomic_load_explicit(&c->tail, memory_order_acquire) < n)
				break;
			if (!start)
				start = now_ns();
			if (now_ns() - start < SPIN_NS)
				continue;
			atomic_store(&c->producer_waits, 1);
			atomic_thread_fence(memory_order_seq_cst);
			if (head - atomic_load_explicit(&c->tail, memory_order_acquire) < n) {
				atomic_store_explicit(&c->producer_waits, 0, memory_order_relaxed);
				break;
			}
			sleep_on(&c->producer_waits);
		}
		uint8_t *b = bufs + (head % n) * size;
		pattern(p, unit, head + 1);
		for (size_t o = 8; o < size; o += unit) {
			size_t k = size - o < unit ? size - o : unit;
			memcpy(b + o, p, k);
		}
		uint64_t stamp = now_ns();
		memcpy(b, &stamp, 8);
		head++;
		atomic_store_explicit(&c->head, head, memory_order_release);
		wake(&c->consumer_waits);
	}
	atomic_store_explicit(&c->end, head, memory_order_release);
	wake(&c->consumer_waits);
	waitpid(pid, 0, 0);
	double dt = (atomic_load(&c->consumer_end_ns) - t0) / 1e9;
	printf("{\"size\":%zu,\"buffers\":%zu,\"pieces\":%s,\"items\":%lu,\"gib_s\":%.3f,\"bad\":%lu}\n",
	       size, n, unit == PIECE ? "true" : "false", (unsigned long)head,
	       (double)head * size / dt / (1 << 30), (unsigned long)atomic_load(&c->bad));
	return atomic_load(&c->bad) != 0;
}
