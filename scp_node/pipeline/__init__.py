"""After a study has arrived: the scheduler's ticks, the analysis worker (and its process
pool), routing, delivery to destinations (C-STORE, STOW-RS) and retention."""
