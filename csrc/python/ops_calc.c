/*
 * ops_calc.c -- the model calculator (dsc_model_calc) for Python: config.json text in (read
 * by the C config parser, dsc_model_config_from_json), a dict of the result out.
 */
#include <string.h>

#include "glue.h"

/* model_calc(config_json: bytes | str, context, recipe, moments_dtype, tp, pp, dp, ep, zero1,
 *            micro_batch_tokens, compare_kv_heads) -> dict (dsc_calc_result's fields) */
static PyObject *py_model_calc(PyObject *m, PyObject *args) {
  Py_buffer text;
  long long context, micro;
  int recipe, moments, tp, pp, dp, ep, zero1, kv_heads;
  if (!PyArg_ParseTuple(args, "s*LiiiiiiiLi", &text, &context, &recipe, &moments, &tp, &pp, &dp, &ep, &zero1,
                        &micro, &kv_heads))
    return NULL;
  dsc_py_state *st = dsc_py_get_state(m);
  dsc_model_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.size = sizeof cfg;
  dsc_status s = dsc_model_config_from_json((const char *)text.buf, (size_t)text.len, &cfg);
  PyBuffer_Release(&text);
  if (s != DSC_OK) return dsc_py_raise(st, s);
  dsc_calc_options o;
  dsc_calc_options_default(&o);
  o.context = context;
  o.recipe = recipe;
  o.moments_dtype = moments;
  o.tensor_parallel = tp;
  o.pipeline_parallel = pp;
  o.data_parallel = dp;
  o.expert_parallel = ep;
  o.zero1 = zero1;
  o.micro_batch_tokens = micro;
  o.compare_kv_heads = kv_heads;
  dsc_calc_result r;
  memset(&r, 0, sizeof r);
  r.size = sizeof r;
  s = dsc_model_calc(&cfg, &o, &r);
  if (s != DSC_OK) return dsc_py_raise(st, s);
  return Py_BuildValue(
      "{s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,"
      "s:d,s:d,s:d,s:d,s:d,s:L,s:L,"
      "s:L,s:L,s:L,s:L,s:L,"
      "s:L,s:L,s:L,s:L,s:L,"
      "s:i,s:d,s:d,s:d,s:d,s:d,s:d}",
      "params_total", (long long)r.params_total, "params_embedding", (long long)r.params_embedding,
      "params_head", (long long)r.params_head, "params_main", (long long)r.params_main, "params_mtp",
      (long long)r.params_mtp, "params_routed_experts", (long long)r.params_routed_experts, "params_active",
      (long long)r.params_active, "params_active_mtp", (long long)r.params_active_mtp, "n_tensors",
      (long long)r.n_tensors,
      "flops_fwd_weights", r.flops_fwd_weights, "flops_fwd_attention", r.flops_fwd_attention, "flops_fwd_mtp",
      r.flops_fwd_mtp, "flops_train", r.flops_train, "flops_decode", r.flops_decode, "decode_macs_main",
      (long long)r.decode_macs_main, "decode_macs_mtp", (long long)r.decode_macs_mtp,
      "kv_values_per_layer", (long long)r.kv_values_per_layer, "kv_bytes_mla_bf16", (long long)r.kv_bytes_mla_bf16,
      "kv_bytes_mla_fp8", (long long)r.kv_bytes_mla_fp8, "kv_bytes_mha_bf16", (long long)r.kv_bytes_mha_bf16,
      "kv_bytes_gqa_bf16", (long long)r.kv_bytes_gqa_bf16,
      "weight_bytes", (long long)r.weight_bytes, "fp8_params", (long long)r.fp8_params, "fp8_scales",
      (long long)r.fp8_scales, "checkpoint_bytes", (long long)r.checkpoint_bytes, "checkpoint_tensors",
      (long long)r.checkpoint_tensors,
      "gpus", (int)r.gpus, "mem_weights", r.mem_weights, "mem_master", r.mem_master, "mem_grads", r.mem_grads,
      "mem_optimizer", r.mem_optimizer, "mem_activations", r.mem_activations, "mem_total", r.mem_total);
}

PyMethodDef dsc_py_calc_methods[] = {
    {"model_calc", py_model_calc, METH_VARARGS,
     "model_calc(config_json, context, recipe, moments_dtype, tp, pp, dp, ep, zero1, micro_batch_tokens, "
     "compare_kv_heads) -> dict: dsc_model_calc."},
    {NULL, NULL, 0, NULL},
};
