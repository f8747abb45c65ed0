/*
 * loadgen: replay pre-generated StatsD datagrams to a loopback UDP port with sendmmsg.
 *
 *   loadgen --file F --port P [--host 127.0.0.1|::1] [--rate LINES_PER_S]
 *           [--lines N] [--datagrams N] [--seconds S] [--batch B]
 *
 * F holds datagrams, each a 4-byte little-endian length followed by that many bytes (what
 * bench/udp_bench.py writes).  They are sent in order, from the start again when the file
 * runs out, until --lines or --datagrams have been sent or --seconds have passed, whichever
 * comes first (at least one count is required; --seconds defaults to 60 and is capped at 600).
 * --rate paces by lines (the file's own lines per datagram), in bursts of at most --batch
 * datagrams; without it, or with 0, it sends as fast as the socket takes them.
 *
 * Only the loopback addresses 127.0.0.1 and ::1 are accepted: this is a benchmark tool, not
 * a traffic generator.  On exit it prints one line:
 *   loadgen: datagrams=D lines=L bytes=B seconds=T lines_per_s=R datagrams_per_s=Q errors=E
 * Exit status: 0 sent, 1 a send error stopped it, 2 bad usage or file.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 1024
#define MAX_SECONDS 600.0
#define MAX_DATAGRAM 65507

struct datagram {
    const unsigned char *data;
    uint32_t size;
    uint32_t lines;
};

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_until(double deadline) {
    struct timespec ts;
    ts.tv_sec = (time_t)deadline;
    ts.tv_nsec = (long)((deadline - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec += 1;
        ts.tv_nsec -= 1000000000L;
    }
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static int usage(const char *why) {
    fprintf(stderr, "loadgen: %s\n", why);
    fprintf(stderr,
            "usage: loadgen --file F --port P [--host 127.0.0.1|::1] [--rate LINES_PER_S]\n"
            "               [--lines N] [--datagrams N] [--seconds S] [--batch B]\n");
    return 2;
}

/* Non-empty lines in a datagram, as a StatsD server counts them. */
static uint32_t count_lines(const unsigned char *data, uint32_t size) {
    uint32_t lines = 0;
    int in_line = 0;
    for (uint32_t i = 0; i < size; i++) {
        if (data[i] == '\n') {
            lines += (uint32_t)in_line;
            in_line = 0;
        } else {
            in_line = 1;
        }
    }
    return lines + (uint32_t)in_line;
}

static int read_file(const char *path, unsigned char **buffer, struct datagram **out,
                     size_t *count) {
    FILE *file = fopen(path, "rb");
    if (file == NULL) {
        fprintf(stderr, "loadgen: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (fseek(file, 0, SEEK_END) != 0) {
        fclose(file);
        return -1;
    }
    long length = ftell(file);
    rewind(file);
    if (length <= 0) {
        fprintf(stderr, "loadgen: %s is empty\n", path);
        fclose(file);
        return -1;
    }
    unsigned char *data = malloc((size_t)length);
    if (data == NULL || fread(data, 1, (size_t)length, file) != (size_t)length) {
        fprintf(stderr, "loadgen: cannot read %s\n", path);
        free(data);
        fclose(file);
        return -1;
    }
    fclose(file);

    size_t capacity = 1024, n = 0, pos = 0;
    struct datagram *list = malloc(capacity * sizeof *list);
    while (list != NULL && pos + 4 <= (size_t)length) {
        uint32_t size = (uint32_t)data[pos] | (uint32_t)data[pos + 1] << 8 |
                        (uint32_t)data[pos + 2] << 16 | (uint32_t)data[pos + 3] << 24;
        pos += 4;
        if (size == 0 || size > MAX_DATAGRAM || pos + size > (size_t)length) {
            fprintf(stderr, "loadgen: %s: bad datagram length %u at byte %zu\n", path, size,
                    pos - 4);
            free(list);
            free(data);
            return -1;
        }
        if (n == capacity) {
            capacity *= 2;
            struct datagram *grown = realloc(list, capacity * sizeof *list);
            if (grown == NULL) {
                free(list);
                list = NULL;
                break;
            }
            list = grown;
        }
        list[n].data = data + pos;
        list[n].size = size;
        list[n].lines = count_lines(data + pos, size);
        n++;
        pos += size;
    }
    if (list == NULL || n == 0 || pos != (size_t)length) {
        fprintf(stderr, "loadgen: %s: no datagrams, out of memory or trailing bytes\n", path);
        free(list);
        free(data);
        return -1;
    }
    *buffer = data;
    *out = list;
    *count = n;
    return 0;
}

static int parse_number(const char *text, double *out) {
    char *end = NULL;
    errno = 0;
    double value = strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || !(value >= 0) || value > 1e15) {
        return -1;
    }
    *out = value;
    return 0;
}

