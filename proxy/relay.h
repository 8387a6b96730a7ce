/* The C relay's API (proxy/relay.c); proxy/relay_build.py feeds this file to cffi as is. */
typedef struct relay relay;

/* Written on the notify pipe, where the relay otherwise announces the fd of each new
 * socketpair for the splice: closing, the relay carries no call any more. */
#define RELAY_DRAINED -1

relay *relay_new(int listen_fd, int notify_fd);
int relay_add_process(relay *r, const char *name);
int relay_add_replica(relay *r, int proc, const char *path);
int relay_add_route(relay *r, const char *service, int proc);
int relay_know(relay *r, const char *ns, size_t n);
void relay_forget(relay *r, const char *ns, size_t n);
void relay_set_closing(relay *r);
int relay_open_streams(relay *r);
int relay_run(relay *r);
void relay_stop(relay *r);
void relay_free(relay *r);
