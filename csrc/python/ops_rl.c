/*
 * ops_rl.c -- Python wrappers of reinforcement learning and distillation: the ops
 * (dsc_token_logprob*, dsc_grpo_*, dsc_logits_topk, dsc_topk_kl) and the model steps
 * (dsc_model_token_logprobs, dsc_model_policy_step, dsc_model_distill_step). Parameter
 * structs travel as tuples in the field order of deepseek_c.h; deepseek_c/ops.py and
 * deepseek_c/rl.py build them and document the arguments.
 */
#include "call.h"

#define MODEL_NAME "deepseek_c.model"

/* (loss_type, epsilon_low, epsilon_high, beta, max_completion_length, group_size,
 *  scale_rewards, std_eps, drop_zero_std_groups) */
static int parse_grpo(PyObject *t, dsc_grpo_params *p) {
  dsc_grpo_params_default(p);
  return PyArg_ParseTuple(t, "ifffiiifi;grpo params: (loss_type, epsilon_low, epsilon_high, beta, "
                             "max_completion_length, group_size, scale_rewards, std_eps, drop_zero_std_groups)",
                          &p->loss_type, &p->epsilon_low, &p->epsilon_high, &p->beta, &p->max_completion_length,
                          &p->group_size, &p->scale_rewards, &p->std_eps, &p->drop_zero_std_groups);
}

/* The train options tuple of ops_model.c (same order). */
static int parse_train(PyObject *t, dsc_train_options *o) {
  dsc_train_options_default(o);
  return PyArg_ParseTuple(t, "fffffffffii;train options: (lr, beta1, beta2, eps, weight_decay, max_grad_norm, "
                             "mtp_lambda, aux_alpha, bias_update_rate, grad_accum, ignore_index)",
                          &o->lr, &o->beta1, &o->beta2, &o->eps, &o->weight_decay, &o->max_grad_norm,
                          &o->mtp_lambda, &o->aux_alpha, &o->bias_update_rate, &o->grad_accum, &o->ignore_index);
}

/* ---- ops ------------------------------------------------------------------------- */

/* token_logprob(logits, targets, ignore_index, logprobs, entropy|None) */
static PyObject *py_token_logprob(PyObject *m, PyObject *args) {
  PyObject *lo, *to, *lpo, *eo;
  long long ig;
  if (!PyArg_ParseTuple(args, "OOLOO", &lo, &to, &ig, &lpo, &eo)) return NULL;
  BEGIN("dsc_token_logprob")
  IN(logits, lo, "logits")
  IN(targets, to, "targets")
  OUT(lp, lpo, "logprobs")
  OPT_OUT(ent, eo, "entropy")
  RUN(dsc_token_logprob(ctx, logits, targets, (int64_t)ig, lp, ent));
  ret = Py_NewRef(Py_None);
  END
}

/* token_logprob_backward(logits, targets, ignore_index, dlogprobs, dlogits) */
static PyObject *py_token_logprob_backward(PyObject *m, PyObject *args) {
  PyObject *lo, *to, *dlpo, *dlo;
  long long ig;
  if (!PyArg_ParseTuple(args, "OOLOO", &lo, &to, &ig, &dlpo, &dlo)) return NULL;
  BEGIN("dsc_token_logprob_backward")
  IN(logits, lo, "logits")
  IN(targets, to, "targets")
  IN(dlp, dlpo, "dlogprobs")
  OUT(dl, dlo, "dlogits")
  RUN(dsc_token_logprob_backward(ctx, logits, targets, (int64_t)ig, dlp, dl));
  ret = Py_NewRef(Py_None);
  END
}

/* grpo_advantages(params, rewards, advantages, keep|None) */
static PyObject *py_grpo_advantages(PyObject *m, PyObject *args) {
  PyObject *po, *ro, *ao, *ko;
  if (!PyArg_ParseTuple(args, "O!OOO", &PyTuple_Type, &po, &ro, &ao, &ko)) return NULL;
  dsc_grpo_params p;
  if (!parse_grpo(po, &p)) return NULL;
  BEGIN("dsc_grpo_advantages")
  IN(r, ro, "rewards")
  OUT(a, ao, "advantages")
  OPT_OUT(k, ko, "keep")
  RUN(dsc_grpo_advantages(ctx, &p, r, a, k));
  ret = Py_NewRef(Py_None);
  END
}

/* grpo_loss(params, logprobs, old|None, ref|None, advantages, targets, ignore_index,
 *           keep|None, loss, dlogprobs|None, stats|None) */
