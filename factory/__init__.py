"""factory: turn a pretrained generator into a frozen, verifiable image/mask dataset."""
__version__ = "0.1.0"
