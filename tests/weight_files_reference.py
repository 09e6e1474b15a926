"""Writes the real torch files that tests/test_weight_files.py reads; run with the .venv-torch
python:

    .venv-torch/bin/python tests/weight_files_reference.py OUT_DIR

In OUT_DIR: torch.save state dicts (`plain.pt`: assorted dtypes, 0-d and empty tensors;
`views.pt`: a {"state_dict": ...} checkpoint with "module." prefixes whose tensors are views of
shared storages: tied, sliced, transposed, expanded), TorchScript archives (`traced.pt`,
`scripted.pt`: nested modules, a non-persistent buffer, a plain tensor attribute; `clip_traced.pt`:
a small open_clip CLIP traced the way OpenAI's original .pt files are), torch's own reading of each
(`<name>.npz`: each tensor's raw bytes, `expected.json`: names, dtypes, shapes), and malicious
files whose payload, if run, creates OUT_DIR/PWNED-<name> (`evil_system.pt`: os.system,
`evil_exec.pt`: builtins.exec, `evil_legacy.pt`: the legacy non-zip format, `evil_script.pt`: a
TorchScript archive whose data.pkl calls os.system).

Storage bytes are random and never zero, so bytes that did not come from a file's storages show.
"""

import json
import os
import sys
import zipfile

import numpy as np
import torch
from torch import nn

OUT = sys.argv[1]
RNG = np.random.default_rng(0)


def rand(*shape, dtype=torch.float32):
  """A tensor of random bytes, none of them zero."""
  nbytes = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
  raw = bytearray(RNG.integers(1, 256, nbytes, dtype=np.uint8).tobytes())
  return torch.frombuffer(raw, dtype=dtype).reshape(shape).clone() if nbytes else torch.empty(
      shape, dtype=dtype)


def expected(name, state):
  """torch's reading of `state` -> OUT/<name>.npz (raw bytes) and an entry for expected.json."""
  arrays, meta = {}, {}
  for key, t in state.items():
    t = t.detach().contiguous()
    arrays[key] = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)
    meta[key] = [str(t.dtype).removeprefix("torch."), list(t.shape)]
  np.savez(os.path.join(OUT, f"{name}.npz"), **arrays)
  return meta


class Block(nn.Module):

  def __init__(self):
    super().__init__()
    self.lin = nn.Linear(4, 3)
    self.ln = nn.LayerNorm(3)
    self.register_buffer("buf", rand(3))
    self.register_buffer("scratch", rand(2), persistent=False)
    self.plain = rand(2)  # not a parameter or buffer: not in the state dict
    self.scale = nn.Parameter(torch.ones([]))
    self.seq = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with torch.no_grad():
      for p in self.parameters():
        p.copy_(rand(*p.shape))

  def forward(self, x):
    y = self.seq(self.ln(self.lin(x)) * self.scale + self.buf)
    return y + self.plain.sum() + self.scratch.sum()


class Evil:
  """Unpickling this runs `call(arg)`."""

  def __init__(self, call, arg):
    self.call, self.arg = call, arg

  def __reduce__(self):
    return self.call, (self.arg,)


def marker(name):
  return os.path.join(OUT, f"PWNED-{name}")


def main():
  os.makedirs(OUT, exist_ok=True)
  torch.manual_seed(0)
  meta = {}

  plain = {"f32": rand(3, 4), "f16": rand(5, dtype=torch.float16),
           "bf16": rand(2, 3, dtype=torch.bfloat16), "i64": rand(4, dtype=torch.int64),
           "i8": rand(6, dtype=torch.int8), "scalar": rand(), "empty": rand(0, 3)}
  torch.save(plain, os.path.join(OUT, "plain.pt"))
  meta["plain.pt"] = expected("plain", plain)

  big, emb = rand(40), rand(6, 4)
  views = {"module.emb.weight": emb, "module.head.weight": emb,  # tied: one storage, two names
           "module.part": big[10:20], "module.rows": big[20:32].view(3, 4),
           "module.transposed": rand(3, 5).t(),  # not contiguous in its storage
           "module.position_ids": torch.arange(7).expand(1, -1)}  # stride 0 over a size-1 dim
  torch.save({"epoch": 3, "state_dict": views}, os.path.join(OUT, "views.pt"))
  meta["views.pt"] = expected("views", {k[len("module."):]: v for k, v in views.items()})

  block = Block()
  traced = torch.jit.trace(block, torch.zeros(2, 4))
  traced.save(os.path.join(OUT, "traced.pt"))
  meta["traced.pt"] = expected("traced", traced.state_dict())
  scripted = torch.jit.script(block)
  scripted.save(os.path.join(OUT, "scripted.pt"))
  meta["scripted.pt"] = expected("scripted", scripted.state_dict())

  import open_clip  # pylint: disable=g-import-not-at-top
  cfg = dict(embed_dim=16, vision_cfg=dict(image_size=16, layers=1, width=32, patch_size=8,
                                           head_width=16),
             text_cfg=dict(context_length=8, vocab_size=50, width=32, heads=2, layers=1))
  clip = open_clip.CLIP(**cfg).eval()
  images, text = torch.ones(1, 3, 16, 16), torch.zeros(1, 8, dtype=torch.int64)
  clip = torch.jit.trace_module(clip, dict(forward=(images, text), encode_text=(text,),
                                           encode_image=(images,)), check_trace=False)
  torch.jit.save(clip, os.path.join(OUT, "clip_traced.pt"))
  meta["clip_traced.pt"] = expected("clip_traced", torch.jit.load(
      os.path.join(OUT, "clip_traced.pt")).state_dict())

  good = {"w": rand(2, 2)}
  torch.save(dict(good, x=Evil(os.system, f"touch {marker('evil_system')}")),
             os.path.join(OUT, "evil_system.pt"))
  torch.save(dict(good, x=Evil(exec, f"open({marker('evil_exec')!r}, 'w').close()")),
             os.path.join(OUT, "evil_exec.pt"))
  torch.save(dict(good, x=Evil(os.system, f"touch {marker('evil_legacy')}")),
             os.path.join(OUT, "evil_legacy.pt"), _use_new_zipfile_serialization=False)
  # A TorchScript archive (code/, constants.pkl) whose data.pkl calls os.system.
  torch.save(Evil(os.system, f"touch {marker('evil_script')}"), os.path.join(OUT, "payload.pt"))
  with zipfile.ZipFile(os.path.join(OUT, "payload.pt")) as z:
    payload = z.read("payload/data.pkl")
  with zipfile.ZipFile(os.path.join(OUT, "traced.pt")) as src, zipfile.ZipFile(
      os.path.join(OUT, "evil_script.pt"), "w") as dst:
    for info in src.infolist():
      data = payload if info.filename == "traced/data.pkl" else src.read(info)
      dst.writestr(info.filename.replace("traced/", "evil_script/", 1), data)
  os.remove(os.path.join(OUT, "payload.pt"))

  with open(os.path.join(OUT, "expected.json"), "w") as f:
    json.dump(meta, f)


if __name__ == "__main__":
  main()
