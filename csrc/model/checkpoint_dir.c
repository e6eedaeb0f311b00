/*
 * model/checkpoint_dir.c -- a checkpoint directory replaced as a whole. The new generation
 * is written into a sibling directory, the files the save does not own are hard-linked into
 * it, and one rename swaps it in; leftovers of interrupted saves are recovered or removed
 * under a lock. The protocol and what it guarantees are described at the top of model_io.c;
 * this file is its mechanics (POSIX, plus Linux renameat2 for the swap).
 *
 * Names in the parent directory P of checkpoint directory B:
 *   P/.B.lock                 the lock (flock): saves exclusive, loads shared; kept
 *   P/.B.tmp-<pid>-<rand>     a generation being written; after an exchange, the old one
 *   P/.B.old-<pid>-<rand>     the old generation of a two-rename swap (fallback)
 * Everything here is best effort where failing leaves a consistent directory (cleanup), and
 * an error with the file and the reason where it would not (writing, carrying, swapping).
 */
#define _GNU_SOURCE
#include "checkpoint_dir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

#define MAX_DEPTH 64   /* directory nesting carried into a new generation */
#define SUFFIX_LEN 6   /* random part of a generation's name */
#define NAME_SLACK 40  /* ".", ".tmp-", pid, "-", suffix: added to B for sibling names */

/* Set (to anything but "" or "0") to skip RENAME_EXCHANGE and use the two-rename swap, as on
 * file systems without it: the tests' way to exercise the fallback. */
static const char *const NO_EXCHANGE_ENV = "DSC_CHECKPOINT_NO_EXCHANGE";

/* ================================================================== strings */

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* a + b + c, malloc'ed (NULL when out of memory). */
static char *cat3(const char *a, const char *b, const char *c) {
  size_t na = strlen(a), nb = strlen(b), nc = strlen(c);
  char *p = (char *)malloc(na + nb + nc + 1);
  if (!p) return NULL;
  memcpy(p, a, na);
  memcpy(p + na, b, nb);
  memcpy(p + na + nb, c, nc + 1);
  return p;
}

int dsc_ckpt_owned(const char *name) {
  /* hidden files are no shards: dsc_model_load skips them too */
  return !strcmp(name, "config.json") || !strcmp(name, "model.safetensors.index.json") ||
         (name[0] != '.' && ends_with(name, ".safetensors"));
}

/* "<owned>.tmp.<digits>": a temporary file of the writer before this protocol (files were
 * replaced one by one inside the directory); never carried into a new generation. */
static int old_writer_tmp(const char *name) {
  const char *p = NULL;
  for (const char *q = strstr(name, ".tmp."); q; q = strstr(q + 1, ".tmp.")) p = q;
  if (!p || !p[5]) return 0;
  for (const char *d = p + 5; *d; ++d)
    if (*d < '0' || *d > '9') return 0;
  char head[NAME_MAX + 1];
  const size_t n = (size_t)(p - name);
  if (n > NAME_MAX) return 0;
  memcpy(head, name, n);
  head[n] = '\0';
  return dsc_ckpt_owned(head);
}

/* 'T' for ".B.tmp-<pid>-<rand>", 'O' for ".B.old-<pid>-<rand>", else 0. Exact: the
 * leftovers of a sibling named "B.tmp-1-x" are not B's. */
static int leftover_kind(const char *name, const char *base) {
  const size_t b = strlen(base);
  if (name[0] != '.' || strncmp(name + 1, base, b) != 0) return 0;
  const char *p = name + 1 + b;
  const int kind = !strncmp(p, ".tmp-", 5) ? 'T' : !strncmp(p, ".old-", 5) ? 'O' : 0;
  if (!kind) return 0;
  const char *q = p + 5;
  while (*q >= '0' && *q <= '9') ++q;
  if (q == p + 5 || *q != '-') return 0;
  ++q;
  for (int i = 0; i < SUFFIX_LEN; ++i, ++q)
    if (!((*q >= '0' && *q <= '9') || (*q >= 'a' && *q <= 'z'))) return 0;
  return *q == '\0' ? kind : 0;
}

/* Random name parts without global state: a per-call xorshift seeded by the clock, the pid
 * and a stack address; mkdir / a stat under the lock decide uniqueness. */
