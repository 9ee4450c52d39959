"""``mtmm-export``: every fusion and encoder family member through ``torch.export``, and the command line.

Each member is built into a tiny model on the synthetic data (untrained: export does not care) and
exported with a dynamic batch; the program's outputs must equal the eager model's on another batch size.
A member that does not export must be listed in ``DOES_NOT_EXPORT`` with the reason (and in
docs/predict.md): a new member is classified by this test as soon as it exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_cfg, run_cli, train
from families import config_names

from mtmm_train import builders
from mtmm_train.errors import UserError
from mtmm_train.export import ExportConfig, export_checkpoint, export_model, max_difference, sample

pytestmark = pytest.mark.usefixtures("one_thread")

MODALITIES = ("image", "audio", "text", "tabular")
# Settings a member needs to build offline, with {m} for the modality.
SETTINGS = {"timm": ["model.encoders.{m}.model_name=test_resnet", "model.encoders.{m}.pretrained=false"],
            "hf": ["model.encoders.{m}.model_name={hf}", "model.encoders.{m}.pretrained=false"]}
# member -> why torch.export cannot export it (the first line of its error is matched).
DOES_NOT_EXPORT: dict[tuple[str, str], str] = {}
# encoder -> the kind it reads, which the synthetic data lacks (not exported here: say so in docs/predict.md).
OTHER_KINDS = {"frames": "video"}


def _model(overrides: list[str]) -> tuple[torch.nn.Module, object]:
    cfg = compose_cfg([*TINY, *overrides])
    builders.seed_everything(0)
    data = builders.build_data(cfg)
    model = builders.build_model(cfg, data, builders.build_tasks(data))
    return model.eval(), data.splits["val"]


def _check(overrides: list[str], member: tuple[str, str]) -> None:
    model, split = _model(overrides)
    inputs, present = sample(split, 4)
    if member in DOES_NOT_EXPORT:
        with pytest.raises(Exception, match=DOES_NOT_EXPORT[member]):
            export_model(model, inputs, present)
        return
    program = export_model(model, inputs, present)
    for n, start in ((4, 0), (7, 4), (1, 11)):  # the export batch, and other sizes (dynamic batch)
        x, p = sample(split, n, start)
        assert max_difference(program, model, x, p) < 1e-4, (member, n)


@pytest.mark.parametrize("fusion", config_names("fusion"))
def test_every_fusion_exports(fusion: str) -> None:
    _check([f"fusion={fusion}"], ("fusion", fusion))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT saved with ``save_pretrained`` (nothing downloaded), for the Hugging Face encoder."""
    import transformers

    folder = tmp_path_factory.mktemp("bert")
    config = transformers.BertConfig(vocab_size=1000, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("encoder", config_names("encoder"))
def test_every_encoder_exports_on_the_modalities_it_reads(encoder: str, tiny_bert: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    read = []
    for m in MODALITIES:
        overrides = [f"encoder@model.encoders.{m}={encoder}",
                     *(s.format(m=m, hf=tiny_bert) for s in SETTINGS.get(encoder, []))]
        try:
            _model(overrides)
        except UserError:  # the encoder refuses this modality's kind
            continue
        read.append(m)
        _check(overrides, ("encoder", encoder))
    assert bool(read) != (encoder in OTHER_KINDS), \
        f"encoder {encoder} reads {read or 'none'} of the synthetic modalities {MODALITIES}; update OTHER_KINDS"


def test_cli_exports_a_trained_checkpoint_that_loads_and_predicts(tmp_path: Path) -> None:
    train(tmp_path / "run", ["logger=none"])
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    done = run_cli([f"checkpoint={ckpt}", f"output={tmp_path / 'm.pt2'}"], tmp_path, module="mtmm_train.export",
                   env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    model, split = _model(["logger=none"])
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    x, p = sample(split, 5)
    got, (want, _) = program(x, p), model(x, p)
    assert set(got) == {"category", "match", "tags", "score"}
    for t in want:
        assert torch.allclose(got[t], want[t], atol=1e-5), t
    with pytest.raises(UserError, match="give a .pt2 file"):
        export_checkpoint(ExportConfig(checkpoint=str(ckpt), output=str(tmp_path / "m.onnx")))
