"""prep: the dataset side of loraprep.

Owns finding images and captions, opening images (the only place in the project that does),
the manifest, the executor, and the steps that change images.
"""

__version__ = "0.1.0"
