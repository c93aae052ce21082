"""captioning: generated text for datasets — backends, tag rules, identity pruning, lint.

Reads images and writes captions through `prep`'s dataset model; never opens images itself.
"""
