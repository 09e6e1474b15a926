"""Test setup: 8 fake CPU devices for mesh/sharding tests (must be set before jax is imported)."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # pylint: disable=g-import-not-at-top

# grain reads absl flags; outside app.run they must be marked parsed.
flags.FLAGS.mark_as_parsed()
