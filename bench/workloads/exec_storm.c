/* Exec storm for heron's benchmark: runs /bin/true with argv "marker-TAG-I" N times, one after the
 * other (vfork+exec via posix_spawn, then wait), and prints the wall time in seconds. */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 20000;
    const char *tag = argc > 2 ? argv[2] : "t";
    char marker[160];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
        snprintf(marker, sizeof marker, "marker-%s-%ld", tag, i);
        char *child_argv[] = {"/bin/true", marker, NULL};
        pid_t pid;
        int status;
        if (posix_spawn(&pid, "/bin/true", NULL, NULL, child_argv, environ) != 0) {
            perror("posix_spawn");
            return 1;
        }
        if (waitpid(pid, &status, 0) < 0) {
            perror("waitpid");
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.6f\n", (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    return 0;
}
