"""Defaults shared by the library and the command line, in a module that imports nothing (so the CLI starts fast).

:data:`DEFAULT_MODEL` is the backbone that training, distillation (as the teacher) and every command that embeds
images start from: EfficientNet-Lite0 with ImageNet weights shipped in the package, so it works offline.
"""

from __future__ import annotations

__all__ = ["DEFAULT_MODEL"]

#: The default backbone: a timm name whose weights ship with frugalvision (no download).
DEFAULT_MODEL = "tf_efficientnet_lite0.in1k_offline"
