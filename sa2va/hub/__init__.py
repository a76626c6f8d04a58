"""The model hub and the release files: ``catalog`` (the official releases), ``download`` (hub -> plain files,
verified and resumable; the entry to ``session``, ``local_folder``, ``plan`` and ``transfer``, which do the work),
``checkpoint`` (config.json, shard index, family detection) and ``keymap`` (release tensor names <-> transformers'
names)."""
