"""How arrays are saved on CPU devices (the checkpoint files themselves are tested through the runs
that write and resume them: test_train, test_multihost, test_checkpoint_faults)."""

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from rankclip_jax import checkpointing
from tests.tracing import counting_traces


def test_replicated_arrays_on_cpu_are_saved_whole_without_compiling_slices(tmp_path):
  """Replicated over the 8 CPU devices, each array is written from one copy: the save compiles
  nothing (Orbax's replica-parallel saving would trace and compile one slicing program per array
  and replica: 24 here, measured before the change), and what is restored equals what was saved,
  replicated arrays and a sharded one alike."""
  mesh = jax.make_mesh((8,), ("data",))
  replicated = NamedSharding(mesh, P())
  # Shapes no other test saves (so nothing is cached), each with an axis of a multiple of 8: the
  # axis replica-parallel saving slices along.
  state = {f"replicated_{i}": jax.device_put(
      np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + i, replicated)
           for i, shape in enumerate([(8, 5), (24,), (3, 16)])}
  state["sharded"] = jax.device_put(np.arange(40, dtype=np.float32).reshape(8, 5),
                                    NamedSharding(mesh, P("data")))
  ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep=1, async_save=False)
  with counting_traces() as traced:
    assert ckpt.save(1, state, force=True)
    ckpt.wait()
  assert not traced, f"the save traced {len(traced)} programs"
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          state)
  step, restored = ckpt.restore(abstract)
  ckpt.close()
  assert step == 1
  for name, array in state.items():
    assert restored[name].sharding == array.sharding, name
    np.testing.assert_array_equal(np.asarray(restored[name]), np.asarray(array), err_msg=name)


def test_a_checkpoint_with_fewer_skip_kinds_resumes_with_the_new_kinds_at_zero(tmp_path):
  """data/records.py's SKIP_KINDS only ever grow at the end (the streamed shards' kinds came
  later): a train state saved with fewer counts restores them as the first ones, the rest 0."""
  import flax
  import jax.numpy as jnp

  @flax.struct.dataclass
  class State:
    params: jax.Array
    data_skipped: jax.Array

  old = State(params=jnp.arange(3.0), data_skipped=jnp.array([4, 0, 2, 1, 7], jnp.int32))
  ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep=1, async_save=False)
  assert ckpt.save(1, old, force=True)
  ckpt.wait()
  new = State(params=jax.ShapeDtypeStruct((3,), jnp.float32),
              data_skipped=jax.ShapeDtypeStruct((10,), jnp.int32))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
      a.shape, a.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])), new)
  step, restored = ckpt.restore(abstract)
  ckpt.close()
  assert step == 1
  np.testing.assert_array_equal(np.asarray(restored.data_skipped), [4, 0, 2, 1, 7, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(np.asarray(restored.params), [0.0, 1.0, 2.0])
