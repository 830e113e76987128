/* faultshim: an LD_PRELOAD library for the fault-injection and power-loss tests.
 *
 * It watches the calls LevelDB (and the engine) make on files under one directory, FS_ROOT,
 * and can do two things at a chosen call: fail it (an I/O error, or a short write followed by
 * a full disk) or kill the process with SIGKILL, just before or just after the call. It also
 * writes a journal (FS_LOG, outside FS_ROOT) from which a test rebuilds what a disk would hold
 * after a power loss at the kill: each file's synced length, and the directory listings at
 * every sync. Files the process unlinks or renames over are kept alive as hard links in FS_KEEP
 * so their synced bytes can still be read. Writes to FS_ACK_FD (the pipe that carries the
 * acknowledgements) go into the same journal, so the order "sync, then ack" can be checked.
 *
 * Environment (all optional except FS_ROOT):
 *   FS_ROOT   directory whose files are watched (absolute, no trailing slash)
 *   FS_LOG    journal file
 *   FS_KEEP   directory (same file system as FS_ROOT) for the hard links
 *   FS_ACK_FD fd whose writes are journaled as acknowledgements
 *   FS_FAULT  OP:N:ACTION[:sticky]  OP write|sync|create|rename|any; N counts that OP's
 *             watched calls from 1; ACTION ENOSPC|EIO|short|kill|killafter; sticky: every
 *             later call of OP fails the same way (a disk that stays full)
 *   FS_ARM    SUFFIX:K  FS_FAULT counts only after the K-th new file whose name ends with
 *             SUFFIX was created (e.g. ".log:2": after LevelDB switched to its second log)
 *   FS_SLOW   SUFFIX:MS every sync of a file whose name ends with SUFFIX first waits MS
 *             milliseconds (a slow disk for LevelDB's tables: the window between a log switch
 *             and the manifest sync that follows the table is held open)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

enum op { OP_WRITE, OP_SYNC, OP_CREATE, OP_RENAME, OP_ANY, N_OPS };
static const char *op_names[N_OPS] = {"write", "sync", "create", "rename", "any"};
enum action { A_NONE, A_ERRNO, A_SHORT, A_KILL, A_KILLAFTER };

#define MAX_FD 65536
static unsigned char watched[MAX_FD], slow[MAX_FD];
static char slow_suffix[64];
static long slow_ms;
static char root[PATH_MAX];
static size_t root_len;
static char keep[PATH_MAX];
static int log_fd = -1, ack_fd = -1;
static int fault_op = -1, fault_errno, fault_sticky, fault_action = A_NONE;
static long fault_n;
static long counts[N_OPS];
static char arm_suffix[64];
static long arm_k, arm_seen;
static int short_pending; /* a short write happened: the next write fails with ENOSPC */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int ready;

static ssize_t (*real_write)(int, const void *, size_t);
static int (*real_fsync)(int), (*real_fdatasync)(int), (*real_close)(int);
static int (*real_open)(const char *, int, ...), (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...), (*real_openat64)(int, const char *, int, ...);
static int (*real_rename)(const char *, const char *), (*real_unlink)(const char *);
static int (*real_renameat)(int, const char *, int, const char *), (*real_unlinkat)(int, const char *, int);

