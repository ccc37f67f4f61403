"""A factory dataset or view as training data: ``stream`` (view-aware, seeded batches, exact under DDP;
``--mask-source`` mask, teacher, intersection)."""
