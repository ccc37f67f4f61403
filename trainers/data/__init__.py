"""A factory dataset or view as training data: ``stream`` (view-aware, seeded batches, exact under DDP;
``--mask-source`` mask, teacher, intersection) and ``random_access`` (the same planner over the whole
dataset, each sample read by key)."""
