"""Counting what JAX traces: a compilation-free way for tests to see that work is not repeated."""

import contextlib

import jax.monitoring

TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"


@contextlib.contextmanager
def counting_traces():
  """A list that receives one entry (the seconds it took) per function JAX traces for jit inside
  the block: a cache hit traces nothing, a new function or input shape traces once."""
  traced = []

  def listen(event, duration, **kwargs):  # pylint: disable=unused-argument
    if event == TRACE_EVENT:
      traced.append(duration)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield traced
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
