"""rankclip_jax: RankCLIP pretraining in JAX/Flax. `rankclip_jax.load(workdir)` opens a trained run."""
def load(path, **kwargs):
  """Loads a run for use in a notebook: see rankclip_jax.inference.load (imported on first call, so
  `import rankclip_jax` stays light)."""
  from rankclip_jax import inference  # pylint: disable=g-import-not-at-top
  return inference.load(path, **kwargs)
