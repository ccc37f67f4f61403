"""User-facing errors: one line naming the problem and the fix. The CLI prints them without a traceback.
The root lives in the contract (factory.format) so that trainers shares it."""
from factory.format import FactoryError

__all__ = ["FactoryError"]
