"""Metrics computed offline: classification scores and entity-level scores (seqeval's strict IOB2).

The subfolders hold metric scripts for ``evaluate.load`` by path (SQuAD, ROUGE).
"""
