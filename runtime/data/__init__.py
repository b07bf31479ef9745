"""The data path: sources, tokenizers, prepared shards and the batches a run trains on.

loader.py (`train.data` sources: the builtin corpus, .txt / .jsonl files or
a prepared directory; the held-out split and layout-free global batches),
tokenizer.py (byte-level BPE or bytes, one tokenizer.json), prepare.py
(`sandbox prepare-data`: text -> tokenizer + token shards, streamed) and
shards.py (a prepared directory's layout and meta.json, memory-mapped).
"""
