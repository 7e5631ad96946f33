"""README command 1: the embedded default (bundled sample through all-MiniLM-L6-v2), checked
against sentence-transformers' own encode for the same model."""

import numpy as np
import pytest
from helpers import check, launch, read_jsonl

from ddpinfer.inputs.files import SAMPLE_DATA
from ddpinfer.plan.task_needs import bundled_model_path

pytestmark = pytest.mark.slow


def test_default_job_matches_sentence_transformers(tmp_path):
    result = check(launch([], nproc=2, cwd=tmp_path))
    outputs = list((tmp_path / "runs").glob("*/output.jsonl"))
    assert len(outputs) == 1, result.stderr
    records = read_jsonl(outputs[0])
    sample = read_jsonl(SAMPLE_DATA)
    texts = [r["text"] for r in sample]
    assert len(texts) >= 200
    assert [r["id"] for r in records] == [r["id"] for r in sample]  # the sample's id field

    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(bundled_model_path(), device="cpu").encode(
        texts, normalize_embeddings=True
    )
    ours = np.array([r["embedding"] for r in records])
    cosine = (
        (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    )
    assert cosine.min() > 0.9999
    assert ours.shape == (len(texts), 384)
