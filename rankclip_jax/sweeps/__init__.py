"""Sweeps over seeds and config fields, run locally or emitted for a scheduler, and their report
(the `rankclip-sweep` command is rankclip_jax/sweep.py). A sweep file imports its helpers from
here:

  from rankclip_jax.sweeps import Sweep, chain, fixed, product, values, variants, zip
"""

from rankclip_jax.sweeps.grid import (  # noqa: F401
    Sweep, SweepError, chain, fixed, product, values, variants, zip)
