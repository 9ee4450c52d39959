"""Tiny pretrained-backbone folders written by the tests themselves (no download): timm and Hugging Face."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
         *"the a cat dog red blue sat on mat runs fast slow big small".split(), *(f"w{i}" for i in range(50))]


def bert_folder(folder: Path, max_positions: int = 16) -> Path:
    """A 2-layer BERT (hidden size 16) and a WordPiece tokenizer of :data:`WORDS`, saved with ``save_pretrained``."""
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    if (folder / "config.json").is_file():
        return folder
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                                model_max_length=max_positions)
    cfg = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=max_positions)
    transformers.BertModel(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def wav2vec2_folder(folder: Path) -> Path:
    """A tiny wav2vec2 (2 conv layers, 1 transformer layer) with its feature extractor (16 kHz, normalised)."""
    import transformers

    if (folder / "config.json").is_file():
        return folder
    cfg = transformers.Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                      conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 4),
                                      num_feat_extract_layers=2,
                                      num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, vocab_size=8,
                                      do_stable_layer_norm=True, feat_extract_norm="layer")
    transformers.Wav2Vec2Model(cfg).save_pretrained(folder)
    extractor = transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True)
    extractor.save_pretrained(folder)
    return folder


def clip_folder(folder: Path) -> Path:
    """A tiny CLIP (both towers hidden size 16, 32x32 images) with its image processor."""
    import transformers

    if (folder / "config.json").is_file():
        return folder
    text = {"vocab_size": len(WORDS), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 2, "eos_token_id": 3}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)
    transformers.CLIPModel(cfg).save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                                    image_mean=[0.4, 0.45, 0.4], image_std=[0.27, 0.26, 0.27]).save_pretrained(folder)
    return folder


def timm_file(path: Path, model_name: str = "test_vit") -> dict:
    """A timm model with random weights saved to ``path`` (.safetensors, or .pth/.bin with torch.save); its state."""
    import timm
    import torch
    from safetensors.torch import save_file

    model = timm.create_model(model_name, pretrained=False)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return state
