"""The shared pieces of the experiment configs: rankclip_jax.defaults (the default config lives in
the package, which needs it to read saved runs), re-exported for `from configs import common`."""

# pylint: disable=wildcard-import,unused-wildcard-import
from rankclip_jax.defaults import *  # noqa: F401,F403
from rankclip_jax.defaults import NO_DECAY_REGEX, PAPER_ZERO_SHOT  # noqa: F401
