"""Evaluation metrics on cases whose answers are known in advance."""

import numpy as np
import pytest

from rankclip_jax.evaluation import metrics as M


def one_hot(indices, n):
  return np.eye(n, dtype=np.float32)[indices]


def test_zero_shot_known_answers_and_topk():
  classes = one_hot([0, 1, 2, 3], 4)
  # image i points mostly at class a[i], second at class b[i]
  a, b = [0, 1, 3, 2], [1, 2, 0, 0]
  images = 0.9 * one_hot(a, 4) + 0.3 * one_hot(b, 4)
  labels = np.array([0, 2, 0, 1])  # right, 2nd choice, 2nd choice, wrong at both
  acc = M.zero_shot_classification(images, classes, labels, ks=(1, 2, 4))
  assert acc[1] == pytest.approx(0.25)
  assert acc[2] == pytest.approx(0.75)
  assert acc[4] == pytest.approx(1.0)


def test_ties_count_against_the_model():
  # A collapsed model (all scores equal) must score 0 at top-1, not 100%.
  logits = np.zeros((5, 3))
  assert M.topk_accuracy(logits, np.array([0, 1, 2, 0, 1]), ks=(1, 3))[1] == 0.0
  assert M.topk_accuracy(logits, np.array([0, 1, 2, 0, 1]), ks=(3,))[3] == 1.0


def test_class_with_no_examples_does_not_matter():
  # Class 2 exists but no image has it; accuracy over the images that exist.
  classes = one_hot([0, 1, 2], 3)
  images = one_hot([0, 1, 1], 3)
  assert M.zero_shot_classification(images, classes, np.array([0, 1, 1]))[1] == 1.0


def test_bad_labels_raise():
  with pytest.raises(ValueError, match="labels must be in"):
    M.topk_accuracy(np.zeros((2, 3)), np.array([0, 3]))
  with pytest.raises(ValueError, match="shape"):
    M.topk_accuracy(np.zeros((2, 3)), np.array([0, 1, 2]))


def test_prompt_ensemble_normalises_each_template_first():
  # Template 0 has a huge norm; without per-template normalisation it would dominate.
  t0 = np.array([[100.0, 0.0]])
  t1 = np.array([[0.0, 1.0]])
  out = M.ensemble_class_embeddings(np.stack([t0, t1]))
  np.testing.assert_allclose(out, [[np.sqrt(0.5), np.sqrt(0.5)]], rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-6)


def test_retrieval_recall_known_case_with_multiple_captions():
  # 3 images, 4 texts; image 0 has texts 0 and 1, image 1 text 2, image 2 text 3.
  relevance = np.zeros((3, 4), bool)
  relevance[0, [0, 1]] = True
  relevance[1, 2] = True
  relevance[2, 3] = True
  scores = np.array([
      [0.1, 0.8, 0.9, 0.0],  # best relevant (0.8) is 2nd -> i2t miss @1, hit @5
      [0.0, 0.0, 1.0, 0.5],  # hit @1
      [0.9, 0.8, 0.7, 0.1],  # relevant text is last of 4 -> rank 3 -> miss @1, hit @5
  ])
  text_emb = scores.T.copy()
  image_emb = np.eye(3)
  r = M.retrieval_recall(image_emb, text_emb, relevance, ks=(1, 5))
  assert r["i2t_r1"] == pytest.approx(1 / 3)
  assert r["i2t_r5"] == pytest.approx(1.0)
  # texts: t0 best image is 2 (0.9) over 0 (0.1) -> miss; t1: img2 0.8 vs img0 0.8 tie -> miss;
  # t2: img1 1.0 -> hit; t3: img1 0.5 > img2 0.1 -> miss
  assert r["t2i_r1"] == pytest.approx(0.25)


def test_relevance_from_identical_captions():
  unique, rel = M.relevance_from_captions(["a red circle", "a blue star", "a red circle"])
  assert unique == ["a blue star", "a red circle"]
  np.testing.assert_array_equal(rel, [[False, True], [True, False], [False, True]])


def test_zero_shot_with_a_class_that_has_no_examples_and_tied_classes():
  from rankclip_jax.evaluation import metrics as M
  classes = np.eye(3)  # class 2 has no example in the evaluation set
  images = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.6, 0, 0.8], [0, 0.5, 0.5]])
  labels = np.array([0, 1, 0, 1])
  acc = M.zero_shot_classification(images, classes, labels, ks=(1, 2, 3))
  # Image 2 is pulled to the empty class 2 (a wrong answer, still ranked 2nd); image 3 ties its
  # class 1 with class 2, and a tie counts against the model at k=1 (right at k=2).
  assert acc == {1: 0.5, 2: 1.0, 3: 1.0}
