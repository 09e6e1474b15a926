"""The PyTorch side of the OpenCLIP parity tests; runs in the torch/open_clip virtualenv
(requirements-torch.txt), never imports JAX or rankclip_jax.

    python tests/open_clip_reference.py REQUEST.json

The request names an output folder and a list of jobs:
  {"kind": "reference", "name", "cfg" (open_clip.CLIP kwargs), "seed"}: builds the model at random
    init, perturbs every weight (so biases and LayerNorm parameters are not their trivial init),
    saves its state dict as NAME.safetensors and NAME.pt (torch.save), and NAME.npz with the image
    and text embeddings of the request's images/texts, the tokens and the zero-shot logits.
  {"kind": "shapes", "name", "model"}: the state-dict shapes of an open_clip model by name
    (ViT-B-16, ViT-L-14, ...), built on the meta device (no memory), as NAME_shapes.json.
  {"kind": "load", "name", "weights", "cfg_json"}: loads exported weights into open_clip.CLIP
    (strict) and writes NAME.npz with the embeddings of the request's images/texts.
  {"kind": "preprocess", "name", "image_size", "images": [png paths]}: open_clip's own eval transform of
    each image, NAME_preprocess.npy [N, H, W, 3].
  {"kind": "zero_shot", "name", "cfg", "weights", "images": [png paths], "class_names",
   "templates"}: open_clip's zero-shot classification of the image files (its eval transform, its
    prompt-ensemble classifier build_zero_shot_classifier), NAME_zero_shot.npz: "cosine" [N, C]
    (image-class cosine similarities), "logits" (logit_scale.exp() * cosine), "log_probs" (their
    log-softmax).
  {"kind": "tokenize", "name", "texts", "context_length"}: open_clip.tokenize of the texts,
    NAME_tokens.npy [N, context_length].
Images come from job["images_npz"] or request["images_npz"] (float32 [N, H, W, 3], already
normalised) and texts from request["texts"].
"""

import json
import os
import sys

import numpy as np
import open_clip
import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from PIL import Image
from safetensors.torch import load_file, save_file


def _embed(model, request, context_length, images_npz=None):
  images = np.load(images_npz or request["images_npz"])["images"]
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  tokens = open_clip.tokenize(request["texts"], context_length=context_length)
  with torch.no_grad():
    img = model.encode_image(x, normalize=True)
    txt = model.encode_text(tokens, normalize=True)
    logits = model.logit_scale.exp() * img @ txt.T
  return {"image": img.numpy(), "text": txt.numpy(), "tokens": tokens.numpy(),
          "logits": logits.numpy()}


def main(request_path):
  with open(request_path) as f:
    request = json.load(f)
  out = request["out_dir"]
  torch.set_num_threads(2)
  for job in request["jobs"]:
    name = job["name"]
    if job["kind"] == "reference":
      torch.manual_seed(job["seed"])
      model = open_clip.CLIP(**job["cfg"]).eval()
      with torch.no_grad():
        for p in model.parameters():
          p.add_(0.02 * torch.randn_like(p))
        model.logit_scale.fill_(float(np.log(30.0)))
      state = {k: v.contiguous() for k, v in model.state_dict().items()}
      save_file(state, os.path.join(out, name + ".safetensors"))
      torch.save(state, os.path.join(out, name + ".pt"))
      np.savez(os.path.join(out, name + ".npz"),
               **_embed(model, request, job["cfg"]["text_cfg"]["context_length"],
                        job.get("images_npz")))
    elif job["kind"] == "shapes":
      with torch.device("meta"):
        model = open_clip.CLIP(**open_clip.get_model_config(job["model"]))
      shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
      with open(os.path.join(out, name + "_shapes.json"), "w") as f:
        json.dump(shapes, f)
    elif job["kind"] == "load":
      with open(job["cfg_json"]) as f:
        cfg = json.load(f)
      model = open_clip.CLIP(**cfg).eval()
      model.load_state_dict(load_file(job["weights"]), strict=True)
      np.savez(os.path.join(out, name + ".npz"),
               **_embed(model, request, cfg["text_cfg"]["context_length"]))
    elif job["kind"] == "preprocess":
      preprocess = open_clip.image_transform(job["image_size"], is_train=False)
      arrays = [preprocess(Image.open(p)).permute(1, 2, 0).numpy() for p in job["images"]]
      np.save(os.path.join(out, name + "_preprocess.npy"), np.stack(arrays))
    elif job["kind"] == "zero_shot":
      model = open_clip.CLIP(**job["cfg"]).eval()
      model.load_state_dict(load_file(job["weights"]), strict=True)
      preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
      context_length = job["cfg"]["text_cfg"]["context_length"]
      with torch.no_grad():
        classifier = build_zero_shot_classifier(  # [D, C]
            model, lambda t: open_clip.tokenize(t, context_length=context_length),
            job["class_names"], job["templates"], num_classes_per_batch=None)
        x = torch.stack([preprocess(Image.open(p)) for p in job["images"]])
        cosine = model.encode_image(x, normalize=True) @ classifier
        logits = model.logit_scale.exp() * cosine
      np.savez(os.path.join(out, name + "_zero_shot.npz"), cosine=cosine.numpy(),
               logits=logits.numpy(), log_probs=torch.log_softmax(logits, -1).numpy())
    elif job["kind"] == "tokenize":
      tokens = open_clip.tokenize(job["texts"], context_length=job["context_length"])
      np.save(os.path.join(out, name + "_tokens.npy"), tokens.numpy())
    else:
      raise ValueError(f"unknown job kind {job['kind']!r}")


if __name__ == "__main__":
  main(sys.argv[1])