int main(int argc, char **argv) {
    const char *path = NULL, *host = "127.0.0.1";
    double port = -1, rate = 0, max_lines = 0, max_datagrams = 0, seconds = 60, batch = 64;

    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (i + 1 >= argc) {
            return usage("every option takes a value");
        }
        const char *value = argv[++i];
        double *number = NULL;
        if (strcmp(flag, "--file") == 0) {
            path = value;
        } else if (strcmp(flag, "--host") == 0) {
            host = value;
        } else if (strcmp(flag, "--port") == 0) {
            number = &port;
        } else if (strcmp(flag, "--rate") == 0) {
            number = &rate;
        } else if (strcmp(flag, "--lines") == 0) {
            number = &max_lines;
        } else if (strcmp(flag, "--datagrams") == 0) {
            number = &max_datagrams;
        } else if (strcmp(flag, "--seconds") == 0) {
            number = &seconds;
        } else if (strcmp(flag, "--batch") == 0) {
            number = &batch;
        } else {
            return usage("unknown option");
        }
        if (number != NULL && parse_number(value, number) != 0) {
            return usage("a number option is not a non-negative number");
        }
    }
    if (path == NULL) {
        return usage("--file is required");
    }
    if (port < 1 || port > 65535 || port != (double)(int)port) {
        return usage("--port must be 1-65535");
    }
    if (max_lines <= 0 && max_datagrams <= 0) {
        return usage("give --lines or --datagrams: the run is bounded in count");
    }
    if (seconds <= 0 || seconds > MAX_SECONDS) {
        return usage("--seconds must be above 0 and at most 600");
    }
    if (batch < 1 || batch > MAX_BATCH) {
        return usage("--batch must be 1-1024");
    }

    /* Loopback only, spelled exactly: no names, no other addresses. */
    struct sockaddr_storage address;
    socklen_t address_size;
    memset(&address, 0, sizeof address);
    if (strcmp(host, "127.0.0.1") == 0) {
        struct sockaddr_in *v4 = (struct sockaddr_in *)&address;
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        address_size = sizeof *v4;
    } else if (strcmp(host, "::1") == 0) {
        struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&address;
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        v6->sin6_addr = in6addr_loopback;
        address_size = sizeof *v6;
    } else {
        fprintf(stderr, "loadgen: refusing %s: only 127.0.0.1 or ::1\n", host);
        return 2;
    }

    unsigned char *buffer = NULL;
    struct datagram *datagrams = NULL;
    size_t count = 0;
    if (read_file(path, &buffer, &datagrams, &count) != 0) {
        return 2;
    }

    int sock = socket(address.ss_family, SOCK_DGRAM, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&address, address_size) != 0) {
        fprintf(stderr, "loadgen: socket: %s\n", strerror(errno));
        return 2;
    }
    int sndbuf = 4 * 1024 * 1024;
    setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);

    size_t per_burst = (size_t)batch;
    if (rate > 0) {
        /* Bursts about every 0.5 ms at most, so pacing stays smooth at low rates. */
        double lines_per_datagram = 0;
        for (size_t i = 0; i < count; i++) {
            lines_per_datagram += datagrams[i].lines;
        }
        lines_per_datagram /= (double)count;
        double per_half_ms = rate / lines_per_datagram / 2000.0;
        if (per_half_ms < 1) {
            per_half_ms = 1;
        }
        if (per_half_ms < (double)per_burst) {
            per_burst = (size_t)per_half_ms;
        }
    }

    static struct mmsghdr messages[MAX_BATCH];
    static struct iovec vectors[MAX_BATCH];
    uint64_t sent = 0, lines = 0, bytes = 0, errors = 0;
    size_t next = 0;
    int status = 0;
    double started = now_seconds();
    double deadline = started + seconds;

    for (;;) {
        if ((max_lines > 0 && (double)lines >= max_lines) ||
            (max_datagrams > 0 && (double)sent >= max_datagrams)) {
            break;
        }
        double now = now_seconds();
        if (now >= deadline) {
            break;
        }
        if (rate > 0) {
            double due = started + (double)lines / rate;
            if (due > now) {
                sleep_until(due < deadline ? due : deadline);
                continue;
            }
        }
        /* Fill a burst, stopping at the count limits. */
        size_t n = 0;
        uint64_t burst_lines = 0;
        while (n < per_burst) {
            if (max_datagrams > 0 && (double)(sent + n) >= max_datagrams) {
                break;
            }
            if (max_lines > 0 && (double)(lines + burst_lines) >= max_lines) {
                break;
            }
            const struct datagram *d = &datagrams[(next + n) % count];
            vectors[n].iov_base = (void *)d->data;
            vectors[n].iov_len = d->size;
            memset(&messages[n], 0, sizeof messages[n]);
            messages[n].msg_hdr.msg_iov = &vectors[n];
            messages[n].msg_hdr.msg_iovlen = 1;
            burst_lines += d->lines;
            n++;
        }
        if (n == 0) {
            break;
        }
        int done = sendmmsg(sock, messages, (unsigned int)n, 0);
        if (done < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == ENOBUFS) {
                continue;
            }
            /* ECONNREFUSED: nobody listens (an ICMP error from an earlier datagram). */
            errors++;
            fprintf(stderr, "loadgen: sendmmsg: %s\n", strerror(errno));
            status = 1;
            break;
        }
        for (int i = 0; i < done; i++) {
            const struct datagram *d = &datagrams[(next + (size_t)i) % count];
            lines += d->lines;
            bytes += d->size;
        }
        sent += (uint64_t)done;
        next = (next + (size_t)done) % count;
    }

    double elapsed = now_seconds() - started;
    if (elapsed <= 0) {
        elapsed = 1e-9;
    }
    printf("loadgen: datagrams=%llu lines=%llu bytes=%llu seconds=%.6f lines_per_s=%.0f "
           "datagrams_per_s=%.0f errors=%llu\n",
           (unsigned long long)sent, (unsigned long long)lines, (unsigned long long)bytes,
           elapsed, (double)lines / elapsed, (double)sent / elapsed, (unsigned long long)errors);
    close(sock);
    free(datagrams);
    free(buffer);
    return status;
}
