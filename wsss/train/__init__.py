"""Training utilities shared by every trained stage: devices, schedules, resumable state."""
