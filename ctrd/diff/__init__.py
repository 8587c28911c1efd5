"""Applying OCI image layers to directories: decompression, tar streams, whiteouts.

``open_decompressed`` (compression.py) turns a layer blob into its tar stream;
``apply_layer`` (apply.py) writes that tar into a snapshot directory, safely (no entry ever
lands outside the target) and returns the layer's diff ID; ``differ`` applies a blob from
content onto a snapshot's mounts (Diff.Apply and every daemon-side unpack) within the unpack
limits of ``limits`` (how far a layer may expand, how much disk it must leave free).
"""
