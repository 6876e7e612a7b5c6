/* lcchat: a small program on Librecast's channel API, as an application
 * writer would use it. It never names an interface.
 *   lcchat recv CHANNEL COUNT   join CHANNEL, print "ready", then print
 *                               each message until COUNT have arrived
 *   lcchat send CHANNEL COUNT   send COUNT messages "message N", 20 a second
 */
#include <librecast.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char *argv[])
{
	if (argc != 4) {
		fprintf(stderr, "usage: lcchat recv|send CHANNEL COUNT\n");
		return 2;
	}
	int count = atoi(argv[3]);
	lc_ctx_t *ctx = lc_ctx_new();
	lc_socket_t *sock = lc_socket_new(ctx);
	lc_channel_t *chan = lc_channel_new(ctx, argv[2]);
	if (!ctx || !sock || !chan || lc_channel_bind(sock, chan)) {
		perror("librecast setup");
		return 1;
	}
	if (!strcmp(argv[1], "recv")) {
		if (lc_channel_join(chan)) {
			perror("lc_channel_join");
			return 1;
		}
		printf("ready\n");
		fflush(stdout);
		alarm(20);
		char buf[1500];
		for (int got = 0; got < count;) {
			ssize_t n = lc_socket_recv(sock, buf, sizeof buf - 1, 0);
			if (n < 0) {
				perror("lc_socket_recv");
				return 1;
			}
			buf[n] = 0;
			if (strncmp(buf, "message ", 8)) continue;
			printf("got %s\n", buf);
			fflush(stdout);
			got++;
		}
	} else {
		char msg[64];
		for (int i = 0; i < count; i++) {
			int len = snprintf(msg, sizeof msg, "message %d", i);
			if (lc_channel_send(chan, msg, len, 0) < 0) {
				perror("lc_channel_send");
				return 1;
			}
			usleep(50000);
		}
	}
	lc_ctx_free(ctx);
	return 0;
}
