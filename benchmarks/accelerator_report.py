"""The Markdown page of benchmarks/accelerator_check.py's report (its JSON, rendered as tables).

It renders whatever the report holds so far (the check writes it after every part and step row):
a part not run yet shows as "not run"."""

from __future__ import annotations


def _cell(v):
  if v is None:
    return "-"
  if isinstance(v, bool):
    return str(v)
  if isinstance(v, float):
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
  return str(v)


def _table(rows, columns) -> list[str]:
  lines = ["| " + " | ".join(title for title, _ in columns) + " |",
           "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_cell(r.get(key)) for _, key in columns) + " |" for r in rows]
  return lines


def _percent(v):
  return None if v is None else f"{v:.1%}"


_STEP_COLUMNS = [("ms/step", "ms_per_step"), ("examples/s", "examples_per_s"),
                 ("TFLOP/s", "tflops"), ("MFU", "mfu_pct"), ("XLA temp MiB", "temp_mib"),
                 ("compile + 2 steps s", "compile_s")]


def _with_mfu(rows):
  return [dict(r, mfu_pct=_percent(r.get("mfu"))) for r in rows]


def markdown(report: dict) -> str:
  env, parts = report["environment"], report["parts"]
  out = ["# Accelerator check", "",
         f"{env.get('devices', 'devices: not started yet')}; Python {env['python']}; mode: "
         f"{env['mode']}; metric writer: {env.get('metric_writer', '-')}; wall time "
         f"{report['wall_s']} s.", "",
         "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".", ""]
  if "platform_defaults" in env:
    out += [f"Platform defaults on {env['platform']} (models/platform_defaults.py): "
            + ", ".join(f"{k}={v}" for k, v in env["platform_defaults"].items())
            + "; measured on this platform before: "
            + ", ".join(f"{k}: {v or 'no'}" for k, v in env["measured_before"].items()) + ".", ""]
  if report.get("order"):
    out += ["Parts in the order run: " + ", ".join(report["order"]) + ".", ""]

  def status(name):
    p = parts.get(name, {})
    line = f"Status: **{p.get('status', 'not run')}** ({p.get('seconds', 0)} s)."
    if "skipped_because" in p:
      line += f" Skipped: {p['skipped_because']}."
    return [line] + (["", "```", p["error"], "```"] if "error" in p else []) + [""]

  # 1. open_clip
  oc = parts.get("open_clip", {})
  e = oc.get("environment", {})
  out += ["## 1. open_clip on this device", "",
          f"open_clip_torch's training step (open_clip.CLIP with our towers, AdamW, ClipLoss), "
          f"batch {oc.get('batch')}, image {oc.get('image_size')}, context {oc.get('context')}, "
          f"{oc.get('dtype')} ({'autocast' if oc.get('dtype') == 'bfloat16' else 'no autocast'}), "
          f"{oc.get('steps_timed')} timed steps after {oc.get('warmup_steps')}; Python "
          f"{oc.get('python') or '-'}; torch {e.get('torch', '-')}, open_clip "
          f"{e.get('open_clip', '-')} on {e.get('device', '-')}. JAX's backend started before "
          f"it: {oc.get('jax_backend_started_before')}.", ""]
  out += status("open_clip")
  out += _table(oc.get("rows", []), [
      ("framework", "framework"), ("model", "model"), ("batch", "batch"),
      ("ms/step", "ms_per_step"), ("examples/s", "examples_per_s"),
      ("first steps s", "warmup_s"), ("peak MiB", "peak_mib"), ("error", "error")]) + [""]

  # 2. Correctness
  a = parts.get("attention", {})
  out += ["## 2. Correctness on the device", "",
          f"### Attention implementations (SelfAttention: batch {a.get('batch')}, width "
          f"{a.get('width')}, {a.get('heads')} heads, {a.get('tokens')} tokens without / with "
          "the causal mask)", "",
          "Relative to the largest magnitude of the einsum attention in float32 (highest matmul "
          "precision): the value, and the largest difference over the gradients w.r.t. the input "
          f"and every parameter. Tolerances: {a.get('tolerances')}.", ""]
  out += status("attention")
  out += _table(a.get("rows", []), [
      ("attention", "attention"), ("dtype", "dtype"), ("causal", "causal"), ("query", "query"),
      ("value rel. diff", "value_rel_diff"), ("tol.", "value_tol"),
      ("grad rel. diff", "grad_rel_diff"), ("tol.", "grad_tol"), ("ok", "ok"),
      ("not run", "not_run")]) + [""]
  c = parts.get("loss_strategies", {})
  out += [f"### RankCLIP loss and gradient per strategy (N={c.get('n')}, D={c.get('dim')}, "
          f"chunk {c.get('chunk')}, {c.get('devices')} device(s), highest matmul precision)", ""]
  out += status("loss_strategies")
  out += _table(c.get("rows", []), [("strategy", "strategy"), ("loss", "loss"),
                                    ("rel. diff of loss vs plain", "loss_rel_diff"),
                                    ("max rel. diff of gradients", "grad_rel_diff"),
                                    ("ok", "ok")]) + [""]

  # 3. Ours against open_clip
  ours = parts.get("ours", {})
  out += ["## 3. Ours against open_clip", "",
          f"Our step with the config defaults (per-layer blocks, the platform's defaults), "
          f"{ours.get('dtype')}, batch {ours.get('batch')}, image {ours.get('image_size')}, "
          f"context {ours.get('context')}, {ours.get('steps_timed')} timed steps after compile + "
          "2; MFU against rankclip_jax/flops.py's peak for the device (none on CPU). The first "
          "row is the baseline of parts 4 and 5.", ""]
  out += status("ours")
  side = [dict(r, objective="clip") for r in oc.get("rows", []) if "examples_per_s" in r]
  side += ours.get("rows", [])
  side.sort(key=lambda r: (r["model"], r["framework"] == "ours", r.get("objective", "")))
  out += _table(_with_mfu(side), [("framework", "framework"), ("model", "model"),
                                  ("loss", "objective"), ("attention", "attention")]
                + _STEP_COLUMNS + [("ours / open_clip examples/s", "over_open_clip"),
                                   ("ours / open_clip compiled", "over_open_clip_compiled"),
                                   ("error", "error")])
  out += [""] + [f"- not run: {x}" for x in ours.get("skipped", [])] + [""]

  # 4. Profile
  p = parts.get("profile", {})
  out += ["## 4. Where the step's time goes", ""]
  out += status("profile")
  if "by_kind" in p:
    busy = p.get("busy_share")
    out += [f"**Warning: {p['warning']}.**", ""] if "warning" in p else []
    out += [f"{p['model']} batch {p['batch']} {p['objective']}, attention {p['attention']}: "
            f"{p['steps_traced']} traced steps; step wall time {p['wall_ms']:.1f} ms untraced; "
            f"the ops' summed time {p['summed_ms']:.1f} ms a step ({p['ops_from']})"
            + (f", {busy:.0%} of the wall time" if busy is not None else "")
            + f"; {p['ops']} distinct ops, {p['unattributed_ms']:.1f} ms in ops the compiled "
            "module does not name.", "",
            "By kind of op:", ""]
    out += _table([dict(r, share=_percent(r["share"])) for r in p["by_kind"]],
                  [("kind", "kind"), ("ms/step", "ms"), ("share", "share")]) + [""]
    out += ["By tower, part and pass (rows of 0.5% and more):", ""]
    out += _table([dict(r, share=_percent(r["share"])) for r in p["by_part"]
                   if r["share"] >= 0.005],
                  [("tower", "tower"), ("part", "part"), ("pass", "pass"), ("ms/step", "ms"),
                   ("share", "share")]) + [""]
    out += ["The longest ops:", ""]
    out += _table([dict(r, op_name=r["op_name"][-110:]) for r in p["top"][:15]],
                  [("op", "op"), ("ms/step", "ms"), ("kind", "kind"),
                   ("what (op_name)", "op_name")]) + [""]

  # 5. Switches
  sw = parts.get("switches", {})
  b = sw.get("baseline", {})
  out += ["## 5. The switches", "",
          f"Each row: the baseline ({b.get('model')} batch {b.get('batch')} {b.get('objective')}, "
          f"{b.get('layers')}, remat {b.get('remat')}, attention {b.get('attention')}, "
          f"recompute_elementwise {b.get('recompute_elementwise')}, last_block_pooled_only "
          f"{b.get('last_block_pooled_only')}: {_cell(b.get('ms_per_step'))} ms/step timed again "
          f"before these rows ({_cell(b.get('ms_per_step_first'))} in part 3), MFU "
          f"{_percent(b.get('mfu')) or '-'}, XLA temp {_cell(b.get('temp_mib'))} MiB) with one "
          "thing changed.", ""]
  out += status("switches")
  out += _table(_with_mfu(sw.get("rows", [])), [("switch", "switch"), ("value", "value")]
                + _STEP_COLUMNS + [("step / baseline (per example)", "time_over_baseline"),
                                   ("temp / baseline", "temp_over_baseline"), ("note", "note"),
                                   ("error", "error"), ("not run", "not_run")])
  out += [""] + [f"- not run: {x}" for x in sw.get("skipped", [])] + [""]
  if sw.get("verdicts"):
    out += ["### Verdicts", "", f"Rule: {sw.get('rule')}.", ""]
    if env["mode"].startswith("tiny"):
      out += ["(Tiny mode: a micro model timed over a few steps of a few milliseconds; these "
              "verdicts exercise the check, they measure nothing.)", ""]
    out += [f"- **{v['verdict']}**: {v['line']} ({v['default_from']}; "
            f"{v['measured_before']})" for v in sw["verdicts"]] + [""]

  # 6. As the budget allows
  out += ["## 6. As the budget allows", ""]
  t = parts.get("demo", {})
  out += [f"### {t.get('steps')} steps of the demo config (model {t.get('model')}, batch "
          f"{t.get('batch_size')})", ""]
  out += status("demo")
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
  m = parts.get("more_rows", {})
  out += ["### More step rows (patch dropout; other models and batches)", ""]
  out += status("more_rows")
  out += _table(_with_mfu(m.get("rows", [])), [
      ("model", "model"), ("batch", "batch"), ("loss", "objective"),
      ("patch dropout", "patch_dropout")] + _STEP_COLUMNS + [
          ("step / no-dropout step", "over_no_dropout"), ("error", "error")])
  out += [""] + [f"- not run: {x}" for x in m.get("skipped", [])] + [""]
  ls = parts.get("loss_at_scale", {})
  out += ["### The loss at scale", "",
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
  out += [f"- not run: {x}" for x in ls.get("skipped", [])]
  return "\n".join(out).rstrip() + "\n"
