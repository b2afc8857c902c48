"""Backbone registry: frozen networks that map uint8 RGB images to named layer activations.

`create(name, weights=None)` returns a `Backbone`. `weights=None` means the default weights where
they exist offline (a clear error where they do not), `'random'` a seeded random initialisation
(the architecture-only control), or a path the backbone understands.

Registered: alexnet, caffenet, caffe (any Caffe net), efficientnet_lite0, resnet18, resnet50,
vgg16 (torchvision), vit_small_patch16_224, vit_base_patch16_224 (timm), dinov2_vits14,
dinov2_vitb14 (DINOv2), clip_vit_b16, open_clip_vit_b16 (CLIP image towers).
"""
from persistent.backbones.base import (BACKBONES, Backbone, as_numpy_tree, create, file_weights_id,
                                       names, package_weights_id, random_params, random_weights_id,
                                       register)

__all__ = ["BACKBONES", "Backbone", "as_numpy_tree", "create", "file_weights_id", "names",
           "package_weights_id", "random_params", "random_weights_id", "register"]

# Importing the modules registers their backbones.
from persistent.backbones import alexnet, caffe, efficientnet, resnet, vgg, vit  # noqa: E402,F401