static uint64_t rand_seed(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ ((uint64_t)getpid() << 17) ^
               (uint64_t)(uintptr_t)&ts;
  return x ? x : 0x9e3779b97f4a7c15ull;
}

/* ".<base>.<kind>-<pid>-<rand>", malloc'ed. */
static char *sibling_name(const char *base, const char *kind, uint64_t *rs) {
  char suffix[SUFFIX_LEN + 1];
  for (int i = 0; i < SUFFIX_LEN; ++i) {
    *rs ^= *rs << 13;
    *rs ^= *rs >> 7;
    *rs ^= *rs << 17;
    suffix[i] = "0123456789abcdefghijklmnopqrstuvwxyz"[*rs % 36];
  }
  suffix[SUFFIX_LEN] = '\0';
  const size_t n = strlen(base) + NAME_SLACK;
  char *p = (char *)malloc(n);
  if (p) snprintf(p, n, ".%s.%s-%ld-%s", base, kind, (long)getpid(), suffix);
  return p;
}

/* ================================================================== directories */

typedef struct {
  char **v;
  size_t n;
} names;

static void names_free(names *s) {
  for (size_t i = 0; i < s->n; ++i) free(s->v[i]);
  free(s->v);
  s->v = NULL;
  s->n = 0;
}

/* The entries of directory dirfd but "." and "..": 0, or an errno. Collected first, so
 * that renaming and removing them does not disturb the walk. */
static int list_dir(int dirfd, names *out) {
  out->v = NULL;
  out->n = 0;
  int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC); /* own offset; closedir closes it */
  if (fd < 0) return errno;
  DIR *d = fdopendir(fd);
  if (!d) {
    int e = errno;
    close(fd);
    return e;
  }
  size_t cap = 0;
  int err = 0;
  for (;;) {
    errno = 0;
    struct dirent *e = readdir(d);
    if (!e) {
      err = errno;
      break;
    }
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    if (out->n == cap) {
      cap = cap ? 2 * cap : 16;
      char **nv = (char **)realloc(out->v, cap * sizeof *nv);
      if (!nv) {
        err = ENOMEM;
        break;
      }
      out->v = nv;
    }
    if (!(out->v[out->n] = strdup(e->d_name))) {
      err = ENOMEM;
      break;
    }
    out->n++;
  }
  closedir(d);
  if (err) names_free(out);
  return err;
}