static PyObject *py_grpo_loss(PyObject *m, PyObject *args) {
  PyObject *po, *lpo, *oo, *rfo, *ao, *to, *ko, *losso, *dlo, *so;
  long long ig;
  if (!PyArg_ParseTuple(args, "O!OOOOOLOOOO", &PyTuple_Type, &po, &lpo, &oo, &rfo, &ao, &to, &ig, &ko, &losso, &dlo,
                        &so))
    return NULL;
  dsc_grpo_params p;
  if (!parse_grpo(po, &p)) return NULL;
  BEGIN("dsc_grpo_loss")
  IN(lp, lpo, "logprobs")
  OPT_IN(old, oo, "old_logprobs")
  OPT_IN(rf, rfo, "ref_logprobs")
  IN(a, ao, "advantages")
  IN(t, to, "targets")
  OPT_IN(k, ko, "keep")
  OUT(loss, losso, "loss")
  OPT_OUT(dl, dlo, "dlogprobs")
  OPT_OUT(sv, so, "stats")
  RUN(dsc_grpo_loss(ctx, &p, lp, old, rf, a, t, (int64_t)ig, k, loss, dl, sv));
  ret = Py_NewRef(Py_None);
  END
}

/* logits_topk(logits, values, indices) */
static PyObject *py_logits_topk(PyObject *m, PyObject *args) {
  PyObject *lo, *vo, *io;
  if (!PyArg_ParseTuple(args, "OOO", &lo, &vo, &io)) return NULL;
  BEGIN("dsc_logits_topk")
  IN(logits, lo, "logits")
  OUT(v, vo, "values")
  OUT(i, io, "indices")
  RUN(dsc_logits_topk(ctx, logits, v, i));
  ret = Py_NewRef(Py_None);
  END
}

/* topk_kl(logits, teacher_indices, teacher_logits, targets, ignore_index, temperature,
 *         grad_scale, loss, dlogits|None) */
static PyObject *py_topk_kl(PyObject *m, PyObject *args) {
  PyObject *lo, *tio, *tlo, *to, *losso, *dlo;
  long long ig;
  float tau, gs;
  if (!PyArg_ParseTuple(args, "OOOOLffOO", &lo, &tio, &tlo, &to, &ig, &tau, &gs, &losso, &dlo)) return NULL;
  BEGIN("dsc_topk_kl")
  IN(logits, lo, "logits")
  IN(ti, tio, "teacher_indices")
  IN(tl, tlo, "teacher_logits")
  IN(t, to, "targets")
  OUT(loss, losso, "loss")
  OPT_OUT(dl, dlo, "dlogits")
  RUN(dsc_topk_kl(ctx, logits, ti, tl, t, (int64_t)ig, tau, gs, loss, dl));
  ret = Py_NewRef(Py_None);
  END
}

/* ---- model steps ----------------------------------------------------------------- */

static dsc_model *model_of(PyObject *cap) { return (dsc_model *)PyCapsule_GetPointer(cap, MODEL_NAME); }
static PyObject *model_ctx(PyObject *cap) { return (PyObject *)PyCapsule_GetContext(cap); }

/* model_token_logprobs(cap, tokens, targets, ignore_index, logprobs) */
static PyObject *py_model_token_logprobs(PyObject *m, PyObject *args) {
  PyObject *cap, *tok_o, *tgt_o, *out_o;
  int ig;
  if (!PyArg_ParseTuple(args, "OOOiO", &cap, &tok_o, &tgt_o, &ig, &out_o)) return NULL;
  dsc_model *mdl = model_of(cap);
  if (!mdl) return NULL;
  BEGIN("dsc_model_token_logprobs")
  IN(tok, tok_o, "tokens")
  IN(tgt, tgt_o, "targets")
  OUT(lp, out_o, "logprobs")
  USE_CTX(model_ctx(cap));
  RUN(dsc_model_token_logprobs(mdl, tok, tgt, ig, lp));
  ret = Py_NewRef(Py_None);
  END
}

/* model_policy_step(cap, tokens, targets, rewards, old|None, ref|None, train_options,
 *                   grpo_params) -> stats dict */
static PyObject *py_model_policy_step(PyObject *m, PyObject *args) {
  PyObject *cap, *tok_o, *tgt_o, *rw_o, *old_o, *ref_o, *opt_o, *p_o;
  if (!PyArg_ParseTuple(args, "OOOOOOO!O!", &cap, &tok_o, &tgt_o, &rw_o, &old_o, &ref_o, &PyTuple_Type, &opt_o,
                        &PyTuple_Type, &p_o))
    return NULL;
  dsc_model *mdl = model_of(cap);
  if (!mdl) return NULL;
  dsc_train_options o;
  dsc_grpo_params p;
  if (!parse_train(opt_o, &o) || !parse_grpo(p_o, &p)) return NULL;
  dsc_policy_stats s_;
  memset(&s_, 0, sizeof s_);
  s_.size = sizeof s_;
  BEGIN("dsc_model_policy_step")
  IN(tok, tok_o, "tokens")
  IN(tgt, tgt_o, "targets")
  IN(rw, rw_o, "rewards")
  OPT_IN(old, old_o, "old_logprobs")
  OPT_IN(rf, ref_o, "ref_logprobs")
  USE_CTX(model_ctx(cap));
  RUN(dsc_model_policy_step(mdl, &o, &p, tok, tgt, rw, old, rf, &s_));
  ret = Py_BuildValue("{s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:L,s:L,s:L,s:L}", "loss", (double)s_.loss,
                      "policy_loss", (double)s_.policy_loss, "kl", (double)s_.kl, "clip_low", (double)s_.clip_low,
                      "clip_high", (double)s_.clip_high, "clip_region", (double)s_.clip_region, "ratio_mean",
                      (double)s_.ratio_mean, "entropy", (double)s_.entropy, "reward_mean", (double)s_.reward_mean,
                      "reward_std", (double)s_.reward_std, "grad_norm", (double)s_.grad_norm, "load_imbalance",
                      (double)s_.load_imbalance, "step", (long long)s_.step, "tokens", (long long)s_.tokens,
                      "sequences", (long long)s_.sequences, "groups_dropped", (long long)s_.groups_dropped);
  END
}

