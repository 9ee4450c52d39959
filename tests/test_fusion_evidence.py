"""Evidence on the synthetic data that fusion matters where a task needs two modalities together.

``match`` (is the image's class the audio's class?) carries no information in either
modality alone. A model of one modality must stay at chance; concat+MLP, tensor, low-rank
and attention fusion of image and audio must beat the best of them by a clear margin.
Margins measured with seeds 0, 1, 2 (test AUROC): see docs/fusion.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # tiny models: one thread is faster

# The MLP image encoder keeps the blob's position (the class); the default CNN pools it away
# and needs ~3x the epochs. Low noise and 2000 samples let every fusion learn in 5 epochs.
MATCH = ["tasks=[match]", "encoder@model.encoders.image=mlp", "dataset.noise=0.3", "dataset.num_train=2000",
         "dataset.num_val=200", "dataset.num_test=1000", "trainer.max_epochs=5", "trainer.batch_size=64",
         "trainer.monitor=val/match/auroc", "trainer.monitor_mode=max", "logger=none", "seed=0"]
CHANCE = (0.42, 0.58)
MARGIN = 0.2




def match_auroc(tmp_path: Path, overrides: list[str]) -> float:
    """Train on ``match`` with ``overrides``; the test-split AUROC of the last epoch."""
    recipe = train(tmp_path, MATCH + overrides, tiny=False)
    return recipe.evaluate("test")["test/match/auroc"]


@pytest.fixture(scope="module")
def best_single(tmp_path_factory: pytest.TempPathFactory) -> float:
    """The best test AUROC of a model that sees one modality (image or audio) only."""
    aurocs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for m in ("image", "audio"):
        aurocs[m] = match_auroc(tmp_path_factory.mktemp(m), [f"modalities=[{m}]"])
    torch.set_num_threads(threads)
    for m, auroc in aurocs.items():
        assert CHANCE[0] < auroc < CHANCE[1], f"{m} alone reached AUROC {auroc:.3f} on match: not chance"
    return max(aurocs.values())


@pytest.mark.parametrize("fusion", ["concat", "tensor", "low_rank", "attention"])
def test_fusion_beats_every_single_modality_on_match(fusion: str, best_single: float, tmp_path: Path) -> None:
    auroc = match_auroc(tmp_path, ["modalities=[image,audio]", f"fusion={fusion}"])
    assert auroc > best_single + MARGIN, f"{fusion}: AUROC {auroc:.3f}, best single modality {best_single:.3f}"
