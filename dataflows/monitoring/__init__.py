"""Monitoring: ingestion, references, evaluation and its SQL, alerts, the schedule, the dashboard."""
