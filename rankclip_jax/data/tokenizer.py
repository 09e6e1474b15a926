"""The CLIP BPE tokenizer (standard CLIP ids: <start_of_text>=49406, <end_of_text>=49407).

Backed by `instant-clip-tokenizer`, which carries the CLIP vocabulary inside the wheel, so nothing is
downloaded at run time. Truncation keeps the end-of-text token, which the text tower pools at.

Texts are cleaned first as open_clip's SimpleTokenizer (clean="lower") and OpenAI's CLIP clean them:
ftfy.fix_text (mojibake, curly quotes, full-width forms, ligatures, NFC, line breaks), HTML entities
unescaped twice, whitespace runs collapsed, lower-cased. instant-clip-tokenizer does only the
lower-casing and the BPE: without this, HTML entities ("&amp;"), curly quotes, full-width letters,
ligatures and decomposed accents got other ids than open_clip's.

Every text is cut to its first `CHARS_PER_TOKEN` x context_length characters before cleaning
(7,700 for CLIP's 77 tokens): a web caption can be megabytes long (a 4M-character one took 1.6 s to
clean), and only its first tokens are kept. This cap applies to every caption that reaches the
model (CSV, tar, synthetic (ALIP) and evaluation captions, prompts) and loses nothing: no vocabulary
entry is longer than 32 characters, so the kept tokens come from at most ~33 characters each, and
the margin covers what cleaning removes (whitespace runs, HTML entities, mojibake).
"""

from __future__ import annotations

import html
from typing import Sequence

import ftfy
import numpy as np

VOCAB_SIZE = 49408
SOT_ID = 49406
EOT_ID = 49407
PAD_ID = 0
CHARS_PER_TOKEN = 100  # characters of raw text kept per token of context (see above)


def clean_text(text: str) -> str:
  """open_clip's text cleaning before BPE (tokenizer._clean_lower): the same ids as open_clip.

  Printable ASCII without "&" (most captions, every synthetic one) is left as it is by ftfy and by
  HTML unescaping, so it skips both: ftfy alone cost 0.1 ms a caption, a third of the synthetic
  pipeline's time per example (tests compare the two paths on random strings).
  """
  if not (text.isascii() and text.isprintable() and "&" not in text):
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
  return " ".join(text.split()).lower()


class ClipTokenizer:
  """Texts -> int32 [N, context_length] token ids, padded with 0, always ending in EOT.

  The underlying Rust tokenizer is created lazily so that the object pickles cheaply into grain
  worker processes.
  """

  vocab_size = VOCAB_SIZE
  sot_id = SOT_ID
  eot_id = EOT_ID
  pad_id = PAD_ID

  def __init__(self, context_length: int = 77):
    if context_length < 3:
      raise ValueError(
          f"context_length={context_length} is too short: it must hold <start>, one token and <end>.")
    self.context_length = context_length
    self._impl = None

  def _tokenizer(self):
    if self._impl is None:
      import instant_clip_tokenizer  # pylint: disable=g-import-not-at-top
      self._impl = instant_clip_tokenizer.Tokenizer()
    return self._impl

  def __getstate__(self):
    return {"context_length": self.context_length}

  def __setstate__(self, state):
    self.context_length = state["context_length"]
    self._impl = None

  def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
    if isinstance(texts, str):
      texts = [texts]
    cap = CHARS_PER_TOKEN * self.context_length
    ids = self._tokenizer().tokenize_batch([clean_text(t[:cap]) for t in texts],
                                           context_length=self.context_length)
    return np.asarray(ids, dtype=np.int32)

  def decode(self, ids: Sequence[int]) -> str:
    keep = [int(i) for i in ids if int(i) not in (SOT_ID, EOT_ID, PAD_ID)]
    return self._tokenizer().decode(keep).strip()
