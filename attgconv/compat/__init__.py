"""Compatibility with the original attentive G-CNN code (``att_gconvs``), in one place.

The layers of :mod:`attgconv` (:mod:`~attgconv.conv`, :mod:`~attgconv.attentive`,
:mod:`~attgconv.attention`) hold only their own computation. The original's classes are thin
subclasses of them, built from the original's constructor arguments and carrying its attribute
and method names:

* :mod:`attgconv.compat.original`: the pieces they share (group modules, grids, arguments);
* :mod:`attgconv.compat.layers`: the ``layers(group)`` factory and its ``*Layer`` classes;
* :mod:`attgconv.compat.attention_layers`: channel and spatial attention;
* :mod:`attgconv.compat.romhog_attention`: the 1x1 attention of Romero & Hoogendoorn (2020);
* :mod:`attgconv.compat.group_modules`: the group modules ``Rn``, ``H``, ``G``.

The original's module paths (``attgconv.layers``, ``attgconv.attention_layers``,
``attgconv.RomHog_attention``, ``attgconv.group.SE2`` / ``.E2``) re-export them.
"""