static int open_dir_at(int dirfd, const char *name) {
  return openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/* fsync a directory; file systems that cannot (EINVAL) count as done. 0 or an errno. */
static int sync_dir(int fd) {
  if (fsync(fd) == 0 || errno == EINVAL || errno == EOPNOTSUPP) return 0;
  return errno;
}

/* Directories we are about to empty must be writable to us (a carried 0555 folder). */
static void make_writable(int fd, const struct stat *sb) {
  if ((sb->st_mode & S_IRWXU) != S_IRWXU) (void)fchmod(fd, (sb->st_mode & 07777) | S_IRWXU);
}

/* rm -r of name in dirfd without following links or crossing into another file system.
 * Only ever called on a generation of ours: what it holds are our files and hard links
 * (or copies) of files that live on in the installed directory. */
static void remove_tree(int dirfd, const char *name, int depth) {
  struct stat sb, pb;
  if (fstatat(dirfd, name, &sb, AT_SYMLINK_NOFOLLOW) != 0) return;
  if (!S_ISDIR(sb.st_mode)) {
    (void)unlinkat(dirfd, name, 0);
    return;
  }
  if (depth > MAX_DEPTH || fstat(dirfd, &pb) != 0 || pb.st_dev != sb.st_dev) return; /* mount point */
  int fd = open_dir_at(dirfd, name);
  if (fd < 0) return;
  make_writable(fd, &sb);
  names ls;
  if (list_dir(fd, &ls) == 0) {
    for (size_t i = 0; i < ls.n; ++i) remove_tree(fd, ls.v[i], depth + 1);
    names_free(&ls);
  }
  close(fd);
  (void)unlinkat(dirfd, name, AT_REMOVEDIR);
}

/* Empty generation src into the installed directory dst: at the top level the checkpoint's
 * own files are dropped; every other entry dst lacks is moved there (a file created in the
 * old directory while the save ran, or one a killed save did not carry: never lost);
 * entries dst has too are dropped (dst holds a hard link of the same file, or a newer one),
 * directories present on both sides merged the same way. */
static void retire_into(int src, int dst, int top, int depth) {
  struct stat ps;
  names ls;
  if (fstat(src, &ps) != 0 || list_dir(src, &ls) != 0) return;
  for (size_t i = 0; i < ls.n; ++i) {
    const char *e = ls.v[i];
    struct stat s, d;
    if (fstatat(src, e, &s, AT_SYMLINK_NOFOLLOW) != 0 || s.st_dev != ps.st_dev) continue;
    if (top && !S_ISDIR(s.st_mode) && (dsc_ckpt_owned(e) || old_writer_tmp(e))) {
      (void)unlinkat(src, e, 0);
      continue;
    }
    if (fstatat(dst, e, &d, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) (void)renameat(src, e, dst, e);
      continue;
    }
    if (S_ISDIR(s.st_mode) && S_ISDIR(d.st_mode) && depth < MAX_DEPTH) {
      int a = open_dir_at(src, e), b = open_dir_at(dst, e);
      if (a >= 0 && b >= 0) {
        make_writable(a, &s);
        retire_into(a, b, 0, depth + 1);
      }
      if (a >= 0) close(a);
      if (b >= 0) close(b);
      (void)unlinkat(src, e, AT_REMOVEDIR);
    } else if (!S_ISDIR(s.st_mode)) {
      (void)unlinkat(src, e, 0);
    } else {
      remove_tree(src, e, depth + 1); /* a folder where dst has a file now: dst wins */
    }
  }
  names_free(&ls);
}

/* Retire generation src_name of P into the directory dst_name of P, then remove it. */
static void retire(int pfd, const char *src_name, const char *dst_name) {
  int a = open_dir_at(pfd, src_name);
  if (a < 0) {
    if (errno == ENOTDIR || errno == ELOOP) (void)unlinkat(pfd, src_name, 0);
    return;
  }
  struct stat sb;
  if (fstat(a, &sb) == 0) make_writable(a, &sb);
  int b = open_dir_at(pfd, dst_name);
  if (b >= 0) {
    retire_into(a, b, 1, 0);
    close(b);
    (void)unlinkat(pfd, src_name, AT_REMOVEDIR);
  } /* else: no directory to merge into; the generation stays for a later recovery */
  close(a);
}

/* Caller holds the lock exclusively: every leftover belongs to a dead save. A missing B
 * with an old generation beside it is a two-rename swap killed between its renames: the
 * old generation is complete and goes back. Then every leftover is retired into B (or
 * removed, when there is no B). */
static void recover(int pfd, const char *base) {
  names ls;
  if (list_dir(pfd, &ls) != 0) return;
  struct stat sb;
  int have = fstatat(pfd, base, &sb, AT_SYMLINK_NOFOLLOW) == 0;
  if (!have) {
    /* one old generation at most (saves recover first); of several, the newest */
    size_t best = ls.n;
    time_t t0 = 0;
    for (size_t i = 0; i < ls.n; ++i) {
      if (leftover_kind(ls.v[i], base) != 'O' || fstatat(pfd, ls.v[i], &sb, AT_SYMLINK_NOFOLLOW) != 0) continue;
      if (best == ls.n || sb.st_mtime > t0) {
        best = i;
        t0 = sb.st_mtime;
      }
    }
    if (best < ls.n && renameat(pfd, ls.v[best], pfd, base) == 0) {
      (void)sync_dir(pfd);
      have = 1;
      ls.v[best][0] = '\0'; /* restored: not a leftover any more */
    }
  }
  for (size_t i = 0; i < ls.n; ++i) {
    if (!ls.v[i][0] || !leftover_kind(ls.v[i], base)) continue;
    if (have) retire(pfd, ls.v[i], base);
    else remove_tree(pfd, ls.v[i], 0);
  }
  names_free(&ls);
}

static int has_leftovers(int pfd, const char *base) {
  names ls;
  if (list_dir(pfd, &ls) != 0) return 0;
  int found = 0;
  for (size_t i = 0; i < ls.n && !found; ++i) found = leftover_kind(ls.v[i], base) != 0;
  names_free(&ls);
  return found;
}

static int flock_retry(int fd, int op) {
  int r;
  while ((r = flock(fd, op)) != 0 && errno == EINTR) {
  }
  return r;
}

/* ================================================================== paths */

/* mkdir -p: every missing component of dir is created. */
static dsc_status make_dirs(const char *fn, const char *dir) {
  char *p = strdup(dir);
  if (!p) return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  dsc_status st = DSC_OK;
  size_t n = strlen(p);
  for (size_t i = 1; i <= n && st == DSC_OK; ++i) {
    if (p[i] != '/' && p[i] != '\0') continue;
    char saved = p[i];
    p[i] = '\0';
    if (mkdir(p, 0777) != 0 && errno != EEXIST)
      st = dsc_error(DSC_ERR_IO, fn, "dir: cannot create '%s': %s", p, strerror(errno));
    p[i] = saved;
  }
  struct stat sb;
  if (st == DSC_OK && (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)))
    st = dsc_error(DSC_ERR_IO, fn, "dir: '%s' is not a directory", dir);
  free(p);
  return st;
}

