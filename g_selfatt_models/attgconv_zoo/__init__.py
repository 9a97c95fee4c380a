"""Attentive group equivariant convolutional networks (Romero et al., ICML 2020).

Importing this package registers the models of :mod:`g_selfatt_models.attgconv_zoo.zoo`
(see there for the command-line names).
"""

from g_selfatt_models.attgconv_zoo import zoo
from g_selfatt_models.attgconv_zoo.layers import ATTENTION_KINDS, LayerFactory
from g_selfatt_models.attgconv_zoo.networks import AllCNNC, DenseNet, ResNet, RotMNISTCNN

__all__ = ["ATTENTION_KINDS", "AllCNNC", "DenseNet", "LayerFactory", "ResNet", "RotMNISTCNN", "zoo"]
