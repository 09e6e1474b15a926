"""The Markdown page of benchmarks/accelerator_check.py's report (its JSON, rendered as tables)."""

from __future__ import annotations


def _cell(v):
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
  return str(v)


def _table(rows, columns) -> list[str]:
  lines = ["| " + " | ".join(title for title, _ in columns) + " |",
           "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_cell(r.get(key)) for _, key in columns) + " |" for r in rows]
  return lines


def markdown(report: dict) -> str:
  env, parts = report["environment"], report["parts"]
  out = ["# Accelerator check", "",
         f"{env['devices']}; Python {env['python']}; mode: {env['mode']}; metric writer: "
         f"{env['metric_writer']}; wall time {report['wall_s']} s.", "",
         "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".", ""]

  def status(name):
    p = parts.get(name, {})
    line = f"Status: **{p.get('status', 'not run')}** ({p.get('seconds', 0)} s)."
    return [line] + ([f"", f"```", p["error"], f"```"] if "error" in p else []) + [""]

  c = parts.get("loss_strategies", {})
  out += ["## 1. Correctness on the device", "",
          f"### RankCLIP loss and gradient per strategy (N={c.get('n')}, D={c.get('dim')}, "
          f"chunk {c.get('chunk')}, {c.get('devices')} device(s), highest matmul precision)", ""]
  out += status("loss_strategies")
  out += _table(c.get("rows", []), [("strategy", "strategy"), ("loss", "loss"),
                                    ("rel. diff of loss vs plain", "loss_rel_diff"),
                                    ("max rel. diff of gradients", "grad_rel_diff"),
                                    ("ok", "ok")]) + [""]
  t = parts.get("demo_training", {})
  out += [f"### {t.get('steps')} steps of the demo config (model {t.get('model')}, batch "
          f"{t.get('batch_size')})", ""]
  out += status("demo_training")
  if "mean_first" in t:
    out += [f"- metric writer: {t['metric_writer']}"
            + (f" ({t['metric_writer_because']})" if "metric_writer_because" in t else ""),
            f"- train/loss read back from {len(t['event_files'])} event file(s): "
            f"{t['logged_loss_steps']} steps, first {[round(x, 4) for x in t['first_losses']]}, "
            f"last {[round(x, 4) for x in t['last_losses']]}; mean of the first sixth "
            f"{t['mean_first']:.4f} -> last sixth {t['mean_last']:.4f}",
            f"- train_and_evaluate (compile, train, checkpoint, evaluate): "
            f"{t['train_and_evaluate_s']} s; final evaluation: "
            + ", ".join(f"{k} {v:.3f}" for k, v in sorted(t["eval"].items())), ""]
  ls = parts.get("loss_at_scale", {})
  out += ["## 2. The loss at scale", "",
          f"Forward+backward (value_and_grad w.r.t. both embeddings and the scale), median of "
          f"repeated calls; D={ls.get('dim')}, chunk {ls.get('chunk')}. Peak = XLA scratch + the "
          "embeddings and their gradients. rax present: " + str(ls.get("rax")) + ".", ""]
  out += status("loss_at_scale")
  out += _table(ls.get("rows", []), [
      ("N", "n"), ("loss", "loss"), ("strategy", "strategy"), ("fwd+bwd ms", "ms"),
      ("scratch MiB", "scratch_mib"), ("peak MiB", "peak_mib"), ("x CLIP plain", "x_clip_plain"),
      ("speedup over rax", "rax_speedup")]) + [""]
  for strategy, v in ls.get("largest_n", {}).items():
    out.append(f"- largest N that fits, RankCLIP {strategy}: {v['n']} (N={v['next']}: "
               f"{v['because']})")
  if "device_memory_gib" in ls:
    out.append(f"- device memory {ls['device_memory_gib']} GiB; the process's peak "
               f"{ls['process_peak_gib']} GiB")
  out += [f"- not run: {x}" for x in ls.get("skipped", [])] + [""]
  tt = parts.get("train_throughput", {})
  out += ["## 3. Training throughput", "",
          f"{tt.get('dtype')}, image {tt.get('image_size')}, context {tt.get('context')}, "
          f"{tt.get('steps_timed')} timed steps after compile + 2; MFU against "
          "rankclip_jax/flops.py's peak for the device (none on CPU).", ""]
  out += status("train_throughput")
  out += _table(tt.get("rows", []), [
      ("model", "model"), ("batch", "batch"), ("loss", "objective"), ("remat", "remat"),
      ("patch dropout", "patch_dropout"), ("layers", "layers"), ("switched off", "switched_off"),
      ("ms/step", "ms_per_step"),
      ("examples/s", "examples_per_s"), ("TFLOP/s", "tflops"),
      ("MFU", "mfu"), ("RankCLIP/CLIP step", "rankclip_over_clip"),
      ("step / no-dropout step", "over_no_dropout"),
      ("step / the defaults' step", "over_defaults"),
      ("compile s", "compile_s"), ("temp MiB", "temp_mib"), ("error", "error")])
  out += [""] + [f"- not run: {x}" for x in tt.get("skipped", [])]
  return "\n".join(out).rstrip() + "\n"