/* dir as P (a real path) and B. An existing dir is resolved first (a symlink to a checkpoint
 * replaces its target); a missing one gets its parents created when `create`. */
static dsc_status resolve(const char *fn, const char *dir, int create, char **parent, char **base) {
  *parent = *base = NULL;
  char *path = realpath(dir, NULL);
  if (path) {
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
      free(path);
      return dsc_error(DSC_ERR_IO, fn, "dir: '%s' exists and is not a directory", dir);
    }
  } else if (errno == ENOENT) {
    char *s = strdup(dir);
    if (!s) return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
    size_t n = strlen(s);
    while (n > 1 && s[n - 1] == '/') s[--n] = '\0';
    struct stat lb;
    if (lstat(s, &lb) == 0) {
      free(s);
      return dsc_error(DSC_ERR_IO, fn, "dir: '%s' is a symbolic link to a missing directory", dir);
    }
    char *slash = strrchr(s, '/');
    const char *name = slash ? slash + 1 : s;
    const char *up = slash ? (slash == s ? "/" : s) : ".";
    if (slash && slash != s) *slash = '\0';
    if (!name[0] || !strcmp(name, ".") || !strcmp(name, "..")) {
      free(s);
      return dsc_error(DSC_ERR_INVALID_ARGUMENT, fn, "dir: expected a directory name, got '%s'", dir);
    }
    dsc_status st = create ? make_dirs(fn, up) : DSC_OK;
    char *rp = st == DSC_OK ? realpath(up, NULL) : NULL;
    if (st == DSC_OK && !rp) st = dsc_error(DSC_ERR_IO, fn, "dir: cannot resolve '%s': %s", up, strerror(errno));
    if (st == DSC_OK) {
      path = cat3(rp, strcmp(rp, "/") ? "/" : "", name);
      if (!path) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
    }
    free(rp);
    free(s);
    if (st != DSC_OK) return st;
  } else {
    return dsc_error(DSC_ERR_IO, fn, "dir: cannot resolve '%s': %s", dir, strerror(errno));
  }
  char *slash = strrchr(path, '/');
  if (!slash || !slash[1]) {
    free(path);
    return dsc_error(DSC_ERR_INVALID_ARGUMENT, fn, "dir: '%s' is the root directory; expected a directory below it", dir);
  }
  if (strlen(slash + 1) + NAME_SLACK > NAME_MAX) {
    free(path);
    return dsc_error(DSC_ERR_INVALID_ARGUMENT, fn,
                     "dir: the name '%s' is too long: a save needs sibling names of up to %d bytes more (limit %d)",
                     dir, NAME_SLACK, NAME_MAX);
  }
  *base = strdup(slash + 1);
  *slash = '\0';
  *parent = strdup(path[0] ? path : "/");
  free(path);
  if (!*base || !*parent) {
    free(*base);
    free(*parent);
    *base = *parent = NULL;
    return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  }
  return DSC_OK;
}

/* ================================================================== save */

char *dsc_ckpt_path(const dsc_ckpt_txn *t, const char *name) { return cat3(t->gen, "/", name); }

