"""Compatibility with the original implementation (``dwromero/g_selfatt``), in one place.

The layers of :mod:`g_selfatt.nn` hold only their own computation. What exists so that code and
checkpoints written for the original keep working lives here and is attached to those classes
when :mod:`g_selfatt.nn` is imported (:func:`~g_selfatt.compat.attach.attach`, which never
replaces a name the class defines itself):

* :mod:`g_selfatt.compat.state_dict`: the attention layers' state-dict version, the derived
  index tables the original saved, and the group-axis index of a state dict that does not record
  it (``set_group_axis_index``, ``recorded_group_axis_index``).
* :mod:`g_selfatt.compat.layer_api`: the original layers' methods and attributes
  (``compute_attention_scores``, ``unfold``, ``initialize_indices``, ...), each computed by
  :class:`~g_selfatt.nn.attention.SelfAttentionCore`.
* :mod:`g_selfatt.compat.rd_self_attention`: the original's ``RdSelfAttention`` (learned offset
  embeddings on R^2), a subclass of :class:`~g_selfatt.nn.attention.LiftSelfAttention`.

The original's module paths (``g_selfatt/nn/lift_self_attention.py`` and its three siblings,
``g_selfatt/nn/rd_self_attention.py``, ``g_selfatt/groups/E2.py``, ``g_selfatt/groups/SE2.py``)
only re-export.
"""
