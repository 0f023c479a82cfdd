"""Durable instance store on disk, and the index, work queue and outbox in a SQL database."""