dsc_status dsc_ckpt_write_file(const char *fn, const char *path, const char *data, size_t n) {
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return dsc_error(DSC_ERR_IO, fn, "cannot create '%s': %s", path, strerror(errno));
  int err = 0;
  while (n > 0 && !err) {
    ssize_t w = write(fd, data, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      err = w < 0 ? errno : EIO;
    } else {
      data += w;
      n -= (size_t)w;
    }
  }
  if (!err && fsync(fd) != 0) err = errno;
  if (close(fd) != 0 && !err) err = errno;
  if (!err) return DSC_OK;
  (void)unlink(path);
  return dsc_error(DSC_ERR_IO, fn, "writing '%s' failed: %s", path, strerror(err));
}

void dsc_ckpt_end(dsc_ckpt_txn *t) {
  if (t->gen_name && t->parent_fd >= 0) remove_tree(t->parent_fd, t->gen_name, 0);
  if (t->lock_fd >= 0) {
    (void)flock(t->lock_fd, LOCK_UN);
    close(t->lock_fd);
  }
  if (t->parent_fd >= 0) close(t->parent_fd);
  free(t->dir);
  free(t->parent);
  free(t->base);
  free(t->target);
  free(t->gen_name);
  free(t->gen);
  memset(t, 0, sizeof *t);
  t->parent_fd = t->lock_fd = -1;
}

