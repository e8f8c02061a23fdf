"""Tests of the checkpoint store (charlstm.service.store)."""
