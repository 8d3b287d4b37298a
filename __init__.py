"""vidshard: train video transformers on one machine in a day.

Stages: ``preprocess`` (raw videos to a shard set), ``shards`` (the on-disk
contract, reader, verify, serve) and ``train`` (video ViT, loop, eval).
"""

__version__ = "0.1.0"