static void raw_write(const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = syscall(SYS_write, log_fd, s, n);
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

static void journal(const char *fmt, ...) {
    if (log_fd < 0) return;
    char buf[PATH_MAX * 2 + 128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0) raw_write(buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

__attribute__((constructor)) static void init(void) {
    real_write = dlsym(RTLD_NEXT, "write");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_close = dlsym(RTLD_NEXT, "close");
    real_open = dlsym(RTLD_NEXT, "open");
    real_open64 = dlsym(RTLD_NEXT, "open64");
    real_openat = dlsym(RTLD_NEXT, "openat");
    real_openat64 = dlsym(RTLD_NEXT, "openat64");
    real_rename = dlsym(RTLD_NEXT, "rename");
    real_renameat = dlsym(RTLD_NEXT, "renameat");
    real_unlink = dlsym(RTLD_NEXT, "unlink");
    real_unlinkat = dlsym(RTLD_NEXT, "unlinkat");
    const char *r = getenv("FS_ROOT");
    if (!r || !*r) return;
    snprintf(root, sizeof root, "%s", r);
    root_len = strlen(root);
    const char *k = getenv("FS_KEEP");
    if (k) snprintf(keep, sizeof keep, "%s", k);
    const char *l = getenv("FS_LOG");
    if (l) log_fd = (int)syscall(SYS_openat, AT_FDCWD, l, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    const char *a = getenv("FS_ACK_FD");
    if (a) ack_fd = atoi(a);
    const char *sl = getenv("FS_SLOW");
    if (sl) sscanf(sl, "%63[^:]:%ld", slow_suffix, &slow_ms);
    const char *arm = getenv("FS_ARM");
    if (arm) sscanf(arm, "%63[^:]:%ld", arm_suffix, &arm_k);
    const char *f = getenv("FS_FAULT");
    if (f) {
        char opn[16], act[16], mode[16] = "";
        if (sscanf(f, "%15[^:]:%ld:%15[^:]:%15s", opn, &fault_n, act, mode) >= 3) {
            for (int i = 0; i < N_OPS; i++)
                if (!strcmp(opn, op_names[i])) fault_op = i;
            fault_sticky = !strcmp(mode, "sticky");
            if (!strcmp(act, "ENOSPC")) fault_action = A_ERRNO, fault_errno = ENOSPC;
            else if (!strcmp(act, "EIO")) fault_action = A_ERRNO, fault_errno = EIO;
            else if (!strcmp(act, "short")) fault_action = A_SHORT;
            else if (!strcmp(act, "kill")) fault_action = A_KILL;
            else if (!strcmp(act, "killafter")) fault_action = A_KILLAFTER;
        }
        if (fault_op < 0 || fault_action == A_NONE) {
            static const char msg[] = "faultshim: bad FS_FAULT\n";
            syscall(SYS_write, 2, msg, sizeof msg - 1);
            _exit(99);
        }
    }
    ready = 1;
}

/* the absolute form of a path (not resolving links): enough for the paths the engine uses */
static int absolute(int dirfd, const char *p, char *out) {
    if (p[0] == '/') return snprintf(out, PATH_MAX, "%s", p) < PATH_MAX;
    char base[PATH_MAX];
    if (dirfd == AT_FDCWD) {
        if (!getcwd(base, sizeof base)) return 0;
    } else {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t n = readlink(link, base, sizeof base - 1);
        if (n < 0) return 0;
        base[n] = 0;
    }
    return snprintf(out, PATH_MAX, "%s/%s", base, p) < PATH_MAX;
}

static int under_root(const char *abs) {
    return ready && !strncmp(abs, root, root_len) && (abs[root_len] == '/' || abs[root_len] == 0);
}

static void kill_now(const char *why) {
    journal("K %s\n", why);
    syscall(SYS_kill, getpid(), SIGKILL);
}

/* Count one watched call of `op`; the action to take for it (A_NONE: do the real call). */
static int decide(int op) {
    pthread_mutex_lock(&mu);
    if (arm_seen < arm_k) {
        pthread_mutex_unlock(&mu);
        return A_NONE;
    }
    long n = ++counts[op];
    long any = ++counts[OP_ANY];
    pthread_mutex_unlock(&mu);
    long mine = fault_op == OP_ANY ? any : (fault_op == op ? n : 0);
    if (!mine) return A_NONE;
    if (mine == fault_n || (fault_sticky && mine > fault_n && fault_action == A_ERRNO)) return fault_action;
    return A_NONE;
}

/* Before and after an action: kill, or set errno. Returns 1 if the call must fail. */
static int before(int action, const char *what) {
    if (action == A_KILL) kill_now(what);
    if (action == A_ERRNO) {
        journal("F %s %d\n", what, fault_errno);
        errno = fault_errno;
        return 1;
    }
    return 0;
}

static void after(int action, const char *what) {
    if (action == A_KILLAFTER) kill_now(what);
}

/* One directory's entries, journaled as "D <dir inode> <entry inode> <d|f> <name>". */
static void list_dir(const char *path, int depth) {
    DIR *d = opendir(path);
    if (!d) return;
    struct stat ds;
    if (fstat(dirfd(d), &ds) != 0) {
        closedir(d);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        int is_dir = e->d_type == DT_DIR;
        journal("D %lu %lu %c %s\n", (unsigned long)ds.st_ino, (unsigned long)e->d_ino, is_dir ? 'd' : 'f',
                e->d_name);
        if (is_dir && depth < 3) {
            char sub[PATH_MAX];
            if (snprintf(sub, sizeof sub, "%s/%s", path, e->d_name) < (int)sizeof sub) list_dir(sub, depth + 1);
        }
    }
    closedir(d);
}

/* Keep the inode behind `abs` alive in FS_KEEP before it is unlinked or renamed over. */
static void keep_alive(const char *abs) {
    if (!*keep) return;
    struct stat st;
    if (stat(abs, &st) != 0 || !S_ISREG(st.st_mode)) return;
    char dst[PATH_MAX + 32];
    snprintf(dst, sizeof dst, "%s/%lu", keep, (unsigned long)st.st_ino);
    link(abs, dst);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return k && n >= k && !strcmp(s + n - k, suffix);
}

static int open_common(int dirfd, const char *path, int flags, mode_t mode, int at, int is64) {
    char abs[PATH_MAX];
    int watch = path && absolute(dirfd, path, abs) && under_root(abs);
    int action = A_NONE;
    if (watch && (flags & O_CREAT)) {
        struct stat st;
        if (stat(abs, &st) != 0) {
            action = decide(OP_CREATE);
            if (ends_with(abs, arm_suffix)) {
                pthread_mutex_lock(&mu);
                arm_seen++;
                pthread_mutex_unlock(&mu);
            }
        }
        if (before(action, "create")) return -1;
    }
    int fd;
    if (at) fd = (is64 ? real_openat64 : real_openat)(dirfd, path, flags, mode);
    else fd = (is64 ? real_open64 : real_open)(path, flags, mode);
    if (fd >= 0 && fd < MAX_FD) {
        watched[fd] = (unsigned char)watch;
        slow[fd] = (unsigned char)(watch && ends_with(abs, slow_suffix));
        if (watch) {
            struct stat st;
            fstat(fd, &st);
            journal("O %lu %d %s\n", (unsigned long)st.st_ino, fd, abs);
        }
    }
    after(action, "create");
    return fd;
}

#define OPEN_MODE(flags) \
    mode_t mode = 0; \
    if ((flags) & (O_CREAT | O_TMPFILE)) { \
        va_list ap; \
        va_start(ap, flags); \
        mode = (mode_t)va_arg(ap, int); \
        va_end(ap); \
    }

int open(const char *path, int flags, ...) {
    OPEN_MODE(flags);
    return open_common(AT_FDCWD, path, flags, mode, 0, 0);
}
int open64(const char *path, int flags, ...) {
    OPEN_MODE(flags);
    return open_common(AT_FDCWD, path, flags, mode, 0, 1);
}
int openat(int dirfd, const char *path, int flags, ...) {
    OPEN_MODE(flags);
    return open_common(dirfd, path, flags, mode, 1, 0);
}
int openat64(int dirfd, const char *path, int flags, ...) {
    OPEN_MODE(flags);
    return open_common(dirfd, path, flags, mode, 1, 1);
}

int close(int fd) {
    if (fd >= 0 && fd < MAX_FD) watched[fd] = slow[fd] = 0;
    return real_close(fd);
}

ssize_t write(int fd, const void *buf, size_t n) {
    if (fd >= 0 && fd == ack_fd && log_fd >= 0 && n > 0) {
        /* journaled before the real write: a sync journaled earlier returned before this ack left */
        pthread_mutex_lock(&mu);
        raw_write("A ", 2);
        raw_write(buf, n);
        if (((const char *)buf)[n - 1] != '\n') raw_write("\n", 1);
        pthread_mutex_unlock(&mu);
        return real_write(fd, buf, n);
    }
    if (fd < 0 || fd >= MAX_FD || !watched[fd]) return real_write(fd, buf, n);
    if (short_pending) {
        short_pending = 0;
        journal("F write %d\n", ENOSPC);
        errno = ENOSPC;
        return -1;
    }
    int action = decide(OP_WRITE);
    if (action == A_SHORT && n > 1) {
        short_pending = 1;
        journal("F short %zu\n", n / 2);
        return real_write(fd, buf, n / 2);
    }
    if (before(action, "write")) return -1;
    ssize_t w = real_write(fd, buf, n);
    after(action, "write");
    return w;
}

static int sync_common(int fd, int data_only) {
    if (fd < 0 || fd >= MAX_FD || !watched[fd]) return data_only ? real_fdatasync(fd) : real_fsync(fd);
    if (slow[fd]) {
        struct timespec ts = {slow_ms / 1000, (slow_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    int action = decide(OP_SYNC);
    if (before(action, "sync")) return -1;
    if (log_fd < 0) return data_only ? real_fdatasync(fd) : real_fsync(fd);
    /* The size and the listings are taken before the sync (all it is sure to cover) and the block
     * is closed once it returned; the lock keeps blocks whole (it serialises syncs: tests only). */
    pthread_mutex_lock(&mu);
    struct stat st;
    fstat(fd, &st);
    journal("S %lu %lld %c\n", (unsigned long)st.st_ino, (long long)st.st_size, S_ISDIR(st.st_mode) ? 'd' : 'f');
    list_dir(root, 0);
    int rc = data_only ? real_fdatasync(fd) : real_fsync(fd);
    int saved = errno;
    journal("E %d\n", rc == 0 ? 0 : saved);
    pthread_mutex_unlock(&mu);
    errno = saved;
    after(action, "sync");
    return rc;
}

int fsync(int fd) { return sync_common(fd, 0); }
int fdatasync(int fd) { return sync_common(fd, 1); }

static int rename_common(int olddir, const char *old, int newdir, const char *new, int at) {
    char a[PATH_MAX], b[PATH_MAX];
    int watch = absolute(olddir, old, a) && absolute(newdir, new, b) && (under_root(a) || under_root(b));
    int action = watch ? decide(OP_RENAME) : A_NONE;
    if (before(action, "rename")) return -1;
    if (watch) keep_alive(b);
    int rc = at ? real_renameat(olddir, old, newdir, new) : real_rename(old, new);
    if (watch && rc == 0) journal("R %s %s\n", a, b);
    after(action, "rename");
    return rc;
}

int rename(const char *old, const char *new) { return rename_common(AT_FDCWD, old, AT_FDCWD, new, 0); }
int renameat(int od, const char *old, int nd, const char *new) { return rename_common(od, old, nd, new, 1); }

static int unlink_common(int dirfd, const char *path, int flags, int at) {
    char a[PATH_MAX];
    if (absolute(dirfd, path, a) && under_root(a) && !(flags & AT_REMOVEDIR)) keep_alive(a);
    return at ? real_unlinkat(dirfd, path, flags) : real_unlink(path);
}

int unlink(const char *path) { return unlink_common(AT_FDCWD, path, 0, 0); }
int unlinkat(int dirfd, const char *path, int flags) { return unlink_common(dirfd, path, flags, 1); }
