"""The receive stage: the C-STORE SCP, storing and indexing one instance, the lazy index,
deciding when a study has fully arrived, and running several receiver processes."""
