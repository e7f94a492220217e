"""Command-line tools and experiment helpers around the fairseq-varattn plugin.

Kept out of ``fairseq_varattn`` so that ``--user-dir fairseq_varattn``
imports only the plugin (models, criterions, tasks).  Console scripts:
``varattn-prepare``, ``varattn-align``, ``varattn-vqa-data``,
``varattn-vqa-eval``, ``varattn-train-cpu`` (see setup.py).
"""