/* model_distill_step(cap, tokens, targets, teacher_indices, teacher_logits, train_options,
 *                    (temperature, alpha)) -> stats dict */
static PyObject *py_model_distill_step(PyObject *m, PyObject *args) {
  PyObject *cap, *tok_o, *tgt_o, *ti_o, *tl_o, *opt_o;
  dsc_distill_params p;
  dsc_distill_params_default(&p);
  if (!PyArg_ParseTuple(args, "OOOOOO!(ff)", &cap, &tok_o, &tgt_o, &ti_o, &tl_o, &PyTuple_Type, &opt_o,
                        &p.temperature, &p.alpha))
    return NULL;
  dsc_model *mdl = model_of(cap);
  if (!mdl) return NULL;
  dsc_train_options o;
  if (!parse_train(opt_o, &o)) return NULL;
  dsc_distill_stats s_;
  memset(&s_, 0, sizeof s_);
  s_.size = sizeof s_;
  BEGIN("dsc_model_distill_step")
  IN(tok, tok_o, "tokens")
  IN(tgt, tgt_o, "targets")
  IN(ti, ti_o, "teacher_indices")
  IN(tl, tl_o, "teacher_logits")
  USE_CTX(model_ctx(cap));
  RUN(dsc_model_distill_step(mdl, &o, &p, tok, tgt, ti, tl, &s_));
  ret = Py_BuildValue("{s:f,s:f,s:f,s:f,s:f,s:L,s:L}", "loss", (double)s_.loss, "kl", (double)s_.kl, "ce",
                      (double)s_.ce, "grad_norm", (double)s_.grad_norm, "load_imbalance", (double)s_.load_imbalance,
                      "step", (long long)s_.step, "tokens", (long long)s_.tokens);
  END
}

/* sample_tokens((temperature, top_k, top_p), logits, rng, active|None, tokens) */
static PyObject *py_sample_tokens(PyObject *m, PyObject *args) {
  PyObject *pt, *lo, *ro, *ao, *to;
  if (!PyArg_ParseTuple(args, "OOOOO", &pt, &lo, &ro, &ao, &to)) return NULL;
  dsc_sample_params p;
  dsc_sample_params_default(&p);
  if (!PyArg_ParseTuple(pt, "fif;sample params: (temperature, top_k, top_p)", &p.temperature, &p.top_k,
                        &p.top_p))
    return NULL;
  BEGIN("dsc_sample_tokens")
  IN(logits, lo, "logits")
  OUT(rng, ro, "rng")
  OPT_IN(active, ao, "active")
  OUT(tokens, to, "tokens")
  RUN(dsc_sample_tokens(ctx, &p, logits, rng, active, tokens));
  ret = Py_NewRef(Py_None);
  END
}

PyMethodDef dsc_py_rl_methods[] = {
    {"token_logprob", py_token_logprob, METH_VARARGS,
     "token_logprob(logits, targets, ignore_index, logprobs, entropy|None)"},
    {"token_logprob_backward", py_token_logprob_backward, METH_VARARGS,
     "token_logprob_backward(logits, targets, ignore_index, dlogprobs, dlogits)"},
    {"grpo_advantages", py_grpo_advantages, METH_VARARGS, "grpo_advantages(params, rewards, advantages, keep|None)"},
    {"grpo_loss", py_grpo_loss, METH_VARARGS,
     "grpo_loss(params, logprobs, old|None, ref|None, advantages, targets, ignore_index, keep|None, loss, "
     "dlogprobs|None, stats|None)"},
    {"logits_topk", py_logits_topk, METH_VARARGS, "logits_topk(logits, values, indices)"},
    {"sample_tokens", py_sample_tokens, METH_VARARGS,
     "sample_tokens((temperature, top_k, top_p), logits, rng, active|None, tokens)"},
    {"topk_kl", py_topk_kl, METH_VARARGS,
     "topk_kl(logits, teacher_indices, teacher_logits, targets, ignore_index, temperature, grad_scale, loss, "
     "dlogits|None)"},
    {"model_token_logprobs", py_model_token_logprobs, METH_VARARGS, "dsc_model_token_logprobs."},
    {"model_policy_step", py_model_policy_step, METH_VARARGS, "dsc_model_policy_step -> stats dict."},
    {"model_distill_step", py_model_distill_step, METH_VARARGS, "dsc_model_distill_step -> stats dict."},
    {NULL, NULL, 0, NULL},
};
