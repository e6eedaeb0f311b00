/*
 * model/checkpoint_dir.h -- replacing a checkpoint directory as a whole (checkpoint_dir.c).
 * The protocol (names, lock, swap, recovery) is described at the top of model_io.c.
 *
 *   dsc_ckpt_txn t;
 *   dsc_ckpt_begin(fn, dir, &t);          lock, clean up, make the new generation
 *   dsc_ckpt_write_file(fn, path, ...);   files into t.gen (or any writer that fsyncs)
 *   dsc_ckpt_commit(fn, &t);              carry the other files, swap it in
 *   dsc_ckpt_end(&t);                     always: removes an uncommitted generation, unlocks
 */
#ifndef DSC_CHECKPOINT_DIR_H_
#define DSC_CHECKPOINT_DIR_H_

#include <stddef.h>

#include "../core/internal.h"

typedef struct {
  char *dir;       /* the directory as the caller named it (for messages) */
  char *parent;    /* P: real path of its parent */
  char *base;      /* B: its name in P */
  char *target;    /* P/B */
  char *gen_name;  /* ".B.tmp-<pid>-<rand>": the new generation in P; NULL once gone */
  char *gen;       /* P/gen_name: where the checkpoint's files are written */
  int parent_fd;   /* P, open */
  int lock_fd;     /* P/.B.lock, flock'ed exclusively */
} dsc_ckpt_txn;

/* The files of a checkpoint a save replaces (top level of the directory): config.json,
 * *.safetensors, model.safetensors.index.json. Everything else is carried over. */
int dsc_ckpt_owned(const char *name);

/* Resolve dir (parents created), take the lock, recover / clean up leftovers of
 * interrupted saves, create the empty new generation t->gen. On failure nothing is left
 * (t is released). */
dsc_status dsc_ckpt_begin(const char *fn, const char *dir, dsc_ckpt_txn *t);
/* t->gen + "/" + name (malloc'ed; NULL when out of memory). */
char *dsc_ckpt_path(const dsc_ckpt_txn *t, const char *name);
/* Create path (must not exist), write n bytes, fsync. On failure the file is removed. */
dsc_status dsc_ckpt_write_file(const char *fn, const char *path, const char *data, size_t n);
/* Carry the files the save does not own from the old directory into t->gen, fsync it, and
 * install it as P/B atomically; then remove the old generation. */
dsc_status dsc_ckpt_commit(const char *fn, dsc_ckpt_txn *t);
/* Remove an uncommitted generation, release the lock, free t. Idempotent. */
void dsc_ckpt_end(dsc_ckpt_txn *t);

/* For a load of dir: a shared lock (waits for a save in progress), after recovering a
 * directory an interrupted save left missing and removing leftovers. Best effort, never an
 * error: returns the lock's descriptor, or -1 (no lock file: no save ever ran there, or
 * unreadable). */
int dsc_ckpt_read_begin(const char *dir);
void dsc_ckpt_read_end(int lock_fd);

#endif /* DSC_CHECKPOINT_DIR_H_ */
