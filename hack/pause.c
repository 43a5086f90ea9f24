/* The pod sandbox's "pause" process for hack/node.sh's containerd
 * (sandbox_image), built here because no image registry is reachable. Does
 * what Kubernetes' build/pause/linux/pause.c does: sleeps until SIGINT or
 * SIGTERM, and reaps the zombies it inherits as PID 1 of a pod that shares
 * its process namespace. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_exit_signal(int sig) { _exit(0); }

static void on_child(int sig) {
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
}

int main(int argc, char **argv) {
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		puts("pause (discoverd hack/pause.c)");
		return 0;
	}
	if (getpid() != 1)
		fprintf(stderr, "pause: warning: not PID 1\n");
	struct sigaction exit_action = {.sa_handler = on_exit_signal};
	struct sigaction child_action = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP};
	if (sigaction(SIGINT, &exit_action, NULL) < 0 || sigaction(SIGTERM, &exit_action, NULL) < 0 ||
	    sigaction(SIGCHLD, &child_action, NULL) < 0)
		return 1;
	for (;;)
		pause();
}
