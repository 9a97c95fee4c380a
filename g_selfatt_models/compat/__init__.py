"""Compatibility of the models with the originals (``g_selfatt``, ``att_gconvs``), in one place.

* :mod:`g_selfatt_models.compat.group_transformer`: the original ``GroupTransformer``'s enums
  (``NormType``, ``Activation``) and attributes (``Norm``, ``GroupSA``, ``transformer_layer``,
  ...), attached to :class:`~g_selfatt_models.group_transformer.GroupTransformer` when
  :mod:`g_selfatt_models` is imported.
* :mod:`g_selfatt_models.compat.state_dicts`: the original ``Z2CNN``'s parameter names mapped
  onto :class:`~g_selfatt_models.cnn.CNN` (the model's registered ``convert_checkpoint``).
* :mod:`g_selfatt_models.compat.gsa_records` and :mod:`g_selfatt_models.compat.attgconv_records`:
  this project's module for each record of an original module (class name and constructor
  arguments) and the conversion of its state dict, for the parity checks against the originals'
  recorded outputs.

The layers' own compatibility (method names, state-dict migration) is :mod:`g_selfatt.compat`;
the attentive G-CNN layers' original classes are :mod:`attgconv.compat`.
"""
