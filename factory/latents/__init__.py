"""Latents: where sample i's z comes from (`sources`: N(0, I), a file, an embedding store), the named
embedding stores of real images (`embeddings`), and GAN inversion that fills them (`inversion`)."""