/* An existing B must be a directory of P's file system that we may write. */
static dsc_status check_target(const char *fn, const dsc_ckpt_txn *t, struct stat *db, int *exists) {
  struct stat pb;
  *exists = 0;
  if (fstatat(t->parent_fd, t->base, db, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return DSC_OK;
    return dsc_error(DSC_ERR_IO, fn, "dir: cannot stat '%s': %s", t->dir, strerror(errno));
  }
  *exists = 1;
  DSC_CHECK(S_ISDIR(db->st_mode), DSC_ERR_IO, fn, "dir: '%s' exists and is not a directory", t->dir);
  DSC_CHECK(fstat(t->parent_fd, &pb) == 0 && pb.st_dev == db->st_dev, DSC_ERR_IO, fn,
            "dir: '%s' is a mount point: a save replaces the directory by renaming a new one into its place, "
            "which cannot cross file systems; save into a subdirectory of it",
            t->dir);
  DSC_CHECK(faccessat(t->parent_fd, t->base, W_OK, AT_EACCESS) == 0, DSC_ERR_IO, fn,
            "dir: '%s' is not writable: %s (the checkpoint there is untouched)", t->dir, strerror(errno));
  return DSC_OK;
}

dsc_status dsc_ckpt_begin(const char *fn, const char *dir, dsc_ckpt_txn *t) {
  memset(t, 0, sizeof *t);
  t->parent_fd = t->lock_fd = -1;
  dsc_status st = resolve(fn, dir, 1, &t->parent, &t->base);
  if (st == DSC_OK) {
    t->dir = strdup(dir);
    t->target = cat3(t->parent, strcmp(t->parent, "/") ? "/" : "", t->base);
    if (!t->dir || !t->target) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  }
  if (st == DSC_OK && (t->parent_fd = open(t->parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
    st = dsc_error(DSC_ERR_IO, fn, "dir: cannot open '%s': %s", t->parent, strerror(errno));
  /* the lock: created once, kept (removing a lock file races with its next user) */
  if (st == DSC_OK) {
    char *lock = cat3(".", t->base, ".lock");
    if (!lock) {
      st = dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
    } else {
      t->lock_fd = openat(t->parent_fd, lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
      const int e = errno;
      if (t->lock_fd < 0) t->lock_fd = openat(t->parent_fd, lock, O_RDONLY | O_CLOEXEC); /* someone else's */
      if (t->lock_fd < 0)
        st = dsc_error(DSC_ERR_IO, fn,
                       "dir: cannot create the lock file '%s/%s': %s (a save writes beside '%s', so its parent "
                       "directory must be writable)",
                       t->parent, lock, strerror(e), dir);
      else if (flock_retry(t->lock_fd, LOCK_EX) != 0)
        st = dsc_error(DSC_ERR_IO, fn, "dir: cannot lock '%s/%s': %s", t->parent, lock, strerror(errno));
      free(lock);
    }
  }
  if (st == DSC_OK) recover(t->parent_fd, t->base);
  struct stat db;
  int exists = 0;
  if (st == DSC_OK) st = check_target(fn, t, &db, &exists);
  uint64_t rs = rand_seed();
  for (int attempt = 0; st == DSC_OK && !t->gen_name; ++attempt) {
    char *name = sibling_name(t->base, "tmp", &rs);
    if (!name) {
      st = dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
    } else if (mkdirat(t->parent_fd, name, 0777) == 0) {
      t->gen_name = name;
    } else {
      const int e = errno;
      if (e != EEXIST || attempt > 100)
        st = dsc_error(DSC_ERR_IO, fn,
                       "dir: cannot create '%s/%s' for the new checkpoint: %s (a save writes the new checkpoint "
                       "beside '%s' and renames it into place; the checkpoint there is untouched)",
                       t->parent, name, strerror(e), dir);
      free(name);
    }
  }
  if (st == DSC_OK && !(t->gen = cat3(t->parent, "/", t->gen_name)))
    st = dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  if (st != DSC_OK) dsc_ckpt_end(t);
  return st;
}

/* Copy regular file name of src into dst (where a hard link was refused), mode kept. */
static int copy_file(int src, int dst, const char *name, mode_t mode) {
  int in = openat(src, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (in < 0) return errno;
  int out = openat(dst, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode & 07777);
  if (out < 0) {
    int e = errno;
    close(in);
    return e;
  }
  char *buf = (char *)malloc(1 << 20);
  int err = buf ? 0 : ENOMEM;
  while (!err) {
    ssize_t r = read(in, buf, 1 << 20);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) err = errno;
    if (r <= 0) break;
    for (ssize_t off = 0; off < r && !err;) {
      ssize_t w = write(out, buf + off, (size_t)(r - off));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) err = w < 0 ? errno : EIO;
      else off += w;
    }
  }
  free(buf);
  if (!err && fsync(out) != 0) err = errno;
  if (close(out) != 0 && !err) err = errno;
  close(in);
  if (err) (void)unlinkat(dst, name, 0);
  return err;
}

/* Put into generation dst everything of directory src the save does not own: regular files
 * as hard links (copies where the file system refuses a link), symlinks recreated,
 * folders rebuilt the same way. Fifos, sockets and devices are left where they are: the
 * retire step after the swap moves them. rel: src's path below the checkpoint ("" or
 * "sub/"), for messages. */
static dsc_status carry(const char *fn, const dsc_ckpt_txn *t, int src, int dst, dev_t dev, const char *rel,
                        int depth) {
  names ls;
  int e = list_dir(src, &ls);
  if (e) return dsc_error(DSC_ERR_IO, fn, "dir: cannot read '%s/%s': %s (the checkpoint there is untouched)", t->dir,
                          rel, strerror(e));
  dsc_status st = DSC_OK;
  for (size_t i = 0; i < ls.n && st == DSC_OK; ++i) {
    const char *nm = ls.v[i];
    struct stat sb;
    if (fstatat(src, nm, &sb, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno != ENOENT) /* gone meanwhile: nothing to carry */
        st = dsc_error(DSC_ERR_IO, fn, "dir: cannot stat '%s/%s%s': %s (the checkpoint there is untouched)", t->dir,
                       rel, nm, strerror(errno));
      continue;
    }
    if (depth == 0 && !S_ISDIR(sb.st_mode) && (dsc_ckpt_owned(nm) || old_writer_tmp(nm))) continue;
    if (sb.st_dev != dev) {
      st = dsc_error(DSC_ERR_IO, fn,
                     "dir: '%s/%s%s' is a mount point: a save replaces '%s' by a new directory and cannot carry a "
                     "mounted file system into it (the checkpoint there is untouched)",
                     t->dir, rel, nm, t->dir);
    } else if (S_ISREG(sb.st_mode)) {
      if (linkat(src, nm, dst, nm, 0) != 0 && errno != ENOENT) {
        const int le = errno;
        if ((e = copy_file(src, dst, nm, sb.st_mode)) != 0 && e != ENOENT)
          st = dsc_error(DSC_ERR_IO, fn,
                         "dir: cannot carry '%s/%s%s' into the new checkpoint: link: %s, copy: %s (the checkpoint "
                         "there is untouched)",
                         t->dir, rel, nm, strerror(le), strerror(e));
      }
    } else if (S_ISLNK(sb.st_mode)) {
      const size_t cap = (size_t)sb.st_size + 2 > PATH_MAX ? (size_t)sb.st_size + 2 : PATH_MAX;
      char *target = (char *)malloc(cap);
      ssize_t n = target ? readlinkat(src, nm, target, cap - 1) : -1;
      if (!target) {
        st = dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
      } else if (n >= 0) {
        target[n] = '\0';
        if (symlinkat(target, dst, nm) != 0)
          st = dsc_error(DSC_ERR_IO, fn, "dir: cannot carry the link '%s/%s%s' into the new checkpoint: %s", t->dir,
                         rel, nm, strerror(errno));
      } else if (errno != ENOENT) {
        st = dsc_error(DSC_ERR_IO, fn, "dir: cannot read the link '%s/%s%s': %s", t->dir, rel, nm, strerror(errno));
      }
      free(target);
    } else if (S_ISDIR(sb.st_mode)) {
      char *sub_rel = cat3(rel, nm, "/");
      int a = -1, b = -1;
      if (!sub_rel) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
      else if (depth + 1 >= MAX_DEPTH)
        st = dsc_error(DSC_ERR_IO, fn, "dir: '%s/%s' is nested deeper than %d folders; not carried", t->dir, sub_rel,
                       MAX_DEPTH);
      else if (mkdirat(dst, nm, 0700) != 0 || (b = open_dir_at(dst, nm)) < 0)
        st = dsc_error(DSC_ERR_IO, fn, "dir: cannot create the folder '%s' in the new checkpoint: %s", sub_rel,
                       strerror(errno));
      else if ((a = open_dir_at(src, nm)) < 0)
        st = dsc_error(DSC_ERR_IO, fn, "dir: cannot open '%s/%s': %s", t->dir, sub_rel, strerror(errno));
      if (st == DSC_OK) st = carry(fn, t, a, b, dev, sub_rel, depth + 1);
      if (st == DSC_OK && (e = sync_dir(b)) != 0)
        st = dsc_error(DSC_ERR_IO, fn, "dir: cannot sync the folder '%s' of the new checkpoint: %s", sub_rel,
                       strerror(e));
      if (st == DSC_OK) (void)fchmod(b, sb.st_mode & 07777);
      if (a >= 0) close(a);
      if (b >= 0) close(b);
      free(sub_rel);
    }
  }
  names_free(&ls);
  return st;
}

dsc_status dsc_ckpt_commit(const char *fn, dsc_ckpt_txn *t) {
  const int pfd = t->parent_fd;
  struct stat db;
  int exists = 0;
  DSC_TRY(check_target(fn, t, &db, &exists));
  int gfd = open_dir_at(pfd, t->gen_name);
  if (gfd < 0) return dsc_error(DSC_ERR_IO, fn, "dir: cannot open '%s': %s", t->gen, strerror(errno));
  dsc_status st = DSC_OK;
  if (exists) {
    int dfd = open_dir_at(pfd, t->base);
    if (dfd < 0) st = dsc_error(DSC_ERR_IO, fn, "dir: cannot open '%s': %s", t->dir, strerror(errno));
    else st = carry(fn, t, dfd, gfd, db.st_dev, "", 0);
    if (dfd >= 0) close(dfd);
    if (st == DSC_OK) {
      (void)fchmod(gfd, db.st_mode & 07777);
      if (db.st_uid != geteuid() || db.st_gid != getegid()) (void)fchown(gfd, db.st_uid, db.st_gid);
    }
  }
  int e;
  if (st == DSC_OK && (e = sync_dir(gfd)) != 0)
    st = dsc_error(DSC_ERR_IO, fn, "dir: cannot sync '%s': %s (the checkpoint there is untouched)", t->gen, strerror(e));
  close(gfd);
  if (st != DSC_OK) return st;

  char *old = NULL; /* after the swap: where the old generation is, to retire */
  struct stat cw;
  const int cwd_inside = exists && stat(".", &cw) == 0 && cw.st_dev == db.st_dev && cw.st_ino == db.st_ino;
  if (!exists) {
    if (renameat(pfd, t->gen_name, pfd, t->base) != 0)
      return dsc_error(DSC_ERR_IO, fn, "dir: cannot rename '%s' to '%s': %s", t->gen, t->target, strerror(errno));
    free(t->gen_name);
  } else {
    const char *env = getenv(NO_EXCHANGE_ENV);
    int swapped = 0;
#ifdef SYS_renameat2
    if (!(env && env[0] && strcmp(env, "0"))) {
      if (syscall(SYS_renameat2, pfd, t->gen_name, pfd, t->base, RENAME_EXCHANGE) == 0) {
        swapped = 1;
      } else if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP && errno != EPERM) {
        return dsc_error(DSC_ERR_IO, fn, "dir: cannot swap '%s' and '%s': %s (the checkpoint there is untouched)",
                         t->gen, t->target, strerror(errno));
      }
    }
#else
    (void)env;
#endif
    if (swapped) {
      old = t->gen_name; /* the exchange left the old generation under the new one's name */
    } else {
      /* no exchange here: old -> .B.old-*, new -> B; killed between the two, the next load
       * or save of B puts the old generation back (recover) */
      uint64_t rs = rand_seed();
      struct stat sb;
      for (int attempt = 0; !old && attempt < 100; ++attempt) {
        old = sibling_name(t->base, "old", &rs);
        if (!old) return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
        if (fstatat(pfd, old, &sb, AT_SYMLINK_NOFOLLOW) == 0 || errno != ENOENT) {
          free(old);
          old = NULL;
        }
      }
      if (!old) return dsc_error(DSC_ERR_IO, fn, "dir: no free name for the old generation of '%s'", t->dir);
      if (renameat(pfd, t->base, pfd, old) != 0) {
        st = dsc_error(DSC_ERR_IO, fn, "dir: cannot rename '%s' aside: %s (the checkpoint there is untouched)",
                       t->target, strerror(errno));
        free(old);
        return st;
      }
      if (renameat(pfd, t->gen_name, pfd, t->base) != 0) {
        e = errno;
        (void)renameat(pfd, old, pfd, t->base); /* or the next load puts it back */
        free(old);
        return dsc_error(DSC_ERR_IO, fn, "dir: cannot rename '%s' to '%s': %s (the old checkpoint is kept)", t->gen,
                         t->target, strerror(e));
      }
      free(t->gen_name);
    }
  }
  t->gen_name = NULL; /* installed: dsc_ckpt_end must not remove it */
  if ((e = sync_dir(pfd)) != 0)
    st = dsc_error(DSC_ERR_IO, fn, "dir: the new checkpoint is in place as '%s', but syncing '%s' failed: %s",
                   t->target, t->parent, strerror(e));
  if (old) {
    retire(pfd, old, t->base);
    free(old);
  }
  if (cwd_inside) (void)chdir(t->target); /* our working directory was the old generation */
  return st;
}

/* ================================================================== load */

int dsc_ckpt_read_begin(const char *dir) {
  char *parent = NULL, *base = NULL;
  if (resolve("dsc_model_load", dir, 0, &parent, &base) != DSC_OK) return -1;
  int pfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC), fd = -1;
  char *lock = cat3(".", base, ".lock");
  if (pfd >= 0 && lock) fd = openat(pfd, lock, O_RDONLY | O_CLOEXEC); /* a load never creates it */
  if (fd >= 0 && flock_retry(fd, LOCK_SH) != 0) {
    close(fd);
    fd = -1;
  }
  struct stat sb;
  if (fd >= 0 && (has_leftovers(pfd, base) || fstatat(pfd, base, &sb, AT_SYMLINK_NOFOLLOW) != 0)) {
    /* converting drops the shared lock first: a save may run in between, which is fine */
    if (flock_retry(fd, LOCK_EX) == 0) recover(pfd, base);
    if (flock_retry(fd, LOCK_SH) != 0) {
      close(fd);
      fd = -1;
    }
  }
  if (pfd >= 0) close(pfd);
  free(lock);
  free(parent);
  free(base);
  return fd;
}

void dsc_ckpt_read_end(int lock_fd) {
  if (lock_fd < 0) return;
  (void)flock(lock_fd, LOCK_UN);
  close(lock_fd);
}
